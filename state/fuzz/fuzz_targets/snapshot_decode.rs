//! Fuzz the state snapshot decoder (`decode_state`): the input as stored bytes, and the input as
//! a snapshot body under a correct keyed header (what someone who holds the node key, or a bug
//! in the writer, could produce). Never a panic or an abort on allocation; whatever decodes
//! re-encodes and decodes to itself.
#![no_main]

use bolt_state::{decode_state, encode_state, SNAPSHOT_FORMAT};
use libfuzzer_sys::fuzz_target;

/// Any fixed key: the checksum is keyed, the decoder is what is fuzzed.
const KEY: [u8; 32] = [7; 32];

fn check(bytes: &[u8]) {
    if let Ok(state) = decode_state(bytes, &KEY) {
        let again = encode_state(&state, &KEY);
        assert_eq!(decode_state(&again, &KEY).as_ref(), Ok(&state));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut forged = vec![SNAPSHOT_FORMAT];
    forged.extend_from_slice(blake3::keyed_hash(&KEY, data).as_bytes());
    forged.extend_from_slice(data);
    check(&forged);
});
