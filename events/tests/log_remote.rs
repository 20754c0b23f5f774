//! `append_remote`: other origins' events, in order, chained, signed, decodable; re-delivery is
//! idempotent and a refused batch stores nothing.
#![allow(clippy::unwrap_used)]

mod common;

use bolt_events::{CodecError, Cursor, Hash, Hlc, LogError, RemoteError, SignatureError};
use common::{key, payload, temp_log, Remote};

fn remote_err(r: Result<Vec<bolt_events::Appended>, LogError>) -> RemoteError {
    match r {
        Err(LogError::Remote(e)) => e,
        other => panic!("expected a remote refusal, got {other:?}"),
    }
}

#[test]
fn given_a_chain_from_another_node_when_appended_then_stored_with_its_hashes() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.chain(3);
    let out = log.append_remote(envs.clone()).unwrap();
    assert_eq!(out.len(), 3);
    for (a, e) in out.iter().zip(&envs) {
        assert_eq!(&a.event.envelope, e);
        assert_eq!(a.event.hash, e.hash());
        assert_eq!(a.event.payload, e.decode_payload().unwrap());
    }
    assert_eq!(log.tip(r.key.id()).unwrap(), Some((3, envs[2].hash())));
    assert_eq!(log.head(), Cursor(3));
}

#[test]
fn given_our_own_event_when_appended_as_remote_then_own_origin() {
    let (_dir, _path, log) = temp_log(1);
    let own = key(1).seal(1, Hlc::new(5, 0), Hash::ZERO, &payload(1));
    let e = remote_err(log.append_remote(vec![own]));
    assert!(matches!(e, RemoteError::OwnOrigin { seq: 1, .. }), "{e:?}");
    assert_eq!(log.head(), Cursor(0));
}

#[test]
fn given_a_skipped_seq_when_appended_then_gap_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.chain(3);
    let e = remote_err(log.append_remote(vec![envs[0].clone(), envs[2].clone()]));
    assert_eq!(
        e,
        RemoteError::Gap {
            origin: r.key.id().short(),
            expected: 2,
            got: 3
        }
    );
    assert_eq!(log.head(), Cursor(0), "the batch is all-or-nothing");
    assert_eq!(log.tip(r.key.id()).unwrap(), None);
}

#[test]
fn given_seq_zero_when_appended_then_gap() {
    let (_dir, _path, log) = temp_log(1);
    let r = Remote::new(2);
    let zero = r.key.seal(0, Hlc::new(5, 0), Hash::ZERO, &payload(1));
    let e = remote_err(log.append_remote(vec![zero]));
    assert!(
        matches!(
            e,
            RemoteError::Gap {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn given_a_prev_that_is_not_our_tip_when_appended_then_fork() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    log.append_remote(r.chain(2)).unwrap();
    // A second history of the same origin: seq 3 chained on something else.
    let forked = r
        .key
        .seal(3, Hlc::new(9_000, 0), Hash([7; 32]), &payload(3));
    let e = remote_err(log.append_remote(vec![forked]));
    assert!(matches!(e, RemoteError::Fork { seq: 3, .. }), "{e:?}");
    // A first event must chain on ZERO.
    let mut r3 = Remote::new(3);
    r3.prev = Hash([1; 32]);
    let e = remote_err(log.append_remote(r3.chain(1)));
    assert!(matches!(e, RemoteError::Fork { seq: 1, .. }), "{e:?}");
    assert_eq!(log.head(), Cursor(2));
}

#[test]
fn given_a_tampered_event_when_appended_then_bad_signature_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut envs = r.chain(3);
    envs[1].payload = bolt_events::payload::encode_payload(&payload(99));
    let e = remote_err(log.append_remote(envs));
    assert!(
        matches!(
            e,
            RemoteError::Signature(SignatureError::Invalid { seq: 2, .. })
        ),
        "{e:?}"
    );
    assert_eq!(log.head(), Cursor(0));
}

#[test]
fn given_a_large_batch_with_one_bad_signature_when_appended_then_refused_whole() {
    // Large enough to take the parallel signature check.
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut envs = r.chain(300);
    envs[250].sig.as_mut().unwrap()[0] ^= 1;
    let e = remote_err(log.append_remote(envs.clone()));
    assert!(
        matches!(
            e,
            RemoteError::Signature(SignatureError::Invalid { seq: 251, .. })
        ),
        "{e:?}"
    );
    assert_eq!(log.head(), Cursor(0));
    envs[250].sig.as_mut().unwrap()[0] ^= 1;
    assert_eq!(log.append_remote(envs).unwrap().len(), 300);
}

#[test]
fn given_an_origin_that_is_not_a_public_key_when_appended_then_bad_origin_key() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut env = r.chain(1).remove(0);
    // Not a point on the curve: y = 2 has no x.
    let mut bad = [0u8; 32];
    bad[0] = 2;
    env.origin = bolt_events::NodeId(bad);
    let e = remote_err(log.append_remote(vec![env]));
    assert!(matches!(e, RemoteError::Signature(_)), "{e:?}");
}

#[test]
fn given_an_event_of_a_future_schema_when_appended_then_unknown_schema() {
    let (_dir, _path, log) = temp_log(1);
    let r = Remote::new(2);
    let future = r
        .key
        .seal_bytes(1, Hlc::new(5, 0), Hash::ZERO, 3, vec![0, 1, 2]);
    let e = remote_err(log.append_remote(vec![future]));
    assert_eq!(
        e,
        RemoteError::Codec(CodecError::UnknownSchema {
            found: 3,
            newest: bolt_events::CURRENT_SCHEMA
        })
    );
    assert_eq!(log.head(), Cursor(0));
}

#[test]
fn given_a_signed_but_undecodable_payload_when_appended_then_codec_error() {
    let (_dir, _path, log) = temp_log(1);
    let r = Remote::new(2);
    let junk = r
        .key
        .seal_bytes(1, Hlc::new(5, 0), Hash::ZERO, 2, vec![200, 200, 200]);
    let e = remote_err(log.append_remote(vec![junk]));
    assert!(
        matches!(e, RemoteError::Codec(CodecError::Malformed(_))),
        "{e:?}"
    );
}

#[test]
fn given_an_unknown_envelope_format_when_appended_then_unknown_format() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut env = r.chain(1).remove(0);
    env.format = 3;
    let e = remote_err(log.append_remote(vec![env]));
    assert_eq!(e, RemoteError::Codec(CodecError::UnknownFormat(3)));
}

