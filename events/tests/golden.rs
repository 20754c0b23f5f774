//! Golden files: envelopes of every schema and envelope format this crate ever wrote, encoded
//! once and committed in `events/testdata/`. They must decode to exactly these values forever,
//! with the same hashes and valid signatures, so an old log stays readable.
//!
//! - `envelopes-schema{1,2}.hex`: envelope format 1 (every event signed), payload schemas 1, 2.
//! - `envelopes-schema2-cluster.hex`: the `cluster.*` payloads (appended to schema 2), envelope
//!   format 1, continuing the schema-2 chain (written before format 2; a second continuation of
//!   the same chain, checked on its own).
//! - `envelopes-format2.hex`: envelope format 2 (batch signatures: only the last event of each
//!   run signed), continuing the same chain, as a node upgraded from format 1 writes it.
//!
//! Write a missing file (only when adding a schema or a format; an existing file is never
//! rewritten, never to paper over a break): `BOLT_BLESS=1 cargo test -p bolt-events --test golden`
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bolt_events::envelope::{FORMAT, FORMAT_V1};
use bolt_events::key::encode_v1;
use bolt_events::payload::v1::{NodeEventV1, PayloadV1};
use bolt_events::payload::{
    CapsuleEvent, CapsuleSpec, ClusterEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent,
    PlacementEvent, RevisionEvent, ServiceEvent, ServiceSpec, VolumeEvent,
};
use bolt_events::{Envelope, Event, Hash, Hlc, NodeId, NodeKey, Payload, SignatureError};

