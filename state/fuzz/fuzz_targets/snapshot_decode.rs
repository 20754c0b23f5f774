//! Fuzz the state snapshot decoder (`decode_state`): the input as stored bytes, and the input as
//! a snapshot body under a correct header (what someone who can write the log's file forges).
//! Never a panic or an abort on allocation; whatever decodes re-encodes and decodes to itself.
#![no_main]

use bolt_state::{decode_state, encode_state, SNAPSHOT_FORMAT};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(state) = decode_state(bytes) {
        let again = encode_state(&state);
        assert_eq!(decode_state(&again).as_ref(), Ok(&state));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut forged = vec![SNAPSHOT_FORMAT];
    forged.extend_from_slice(blake3::hash(data).as_bytes());
    forged.extend_from_slice(data);
    check(&forged);
});
