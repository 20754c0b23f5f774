//! The agent root's trust rules, checked before anything in it is read: the root belongs to the
//! agent's user and nobody else may write it; nothing directly in it is a symbolic link (the lock,
//! the key, the log, `capsules`, `images`, ... are never followed elsewhere); the lock is opened
//! without following a link; and a root whose capsules outlive a lost node key or event log is
//! refused, because starting on an empty log would kill and delete every one of them, unless
//! `--start-over` says so.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use rustix::process::geteuid;

/// The root entries a start needs to tell a lost key or log from a fresh root.
const CAPSULES: &str = "capsules";

/// One check of the agent root that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("create agent root {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent root {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "agent root {path} belongs to uid {owner}, not to this agent's user (uid {user}); \
         refusing to trust it"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error(
        "agent root {path} has mode {mode:o}: group or others may write it; \
         refusing to trust it (chmod 700)"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} is a symbolic link; nothing in the agent root may be one")]
    Symlink { path: PathBuf },
    #[error("open lock file {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "agent root {root} has {capsules} capsule(s) in {root}/capsules but no {missing}: \
         starting would record a new history and delete them; restore {missing}, or run \
         `bolt agent --start-over` to kill and delete those capsules and begin again"
    )]
    LostHistory {
        root: PathBuf,
        capsules: usize,
        missing: String,
    },
}

/// Create the root (0700) if it is not there, then check it: a directory owned by this
/// process's effective user that neither its group nor others may write.
pub fn prepare(root: &Path) -> Result<(), RootError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|source| RootError::Create {
            path: root.into(),
            source,
        })?;
    let meta = std::fs::metadata(root).map_err(|source| RootError::Inspect {
        path: root.into(),
        source,
    })?;
    check_owned_dir(root, &meta, geteuid().as_raw())
}

/// The ownership and mode rule of [`prepare`], on what `meta` says about `path`.
fn check_owned_dir(path: &Path, meta: &std::fs::Metadata, user: u32) -> Result<(), RootError> {
    if !meta.is_dir() {
        return Err(RootError::NotADirectory { path: path.into() });
    }
    if meta.uid() != user {
        return Err(RootError::Owner {
            path: path.into(),
            owner: meta.uid(),
            user,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(RootError::Writable {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Open (creating, 0600) the root's lock file without following a symbolic link and without
/// truncating it: the caller truncates once it holds the lock.
pub fn open_lock(path: &Path) -> Result<File, RootError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                RootError::Symlink { path: path.into() }
            } else {
                RootError::LockFile {
                    path: path.into(),
                    source,
                }
            }
        })
}

/// Refuse a root with a symbolic link directly in it (run with the lock held).
pub fn refuse_symlinks(root: &Path) -> Result<(), RootError> {
    let inspect = |source| RootError::Inspect {
        path: root.into(),
        source,
    };
    for entry in std::fs::read_dir(root).map_err(inspect)? {
        let entry = entry.map_err(inspect)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| RootError::Inspect {
            path: path.clone(),
            source,
        })?;
        if file_type.is_symlink() {
            return Err(RootError::Symlink { path });
        }
    }
    Ok(())
}

/// Refuse to start when `ROOT/capsules` has entries but the node key (`key`) or the event log
/// (`log`) is gone, unless `start_over`. Run with the lock held, after [`refuse_symlinks`].
pub fn refuse_lost_history(
    root: &Path,
    key: &Path,
    log: &Path,
    start_over: bool,
) -> Result<(), RootError> {
    let dir = root.join(CAPSULES);
    let capsules = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => return Err(RootError::Inspect { path: dir, source }),
    };
    if capsules == 0 {
        return Ok(());
    }
    let mut missing = Vec::new();
    for path in [key, log] {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(path.display().to_string());
            }
            Err(source) => {
                return Err(RootError::Inspect {
                    path: path.into(),
                    source,
                })
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if start_over {
        tracing::warn!(
            "starting over on {} without {}: its {capsules} capsule(s) will be ended and removed",
            root.display(),
            missing.join(" and "),
        );
        return Ok(());
    }
    Err(RootError::LostHistory {
        root: root.into(),
        capsules,
        missing: missing.join(" and "),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_root_group_or_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        prepare(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            prepare(&root),
            Err(RootError::Writable { mode: 0o770, .. })
        ));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(matches!(prepare(&root), Err(RootError::Writable { .. })));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&root).unwrap();
    }

    #[test]
    fn a_root_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let other = meta.uid().wrapping_add(1);
        let err = check_owned_dir(dir.path(), &meta, other).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("not to this agent's user (uid {other})")),
            "{err}"
        );
    }

    #[test]
    fn the_lock_is_not_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let lock = dir.path().join("agent.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        assert!(matches!(open_lock(&lock), Err(RootError::Symlink { .. })));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_symlink_in_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let root = dir.path().join("root");
        prepare(&root).unwrap();
        refuse_symlinks(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("capsules")).unwrap();
        let err = refuse_symlinks(&root).unwrap_err();
        assert!(matches!(err, RootError::Symlink { ref path } if path.ends_with("capsules")));
    }

    #[test]
    fn capsules_without_their_key_or_log_need_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (key, log) = (root.join("node.key"), root.join("events.redb"));
        // A fresh root: nothing to lose.
        refuse_lost_history(root, &key, &log, false).unwrap();
        std::fs::create_dir_all(root.join("capsules/abc")).unwrap();
        std::fs::write(&key, [0; 32]).unwrap();
        let err = refuse_lost_history(root, &key, &log, false).unwrap_err();
        assert!(
            matches!(err, RootError::LostHistory { capsules: 1, ref missing, .. } if missing.ends_with("events.redb")),
            "{err}"
        );
        std::fs::write(&log, b"").unwrap();
        refuse_lost_history(root, &key, &log, false).unwrap();
        std::fs::remove_file(&key).unwrap();
        assert!(refuse_lost_history(root, &key, &log, false).is_err());
        refuse_lost_history(root, &key, &log, true).unwrap();
    }
}
