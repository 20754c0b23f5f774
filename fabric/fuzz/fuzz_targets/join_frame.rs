//! Fuzz the join exchange's frames (the one thing a peer without a certificate may send): the
//! request decoder and its proof check, and the answer decoder a joining node reads.
//!
//! Run: `cargo +nightly fuzz run join_frame` from `fabric/`.
#![no_main]

use bolt_fabric::join::{decode, JoinRequest, JoinResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode::<JoinRequest>(data) {
        let _ = req.check_proof();
    }
    let _ = decode::<JoinResponse>(data);
});
