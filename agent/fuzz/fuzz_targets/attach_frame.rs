//! Bytes → the attach protocol's frame decoder (`wire::frame::Decoder`), fed in chunks as a
//! socket delivers them, and `parse_resize` on every payload: never a panic; the frames that
//! come out re-encode to exactly the bytes they were cut from.
#![no_main]

use bolt_agent::wire::frame::{encode, parse_resize, Decoder, MAX_PAYLOAD, RESIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = Decoder::default();
    let mut consumed = Vec::new();
    'feed: for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some((kind, payload))) => {
                    assert!(payload.len() <= MAX_PAYLOAD);
                    if kind == RESIZE {
                        let _ = parse_resize(&payload);
                    }
                    consumed.extend_from_slice(&encode(kind, &payload));
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(consumed, stream[..consumed.len()]);
});
