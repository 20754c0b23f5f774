//! Bytes → layer unpack with production's settings (`UnpackOptions::for_current_user`, root's
//! in CI: devices, owners, char-device whiteouts): never a panic, never a change outside the
//! layer dir.
//!
//! The layer dir sits eight levels deep inside a sentinel tree (a file, a symlink and a
//! directory at every level); after the unpack every entry of that tree outside the layer dir
//! must be exactly as before (type, mode, owner, size, content, link target, link count,
//! mtime), so a `..`, a symlink or a hard link escaping to any level is caught, not only a new
//! name at the top.
#![no_main]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bolt_capsule::image::unpack::{unpack_layer, UnpackOptions};
use libfuzzer_sys::fuzz_target;

const DEPTH: usize = 8;

/// One line per path under `root` except `skip`: type, mode, owner, size, content or target.
fn tree(root: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for ent in rd.flatten() {
        let p = ent.path();
        if p == skip {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let what = if md.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).ok())
        } else if md.is_file() {
            format!("file {:?}", std::fs::read(&p).ok())
        } else {
            String::from("other")
        };
        let line = format!(
            "{what} mode {:o} owner {}:{} size {} nlink {} mtime {}.{}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.nlink(),
            md.mtime(),
            md.mtime_nsec()
        );
        out.insert(p.clone(), line);
        if md.is_dir() {
            tree(&p, skip, out);
        }
    }
}

fn sentinels(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("sentinel"), b"host data")?;
    std::os::unix::fs::symlink("sentinel", dir.join("link"))?;
    std::fs::create_dir(dir.join("d"))?;
    std::fs::write(dir.join("d").join("f"), b"more host data")
}

fuzz_target!(|data: &[u8]| {
    // The host failing to give a temp dir is no finding, but must not pass silently either.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let mut dir = tmp.path().to_path_buf();
    for level in 0..DEPTH {
        sentinels(&dir).expect("the sentinels");
        dir = dir.join(format!("s{level}"));
        std::fs::create_dir(&dir).expect("a sentinel level");
    }
    let layer = dir.join("layer");
    std::fs::create_dir(&layer).expect("the layer dir");
    let mut before = BTreeMap::new();
    tree(tmp.path(), &layer, &mut before);
    let _ = unpack_layer(data, &layer, &UnpackOptions::for_current_user());
    let mut after = BTreeMap::new();
    tree(tmp.path(), &layer, &mut after);
    assert_eq!(
        before, after,
        "unpack changed something outside the layer dir"
    );
});
