//! Named volumes: `ROOT/volumes/<name>/_data` (a btrfs subvolume when the root is on btrfs)
//! and `ROOT/volumes/<name>/volume.json`.
//!
//! A volume appears whole or not at all: it is made under a temporary name (`.tmp-*`) and
//! renamed into place without replacing anything; removal renames it away (`.rm-*`) first. What
//! an interrupted operation leaves is removed by [`VolumeStore::cleanup`] (run by
//! [`super::Storage::open`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bolt_events::payload::VolumeEvent;
use serde::{Deserialize, Serialize};

use super::btrfs::BtrfsError;
use super::fstype::is_subvolume;
use super::mounts::valid_volume_name;
use super::snapshot::{SnapshotStore, Target};
use super::{now_ms, random_hex, write_atomic, Backend, Layout};

/// The only driver: directories on the agent root's filesystem.
pub const DRIVER: &str = "local";
const META: &str = "volume.json";

/// Errors of volume operations.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name breaks the rule.
    #[error("invalid volume name {0:?}: use [A-Za-z0-9][A-Za-z0-9_.-]+ (2 to 255 characters)")]
    BadName(String),
    /// A volume of that name exists.
    #[error("volume {0} already exists")]
    Exists(String),
    /// No volume of that name.
    #[error("no volume named {0}")]
    NotFound(String),
    /// A capsule uses it.
    #[error("volume {0} is in use by a capsule: remove the capsule first")]
    InUse(String),
    /// A filesystem step failed.
    #[error("volume {name}: {step} {path}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// The step.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `volume.json` does not parse.
    #[error("volume {name}: metadata {path} is unreadable: {reason}")]
    Metadata {
        /// The volume.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A subvolume step failed.
    #[error("volume {name}: {source}")]
    Btrfs {
        /// The volume.
        name: String,
        /// The cause.
        #[source]
        source: BtrfsError,
    },
}

/// A uid:gid pair (for a rootless capsule: the host ids its root maps to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

/// Options of a new volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Owner of `_data` (default root, 0755); a rootless capsule passes the host uid and gid
    /// its root maps to so it can write there.
    pub owner: Option<Owner>,
}

/// What `volume.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    name: String,
    driver: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    created_ms: u64,
    #[serde(default)]
    owner: Option<Owner>,
    #[serde(default)]
    anonymous: bool,
}

/// A volume, as `bolt volume inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name.
    pub name: String,
    /// Driver ([`DRIVER`]).
    pub driver: String,
    /// The host directory capsules see (`ROOT/volumes/<name>/_data`).
    pub mountpoint: PathBuf,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Owner given at creation.
    pub owner: Option<Owner>,
    /// Made for a `-v /dst` spec (removed by a default prune when unused).
    pub anonymous: bool,
    /// `_data` is a btrfs subvolume (snapshots possible).
    pub subvolume: bool,
}

impl Volume {
    /// The `volume.created` event payload.
    pub fn created_event(&self) -> VolumeEvent {
        VolumeEvent::Created {
            name: self.name.clone(),
            driver: self.driver.clone(),
            labels: self.labels.clone(),
        }
    }

    /// The `volume.removed` event payload.
    pub fn removed_event(&self) -> VolumeEvent {
        VolumeEvent::Removed {
            name: self.name.clone(),
        }
    }
}

/// A volume renamed away by [`VolumeStore::detach`]: its data is intact until purged.
#[derive(Debug)]
#[must_use = "a detached volume is purged or restored"]
pub struct Detached {
    name: String,
    dir: PathBuf,
    trash: PathBuf,
}

impl Detached {
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the data and the volume's snapshots.
    pub fn purge(self, store: &VolumeStore) -> Result<(), VolumeError> {
        let _ = SnapshotStore::new(store.layout.clone(), store.backend.clone())
            .remove_all(&Target::Volume(self.name.clone()));
        store.remove_trash(&self.name, &self.trash)
    }

    /// Puts the volume back where it was (the removal was not recorded).
    pub fn restore(self) -> Result<(), VolumeError> {
        std::fs::rename(&self.trash, &self.dir).map_err(VolumeStore::io(
            &self.name,
            "restore",
            &self.trash,
        ))
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Names of the removed volumes.
    pub removed: Vec<String>,
    /// Bytes they used.
    pub bytes: u64,
}

/// The named volumes of one root.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    layout: Layout,
    backend: Backend,
}

fn check_name(name: &str) -> Result<(), VolumeError> {
    if valid_volume_name(name) {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.to_owned()))
    }
}

impl VolumeStore {
    /// The volumes under `layout`, made with `backend`.
    pub fn new(layout: Layout, backend: Backend) -> Self {
        Self { layout, backend }
    }

