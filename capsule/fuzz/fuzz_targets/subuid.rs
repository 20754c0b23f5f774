//! Bytes → `/etc/subuid` and `/etc/subgid` parsing and the user namespace built from them:
//! never a panic, and every id the namespace maps lands on a host id inside the range the
//! file granted (or the user's own id).
#![no_main]

use bolt_capsule::runtime::userns::{subordinate_range, UserNamespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line names the user (name, uid); the rest is the file, for both maps.
    let (head, file) = text.split_once('\n').unwrap_or((text, ""));
    let (name, uid) = head.split_once(' ').unwrap_or((head, "1000"));
    let uid: u32 = uid.trim().parse().unwrap_or(1000);
    let range = subordinate_range(file, name, uid);
    let ns = UserNamespace::for_user(name, uid, uid, file, file, true);
    let probes = [
        0,
        1,
        2,
        65_535,
        65_536,
        u32::MAX / 2,
        u32::MAX - 1,
        u32::MAX,
    ];
    for id in probes {
        let Some(host) = ns.host_uid(id) else {
            continue;
        };
        if id == 0 {
            assert_eq!(host, uid);
            continue;
        }
        let (start, count) = range.expect("a mapped id beyond 0 needs a range");
        assert!(
            host >= start,
            "{id} maps to {host}, below the range {start}:{count}"
        );
        let off = u64::from(host - start);
        assert!(
            off < u64::from(count),
            "{id} maps to {host}, past {start}:{count}"
        );
        assert_eq!(off, u64::from(id) - 1);
    }
    let _ = ns.check_user(uid, uid, &[0, 1, u32::MAX]);
    let _ = bolt_capsule::runtime::userns::map_text(&ns.uid_map);
});
