//! btrfs snapshots of a capsule's writable layer or of a volume.
//!
//! - `create`: a read-only snapshot of the target's subvolume at
//!   `ROOT/snapshots/{capsules|volumes}/<target>/<name>`, with `.meta/<name>.json` beside it
//!   (creation time).
//! - `restore`: replaces the target's subvolume with a writable snapshot of the snapshot. The
//!   new subvolume is made beside the target (`.restore-*`), swapped in with one
//!   `renameat2(RENAME_EXCHANGE)` (atomic: the target is always either the old or the restored
//!   content), and the old one is deleted. The target must not be in use (a stopped capsule, a
//!   volume no running capsule mounts): the caller says which are.
//! - `remove`, `list`.
//!
//! Anywhere else than btrfs every call fails with "snapshots need btrfs (ROOT is on ext4)".

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::btrfs::{Btrfs, BtrfsError};
use super::fstype::{is_subvolume, FsKind};
use super::{now_ms, random_hex, write_atomic, Backend, Layout};

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A capsule's writable layer, by capsule id.
    Capsule(String),
    /// A named volume.
    Volume(String),
}

impl Target {
    fn kind_dir(&self) -> &'static str {
        match self {
            Target::Capsule(_) => "capsules",
            Target::Volume(_) => "volumes",
        }
    }

    /// The capsule id or volume name.
    pub fn name(&self) -> &str {
        match self {
            Target::Capsule(n) | Target::Volume(n) => n,
        }
    }

    fn valid(&self) -> bool {
        match self {
            Target::Capsule(id) => crate::runtime::spec::validate_id(id).is_ok(),
            Target::Volume(n) => super::mounts::valid_volume_name(n),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Capsule(id) => write!(f, "capsule {id}"),
            Target::Volume(n) => write!(f, "volume {n}"),
        }
    }
}

/// Errors of snapshot operations.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The root is not on btrfs.
    #[error("snapshots need btrfs ({root} is on {fs})")]
    NeedBtrfs {
        /// The agent root.
        root: PathBuf,
        /// Its filesystem.
        fs: FsKind,
    },
    /// The root is on btrfs but btrfs-progs is missing.
    #[error("snapshots need the btrfs program ({root} is on btrfs): install btrfs-progs")]
    NeedBtrfsProgs {
        /// The agent root.
        root: PathBuf,
    },
    /// The snapshot name breaks the rule.
    #[error(
        "invalid snapshot name {0:?}: use [A-Za-z0-9][A-Za-z0-9_.-]* (at most 200 characters)"
    )]
    BadName(String),
    /// The capsule id or volume name is invalid.
    #[error("invalid snapshot target: {0}")]
    BadTarget(Target),
    /// The capsule has no layer / the volume does not exist.
    #[error("{0} does not exist")]
    NoTarget(Target),
    /// The target's data is a plain directory (made before the root was on btrfs).
    #[error("{target} is not a btrfs subvolume ({path}), so it cannot be snapshotted")]
    NotSubvolume {
        /// The target.
        target: Target,
        /// Its data.
        path: PathBuf,
    },
    /// A snapshot of that name exists.
    #[error("{target} already has a snapshot named {name}")]
    Exists {
        /// The target.
        target: Target,
        /// The snapshot.
        name: String,
    },
    /// No snapshot of that name.
    #[error("{target} has no snapshot named {name}")]
    NotFound {
        /// The target.
        target: Target,
        /// The snapshot.
        name: String,
    },
    /// The target is in use: a running capsule, a volume mounted by one.
    #[error("{0} is in use: stop the capsules using it before restoring")]
    InUse(Target),
    /// A filesystem step failed.
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
    /// A btrfs command failed.
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it is of.
    pub target: Target,
    /// Its name.
    pub name: String,
    /// When it was taken, ms since the epoch (0 when its metadata is missing).
    pub created_ms: u64,
    /// The read-only subvolume.
    pub path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    target: Target,
    created_ms: u64,
}

/// Checks a snapshot name.
pub fn valid_snapshot_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Snapshots of one root's capsule layers and volumes.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    layout: Layout,
    backend: Backend,
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

impl SnapshotStore {
    /// Snapshots under `layout`, with `backend`.
    pub fn new(layout: Layout, backend: Backend) -> Self {
        Self { layout, backend }
    }