    fn io<'a>(
        name: &'a str,
        step: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> VolumeError + 'a {
        move |source| VolumeError::Io {
            name: name.to_owned(),
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Creates a volume; refuses an existing name.
    pub fn create(&self, name: &str, opts: &CreateOptions) -> Result<Volume, VolumeError> {
        self.create_inner(name, opts, false)
    }

    /// Creates an anonymous volume (a 64-hex-digit name, as docker's).
    pub fn create_anonymous(&self, opts: &CreateOptions) -> Result<Volume, VolumeError> {
        self.create_inner(&random_hex(32), opts, true)
    }

    /// The volume, created first when missing (`-v NAME:/dst` on first use). `true` when this
    /// call created it.
    pub fn ensure(&self, name: &str, opts: &CreateOptions) -> Result<(Volume, bool), VolumeError> {
        match self.create(name, opts) {
            Ok(v) => Ok((v, true)),
            Err(VolumeError::Exists(_)) => Ok((self.get(name)?, false)),
            Err(e) => Err(e),
        }
    }

    fn create_inner(
        &self,
        name: &str,
        opts: &CreateOptions,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        check_name(name)?;
        let root = self.layout.volumes();
        std::fs::create_dir_all(&root).map_err(Self::io(name, "create", &root))?;
        let dest = self.layout.volume_dir(name);
        if dest.exists() {
            return Err(VolumeError::Exists(name.to_owned()));
        }
        let tmp = root.join(format!(".tmp-{}", random_hex(8)));
        let res = (|| {
            std::fs::create_dir(&tmp).map_err(Self::io(name, "create", &tmp))?;
            let data = tmp.join("_data");
            self.backend
                .make_dir(&data)
                .map_err(|source| VolumeError::Btrfs {
                    name: name.to_owned(),
                    source,
                })?;
            std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(Self::io(name, "chmod", &data))?;
            if let Some(o) = opts.owner {
                std::os::unix::fs::lchown(&data, Some(o.uid), Some(o.gid))
                    .map_err(Self::io(name, "chown", &data))?;
            }
            let meta = Meta {
                name: name.to_owned(),
                driver: DRIVER.to_owned(),
                labels: opts.labels.clone(),
                created_ms: now_ms(),
                owner: opts.owner,
                anonymous,
            };
            let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| VolumeError::Metadata {
                name: name.to_owned(),
                path: tmp.join(META),
                reason: e.to_string(),
            })?;
            let meta_path = tmp.join(META);
            write_atomic(&meta_path, &bytes).map_err(Self::io(name, "write", &meta_path))?;
            // Never replaces: a volume made concurrently under the same name wins.
            nix::fcntl::renameat2(
                None,
                &tmp,
                None,
                &dest,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(|e| match e {
                nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                    VolumeError::Exists(name.to_owned())
                }
                e => Self::io(name, "rename into place", &dest)(e.into()),
            })?;
            let _ = std::fs::File::open(&root).and_then(|d| d.sync_all());
            Ok(())
        })();
        if let Err(e) = res {
            let _ = self.backend.remove_tree(&tmp.join("_data"));
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.get(name)
    }

    /// Where a volume's data is (or would be): `ROOT/volumes/<name>/_data`.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.layout.volume_data(name)
    }

