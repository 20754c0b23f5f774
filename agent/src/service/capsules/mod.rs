//! The capsule manager: create → supervise → events, stop/kill/remove, restart policies, and
//! re-adoption after an agent restart.
//!
//! Every capsule runs under its own supervisor process ([`crate::shim`], `bolt supervise
//! DIR`) in `ROOT/capsules/<id>/`. The manager starts it, learns from one line on the
//! supervisor's stdout whether the capsule started, and only then appends `capsule.created` and
//! `capsule.started` (one durable batch): a start that fails leaves no event, no directory, no
//! cgroup. A watcher task per capsule waits for the supervisor's report of the end (or, after
//! an agent restart, for the supervisor's pid to go away), reads `exit.json` with
//! [`adopt`] and appends `capsule.exited` (code, signal, OOM flag) — plus `capsule.removed`
//! for `--rm` — then applies the restart policy, each restart a `capsule.started` event.
//!
//! All decisions come from the state: [`decide`] checks every command under one lock
//! ([`Capsules::ops`]), so two concurrent `run --name x` cannot both pass. The pure parts
//! (restart policy, name and size parsing, user lookup, command/env resolution) are
//! functions with unit tests.
//!
//! One file per part: [`create`] (the named steps of a start), [`lifecycle`] (watch, exit,
//! restart, recover, stop, kill, remove), [`exec`] (exec and the exec stream), [`attach`] (the
//! attach bridge), [`logs`] (read and follow), [`top`], and the pure [`policy`].

mod attach;
mod create;
mod exec;
mod lifecycle;
mod logs;
mod policy;
mod top;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bolt_capsule::runtime::supervisor::PidRecord;
use bolt_capsule::runtime::{adopt, Adopted, Runtime};
use bolt_events::payload::CapsuleSpec as EventSpec;
use bolt_events::Payload;
use bolt_state::{CapsuleInfo, CapsuleStatus, Command, DecideError, ExitInfo, State};

use crate::node::{Node, NodeError};
use crate::service::capsules::create::ResolvedImage;
use crate::service::images::Images;
use crate::service::networks::{NetworkError, Networks};
use crate::wire::capsules::{one_line, short, CapsuleView, LABEL_AUTO_REMOVE};

pub use attach::{StdioPeer, RECORD_PATIENCE};
pub use create::{parse_mount_specs, rootless_limits_warning, ROOTLESS_BRIDGE};
pub use logs::filter_logs;
pub use policy::random_hex;
pub use policy::{
    merge_env, resolve_command, resolve_user, restart_at_agent_start, restart_delay, should_restart,
};
pub use top::top_view;

/// One step of the capsule manager that failed.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("no such capsule: {0}")]
    NotFound(String),
    #[error("{0:?} matches more than one capsule; use more of the id")]
    Ambiguous(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("image {reference}: {message}")]
    Image { reference: String, message: String },
    #[error("{error}")]
    Start { error: String, exit_code: i32 },
    #[error("capsule {0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    Decide(DecideError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory (a symbolic link?); refusing to clean up through it")]
    Untrusted(PathBuf),
    #[error("supervisor of capsule {id}: {message}")]
    Supervisor { id: String, message: String },
    #[error(transparent)]
    Runtime(#[from] bolt_capsule::runtime::RuntimeError),
    #[error(transparent)]
    State(#[from] bolt_capsule::runtime::SupervisorError),
    #[error("{0}")]
    Task(String),
}

impl CapsuleError {
    /// The exit code a `bolt run` reports for this error, as docker: 126/127 for a command
    /// that cannot run, 125 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CapsuleError::Start { exit_code, .. } => *exit_code,
            _ => 125,
        }
    }
}

impl From<DecideError> for CapsuleError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::UnknownCapsule(id) | DecideError::CapsuleRemoved(id) => {
                CapsuleError::NotFound(id)
            }
            DecideError::NameInUse { .. }
            | DecideError::RemoveRunning(_)
            | DecideError::CapsuleRunning(_)
            | DecideError::CapsuleExists(_) => CapsuleError::Conflict(e.to_string()),
            other => CapsuleError::Decide(other),
        }
    }
}

/// A network step's error as a capsule error (bad input, conflict, or a failed step).
pub(super) fn net_err(e: &NetworkError) -> CapsuleError {
    use NetworkError as N;
    match e {
        N::BadRequest(m) => CapsuleError::BadRequest(m.clone()),
        N::NotFound(n) => CapsuleError::BadRequest(format!("no such network: {n}")),
        N::Conflict(m) => CapsuleError::Conflict(m.clone()),
        N::Host(h) => CapsuleError::Conflict(one_line(&h.to_string())),
        other => CapsuleError::Task(one_line(&other.to_string())),
    }
}

pub(super) fn io_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> CapsuleError {
    let path = path.to_path_buf();
    move |source| CapsuleError::Io { what, path, source }
}