    fn btrfs(&self) -> Result<&Btrfs, SnapshotError> {
        match &self.backend {
            Backend::Btrfs(b) => Ok(b),
            Backend::Plain(FsKind::Btrfs) => Err(SnapshotError::NeedBtrfsProgs {
                root: self.layout.root().to_path_buf(),
            }),
            Backend::Plain(fs) => Err(SnapshotError::NeedBtrfs {
                root: self.layout.root().to_path_buf(),
                fs: *fs,
            }),
        }
    }

    /// The subvolume a target's snapshots are taken of.
    pub fn source_path(&self, target: &Target) -> PathBuf {
        match target {
            Target::Capsule(id) => self.layout.capsule_layer(id),
            Target::Volume(n) => self.layout.volume_data(n),
        }
    }

    /// `ROOT/snapshots/{capsules|volumes}/<target>`.
    pub fn dir(&self, target: &Target) -> PathBuf {
        self.layout
            .snapshots()
            .join(target.kind_dir())
            .join(target.name())
    }

    fn check(&self, target: &Target, name: Option<&str>) -> Result<&Btrfs, SnapshotError> {
        let b = self.btrfs()?;
        if !target.valid() {
            return Err(SnapshotError::BadTarget(target.clone()));
        }
        if let Some(n) = name {
            if !valid_snapshot_name(n) {
                return Err(SnapshotError::BadName(n.to_owned()));
            }
        }
        Ok(b)
    }

    fn source_subvolume(&self, target: &Target) -> Result<PathBuf, SnapshotError> {
        let src = self.source_path(target);
        if std::fs::symlink_metadata(&src).is_err() {
            return Err(SnapshotError::NoTarget(target.clone()));
        }
        if !is_subvolume(&src).map_err(io_err("stat", &src))? {
            return Err(SnapshotError::NotSubvolume {
                target: target.clone(),
                path: src,
            });
        }
        Ok(src)
    }

    /// Takes a read-only snapshot of the target (it may be running: the snapshot is
    /// crash-consistent, like pulling the plug).
    pub fn create(&self, target: &Target, name: &str) -> Result<Snapshot, SnapshotError> {
        let b = self.check(target, Some(name))?;
        let src = self.source_subvolume(target)?;
        let dir = self.dir(target);
        let meta_dir = dir.join(".meta");
        std::fs::create_dir_all(&meta_dir).map_err(io_err("create", &meta_dir))?;
        let dst = dir.join(name);
        if std::fs::symlink_metadata(&dst).is_ok() {
            return Err(SnapshotError::Exists {
                target: target.clone(),
                name: name.to_owned(),
            });
        }
        let created_ms = now_ms();
        b.snapshot(&src, &dst, true)?;
        let meta = Meta {
            name: name.to_owned(),
            target: target.clone(),
            created_ms,
        };
        let meta_path = meta_dir.join(format!("{name}.json"));
        let written = serde_json::to_vec(&meta)
            .map_err(io::Error::other)
            .and_then(|bytes| write_atomic(&meta_path, &bytes));
        if let Err(e) = written {
            let _ = b.delete_subvolume(&dst);
            return Err(io_err("write", &meta_path)(e));
        }
        Ok(Snapshot {
            target: target.clone(),
            name: name.to_owned(),
            created_ms,
            path: dst,
        })
    }

    /// The target's snapshots, oldest first (then by name).
    pub fn list(&self, target: &Target) -> Result<Vec<Snapshot>, SnapshotError> {
        self.check(target, None)?;
        let dir = self.dir(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("list", &dir))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_snapshot_name(&name) || !e.path().is_dir() {
                continue;
            }
            let created_ms = std::fs::read(dir.join(".meta").join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
                .map_or(0, |m| m.created_ms);
            out.push(Snapshot {
                target: target.clone(),
                path: e.path(),
                name,
                created_ms,
            });
        }
        out.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        Ok(out)
    }

    /// Every snapshot of every target.
    pub fn list_all(&self) -> Result<Vec<Snapshot>, SnapshotError> {
        self.btrfs()?;
        let mut out = Vec::new();
        for (kind, make) in [
            ("capsules", Target::Capsule as fn(String) -> Target),
            ("volumes", Target::Volume as fn(String) -> Target),
        ] {
            let dir = self.layout.snapshots().join(kind);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect();
            names.sort();
            for n in names {
                let t = make(n);
                if t.valid() {
                    out.extend(self.list(&t)?);
                }
            }
        }
        Ok(out)
    }