    /// One volume (`bolt volume inspect`).
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        check_name(name)?;
        let dir = self.layout.volume_dir(name);
        let meta_path = dir.join(META);
        let bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_owned()))
            }
            Err(e) => return Err(Self::io(name, "read", &meta_path)(e)),
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| VolumeError::Metadata {
            name: name.to_owned(),
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        let data = self.layout.volume_data(name);
        Ok(Volume {
            name: name.to_owned(),
            driver: meta.driver,
            subvolume: is_subvolume(&data).unwrap_or(false),
            mountpoint: data,
            labels: meta.labels,
            created_ms: meta.created_ms,
            owner: meta.owner,
            anonymous: meta.anonymous,
        })
    }

    /// Every volume, by name. Directories that are not volumes (no valid name or metadata) are
    /// skipped.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let root = self.layout.volumes();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io("*", "list", &root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Self::io("*", "list", &root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_volume_name(&name) {
                continue;
            }
            match self.get(&name) {
                Ok(v) => out.push(v),
                Err(VolumeError::NotFound(_) | VolumeError::Metadata { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a volume and its snapshots; refuses one in `in_use` (the volumes the caller's
    /// capsules mount). [`detach`](Self::detach) then [`Detached::purge`].
    pub fn remove(&self, name: &str, in_use: &BTreeSet<String>) -> Result<(), VolumeError> {
        self.detach(name, in_use)?.purge(self)
    }

    /// The first, reversible half of a removal: the volume's directory is renamed away (gone
    /// from view, its data intact), so the caller can record the removal before any data is
    /// deleted, then [`Detached::purge`] it, or [`Detached::restore`] it when recording failed.
    /// An interrupted removal's leftover is purged by [`cleanup`](Self::cleanup).
    pub fn detach(&self, name: &str, in_use: &BTreeSet<String>) -> Result<Detached, VolumeError> {
        check_name(name)?;
        if in_use.contains(name) {
            return Err(VolumeError::InUse(name.to_owned()));
        }
        let dir = self.layout.volume_dir(name);
        if !dir.join(META).exists() && !dir.exists() {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        let trash = self.layout.volumes().join(format!(".rm-{}", random_hex(8)));
        std::fs::rename(&dir, &trash).map_err(Self::io(name, "rename away", &dir))?;
        Ok(Detached {
            name: name.to_owned(),
            dir,
            trash,
        })
    }

    fn remove_trash(&self, name: &str, trash: &Path) -> Result<(), VolumeError> {
        let err = |source| VolumeError::Btrfs {
            name: name.to_owned(),
            source,
        };
        self.backend
            .remove_tree(&trash.join("_data"))
            .map_err(err)?;
        self.backend.remove_tree(trash).map_err(err)
    }

    /// Removes unused volumes: anonymous ones, or all of them with `all` (docker's `volume
    /// prune` and `volume prune --all`).
    pub fn prune(&self, in_use: &BTreeSet<String>, all: bool) -> Result<PruneReport, VolumeError> {
        let mut report = PruneReport::default();
        for v in self.list()? {
            if in_use.contains(&v.name) || !(all || v.anonymous) {
                continue;
            }
            let bytes = self.usage(&v.name).unwrap_or(0);
            match self.remove(&v.name, in_use) {
                Ok(()) => {
                    report.bytes += bytes;
                    report.removed.push(v.name);
                }
                Err(VolumeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Disk space used by a volume's content (allocated blocks; hard links counted once).
    pub fn usage(&self, name: &str) -> Result<u64, VolumeError> {
        let data = self.get(name)?.mountpoint;
        let mut seen = HashSet::new();
        disk_usage(&data, &mut seen).map_err(Self::io(name, "measure", &data))
    }

    /// Removes what interrupted creations, removals and snapshot restores left (`.tmp-*`,
    /// `.rm-*`, `<name>/.restore-*`).
    pub fn cleanup(&self) {
        let root = self.layout.volumes();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".tmp-") || n.starts_with(".rm-") {
                let _ = self.remove_trash(&n, &e.path());
                continue;
            }
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

/// Allocated bytes under `path`, each inode once.
pub(crate) fn disk_usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut total = 0;
    if seen.insert((meta.dev(), meta.ino())) {
        total += meta.blocks() * 512;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            total += disk_usage(&e?.path(), seen)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::FsKind;

    fn store() -> (tempfile::TempDir, VolumeStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::new(Layout::new(dir.path()), Backend::Plain(FsKind::Ext4));
        (dir, s)
    }

    #[test]
    fn a_detached_volume_keeps_its_data_until_purged_and_can_be_restored() {
        let (_d, s) = store();
        let v = s.create("keep", &CreateOptions::default()).unwrap();
        std::fs::write(v.mountpoint.join("f"), b"data").unwrap();
        let d = s.detach("keep", &BTreeSet::new()).unwrap();
        assert!(matches!(s.get("keep"), Err(VolumeError::NotFound(_))));
        d.restore().unwrap();
        assert_eq!(std::fs::read(v.mountpoint.join("f")).unwrap(), b"data");
        let d = s.detach("keep", &BTreeSet::new()).unwrap();
        d.purge(&s).unwrap();
        assert!(matches!(s.get("keep"), Err(VolumeError::NotFound(_))));
        let left: Vec<_> = std::fs::read_dir(s.layout.volumes())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let used: BTreeSet<String> = ["keep".to_owned()].into();
        s.create("keep", &CreateOptions::default()).unwrap();
        assert!(matches!(
            s.detach("keep", &used),
            Err(VolumeError::InUse(_))
        ));
    }

    #[test]
    fn create_inspect_list_remove() {
        let (_d, s) = store();
        let opts = CreateOptions {
            labels: [("team".to_owned(), "db".to_owned())].into(),
            owner: None,
        };
        let v = s.create("data1", &opts).unwrap();
        assert!(v.mountpoint.is_dir());
        assert!(v.mountpoint.ends_with("volumes/data1/_data"));
        assert_eq!(v.labels.get("team").map(String::as_str), Some("db"));
        assert_eq!(v.driver, "local");
        assert!(!v.subvolume);
        assert!(matches!(
            s.create("data1", &opts),
            Err(VolumeError::Exists(_))
        ));
        s.create("data0", &CreateOptions::default()).unwrap();
        let names: Vec<String> = s.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["data0", "data1"]);
        assert_eq!(s.get("data1").unwrap(), v);
        assert!(matches!(
            v.created_event(),
            VolumeEvent::Created { ref name, .. } if name == "data1"
        ));

        std::fs::write(v.mountpoint.join("f"), vec![7u8; 10_000]).unwrap();
        assert!(s.usage("data1").unwrap() >= 8192);

        let in_use: BTreeSet<String> = ["data1".to_owned()].into();
        let e = s.remove("data1", &in_use).unwrap_err();
        assert!(matches!(e, VolumeError::InUse(_)), "{e}");
        assert!(
            v.mountpoint.join("f").exists(),
            "refused removal keeps the data"
        );
        s.remove("data1", &BTreeSet::new()).unwrap();
        assert!(matches!(s.get("data1"), Err(VolumeError::NotFound(_))));
        assert!(matches!(
            s.remove("data1", &BTreeSet::new()),
            Err(VolumeError::NotFound(_))
        ));
        // Nothing but data0 is left in the volumes directory.
        let left: Vec<String> = std::fs::read_dir(s.layout.volumes())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["data0"]);
    }

    #[test]
    fn bad_names_are_refused_before_touching_the_disk() {
        let (_d, s) = store();
        for bad in ["a", "../x", ".tmp-1", "a/b", ""] {
            assert!(matches!(
                s.create(bad, &CreateOptions::default()),
                Err(VolumeError::BadName(_))
            ));
            assert!(matches!(s.get(bad), Err(VolumeError::BadName(_))));
        }
        assert!(!s.layout.volumes().exists() || s.list().unwrap().is_empty());
    }

    #[test]
    fn ensure_creates_once() {
        let (_d, s) = store();
        let (v, new) = s.ensure("cache", &CreateOptions::default()).unwrap();
        assert!(new);
        std::fs::write(v.mountpoint.join("x"), "1").unwrap();
        let (v2, new) = s.ensure("cache", &CreateOptions::default()).unwrap();
        assert!(!new);
        assert_eq!(
            std::fs::read_to_string(v2.mountpoint.join("x")).unwrap(),
            "1"
        );
    }

    #[test]
    fn prune_takes_unused_anonymous_volumes_or_all_unused() {
        let (_d, s) = store();
        let a = s.create_anonymous(&CreateOptions::default()).unwrap();
        assert_eq!(a.name.len(), 64);
        assert!(a.anonymous);
        let b = s.create_anonymous(&CreateOptions::default()).unwrap();
        s.create("named1", &CreateOptions::default()).unwrap();
        s.create("named2", &CreateOptions::default()).unwrap();
        let in_use: BTreeSet<String> = [b.name.clone(), "named2".to_owned()].into();
        let r = s.prune(&in_use, false).unwrap();
        assert_eq!(r.removed, [a.name]);
        let r = s.prune(&in_use, true).unwrap();
        assert_eq!(r.removed, ["named1"]);
        let mut left: Vec<String> = s.list().unwrap().into_iter().map(|v| v.name).collect();
        left.sort();
        let mut want = vec![b.name, "named2".to_owned()];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn owner_is_applied_when_root() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (_d, s) = store();
        let v = s
            .create(
                "rootless",
                &CreateOptions {
                    labels: BTreeMap::new(),
                    owner: Some(Owner {
                        uid: 100_000,
                        gid: 100_001,
                    }),
                },
            )
            .unwrap();
        let m = std::fs::metadata(&v.mountpoint).unwrap();
        assert_eq!((m.uid(), m.gid()), (100_000, 100_001));
        assert_eq!(v.owner.unwrap().uid, 100_000);
    }

    #[test]
    fn leftovers_are_cleaned() {
        let (_d, s) = store();
        s.create("keep1", &CreateOptions::default()).unwrap();
        let tmp = s.layout.volumes().join(".tmp-abc");
        std::fs::create_dir_all(tmp.join("_data/x")).unwrap();
        let rm = s.layout.volumes().join(".rm-abc");
        std::fs::create_dir_all(rm.join("_data")).unwrap();
        let restore = s.layout.volume_dir("keep1").join(".restore-abc");
        std::fs::create_dir_all(restore.join("x")).unwrap();
        s.cleanup();
        assert!(!tmp.exists() && !rm.exists() && !restore.exists());
        assert!(s.get("keep1").is_ok());
    }
}
