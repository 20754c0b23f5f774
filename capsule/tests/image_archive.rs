//! Import, export and push: OCI layouts (directory and tar) and docker-archive tars built here,
//! and a push/pull round trip through the loopback registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use bolt_capsule::image::layout::LayoutError;
use bolt_capsule::image::store::ImageError;
use bolt_capsule::image::{Digest, ExportFormat, ImportOptions, PullOptions, PushOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn put(dir: &Path, bytes: &[u8]) -> (Digest, u64) {
    let d = Digest::of(bytes);
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(d.hex()), bytes).unwrap();
    (d, bytes.len() as u64)
}

/// Two layers (gzip, then plain with a whiteout of the first layer's file), tagged `tag`.
fn make_layout(dir: &Path, tag: &str) -> Digest {
    let l1 = tar_of(&[("etc/hello", "hello\n"), ("etc/gone", "soon deleted\n")]);
    let l2 = tar_of(&[("etc/.wh.gone", ""), ("etc/second", "2\n")]);
    let (d1, s1) = put(dir, &gzip(&l1));
    let (d2, s2) = put(dir, &l2);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        Digest::of(&l1),
        Digest::of(&l2)
    );
    let (cd, cs) = put(dir, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d1}","size":{s1}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d2}","size":{s2}}}]}}"#
    );
    let (md, ms) = put(dir, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
    );
    fs::write(dir.join("index.json"), index).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

fn tar_dir(src: &Path, dest: &Path) {
    let f = fs::File::create(dest).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_layout_directory_and_tar_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let md = make_layout(&layout, "1.0");
    let store = common::store(&tmp.path().join("a"));
    let rt = rt();

    // Bare tags do not name an image: the caller must.
    let err = rt
        .block_on(store.import(&layout, &ImportOptions::default()))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Layout(LayoutError::Unnamed(1))),
        "{err}"
    );

    let opts = ImportOptions {
        reference: Some("local/test:1.0".into()),
        ..Default::default()
    };
    let got = rt.block_on(store.import(&layout, &opts)).unwrap();
    assert_eq!(got.len(), 1);
    let rec = &got[0].record;
    assert_eq!(rec.reference, "docker.io/local/test:1.0");
    assert_eq!(rec.manifest_digest, md);
    let dirs = rt.block_on(store.layer_dirs("local/test:1.0")).unwrap();
    let view = common::merged_view(&dirs);
    assert!(view.contains_key("etc/hello") && view.contains_key("etc/second"));
    assert!(!view.contains_key("etc/gone"));
    let cfg = rt.block_on(store.image_config("local/test:1.0")).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_ref().unwrap(),
        &vec!["/bin/sh".to_string()]
    );

    // Export as a directory and as a tar; both import into a fresh store with the same digests.
    let out_dir = tmp.path().join("out-dir");
    let out_tar = tmp.path().join("out.tar");
    let refs = vec!["local/test:1.0".to_string()];
    rt.block_on(store.export(&refs, &out_dir, ExportFormat::OciDir))
        .unwrap();
    rt.block_on(store.export(&refs, &out_tar, ExportFormat::OciTar))
        .unwrap();
    assert!(
        rt.block_on(store.export(&refs, &out_tar, ExportFormat::OciTar))
            .is_err(),
        "export overwrote a file"
    );
    // An export onto another filesystem than the store's (tmpfs at /dev/shm) works too.
    {
        use std::os::unix::fs::MetadataExt;
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir()
            && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(tmp.path()).unwrap().dev()
        {
            let other = tempfile::tempdir_in(shm).unwrap();
            let far = other.path().join("far.tar");
            rt.block_on(store.export(&refs, &far, ExportFormat::OciTar))
                .unwrap();
            assert!(far.is_file());
            let leftovers: Vec<_> = std::fs::read_dir(other.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("bolt-tmp"))
                .collect();
            assert!(leftovers.is_empty(), "temp files left beside the export");
        }
    }
    for (i, src) in [&out_dir, &out_tar].into_iter().enumerate() {
        let s2 = common::store(&tmp.path().join(format!("b{i}")));
        let got = rt
            .block_on(s2.import(src, &ImportOptions::default()))
            .unwrap();
        assert_eq!(
            got[0].record.reference, "docker.io/local/test:1.0",
            "the export carries the full name"
        );
        assert_eq!(got[0].record.manifest_digest, md);
        assert_eq!(got[0].record.layers, rec.layers);
        // Only what the image uses was kept.
        let blobs = fs::read_dir(s2.root().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 4, "manifest, config and two layers");
    }

    // Other tools read the export: umoci unpacks it (root only: umoci without --rootless).
    if common::is_root()
        && std::process::Command::new("umoci")
            .arg("--version")
            .output()
            .is_ok()
    {
        let bundle = tmp.path().join("bundle");
        let st = std::process::Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:1.0", out_dir.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert!(bundle.join("rootfs/etc/second").is_file());
        assert!(!bundle.join("rootfs/etc/gone").exists());
    }
}

#[test]
fn import_refuses_a_blob_that_does_not_match_its_name_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    make_layout(&layout, "1.0");
    // Corrupt the plain layer blob in place (same size).
    let l2 = tar_of(&[("etc/.wh.gone", ""), ("etc/second", "2\n")]);
    let p = layout.join("blobs/sha256").join(Digest::of(&l2).hex());
    let mut bytes = fs::read(&p).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    let tar = tmp.path().join("layout.tar");
    tar_dir(&layout, &tar);

    let store = common::store(&tmp.path().join("s"));
    let before = common::listing(store.root());
    let opts = ImportOptions {
        reference: Some("local/test:1.0".into()),
        ..Default::default()
    };
    let rt = rt();
    for src in [&layout, &tar] {
        let err = rt.block_on(store.import(src, &opts)).unwrap_err();
        assert!(
            matches!(err, ImageError::BlobDigest { .. }),
            "{}: {err}",
            src.display()
        );
        assert_eq!(
            common::listing(store.root()),
            before,
            "{}: a refused import changed the store",
            src.display()
        );
    }
}