fn golden_key() -> NodeKey {
    NodeKey::from_seed([42; 32])
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Schema-1 payloads and what they must upcast to.
fn schema1() -> Vec<(PayloadV1, Payload)> {
    vec![
        (
            PayloadV1::Node(NodeEventV1::Started {
                name: "alpha".into(),
                version: "0.0.9".into(),
            }),
            Payload::Node(NodeEvent::Started {
                name: "alpha".into(),
                version: "0.0.9".into(),
                addr: None,
                labels: BTreeMap::new(),
            }),
        ),
        (
            PayloadV1::Capsule(CapsuleEvent::Started {
                id: "c-1".into(),
                pid: 4242,
            }),
            Payload::Capsule(CapsuleEvent::Started {
                id: "c-1".into(),
                pid: 4242,
            }),
        ),
        (
            PayloadV1::Node(NodeEventV1::Stopped {
                reason: "upgrade".into(),
            }),
            Payload::Node(NodeEvent::Stopped {
                reason: "upgrade".into(),
            }),
        ),
    ]
}

/// Schema-2 payloads: one of most variants, with every field set.
fn schema2() -> Vec<Payload> {
    let peer = NodeId([7; 32]);
    vec![
        Payload::Node(NodeEvent::Started {
            name: "alpha".into(),
            version: "0.1.0".into(),
            addr: Some("10.0.0.1:7946".into()),
            labels: labels(&[("zone", "a"), ("disk", "ssd")]),
        }),
        Payload::Image(ImageEvent::Pulled {
            reference: "docker.io/library/nginx:1.27".into(),
            digest: "sha256:aaaa".into(),
            config_digest: "sha256:bbbb".into(),
            layers: vec!["sha256:l1".into(), "sha256:l2".into()],
            size: 71_234_567,
        }),
        Payload::Capsule(CapsuleEvent::Created {
            id: "c-2".into(),
            name: "web-1".into(),
            spec: CapsuleSpec {
                image: "nginx:1.27".into(),
                image_digest: "sha256:aaaa".into(),
                command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                env: vec!["A=1".into()],
                workdir: Some("/srv".into()),
                user: Some("101".into()),
                hostname: Some("web-1".into()),
                network: "bolt0".into(),
                memory_bytes: Some(256 << 20),
                cpu_millis: Some(500),
                pids_limit: Some(128),
                restart: "always".into(),
                ports: vec!["8080:80/tcp".into()],
                mounts: vec!["data:/data".into()],
                labels: labels(&[("app", "web")]),
            },
        }),
        Payload::Capsule(CapsuleEvent::Exited {
            id: "c-2".into(),
            code: None,
            signal: Some(9),
            oom: true,
        }),
        Payload::Service(ServiceEvent::Declared {
            name: "web".into(),
            stack: "shop".into(),
            spec: ServiceSpec {
                image: "nginx:1.27".into(),
                command: vec![],
                env: vec!["B=2".into()],
                replicas: 3,
                ports: vec!["80".into()],
                depends_on: vec!["db".into()],
                health: Some("http://:80/health".into()),
                labels: labels(&[("tier", "front")]),
            },
        }),
        Payload::Revision(RevisionEvent::Recorded {
            service: "web".into(),
            revision: 7,
            spec_hash: Hash([5; 32]),
        }),
        Payload::Placement(PlacementEvent::Placed {
            service: "web".into(),
            replica: 2,
            node: peer,
        }),
        Payload::Migration(MigrationEvent::Completed {
            capsule: "c-2".into(),
            from: peer,
            to: NodeId([8; 32]),
        }),
        Payload::Volume(VolumeEvent::Created {
            name: "data".into(),
            driver: "local".into(),
            labels: BTreeMap::new(),
        }),
        Payload::Network(NetworkEvent::AddressAllocated {
            network: "bolt0".into(),
            capsule: "c-2".into(),
            ip: Ipv4Addr::new(10, 88, 0, 5),
        }),
    ]
}

/// The HLC of golden event `seq`.
fn golden_hlc(seq: u64) -> Hlc {
    Hlc::new(1_760_000_000_000 + seq, 0)
}

/// The golden chain in format 1: schema-1 events first (seq 1..), then schema-2 events, as an
/// old node that was upgraded would have written them. HLCs are fixed.
fn sealed() -> (Vec<Envelope>, Vec<Envelope>) {
    let key = golden_key();
    let mut prev = Hash::ZERO;
    let mut seq = 0;
    let mut next = |schema: u16, payload: Vec<u8>| {
        seq += 1;
        // What a format-1 build sealed: every event signed.
        let mut env = Envelope {
            format: FORMAT_V1,
            origin: key.id(),
            seq,
            hlc: golden_hlc(seq),
            schema,
            prev,
            payload,
            sig: None,
        };
        key.sign(&mut env);
        prev = env.hash();
        env
    };
    let v1 = schema1()
        .iter()
        .map(|(p, _)| next(1, encode_v1(p)))
        .collect();
    let v2 = schema2()
        .iter()
        .map(|p| next(2, bolt_events::payload::encode_payload(p)))
        .collect();
    (v1, v2)
}

/// The runs of the format-2 golden file: how many events each run (commit group) holds.
const FORMAT2_RUNS: [u64; 3] = [4, 1, 3];

/// Format-2 payloads: the chain goes on after the format-1 events, in runs of `FORMAT2_RUNS`.
fn format2_payloads() -> Vec<Payload> {
    (0..FORMAT2_RUNS.iter().sum::<u64>())
        .map(|i| {
            Payload::Capsule(CapsuleEvent::Started {
                id: format!("c-{i}"),
                pid: 100 + i as u32,
            })
        })
        .collect()
}

/// Whether the `i`-th event (from 0) of the format-2 golden file ends a run.
fn format2_signed(i: usize) -> bool {
    let mut end = 0;
    FORMAT2_RUNS.iter().any(|n| {
        end += *n as usize;
        end == i + 1
    })
}

/// The format-2 golden events, as this build seals them, chained on the format-1 events.
fn sealed_format2() -> Vec<Envelope> {
    let key = golden_key();
    let (v1, v2) = sealed();
    let mut prev = v2.last().unwrap().hash();
    let mut seq = (v1.len() + v2.len()) as u64;
    format2_payloads()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            seq += 1;
            let env = if format2_signed(i) {
                key.seal(seq, golden_hlc(seq), prev, p)
            } else {
                key.seal_unsigned(seq, golden_hlc(seq), prev, p)
            };
            prev = env.hash();
            env
        })
        .collect()
}