/// Finds a capsule by full id, name or unique id prefix (docker's rule), ignoring removed ones.
pub fn find<'s>(state: &'s State, key: &str) -> Result<&'s CapsuleInfo, CapsuleError> {
    let live = |c: &&CapsuleInfo| c.status != CapsuleStatus::Removed;
    if let Some(c) = state.capsules.get(key).filter(live) {
        return Ok(c);
    }
    if let Some(c) = state.capsule_by_name(key) {
        return Ok(c);
    }
    if key.is_empty() {
        return Err(CapsuleError::NotFound(key.to_owned()));
    }
    let mut hits = state
        .capsules
        .values()
        .filter(|c| c.id.starts_with(key))
        .filter(live);
    match (hits.next(), hits.next()) {
        (Some(c), None) => Ok(c),
        (Some(_), Some(_)) => Err(CapsuleError::Ambiguous(key.to_owned())),
        _ => Err(CapsuleError::NotFound(key.to_owned())),
    }
}

pub(super) fn label_on(spec: &EventSpec, label: &str) -> bool {
    spec.labels.get(label).is_some_and(|v| v == "true")
}

pub(super) fn exit_info(record: &bolt_capsule::runtime::supervisor::ExitRecord) -> ExitInfo {
    match record.status {
        Some(s) => ExitInfo {
            code: s.code,
            signal: s.signal,
            oom: s.oom_killed,
        },
        None => ExitInfo {
            code: Some(record.exit_code),
            signal: None,
            oom: false,
        },
    }
}

/// The capsules of this node. One per agent, shared as `Arc`.
pub struct Capsules {
    node: Arc<Node>,
    images: Arc<Images>,
    networks: Arc<Networks>,
    dir: PathBuf,
    bin: PathBuf,
    /// Serializes decide + append of capsule commands, so checks and effects do not interleave.
    ops: tokio::sync::Mutex<()>,
    /// Names being created (not yet in the state).
    pending_names: Mutex<BTreeSet<String>>,
    runtime: std::sync::OnceLock<Result<Runtime, String>>,
    /// Volumes (and layers) under the agent root.
    storage: bolt_capsule::storage::Storage,
}

