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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bolt_capsule::runtime::supervisor::{files, LogLine, PidRecord};
use bolt_capsule::runtime::{adopt, Adopted, ExecSpec, Hierarchy, Process, Runtime, Stdio, User};
use bolt_capsule::storage::mounts::{TmpfsSpec, VolumeSource, VolumeSpec};
use bolt_events::payload::{CapsuleEvent, CapsuleSpec as EventSpec};
use bolt_events::Payload;
use bolt_state::{decide, CapsuleInfo, CapsuleStatus, Command, DecideError, ExitInfo, State};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

use crate::api::capsules::{CapsuleView, CreateRequest, TopView};
use crate::node::{Node, NodeError};
use crate::shim::{Report, SupervisorConfig, SUPERVISOR_LOG};

/// Label: remove the capsule when it exits (`--rm`).
pub const LABEL_AUTO_REMOVE: &str = "bolt.auto_remove";
/// Label: the capsule has a pty (`-t`).
pub const LABEL_TTY: &str = "bolt.tty";
/// Label: the capsule's stdin stays open for attach clients (`-i`).
pub const LABEL_STDIN: &str = "bolt.stdin";
/// Label: what the agent ignored of the request (one warning per line), printed by `bolt run`.
pub const LABEL_WARNINGS: &str = "bolt.warnings";

/// Why a rootless agent refuses `--network bridge`.
pub const ROOTLESS_BRIDGE: &str =
    "bridge networking needs root: a rootless agent runs capsules with --network none or host";

/// The warning of a rootless agent (no cgroup controllers are delegated to users, so limits
/// cannot be applied) for the limit flags given, like podman's; `None` without any.
pub fn rootless_limits_warning(memory: bool, cpus: bool, pids: bool) -> Option<String> {
    let flags: Vec<&str> = [
        (memory, "--memory"),
        (cpus, "--cpus"),
        (pids, "--pids-limit"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    (!flags.is_empty()).then(|| {
        format!(
            "rootless: no cgroup controllers delegated; {} ignored",
            flags.join(", ")
        )
    })
}

/// How long a start may take before the supervisor is called hung (a guard, not a timing).
const START_PATIENCE: Duration = Duration::from_secs(120);
/// How long `stop` waits for SIGKILL to take effect before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(30);
/// Default `stop` grace period, as docker.
pub const DEFAULT_STOP_TIMEOUT: u64 = 10;

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
fn net_err(e: &crate::service::networks::NetworkError) -> CapsuleError {
    use crate::service::networks::NetworkError as N;
    match e {
        N::BadRequest(m) => CapsuleError::BadRequest(m.clone()),
        N::NotFound(n) => CapsuleError::BadRequest(format!("no such network: {n}")),
        N::Conflict(m) => CapsuleError::Conflict(m.clone()),
        N::Host(h) => CapsuleError::Conflict(one_line(&h.to_string())),
        other => CapsuleError::Task(one_line(&other.to_string())),
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CapsuleError {
    let path = path.to_path_buf();
    move |source| CapsuleError::Io { what, path, source }
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// A restart policy, docker's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart when the exit code is not 0, at most N times when given.
    OnFailure(Option<u32>),
    /// Always restart; a manually stopped capsule comes back when the agent starts.
    Always,
    /// Like `always`, except a manually stopped capsule stays stopped.
    UnlessStopped,
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid restart policy {s:?}: use no, on-failure[:N], always or unless-stopped"
            )
        };
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure(None)),
            other => match other.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse::<u32>()
                    .map(|n| RestartPolicy::OnFailure(Some(n)))
                    .map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure(None) => f.write_str("on-failure"),
            RestartPolicy::OnFailure(Some(n)) => write!(f, "on-failure:{n}"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// The shell-style exit code of a recorded exit: the code, or 128 + signal.
pub fn exit_code_of(exit: &ExitInfo) -> i32 {
    match (exit.code, exit.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

/// Whether a capsule that just exited is restarted. `restarts` is how many times it was
/// restarted already; a capsule a person stopped or killed is never restarted.
pub fn should_restart(
    policy: RestartPolicy,
    exit: &ExitInfo,
    restarts: u32,
    manually_stopped: bool,
) -> bool {
    if manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure(max) => {
            exit_code_of(exit) != 0 && max.is_none_or(|m| restarts < m)
        }
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
    }
}

/// Whether an exited capsule is started again when the agent starts (docker's daemon-start
/// rule): `always` ones are, `unless-stopped` ones unless a person stopped them.
pub fn restart_at_agent_start(policy: RestartPolicy, manually_stopped: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !manually_stopped,
        RestartPolicy::No | RestartPolicy::OnFailure(_) => false,
    }
}

/// The wait before restart number `restarts + 1`: 100 ms doubling, at most 12.8 s; a capsule
/// that ran for 10 s or more starts over at 100 ms (docker's rule).
pub fn restart_delay(restarts: u32, ran_for: Option<Duration>) -> Duration {
    if ran_for.is_some_and(|d| d >= Duration::from_secs(10)) {
        return Duration::from_millis(100);
    }
    Duration::from_millis(100u64 << restarts.min(7))
}

/// Parses a docker size: `64m`, `1g`, `512k`, `100b`, `1048576` (bytes), case-insensitive,
/// with an optional trailing `b` (`64mb`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use a number with an optional unit b, k, m or g");
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parses `--cpus 0.5` into millicpus.
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let bad = || format!("invalid --cpus {s:?}: use a positive number such as 0.5");
    let v: f64 = s.trim().parse().map_err(|_| bad())?;
    let millis = (v * 1000.0).round();
    if !millis.is_finite() || millis < 1.0 || millis > f64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(millis as u32)
}

/// Whether `name` is a valid capsule name: docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const ADJECTIVES: [&str; 24] = [
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry",
    "nimble", "proud", "quick", "quiet", "rapid", "sharp", "shiny", "silent", "swift", "tidy",
    "vivid", "witty", "zen", "bold",
];
const NOUNS: [&str; 24] = [
    "ampere", "bohr", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "joule", "kepler",
    "lovelace", "maxwell", "newton", "ohm", "pascal", "planck", "raman", "sagan", "tesla",
    "turing", "volta", "watt", "yalow", "zuse",
];

/// 32 random bytes as 64 hex digits: capsule ids, and unique names of the agent's scratch entries.
pub(crate) fn random_hex() -> Result<String, CapsuleError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| CapsuleError::Task(format!("random id: {e}")))?;
    Ok(hex::encode(buf))
}

