//! Property tests of the decoder on hostile bytes: random input and mutated valid envelopes
//! never panic, and a mutated envelope is always refused (by the decoder or the signature); a
//! mutated event anywhere in a batch-signed run makes `append_remote` refuse the whole run.
//! The same entry points are fuzzed by `events/fuzz` (`cargo +nightly fuzz run decode_envelope`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use bolt_events::{CodecError, Envelope, Event};
use bolt_events::{Cursor, LogError};
use common::{node_started, payload, temp_log, Remote};
use proptest::prelude::*;

/// A few valid signed envelopes (signing is slow in debug builds: done once).
fn samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let mut r = Remote::new(2);
        vec![
            r.next(&node_started("alpha")).to_bytes(),
            r.next(&payload(7)).to_bytes(),
            r.next(&payload(123_456_789)).to_bytes(),
        ]
    })
}

/// One run of 8 events of another node, signed at its end only (format 2), as bytes.
fn run_sample() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| Remote::new(3).run(8).iter().map(|e| e.to_bytes()).collect())
}

/// What the fuzz target does: decode, and check the signature of whatever decodes.
fn decode_and_verify(bytes: &[u8]) -> Result<Event, String> {
    let event = Event::from_bytes(bytes).map_err(|e| e.to_string())?;
    event
        .envelope
        .verify_signature()
        .map_err(|e| e.to_string())?;
    Ok(event)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Truncate { len: usize },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match *m {
        Mutation::Flip { at, xor } => out[at % bytes.len()] ^= xor,
        Mutation::Truncate { len } => out.truncate(len % bytes.len()),
        Mutation::Insert { at, byte } => out.insert(at % (bytes.len() + 1), byte),
        Mutation::Remove { at } => {
            out.remove(at % bytes.len());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_and_verify(&bytes);
        let _ = Envelope::from_bytes(&bytes).map(|e| e.decode_payload());
    }

    #[test]
    fn random_bytes_after_a_valid_format_byte_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        for format in [1u8, 2] {
            let mut input = vec![format];
            input.extend(bytes.iter().copied());
            let _ = decode_and_verify(&input);
        }
    }

    #[test]
    fn a_mutated_event_anywhere_in_a_run_refuses_the_whole_run(
        which in 0usize..8,
        m in mutation(),
    ) {
        let run = run_sample();
        let mutated = apply(&run[which], &m);
        prop_assume!(mutated != run[which]);
        // Bytes that no longer decode never reach the log; the rest is offered as the run.
        if let Ok(env) = Envelope::from_bytes(&mutated) {
            let mut envs: Vec<Envelope> =
                run.iter().map(|b| Envelope::from_bytes(b).unwrap()).collect();
            envs[which] = env;
            let (_dir, _path, log) = temp_log(1);
            let r = log.append_remote(envs);
            prop_assert!(matches!(r, Err(LogError::Remote(_))), "{m:?} at {which}: {r:?}");
            prop_assert_eq!(log.head(), Cursor(0));
        }
    }

    #[test]
    fn a_mutated_envelope_is_always_refused(which in 0usize..3, m in mutation()) {
        let original = &samples()[which];
        let mutated = apply(original, &m);
        prop_assume!(&mutated != original);
        prop_assert!(decode_and_verify(&mutated).is_err(), "{m:?} was accepted");
    }
}

#[test]
fn valid_envelopes_round_trip_and_verify() {
    for bytes in samples() {
        let event = decode_and_verify(bytes).unwrap();
        assert_eq!(&event.envelope.to_bytes(), bytes);
        assert_eq!(event.hash, event.envelope.hash());
    }
}

#[test]
fn an_over_long_varint_is_refused_so_every_envelope_has_one_encoding() {
    let bytes = &samples()[0];
    // format (1 byte), origin (32 bytes), then seq = 1 as a one-byte varint; re-encode it in
    // the three-byte form bincode also reads.
    assert_eq!(bytes[33], 1);
    let mut long = bytes[..33].to_vec();
    long.extend_from_slice(&[251, 1, 0]);
    long.extend_from_slice(&bytes[34..]);
    assert_eq!(
        Envelope::from_bytes(&long),
        Err(CodecError::Malformed("non-canonical encoding".into()))
    );
}

#[test]
fn empty_input_and_unknown_format_are_named() {
    assert!(matches!(
        Envelope::from_bytes(&[]),
        Err(CodecError::Malformed(_))
    ));
    let mut bytes = samples()[0].clone();
    bytes[0] = 9;
    assert_eq!(
        Envelope::from_bytes(&bytes),
        Err(CodecError::UnknownFormat(9))
    );
    bytes[0] = bolt_events::envelope::FORMAT;
    bytes.push(0);
    assert_eq!(Envelope::from_bytes(&bytes), Err(CodecError::Trailing(1)));
}
