//! `/v1/capsules...`: create+start, list, inspect, stop, kill, remove, logs (follow as a
//! chunked NDJSON stream), attach and exec (WebSockets carrying framed stdio), top. The JSON
//! shapes here are shared with the client side ([`crate::cli::capsules`]).
//!
//! WebSocket stdio: a binary message is one frame, its first byte the kind
//! ([`frame`](crate::shim::frame): 0 stdin, 1 stdout, 2 stderr, 4 stdin EOF, 5 resize)
//! and the rest the payload. The server ends with one text message, a [`StreamEnd`], and a
//! close frame.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bolt_capsule::runtime::supervisor::LogLine;
use bolt_capsule::runtime::{Stdio, StdioSlot};
use bolt_events::payload::CapsuleSpec as EventSpec;
use bolt_state::{CapsuleInfo, CapsuleStatus};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::Node;
use crate::service::capsules::{self, CapsuleError, Capsules};
use crate::shim::{frame, ATTACH_SOCK};

/// `GET` (list) and `POST` (create and start) capsules.
pub const PATH_CAPSULES: &str = "/v1/capsules";
/// `GET` (inspect) and `DELETE` (remove) one capsule, by id, name or id prefix.
pub const PATH_CAPSULE: &str = "/v1/capsules/{id}";
/// `POST`: stop (SIGTERM, then SIGKILL after the timeout).
pub const PATH_STOP: &str = "/v1/capsules/{id}/stop";
/// `POST`: start an exited capsule again (docker's `start`).
pub const PATH_START: &str = "/v1/capsules/{id}/start";
/// `POST`: send a signal.
pub const PATH_KILL: &str = "/v1/capsules/{id}/kill";
/// `GET`: log lines as NDJSON, optionally followed.
pub const PATH_LOGS: &str = "/v1/capsules/{id}/logs";
/// `GET` (WebSocket): the running capsule's stdio.
pub const PATH_ATTACH: &str = "/v1/capsules/{id}/attach";
/// `GET` (WebSocket): run a process in the capsule.
pub const PATH_EXEC: &str = "/v1/capsules/{id}/exec";
/// `GET`: the capsule's processes.
pub const PATH_TOP: &str = "/v1/capsules/{id}/top";

/// Every capsule route.
pub const ROUTES: [&str; 9] = [
    PATH_CAPSULES,
    PATH_CAPSULE,
    PATH_STOP,
    PATH_START,
    PATH_KILL,
    PATH_LOGS,
    PATH_ATTACH,
    PATH_EXEC,
    PATH_TOP,
];

/// How long an attach or exec stream waits for the agent to record an exit it was told of.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);
/// How long exec output may stay open after its process ended (a background child holding it).
const EXEC_DRAIN: Duration = Duration::from_secs(1);
/// How often a followed log looks for new lines.
const FOLLOW_TICK: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Wire shapes
// ---------------------------------------------------------------------------------------------

/// `POST /v1/capsules`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Image reference; pulled when not in the store.
    pub image: String,
    /// Arguments replacing the image's cmd (empty: the image's).
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's entrypoint (and drops its cmd).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Name (default: a generated `adjective_noun`).
    #[serde(default)]
    pub name: Option<String>,
    /// `KEY=VALUE` entries on top of the image's.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default: the image's, else `/`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// `user[:group]`, names or ids (default: the image's, else root).
    #[serde(default)]
    pub user: Option<String>,
    /// Hostname (default: the first 12 characters of the id).
    #[serde(default)]
    pub hostname: Option<String>,
    /// `none` (default) or `host`.
    #[serde(default)]
    pub network: Option<String>,
    /// Memory limit in bytes (at least 6 MiB).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicpus.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Process limit.
    #[serde(default)]
    pub pids_limit: Option<u32>,
    /// `no`, `on-failure[:N]`, `always`, `unless-stopped`.
    #[serde(default)]
    pub restart: Option<String>,
    /// Remove the capsule when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Give it a pty.
    #[serde(default)]
    pub tty: bool,
    /// Keep its stdin open for attach clients.
    #[serde(default)]
    pub stdin: bool,
    /// A client attaches right after: keep the output from the start for it.
    #[serde(default)]
    pub attach: bool,
    /// Published ports, `[IP:]HOST:CONTAINER[/tcp|udp]` (bridge networks).
    #[serde(default)]
    pub ports: Vec<String>,
    /// `-v` specs: `NAME:/dst[:ro]`, `/host:/dst[:ro]`, `/dst`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `--tmpfs` specs: `/dst[:options]`.
    #[serde(default)]
    pub tmpfs: Vec<String>,
}

