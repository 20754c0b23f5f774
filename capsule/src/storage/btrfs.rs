//! btrfs subvolumes and snapshots through the `btrfs` program (btrfs-progs).
//!
//! There is no maintained safe Rust crate for the btrfs ioctls (`libbtrfsutil` bindings need
//! the C library and are `unsafe` underneath), so rather than add hand-written ioctls to
//! `crate::sys`, this driver runs `btrfs subvolume create|snapshot|delete`. A run costs a
//! process start (a few ms); subvolumes are made once per capsule or volume, not per start of
//! a process. Whether a path *is* a subvolume is a `stat` (see [`super::fstype::is_subvolume`]),
//! no process.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::fstype::is_subvolume;

/// Errors of the btrfs driver.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    /// The program is not installed.
    #[error("{program} not found: install btrfs-progs")]
    Missing {
        /// The program looked for.
        program: PathBuf,
    },
    /// The program could not be started.
    #[error("run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The program failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A plain filesystem step (creating or removing a directory) failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// The step.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Runs `btrfs` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Btrfs {
    program: PathBuf,
}

impl Default for Btrfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Btrfs {
    /// `btrfs` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("btrfs")
    }

    /// A specific program (tests, unusual installs).
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// The program this driver runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Whether the program runs (`btrfs --version`).
    pub fn available(&self) -> bool {
        Command::new(&self.program)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, args: &[&OsStr]) -> Result<(), BtrfsError> {
        let out = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    BtrfsError::Missing {
                        program: self.program.clone(),
                    }
                } else {
                    BtrfsError::Spawn {
                        program: self.program.clone(),
                        source,
                    }
                }
            })?;
        if out.status.success() {
            return Ok(());
        }
        let mut command = self.program.display().to_string();
        for a in args {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        Err(BtrfsError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    /// `btrfs subvolume create PATH` (PATH must not exist; its parent must).
    pub fn create_subvolume(&self, path: &Path) -> Result<(), BtrfsError> {
        self.run(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()])
    }

    /// `btrfs subvolume snapshot [-r] SRC DST`. `dst` must not exist (an existing directory
    /// would receive the snapshot inside it).
    pub fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> Result<(), BtrfsError> {
        let mut args: Vec<&OsStr> = vec!["subvolume".as_ref(), "snapshot".as_ref()];
        if readonly {
            args.push("-r".as_ref());
        }
        args.push(src.as_os_str());
        args.push(dst.as_os_str());
        self.run(&args)
    }

    /// `btrfs subvolume delete PATH` (read-only snapshots too).
    pub fn delete_subvolume(&self, path: &Path) -> Result<(), BtrfsError> {
        self.run(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()])
    }

    /// Removes `path` whatever it is: a subvolume is deleted with `btrfs subvolume delete`
    /// (falling back to emptying it and `rmdir`, which root may do on a subvolume holding
    /// nested subvolumes), anything else with `remove_dir_all`. A missing path is fine.
    pub fn remove_tree(&self, path: &Path) -> Result<(), BtrfsError> {
        remove_tree(Some(self), path)
    }
}

/// Removes `path` (see [`Btrfs::remove_tree`]); without a driver, plain `remove_dir_all`.
pub(crate) fn remove_tree(btrfs: Option<&Btrfs>, path: &Path) -> Result<(), BtrfsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BtrfsError::Io {
                step: "remove",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if let Some(b) = btrfs {
        if is_subvolume(path).unwrap_or(false) && b.delete_subvolume(path).is_ok() {
            return Ok(());
        }
    }
    let res = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BtrfsError::Io {
            step: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_program_is_named() {
        let b = Btrfs::with_program("/nonexistent/btrfs");
        assert!(!b.available());
        let e = b.create_subvolume(Path::new("/tmp/x")).unwrap_err();
        assert!(matches!(e, BtrfsError::Missing { .. }));
        assert!(e.to_string().contains("btrfs-progs"), "{e}");
    }

    #[test]
    fn a_failing_command_reports_its_line_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("btrfs");
        std::fs::write(&fake, "#!/bin/sh\necho \"nope: $*\" >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let b = Btrfs::with_program(&fake);
        let e = b
            .snapshot(Path::new("/a"), Path::new("/b"), true)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("subvolume snapshot -r /a /b"), "{msg}");
        assert!(msg.contains("nope: subvolume snapshot -r /a /b"), "{msg}");
    }

    #[test]
    fn remove_tree_takes_plain_trees_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), "x").unwrap();
        remove_tree(None, &t).unwrap();
        assert!(!t.exists());
        remove_tree(None, &t).unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        remove_tree(Some(&Btrfs::with_program("/nonexistent")), &f).unwrap();
        assert!(!f.exists());
    }
}