fn file(schema: u16) -> PathBuf {
    testdata(&format!("envelopes-schema{schema}.hex"))
}

fn format2_file() -> PathBuf {
    testdata("envelopes-format2.hex")
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// The text of a golden file.
fn golden_text(what: &str, envs: &[Envelope]) -> String {
    let mut text = format!(
        "# bolt golden envelopes, {what}: one per line, `seq hash hex(envelope)`.\n\
         # Written by `BOLT_BLESS=1 cargo test -p bolt-events --test golden`. Never edit.\n"
    );
    for e in envs {
        text.push_str(&format!(
            "{} {} {}\n",
            e.seq,
            e.hash(),
            hex::encode(e.to_bytes())
        ));
    }
    text
}

/// Write the golden files that are missing (only with BOLT_BLESS=1); existing ones are kept.
fn bless() {
    let (v1, v2) = sealed();
    let files = [
        (file(1), golden_text("payload schema 1", &v1)),
        (file(2), golden_text("payload schema 2", &v2)),
        (
            format2_file(),
            golden_text(
                "envelope format 2 (runs of 4, 1, 3 events, the last of each signed)",
                &sealed_format2(),
            ),
        ),
    ];
    for (path, text) in files {
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
}

/// (seq, recorded hash, bytes) of every line of a golden file. With BOLT_BLESS=1 the missing
/// files are written first (once, whichever test gets here first).
fn read(schema: u16) -> Vec<(u64, Hash, Vec<u8>)> {
    read_path(file(schema))
}

fn read_path(path: PathBuf) -> Vec<(u64, Hash, Vec<u8>)> {
    static BLESS: std::sync::Once = std::sync::Once::new();
    if std::env::var("BOLT_BLESS").as_deref() == Ok("1") {
        BLESS.call_once(bless);
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with BOLT_BLESS=1)", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let seq = parts.next().unwrap().parse().unwrap();
            let hash = parts.next().unwrap().parse().unwrap();
            let bytes = hex::decode(parts.next().unwrap()).unwrap();
            (seq, hash, bytes)
        })
        .collect()
}

#[test]
fn golden_envelopes_of_every_schema_decode_to_the_same_values_hashes_and_signatures() {
    let v1 = read(1);
    let v2 = read(2);
    let expected: Vec<Payload> = schema1()
        .into_iter()
        .map(|(_, up)| up)
        .chain(schema2())
        .collect();
    assert_eq!(v1.len(), schema1().len());
    assert_eq!(v1.len() + v2.len(), expected.len());

    let origin = golden_key().id();
    let mut prev = Hash::ZERO;
    let lines = v1
        .iter()
        .map(|l| (1u16, l))
        .chain(v2.iter().map(|l| (2u16, l)));
    for (i, ((schema, (seq, recorded, bytes)), want)) in lines.zip(&expected).enumerate() {
        let n = i as u64 + 1;
        let event = Event::from_bytes(bytes).unwrap();
        let env = &event.envelope;
        assert_eq!(*seq, n);
        assert_eq!(
            (env.format, env.origin, env.seq, env.hlc, env.schema),
            (FORMAT_V1, origin, n, golden_hlc(n), schema),
            "header of seq {n}"
        );
        assert!(env.is_signed(), "every format-1 event is signed");
        assert_eq!(&event.payload, want, "payload of seq {n} (schema {schema})");
        // The hash is stable: of the stored bytes, of the re-encoding, and as recorded.
        assert_eq!(event.hash, *recorded, "hash of seq {n}");
        assert_eq!(env.hash(), *recorded, "re-encoded hash of seq {n}");
        assert_eq!(&env.to_bytes(), bytes, "re-encoding of seq {n}");
        assert_eq!(env.prev, prev, "chain link of seq {n}");
        env.verify_signature().unwrap();
        prev = event.hash;
    }
}