/// A docker-style `adjective_noun` name from an id's bytes.
fn name_from(id: &str, attempt: usize) -> String {
    let b = id.as_bytes();
    let a = usize::from(b.first().copied().unwrap_or(0)) + attempt;
    let n = usize::from(b.get(1).copied().unwrap_or(0)) * 7 + attempt;
    let base = format!(
        "{}_{}",
        ADJECTIVES[a % ADJECTIVES.len()],
        NOUNS[n % NOUNS.len()]
    );
    if attempt >= ADJECTIVES.len() {
        format!("{base}{attempt}")
    } else {
        base
    }
}

/// The argv a capsule runs: docker's entrypoint/cmd rule. `--entrypoint` replaces the image's
/// entrypoint and drops its cmd; command-line arguments replace the image's cmd.
pub fn resolve_command(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&[String]>,
    cmd: &[String],
) -> Vec<String> {
    let (ep, default_cmd): (&[String], &[String]) = match entrypoint {
        Some(e) => (e, &[]),
        None => (image_entrypoint, image_cmd),
    };
    let mut argv = ep.to_vec();
    if cmd.is_empty() {
        argv.extend(default_cmd.iter().cloned());
    } else {
        argv.extend(cmd.iter().cloned());
    }
    argv
}

/// The image's environment with the given entries on top (same key: the given one wins, in
/// the image's position; new keys after).
pub fn merge_env(image: &[String], given: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    let mut out: Vec<String> = image.to_vec();
    for g in given {
        let k = key(g);
        match out.iter_mut().find(|e| key(e) == k) {
            Some(slot) => *slot = g.clone(),
            None => out.push(g.clone()),
        }
    }
    out
}

/// Reads `etc/<file>` from the first of `layers` (top first) that has it as a regular file
/// under a real `etc` directory (symlinks are not followed: a layer's link must not read the
/// host's files).
fn read_etc(layers: &[PathBuf], file: &str) -> Option<String> {
    for l in layers {
        let etc = l.join("etc");
        let Ok(md) = std::fs::symlink_metadata(&etc) else {
            continue;
        };
        if !md.is_dir() {
            return None;
        }
        let p = etc.join(file);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// Resolves a docker `--user` (`uid`, `name`, `uid:gid`, `name:group`) against the image's
/// `/etc/passwd` and `/etc/group` (layers top first). A numeric uid not in passwd gets gid 0,
/// as in docker.
pub fn resolve_user(spec: &str, layers: &[PathBuf]) -> Result<(User, Vec<u32>), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((User { uid: 0, gid: 0 }, Vec::new()));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_etc(layers, "passwd").unwrap_or_default();
    let groups = read_etc(layers, "group").unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (name, uid, gid) = (f.first()?, f.get(2)?.parse::<u32>().ok()?, f.get(3)?);
        let matches = match user.parse::<u32>() {
            Ok(u) => u == uid,
            Err(_) => *name == user,
        };
        matches.then(|| ((*name).to_owned(), uid, gid.parse::<u32>().unwrap_or(0)))
    });
    let (name, uid, mut gid) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => e,
        (None, Ok(uid)) => (String::new(), uid, 0),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&g))
                        .then(|| f.get(2).and_then(|v| v.parse().ok()))
                        .flatten()
                })
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut extra = Vec::new();
    if !name.is_empty() && group.is_none() {
        for l in groups.lines() {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Some(g) = f.get(2).and_then(|v| v.parse::<u32>().ok()) {
                    if g != gid && !extra.contains(&g) {
                        extra.push(g);
                    }
                }
            }
        }
    }
    Ok((User { uid, gid }, extra))
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

fn label_on(spec: &EventSpec, label: &str) -> bool {
    spec.labels.get(label).is_some_and(|v| v == "true")
}