    /// Replaces the target's content with the snapshot's. `in_use` holds the targets that must
    /// not change now (running capsules, volumes they mount).
    pub fn restore(
        &self,
        target: &Target,
        name: &str,
        in_use: &BTreeSet<Target>,
    ) -> Result<(), SnapshotError> {
        let b = self.check(target, Some(name))?;
        if in_use.contains(target) {
            return Err(SnapshotError::InUse(target.clone()));
        }
        let src = self.source_subvolume(target)?;
        let snap = self.dir(target).join(name);
        if !is_subvolume(&snap).unwrap_or(false) {
            return Err(SnapshotError::NotFound {
                target: target.clone(),
                name: name.to_owned(),
            });
        }
        let parent = src.parent().unwrap_or(Path::new("/"));
        let staged = parent.join(format!(".restore-{}", random_hex(8)));
        b.snapshot(&snap, &staged, false)?;
        if let Err(e) = nix::fcntl::renameat2(
            None,
            &staged,
            None,
            &src,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        ) {
            let _ = b.delete_subvolume(&staged);
            return Err(io_err("swap in the restored subvolume at", &src)(e.into()));
        }
        // `staged` now holds the replaced content.
        if let Err(e) = b.remove_tree(&staged) {
            tracing::warn!(path = %staged.display(), error = %e, "could not delete the replaced subvolume; it is removed at the next start");
        }
        Ok(())
    }

    /// Deletes one snapshot.
    pub fn remove(&self, target: &Target, name: &str) -> Result<(), SnapshotError> {
        let b = self.check(target, Some(name))?;
        let dir = self.dir(target);
        let snap = dir.join(name);
        if std::fs::symlink_metadata(&snap).is_err() {
            return Err(SnapshotError::NotFound {
                target: target.clone(),
                name: name.to_owned(),
            });
        }
        b.remove_tree(&snap)?;
        let _ = std::fs::remove_file(dir.join(".meta").join(format!("{name}.json")));
        Ok(())
    }

    /// Deletes every snapshot of the target (its capsule or volume is being removed). Works on
    /// any backend; a target without snapshots is fine.
    pub fn remove_all(&self, target: &Target) -> Result<(), SnapshotError> {
        if !target.valid() {
            return Err(SnapshotError::BadTarget(target.clone()));
        }
        let dir = self.dir(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            self.backend.remove_tree(&e.path())?;
        }
        std::fs::remove_dir(&dir).map_err(io_err("remove", &dir))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn elsewhere_than_btrfs_the_error_names_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotStore::new(Layout::new(dir.path()), Backend::Plain(FsKind::Ext4));
        let t = Target::Volume("data".into());
        let e = s.create(&t, "s1").unwrap_err().to_string();
        assert_eq!(
            e,
            format!("snapshots need btrfs ({} is on ext4)", dir.path().display())
        );
        assert!(matches!(s.list(&t), Err(SnapshotError::NeedBtrfs { .. })));
        assert!(matches!(
            s.restore(&t, "s1", &BTreeSet::new()),
            Err(SnapshotError::NeedBtrfs { .. })
        ));
        let s = SnapshotStore::new(Layout::new(dir.path()), Backend::Plain(FsKind::Btrfs));
        let e = s.create(&t, "s1").unwrap_err().to_string();
        assert!(e.contains("btrfs-progs"), "{e}");
    }

    #[test]
    fn names_and_targets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotStore::new(
            Layout::new(dir.path()),
            Backend::Btrfs(Btrfs::with_program("/nonexistent")),
        );
        for bad in ["", ".meta", "../x", "a/b", &"n".repeat(201)] {
            assert!(matches!(
                s.create(&Target::Volume("data".into()), bad),
                Err(SnapshotError::BadName(_))
            ));
        }
        assert!(matches!(
            s.create(&Target::Volume("../v".into()), "s1"),
            Err(SnapshotError::BadTarget(_))
        ));
        assert!(matches!(
            s.create(&Target::Capsule("c1".into()), "s1"),
            Err(SnapshotError::NoTarget(_))
        ));
        // A plain directory is not a subvolume.
        std::fs::create_dir_all(s.source_path(&Target::Volume("data".into()))).unwrap();
        let e = s.create(&Target::Volume("data".into()), "s1").unwrap_err();
        assert!(matches!(e, SnapshotError::NotSubvolume { .. }), "{e}");
        let in_use: BTreeSet<Target> = [Target::Volume("data".into())].into();
        assert!(matches!(
            s.restore(&Target::Volume("data".into()), "s1", &in_use),
            Err(SnapshotError::InUse(_))
        ));
        assert_eq!(
            s.dir(&Target::Capsule("c1".into())),
            dir.path().join("snapshots/capsules/c1")
        );
    }
}