impl std::fmt::Debug for Capsules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capsules")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub(super) fn plock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Capsules {
    /// The manager for the agent root `root` (capsules in `root/capsules`), pulling images
    /// through `images` and attaching bridge networks through `networks`.
    pub fn new(
        node: Arc<Node>,
        images: Arc<Images>,
        networks: Arc<Networks>,
        root: &Path,
    ) -> Result<Arc<Capsules>, CapsuleError> {
        let dir = root.join("capsules");
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let bin = std::env::current_exe().map_err(io_err("locate", Path::new("bolt")))?;
        let storage = bolt_capsule::storage::Storage::open(root)
            .map_err(|e| CapsuleError::Task(e.to_string()))?;
        Ok(Arc::new(Capsules {
            storage,
            node,
            images,
            networks,
            dir,
            bin,
            ops: tokio::sync::Mutex::new(()),
            pending_names: Mutex::new(BTreeSet::new()),
            runtime: std::sync::OnceLock::new(),
        }))
    }

    /// The directory of capsule `id`.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The storage of the agent root (volumes).
    pub fn storage(&self) -> &bolt_capsule::storage::Storage {
        &self.storage
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Decides one command on the live state and appends what it says.
    async fn decide_one(&self, cmd: Command) -> Result<(), CapsuleError> {
        self.decide_append(vec![cmd]).await
    }

    /// The node's networks.
    fn networks(&self) -> Arc<Networks> {
        Arc::clone(&self.networks)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CapsuleError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CapsuleError::Task(e.to_string()))
    }

    /// Runs `f` on the live state (blocking pool).
    pub async fn state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, CapsuleError> {
        let node = Arc::clone(&self.node);
        Ok(self.blocking(move || node.with_live_state(f)).await??)
    }

    /// Holds the lock that serializes decide + append of commands (volumes use it too).
    pub async fn lock_ops(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// Appends payloads (durable on return); call with [`Capsules::lock_ops`] held.
    pub async fn record(&self, payloads: Vec<Payload>) -> Result<(), CapsuleError> {
        self.append(payloads).await
    }

    /// Appends payloads (durable on return).
    async fn append(&self, payloads: Vec<Payload>) -> Result<(), CapsuleError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let node = Arc::clone(&self.node);
        self.blocking(move || node.append(payloads)).await??;
        Ok(())
    }

    /// Decides `cmds` on the live state and appends their payloads in one batch. Each command
    /// is checked against the state before the batch: use it for commands about different
    /// facts, or whose later ones do not depend on the earlier ones (an exit and a forced
    /// removal).
    async fn decide_append(&self, cmds: Vec<Command>) -> Result<(), CapsuleError> {
        self.node.decide_commands::<CapsuleError>(cmds).await?;
        Ok(())
    }

    // --- images ---------------------------------------------------------------------------

    /// The image `reference`, pulled (and recorded as `image.pulled`) by the node's image
    /// service when missing.
    async fn ensure_image(&self, reference: &str) -> Result<ResolvedImage, CapsuleError> {
        let img_err = |e: &dyn std::fmt::Display| CapsuleError::Image {
            reference: reference.to_owned(),
            message: one_line(&e.to_string()),
        };
        let record = self
            .images
            .ensure(reference)
            .await
            .map_err(|e| img_err(&e))?;
        let store = self.images.store().clone();
        let lower = store
            .layer_dirs(&record.reference)
            .await
            .map_err(|e| img_err(&e))?;
        let config = store
            .image_config(&record.reference)
            .await
            .map_err(|e| img_err(&e))?;
        let c = config.config().clone().unwrap_or_default();
        Ok(ResolvedImage {
            reference: record.reference.clone(),
            digest: record.manifest_digest.to_string(),
            lower,
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        })
    }

    // --- queries -------------------------------------------------------------------------------

    /// The view of capsule `key` (id, name or id prefix).
    pub async fn view(&self, key: &str) -> Result<CapsuleView, CapsuleError> {
        let key = key.to_owned();
        self.state(move |s| find(s, &key).map(|c| CapsuleView::of(c).with_addresses(s)))
            .await?
    }

    /// This node's capsules (every node's with `all_nodes`): all of them (`all`) or the
    /// running ones, newest first.
    pub async fn list(&self, all: bool, all_nodes: bool) -> Result<Vec<CapsuleView>, CapsuleError> {
        let me = self.node.node_id();
        self.state(move |s| {
            let mut v: Vec<CapsuleView> = s
                .capsules
                .values()
                .filter(|c| all_nodes || c.node == me)
                .filter(|c| c.status != CapsuleStatus::Removed)
                .filter(|c| all || c.status == CapsuleStatus::Running)
                .map(|c| CapsuleView::of(c).with_addresses(s))
                .collect();
            v.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
            v
        })
        .await
    }

    /// Whether the state says the capsule runs (false once removed or gone).
    pub async fn is_running(&self, id: &str) -> bool {
        let id = id.to_owned();
        self.state(move |s| {
            s.capsules
                .get(&id)
                .is_some_and(|c| c.status == CapsuleStatus::Running)
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until the run that is current now has ended in the state (the exit recorded, and
    /// with `--rm` the removal), or `patience` passes. Returns the recorded exit.
    pub async fn wait_recorded(
        &self,
        id: &str,
        restarts: u32,
        patience: Duration,
    ) -> Option<ExitInfo> {
        let mut head = self.node.watch_head();
        // A patience too long to add to now waits without a deadline.
        let deadline = tokio::time::Instant::now().checked_add(patience);
        loop {
            let idc = id.to_owned();
            let done = self
                .state(move |s| match s.capsules.get(&idc) {
                    None => Some(None),
                    Some(c) if c.restarts != restarts => Some(c.exit),
                    Some(c) if c.status == CapsuleStatus::Running => None,
                    Some(c)
                        if label_on(&c.spec, LABEL_AUTO_REMOVE)
                            && c.status != CapsuleStatus::Removed =>
                    {
                        None
                    }
                    Some(c) => Some(c.exit),
                })
                .await
                .ok()
                .flatten();
            if let Some(exit) = done {
                return exit;
            }
            let changed = match deadline {
                Some(d) => tokio::time::timeout_at(d, head.changed()).await.ok(),
                None => Some(head.changed().await),
            };
            if !matches!(changed, Some(Ok(()))) {
                return None;
            }
        }
    }

    /// The capsule's run generation now: `(id, restarts, running)`. Only this node's capsules:
    /// another node's (replicated into the state by the mesh) is refused with where it runs, as
    /// this node has neither its process nor its files.
    pub async fn generation(&self, key: &str) -> Result<(String, u32, bool), CapsuleError> {
        let key = key.to_owned();
        let me = self.node.node_id();
        self.state(move |s| {
            let c = find(s, &key)?;
            if c.node != me {
                let node = s
                    .nodes
                    .get(&c.node)
                    .map_or_else(|| c.node.short(), |n| n.name.clone());
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} runs on node {node} ({}): run the command there",
                    c.name,
                    c.node.short()
                )));
            }
            Ok((c.id.clone(), c.restarts, c.status == CapsuleStatus::Running))
        })
        .await?
    }

    /// The live pid record of a running capsule.
    fn live_record(&self, id: &str) -> Result<PidRecord, CapsuleError> {
        match adopt(&self.dir_of(id))? {
            Adopted::Running { record, .. } => Ok(record),
            _ => Err(CapsuleError::NotRunning(short(id))),
        }
    }
}

/// Registers an owned fd with tokio's reactor. `AsyncFd::new` is deprecated because it
/// cannot know that an arbitrary `T: AsRawFd` keeps its fd open; an [`OwnedFd`] owned by the
/// `AsyncFd` does, so the concern does not apply (and `register` would need `unsafe`).
#[allow(deprecated)]
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    tokio::io::unix::AsyncFd::new(fd)
}
