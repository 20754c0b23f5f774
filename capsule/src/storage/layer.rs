//! Capsule writable layers: `ROOT/capsules/<id>/layer` holding the overlay's `upper` and
//! `work` directories, and `ROOT/capsules/<id>/rootfs`, the overlay's mount point.
//!
//! On btrfs the `layer` directory is one subvolume. `upper` and `work` must be on the same
//! subvolume: overlayfs renames finished files from `work` into `upper`, and a rename between
//! subvolumes fails with `EXDEV`. A snapshot of a capsule is a snapshot of `layer`.

use std::io;
use std::path::{Path, PathBuf};

use super::btrfs::BtrfsError;
use super::fstype::is_subvolume;
use super::snapshot::{SnapshotStore, Target};
use super::{Backend, Layout};
use crate::runtime::spec::validate_id;
use crate::runtime::Rootfs;

/// Errors of layer operations.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The id is not a valid capsule id.
    #[error("invalid capsule id {0:?}")]
    BadId(String),
    /// The layer exists already.
    #[error("capsule {0} already has a writable layer")]
    Exists(String),
    /// A filesystem step failed.
    #[error("capsule {id}: {step} {path}: {source}")]
    Io {
        /// The capsule.
        id: String,
        /// The step.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A subvolume step failed.
    #[error("capsule {id}: {source}")]
    Btrfs {
        /// The capsule.
        id: String,
        /// The cause.
        #[source]
        source: BtrfsError,
    },
}

/// The root filesystem of the capsule whose directory is `capsule_dir`
/// (`ROOT/capsules/<id>`) over `lower`: its writable layer in `capsule_dir/layer/{upper,work}`,
/// mounted on `capsule_dir/rootfs`. For whoever has the capsule's directory but no [`Layout`]
/// (the per-capsule supervisor).
pub fn capsule_rootfs(capsule_dir: &Path, lower: Vec<PathBuf>) -> Rootfs {
    let layer = capsule_dir.join(LAYER_DIR);
    Rootfs {
        lower,
        upper: layer.join("upper"),
        work: layer.join("work"),
        target: capsule_dir.join("rootfs"),
    }
}

/// The name of a capsule's layer directory inside its capsule directory.
pub const LAYER_DIR: &str = "layer";

/// The writable layers of one root's capsules.
#[derive(Debug, Clone)]
pub struct CapsuleLayers {
    layout: Layout,
    backend: Backend,
}

impl CapsuleLayers {
    /// Layers under `layout`, made with `backend`.
    pub fn new(layout: Layout, backend: Backend) -> Self {
        Self { layout, backend }
    }

    fn check(id: &str) -> Result<(), LayerError> {
        validate_id(id).map_err(|_| LayerError::BadId(id.to_owned()))
    }

    /// The layer directory (`ROOT/capsules/<id>/layer`).
    pub fn path(&self, id: &str) -> PathBuf {
        self.layout.capsule_layer(id)
    }

    /// The capsule's overlay upper directory: what `commit` turns into a layer.
    pub fn upper(&self, id: &str) -> PathBuf {
        self.path(id).join("upper")
    }

    /// The runtime's root filesystem for the capsule over `lower` (image layers, base first).
    pub fn rootfs(&self, id: &str, lower: Vec<PathBuf>) -> Rootfs {
        capsule_rootfs(&self.layout.capsule_dir(id), lower)
    }

    /// Whether the layer exists.
    pub fn exists(&self, id: &str) -> bool {
        self.path(id).is_dir()
    }

    /// Whether the layer is a btrfs subvolume (snapshots possible).
    pub fn is_subvolume(&self, id: &str) -> bool {
        is_subvolume(&self.path(id)).unwrap_or(false)
    }