#[test]
fn given_events_already_held_when_delivered_again_then_skipped_and_the_rest_appended() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.chain(5);
    log.append_remote(envs[..3].to_vec()).unwrap();
    // Re-delivery of 2..=3 together with new 4..=5, and one duplicate inside the batch.
    let mut again = envs[1..].to_vec();
    again.push(envs[4].clone());
    let out = log.append_remote(again).unwrap();
    assert_eq!(
        out.iter().map(|a| a.event.seq()).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let commits = log.stats().commits;
    assert!(log.append_remote(envs.clone()).unwrap().is_empty());
    assert_eq!(log.head(), Cursor(5));
    assert_eq!(
        log.stats().commits,
        commits,
        "nothing new: no commit, no fsync"
    );
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_a_different_event_with_a_held_seq_when_delivered_then_conflict_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.chain(2);
    log.append_remote(envs.clone()).unwrap();
    let other = r.key.seal(2, Hlc::new(77, 0), envs[0].hash(), &payload(42));
    let mut r_next = Remote::new(2);
    r_next.seq = 2;
    r_next.prev = envs[1].hash();
    let mut batch = r_next.chain(1);
    batch.push(other);
    let e = remote_err(log.append_remote(batch));
    assert_eq!(
        e,
        RemoteError::Conflict {
            origin: r.key.id().short(),
            seq: 2
        }
    );
    assert_eq!(
        log.head(),
        Cursor(2),
        "seq 3 of the refused batch is not stored"
    );
}

#[test]
fn given_one_batch_from_several_origins_when_appended_then_each_chains_within_the_batch() {
    let (_dir, _path, log) = temp_log(1);
    let (mut a, mut b) = (Remote::new(2), Remote::new(3));
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.push(a.next(&payload(i)));
        batch.push(b.next(&payload(100 + i)));
    }
    let out = log.append_remote(batch).unwrap();
    assert_eq!(out.len(), 8);
    let vv = log.version_vector().unwrap();
    assert_eq!((vv[&a.key.id()], vv[&b.key.id()]), (4, 4));
    // One bad link for origin b refuses the events of origin a too.
    let mut batch = vec![a.next(&payload(5))];
    let mut broken = b.next(&payload(6));
    broken.prev = Hash([3; 32]);
    broken.sig = b
        .key
        .seal(broken.seq, broken.hlc, broken.prev, &payload(6))
        .sig;
    batch.push(broken);
    assert!(matches!(
        remote_err(log.append_remote(batch)),
        RemoteError::Fork { seq: 5, .. }
    ));
    assert_eq!(log.version_vector().unwrap()[&a.key.id()], 4);
}

