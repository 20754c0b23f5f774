//! Fuzz membership packets: `Membership::on_packet` on a node that knows two members, with the
//! authenticated sender chosen by the first byte (the sender the header claims, so the bytes
//! reach foca; a known member; a stranger), then the timers the packet set. The rest of the
//! input is the packet.
//!
//! Run: `cargo +nightly fuzz run membership_packet` from `fabric/`.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bolt_fabric::membership::{Member, Membership, MembershipConfig, MAX_PACKET};
use libfuzzer_sys::fuzz_target;

fn member(i: u8) -> Member {
    let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, i + 1), 7946));
    Member::new(&format!("{:064x}", 0xb017_0000_u64 + u64::from(i)), addr, 0).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, packet)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let config = MembershipConfig::for_tests();
    let mut node = Membership::new(member(0), config.clone(), 1, now).unwrap();
    // Members 1 and 2 join node 0, as in the seeds' captures.
    for i in 1..=2 {
        let mut other = Membership::new(member(i), config.clone(), u64::from(i), now).unwrap();
        for (_, bytes) in other.join(member(0), now).unwrap().send {
            node.on_packet(&member(i).node_id, &bytes, now).unwrap();
        }
    }
    let from = match mode % 4 {
        // The raw node id at the start of the header, as hex: the spoofing check passes.
        0 => packet
            .get(..32)
            .map(|raw| raw.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_else(|| member(1).node_id),
        1 => member(1).node_id,
        2 => member(2).node_id,
        _ => "f".repeat(64),
    };
    let before = node.members();
    let result = node.on_packet(&from, packet, now);
    if result.is_err() && mode % 4 != 0 {
        // A refused packet from a known sender changes nothing.
        assert_eq!(node.members(), before);
    }
    let mut outputs: Vec<_> = result.into_iter().collect();
    for secs in [1, 3, 10] {
        outputs.push(node.on_tick(now + Duration::from_secs(secs)));
    }
    for out in outputs {
        assert!(out.send.iter().all(|(_, bytes)| bytes.len() <= MAX_PACKET));
    }
    let _ = node.members();
});