#[test]
fn docker_archive_import() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tar_of(&[
        ("bin/tool", "#!/bin/sh\n"),
        ("etc/motd", "docker-archive\n"),
    ]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Digest::of(&layer)
    );
    let cfg_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    let manifest = format!(
        r#"[{{"Config":"{cfg_name}","RepoTags":["thing:v1","other/thing:v2"],"Layers":["abc/layer.tar"]}}]"#
    );
    let path = tmp.path().join("save.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        for (name, data) in [
            ("abc/layer.tar", layer.as_slice()),
            (cfg_name.as_str(), config.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
    }
    let store = common::store(&tmp.path().join("s"));
    let rt = rt();
    // Two names in RepoTags: pick one with a reference.
    let got = rt
        .block_on(store.import(
            &path,
            &ImportOptions {
                reference: Some("thing:v1".into()),
                ..Default::default()
            },
        ))
        .unwrap();
    assert_eq!(got[0].record.reference, "docker.io/library/thing:v1");
    assert_eq!(got[0].record.config_digest, Digest::of(config.as_bytes()));
    assert_eq!(got[0].record.layers[0].diff_id, Digest::of(&layer));
    let dirs = rt.block_on(store.layer_dirs("thing:v1")).unwrap();
    assert_eq!(
        fs::read_to_string(dirs[0].join("etc/motd")).unwrap(),
        "docker-archive\n"
    );
    // Without a reference every RepoTag that names an image is stored.
    let store2 = common::store(&tmp.path().join("s2"));
    let got = rt
        .block_on(store2.import(&path, &ImportOptions::default()))
        .unwrap();
    let mut names: Vec<String> = got.iter().map(|p| p.record.reference.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["docker.io/library/thing:v1", "docker.io/other/thing:v2"]
    );
    assert_eq!(got[0].record.manifest_digest, got[1].record.manifest_digest);

    // A manifest.json that lists a missing layer is refused.
    let bad = tmp.path().join("bad.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&bad).unwrap());
        let m = format!(
            r#"[{{"Config":"{cfg_name}","RepoTags":["x:1"],"Layers":["nope/layer.tar"]}}]"#
        );
        for (name, data) in [
            (cfg_name.as_str(), config.as_bytes()),
            ("manifest.json", m.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
    }
    let store3 = common::store(&tmp.path().join("s3"));
    let before = common::listing(store3.root());
    let err = rt
        .block_on(store3.import(&bad, &ImportOptions::default()))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Layout(LayoutError::MissingFile { .. })),
        "{err}"
    );
    assert_eq!(common::listing(store3.root()), before);
}

#[test]
fn push_then_pull_round_trip() {
    let Some(reg) = common::registry("push_then_pull_round_trip") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = common::store(&tmp.path().join("a"));
    let rt = rt();
    let src = rt
        .block_on(store.pull(
            &format!("{reg}/bolt-test/busybox:latest"),
            &PullOptions::default(),
        ))
        .unwrap();
    let dst = format!("{reg}/bolt-push-test/busybox:p{}", std::process::id());
    rt.block_on(store.tag(&src.record.reference, &dst)).unwrap();
    let pushed = rt
        .block_on(store.push(&dst, &PushOptions::default()))
        .unwrap();
    assert_eq!(pushed.digest, src.record.manifest_digest);
    assert_eq!(
        pushed.uploaded.len() + pushed.skipped.len(),
        2,
        "layer and config"
    );
    // Again: the registry has everything.
    let again = rt
        .block_on(store.push(&dst, &PushOptions::default()))
        .unwrap();
    assert!(again.uploaded.is_empty(), "{again:?}");
    // A fresh store pulls what was pushed, byte for byte.
    let store2 = common::store(&tmp.path().join("b"));
    let back = rt
        .block_on(store2.pull(&dst, &PullOptions::default()))
        .unwrap();
    assert_eq!(back.record.manifest_digest, src.record.manifest_digest);
    assert_eq!(back.record.layers, src.record.layers);
    // Pushing a name the store lacks is a clear error.
    let err = rt
        .block_on(store.push(&format!("{reg}/nothing/here:1"), &PushOptions::default()))
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}

#[test]
fn import_of_the_fixture_layouts() {
    let Some(dir) = bolt_skip::env(
        "import_of_the_fixture_layouts",
        "BOLT_TEST_OCI_DIR",
        "eval \"$(tests/fixtures/build-images.sh env)\"",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = common::store(tmp.path());
    let rt = rt();
    let opts = ImportOptions {
        reference: Some("fixtures/debian:extra".into()),
        ..Default::default()
    };
    let got = rt
        .block_on(store.import(&Path::new(&dir).join("debian"), &opts))
        .unwrap();
    assert_eq!(got[0].record.layers.len(), 4);
    let dirs = rt
        .block_on(store.layer_dirs("fixtures/debian:extra"))
        .unwrap();
    let view = common::merged_view(&dirs);
    assert!(view.contains_key("etc/bolt-opaque-dir/extra-marker"));
    assert!(!view.contains_key("etc/bolt-whiteout-probe"));
    // The multi-platform busybox index resolves to linux/amd64.
    let opts = ImportOptions {
        reference: Some("fixtures/busybox:multiarch".into()),
        ..Default::default()
    };
    let got = rt
        .block_on(store.import(&Path::new(&dir).join("busybox"), &opts))
        .unwrap();
    assert!(got[0].record.index_digest.is_some());
    assert_eq!(got[0].record.architecture, "amd64");
}
