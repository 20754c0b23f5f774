//! Bytes → `exec -u` / `run -u` user lookup (`resolve_user`) against an image layer's
//! `/etc/passwd` and `/etc/group`: never a panic, and a numeric `uid:gid` is taken as given.
//!
//! Input: the user spec, a NUL, the passwd file, a NUL, the group file.
#![no_main]

use bolt_agent::service::capsules::resolve_user;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let spec = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let passwd = parts.next().unwrap_or_default();
    let group = parts.next().unwrap_or_default();
    // The host failing to give a temp dir is no finding, but must not pass silently either.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).expect("the layer's etc");
    std::fs::write(etc.join("passwd"), passwd).expect("write passwd");
    std::fs::write(etc.join("group"), group).expect("write group");
    let layers = [tmp.path().to_path_buf()];
    let res = resolve_user(&spec, &layers);
    if let Some((u, g)) = spec.trim().split_once(':') {
        if let (Ok(uid), Ok(gid), Ok((user, _))) = (u.parse::<u32>(), g.parse::<u32>(), &res) {
            assert_eq!((user.uid, user.gid), (uid, gid), "{spec:?}");
        }
    }
});
