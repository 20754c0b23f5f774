//! The capsule routes' paths and JSON shapes (`/v1/capsules...`), the labels a capsule's spec
//! carries, restart policies and the exit-code rule: what the API and the client agree on.
//! Pure; never imports another agent module.

use std::str::FromStr;

use bolt_events::payload::CapsuleSpec as EventSpec;
use bolt_state::{CapsuleInfo, CapsuleStatus, ExitInfo};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

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
    /// `--device` specs: `HOST[:CONTAINER][:PERMS]` (docker's syntax; CONTAINER under `/dev/`).
    #[serde(default)]
    pub devices: Vec<String>,
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
                exit_code: exit_code_of(&e),
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

/// `?all=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Also the capsules that do not run.
    pub all: Option<bool>,
    /// Every node's capsules, not only this node's (`bolt ps --all-nodes`).
    pub all_nodes: Option<bool>,
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

/// Label: remove the capsule when it exits (`--rm`).
pub const LABEL_AUTO_REMOVE: &str = "bolt.auto_remove";
/// Label: the capsule has a pty (`-t`).
pub const LABEL_TTY: &str = "bolt.tty";
/// Label recording the `--device` grants (the specs, space-separated), for inspect.
pub const LABEL_DEVICES: &str = "bolt.devices";
/// Label: the capsule's stdin stays open for attach clients (`-i`).
pub const LABEL_STDIN: &str = "bolt.stdin";
/// Label: what the agent ignored of the request (one warning per line), printed by `bolt run`.
pub const LABEL_WARNINGS: &str = "bolt.warnings";

/// Default `stop` grace period, as docker.
pub const DEFAULT_STOP_TIMEOUT: u64 = 10;

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

/// The first 12 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The first line of a message (errors must stay one line).
pub fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
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
}
