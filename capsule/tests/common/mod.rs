//! Helpers shared by the capsule tests: registry discovery, store snapshots, layer inspection,
//! and the busybox rootfs the runtime, network and storage tests run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bolt_capsule::image::{ImageStore, StoreConfig};

/// The test registry (`BOLT_TEST_REGISTRY=127.0.0.1:PORT`, from `scripts/registry.sh env`, with
/// the images of `tests/fixtures/build-images.sh` pushed), or a skip through [`bolt_skip`].
pub fn registry(test: &str) -> Option<String> {
    bolt_skip::registry(test)
}

/// Whether we run as root (device nodes, chown, trusted xattrs, overlay mounts).
pub fn is_root() -> bool {
    bolt_skip::is_root()
}

/// A store in a fresh temp dir.
pub fn store(dir: &Path) -> ImageStore {
    ImageStore::open(config(dir)).unwrap()
}

pub fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir.join("images"));
    c.durable = false;
    c
}

/// One line per path under `root`: type, mode, uid, gid, size, symlink target, device.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
    let md = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().display().to_string();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "d".to_string()
    } else if ft.is_symlink() {
        format!("l->{}", fs::read_link(p).unwrap().display())
    } else if ft.is_char_device() {
        format!("c{}", md.rdev())
    } else if ft.is_block_device() {
        format!("b{}", md.rdev())
    } else if ft.is_fifo() {
        "p".to_string()
    } else {
        "f".to_string()
    };
    let size = if ft.is_file() { md.len() } else { 0 };
    out.insert(
        rel,
        format!(
            "{kind} {:o} {}:{} {size}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        ),
    );
    if ft.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
    }
}

/// What a stack of layer directories shows, applying overlay whiteout rules (char 0/0 or
/// `*.overlay.whiteout` files hide lower entries; `*.overlay.opaque=y` dirs hide lower content).
/// Maps a relative path to its file type letter.
pub fn merged_view(layers_base_first: &[PathBuf]) -> BTreeMap<String, char> {
    let mut view: BTreeMap<String, char> = BTreeMap::new();
    for layer in layers_base_first {
        let mut entries = Vec::new();
        collect(layer, layer, &mut entries);
        // Opaque dirs first: drop what lower layers had below them.
        for (rel, _, opaque, _) in &entries {
            if *opaque {
                let prefix = format!("{rel}/");
                view.retain(|k, _| !k.starts_with(&prefix));
            }
        }
        for (rel, kind, _, whiteout) in entries {
            if whiteout {
                let prefix = format!("{rel}/");
                view.retain(|k, _| k != &rel && !k.starts_with(&prefix));
            } else {
                view.insert(rel, kind);
            }
        }
    }
    view
}

fn collect(root: &Path, p: &Path, out: &mut Vec<(String, char, bool, bool)>) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        let md = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let whiteout = (ft.is_char_device() && md.rdev() == 0)
            || xattr(&path, "trusted.overlay.whiteout").is_some()
            || xattr(&path, "user.overlay.whiteout").is_some();
        let opaque = ft.is_dir()
            && (xattr(&path, "trusted.overlay.opaque").as_deref() == Some(b"y")
                || xattr(&path, "user.overlay.opaque").as_deref() == Some(b"y"));
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            'o'
        };
        out.push((rel, kind, opaque, whiteout));
        if ft.is_dir() {
            collect(root, &path, out);
        }
    }
}

/// An xattr value, without following symlinks.
pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Builds a busybox rootfs in `dir` (bin with applet links, etc/passwd, mount points).
pub fn busybox_lower(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is installed");
    let st = Command::new("/bin/busybox")
        .arg("--install")
        .arg("-s")
        .arg(dir.join("bin"))
        .status()
        .unwrap();
    assert!(st.success());
    // The applet links point at busybox's real path (/usr/bin/busybox on merged-/usr hosts).
    let target = fs::read_link(dir.join("bin/sh")).unwrap();
    let inside = dir.join(target.strip_prefix("/").unwrap());
    if !inside.exists() {
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy("/bin/busybox", &inside).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}