/// How a capsule's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitView {
    /// Exit code, when it exited on its own.
    pub code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// Whether the OOM killer ended it.
    pub oom: bool,
    /// The shell-style code: the code, or 128 + signal.
    pub exit_code: i32,
}

/// A capsule as the API shows it: a projection of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleView {
    /// Id (64 hex digits).
    pub id: String,
    /// Name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Image manifest digest.
    pub image_digest: String,
    /// The command it runs (entrypoint and arguments).
    pub command: Vec<String>,
    /// `created`, `running`, `exited` or `removed`.
    pub status: CapsuleStatus,
    /// Host pid of its first process while it runs.
    pub pid: Option<u32>,
    /// How its last run ended.
    pub exit: Option<ExitView>,
    /// Restarts so far.
    pub restarts: u32,
    /// Restart policy.
    pub restart: String,
    /// Creation time, ms since the epoch (from the event's HLC).
    pub created: u64,
    /// Latest start, ms since the epoch.
    pub started: Option<u64>,
    /// Latest exit, ms since the epoch.
    pub finished: Option<u64>,
    /// The node it runs on.
    pub node: String,
    /// The spec it was created with.
    pub spec: EventSpec,
    /// Its addresses: network name -> IPv4 address (bridge networks).
    #[serde(default)]
    pub addresses: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
}

impl CapsuleView {
    /// The view of a capsule of the state.
    pub fn of(c: &CapsuleInfo) -> CapsuleView {
        CapsuleView {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.spec.image.clone(),
            image_digest: c.spec.image_digest.clone(),
            command: c.spec.command.clone(),
            status: c.status,
            pid: c.pid,
            exit: c.exit.map(|e| ExitView {
                code: e.code,
                signal: e.signal,
                oom: e.oom,
                exit_code: capsules::exit_code_of(&e),
            }),
            restarts: c.restarts,
            restart: c.spec.restart.clone(),
            created: c.created.physical_ms(),
            started: c.started.map(|h| h.physical_ms()),
            finished: c.finished.map(|h| h.physical_ms()),
            node: c.node.to_string(),
            spec: (*c.spec).clone(),
            addresses: std::collections::BTreeMap::new(),
        }
    }

    /// The view with the capsule's addresses from the state.
    pub fn with_addresses(mut self, s: &bolt_state::State) -> CapsuleView {
        self.addresses = s.addresses_of(&self.id).into_iter().collect();
        self
    }
}

/// `GET /v1/capsules/{id}/top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopView {
    /// Column titles.
    pub titles: Vec<String>,
    /// One row per process.
    pub processes: Vec<Vec<String>>,
}

/// The first message of an exec WebSocket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// Extra `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default: the capsule's).
    #[serde(default)]
    pub workdir: Option<String>,
    /// `user[:group]` (default: the capsule's).
    #[serde(default)]
    pub user: Option<String>,
    /// Give the process a pty.
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin.
    #[serde(default)]
    pub stdin: bool,
}

/// The last text message of an attach or exec stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// The process's shell-style exit code (125-127 when it could not start).
    pub exit_code: i32,
    /// Whether the OOM killer ended it.
    #[serde(default)]
    pub oom: bool,
    /// Why the process could not be started or followed, when it could not.
    #[serde(default)]
    pub error: Option<String>,
}

/// Error body of the capsule routes: `{"error": "...", "exit_code": 127}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleErrorBody {
    /// One line.
    pub error: String,
    /// docker's exit code for a failed start (125, 126, 127).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// `?all=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Also the capsules that do not run.
    pub all: Option<bool>,
}

/// `?timeout=` (seconds).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    pub timeout: Option<u64>,
}

/// `?signal=` (a name such as `SIGTERM`/`TERM` or a number).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KillQuery {
    /// The signal (default SIGKILL).
    pub signal: Option<String>,
}

/// `?force=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemoveQuery {
    /// Kill a running capsule first.
    pub force: Option<bool>,
}

/// `?follow=&since=&tail=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogsQuery {
    /// Keep streaming new lines until the capsule stops.
    pub follow: Option<bool>,
    /// Only lines at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// Only the last N lines.
    pub tail: Option<usize>,
}

/// `?stdin=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AttachQuery {
    /// Forward stdin (the capsule must have been created with it open).
    pub stdin: Option<bool>,
}

