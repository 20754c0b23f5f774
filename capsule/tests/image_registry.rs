//! Pulls from the real loopback registry with the fixture images (tests/fixtures/build-images.sh).
//! Skipped when BOLT_TEST_REGISTRY is unset, failed instead under BOLT_REQUIRE_ROOT_TESTS=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::{Arc, Mutex};

use bolt_capsule::image::store::ImageError;
use bolt_capsule::image::{Digest, ImageStore, Phase, Platform, ProgressFn, PullOptions};
use bolt_events::payload::ImageEvent;

type Seen = (Digest, Phase, u64, Option<u64>);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn debian(reg: &str) -> String {
    format!("{reg}/bolt-test/debian:bookworm")
}

fn debian_extra(reg: &str) -> String {
    format!("{reg}/bolt-test/debian-extra:bookworm")
}

/// Every stored blob hashes to its name.
fn assert_blobs_verified(store: &ImageStore) {
    let dir = store.root().join("blobs/sha256");
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes).hex(),
            name,
            "blob {name} does not match its digest"
        );
    }
}

#[test]
fn debian_multilayer_pulls_with_whiteouts_applied() {
    let Some(reg) = common::registry("debian_multilayer_pulls_with_whiteouts_applied") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    let pulled = rt
        .block_on(store.pull(&debian(&reg), &PullOptions::default()))
        .unwrap();
    let rec = &pulled.record;
    assert!(
        rec.layers.len() >= 3,
        "expected 3 layers, got {}",
        rec.layers.len()
    );
    assert_eq!(pulled.reused.len(), 0);
    // Every layer and the config came over the wire, and every stored blob is verified.
    for l in &rec.layers {
        assert!(pulled.fetched.contains(&l.digest));
    }
    assert!(pulled.fetched.contains(&rec.config_digest));
    assert_blobs_verified(&store);

    // The event the agent appends carries the digests.
    match pulled.event() {
        ImageEvent::Pulled {
            reference,
            digest,
            config_digest,
            layers,
            size,
        } => {
            assert_eq!(reference, debian(&reg));
            assert_eq!(digest, rec.manifest_digest.to_string());
            assert_eq!(config_digest, rec.config_digest.to_string());
            assert_eq!(layers.len(), rec.layers.len());
            assert!(size > 0);
        }
        other => panic!("unexpected event {other:?}"),
    }

    let dirs = rt.block_on(store.layer_dirs(&debian(&reg))).unwrap();
    let top = dirs.last().unwrap();
    // The top layer holds the whiteouts as overlay wants them.
    let probe = fs::symlink_metadata(top.join("etc/bolt-whiteout-probe")).unwrap();
    if common::is_root() {
        assert!(
            probe.file_type().is_char_device() && probe.rdev() == 0,
            "whiteout is not a 0/0 char device"
        );
    }
    assert!(top.join("etc/bolt-fixture-marker").is_file());
    // The base layer still holds the file; the merged view does not.
    assert!(dirs[0].join("etc/bolt-whiteout-probe").is_file());
    let view = common::merged_view(&dirs);
    assert!(
        !view.contains_key("etc/bolt-whiteout-probe"),
        "deleted file is visible"
    );
    assert!(
        !view.contains_key("etc/bolt-whiteout-dir"),
        "deleted dir is visible"
    );
    assert!(!view.contains_key("etc/bolt-whiteout-dir/inner"));
    assert!(view.contains_key("etc/bolt-fixture-marker"));
    assert!(view.contains_key("usr/sbin/nginx") || view.contains_key("usr/sbin/redis-server"));

    // Owner, mode and mtime survive: /tmp is 1777, /root 0700 in Debian.
    let tmp = fs::metadata(dirs[0].join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    let passwd = fs::metadata(dirs[0].join("etc/passwd")).unwrap();
    assert!(passwd.mtime() > 1_600_000_000 && passwd.mtime() < 4_000_000_000);

    // With root, mount the real overlay in a private mount namespace and look.
    if common::is_root() {
        let merged = dir.path().join("merged");
        fs::create_dir(&merged).unwrap();
        let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
        let script = format!(
            "mount -t overlay overlay -o ro,lowerdir={} {m} && test ! -e {m}/etc/bolt-whiteout-probe && test ! -e {m}/etc/bolt-whiteout-dir && test -f {m}/etc/bolt-fixture-marker && test -x {m}/usr/sbin/nginx",
            lower.join(":"),
            m = merged.display()
        );
        let st = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .status()
            .unwrap();
        assert!(st.success(), "overlay view of the image is wrong");
    }
}

#[test]
fn second_image_fetches_only_new_layers() {
    let Some(reg) = common::registry("second_image_fetches_only_new_layers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    let first = rt
        .block_on(store.pull(&debian(&reg), &PullOptions::default()))
        .unwrap();
    let before = store.fetch_count();
    let second = rt
        .block_on(store.pull(&debian_extra(&reg), &PullOptions::default()))
        .unwrap();
    let base: BTreeSet<&Digest> = first.record.layers.iter().map(|l| &l.digest).collect();
    let new: Vec<&Digest> = second
        .record
        .layers
        .iter()
        .map(|l| &l.digest)
        .filter(|d| !base.contains(d))
        .collect();
    assert_eq!(new.len(), 1, "debian-extra adds one layer");
    // Fetched: the new config and the new layer only. The shared layers were reused.
    assert_eq!(
        store.fetch_count() - before,
        2,
        "fetched {:?}",
        second.fetched
    );
    assert!(second.fetched.contains(new[0]));
    assert!(second.fetched.contains(&second.record.config_digest));
    for d in &base {
        assert!(second.reused.contains(d), "base layer {d} was not reused");
        assert!(!second.fetched.contains(d));
    }
    assert_eq!(second.unpacked.len(), 1);
    // The opaque directory hides the lower content.
    let dirs = rt.block_on(store.layer_dirs(&debian_extra(&reg))).unwrap();
    let view = common::merged_view(&dirs);
    assert!(view.contains_key("etc/bolt-opaque-dir/extra-marker"));
    assert!(
        !view.contains_key("etc/bolt-opaque-dir/old-a"),
        "opaque dir did not hide lower content"
    );
    let records = rt.block_on(store.list()).unwrap();
    assert_eq!(records.len(), 2);
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    let Some(reg) = common::registry("concurrent_pulls_fetch_each_blob_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    let (a, b) = rt.block_on(async {
        let s1 = store.clone();
        let s2 = store.clone();
        let r1 = debian(&reg);
        let r2 = debian_extra(&reg);
        let h1 = tokio::spawn(async move { s1.pull(&r1, &PullOptions::default()).await });
        let h2 = tokio::spawn(async move { s2.pull(&r2, &PullOptions::default()).await });
        (h1.await.unwrap().unwrap(), h2.await.unwrap().unwrap())
    });
    let mut unique: BTreeSet<Digest> = BTreeSet::new();
    for r in [&a.record, &b.record] {
        unique.insert(r.config_digest.clone());
        for l in &r.layers {
            unique.insert(l.digest.clone());
        }
    }
    assert_eq!(
        store.fetch_count(),
        unique.len() as u64,
        "a shared blob was fetched twice"
    );
    let mut fetched: Vec<Digest> = a.fetched.iter().chain(b.fetched.iter()).cloned().collect();
    fetched.sort();
    let before = fetched.len();
    fetched.dedup();
    assert_eq!(
        before,
        fetched.len(),
        "both pulls report fetching the same blob"
    );
}

#[test]
fn corrupted_blob_and_bad_diff_id_are_refused() {
    let Some(reg) = common::registry("corrupted_blob_and_bad_diff_id_are_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    rt.block_on(store.pull(
        &format!("{reg}/bolt-test/busybox:latest"),
        &PullOptions::default(),
    ))
    .unwrap();
    let before = common::listing(store.root());

    let err = rt
        .block_on(store.pull(
            &format!("{reg}/hostile/corrupt-blob:latest"),
            &PullOptions::default(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::BlobDigest { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(
        common::listing(store.root()),
        before,
        "a refused pull changed the store"
    );

    let err = rt
        .block_on(store.pull(
            &format!("{reg}/hostile/bad-diffid:latest"),
            &PullOptions::default(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::DiffId { .. }),
        "unexpected error: {err}"
    );
    assert_eq!(
        common::listing(store.root()),
        before,
        "a refused pull changed the store"
    );
    assert_blobs_verified(&store);
}

#[test]
fn platforms_media_types_and_compressions() {
    let Some(reg) = common::registry("platforms_media_types_and_compressions") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    let multi = format!("{reg}/bolt-test/busybox-multiarch:latest");
    let amd = rt
        .block_on(store.pull(&multi, &PullOptions::default()))
        .unwrap();
    assert!(amd.record.index_digest.is_some());
    assert_eq!(amd.record.architecture, "amd64");
    let dirs = rt.block_on(store.layer_dirs(&multi)).unwrap();
    assert!(!common::merged_view(&dirs).contains_key("platform"));

    let arm_opts = PullOptions {
        platform: Some("linux/arm64".parse::<Platform>().unwrap()),
        ..Default::default()
    };
    let arm = rt.block_on(store.pull(&multi, &arm_opts)).unwrap();
    assert_eq!(arm.record.architecture, "arm64");
    assert_ne!(arm.record.manifest_digest, amd.record.manifest_digest);
    let dirs = rt.block_on(store.layer_dirs(&multi)).unwrap();
    assert!(common::merged_view(&dirs).contains_key("platform"));
    // The shared busybox layer was fetched once.
    assert!(arm.reused.contains(&amd.record.layers[0].digest));

    let err = rt
        .block_on(store.pull(
            &multi,
            &PullOptions {
                platform: Some("linux/s390x".parse().unwrap()),
                ..Default::default()
            },
        ))
        .unwrap_err();
    assert!(err.to_string().contains("linux/s390x"), "{err}");

    // Docker schema 2 media types, and zstd layers.
    let v2s2 = rt
        .block_on(store.pull(
            &format!("{reg}/bolt-test/busybox:v2s2"),
            &PullOptions::default(),
        ))
        .unwrap();
    assert!(
        v2s2.record.manifest_media_type.contains("docker"),
        "{}",
        v2s2.record.manifest_media_type
    );
    assert!(v2s2.record.layers[0].media_type.contains("docker"));
    let zstd = rt
        .block_on(store.pull(
            &format!("{reg}/bolt-test/busybox:zstd"),
            &PullOptions::default(),
        ))
        .unwrap();
    assert!(zstd.record.layers[0].media_type.ends_with("+zstd"));
    // Same content, other compression: the same diff_id, so the unpacked layer is shared.
    assert_eq!(zstd.record.layers[0].diff_id, amd.record.layers[0].diff_id);
    assert!(zstd.unpacked.is_empty());
    for r in [&v2s2.record.reference, &zstd.record.reference] {
        let dirs = rt.block_on(store.layer_dirs(r)).unwrap();
        assert!(dirs[0].join("bin/busybox").is_file());
    }
}

#[test]
fn progress_reports_bytes_per_blob() {
    let Some(reg) = common::registry("progress_reports_bytes_per_blob") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    let opts = PullOptions {
        progress: Some(ProgressFn::new(move |p| {
            s2.lock()
                .unwrap()
                .push((p.digest.clone(), p.phase, p.done, p.total));
        })),
        ..Default::default()
    };
    let pulled = rt()
        .block_on(store.pull(&format!("{reg}/bolt-test/busybox:latest"), &opts))
        .unwrap();
    let seen = seen.lock().unwrap();
    let layer = &pulled.record.layers[0];
    let fetching: Vec<u64> = seen
        .iter()
        .filter(|(d, ph, _, _)| d == &layer.digest && *ph == Phase::Fetching)
        .map(|(_, _, done, _)| *done)
        .collect();
    assert!(!fetching.is_empty());
    assert!(
        fetching.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards"
    );
    assert_eq!(*fetching.last().unwrap(), layer.size);
    assert!(seen.iter().any(|(d, ph, _, t)| d == &layer.digest
        && *ph == Phase::Unpacked
        && *t == Some(layer.size)));
}

fn hostile_store(dir: &std::path::Path) -> ImageStore {
    let mut cfg = common::config(dir);
    cfg.unpack.allow_devices = false;
    cfg.unpack.max_bytes = 64 << 20;
    ImageStore::open(cfg).unwrap()
}

#[test]
fn hostile_images_are_refused_and_change_nothing() {
    use bolt_capsule::image::unpack::UnpackError as U;
    let Some(reg) = common::registry("hostile_images_are_refused_and_change_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path());
    let rt = rt();
    rt.block_on(store.pull(
        &format!("{reg}/bolt-test/busybox:latest"),
        &PullOptions::default(),
    ))
    .unwrap();
    let before = common::listing(store.root());
    let outside_before = common::listing(dir.path()).len();
    type Check = fn(&U) -> bool;
    let cases: [(&str, &str, Check); 6] = [
        ("dotdot", "../../escape", |e| matches!(e, U::Escape { .. })),
        ("symlink-escape", "link/etc/x", |e| {
            matches!(e, U::ThroughSymlink { .. })
        }),
        ("hardlink-escape", "passwd-link", |e| {
            matches!(
                e,
                U::LinkEscape {
                    kind: "hardlink",
                    ..
                }
            )
        }),
        ("symlink-parent", "d/x", |e| {
            matches!(e, U::ThroughSymlink { .. })
        }),
        ("device", "dev/bolt-null", |e| matches!(e, U::Device { .. })),
        ("bomb", "", |e| matches!(e, U::TooLarge { .. })),
    ];
    for (name, entry, check) in cases {
        let err = rt
            .block_on(store.pull(
                &format!("{reg}/hostile/{name}:latest"),
                &PullOptions::default(),
            ))
            .unwrap_err();
        match &err {
            ImageError::Unpack { source, .. } => {
                assert!(check(source), "{name}: unexpected error {err}")
            }
            other => panic!("{name}: expected an unpack refusal, got {other}"),
        }
        assert!(
            err.to_string().contains(entry),
            "{name}: the error does not name the entry: {err}"
        );
        assert_eq!(
            common::listing(store.root()),
            before,
            "{name}: the refused pull changed the store"
        );
        assert_eq!(
            common::listing(dir.path()).len(),
            outside_before,
            "{name}: something was written"
        );
    }
    // The probe paths the hostile layers aim at.
    for p in [
        store.root().join("escape"),
        store.root().join("x"),
        store.root().join("etc"),
        dir.path().join("escape"),
        std::path::PathBuf::from("/etc/x"),
        std::path::PathBuf::from("/etc/bolt-abs-probe"),
        std::path::PathBuf::from("/escape"),
    ] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    assert!(rt
        .block_on(store.get(&format!("{reg}/hostile/dotdot:latest")))
        .unwrap()
        .is_none());

    // Absolute names are confined under the layer root, as docker and podman do.
    let abs = rt
        .block_on(store.pull(
            &format!("{reg}/hostile/absolute:latest"),
            &PullOptions::default(),
        ))
        .unwrap();
    let dirs = rt
        .block_on(store.layer_dirs(&abs.record.reference))
        .unwrap();
    assert!(dirs[0].join("etc/bolt-abs-probe").is_file());
    assert!(!std::path::Path::new("/etc/bolt-abs-probe").exists());
}

#[test]
fn interrupted_pull_leaves_nothing_half_visible_and_resumes() {
    let Some(reg) = common::registry("interrupted_pull_leaves_nothing_half_visible_and_resumes")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = debian(&reg);
    {
        let store = common::store(dir.path());
        let rt = rt();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = Mutex::new(Some(tx));
        let opts = PullOptions {
            progress: Some(ProgressFn::new(move |p| {
                if p.phase == Phase::Fetching
                    && p.total.is_some_and(|t| p.done < t / 2 && p.done > 0)
                {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            })),
            ..Default::default()
        };
        rt.block_on(async {
            tokio::select! {
                r = store.pull(&image, &opts) => panic!("pull finished before the interruption: {r:?}"),
                _ = rx => {}
            }
        });
        // Dropping the runtime waits for the blocking writers, as a killed process would stop them.
        drop(rt);
        assert!(
            rt_block_get(&store, &image).is_none(),
            "an interrupted pull left a record"
        );
    }
    // Reopen: temp files are gone, every visible blob is verified.
    let store = common::store(dir.path());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert_blobs_verified(&store);
    let pulled = rt()
        .block_on(store.pull(&image, &PullOptions::default()))
        .unwrap();
    let all = pulled.record.layers.len() + 1;
    assert_eq!(pulled.fetched.len() + pulled.reused.len(), all);
    assert_blobs_verified(&store);
    let dirs = rt().block_on(store.layer_dirs(&image)).unwrap();
    assert!(!common::merged_view(&dirs).contains_key("etc/bolt-whiteout-probe"));
}

fn rt_block_get(store: &ImageStore, r: &str) -> Option<bolt_capsule::image::ImageRecord> {
    rt().block_on(store.get(r)).unwrap()
}

#[test]
fn tag_remove_list_and_gc() {
    let Some(reg) = common::registry("tag_remove_list_and_gc") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path());
    let rt = rt();
    let bb = format!("{reg}/bolt-test/busybox:latest");
    let pulled = rt
        .block_on(store.pull(&bb, &PullOptions::default()))
        .unwrap();
    let deb = rt
        .block_on(store.pull(&debian(&reg), &PullOptions::default()))
        .unwrap();
    let tagged = rt.block_on(store.tag(&bb, "mine/busybox:v1")).unwrap();
    assert_eq!(tagged.reference, "docker.io/mine/busybox:v1");
    assert_eq!(tagged.digest, pulled.record.manifest_digest);
    assert!(matches!(tagged.event(), ImageEvent::Tagged { .. }));
    let refs: Vec<String> = rt
        .block_on(store.list())
        .unwrap()
        .into_iter()
        .map(|r| r.reference)
        .collect();
    assert_eq!(refs.len(), 3, "{refs:?}");

    // Removing one name keeps what the other still uses.
    let removed = rt.block_on(store.remove(&bb)).unwrap();
    assert_eq!(removed.digest, pulled.record.manifest_digest);
    assert!(matches!(removed.event(), ImageEvent::Removed { .. }));
    assert!(matches!(
        rt.block_on(store.remove(&bb)),
        Err(ImageError::NotFound(_))
    ));
    let gc = rt.block_on(store.gc()).unwrap();
    assert!(
        gc.blobs.is_empty() && gc.layers.is_empty(),
        "gc removed used content: {gc:?}"
    );
    assert!(rt.block_on(store.layer_dirs("mine/busybox:v1")).is_ok());

    // Remove the last name: its blobs and layers go, debian's stay.
    rt.block_on(store.remove("mine/busybox:v1")).unwrap();
    let gc = rt.block_on(store.gc()).unwrap();
    let bb_layer = &pulled.record.layers[0];
    assert!(gc.blobs.contains(&bb_layer.digest));
    assert!(gc.blobs.contains(&pulled.record.config_digest));
    assert!(gc.blobs.contains(&pulled.record.manifest_digest));
    assert_eq!(gc.layers, vec![bb_layer.diff_id.clone()]);
    assert!(gc.blob_bytes > 0);
    assert!(!store.blob_path(&bb_layer.digest).exists());
    assert!(!store.layer_path(&bb_layer.diff_id).exists());
    for l in &deb.record.layers {
        assert!(store.blob_path(&l.digest).exists());
        assert!(store.layer_path(&l.diff_id).is_dir());
    }
    // A second GC finds nothing.
    assert_eq!(rt.block_on(store.gc()).unwrap(), Default::default());
    // The store is locked against a second process (or a second open).
    assert!(matches!(
        ImageStore::open(common::config(dir.path())),
        Err(ImageError::Locked { .. })
    ));
}