    /// Creates the layer (a subvolume on btrfs) with `upper`, `work` and the mount point, and
    /// returns the root filesystem over `lower`. Refuses an existing layer (a restarted capsule
    /// keeps its layer: use [`Self::rootfs`]).
    pub fn create(&self, id: &str, lower: Vec<PathBuf>) -> Result<Rootfs, LayerError> {
        Self::check(id)?;
        let dir = self.layout.capsule_dir(id);
        let io = |step, path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Io {
                id: id.to_owned(),
                step,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let layer = self.path(id);
        if std::fs::symlink_metadata(&layer).is_ok() {
            return Err(LayerError::Exists(id.to_owned()));
        }
        self.backend
            .make_dir(&layer)
            .map_err(|source| LayerError::Btrfs {
                id: id.to_owned(),
                source,
            })?;
        let rootfs = self.rootfs(id, lower);
        if let Err(e) = rootfs.prepare() {
            let _ = self.backend.remove_tree(&layer);
            return Err(io("create", &layer)(e));
        }
        Ok(rootfs)
    }

    /// Removes the layer, the mount point and the capsule's snapshots (the capsule must be
    /// gone), and `ROOT/capsules/<id>` when nothing else is left in it. A missing layer is fine.
    pub fn remove(&self, id: &str) -> Result<(), LayerError> {
        Self::check(id)?;
        let btrfs = |source| LayerError::Btrfs {
            id: id.to_owned(),
            source,
        };
        let _ = SnapshotStore::new(self.layout.clone(), self.backend.clone())
            .remove_all(&Target::Capsule(id.to_owned()));
        self.backend.remove_tree(&self.path(id)).map_err(btrfs)?;
        let dir = self.layout.capsule_dir(id);
        match std::fs::remove_dir(dir.join("rootfs")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LayerError::Io {
                    id: id.to_owned(),
                    step: "remove",
                    path: dir.join("rootfs"),
                    source,
                })
            }
        }
        // Only when empty: the agent may keep its own files there.
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// Removes what an interrupted snapshot restore left (`ROOT/capsules/*/.restore-*`).
    pub fn cleanup(&self) {
        let Ok(entries) = std::fs::read_dir(self.layout.capsules()) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(inner) = std::fs::read_dir(e.path()) else {
                continue;
            };
            for i in inner.flatten() {
                if i.file_name().to_string_lossy().starts_with(".restore-") {
                    let _ = self.backend.remove_tree(&i.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::FsKind;

    #[test]
    fn create_gives_a_rootfs_in_the_layer_and_remove_takes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let layers = CapsuleLayers::new(Layout::new(dir.path()), Backend::Plain(FsKind::Ext4));
        let r = layers.create("c1", vec!["/l/base".into()]).unwrap();
        assert!(r.upper.is_dir() && r.work.is_dir() && r.target.is_dir());
        assert_eq!(r.upper, layers.upper("c1"));
        assert!(r.upper.starts_with(layers.path("c1")));
        assert!(
            r.work.starts_with(layers.path("c1")),
            "upper and work share the layer"
        );
        assert!(!r.target.starts_with(layers.path("c1")));
        assert_eq!(layers.rootfs("c1", vec!["/l/base".into()]), r);
        assert!(!layers.is_subvolume("c1"));
        assert!(matches!(
            layers.create("c1", vec![]),
            Err(LayerError::Exists(_))
        ));
        std::fs::write(r.upper.join("f"), "x").unwrap();
        layers.remove("c1").unwrap();
        assert!(!layers.layout.capsule_dir("c1").exists());
        layers.remove("c1").unwrap();
        assert!(matches!(
            layers.create("../x", vec![]),
            Err(LayerError::BadId(_))
        ));
    }

    #[test]
    fn remove_keeps_the_agents_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let layers = CapsuleLayers::new(Layout::new(dir.path()), Backend::Plain(FsKind::Ext4));
        layers.create("c2", vec![]).unwrap();
        let state = layers.layout.capsule_dir("c2").join("pid.json");
        std::fs::write(&state, "{}").unwrap();
        layers.remove("c2").unwrap();
        assert!(state.exists());
        assert!(!layers.path("c2").exists());
    }

    #[test]
    fn cleanup_removes_interrupted_restores_only() {
        let dir = tempfile::tempdir().unwrap();
        let layers = CapsuleLayers::new(Layout::new(dir.path()), Backend::Plain(FsKind::Ext4));
        layers.create("c3", vec![]).unwrap();
        let staged = layers.layout.capsule_dir("c3").join(".restore-1234");
        std::fs::create_dir_all(staged.join("upper")).unwrap();
        layers.cleanup();
        assert!(!staged.exists());
        assert!(layers.upper("c3").is_dir());
    }
}