/// Parses a signal: `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal {s:?}"));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("invalid signal {s:?}"))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error of a capsule route.
#[derive(Debug)]
pub struct CapsuleApiError {
    status: StatusCode,
    body: CapsuleErrorBody,
}

impl CapsuleApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: CapsuleErrorBody {
                error: error.into(),
                exit_code: None,
            },
        }
    }
}

impl From<CapsuleError> for CapsuleApiError {
    fn from(e: CapsuleError) -> Self {
        let status = match &e {
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::Ambiguous(_)
            | CapsuleError::BadRequest(_)
            | CapsuleError::Start { .. } => StatusCode::BAD_REQUEST,
            CapsuleError::Decide(_) => StatusCode::BAD_REQUEST,
            CapsuleError::Image { .. } => StatusCode::NOT_FOUND,
            CapsuleError::Conflict(_) | CapsuleError::NotRunning(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let exit_code = match &e {
            CapsuleError::Start { exit_code, .. } => Some(*exit_code),
            _ => None,
        };
        Self {
            status,
            body: CapsuleErrorBody {
                error: capsules::one_line(&e.to_string()),
                exit_code,
            },
        }
    }
}

impl From<QueryRejection> for CapsuleApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<JsonRejection> for CapsuleApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, capsules::one_line(&e.body_text()))
    }
}