fn exit_info(record: &bolt_capsule::runtime::supervisor::ExitRecord) -> ExitInfo {
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

// ---------------------------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------------------------

/// An image ready to run: its layers and the parts of its config a capsule uses.
#[derive(Debug, Clone)]
struct ResolvedImage {
    reference: String,
    digest: String,
    lower: Vec<PathBuf>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
}

/// Parses every `-v` and `--tmpfs` spec (before anything is created); an error names the spec.
pub fn parse_mount_specs(
    volumes: &[String],
    tmpfs: &[String],
) -> Result<(Vec<VolumeSpec>, Vec<TmpfsSpec>), CapsuleError> {
    let bad =
        |e: bolt_capsule::storage::mounts::MountSpecError| CapsuleError::BadRequest(e.to_string());
    let v = volumes
        .iter()
        .map(|s| VolumeSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let t = tmpfs
        .iter()
        .map(|s| TmpfsSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    bolt_capsule::storage::mounts::check_targets(&v, &t).map_err(bad)?;
    Ok((v, t))
}

/// The capsules of this node. One per agent, shared as `Arc`.
pub struct Capsules {
    node: Arc<Node>,
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

fn plock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Releases a reserved name when dropped.
struct NameReservation<'a> {
    caps: &'a Capsules,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        plock(&self.caps.pending_names).remove(&self.name);
    }
}

/// Removes a half-made capsule directory when dropped, unless disarmed.
struct DirGuard {
    path: Option<PathBuf>,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// How the watcher learns that a supervisor is done.
enum Watch {
    /// We spawned it: its report pipe and the child to reap.
    Child(Child, BufReader<ChildStdout>),
    /// Adopted after an agent restart: its pid.
    Pid(i32),
}

impl Capsules {
    /// The manager for the agent root `root` (capsules in `root/capsules`).
    pub fn new(node: Arc<Node>, root: &Path) -> Result<Arc<Capsules>, CapsuleError> {
        let dir = root.join("capsules");
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let bin = std::env::current_exe().map_err(io_err("locate", Path::new("bolt")))?;
        let storage = bolt_capsule::storage::Storage::open(root)
            .map_err(|e| CapsuleError::Task(e.to_string()))?;
        Ok(Arc::new(Capsules {
            storage,
            node,
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

    /// The node's networks (set by the daemon).
    fn networks(&self) -> Result<Arc<crate::service::networks::Networks>, CapsuleError> {
        self.node.networks.get().cloned().ok_or_else(|| {
            CapsuleError::BadRequest("bridge networks are not available in this agent".into())
        })
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
        let payloads = self
            .state(move |s| -> Result<Vec<Payload>, DecideError> {
                let mut out = Vec::new();
                for c in cmds {
                    out.extend(decide(s, c)?);
                }
                Ok(out)
            })
            .await??;
        self.append(payloads).await
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
            .node
            .ensure_image(reference)
            .await
            .map_err(|e| img_err(&e))?;
        let store = self.node.image_store().map_err(|e| img_err(&e))?;
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

    // --- create ------------------------------------------------------------------------------

    /// Creates and starts a capsule. On any error nothing is left: no event, no directory,
    /// no cgroup, no process.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<CapsuleView, CapsuleError> {
        let bad = CapsuleError::BadRequest;
        let policy: RestartPolicy = req
            .restart
            .as_deref()
            .unwrap_or("no")
            .parse()
            .map_err(bad)?;
        if req.auto_remove && policy != RestartPolicy::No {
            return Err(bad("conflicting options: --restart and --rm".to_owned()));
        }
        let network = req
            .network
            .clone()
            .unwrap_or_else(|| self.node.options().default_network.clone());
        let (net_choice, port_specs) =
            crate::service::networks::plan(&network, &req.ports).map_err(bad)?;
        let rootless = !nix::unistd::geteuid().is_root();
        if rootless
            && matches!(
                net_choice,
                crate::service::networks::NetworkChoice::Bridge(_)
            )
        {
            return Err(bad(ROOTLESS_BRIDGE.to_owned()));
        }
        if let Some(name) = &req.name {
            if !valid_name(name) {
                return Err(bad(format!(
                    "invalid name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*"
                )));
            }
        }
        for e in &req.env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(bad(format!(
                    "invalid environment entry {e:?}: expected KEY=VALUE"
                )));
            }
        }
        if req.memory_bytes.is_some_and(|m| m < 6 << 20) {
            return Err(bad("minimum memory limit allowed is 6MB".into()));
        }
        if req.cpu_millis == Some(0) || req.pids_limit == Some(0) {
            return Err(bad("cpu and pids limits must be positive".into()));
        }
        if let Some(h) = &req.hostname {
            if h.is_empty() || h.len() > 64 || h.contains(['\0', '/']) {
                return Err(bad(format!("invalid hostname {h:?}")));
            }
        }
        if let Some(w) = &req.workdir {
            if !w.starts_with('/') {
                return Err(bad(format!("the working directory {w:?} is not absolute")));
            }
        }
        let (volume_specs, tmpfs_specs) = parse_mount_specs(&req.volumes, &req.tmpfs)?;

        let t0 = std::time::Instant::now();
        let image = self.ensure_image(&req.image).await?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "create: image ready");
        let argv = resolve_command(
            &image.entrypoint,
            &image.cmd,
            req.entrypoint.as_deref(),
            &req.command,
        );
        if argv.first().is_none_or(String::is_empty) {
            return Err(bad("no command specified".into()));
        }
        let env = merge_env(&image.env, &req.env);
        let workdir = req
            .workdir
            .clone()
            .or_else(|| image.workdir.clone())
            .unwrap_or_else(|| "/".to_owned());
        if !workdir.starts_with('/') {
            return Err(bad(format!(
                "the working directory {workdir:?} is not absolute"
            )));
        }
        let user_spec = req.user.clone().or_else(|| image.user.clone());
        let top_first: Vec<PathBuf> = image.lower.iter().rev().cloned().collect();
        let (user, extra_gids) =
            resolve_user(user_spec.as_deref().unwrap_or(""), &top_first).map_err(bad)?;

        // Id and name, reserved against the state and other creates in flight.
        let id = random_hex()?;
        let wanted = req.name.clone();
        let id_for_name = id.clone();
        let name = {
            let _ops = self.ops.lock().await;
            let pending: BTreeSet<String> = plock(&self.pending_names).clone();
            let name = self
                .state(move |s| -> Result<String, CapsuleError> {
                    let free = |n: &str| s.capsule_by_name(n).is_none() && !pending.contains(n);
                    match wanted {
                        Some(n) => {
                            if let Some(c) = s.capsule_by_name(&n) {
                                return Err(CapsuleError::Conflict(format!(
                                    "the name {n} is already in use by capsule {}",
                                    short(&c.id)
                                )));
                            }
                            if pending.contains(&n) {
                                return Err(CapsuleError::Conflict(format!(
                                    "the name {n} is being used by a capsule that is starting"
                                )));
                            }
                            Ok(n)
                        }
                        None => Ok((0..1000)
                            .map(|a| name_from(&id_for_name, a))
                            .find(|n| free(n))
                            .unwrap_or_else(|| id_for_name.clone())),
                    }
                })
                .await??;
            plock(&self.pending_names).insert(name.clone());
            name
        };
        let _reservation = NameReservation {
            caps: self,
            name: name.clone(),
        };

        let mut labels = std::collections::BTreeMap::new();
        if req.auto_remove {
            labels.insert(LABEL_AUTO_REMOVE.to_owned(), "true".to_owned());
        }
        if req.tty {
            labels.insert(LABEL_TTY.to_owned(), "true".to_owned());
        }
        if req.stdin {
            labels.insert(LABEL_STDIN.to_owned(), "true".to_owned());
        }
        let limits_ignored = rootless
            .then(|| {
                rootless_limits_warning(
                    req.memory_bytes.is_some(),
                    req.cpu_millis.is_some(),
                    req.pids_limit.is_some(),
                )
            })
            .flatten();
        if let Some(w) = limits_ignored {
            tracing::warn!("{w}");
            labels.insert(LABEL_WARNINGS.to_owned(), w);
        }
        let event_spec = EventSpec {
            image: image.reference.clone(),
            image_digest: image.digest.clone(),
            command: argv.clone(),
            env: env.clone(),
            workdir: Some(workdir.clone()),
            user: user_spec.clone(),
            hostname: req.hostname.clone(),
            network: network.clone(),
            memory_bytes: req.memory_bytes,
            cpu_millis: req.cpu_millis,
            pids_limit: req.pids_limit,
            restart: policy.to_string(),
            ports: port_specs.iter().map(ToString::to_string).collect(),
            // Set once the mounts are resolved (anonymous volumes get their names).
            mounts: Vec::new(),
            labels,
        };
        let cfg = SupervisorConfig {
            id: id.clone(),
            lower: image.lower.clone(),
            args: argv,
            env,
            workdir,
            uid: user.uid,
            gid: user.gid,
            additional_gids: extra_gids,
            hostname: req.hostname.clone(),
            network,
            memory_bytes: req.memory_bytes,
            cpu_millis: req.cpu_millis,
            pids_limit: req.pids_limit,
            tty: req.tty,
            stdin: req.stdin,
            attach_wait: req.attach,
            log_max_bytes: 10 << 20,
            log_keep: 3,
            netns: None,
            mounts: Vec::new(),
        };
        let mut cfg = cfg;
        let (mounts, recorded) = self.resolve_mounts(&volume_specs, &tmpfs_specs).await?;
        cfg.mounts = mounts;
        let mut event_spec = event_spec;
        event_spec.mounts = recorded;
        let dir = self.dir_of(&id);
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let mut guard = DirGuard {
            path: Some(dir.clone()),
        };
        // The writable layer: `dir/layer/{upper,work}`, one btrfs subvolume when the root is
        // on btrfs (snapshots); the supervisor mounts the overlay from it.
        let layers = self.storage.layers();
        let (idc, lower) = (id.clone(), cfg.lower.clone());
        self.blocking(move || layers.create(&idc, lower))
            .await?
            .map_err(|e| CapsuleError::Task(e.to_string()))?;
        // Bridge networks: address (an event), namespace, veth, ports; undone on failure.
        let prepared = match &net_choice {
            crate::service::networks::NetworkChoice::Bridge(net) => {
                let nets = self.networks()?;
                let p = nets
                    .prepare(&id, net, port_specs.clone())
                    .await
                    .map_err(|e| net_err(&e))?;
                Some((nets, p))
            }
            _ => None,
        };
        let started = async {
            if let Some((_, p)) = &prepared {
                let host = req.hostname.clone().unwrap_or_else(|| short(&id));
                let files = crate::service::networks::write_etc_files(
                    &dir,
                    &host,
                    &name,
                    Some(p.attachment.ip),
                )
                .map_err(io_err("write /etc files in", &dir))?;
                cfg.netns = Some(p.join_path());
                for (source, target) in files {
                    cfg.mounts.push(crate::shim::mounts::MountConfig::Bind {
                        source,
                        target: target.to_owned(),
                        readonly: false,
                    });
                }
            }
            cfg.store(&dir)
                .map_err(|e| CapsuleError::Task(e.to_string()))?;
            tracing::debug!(
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "create: directory ready"
            );
            self.start_supervisor(&id).await
        }
        .await;
        let (pid, watch) = match started {
            Ok(r) => r,
            Err(e) => {
                if let Some((nets, p)) = prepared {
                    nets.abandon(&id, p).await;
                }
                return Err(e);
            }
        };
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            pid,
            "create: capsule started"
        );
        let appended = {
            let _ops = self.ops.lock().await;
            let create = Command::CreateCapsule {
                id: id.clone(),
                name: name.clone(),
                spec: event_spec,
            };
            let started = Payload::Capsule(CapsuleEvent::Started {
                id: id.clone(),
                pid: pid as u32,
            });
            match self.state(move |s| decide(s, create)).await {
                // The start of a capsule created in the same batch: decide cannot see it yet.
                Ok(Ok(mut payloads)) => {
                    payloads.push(started);
                    self.append(payloads).await
                }
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = appended {
            // Not recorded: the capsule must not outlive the failed create.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            if let Watch::Child(mut child, _) = watch {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            if let Ok(h) = Hierarchy::detect() {
                let _ = h.open(&id).remove();
            }
            if let Some((nets, p)) = prepared {
                nets.abandon(&id, p).await;
            }
            return Err(e);
        }
        drop(prepared);
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "create: recorded");
        guard.path = None;
        drop(_reservation);
        self.spawn_watch(id.clone(), watch);
        self.view(&id).await
    }

    /// Resolves `-v` and `--tmpfs` specs to supervisor mounts: creates missing named volumes
    /// (recorded as `volume.created` events when the state does not know them yet). Also gives
    /// the specs to record in `capsule.created`: an anonymous volume as `NAME:/dst`, so its use
    /// is seen by `volume rm` and `prune`.
    async fn resolve_mounts(
        &self,
        volumes: &[VolumeSpec],
        tmpfs: &[TmpfsSpec],
    ) -> Result<(Vec<crate::shim::mounts::MountConfig>, Vec<String>), CapsuleError> {
        use crate::shim::mounts::MountConfig;
        if volumes.is_empty() && tmpfs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let storage = self.storage.clone();
        let (v, t) = (volumes.to_vec(), tmpfs.to_vec());
        let resolved = self
            .blocking(move || storage.resolve_mounts(&v, &t, &Default::default()))
            .await?
            .map_err(|e| CapsuleError::BadRequest(e.to_string()))?;
        // Every named volume the capsule uses must be in the state (created here or earlier
        // on disk without an event).
        let names: Vec<String> = volumes
            .iter()
            .filter_map(|v| match &v.source {
                VolumeSource::Named(n) => Some(n.clone()),
                _ => None,
            })
            .chain(resolved.created.iter().map(|c| c.name.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !names.is_empty() {
            let store = self.storage.volumes();
            let _ops = self.ops.lock().await;
            let payloads = self
                .state(move |s| -> Result<Vec<Payload>, DecideError> {
                    let mut out = Vec::new();
                    for n in names {
                        if s.volumes.contains_key(&n) {
                            continue;
                        }
                        let (driver, labels) = match store.get(&n) {
                            Ok(v) => (v.driver, v.labels),
                            Err(_) => (
                                bolt_capsule::storage::volume::DRIVER.to_owned(),
                                Default::default(),
                            ),
                        };
                        out.extend(decide(
                            s,
                            Command::CreateVolume {
                                name: n,
                                driver,
                                labels,
                            },
                        )?);
                    }
                    Ok(out)
                })
                .await??;
            self.append(payloads).await?;
        }
        let mut out = Vec::with_capacity(resolved.mounts.len());
        let mut recorded = Vec::with_capacity(resolved.mounts.len());
        // The runtime mounts come in the order of the specs: volumes, then tmpfs.
        for (spec, mount) in volumes.iter().zip(resolved.mounts.iter()) {
            if let bolt_capsule::runtime::Mount::Bind { source, .. } = mount {
                let anonymous = matches!(spec.source, VolumeSource::Anonymous);
                match resolved.created.iter().find(|c| &c.mountpoint == source) {
                    Some(vol) if anonymous => recorded.push(
                        VolumeSpec {
                            source: VolumeSource::Named(vol.name.clone()),
                            ..spec.clone()
                        }
                        .to_string(),
                    ),
                    _ => recorded.push(spec.to_string()),
                }
                out.push(MountConfig::Bind {
                    source: source.clone(),
                    target: spec.target.clone(),
                    readonly: spec.readonly,
                });
            }
        }
        for t in tmpfs {
            out.push(MountConfig::Tmpfs {
                spec: t.to_string(),
            });
            recorded.push(t.to_string());
        }
        Ok((out, recorded))
    }

    /// Spawns `bolt supervise DIR` and waits for its first report. On a start failure the
    /// supervisor has exited and the error carries docker's exit code.
    async fn start_supervisor(&self, id: &str) -> Result<(i32, Watch), CapsuleError> {
        let dir = self.dir_of(id);
        let sup_log = dir.join(SUPERVISOR_LOG);
        let stderr = std::fs::File::create(&sup_log).map_err(io_err("create", &sup_log))?;
        // The agent's own binary; after an upgrade replaced it on disk, the running one.
        let bin = if self.bin.exists() {
            self.bin.as_path()
        } else {
            Path::new("/proc/self/exe")
        };
        let mut child = tokio::process::Command::new(bin)
            .arg("supervise")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io_err("start the supervisor", bin))?;
        let sup_err = |message: String| CapsuleError::Supervisor {
            id: short(id),
            message,
        };
        let Some(stdout) = child.stdout.take() else {
            return Err(sup_err("no report pipe".into()));
        };
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(START_PATIENCE, reader.read_line(&mut line)).await;
        let report = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Report>(line.trim())
                .map_err(|e| sup_err(format!("unreadable report {line:?}: {e}"))),
            Ok(Ok(_)) => {
                let _ = child.wait().await;
                let log = std::fs::read_to_string(&sup_log).unwrap_or_default();
                Err(sup_err(format!(
                    "exited before it reported: {}",
                    one_line(log.trim())
                )))
            }
            Ok(Err(e)) => Err(sup_err(format!("read its report: {e}"))),
            Err(_) => {
                let _ = child.start_kill();
                Err(sup_err(format!("no report within {START_PATIENCE:?}")))
            }
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                let _ = child.wait().await;
                return Err(e);
            }
        };
        match report {
            Report::Started { pid, .. } => Ok((pid, Watch::Child(child, reader))),
            Report::Failed { error, exit_code } => {
                let _ = child.wait().await;
                Err(CapsuleError::Start {
                    error: one_line(&error),
                    exit_code,
                })
            }
            Report::Exited { .. } => Err(sup_err("reported an exit before a start".into())),
        }
    }

    // --- watching ------------------------------------------------------------------------------

    fn spawn_watch(self: &Arc<Self>, id: String, watch: Watch) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.watch(id, watch).await;
        });
    }

    async fn watch(self: Arc<Self>, id: String, watch: Watch) {
        match watch {
            Watch::Child(mut child, mut reader) => {
                // Reports until the pipe closes: the supervisor wrote exit.json, or died.
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            tracing::debug!(capsule = %short(&id), report = line.trim(), "supervisor report")
                        }
                    }
                }
                let auto_remove = self
                    .state({
                        let id = id.clone();
                        move |s| {
                            s.capsules
                                .get(&id)
                                .is_some_and(|c| label_on(&c.spec, LABEL_AUTO_REMOVE))
                        }
                    })
                    .await
                    .unwrap_or(false);
                if auto_remove {
                    // The supervisor may still hand the output to a foreground `bolt run`;
                    // the directory goes once it is done.
                    let _ = child.wait().await;
                    tracing::debug!(capsule = %short(&id), "supervisor exited");
                    self.on_supervisor_done(&id).await;
                } else {
                    self.on_supervisor_done(&id).await;
                    let _ = child.wait().await;
                }
            }
            Watch::Pid(pid) => {
                wait_pid_gone(pid).await;
                self.on_supervisor_done(&id).await;
            }
        }
    }

    /// The supervisor of `id` reported the end or is gone: record how the capsule ended, then
    /// remove it (`--rm`) or apply its restart policy.
    async fn on_supervisor_done(self: &Arc<Self>, id: &str) {
        let dir = self.dir_of(id);
        let adopted = {
            let d = dir.clone();
            self.blocking(move || adopt(&d)).await
        };
        let exit = match adopted {
            Ok(Ok(Adopted::Exited(record))) => exit_info(&record),
            Ok(Ok(Adopted::Running { record, .. })) => {
                // The supervisor died and left its capsule without stdio or a reaper: end it.
                kill_orphan(id, &record);
                ExitInfo {
                    code: None,
                    signal: Some(Signal::SIGKILL as i32),
                    oom: false,
                }
            }
            Ok(Ok(Adopted::Lost(_) | Adopted::NotStarted)) | Ok(Err(_)) | Err(_) => ExitInfo {
                code: None,
                signal: None,
                oom: false,
            },
        };
        if let Err(e) = self.record_exit(id, exit).await {
            tracing::warn!(capsule = %short(id), "record the exit: {e}");
        }
    }

    /// Appends `capsule.exited` (and for `--rm` the removal), then schedules a restart when
    /// the policy says so.
    async fn record_exit(self: &Arc<Self>, id: &str, exit: ExitInfo) -> Result<(), CapsuleError> {
        let (auto_remove, restart) = {
            let _ops = self.ops.lock().await;
            let idc = id.to_owned();
            let info = self.state(move |s| s.capsules.get(&idc).cloned()).await?;
            let Some(info) = info else {
                return Ok(());
            };
            if info.status != CapsuleStatus::Running {
                return Ok(());
            }
            let auto_remove = label_on(&info.spec, LABEL_AUTO_REMOVE);
            let mut cmds = vec![Command::RecordExit {
                id: id.to_owned(),
                code: exit.code,
                signal: exit.signal,
                oom: exit.oom,
            }];
            if auto_remove {
                cmds.push(Command::RemoveCapsule {
                    id: id.to_owned(),
                    force: true,
                });
            }
            self.decide_append(cmds).await?;
            let policy: RestartPolicy = info.spec.restart.parse().unwrap_or_default();
            let restart =
                !auto_remove && should_restart(policy, &exit, info.restarts, info.stop_requested);
            let ran_for = info
                .started
                .map(|h| Duration::from_millis(now_ms().saturating_sub(h.physical_ms())));
            (
                auto_remove,
                restart.then(|| restart_delay(info.restarts, ran_for)),
            )
        };
        tracing::debug!(capsule = %short(id), "exit recorded");
        if auto_remove {
            self.remove_dir(id).await;
        } else if let Some(delay) = restart {
            let me = Arc::clone(self);
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(e) = me.restart(&id, false).await {
                    tracing::warn!(capsule = %short(&id), "restart: {e}");
                }
            });
        }
        Ok(())
    }

    /// Starts an exited capsule again in its directory (same upper layer), appending
    /// `capsule.started`. `override_stop`: start even after a person's stop (`bolt start`, and
    /// `always` at agent start); a restart its policy scheduled does not.
    async fn restart(self: &Arc<Self>, id: &str, override_stop: bool) -> Result<(), CapsuleError> {
        let _ops = self.ops.lock().await;
        let idc = id.to_owned();
        let Some(info) = self.state(move |s| s.capsules.get(&idc).cloned()).await? else {
            return Ok(());
        };
        if info.status != CapsuleStatus::Exited {
            return Ok(());
        }
        // A person's stop holds until a start that overrides it (`bolt start`, or `always` at
        // agent start); the start's event clears it.
        if info.stop_requested && !override_stop {
            return Ok(());
        }
        let dir = self.dir_of(id);
        for f in [files::PID, files::EXIT, crate::shim::ATTACH_SOCK] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let mut cfg =
            SupervisorConfig::load(&dir).map_err(|e| CapsuleError::Task(e.to_string()))?;
        let prepared = match crate::service::networks::plan(&info.spec.network, &info.spec.ports) {
            Ok((crate::service::networks::NetworkChoice::Bridge(net), ports)) => {
                let nets = self.networks()?;
                let p = nets
                    .prepare(id, &net, ports)
                    .await
                    .map_err(|e| net_err(&e))?;
                cfg.netns = Some(p.join_path());
                Some(p)
            }
            _ => None,
        };
        if cfg.attach_wait || prepared.is_some() {
            cfg.attach_wait = false;
            cfg.store(&dir)
                .map_err(|e| CapsuleError::Task(e.to_string()))?;
        }
        let started = self.start_supervisor(id).await;
        drop(prepared);
        let (pid, watch) = match started {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(capsule = %short(id), "restart failed: {e}");
                return Err(e);
            }
        };
        let started = decide_one(
            &self.node,
            Command::StartCapsule {
                id: id.to_owned(),
                pid: pid as u32,
            },
        )
        .await;
        match started {
            Ok(()) => {
                self.spawn_watch(id.to_owned(), watch);
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                Err(e)
            }
        }
    }

    async fn remove_dir(&self, id: &str) {
        // Its veth and published ports (its addresses went with the removal event).
        if let Ok(nets) = self.networks() {
            nets.detach(id).await;
        }
        let dir = self.dir_of(id);
        let idc = id.to_owned();
        let layers = self.storage.layers();
        let _ = self
            .blocking(move || {
                if let Ok(h) = Hierarchy::detect() {
                    let _ = h.open(&idc).remove();
                }
                // The layer (a subvolume on btrfs) and the capsule's snapshots.
                if let Err(e) = layers.remove(&idc) {
                    tracing::warn!("remove the layer of {idc}: {e}");
                }
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("remove {}: {e}", dir.display());
                    }
                }
            })
            .await;
    }

    // --- recovery ------------------------------------------------------------------------------

    /// At agent start: re-adopt the capsules the state says run here, record the exits that
    /// happened while no agent watched, apply restart policies, and clean up directories of
    /// capsules the state does not know (a crash between start and record).
    pub async fn recover(self: &Arc<Self>) -> Result<(), CapsuleError> {
        let me = self.node.node_id();
        let mine: Vec<CapsuleInfo> = self
            .state(move |s| {
                s.capsules
                    .values()
                    .filter(|c| c.node == me && c.status != CapsuleStatus::Removed)
                    .cloned()
                    .collect()
            })
            .await?;
        let known: BTreeSet<String> = mine.iter().map(|c| c.id.clone()).collect();

        // Directories nobody recorded: end what runs there and remove them.
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))?;
        for ent in entries.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            tracing::info!(capsule = %short(&name), "removing a capsule directory no event records");
            if let Ok(Adopted::Running { record, .. }) = adopt(&ent.path()) {
                kill_orphan(&name, &record);
            }
            self.remove_dir(&name).await;
        }

        for c in mine {
            let dir = self.dir_of(&c.id);
            match c.status {
                CapsuleStatus::Running => {
                    let d = dir.clone();
                    match self.blocking(move || adopt(&d)).await? {
                        Ok(Adopted::Running {
                            record,
                            supervisor_alive: true,
                        }) => {
                            tracing::info!(capsule = %short(&c.id), pid = record.pid, "re-adopted a running capsule");
                            self.spawn_watch(c.id.clone(), Watch::Pid(record.supervisor_pid));
                        }
                        _ => self.on_supervisor_done(&c.id).await,
                    }
                }
                CapsuleStatus::Exited => {
                    let policy: RestartPolicy = c.spec.restart.parse().unwrap_or_default();
                    if restart_at_agent_start(policy, c.stop_requested) {
                        if let Err(e) = self.restart(&c.id, true).await {
                            tracing::warn!(capsule = %short(&c.id), "restart at agent start: {e}");
                        }
                    }
                }
                CapsuleStatus::Created | CapsuleStatus::Removed => {}
            }
        }
        Ok(())
    }

    // --- queries -------------------------------------------------------------------------------

    /// The view of capsule `key` (id, name or id prefix).
    pub async fn view(&self, key: &str) -> Result<CapsuleView, CapsuleError> {
        let key = key.to_owned();
        self.state(move |s| find(s, &key).map(|c| CapsuleView::of(c).with_addresses(s)))
            .await?
    }

    /// Every capsule of the state (`all`) or the running ones, newest first.
    pub async fn list(&self, all: bool) -> Result<Vec<CapsuleView>, CapsuleError> {
        self.state(move |s| {
            let mut v: Vec<CapsuleView> = s
                .capsules
                .values()
                .filter(|c| c.status != CapsuleStatus::Removed)
                .filter(|c| all || c.status == CapsuleStatus::Running)
                .map(|c| CapsuleView::of(c).with_addresses(s))
                .collect();
            v.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
            v
        })
        .await
    }

    /// The capsule's log lines, optionally only those at or after `since_ms`, and at most the
    /// last `tail`.
    pub async fn logs(
        &self,
        key: &str,
        since_ms: Option<u64>,
        tail: Option<usize>,
    ) -> Result<(String, Vec<LogLine>), CapsuleError> {
        let id = self.view(key).await?.id;
        let dir = self.dir_of(&id);
        let lines = self
            .blocking(move || bolt_capsule::runtime::supervisor::read_logs(&dir))
            .await??;
        Ok((id, filter_logs(lines, since_ms, tail)))
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
        let deadline = tokio::time::Instant::now() + patience;
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
            match tokio::time::timeout_at(deadline, head.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The capsule's run generation now: `(id, restarts, running)`.
    pub async fn generation(&self, key: &str) -> Result<(String, u32, bool), CapsuleError> {
        let key = key.to_owned();
        self.state(move |s| {
            find(s, &key).map(|c| (c.id.clone(), c.restarts, c.status == CapsuleStatus::Running))
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

    // --- stop, kill, remove -------------------------------------------------------------------

    /// Sends `signal` to the capsule's first process, marking it as stopped by a person (so
    /// restart policies leave it alone). With SIGKILL, waits for the exit to be recorded.
    pub async fn kill(&self, key: &str, signal: Signal) -> Result<CapsuleView, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        if !running {
            return Err(CapsuleError::Conflict(format!(
                "capsule {} is not running",
                short(&id)
            )));
        }
        self.mark_stopped(&id).await?;
        let record = self.live_record(&id)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), signal)
            .map_err(|e| CapsuleError::Task(format!("signal capsule {}: {e}", short(&id))))?;
        if signal == Signal::SIGKILL {
            self.wait_recorded(&id, restarts, KILL_PATIENCE).await;
        }
        self.view(&id).await
    }

    /// docker's start: runs an exited capsule again in its directory (same writable layer,
    /// same spec), appending `capsule.started`. Clears a manual stop, so restart policies apply
    /// again. A running capsule is left as it is.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<CapsuleView, CapsuleError> {
        let (id, _, running) = self.generation(key).await?;
        if !running {
            self.restart(&id, true).await?;
        }
        self.view(&id).await
    }

    /// Records that a person stopped the capsule (`capsule.stop_requested`), before it is
    /// signalled: the exit that follows is then never restarted by its policy.
    async fn mark_stopped(&self, id: &str) -> Result<(), CapsuleError> {
        decide_one(&self.node, Command::RequestStop { id: id.to_owned() }).await
    }

    /// docker's stop: SIGTERM, then SIGKILL after `timeout` seconds. Stopping a capsule that
    /// does not run is not an error.
    pub async fn stop(&self, key: &str, timeout: u64) -> Result<CapsuleView, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        // Also for an exited capsule: a restart its policy has scheduled is called off.
        self.mark_stopped(&id).await?;
        if !running {
            return self.view(&id).await;
        }
        let record = match self.live_record(&id) {
            Ok(r) => r,
            Err(_) => return self.view(&id).await,
        };
        let pid = nix::unistd::Pid::from_raw(record.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        if self
            .wait_recorded(&id, restarts, Duration::from_secs(timeout))
            .await
            .is_none()
            && self.is_running(&id).await
        {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            self.wait_recorded(&id, restarts, KILL_PATIENCE).await;
        }
        self.view(&id).await
    }

    /// Removes a capsule: its events say `capsule.removed`, its directory and cgroup go. A
    /// running one only with `force` (killed first).
    pub async fn remove(&self, key: &str, force: bool) -> Result<String, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        if running {
            if !force {
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} is running: stop it first or use rm -f",
                    short(&id)
                )));
            }
            self.mark_stopped(&id).await?;
            if let Ok(record) = self.live_record(&id) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), Signal::SIGKILL);
            }
            if self
                .wait_recorded(&id, restarts, KILL_PATIENCE)
                .await
                .is_none()
                && self.is_running(&id).await
            {
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} did not stop",
                    short(&id)
                )));
            }
        }
        {
            let _ops = self.ops.lock().await;
            let idc = id.clone();
            let exists = self
                .state(move |s| {
                    s.capsules
                        .get(&idc)
                        .is_some_and(|c| c.status != CapsuleStatus::Removed)
                })
                .await?;
            if exists {
                self.decide_append(vec![Command::RemoveCapsule {
                    id: id.clone(),
                    force: false,
                }])
                .await?;
            }
        }
        self.remove_dir(&id).await;
        Ok(id)
    }

    // --- exec, top ------------------------------------------------------------------------------

    /// Starts a process in a running capsule (blocking: call from the blocking pool).
    pub fn exec_blocking(
        &self,
        id: &str,
        args: Vec<String>,
        env: Vec<String>,
        workdir: Option<String>,
        user: Option<String>,
        stdio: Stdio,
    ) -> Result<Process, CapsuleError> {
        let record = self.live_record(id)?;
        let dir = self.dir_of(id);
        let cfg = SupervisorConfig::load(&dir).map_err(|e| CapsuleError::Task(e.to_string()))?;
        let spec = cfg.runtime_spec(&dir);
        let user = match user {
            Some(u) => {
                let mut layers = vec![spec.rootfs.upper.clone()];
                layers.extend(cfg.lower.iter().rev().cloned());
                Some(
                    resolve_user(&u, &layers)
                        .map_err(CapsuleError::BadRequest)?
                        .0,
                )
            }
            None => None,
        };
        for e in &env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(CapsuleError::BadRequest(format!(
                    "invalid environment entry {e:?}: expected KEY=VALUE"
                )));
            }
        }
        let runtime = self
            .runtime
            .get_or_init(|| Runtime::for_this_user().map_err(|e| e.to_string()));
        let runtime = runtime
            .as_ref()
            .map_err(|e| CapsuleError::Task(e.clone()))?;
        let exec = ExecSpec {
            args,
            env,
            workdir,
            user,
        };
        runtime
            .exec(&spec, record.pid, &exec, stdio)
            .map_err(|e| CapsuleError::Start {
                error: one_line(&e.to_string()),
                exit_code: e.exit_code(),
            })
    }

    /// The processes of a running capsule, `ps -ef` style.
    pub async fn top(&self, key: &str) -> Result<TopView, CapsuleError> {
        let (id, _, running) = self.generation(key).await?;
        if !running {
            return Err(CapsuleError::Conflict(format!(
                "capsule {} is not running",
                short(&id)
            )));
        }
        let record = self.live_record(&id)?;
        self.blocking(move || {
            let pids = Hierarchy::detect()
                .ok()
                .and_then(|h| h.open(&id).pids().ok())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| vec![record.pid]);
            crate::api::capsules::top_view(&pids)
        })
        .await
    }
}

