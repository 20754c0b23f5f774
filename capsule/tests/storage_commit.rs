//! `commit`: overlay upper directories into OCI layers (whiteouts, opaque directories, xattrs,
//! hard links, determinism) and, end to end, a real capsule's changes into a new image in the
//! image store that a new capsule then runs on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod storage_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bolt_capsule::image::digest::Digest;
use bolt_capsule::image::unpack::{unpack_layer, UnpackOptions, WhiteoutMode, XattrNamespace};
use bolt_capsule::image::{ImageStore, ImportOptions, StoreConfig};
use bolt_capsule::runtime::Runtime;
use bolt_capsule::storage::commit::{commit_image, ConfigChanges, ImageCommit};
use bolt_capsule::storage::{commit, CommitError, CommitOptions, Storage};
use rustix::fs::XattrFlags;
use storage_support::*;

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
}

fn getx(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// (path, type, mode, uid, mtime, link target, xattrs) of every entry, in archive order.
type Listing = Vec<(
    String,
    char,
    u32,
    u64,
    u64,
    String,
    BTreeMap<String, Vec<u8>>,
)>;

fn list_tar(bytes: &[u8]) -> Listing {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_owned(), x.value_bytes().to_vec());
                }
            }
        }
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Fifo => 'p',
            tar::EntryType::Char => 'c',
            t => panic!("unexpected entry type {t:?}"),
        };
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let (mode, uid, mtime) = (h.mode().unwrap(), h.uid().unwrap(), h.mtime().unwrap());
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        out.push((path, kind, mode, uid, mtime, link, xattrs));
    }
    out
}