#[test]
fn given_a_refused_request_when_others_are_in_the_same_group_then_they_still_commit() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.chain(3);
    std::thread::scope(|s| {
        let l = log.clone();
        let good = s.spawn(move || l.append(payload(1)));
        let l = log.clone();
        let gap = envs[2].clone();
        let bad = s.spawn(move || l.append_remote(vec![gap]));
        assert!(good.join().unwrap().is_ok());
        assert!(bad.join().unwrap().is_err());
    });
    assert_eq!(log.head(), Cursor(1));
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_a_remote_event_from_the_future_when_appended_then_later_local_events_sort_after_it() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    r.wall_ms = bolt_events::wall_clock_ms() + 10_000_000;
    let future = r.chain(1);
    log.append_remote(future.clone()).unwrap();
    let local = log.append(payload(1)).unwrap();
    assert!(local.event.hlc() > future[0].hlc);
    let order = log.read_total_order(log.head()).unwrap();
    assert_eq!(order.last().unwrap().cursor, local.cursor);
}

// Batch signatures (envelope format 2): a run of an origin's events carries one signature, on
// its last event; the chain authenticates the events before it.

#[test]
fn given_a_run_ending_at_a_signed_event_when_appended_then_stored_whole_and_clean() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.run(100);
    assert_eq!(envs.iter().filter(|e| e.is_signed()).count(), 1);
    let out = log.append_remote(envs.clone()).unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(log.tip(r.key.id()).unwrap(), Some((100, envs[99].hash())));
    // Two more runs in one call, then one of one event.
    let mut more = r.run(3);
    more.extend(r.run(2));
    assert_eq!(log.append_remote(more).unwrap().len(), 5);
    assert_eq!(log.append_remote(r.run(1)).unwrap().len(), 1);
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
    assert_eq!(report.events, 106);
}

#[test]
fn given_a_run_with_an_unsigned_tail_when_appended_then_refused_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut envs = r.run(5);
    envs.push(r.next_unsigned(&payload(6)));
    envs.push(r.next_unsigned(&payload(7)));
    let e = remote_err(log.append_remote(envs.clone()));
    assert_eq!(
        e,
        RemoteError::UnsignedTail {
            origin: r.key.id().short(),
            seq: 7
        }
    );
    assert_eq!(
        log.head(),
        Cursor(0),
        "not even the signed prefix is stored"
    );
    // A run with no signature at all.
    let e = remote_err(log.append_remote(envs[..4].to_vec()));
    assert!(
        matches!(e, RemoteError::UnsignedTail { seq: 4, .. }),
        "{e:?}"
    );
    // Stripping the signature of a run's end makes it a tail too.
    let mut stripped = envs[..5].to_vec();
    stripped[4].sig = None;
    let e = remote_err(log.append_remote(stripped));
    assert!(
        matches!(e, RemoteError::UnsignedTail { seq: 5, .. }),
        "{e:?}"
    );
    assert_eq!(log.head(), Cursor(0));
    // The authenticated prefix alone is taken; the tail later, once its run's end arrives.
    assert_eq!(log.append_remote(envs[..5].to_vec()).unwrap().len(), 5);
    let mut rest = envs[5..].to_vec();
    rest.push(r.next(&payload(8)));
    assert_eq!(log.append_remote(rest).unwrap().len(), 3);
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_several_origins_when_one_ends_unsigned_then_the_whole_batch_is_refused() {
    let (_dir, _path, log) = temp_log(1);
    let (mut a, mut b) = (Remote::new(2), Remote::new(3));
    let mut batch = a.run(3);
    batch.extend(b.run(2));
    batch.push(b.next_unsigned(&payload(9)));
    batch.extend(a.run(2));
    let e = remote_err(log.append_remote(batch));
    assert_eq!(
        e,
        RemoteError::UnsignedTail {
            origin: b.key.id().short(),
            seq: 3
        }
    );
    assert_eq!(log.head(), Cursor(0));
    assert!(log.version_vector().unwrap().is_empty());
}

#[test]
fn given_a_flipped_byte_in_the_middle_of_a_run_when_appended_then_refused_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.run(10);
    // Another payload in an unsigned event: its hash changes, the next event's prev breaks.
    let mut tampered = envs.clone();
    tampered[4].payload = bolt_events::payload::encode_payload(&payload(99));
    let e = remote_err(log.append_remote(tampered));
    assert!(matches!(e, RemoteError::Fork { seq: 6, .. }), "{e:?}");
    // A flipped bit in the HLC, the prev or the payload bytes of any middle event.
    for at in [0usize, 3, 8] {
        let mut t = envs.clone();
        t[at].hlc = Hlc(t[at].hlc.0 ^ 1);
        assert!(matches!(
            remote_err(log.append_remote(t)),
            RemoteError::Fork { .. }
        ));
        let mut t = envs.clone();
        t[at].prev.0[7] ^= 0x10;
        assert!(matches!(
            remote_err(log.append_remote(t)),
            RemoteError::Fork { .. }
        ));
    }
    // The same in the signed end: its signature no longer holds.
    let mut t = envs.clone();
    t[9].payload = bolt_events::payload::encode_payload(&payload(99));
    assert!(matches!(
        remote_err(log.append_remote(t)),
        RemoteError::Signature(SignatureError::Invalid { seq: 10, .. })
    ));
    let mut t = envs.clone();
    t[9].sig.as_mut().unwrap()[63] ^= 0x01;
    assert!(matches!(
        remote_err(log.append_remote(t)),
        RemoteError::Signature(_)
    ));
    // A run's end re-signed on another history does not chain on the run before it.
    let mut t = envs.clone();
    let last = &t[9];
    t[9] = r
        .key
        .seal(last.seq, last.hlc, Hash([1; 32]), &payload(last.seq));
    assert!(matches!(
        remote_err(log.append_remote(t)),
        RemoteError::Fork { seq: 10, .. }
    ));
    assert_eq!(log.head(), Cursor(0));
    assert_eq!(log.append_remote(envs).unwrap().len(), 10);
}

