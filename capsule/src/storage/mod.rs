//! Storage for capsules: named volumes, `-v`/`--tmpfs` specs and their mounts, capsule
//! writable layers, btrfs subvolumes and snapshots, and `commit` of a writable layer into an OCI
//! layer and image.
//!
//! Layout under the agent root (see docs/storage.md):
//!
//! ```text
//! ROOT/volumes/<name>/_data            the volume's content (a subvolume on btrfs)
//! ROOT/volumes/<name>/volume.json      driver, labels, owner, creation time
//! ROOT/capsules/<id>/layer/{upper,work} the capsule's writable layer (a subvolume on btrfs)
//! ROOT/capsules/<id>/rootfs             the overlay's mount point
//! ROOT/snapshots/capsules/<id>/<name>   read-only snapshots of a capsule's layer (btrfs)
//! ROOT/snapshots/volumes/<name>/<snap>  read-only snapshots of a volume (btrfs)
//! ```
//!
//! [`Storage::open`] picks the backend from the root's filesystem: on btrfs (with btrfs-progs
//! installed) layers and volumes are subvolumes and snapshots work; elsewhere they are plain
//! directories and snapshots fail with a clear error.
//!
//! The library holds no state of its own beyond these directories: which volumes exist is also
//! in the event log (`VolumeEvent`), and which are in use is the caller's to say (it knows the
//! capsules).

pub mod btrfs;
pub mod commit;
pub mod fstype;
pub mod layer;
pub mod mounts;
pub mod snapshot;
pub mod volume;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use btrfs::{Btrfs, BtrfsError};
pub use commit::{commit, CommitError, CommitOptions, Committed};
pub use fstype::{fs_kind, is_subvolume, FsKind};
pub use layer::{CapsuleLayers, LayerError};
pub use mounts::{MountSpecError, TmpfsSpec, VolumeSource, VolumeSpec};
pub use snapshot::{Snapshot, SnapshotError, SnapshotStore, Target};
pub use volume::{CreateOptions, Detached, Owner, PruneReport, Volume, VolumeError, VolumeStore};

use crate::runtime::Mount;

/// Errors of opening the storage and resolving mounts.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The root or one of its directories could not be created or examined.
    #[error("storage root {path}: {step}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A `-v`/`--tmpfs` spec is invalid or two mounts collide.
    #[error(transparent)]
    Spec(#[from] MountSpecError),
    /// A bind source does not exist or cannot be examined.
    #[error("bind source {path}: {source}")]
    BindSource {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A volume step failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// The directories under the agent root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The agent root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/volumes`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// `ROOT/volumes/<name>`.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes().join(name)
    }

    /// `ROOT/volumes/<name>/_data`: what capsules see.
    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("_data")
    }

    /// `ROOT/capsules`.
    pub fn capsules(&self) -> PathBuf {
        self.root.join("capsules")
    }

    /// `ROOT/capsules/<id>`.
    pub fn capsule_dir(&self, id: &str) -> PathBuf {
        self.capsules().join(id)
    }

    /// `ROOT/capsules/<id>/layer`: the writable layer (`upper` and `work`).
    pub fn capsule_layer(&self, id: &str) -> PathBuf {
        self.capsule_dir(id).join(layer::LAYER_DIR)
    }

    /// `ROOT/snapshots`.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
}

/// How layers and volumes are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Plain directories; the root is on this filesystem (snapshots are refused).
    Plain(FsKind),
    /// btrfs subvolumes, through this driver.
    Btrfs(Btrfs),
}

impl Backend {
    /// btrfs subvolumes when `root` is on btrfs and `btrfs` runs; plain directories otherwise.
    pub fn detect(root: &Path) -> io::Result<Self> {
        let fs = fs_kind(root)?;
        let driver = Btrfs::new();
        Ok(if fs == FsKind::Btrfs && driver.available() {
            Backend::Btrfs(driver)
        } else {
            Backend::Plain(fs)
        })
    }

    /// The filesystem of the root.
    pub fn fs(&self) -> FsKind {
        match self {
            Backend::Plain(fs) => *fs,
            Backend::Btrfs(_) => FsKind::Btrfs,
        }
    }

    /// The btrfs driver, when subvolumes are used.
    pub fn btrfs(&self) -> Option<&Btrfs> {
        match self {
            Backend::Btrfs(b) => Some(b),
            Backend::Plain(_) => None,
        }
    }

    /// Creates `path` (its parent must exist) as a subvolume or a directory; returns whether it
    /// is a subvolume.
    pub(crate) fn make_dir(&self, path: &Path) -> Result<bool, BtrfsError> {
        match self {
            Backend::Btrfs(b) => b.create_subvolume(path).map(|()| true),
            Backend::Plain(_) => {
                std::fs::create_dir(path)
                    .map(|()| false)
                    .map_err(|source| BtrfsError::Io {
                        step: "create directory",
                        path: path.to_path_buf(),
                        source,
                    })
            }
        }
    }