#[test]
fn golden_envelopes_are_what_this_build_would_seal_today() {
    // Sealing is deterministic (ed25519): today's code must reproduce the committed bytes, so a
    // change to the wire form cannot slip in unnoticed. Format 1 is built field by field (this
    // build writes format 2), format 2 as the writer seals it.
    let (v1, v2) = sealed();
    for (schema, envs) in [(1u16, v1), (2, v2)] {
        let stored = read(schema);
        assert_eq!(stored.len(), envs.len());
        for ((_, _, bytes), env) in stored.iter().zip(&envs) {
            assert_eq!(bytes, &env.to_bytes(), "schema {schema} seq {}", env.seq);
        }
    }
    let stored = read_path(format2_file());
    let envs = sealed_format2();
    assert_eq!(stored.len(), envs.len());
    for ((_, _, bytes), env) in stored.iter().zip(&envs) {
        assert_eq!(bytes, &env.to_bytes(), "format 2 seq {}", env.seq);
    }
}

#[test]
fn given_the_format2_golden_file_when_decoded_then_runs_chain_on_format1_and_end_signed() {
    let (v1, v2) = sealed();
    let mut prev = v2.last().unwrap().hash();
    let first = (v1.len() + v2.len()) as u64 + 1;
    let lines = read_path(format2_file());
    let want = format2_payloads();
    assert_eq!(lines.len(), want.len());
    let mut signed = 0;
    for (i, ((seq, recorded, bytes), want)) in lines.iter().zip(&want).enumerate() {
        let n = first + i as u64;
        let event = Event::from_bytes(bytes).unwrap();
        let env = &event.envelope;
        assert_eq!(*seq, n);
        assert_eq!(
            (env.format, env.origin, env.seq, env.hlc, env.schema),
            (FORMAT, golden_key().id(), n, golden_hlc(n), 2),
            "header of seq {n}"
        );
        assert_eq!(&event.payload, want, "payload of seq {n}");
        assert_eq!(event.hash, *recorded, "hash of seq {n}");
        assert_eq!(&env.to_bytes(), bytes, "re-encoding of seq {n}");
        assert_eq!(env.prev, prev, "chain link of seq {n}");
        // Signed exactly at the end of each run; the others are authenticated by the chain.
        assert_eq!(env.is_signed(), format2_signed(i), "signature of seq {n}");
        if env.is_signed() {
            env.verify_signature().unwrap();
            signed += 1;
        } else {
            assert!(matches!(
                env.verify_signature(),
                Err(SignatureError::Unsigned { .. })
            ));
            // The unsigned encoding ends with the `None` tag; signed ones with 64 bytes more.
            assert_eq!(bytes.last(), Some(&0));
        }
        prev = event.hash;
    }
    assert_eq!(signed, FORMAT2_RUNS.len());
}

/// Every golden envelope, format 1 then format 2, in chain order.
fn golden_chain() -> Vec<Envelope> {
    read(1)
        .into_iter()
        .chain(read(2))
        .chain(read_path(format2_file()))
        .map(|(_, _, b)| Envelope::from_bytes(&b).unwrap())
        .collect()
}

#[test]
fn a_golden_chain_loads_into_a_log_as_a_remote_origin_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = bolt_events::Log::open(&dir.path().join("events.redb"), NodeKey::from_seed([1; 32]))
        .unwrap();
    let envs: Vec<Envelope> = read(1)
        .into_iter()
        .chain(read(2))
        .map(|(_, _, b)| Envelope::from_bytes(&b).unwrap())
        .collect();
    let out = log.append_remote(envs).unwrap();
    assert_eq!(out.len(), schema1().len() + schema2().len());
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_format1_then_format2_runs_of_one_origin_when_appended_remote_then_stored_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let log = bolt_events::Log::open(&dir.path().join("events.redb"), NodeKey::from_seed([1; 32]))
        .unwrap();
    let envs = golden_chain();
    let out = log.append_remote(envs.clone()).unwrap();
    assert_eq!(out.len(), envs.len());
    log.append(Payload::Node(NodeEvent::Stopped {
        reason: "local".into(),
    }))
    .unwrap();
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
    assert_eq!((report.events, report.origins), (envs.len() as u64 + 1, 2));
    // The golden origin's tip ends a run; a replicator reading it all sends it all.
    let origin = golden_key().id();
    let sent = log.read_origin_signed(origin, 1, usize::MAX).unwrap();
    assert_eq!(sent, envs);
}