async fn decide_one(node: &Arc<Node>, cmd: Command) -> Result<(), CapsuleError> {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || -> Result<(), CapsuleError> {
        let payloads = node.with_live_state(|s| decide(s, cmd))??;
        node.append(payloads)?;
        Ok(())
    })
    .await
    .map_err(|e| CapsuleError::Task(e.to_string()))?
}

/// Kills a capsule whose supervisor is gone (its pid record checked alive by `adopt`), and its
/// cgroup.
fn kill_orphan(id: &str, record: &PidRecord) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), Signal::SIGKILL);
    if let Ok(h) = Hierarchy::detect() {
        let _ = h.open(id).remove();
    }
}

/// Waits until process `pid` is gone (pidfd when the kernel has it, else polling `/proc`).
async fn wait_pid_gone(pid: i32) {
    if let Some(fd) = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok())
    {
        if let Ok(afd) = async_fd(fd) {
            let _ = afd.readable().await;
            return;
        }
    }
    while Path::new(&format!("/proc/{pid}")).exists()
        && bolt_capsule::runtime::supervisor::proc_stat(pid).is_some_and(|(s, _)| s != 'Z')
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// Log lines at or after `since_ms`, the last `tail` of them.
pub fn filter_logs(
    lines: Vec<LogLine>,
    since_ms: Option<u64>,
    tail: Option<usize>,
) -> Vec<LogLine> {
    let mut v: Vec<LogLine> = lines
        .into_iter()
        .filter(|l| since_ms.is_none_or(|s| l.time_ms >= s))
        .collect();
    if let Some(t) = tail {
        let skip = v.len().saturating_sub(t);
        v.drain(..skip);
    }
    v
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The first line of a message (errors must stay one line).
pub fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            code: Some(code),
            signal: None,
            oom: false,
        }
    }

    #[test]
    fn rootless_limits_warn_once_naming_each_flag() {
        assert_eq!(rootless_limits_warning(false, false, false), None);
        assert_eq!(
            rootless_limits_warning(true, false, false).as_deref(),
            Some("rootless: no cgroup controllers delegated; --memory ignored")
        );
        assert_eq!(
            rootless_limits_warning(true, true, true).as_deref(),
            Some(
                "rootless: no cgroup controllers delegated; --memory, --cpus, --pids-limit ignored"
            )
        );
    }

    #[test]
    fn restart_policies_parse_and_print() {
        for s in [
            "no",
            "always",
            "unless-stopped",
            "on-failure",
            "on-failure:3",
        ] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        assert_eq!("".parse::<RestartPolicy>().unwrap(), RestartPolicy::No);
        for bad in ["sometimes", "on-failure:x", "on-failure:-1", "always:2"] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn on_failure_restarts_failures_up_to_its_count() {
        let p = RestartPolicy::OnFailure(Some(2));
        assert!(should_restart(p, &exit(1), 0, false));
        assert!(should_restart(p, &exit(1), 1, false));
        assert!(!should_restart(p, &exit(1), 2, false));
        assert!(
            !should_restart(p, &exit(0), 0, false),
            "success is not a failure"
        );
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
            oom: true,
        };
        assert!(should_restart(p, &killed, 0, false), "137 is a failure");
        assert!(should_restart(
            RestartPolicy::OnFailure(None),
            &exit(3),
            99,
            false
        ));
    }

    #[test]
    fn manual_stops_win_over_every_policy() {
        for p in [
            RestartPolicy::Always,
            RestartPolicy::UnlessStopped,
            RestartPolicy::OnFailure(None),
        ] {
            assert!(!should_restart(p, &exit(1), 0, true), "{p}");
        }
        assert!(should_restart(RestartPolicy::Always, &exit(0), 5, false));
        assert!(!should_restart(RestartPolicy::No, &exit(1), 0, false));
        assert!(restart_at_agent_start(RestartPolicy::Always, true));
        assert!(!restart_at_agent_start(RestartPolicy::UnlessStopped, true));
        assert!(restart_at_agent_start(RestartPolicy::UnlessStopped, false));
        assert!(!restart_at_agent_start(
            RestartPolicy::OnFailure(None),
            false
        ));
    }

    #[test]
    fn restart_delay_doubles_and_resets_after_a_long_run() {
        assert_eq!(restart_delay(0, None), Duration::from_millis(100));
        assert_eq!(restart_delay(3, None), Duration::from_millis(800));
        assert_eq!(restart_delay(50, None), Duration::from_millis(12_800));
        assert_eq!(
            restart_delay(5, Some(Duration::from_secs(30))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("100b").unwrap(), 100);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        for bad in ["12qq", "", "m", "-1m", "1x", "0", "abc"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("web"));
        assert!(valid_name("a.b-c_1"));
        for bad in ["", "-a", "_a", "a/b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let n = name_from(&"ab".repeat(32), 0);
        assert!(valid_name(&n) && n.contains('_'), "{n}");
        assert_ne!(name_from("abcd", 0), name_from("abcd", 1));
    }

    #[test]
    fn command_follows_entrypoint_and_cmd_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ep = s(&["/entry"]);
        let cmd = s(&["default"]);
        assert_eq!(
            resolve_command(&ep, &cmd, None, &[]),
            s(&["/entry", "default"])
        );
        assert_eq!(
            resolve_command(&ep, &cmd, None, &s(&["x"])),
            s(&["/entry", "x"])
        );
        assert_eq!(
            resolve_command(&ep, &cmd, Some(&s(&["/other"])), &[]),
            s(&["/other"])
        );
        assert_eq!(
            resolve_command(&[], &s(&["/bin/sh"]), None, &[]),
            s(&["/bin/sh"])
        );
        assert!(resolve_command(&[], &[], None, &[]).is_empty());
    }

    #[test]
    fn env_overrides_keep_the_image_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_env(&s(&["PATH=/bin", "A=1"]), &s(&["A=2", "B=3"])),
            s(&["PATH=/bin", "A=2", "B=3"])
        );
    }

    #[test]
    fn users_resolve_from_the_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let base = dir.path().join("base");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            base.join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
        )
        .unwrap();
        let layers = vec![top.clone(), base.clone()];
        let (u, extra) = resolve_user("app", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(extra, vec![50]);
        let (u, _) = resolve_user("nobody", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        let (u, _) = resolve_user("4242", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let (u, _) = resolve_user("1000:staff", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(resolve_user("ghost", &layers).is_err());
        assert!(resolve_user("app:nogroup", &layers).is_err());
        // A top layer that replaces /etc/passwd wins; a symlink is never followed.
        std::os::unix::fs::symlink("/etc/passwd", top.join("etc/passwd")).unwrap();
        assert!(resolve_user("app", &layers).is_err());
    }

    #[test]
    fn logs_filter_by_time_and_tail() {
        let lines: Vec<LogLine> = (0..10)
            .map(|i| LogLine {
                time_ms: i * 10,
                stream: "stdout".into(),
                line: i.to_string(),
            })
            .collect();
        let got = filter_logs(lines.clone(), Some(50), None);
        assert_eq!(got.first().unwrap().line, "5");
        let got = filter_logs(lines.clone(), None, Some(2));
        assert_eq!(
            got.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["8", "9"]
        );
        assert_eq!(filter_logs(lines, Some(1000), Some(3)).len(), 0);
    }
}