    /// Removes `path` whatever it is (see [`Btrfs::remove_tree`]).
    pub(crate) fn remove_tree(&self, path: &Path) -> Result<(), BtrfsError> {
        btrfs::remove_tree(self.btrfs(), path)
    }
}

/// The storage of one agent root.
#[derive(Debug, Clone)]
pub struct Storage {
    layout: Layout,
    backend: Backend,
}

/// What [`Storage::resolve_mounts`] made of a capsule's `-v` and `--tmpfs` specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMounts {
    /// The runtime mounts, in the order of the specs (volumes, then tmpfs).
    pub mounts: Vec<Mount>,
    /// Volumes created on the way (named volumes used for the first time, anonymous volumes):
    /// the caller records them (`VolumeEvent::Created`).
    pub created: Vec<Volume>,
}

impl Storage {
    /// Opens (and creates) the storage under `root`, detecting the backend, and removes what an
    /// interrupted operation left (half-made volumes, swapped-out layers of a restore).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Open {
            path: root.clone(),
            step: "create",
            source,
        })?;
        let backend = Backend::detect(&root).map_err(|source| StorageError::Open {
            path: root.clone(),
            step: "statfs",
            source,
        })?;
        Self::with_backend(root, backend)
    }

    /// Opens the storage with a given backend.
    pub fn with_backend(root: impl Into<PathBuf>, backend: Backend) -> Result<Self, StorageError> {
        let layout = Layout::new(root);
        for d in [layout.volumes(), layout.capsules(), layout.snapshots()] {
            std::fs::create_dir_all(&d).map_err(|source| StorageError::Open {
                path: d.clone(),
                step: "create",
                source,
            })?;
        }
        let s = Self { layout, backend };
        s.volumes().cleanup();
        s.layers().cleanup();
        Ok(s)
    }

    /// The directory layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Named volumes.
    pub fn volumes(&self) -> VolumeStore {
        VolumeStore::new(self.layout.clone(), self.backend.clone())
    }

    /// Capsule writable layers.
    pub fn layers(&self) -> CapsuleLayers {
        CapsuleLayers::new(self.layout.clone(), self.backend.clone())
    }

    /// Snapshots of layers and volumes.
    pub fn snapshots(&self) -> SnapshotStore {
        SnapshotStore::new(self.layout.clone(), self.backend.clone())
    }

    /// Turns a capsule's parsed `-v` and `--tmpfs` specs into runtime mounts: checks for
    /// duplicate targets and missing bind sources first, then creates missing named volumes and
    /// anonymous ones (with `opts`: labels, the owner for a rootless capsule). All or nothing:
    /// when a later step fails, the volumes created by this call are removed again.
    pub fn resolve_mounts(
        &self,
        volumes: &[VolumeSpec],
        tmpfs: &[TmpfsSpec],
        opts: &CreateOptions,
    ) -> Result<ResolvedMounts, StorageError> {
        mounts::check_targets(volumes, tmpfs)?;
        for v in volumes {
            if let VolumeSource::Host(p) = &v.source {
                std::fs::metadata(p).map_err(|source| StorageError::BindSource {
                    path: p.clone(),
                    source,
                })?;
            }
        }
        let store = self.volumes();
        let mut created: Vec<Volume> = Vec::new();
        let mut out = Vec::with_capacity(volumes.len() + tmpfs.len());
        let res = (|| {
            for v in volumes {
                let path = match &v.source {
                    VolumeSource::Host(p) => p.clone(),
                    VolumeSource::Named(name) => {
                        let (vol, new) = store.ensure(name, opts)?;
                        let path = vol.mountpoint.clone();
                        if new {
                            created.push(vol);
                        }
                        path
                    }
                    VolumeSource::Anonymous => {
                        let vol = store.create_anonymous(opts)?;
                        let path = vol.mountpoint.clone();
                        created.push(vol);
                        path
                    }
                };
                out.push(v.to_mount(path));
            }
            Ok::<(), StorageError>(())
        })();
        if let Err(e) = res {
            for v in &created {
                let _ = store.remove(&v.name, &Default::default());
            }
            return Err(e);
        }
        out.extend(tmpfs.iter().map(TmpfsSpec::to_mount));
        Ok(ResolvedMounts {
            mounts: out,
            created,
        })
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 16 random hex digits (for temporary names and anonymous volumes' prefixes).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // Unique enough for a temporary name: pid, time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = format!(
            "{}-{}-{}",
            std::process::id(),
            now_ms(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let digest = crate::image::Digest::of(seed.as_bytes());
        return digest.hex().chars().take(bytes * 2).collect();
    }
    hex::encode(buf)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", random_hex(6)));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_paths() {
        let l = Layout::new("/var/lib/bolt");
        assert_eq!(
            l.volume_data("db"),
            Path::new("/var/lib/bolt/volumes/db/_data")
        );
        assert_eq!(
            l.capsule_layer("c1"),
            Path::new("/var/lib/bolt/capsules/c1/layer")
        );
        assert_eq!(l.snapshots(), Path::new("/var/lib/bolt/snapshots"));
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(random_hex(8).len(), 16);
        assert_ne!(random_hex(8), random_hex(8));
    }
}
