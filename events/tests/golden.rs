//! Golden files: envelopes of every schema this crate ever wrote, encoded once and committed in
//! `events/testdata/`. They must decode to exactly these values forever, with the same hashes
//! and valid signatures, so an old log stays readable.
//!
//! A variant appended to a schema gets a new file that continues the chain (never an edit of an
//! old one): `envelopes-schema2-cluster.hex` holds the `cluster.*` events.
//!
//! Regenerate (only when adding a schema or a file, never to paper over a break; the old files
//! must come out byte for byte the same):
//! `BOLT_BLESS=1 cargo test -p bolt-events --test golden`
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bolt_events::key::encode_v1;
use bolt_events::payload::v1::{NodeEventV1, PayloadV1};
use bolt_events::payload::{
    CapsuleEvent, CapsuleSpec, ClusterEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent,
    PlacementEvent, RevisionEvent, ServiceEvent, ServiceSpec, VolumeEvent,
};
use bolt_events::{Envelope, Event, Hash, Hlc, NodeId, NodeKey, Payload};

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

/// The golden chain: schema-1 events first (seq 1..), then schema-2 events, as an old node that
/// was upgraded would have written them, then the cluster events. HLCs are fixed.
fn sealed() -> (Vec<Envelope>, Vec<Envelope>, Vec<Envelope>) {
    let key = golden_key();
    let mut prev = Hash::ZERO;
    let mut seq = 0;
    let mut next = |schema: u16, bytes: Vec<u8>| {
        seq += 1;
        let env = key.seal_bytes(
            seq,
            Hlc::new(1_760_000_000_000 + seq, 0),
            prev,
            schema,
            bytes,
        );
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
    let v2_cluster = cluster()
        .iter()
        .map(|p| next(2, bolt_events::payload::encode_payload(p)))
        .collect();
    (v1, v2, v2_cluster)
}

/// The file of the cluster events (schema 2).
const CLUSTER: u16 = 102;

/// `file(1)`, `file(2)`: the schema's first file; `file(CLUSTER)`: the cluster events.
fn file(schema: u16) -> PathBuf {
    let name = match schema {
        CLUSTER => "envelopes-schema2-cluster.hex".to_string(),
        s => format!("envelopes-schema{s}.hex"),
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Write the golden files (only with BOLT_BLESS=1).
fn bless() {
    let (v1, v2, v2_cluster) = sealed();
    for (schema, envs) in [(1u16, v1), (2, v2), (CLUSTER, v2_cluster)] {
        let schema_of = if schema == CLUSTER { 2 } else { schema };
        let mut text = format!(
            "# bolt golden envelopes, payload schema {schema_of}: one per line, `seq hash hex(envelope)`.\n\
             # Written by `BOLT_BLESS=1 cargo test -p bolt-events --test golden`. Never edit.\n"
        );
        for e in &envs {
            text.push_str(&format!(
                "{} {} {}\n",
                e.seq,
                e.hash(),
                hex::encode(e.to_bytes())
            ));
        }
        std::fs::create_dir_all(file(schema).parent().unwrap()).unwrap();
        std::fs::write(file(schema), text).unwrap();
    }
}

/// (seq, recorded hash, bytes) of every line of a golden file. With BOLT_BLESS=1 the files
/// are written first (once, whichever test gets here first).
fn read(schema: u16) -> Vec<(u64, Hash, Vec<u8>)> {
    static BLESS: std::sync::Once = std::sync::Once::new();
    if std::env::var("BOLT_BLESS").as_deref() == Ok("1") {
        BLESS.call_once(bless);
    }
    let path = file(schema);
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
    let v2_cluster = read(CLUSTER);
    let expected: Vec<Payload> = schema1()
        .into_iter()
        .map(|(_, up)| up)
        .chain(schema2())
        .chain(cluster())
        .collect();
    assert_eq!(v1.len(), schema1().len());
    assert_eq!(v2_cluster.len(), cluster().len());
    assert_eq!(v1.len() + v2.len() + v2_cluster.len(), expected.len());

    let origin = golden_key().id();
    let mut prev = Hash::ZERO;
    let lines = v1
        .iter()
        .map(|l| (1u16, l))
        .chain(v2.iter().map(|l| (2u16, l)))
        .chain(v2_cluster.iter().map(|l| (2u16, l)));
    for (i, ((schema, (seq, recorded, bytes)), want)) in lines.zip(&expected).enumerate() {
        let n = i as u64 + 1;
        let event = Event::from_bytes(bytes).unwrap();
        let env = &event.envelope;
        assert_eq!(*seq, n);
        assert_eq!(
            (env.format, env.origin, env.seq, env.hlc, env.schema),
            (1, origin, n, Hlc::new(1_760_000_000_000 + n, 0), schema),
            "header of seq {n}"
        );
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
    // change to the wire form cannot slip in unnoticed.
    let (v1, v2, v2_cluster) = sealed();
    for (schema, envs) in [(1u16, v1), (2, v2), (CLUSTER, v2_cluster)] {
        let stored = read(schema);
        assert_eq!(stored.len(), envs.len());
        for ((_, _, bytes), env) in stored.iter().zip(&envs) {
            assert_eq!(bytes, &env.to_bytes(), "schema {schema} seq {}", env.seq);
        }
    }
}

#[test]
fn a_golden_chain_loads_into_a_log_as_a_remote_origin_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = bolt_events::Log::open(&dir.path().join("events.redb"), NodeKey::from_seed([1; 32]))
        .unwrap();
    let envs: Vec<Envelope> = read(1)
        .into_iter()
        .chain(read(2))
        .chain(read(CLUSTER))
        .map(|(_, _, b)| Envelope::from_bytes(&b).unwrap())
        .collect();
    let out = log.append_remote(envs).unwrap();
    assert_eq!(
        out.len(),
        schema1().len() + schema2().len() + cluster().len()
    );
    assert!(log.verify().unwrap().is_clean());
}
