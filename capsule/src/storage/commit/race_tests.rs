//! Unit tests of the commit walk against a running capsule that swaps entries (a file or a
//! directory for a symlink to a host file, a file for another) right before they are opened.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use super::{CommitError, CommitOptions, Walker};

/// Commits `upper` with `swap` run right before the entry `at` is opened; returns the layer
/// bytes or the error.
fn commit_swapping(
    upper: &Path,
    at: &'static str,
    swap: impl FnOnce() + 'static,
) -> Result<Vec<u8>, CommitError> {
    let mut w = Walker::new(upper, Vec::new(), &CommitOptions::default()).unwrap();
    let mut swap = Some(swap);
    w.before_open = Some(Box::new(move |rel: &Path| {
        if rel == Path::new(at) {
            if let Some(f) = swap.take() {
                f();
            }
        }
    }));
    w.run(upper).map(|(_, bytes)| bytes)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The upper directory `a` (a file) and `d/f`, and a "host" directory beside it holding
/// `secret` and `d/f` with a secret.
fn race_fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (upper, host) = (dir.path().join("upper"), dir.path().join("host"));
    fs::create_dir_all(upper.join("d")).unwrap();
    fs::create_dir_all(host.join("d")).unwrap();
    fs::write(upper.join("a"), "inside-the-capsule-layer").unwrap();
    fs::write(upper.join("d/f"), "inside-the-capsule-layer").unwrap();
    fs::write(host.join("secret"), "HOST-SECRET").unwrap();
    fs::write(host.join("d/f"), "HOST-SECRET").unwrap();
    (dir, upper, host)
}

#[test]
fn a_file_swapped_for_a_symlink_during_the_walk_is_not_read() {
    let (_dir, upper, host) = race_fixture();
    let a = upper.join("a");
    let got = commit_swapping(&upper, "a", move || {
        fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink(host.join("secret"), &a).unwrap();
    });
    match got {
        Ok(bytes) => assert!(!contains(&bytes, b"HOST-SECRET"), "the host file was read"),
        Err(e) => assert!(matches!(e, CommitError::Read { .. }), "{e}"),
    }
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_walk_is_not_entered() {
    let (_dir, upper, host) = race_fixture();
    let d = upper.join("d");
    let got = commit_swapping(&upper, "d", move || {
        fs::rename(&d, d.with_file_name("d-old")).unwrap();
        std::os::unix::fs::symlink(host.join("d"), &d).unwrap();
    });
    match got {
        Ok(bytes) => assert!(!contains(&bytes, b"HOST-SECRET"), "the host file was read"),
        Err(e) => assert!(matches!(e, CommitError::Read { .. }), "{e}"),
    }
}

#[test]
fn a_file_replaced_during_the_walk_is_refused_and_an_untouched_walk_commits() {
    let (_dir, upper, _host) = race_fixture();
    let a = upper.join("a");
    let got = commit_swapping(&upper, "a", move || {
        // Made while `a` still exists: another inode.
        fs::write(a.with_file_name("a.new"), "replaced-with-another-size").unwrap();
        fs::rename(a.with_file_name("a.new"), &a).unwrap();
    });
    assert!(matches!(got, Err(CommitError::Changed(_))), "{got:?}");
    let bytes = commit_swapping(&upper, "none", || {}).unwrap();
    assert!(contains(&bytes, b"replaced-with-another-size"));
}
