//! Snapshots of capsule layers and volumes (`bolt snapshot ...`) and `bolt commit`.
//!
//! A snapshot is a read-only btrfs snapshot made by the storage library's
//! [`SnapshotStore`](bolt_capsule::storage::SnapshotStore), so it needs the agent root on btrfs;
//! elsewhere every snapshot operation answers "snapshots need btrfs (ROOT is on ext4)" and
//! changes nothing. Each change is decided on the live state first (`bolt_state::decide`), made
//! on disk, then recorded (`snapshot.created`, `.restored`, `.removed`); `bolt snapshot ls` is
//! the state's projection ([`bolt_state::State::snapshots`]).
//!
//! Targets are written `capsule:NAME` (a capsule's name, id or unique id prefix; its writable
//! layer) or `volume:NAME` (a named volume). Docker has no snapshots, hence the explicit kind.
//!
//! `bolt commit` turns a capsule's writable layer into a new image through
//! [`Images::commit`] (recorded as `image.pulled`).

use std::collections::BTreeSet;
use std::sync::Arc;

use bolt_capsule::storage::commit::{ConfigChanges, ImageCommit};
use bolt_capsule::storage::{Backend, CommitOptions, FsKind, SnapshotError, Storage, Target};
use bolt_events::payload::{SNAPSHOT_CAPSULE, SNAPSHOT_VOLUME};
use bolt_state::{decide, CapsuleStatus, Command, DecideError, SnapshotInfo, State};

use crate::service::capsules::{find, CapsuleError, Capsules};
use crate::service::images::{Images, ImagesError};
use crate::wire::snapshots::{CommitRequest, CommitView, SnapshotView};

/// One step of a snapshot or commit operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    #[error("invalid snapshot target {0:?}: expected capsule:NAME or volume:NAME")]
    BadTarget(String),
    #[error("no such volume: {0}")]
    NoVolume(String),
    #[error(transparent)]
    Capsule(#[from] CapsuleError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Storage(#[from] SnapshotError),
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error("invalid --change {0:?}: expected CMD, ENTRYPOINT or ENV (the instructions bolt commit applies)")]
    BadChange(String),
    #[error("image {reference} of capsule {capsule} is no longer in the store (digest {digest})")]
    NoBase {
        capsule: String,
        reference: String,
        digest: String,
    },
    #[error("capsule {0} has no writable layer on this node")]
    NoLayer(String),
    #[error("background task failed: {0}")]
    Task(String),
    #[error("pause capsule {capsule} for commit (use --pause=false to commit it live): {source}")]
    Pause {
        capsule: String,
        #[source]
        source: bolt_capsule::runtime::cgroup::CgroupError,
    },
}

/// `capsule` or `volume`, and the name the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetArg {
    /// [`SNAPSHOT_CAPSULE`] or [`SNAPSHOT_VOLUME`].
    pub kind: &'static str,
    /// The capsule's name, id or id prefix, or the volume's name.
    pub name: String,
}

