//! Fuzz the decoder of untrusted event bytes: `Event::from_bytes` (envelope, canonical form,
//! schema, payload with upcasting) and `Envelope::verify_signature` on whatever decodes.
//!
//! Run: `cargo +nightly fuzz run decode_envelope` from `events/`.
#![no_main]

use bolt_events::{Envelope, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Event::from_bytes(data) {
        Ok(event) => {
            // Whatever decodes re-encodes to exactly the input: one byte string per event.
            assert_eq!(event.envelope.to_bytes(), data);
            assert_eq!(event.hash, event.envelope.hash());
            let _ = event.envelope.verify_signature();
        }
        Err(_) => {
            // The envelope alone may still decode (a bad payload); check its signature too.
            if let Ok(env) = Envelope::from_bytes(data) {
                let _ = env.verify_signature();
                let _ = env.decode_payload();
            }
        }
    }
});