impl From<WebSocketUpgradeRejection> for CapsuleApiError {
    fn from(e: WebSocketUpgradeRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

impl IntoResponse for CapsuleApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type Res<T> = Result<T, CapsuleApiError>;

fn manager(node: &Node) -> Res<Arc<Capsules>> {
    node.capsules.get().cloned().ok_or_else(|| {
        CapsuleApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capsules are not available in this agent",
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// The capsule routes, merged into the API router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(PATH_CAPSULES, get(list).post(create))
        .route(PATH_CAPSULE, get(inspect).delete(remove))
        .route(PATH_STOP, post(stop))
        .route(PATH_START, post(start))
        .route(PATH_KILL, post(kill))
        .route(PATH_LOGS, get(logs))
        .route(PATH_ATTACH, get(attach))
        .route(PATH_EXEC, get(exec))
        .route(PATH_TOP, get(top))
}

async fn list(
    State(node): State<Arc<Node>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Res<Json<Vec<CapsuleView>>> {
    let Query(q) = q?;
    let caps = manager(&node)?;
    Ok(Json(caps.list(q.all.unwrap_or(false)).await?))
}

async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<CapsuleView>)> {
    let Json(req) = body?;
    let caps = manager(&node)?;
    Ok((StatusCode::CREATED, Json(caps.create(req).await?)))
}

async fn inspect(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Res<Json<CapsuleView>> {
    Ok(Json(manager(&node)?.view(&id).await?))
}

async fn remove(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Res<Json<serde_json::Value>> {
    let Query(q) = q?;
    let removed = manager(&node)?
        .remove(&id, q.force.unwrap_or(false))
        .await?;
    Ok(Json(json!({ "removed": removed })))
}

async fn stop(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    q: Result<Query<StopQuery>, QueryRejection>,
) -> Res<Json<CapsuleView>> {
    let Query(q) = q?;
    let timeout = q.timeout.unwrap_or(capsules::DEFAULT_STOP_TIMEOUT);
    Ok(Json(manager(&node)?.stop(&id, timeout).await?))
}

async fn start(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Res<Json<CapsuleView>> {
    Ok(Json(manager(&node)?.start(&id).await?))
}

async fn kill(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> Res<Json<CapsuleView>> {
    let Query(q) = q?;
    let signal = match q.signal.as_deref() {
        Some(s) => parse_signal(s).map_err(|e| CapsuleApiError::new(StatusCode::BAD_REQUEST, e))?,
        None => Signal::SIGKILL,
    };
    Ok(Json(manager(&node)?.kill(&id, signal).await?))
}

async fn top(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Res<Json<TopView>> {
    Ok(Json(manager(&node)?.top(&id).await?))
}

fn ndjson(line: &LogLine) -> Vec<u8> {
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    v
}

async fn logs(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Res<Response> {
    let Query(q) = q?;
    let caps = manager(&node)?;
    let content_type = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !q.follow.unwrap_or(false) {
        let (_, lines) = caps.logs(&key, q.since, q.tail).await?;
        let body: Vec<u8> = lines.iter().flat_map(ndjson).collect();
        return Ok((content_type, body).into_response());
    }
    // Open the current log first, so nothing written after the snapshot below is missed.
    let (id, _, _) = caps.generation(&key).await?;
    let dir = caps.dir_of(&id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let since = q.since;
    let tail = q.tail;
    tokio::spawn(async move {
        follow_logs(caps, id, dir, since, tail, tx).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    Ok((content_type, Body::from_stream(stream)).into_response())
}

/// Sends the log lines of `id` (filtered), then every new line until the capsule no longer
/// runs. Follows `log` by its open file across rotations.
async fn follow_logs(
    caps: Arc<Capsules>,
    id: String,
    dir: PathBuf,
    since: Option<u64>,
    tail: Option<usize>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    use bolt_capsule::runtime::supervisor::files;
    let log_path = dir.join(files::LOG);
    let mut current = tokio::fs::File::open(&log_path).await.ok();
    // Rotated files, oldest first, then what the open file holds now.
    let mut lines = Vec::new();
    for n in (1..=64).rev() {
        let p = dir.join(format!("{}.{n}", files::LOG));
        if let Ok(text) = tokio::fs::read_to_string(&p).await {
            lines.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<LogLine>(l).ok()),
            );
        }
    }
    let mut partial = Vec::new();
    if let Some(f) = current.as_mut() {
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf).await;
        take_lines(&mut partial, &buf, &mut lines);
    }
    for l in capsules::filter_logs(lines, since, tail) {
        if tx.send(ndjson(&l)).await.is_err() {
            return;
        }
    }
    loop {
        let running = caps.is_running(&id).await;
        // Read what was appended; switch to a new `log` after a rotation.
        loop {
            let mut buf = Vec::new();
            if let Some(f) = current.as_mut() {
                let _ = f.read_to_end(&mut buf).await;
            }
            let mut fresh = Vec::new();
            take_lines(&mut partial, &buf, &mut fresh);
            for l in fresh {
                if tx.send(ndjson(&l)).await.is_err() {
                    return;
                }
            }
            if !rotated(&log_path, current.as_ref()).await {
                break;
            }
            current = tokio::fs::File::open(&log_path).await.ok();
            partial.clear();
        }
        if !running || tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_TICK).await;
    }
}

/// Whether `path` now names another file than `open` (a rotation happened, or it appeared).
async fn rotated(path: &std::path::Path, open: Option<&tokio::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(now) = tokio::fs::metadata(path).await else {
        return false;
    };
    match open {
        None => true,
        Some(f) => match f.metadata().await {
            Ok(m) => m.ino() != now.ino() || m.dev() != now.dev(),
            Err(_) => true,
        },
    }
}

/// Splits complete JSON lines off `partial + bytes`.
fn take_lines(partial: &mut Vec<u8>, bytes: &[u8], out: &mut Vec<LogLine>) {
    partial.extend_from_slice(bytes);
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = partial.drain(..=pos).collect();
        if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
            out.push(l);
        }
    }
}

async fn send_end(socket: &mut WebSocket, end: &StreamEnd) {
    if let Ok(text) = serde_json::to_string(end) {
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn attach(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    q: Result<Query<AttachQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let Query(q) = q?;
    let ws = ws?;
    let caps = manager(&node)?;
    let (id, restarts, running) = caps.generation(&key).await?;
    // A supervisor that keeps output for its first client still serves after the exit.
    let stream = match connect_attach(&caps.dir_of(&id)).await {
        Ok(s) => s,
        Err(_) if !running => {
            return Err(CapsuleApiError::new(
                StatusCode::CONFLICT,
                format!("capsule {} is not running", capsules::short(&id)),
            ))
        }
        Err(e) => {
            return Err(CapsuleApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("attach to capsule {}: {e}", capsules::short(&id)),
            ))
        }
    };
    let stdin = q.stdin.unwrap_or(false);
    Ok(ws.on_upgrade(move |socket| bridge_attach(caps, id, restarts, stream, socket, stdin)))
}

/// Connects to a capsule's attach socket through its open directory (`/proc/self/fd/N/...`):
/// the full path may be longer than a socket address holds.
async fn connect_attach(dir: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let d = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCK}", d.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&path).await;
    drop(d);
    stream
}

/// Copies frames between the supervisor's attach socket and the client's WebSocket; at the end
/// waits for the agent to record the exit, then sends the [`StreamEnd`].
async fn bridge_attach(
    caps: Arc<Capsules>,
    id: String,
    restarts: u32,
    stream: tokio::net::UnixStream,
    mut socket: WebSocket,
    stdin: bool,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = frame::Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut supervisor_exit: Option<i32> = None;
    let mut detached = false;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break;
                }
                decoder.push(buf.get(..n).unwrap_or_default());
                let mut client_gone = false;
                while let Ok(Some((kind, payload))) = decoder.next_frame() {
                    if kind == frame::EXIT {
                        supervisor_exit = serde_json::from_slice::<
                            bolt_capsule::runtime::supervisor::ExitRecord,
                        >(&payload)
                        .ok()
                        .map(|r| r.exit_code);
                        continue;
                    }
                    let mut msg = Vec::with_capacity(payload.len() + 1);
                    msg.push(kind);
                    msg.extend_from_slice(&payload);
                    if socket.send(Message::Binary(msg.into())).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                if client_gone {
                    return;
                }
                if supervisor_exit.is_some() {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    detached = true;
                    break;
                }
                Some(Ok(Message::Binary(b))) => {
                    let Some((&kind, payload)) = b.split_first() else { continue };
                    let allowed = match kind {
                        frame::STDIN | frame::STDIN_EOF => stdin,
                        frame::RESIZE => true,
                        _ => false,
                    };
                    if allowed && wr.write_all(&frame::encode(kind, payload)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    if detached {
        return;
    }
    let recorded = caps.wait_recorded(&id, restarts, RECORD_PATIENCE).await;
    let end = match (recorded, supervisor_exit) {
        (Some(e), _) => StreamEnd {
            exit_code: capsules::exit_code_of(&e),
            oom: e.oom,
            error: None,
        },
        (None, Some(code)) => StreamEnd {
            exit_code: code,
            oom: false,
            error: None,
        },
        (None, None) => StreamEnd {
            exit_code: 125,
            oom: false,
            error: Some("the capsule's supervisor went away".into()),
        },
    };
    send_end(&mut socket, &end).await;
}

async fn exec(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let ws = ws?;
    let caps = manager(&node)?;
    let (id, _, running) = caps.generation(&key).await?;
    if !running {
        return Err(CapsuleApiError::new(
            StatusCode::CONFLICT,
            format!("capsule {} is not running", capsules::short(&id)),
        ));
    }
    Ok(ws.on_upgrade(move |socket| run_exec(caps, id, socket)))
}

/// Nonblocking, close-on-exec pipe.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

/// The exec process's stdio on our side: output readers (kind, fd) and stdin's writer.
struct ExecIo {
    outputs: Vec<(u8, AsyncFd<OwnedFd>)>,
    stdin: Option<AsyncFd<OwnedFd>>,
    pty: bool,
}

fn exec_stdio(req: &ExecRequest) -> std::io::Result<(Stdio, ExecIo)> {
    if req.tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let master = pty.master;
        let _ = nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let slave = pty.slave;
        let stdio = Stdio {
            stdin: StdioSlot::Fd(slave.try_clone()?),
            stdout: StdioSlot::Fd(slave.try_clone()?),
            stderr: StdioSlot::Fd(slave),
            terminal: true,
        };
        let writer = master.try_clone()?;
        set_nonblocking(&master);
        let io = ExecIo {
            outputs: vec![(frame::STDOUT, capsules::async_fd(master)?)],
            stdin: if req.stdin {
                Some(capsules::async_fd(writer)?)
            } else {
                None
            },
            pty: true,
        };
        return Ok((stdio, io));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_slot, stdin_w) = if req.stdin {
        let (r, w) = pipe()?;
        set_nonblocking(&w);
        (StdioSlot::Fd(r), Some(capsules::async_fd(w)?))
    } else {
        (StdioSlot::Null, None)
    };
    set_nonblocking(&out_r);
    set_nonblocking(&err_r);
    let stdio = Stdio {
        stdin: stdin_slot,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    Ok((
        stdio,
        ExecIo {
            outputs: vec![
                (frame::STDOUT, capsules::async_fd(out_r)?),
                (frame::STDERR, capsules::async_fd(err_r)?),
            ],
            stdin: stdin_w,
            pty: false,
        },
    ))
}

/// Reads from a nonblocking fd; EIO (a pty whose other side closed) reads as the end.
async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> usize {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return 0;
        };
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => return n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return 0,
            Err(_would_block) => {}
        }
    }
}

async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let Ok(mut guard) = fd.writable().await else {
            return false;
        };
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = data.get(n..).unwrap_or_default(),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return false,
            Err(_would_block) => {}
        }
    }
    true
}

async fn run_exec(caps: Arc<Capsules>, id: String, mut socket: WebSocket) {
    // The first message says what to run.
    let req = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecRequest>(t.as_str()) {
                Ok(r) => break r,
                Err(e) => {
                    let end = StreamEnd {
                        exit_code: 125,
                        oom: false,
                        error: Some(format!("bad exec request: {e}")),
                    };
                    return send_end(&mut socket, &end).await;
                }
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    };
    let fail = |error: String, exit_code: i32| StreamEnd {
        exit_code,
        oom: false,
        error: Some(error),
    };
    let (stdio, mut io) = match exec_stdio(&req) {
        Ok(v) => v,
        Err(e) => return send_end(&mut socket, &fail(format!("exec stdio: {e}"), 125)).await,
    };
    let spawned = {
        let caps = Arc::clone(&caps);
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            caps.exec_blocking(&id, req.cmd, req.env, req.workdir, req.user, stdio)
        })
        .await
    };
    let mut process = match spawned {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let code = e.exit_code();
            return send_end(&mut socket, &fail(capsules::one_line(&e.to_string()), code)).await;
        }
        Err(e) => return send_end(&mut socket, &fail(e.to_string(), 125)).await,
    };
    // A plain thread, not the blocking pool: a pending wait must not hold up the agent's
    // shutdown (the runtime waits for blocking tasks; it does not wait for threads).
    let (wait_tx, mut waiter) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = wait_tx.send(process.wait());
    });
    // One reader task per output, into one channel; it closes when every output ended.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    let pty = io.pty;
    let resize_fd = if pty {
        io.outputs
            .first()
            .and_then(|(_, fd)| fd.get_ref().try_clone().ok())
    } else {
        None
    };
    for (kind, fd) in std::mem::take(&mut io.outputs) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16384];
            loop {
                let n = read_fd(&fd, &mut buf).await;
                if n == 0
                    || tx
                        .send((kind, buf.get(..n).unwrap_or_default().to_vec()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut stdin = io.stdin.take();
    let mut status = None;
    let mut outputs_open = true;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    while outputs_open || status.is_none() {
        let deadline = drain_deadline;
        tokio::select! {
            chunk = rx.recv(), if outputs_open => match chunk {
                Some((kind, data)) => {
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(kind);
                    msg.extend_from_slice(&data);
                    let _ = socket.send(Message::Binary(msg.into())).await;
                }
                None => outputs_open = false,
            },
            s = &mut waiter, if status.is_none() => {
                status = Some(s);
                drain_deadline = Some(tokio::time::Instant::now() + EXEC_DRAIN);
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    // The client went away; the process runs on with stdin closed (its
                    // waiting thread reaps it).
                    drop(stdin);
                    return;
                }
                Some(Ok(Message::Binary(b))) => {
                    let Some((&kind, payload)) = b.split_first() else { continue };
                    match kind {
                        frame::STDIN => {
                            if let Some(w) = &stdin {
                                if !write_fd(w, payload).await {
                                    stdin = None;
                                }
                            }
                        }
                        frame::STDIN_EOF => {
                            if let (true, Some(w)) = (pty, &stdin) {
                                let _ = write_fd(w, &[4u8]).await;
                            }
                            stdin = None;
                        }
                        frame::RESIZE => {
                            if let (Some(fd), Some((rows, cols))) =
                                (&resize_fd, frame::parse_resize(payload))
                            {
                                let ws = rustix::termios::Winsize {
                                    ws_row: rows,
                                    ws_col: cols,
                                    ws_xpixel: 0,
                                    ws_ypixel: 0,
                                };
                                let _ = rustix::termios::tcsetwinsize(fd, ws);
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let end = match status {
        Some(Ok(Ok(s))) => StreamEnd {
            exit_code: s.exit_code(),
            oom: false,
            error: None,
        },
        Some(Ok(Err(e))) => fail(e.to_string(), 125),
        Some(Err(e)) => fail(e.to_string(), 125),
        None => fail("the process was lost".into(), 125),
    };
    send_end(&mut socket, &end).await;
}

/// `top`'s table for host pids: UID PID PPID STIME TIME CMD (pids as the host sees them).
pub fn top_view(pids: &[i32]) -> TopView {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let boot_s = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let mut rows = Vec::new();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields after the command: 0 state, 1 ppid, 11 utime, 12 stime, 19 starttime.
        let ppid = num(1);
        let cpu_s = (num(11) + num(12)) / tick;
        let start = boot_s + num(19) / tick;
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Uid:")
                        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
                })
            })
            .unwrap_or_else(|| "?".into());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| {
                let name = stat
                    .split_once('(')
                    .map(|(_, r)| r)
                    .and_then(|r| r.rsplit_once(')'))
                    .map_or("", |(n, _)| n);
                format!("[{name}]")
            });
        rows.push(vec![
            uid,
            pid.to_string(),
            ppid.to_string(),
            crate::cli::capsules::clock(start),
            format!(
                "{:02}:{:02}:{:02}",
                cpu_s / 3600,
                (cpu_s / 60) % 60,
                cpu_s % 60
            ),
            cmd,
        ]);
    }
    TopView {
        titles: ["UID", "PID", "PPID", "STIME", "TIME", "CMD"]
            .map(String::from)
            .to_vec(),
        processes: rows,
    }
}

/// The OpenAPI path items of the capsule routes (merged into the API document).
pub fn openapi_paths() -> serde_json::Map<String, serde_json::Value> {
    let err = |what: &str| {
        json!({"description": what,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CapsuleError"}}}})
    };
    let ok = |what: &str, schema: serde_json::Value| json!({"description": what, "content": {"application/json": {"schema": schema}}});
    let capsule = json!({"$ref": "#/components/schemas/Capsule"});
    let id = json!({"name": "id", "in": "path", "required": true,
                    "description": "capsule id, name or unique id prefix",
                    "schema": {"type": "string"}});
    let q = |name: &str, ty: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "description": what,
               "schema": {"type": ty}})
    };
    let ws = |summary: &str, params: serde_json::Value| {
        json!({"get": {"summary": summary, "parameters": params,
                       "responses": {"101": {"description": "switching to the WebSocket protocol"},
                                     "400": err("not a WebSocket upgrade"),
                                     "404": err("no such capsule"),
                                     "409": err("the capsule is not running")}}})
    };
    let mut m = serde_json::Map::new();
    m.insert(PATH_CAPSULES.into(), json!({
        "get": {"operationId": "listCapsules", "summary": "Capsules of the state (running ones unless all=true), newest first.",
                "parameters": [q("all", "boolean", "also capsules that do not run")],
                "responses": {"200": ok("capsules", json!({"type": "array", "items": capsule}))}},
        "post": {"operationId": "createCapsule",
                 "summary": "Create and start a capsule (pulls a missing image). Nothing is left when it fails.",
                 "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateCapsule"}}}},
                 "responses": {"201": ok("the started capsule", capsule.clone()),
                               "400": err("bad input, or the command cannot run (exit_code 126/127)"),
                               "404": err("unknown image"),
                               "409": err("the name is in use")}}
    }));
    m.insert(PATH_CAPSULE.into(), json!({
        "get": {"operationId": "inspectCapsule", "summary": "One capsule.", "parameters": [id.clone()],
                "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule")}},
        "delete": {"operationId": "removeCapsule", "summary": "Remove a capsule (a running one with force=true).",
                   "parameters": [id.clone(), q("force", "boolean", "kill it first when it runs")],
                   "responses": {"200": ok("removed", json!({"type": "object"})), "404": err("no such capsule"),
                                 "409": err("the capsule runs")}}
    }));
    m.insert(PATH_START.into(), json!({"post": {"operationId": "startCapsule",
        "summary": "Start an exited capsule again in its own layer (its writes kept); a running one is left as it is.",
        "parameters": [id.clone()],
        "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule"),
                      "409": err("the capsule is being removed")}}}));
    m.insert(PATH_STOP.into(), json!({"post": {"operationId": "stopCapsule",
        "summary": "SIGTERM, then SIGKILL after the timeout; marks it stopped for restart policies.",
        "parameters": [id.clone(), q("timeout", "integer", "seconds before SIGKILL (default 10)")],
        "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule")}}}));
    m.insert(
        PATH_KILL.into(),
        json!({"post": {"operationId": "killCapsule",
        "summary": "Send a signal to the capsule's first process (default SIGKILL).",
        "parameters": [id.clone(), q("signal", "string", "SIGTERM, TERM or 15")],
        "responses": {"200": ok("capsule", capsule.clone()), "400": err("bad signal"),
                      "404": err("no such capsule"), "409": err("not running")}}}),
    );
    m.insert(PATH_LOGS.into(), json!({"get": {"operationId": "capsuleLogs",
        "summary": "Log lines as NDJSON ({time_ms, stream, line}); with follow=true a chunked stream until the capsule stops.",
        "parameters": [id.clone(), q("follow", "boolean", "keep streaming"),
                       q("since", "integer", "ms since the epoch"), q("tail", "integer", "last N lines")],
        "responses": {"200": {"description": "log lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                      "404": err("no such capsule")}}}));
    m.insert(PATH_ATTACH.into(), ws("WebSocket: the capsule's stdio as binary frames (kind byte + payload), then a StreamEnd text message.",
        json!([id.clone(), q("stdin", "boolean", "forward stdin")])));
    m.insert(PATH_EXEC.into(), ws("WebSocket: send an ExecRequest text message first; stdio frames both ways, then a StreamEnd.",
        json!([id.clone()])));
    m.insert(
        PATH_TOP.into(),
        json!({"get": {"operationId": "capsuleTop", "summary": "The capsule's processes.",
        "parameters": [id],
        "responses": {"200": ok("processes", json!({"$ref": "#/components/schemas/Top"})),
                      "404": err("no such capsule"), "409": err("not running")}}}),
    );
    m
}

/// Adds the capsule paths and schemas to the API's OpenAPI document.
pub fn merge_openapi(doc: &mut serde_json::Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.extend(openapi_paths());
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        schemas.extend(openapi_schemas());
    }
}

/// The OpenAPI schemas of the capsule routes.
pub fn openapi_schemas() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let strs = json!({"type": "array", "items": {"type": "string"}});
    m.insert("CapsuleError".into(), json!({"type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "exit_code": {"type": "integer", "nullable": true}}}));
    m.insert(
        "CreateCapsule".into(),
        json!({"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string"}, "command": strs.clone(), "entrypoint": strs.clone(),
        "name": {"type": "string"}, "env": strs.clone(), "workdir": {"type": "string"},
        "user": {"type": "string"}, "hostname": {"type": "string"},
        "network": {"type": "string", "description": "none, host, bridge or a network's name"},
        "ports": strs.clone(), "volumes": strs.clone(), "tmpfs": strs.clone(),
        "memory_bytes": {"type": "integer"}, "cpu_millis": {"type": "integer"},
        "pids_limit": {"type": "integer"}, "restart": {"type": "string"},
        "auto_remove": {"type": "boolean"}, "tty": {"type": "boolean"},
        "stdin": {"type": "boolean"}, "attach": {"type": "boolean"}}}),
    );
    m.insert("Capsule".into(), json!({"type": "object",
        "required": ["id", "name", "image", "command", "status", "restarts", "created", "node", "spec"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "image": {"type": "string"},
            "image_digest": {"type": "string"}, "command": strs.clone(),
            "status": {"type": "string", "enum": ["created", "running", "exited", "removed"]},
            "pid": {"type": "integer", "nullable": true},
            "exit": {"type": "object", "nullable": true, "properties": {
                "code": {"type": "integer", "nullable": true}, "signal": {"type": "integer", "nullable": true},
                "oom": {"type": "boolean"}, "exit_code": {"type": "integer"}}},
            "restarts": {"type": "integer"}, "restart": {"type": "string"},
            "created": {"type": "integer"}, "started": {"type": "integer", "nullable": true},
            "finished": {"type": "integer", "nullable": true}, "node": {"type": "string"},
            "spec": {"type": "object"}}}));
    m.insert(
        "Top".into(),
        json!({"type": "object", "required": ["titles", "processes"],
        "properties": {"titles": strs.clone(), "processes": {"type": "array", "items": strs}}}),
    );
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn every_route_has_an_openapi_entry() {
        let paths = openapi_paths();
        for r in ROUTES {
            assert!(paths.contains_key(r), "{r}");
        }
        assert_eq!(paths.len(), ROUTES.len());
    }

    #[test]
    fn log_lines_are_split_across_reads() {
        let mut partial = Vec::new();
        let mut out = Vec::new();
        let a = br#"{"time_ms":1,"stream":"stdout","line":"a"}
{"time_ms":2,"stream":"std"#;
        take_lines(&mut partial, a, &mut out);
        assert_eq!(out.len(), 1);
        take_lines(&mut partial, b"err\",\"line\":\"b\"}\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].stream, "stderr");
    }

    #[test]
    fn top_lists_this_process() {
        let me = std::process::id() as i32;
        let view = top_view(&[me]);
        assert_eq!(view.titles.len(), 6);
        assert_eq!(view.processes.len(), 1);
        assert_eq!(view.processes[0][1], me.to_string());
    }
}