#[test]
fn given_a_format1_log_of_this_node_when_reopened_by_this_build_then_it_reads_verifies_and_goes_on_in_format2(
) {
    // An old node's log: its own events, every one signed in format 1 (stored here through a
    // remote append on a log of another key, which writes the same rows an old build wrote).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let (v1, v2) = sealed();
    let old: Vec<Envelope> = v1.into_iter().chain(v2).collect();
    {
        let log = bolt_events::Log::open(&path, NodeKey::from_seed([1; 32])).unwrap();
        log.append_remote(old.clone()).unwrap();
    }
    // The upgraded node opens it with its own key.
    let log = bolt_events::Log::open(&path, golden_key()).unwrap();
    let read: Vec<Envelope> = log
        .read_after(bolt_events::Cursor(0), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|a| a.event.envelope)
        .collect();
    assert_eq!(read, old);
    assert!(log.verify().unwrap().is_clean());
    let batch = log
        .append_batch(format2_payloads().into_iter().take(3).collect())
        .unwrap();
    assert_eq!(batch[0].event.envelope.prev, old.last().unwrap().hash());
    assert!(batch.iter().all(|a| a.event.envelope.format == FORMAT));
    assert_eq!(
        batch
            .iter()
            .map(|a| a.event.envelope.is_signed())
            .collect::<Vec<_>>(),
        [false, false, true]
    );
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
}

/// Schema-2 payloads of the `Cluster` category (appended after `Snapshot`): every variant.
fn cluster() -> Vec<Payload> {
    let node = NodeId([9; 32]);
    vec![
        Payload::Cluster(ClusterEvent::Created {
            name: "prod".into(),
            ca_fingerprint: "sha256:cafe".into(),
        }),
        Payload::Cluster(ClusterEvent::Admitted {
            node,
            name: "beta".into(),
            addr: "10.0.0.2:7946".into(),
        }),
        Payload::Cluster(ClusterEvent::MemberDown { node }),
        Payload::Cluster(ClusterEvent::MemberUp { node }),
        Payload::Cluster(ClusterEvent::Left { node }),
        Payload::Cluster(ClusterEvent::Revoked {
            node,
            reason: "stolen laptop".into(),
        }),
    ]
}

#[test]
fn given_the_cluster_golden_file_when_decoded_then_format1_events_chain_on_schema2_and_verify() {
    let (v1, v2) = sealed();
    let mut prev = v2.last().unwrap().hash();
    let first = (v1.len() + v2.len()) as u64 + 1;
    let lines = read_path(testdata("envelopes-schema2-cluster.hex"));
    let want = cluster();
    assert_eq!(lines.len(), want.len());
    for (i, ((seq, recorded, bytes), want)) in lines.iter().zip(&want).enumerate() {
        let n = first + i as u64;
        let event = Event::from_bytes(bytes).unwrap();
        let env = &event.envelope;
        assert_eq!(*seq, n);
        assert_eq!(
            (env.format, env.origin, env.seq, env.hlc, env.schema),
            (FORMAT_V1, golden_key().id(), n, golden_hlc(n), 2),
            "header of seq {n}"
        );
        assert_eq!(&event.payload, want, "payload of seq {n}");
        assert_eq!(event.hash, *recorded, "hash of seq {n}");
        assert_eq!(&env.to_bytes(), bytes, "re-encoding of seq {n}");
        assert_eq!(env.prev, prev, "chain link of seq {n}");
        env.verify_signature().unwrap();
        prev = event.hash;
    }
}