#[test]
fn given_held_unsigned_events_when_delivered_again_then_skipped_not_refused() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let envs = r.run(5);
    log.append_remote(envs.clone()).unwrap();
    // Re-delivery of the middle of a run: nothing new, so no tail to authenticate.
    assert!(log.append_remote(envs[1..3].to_vec()).unwrap().is_empty());
    // But a different copy of a held unsigned event is still a conflict.
    let other = r
        .key
        .seal_unsigned(2, Hlc::new(5, 0), envs[0].hash(), &payload(77));
    assert!(matches!(
        remote_err(log.append_remote(vec![other])),
        RemoteError::Conflict { seq: 2, .. }
    ));
}

/// The format-1 envelope (every event signed, an older build's) of `seq` on `prev`.
fn format1(r: &Remote, seq: u64, prev: Hash) -> bolt_events::Envelope {
    let mut env = bolt_events::Envelope {
        format: bolt_events::envelope::FORMAT_V1,
        origin: r.key.id(),
        seq,
        hlc: Hlc::new(500 + seq, 0),
        schema: bolt_events::CURRENT_SCHEMA,
        prev,
        payload: bolt_events::payload::encode_payload(&payload(seq)),
        sig: None,
    };
    r.key.sign(&mut env);
    env
}

#[test]
fn given_format1_events_from_an_older_peer_when_appended_then_each_is_checked_and_stored() {
    let (_dir, _path, log) = temp_log(1);
    let mut r = Remote::new(2);
    let mut envs = Vec::new();
    let mut prev = Hash::ZERO;
    for seq in 1..=3 {
        let env = format1(&r, seq, prev);
        prev = env.hash();
        envs.push(env);
    }
    // Every format-1 signature counts: a bad one in the middle refuses the batch.
    let mut bad = envs.clone();
    bad[1].sig.as_mut().unwrap()[0] ^= 1;
    assert!(matches!(
        remote_err(log.append_remote(bad)),
        RemoteError::Signature(SignatureError::Invalid { seq: 2, .. })
    ));
    // A format-1 envelope cannot be unsigned.
    let mut unsigned = envs.clone();
    unsigned[2].sig = None;
    assert!(matches!(
        remote_err(log.append_remote(unsigned)),
        RemoteError::Codec(CodecError::Malformed(_))
    ));
    assert_eq!(log.head(), Cursor(0));
    assert_eq!(log.append_remote(envs).unwrap().len(), 3);
    // The peer upgraded: format-2 runs go on from its format-1 chain.
    r.seq = 3;
    r.prev = prev;
    assert_eq!(log.append_remote(r.run(4)).unwrap().len(), 4);
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
}

#[test]
fn given_a_weak_key_origin_with_a_forged_signature_when_appended_then_refused() {
    // The identity point as a public key: with it, R = s·B satisfies the cofactorless equation
    // for every message, so `verify` (and `verify_batch`) accept this forgery; `verify_strict`
    // refuses weak keys.
    let (_dir, _path, log) = temp_log(1);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let basepoint: [u8; 32] =
        hex::decode("5866666666666666666666666666666666666666666666666666666666666666")
            .unwrap()
            .try_into()
            .unwrap();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&basepoint);
    sig[32] = 1;
    let mut run = Vec::new();
    let mut prev = Hash::ZERO;
    for seq in 1..=3 {
        let env = bolt_events::Envelope {
            format: bolt_events::envelope::FORMAT,
            origin: bolt_events::NodeId(identity),
            seq,
            hlc: Hlc::new(100 + seq, 0),
            schema: bolt_events::CURRENT_SCHEMA,
            prev,
            payload: bolt_events::payload::encode_payload(&payload(seq)),
            sig: (seq == 3).then_some(sig),
        };
        prev = env.hash();
        run.push(env);
    }
    let e = remote_err(log.append_remote(run));
    assert!(matches!(e, RemoteError::Signature(_)), "{e:?}");
    assert_eq!(log.head(), Cursor(0));
}