impl TargetArg {
    /// Parses `capsule:NAME` or `volume:NAME`.
    pub fn parse(s: &str) -> Result<TargetArg, SnapshotsError> {
        let bad = || SnapshotsError::BadTarget(s.to_owned());
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            SNAPSHOT_CAPSULE => SNAPSHOT_CAPSULE,
            SNAPSHOT_VOLUME => SNAPSHOT_VOLUME,
            _ => return Err(bad()),
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(TargetArg {
            kind,
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for TargetArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// Why a rootless agent commits a running capsule without pausing it.
pub const ROOTLESS_PAUSE_NOTE: &str =
    "rootless: the capsule has no cgroup to freeze; committed without pausing";

/// A capsule's cgroup frozen for a commit: thawed by [`Frozen::thaw`], or on drop in every other
/// path (errors, cancellation), so a commit never leaves a capsule frozen.
struct Frozen(Option<Box<dyn bolt_capsule::runtime::cgroup::Cgroup>>);

impl Frozen {
    /// Freezes capsule `id`'s cgroup (blocking: bounded poll of the kernel's state).
    fn freeze(id: &str) -> Result<Self, bolt_capsule::runtime::cgroup::CgroupError> {
        let group = bolt_capsule::runtime::cgroup::Hierarchy::detect()?.open(id);
        group.freeze()?;
        Ok(Self(Some(group)))
    }

    /// Thaws now, reporting a failure (which leaves nothing for drop to retry).
    fn thaw(mut self) -> Result<(), bolt_capsule::runtime::cgroup::CgroupError> {
        self.0.take().map_or(Ok(()), |g| g.thaw())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            if let Err(e) = g.thaw() {
                tracing::error!("thaw capsule cgroup after commit: {e}");
            }
        }
    }
}

fn kind_target(t: &Target) -> (&'static str, String) {
    match t {
        Target::Capsule(id) => (SNAPSHOT_CAPSULE, id.clone()),
        Target::Volume(n) => (SNAPSHOT_VOLUME, n.clone()),
    }
}

/// The storage target `arg` names in `state`: a live capsule (by name, id or prefix), or a
/// volume the state knows.
pub fn resolve(state: &State, arg: &TargetArg) -> Result<Target, SnapshotsError> {
    match arg.kind {
        SNAPSHOT_CAPSULE => Ok(Target::Capsule(find(state, &arg.name)?.id.clone())),
        _ => {
            if state.volumes.contains_key(&arg.name) {
                Ok(Target::Volume(arg.name.clone()))
            } else {
                Err(SnapshotsError::NoVolume(arg.name.clone()))
            }
        }
    }
}

/// What must not be restored now: running capsules, and the volumes they mount.
pub fn restore_in_use(state: &State) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    for c in state
        .capsules
        .values()
        .filter(|c| c.status == CapsuleStatus::Running)
    {
        out.insert(Target::Capsule(c.id.clone()));
        for m in &c.spec.mounts {
            if let Some(src) = bolt_state::rules::mounted_volume(m) {
                out.insert(Target::Volume(src.to_owned()));
            }
        }
    }
    out
}

/// The "snapshots need btrfs" error when the root is not on btrfs (or lacks btrfs-progs).
pub fn need_btrfs(storage: &Storage) -> Result<(), SnapshotError> {
    let root = storage.layout().root().to_path_buf();
    match storage.backend() {
        Backend::Btrfs(_) => Ok(()),
        Backend::Plain(FsKind::Btrfs) => Err(SnapshotError::NeedBtrfsProgs { root }),
        Backend::Plain(fs) => Err(SnapshotError::NeedBtrfs { root, fs: *fs }),
    }
}

/// The API view of a snapshot the state holds.
pub fn view(state: &State, storage: &Storage, info: &SnapshotInfo) -> SnapshotView {
    let (target_name, target) = if info.target_kind == SNAPSHOT_CAPSULE {
        let name = state
            .capsules
            .get(&info.target)
            .map_or_else(|| info.target.clone(), |c| c.name.clone());
        (name, Target::Capsule(info.target.clone()))
    } else {
        (info.target.clone(), Target::Volume(info.target.clone()))
    };
    SnapshotView {
        target_kind: info.target_kind.clone(),
        target: info.target.clone(),
        target_name,
        name: info.name.clone(),
        created_ms: info.created.physical_ms(),
        restores: info.restores,
        restored_ms: info.restored.map(|h| h.physical_ms()),
        node: info.node.short(),
        path: storage.snapshots().dir(&target).join(&info.name),
    }
}

/// Every snapshot in the state (of `target` only, when given), by target then oldest first.
pub fn list(
    state: &State,
    storage: &Storage,
    target: Option<&TargetArg>,
) -> Result<Vec<SnapshotView>, SnapshotsError> {
    let infos: Vec<&SnapshotInfo> = match target {
        Some(arg) => {
            let (kind, name) = kind_target(&resolve(state, arg)?);
            state.snapshots_of(kind, &name)
        }
        None => {
            let mut all = Vec::new();
            for m in state.snapshots.values() {
                if let Some(first) = m.values().next() {
                    all.extend(state.snapshots_of(&first.target_kind, &first.target));
                }
            }
            all
        }
    };
    Ok(infos.into_iter().map(|i| view(state, storage, i)).collect())
}

/// Parses `bolt commit -c` instructions (`CMD`, `ENTRYPOINT` in JSON or shell form, `ENV
/// K=V ...` or `ENV K V`) into config changes.
pub fn parse_changes(changes: &[String]) -> Result<ConfigChanges, SnapshotsError> {
    let mut out = ConfigChanges::default();
    for c in changes {
        let bad = || SnapshotsError::BadChange(c.clone());
        let t = c.trim();
        let (instr, rest) = t.split_once(char::is_whitespace).ok_or_else(bad)?;
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let argv = |rest: &str| -> Result<Vec<String>, SnapshotsError> {
            if rest.starts_with('[') {
                serde_json::from_str::<Vec<String>>(rest).map_err(|_| bad())
            } else {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_owned()])
            }
        };
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => out.cmd = Some(argv(rest)?),
            "ENTRYPOINT" => out.entrypoint = Some(argv(rest)?),
            "ENV" => {
                if rest.contains('=') {
                    for kv in rest.split_whitespace() {
                        match kv.split_once('=') {
                            Some((k, _)) if !k.is_empty() => out.env.push(kv.to_owned()),
                            _ => return Err(bad()),
                        }
                    }
                } else {
                    let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(bad)?;
                    out.env.push(format!("{k}={}", v.trim()));
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn task(e: tokio::task::JoinError) -> SnapshotsError {
    SnapshotsError::Task(e.to_string())
}

/// A change of one snapshot, decided by [`Snapshots::decided`].
#[derive(Debug, Clone, Copy)]
enum Change {
    Create,
    Restore,
    Remove,
}

impl Change {
    fn command(self, target_kind: String, target: String, name: String) -> Command {
        match self {
            Change::Create => Command::CreateSnapshot {
                target_kind,
                target,
                name,
            },
            Change::Restore => Command::RestoreSnapshot {
                target_kind,
                target,
                name,
            },
            Change::Remove => Command::RemoveSnapshot {
                target_kind,
                target,
                name,
            },
        }
    }
}

/// A decided snapshot change, the operations lock held until it is dropped.
struct Decided<'a> {
    _ops: tokio::sync::MutexGuard<'a, ()>,
    storage: Storage,
    target: Target,
    payloads: Vec<bolt_events::Payload>,
    /// The targets a restore must not touch.
    in_use: BTreeSet<Target>,
}

/// The snapshot operations of a node's capsules and volumes.
#[derive(Debug, Clone)]
pub struct Snapshots {
    caps: Arc<Capsules>,
    images: Arc<Images>,
}

impl Snapshots {
    /// Over the node's capsule manager (its storage and state) and image store (commits).
    pub fn new(caps: Arc<Capsules>, images: Arc<Images>) -> Arc<Snapshots> {
        Arc::new(Snapshots { caps, images })
    }

    /// Checks for btrfs, takes the node's operations lock and decides `change` of snapshot
    /// `name` of the target on the live state.
    async fn decided(
        &self,
        arg: &TargetArg,
        name: &str,
        change: Change,
    ) -> Result<Decided<'_>, SnapshotsError> {
        let storage = self.caps.storage().clone();
        need_btrfs(&storage)?;
        let ops = self.caps.lock_ops().await;
        let (arg, name) = (arg.clone(), name.to_owned());
        let (target, payloads, in_use) = self
            .caps
            .state(move |s| {
                let target = resolve(s, &arg)?;
                let (kind, tname) = kind_target(&target);
                let payloads = decide(s, change.command(kind.to_owned(), tname, name))?;
                Ok::<_, SnapshotsError>((target, payloads, restore_in_use(s)))
            })
            .await??;
        Ok(Decided {
            _ops: ops,
            storage,
            target,
            payloads,
            in_use,
        })
    }

    /// Takes a snapshot `name` of the target (running or not: crash-consistent).
    pub async fn create(
        &self,
        arg: &TargetArg,
        name: &str,
    ) -> Result<SnapshotView, SnapshotsError> {
        let Decided {
            _ops,
            storage,
            target,
            payloads,
            ..
        } = self.decided(arg, name, Change::Create).await?;
        let store = storage.snapshots();
        let (t, n) = (target.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || store.create(&t, &n))
            .await
            .map_err(task)??;
        if let Err(e) = self.caps.record(payloads).await {
            let store = storage.snapshots();
            let (t, n) = (target, name.to_owned());
            let _ = tokio::task::spawn_blocking(move || store.remove(&t, &n)).await;
            return Err(e.into());
        }
        let (kind, tname) = kind_target(&target);
        let n = name.to_owned();
        let st = storage.clone();
        self.caps
            .state(move |s| {
                s.snapshots_of(kind, &tname)
                    .into_iter()
                    .find(|i| i.name == n)
                    .map(|i| view(s, &st, i))
            })
            .await?
            .ok_or_else(|| {
                SnapshotsError::Task("the snapshot was recorded but is not in the state".into())
            })
    }

    /// The snapshots in the state, of one target or all.
    pub async fn list(&self, arg: Option<TargetArg>) -> Result<Vec<SnapshotView>, SnapshotsError> {
        let storage = self.caps.storage().clone();
        need_btrfs(&storage)?;
        self.caps
            .state(move |s| list(s, &storage, arg.as_ref()))
            .await?
    }

    /// Replaces the target's content with snapshot `name`'s. Refused while the capsule runs or
    /// a running capsule mounts the volume.
    pub async fn restore(&self, arg: &TargetArg, name: &str) -> Result<(), SnapshotsError> {
        let Decided {
            _ops,
            storage,
            target,
            payloads,
            in_use,
        } = self.decided(arg, name, Change::Restore).await?;
        let store = storage.snapshots();
        let n = name.to_owned();
        tokio::task::spawn_blocking(move || store.restore(&target, &n, &in_use))
            .await
            .map_err(task)??;
        self.caps.record(payloads).await?;
        Ok(())
    }

    /// Deletes snapshot `name` of the target. One missing on disk (a crash between its deletion
    /// and the event) is still recorded as removed.
    pub async fn remove(&self, arg: &TargetArg, name: &str) -> Result<(), SnapshotsError> {
        let Decided {
            _ops,
            storage,
            target,
            payloads,
            ..
        } = self.decided(arg, name, Change::Remove).await?;
        let store = storage.snapshots();
        let n = name.to_owned();
        match tokio::task::spawn_blocking(move || store.remove(&target, &n))
            .await
            .map_err(task)?
        {
            Ok(()) | Err(SnapshotError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.caps.record(payloads).await?;
        Ok(())
    }

    /// `bolt commit`: the capsule's writable layer as a new image. A running capsule's cgroup
    /// is frozen while the layer is read (`pause`, as docker), so the image is a consistent
    /// snapshot; it is thawed in every path. With `pause: false`, or rootless (no cgroup), the
    /// layer is read live (files being written may be caught half-way).
    pub async fn commit(&self, req: CommitRequest) -> Result<CommitView, SnapshotsError> {
        let mut changes = parse_changes(&req.changes)?;
        changes.created_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        changes.author = req.author.clone();
        changes.comment = req.comment.clone();
        let key = req.capsule.clone();
        let info = self.caps.state(move |s| find(s, &key).cloned()).await??;
        let store = self.images.store().clone();
        // The base is the image the capsule was created from, by digest: its reference may
        // name another image by now.
        let records = store.list().await.map_err(ImagesError::from)?;
        let base = records
            .iter()
            .filter(|r| r.manifest_digest.to_string() == info.spec.image_digest)
            .min_by_key(|r| r.reference != info.spec.image)
            .map(|r| r.reference.clone())
            .ok_or_else(|| SnapshotsError::NoBase {
                capsule: info.name.clone(),
                reference: info.spec.image.clone(),
                digest: info.spec.image_digest.clone(),
            })?;
        let layers = self.caps.storage().layers();
        let upper = if layers.exists(&info.id) {
            layers.upper(&info.id)
        } else {
            self.caps.dir_of(&info.id).join("upper")
        };
        if !upper.is_dir() {
            return Err(SnapshotsError::NoLayer(info.name.clone()));
        }
        let tmp = self.caps.storage().layout().root().join("tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| SnapshotsError::Task(format!("create {}: {e}", tmp.display())))?;
        let commit = ImageCommit {
            base,
            upper,
            reference: req.reference.clone(),
            staging: tmp.join(format!(
                "commit-{}",
                crate::service::capsules::random_hex()?
            )),
            gzip: true,
            options: CommitOptions::default(),
            changes,
        };
        let running = info.status == CapsuleStatus::Running;
        let mut note = None;
        let frozen = if req.pause && running && !nix::unistd::geteuid().is_root() {
            tracing::warn!(capsule = %info.name, "{ROOTLESS_PAUSE_NOTE}");
            note = Some(ROOTLESS_PAUSE_NOTE.to_owned());
            None
        } else if req.pause && running {
            let id = info.id.clone();
            let frozen = tokio::task::spawn_blocking(move || Frozen::freeze(&id))
                .await
                .map_err(|e| SnapshotsError::Task(e.to_string()))?
                .map_err(|source| SnapshotsError::Pause {
                    capsule: info.name.clone(),
                    source,
                })?;
            Some(frozen)
        } else {
            None
        };
        let paused = frozen.is_some();
        let result = self.images.commit(&commit).await;
        if let Some(frozen) = frozen {
            let thawed = tokio::task::spawn_blocking(move || frozen.thaw())
                .await
                .map_err(|e| SnapshotsError::Task(e.to_string()))?;
            if let Err(source) = thawed {
                return Err(SnapshotsError::Pause {
                    capsule: info.name.clone(),
                    source,
                });
            }
        }
        let (diff_id, image) = result?;
        Ok(CommitView {
            capsule: info.id,
            diff_id,
            image,
            paused,
            note,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_need_a_kind_and_a_name() {
        assert_eq!(
            TargetArg::parse("capsule:web").unwrap(),
            TargetArg {
                kind: SNAPSHOT_CAPSULE,
                name: "web".into()
            }
        );
        assert_eq!(
            TargetArg::parse("volume:data").unwrap().kind,
            SNAPSHOT_VOLUME
        );
        assert_eq!(
            TargetArg::parse("volume:data").unwrap().to_string(),
            "volume:data"
        );
        for bad in ["web", "capsule:", "image:x", ":x", ""] {
            let e = TargetArg::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected capsule:NAME or volume:NAME"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn commit_changes_cover_cmd_entrypoint_and_env() {
        let c = parse_changes(&[
            r#"CMD ["cat", "/hello"]"#.into(),
            "ENTRYPOINT /bin/run --fast".into(),
            "ENV A=1 B=two".into(),
            "env C three".into(),
        ])
        .unwrap();
        assert_eq!(c.cmd, Some(vec!["cat".to_string(), "/hello".to_string()]));
        assert_eq!(
            c.entrypoint,
            Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "/bin/run --fast".into()
            ])
        );
        assert_eq!(c.env, ["A=1", "B=two", "C=three"]);
        for bad in [
            "EXPOSE 80",
            "CMD",
            "CMD [1, 2]",
            "ENV =x",
            "ENV A",
            "CMD [\"x\"",
        ] {
            let e = parse_changes(&[bad.to_string()]).unwrap_err().to_string();
            assert!(e.starts_with("invalid --change"), "{bad}: {e}");
        }
    }

    #[test]
    fn commit_pauses_unless_told_not_to() {
        let r: CommitRequest =
            serde_json::from_str(r#"{"capsule": "c", "reference": "r:1"}"#).unwrap();
        assert!(r.pause);
        assert!(CommitRequest::default().pause);
        let r: CommitRequest =
            serde_json::from_str(r#"{"capsule": "c", "reference": "r:1", "pause": false}"#)
                .unwrap();
        assert!(!r.pause);
    }
}