/// A hand-made upper directory with every kind of entry overlay leaves there.
fn make_upper(upper: &Path) {
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new"), "new file\n").unwrap();
    fs::set_permissions(upper.join("etc/new"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(upper.join("etc/new"), Some(1000), Some(1001)).unwrap();
    // A deleted lower file: a 0/0 character device.
    nix::sys::stat::mknod(
        &upper.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    // A directory deleted and made again: opaque.
    fs::create_dir(upper.join("opaque")).unwrap();
    setx(&upper.join("opaque"), "trusted.overlay.opaque", b"y");
    fs::write(upper.join("opaque/kept"), "k").unwrap();
    // A directory that holds xattr whiteouts ("x" is not opaque) and one such whiteout.
    fs::create_dir(upper.join("xw")).unwrap();
    setx(&upper.join("xw"), "trusted.overlay.opaque", b"x");
    setx(&upper.join("xw"), "user.overlay.whiteouts", b"y");
    fs::write(upper.join("xw/old"), "").unwrap();
    setx(&upper.join("xw/old"), "user.overlay.whiteout", b"y");
    // Hard links, a symlink, a fifo, a device, a socket.
    fs::write(upper.join("h1"), "linked").unwrap();
    fs::hard_link(upper.join("h1"), upper.join("h2")).unwrap();
    std::os::unix::fs::symlink("/etc/new", upper.join("link")).unwrap();
    nix::unistd::mkfifo(
        &upper.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &upper.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(upper.join("sock")).unwrap();
    // Kept and dropped xattrs; a long name.
    fs::write(upper.join("noted"), "n").unwrap();
    setx(&upper.join("noted"), "user.note", b"hello");
    setx(&upper.join("noted"), "trusted.overlay.origin", b"\x00\x01");
    let long = "d".repeat(120);
    fs::create_dir_all(upper.join(&long)).unwrap();
    fs::write(upper.join(&long).join("f".repeat(120)), "long").unwrap();
}

#[test]
fn an_upper_dir_becomes_a_deterministic_oci_layer() {
    if !bolt_skip::root("an_upper_dir_becomes_a_deterministic_oci_layer") {
        return;
    }
    let dir = tempdir("bolt-commit-");
    let upper = dir.path().join("upper");
    make_upper(&upper);

    let (c, bytes) = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap();
    assert_eq!(c.diff_id, Digest::of(&bytes), "diff_id is the tar's sha256");
    assert_eq!(c.size, bytes.len() as u64);
    assert_eq!(c.skipped, 1, "the socket");
    let (c2, bytes2) = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap();
    assert_eq!(bytes, bytes2, "same upper, same bytes");
    assert_eq!(c, c2);

    let entries = list_tar(&bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let long = format!("{}/", "d".repeat(120));
    let long_file = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    assert_eq!(
        names,
        [
            long.as_str(),
            long_file.as_str(),
            "etc/",
            "etc/.wh.gone",
            "etc/new",
            "fifo",
            "h1",
            "h2",
            "link",
            "noted",
            "null",
            "opaque/",
            "opaque/.wh..wh..opq",
            "opaque/kept",
            "xw/",
            "xw/.wh.old",
        ],
        "sorted, directories first, whiteouts in place, socket left out"
    );
    let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
    let new = get("etc/new");
    assert_eq!((new.1, new.2, new.3), ('f', 0o640, 1000));
    assert_eq!(get("etc/.wh.gone").1, 'f');
    assert_eq!((get("h2").1, get("h2").5.as_str()), ('h', "h1"));
    assert_eq!((get("link").1, get("link").5.as_str()), ('l', "/etc/new"));
    assert_eq!(get("fifo").1, 'p');
    assert_eq!(get("null").1, 'c');
    assert_eq!(c.whiteouts, 3);
    // Only non-overlay xattrs travel.
    let noted = &get("noted").6;
    assert_eq!(
        noted.get("user.note").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert!(get("xw/").6.is_empty(), "overlay markers are dropped");

    // Clamped mtimes.
    let (_, clamped) = commit(
        &upper,
        Vec::new(),
        &CommitOptions {
            clamp_mtime: Some(1000),
        },
    )
    .unwrap();
    assert!(list_tar(&clamped).iter().all(|e| e.4 <= 1000));
    assert!(entries.iter().any(|e| e.4 > 1000));

    // It unpacks back into an overlay upper directory with the same meaning.
    let back = dir.path().join("back");
    fs::create_dir(&back).unwrap();
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::CharDevice,
        ..UnpackOptions::for_current_user()
    };
    let un = unpack_layer(&bytes[..], &back, &opts).unwrap();
    assert_eq!(un.diff_id, c.diff_id);
    let gone = fs::symlink_metadata(back.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(
        getx(&back.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(fs::symlink_metadata(back.join("xw/old"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        getx(&back.join("noted"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        fs::metadata(back.join("h1")).unwrap().ino(),
        fs::metadata(back.join("h2")).unwrap().ino()
    );
    assert_eq!(fs::metadata(back.join("etc/new")).unwrap().uid(), 1000);
    // Xattr whiteouts (rootless unpack) read back the same way.
    let back2 = dir.path().join("back2");
    fs::create_dir(&back2).unwrap();
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Xattr(XattrNamespace::User),
        ..UnpackOptions::for_current_user()
    };
    unpack_layer(&bytes[..], &back2, &opts).unwrap();
    let (c3, _) = commit(&back2, Vec::new(), &CommitOptions::default()).unwrap();
    assert_eq!(c3.whiteouts, 3, "xattr whiteouts become .wh. entries too");
    dir.close().unwrap();
}

#[test]
fn redirects_and_metacopy_are_refused() {
    if !bolt_skip::root("redirects_and_metacopy_are_refused") {
        return;
    }
    let dir = tempdir("bolt-commit-");
    let upper = dir.path().join("upper");
    fs::create_dir_all(upper.join("moved")).unwrap();
    setx(&upper.join("moved"), "trusted.overlay.redirect", b"/orig");
    let e = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap_err();
    assert!(matches!(e, CommitError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("redirect_dir"), "{e}");
    fs::remove_dir(upper.join("moved")).unwrap();
    fs::write(upper.join("meta"), "").unwrap();
    setx(&upper.join("meta"), "trusted.overlay.metacopy", b"");
    let e = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("metacopy"), "{e}");
    let e = commit(
        &dir.path().join("missing"),
        Vec::new(),
        &CommitOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, CommitError::Read { .. }), "{e}");
    dir.close().unwrap();
}

/// Imports `lower` as a one-layer image named `reference`.
fn import_base(
    store: &ImageStore,
    rt: &tokio::runtime::Runtime,
    lower: &Path,
    dir: &Path,
    reference: &str,
) {
    let layout = dir.join("base-layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let (c, layer) = commit(lower, Vec::new(), &CommitOptions::default()).unwrap();
    fs::write(blobs.join(c.diff_id.hex()), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [c.diff_id.to_string()]},
        "history": [{"created_by": "test base"}],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_d = Digest::of(&config);
    fs::write(blobs.join(config_d.hex()), &config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": c.diff_id.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_d = Digest::of(&manifest);
    fs::write(blobs.join(manifest_d.hex()), &manifest).unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d.to_string(), "size": manifest.len()}],
        }))
        .unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    rt.block_on(store.import(
        &layout,
        &ImportOptions {
            reference: Some(reference.to_owned()),
            progress: None,
        },
    ))
    .unwrap();
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn a_capsules_changes_become_a_new_image_that_runs() {
    if !bolt_skip::root("a_capsules_changes_become_a_new_image_that_runs") {
        return;
    }
    let dir = tempdir("bolt-commit-img-");
    let lower = dir.path().join("lower");
    busybox_lower(&lower);
    fs::create_dir_all(lower.join("srv/old")).unwrap();
    fs::write(lower.join("srv/old/a"), "a").unwrap();
    fs::write(lower.join("etc/doomed"), "x").unwrap();
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("images"))).unwrap();
    let base = "localhost/bolt-test/base:1";
    import_base(&store, &tokio_rt, &lower, dir.path(), base);
    let base_dirs = tokio_rt.block_on(store.layer_dirs(base)).unwrap();
    assert_eq!(base_dirs.len(), 1);

    // A capsule on the base image changes files, deletes one and replaces a directory.
    let storage = Storage::open(dir.path().join("root")).unwrap();
    let layers = storage.layers();
    let rt = Runtime::new().unwrap();
    let id = capsule_id("commit");
    let rootfs = layers.create(&id, base_dirs.clone()).unwrap();
    let script = "echo committed > /etc/motd; rm /etc/doomed; rm -r /srv; mkdir -p /srv/new; echo b > /srv/new/b";
    run_ok(&rt, &shell(&id, rootfs, script));

    let staging = dir.path().join("staging");
    let req = ImageCommit {
        base: base.to_owned(),
        upper: layers.upper(&id),
        reference: "localhost/bolt-test/committed:1".to_owned(),
        staging: staging.clone(),
        gzip: true,
        options: CommitOptions::default(),
        changes: ConfigChanges {
            created_s: 1_700_000_000,
            author: Some("tester".into()),
            comment: Some("from a capsule".into()),
            cmd: Some(vec!["cat".into(), "/etc/motd".into()]),
            ..ConfigChanges::default()
        },
    };
    let made = tokio_rt.block_on(commit_image(&store, &req)).unwrap();
    assert!(!staging.exists(), "staging is removed");
    let rec = &made.pulled.record;
    let want = bolt_capsule::image::ImageRef::parse("localhost/bolt-test/committed:1").unwrap();
    assert_eq!(rec.reference, want.to_string());
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(rec.layers[1].diff_id, made.layer.diff_id);
    assert_eq!(
        rec.layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_ne!(
        rec.layers[1].digest, made.layer.diff_id,
        "the blob is compressed"
    );
    assert_eq!(
        rec.layers[0].diff_id,
        tokio_rt.block_on(store.require(base)).unwrap().layers[0].diff_id
    );
    let cfg = tokio_rt
        .block_on(store.image_config(&rec.reference))
        .unwrap();
    let c = cfg.config().as_ref().unwrap();
    assert_eq!(
        c.cmd().as_deref(),
        Some(&["cat".to_owned(), "/etc/motd".to_owned()][..])
    );
    assert_eq!(cfg.history().as_ref().unwrap().len(), 2);
    assert_eq!(cfg.author().as_deref(), Some("tester"));

    // A new capsule on the committed image (a fresh, empty writable layer) sees the changes.
    let dirs = tokio_rt.block_on(store.layer_dirs(&rec.reference)).unwrap();
    assert_eq!(dirs.len(), 2);
    let id2 = capsule_id("from-commit");
    let rootfs = layers.create(&id2, dirs).unwrap();
    let out = run_ok(
        &rt,
        &shell(
            &id2,
            rootfs,
            "cat /etc/motd; test -e /etc/doomed && echo doomed || echo no-doomed; ls /srv; cat /srv/new/b",
        ),
    );
    assert_eq!(out, "committed\nno-doomed\nnew\nb\n");

    // An unknown base: an error, nothing staged.
    let bad = ImageCommit {
        base: "localhost/bolt-test/nope:1".into(),
        ..req
    };
    assert!(tokio_rt.block_on(commit_image(&store, &bad)).is_err());
    assert!(!staging.exists());

    layers.remove(&id).unwrap();
    layers.remove(&id2).unwrap();
    drop(store);
    assert!(mounts_under(dir.path()).is_empty());
    dir.close().unwrap();
}

#[test]
fn plain_files_need_no_root_and_reserved_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upper: PathBuf = dir.path().join("u");
    fs::create_dir_all(upper.join("a/b")).unwrap();
    fs::write(upper.join("a/b/c"), "data").unwrap();
    let (c, bytes) = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap();
    let names: Vec<String> = list_tar(&bytes).into_iter().map(|e| e.0).collect();
    assert_eq!(names, ["a/", "a/b/", "a/b/c"]);
    assert_eq!((c.entries, c.whiteouts), (3, 0));
    // A file a capsule named .wh.* would read as a whiteout in the layer: refused.
    fs::write(upper.join("a/.wh.passwd"), "").unwrap();
    let e = commit(&upper, Vec::new(), &CommitOptions::default()).unwrap_err();
    assert!(matches!(e, CommitError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains(".wh."), "{e}");
}
