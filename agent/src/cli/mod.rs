//! The `bolt` command line: the agent daemon and the client commands that talk to it.
//!
//! Rendering is pure (`render_*` take API views and return text) so it is tested without an
//! agent; [`run`] is the thin driver that parses, calls the client and prints.

pub mod capsules;
pub mod images;
pub mod networks;
pub mod snapshots;
pub mod table;
mod util;
pub mod volumes;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bolt_events::Cursor;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::daemon::{self, DaemonError};
use crate::node::{NodeOptions, DEFAULT_SNAPSHOT_EVERY};
use crate::wire::{EventView, InfoView, StateView, VerifyView, MAX_EVENTS_PAGE};

/// Default agent root.
pub const DEFAULT_ROOT: &str = "/var/lib/bolt";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/bolt/bolt.sock";

/// The agent root and API socket a user gets without `--root`/`--socket`: root's are
/// [`DEFAULT_ROOT`] and [`DEFAULT_SOCKET`]; another user's (rootless) are
/// `$XDG_DATA_HOME/bolt` (else `~/.local/share/bolt`) and `$XDG_RUNTIME_DIR/bolt.sock` (else
/// `bolt.sock` in that root), as podman does. Pure: the caller passes the environment.
pub fn default_paths(root_user: bool, var: impl Fn(&str) -> Option<String>) -> (PathBuf, PathBuf) {
    if root_user {
        return (DEFAULT_ROOT.into(), DEFAULT_SOCKET.into());
    }
    let set = |k: &str| var(k).filter(|v| v.starts_with('/'));
    let root = set("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("bolt");
    let socket = set("XDG_RUNTIME_DIR").map_or_else(
        || root.join("bolt.sock"),
        |d| PathBuf::from(d).join("bolt.sock"),
    );
    (root, socket)
}

fn this_users_paths() -> (PathBuf, PathBuf) {
    default_paths(nix::unistd::geteuid().is_root(), |k| std::env::var(k).ok())
}

fn default_root() -> PathBuf {
    this_users_paths().0
}

fn default_socket() -> PathBuf {
    this_users_paths().1
}

/// How long `events --follow` keeps trying to reconnect after the agent went away.
const RECONNECT_FOR: Duration = Duration::from_secs(30);
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

/// `bolt`: a container runtime and orchestrator where every change is an event.
#[derive(Debug, Parser)]
#[command(name = "bolt", version, about)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "BOLT_SOCKET", default_value_os_t = default_socket())]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon (one per root).
    Agent {
        /// Where the node key, the event log and the lock live.
        #[arg(long, env = "BOLT_ROOT", default_value_os_t = default_root())]
        root: PathBuf,
        /// Store a state snapshot every this many events (0: never).
        #[arg(long, env = "BOLT_SNAPSHOT_EVERY", default_value_t = DEFAULT_SNAPSHOT_EVERY)]
        snapshot_every: u64,
        /// The network of `bolt run` without --network: bridge (the default as root), none
        /// (the default rootless), host or a network's name.
        #[arg(
            long,
            env = "BOLT_DEFAULT_NETWORK",
            default_value = crate::node::default_network(),
            value_parser = parse_default_network
        )]
        default_network: String,
        #[command(flatten)]
        registry: crate::cli::images::RegistryArgs,
    },
    /// Show the node, its log head and its state hash.
    Info {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the version of this binary (needs no agent).
    Version,
    /// List, follow or verify the event log.
    Events(EventsArgs),
    /// Show the derived state, live or at a cursor.
    State {
        /// Time travel: the state right after this cursor.
        #[arg(long)]
        at: Option<u64>,
        /// Print the state hash alone.
        #[arg(long)]
        hash: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Images: pull, images, rmi, tag, push, image ...
    #[command(flatten)]
    Images(crate::cli::images::ImageCommands),
    /// Capsules: run, ps, logs, exec, attach, top, stop, kill, rm, inspect.
    #[command(flatten)]
    Capsule(crate::cli::capsules::CapsuleCommand),
    /// Bridge networks: create, ls, rm, inspect.
    #[command(subcommand)]
    Network(crate::cli::networks::NetworkCommand),
    /// Named volumes: create, ls, rm, inspect, prune.
    #[command(subcommand)]
    Volume(crate::cli::volumes::VolumeCommand),
    /// Btrfs snapshots of a capsule's writable layer or a volume (no docker equivalent):
    /// create, ls, restore, rm; targets are capsule:NAME or volume:NAME.
    #[command(subcommand)]
    Snapshot(crate::cli::snapshots::SnapshotCommand),
    /// Make a new image from a capsule's changes.
    Commit(crate::cli::snapshots::CommitArgs),
}

/// `bolt events`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: Option<EventsCommand>,
    /// Keep printing new events as they land (survives an agent restart).
    #[arg(long)]
    pub follow: bool,
    /// Only events after this cursor.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `bolt events <command>`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Check every chain link and signature; exits non-zero on any fault.
    Verify {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// One step of a command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("install the metrics recorder: {0}")]
    Metrics(String),
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the event log has {0} fault(s)")]
    Faults(usize),
    /// The agent's one-line reason an operation failed.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Capsule(#[from] crate::cli::capsules::CapsuleCliError),
}

impl CliError {
    /// True when stdout was closed by the reader (`bolt events | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Agent {
            root,
            snapshot_every,
            default_network,
            registry,
        } => run_agent(root, cli.socket, snapshot_every, default_network, registry),
        Command::Version => {
            println!("bolt {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Capsule(c) => crate::cli::capsules::run(cli.socket, c),
        Command::Network(c) => crate::cli::networks::run(cli.socket, c),
        Command::Volume(c) => crate::cli::volumes::run(cli.socket, c),
        Command::Snapshot(c) => crate::cli::snapshots::run(cli.socket, c),
        Command::Commit(a) => crate::cli::snapshots::commit(cli.socket, a),
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            rt.block_on(run_client(Client::new(cli.socket), command))
        }
    }
}

/// `--default-network`: what `bolt run --network` accepts (none, host, bridge or a network's
/// name), refused before the agent starts rather than at every run.
fn parse_default_network(s: &str) -> Result<String, String> {
    crate::service::networks::plan(s, &[]).map(|_| s.to_owned())
}

fn run_agent(
    root: PathBuf,
    socket: PathBuf,
    snapshot_every: u64,
    default_network: String,
    registry: crate::cli::images::RegistryArgs,
) -> Result<ExitCode, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("BOLT_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| CliError::Metrics(e.to_string()))?;
        let mut node = NodeOptions::for_this_host();
        node.snapshot_every = snapshot_every;
        node.default_network = default_network;
        node.metrics = Some(handle);
        let config = daemon::Config {
            root,
            socket,
            node,
            images: registry.into(),
        };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM".to_string(),
                _ = int.recv() => "SIGINT".to_string(),
            }
        };
        daemon::run(config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn run_client(client: Client, command: Command) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Info { format } => {
            let info = client.info().await?;
            match format {
                Format::Table => out.write_all(render_info(&info).as_bytes())?,
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?,
            }
        }
        Command::State { at, hash, format } => {
            let at = at.map(Cursor);
            if hash {
                let view = client.state_hash(at).await?;
                match format {
                    Format::Table => writeln!(out, "{}", view.hash)?,
                    Format::Json => writeln!(out, "{}", serde_json::to_string(&view)?)?,
                }
            } else {
                let view = client.state(at).await?;
                match format {
                    Format::Table => out.write_all(render_state(&view).as_bytes())?,
                    Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?,
                }
            }
        }
        Command::Events(args) => match args.command {
            Some(EventsCommand::Verify { format }) => {
                let report = client.verify().await?;
                match format {
                    Format::Table => out.write_all(render_verify(&report).as_bytes())?,
                    Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                }
                out.flush()?;
                if !report.ok {
                    return Err(CliError::Faults(report.faults.len()));
                }
            }
            None if args.follow => {
                follow(&client, Cursor(args.since), args.format, &mut out).await?
            }
            None => list(&client, Cursor(args.since), args.format, &mut out).await?,
        },
        Command::Images(cmd) => crate::cli::images::run(&client, cmd, &mut out).await?,
        Command::Agent { .. }
        | Command::Version
        | Command::Capsule(_)
        | Command::Network(_)
        | Command::Volume(_)
        | Command::Snapshot(_)
        | Command::Commit(_) => {}
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn list(
    client: &Client,
    mut since: Cursor,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut all = Vec::new();
    loop {
        let page = client.events(since, MAX_EVENTS_PAGE).await?;
        let done = page.len() < MAX_EVENTS_PAGE;
        if let Some(last) = page.last() {
            since = Cursor(last.cursor);
        }
        match format {
            // JSON lines go out page by page; a table needs every row to align its columns.
            Format::Json => {
                for ev in &page {
                    writeln!(out, "{}", serde_json::to_string(ev)?)?;
                }
            }
            Format::Table => all.extend(page),
        }
        if done {
            break;
        }
    }
    if format == Format::Table {
        out.write_all(render_events(&all).as_bytes())?;
    }
    Ok(())
}

/// Print events after `since`, then live ones; when the agent goes away, reconnect and resume
/// after the last cursor printed (no duplicates, no gaps).
async fn follow(
    client: &Client,
    since: Cursor,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut last = since;
    let mut stream = client.stream(last).await?;
    if format == Format::Table {
        writeln!(out, "{}", follow_row(&EVENT_HEADER.map(String::from)))?;
        out.flush()?;
    }
    loop {
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                // A broken connection: resume below, as after a close.
                Err(ClientError::Stream { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&ev)?)?,
                Format::Table => writeln!(out, "{}", follow_row(&event_row(&ev)))?,
            }
            out.flush()?;
            last = Cursor(ev.cursor);
        }
        stream = reconnect(client, last).await?;
    }
}

async fn reconnect(client: &Client, last: Cursor) -> Result<crate::client::EventStream, CliError> {
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    loop {
        tokio::time::sleep(RECONNECT_EVERY).await;
        match client.stream(last).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => {}
        }
    }
}

const EVENT_HEADER: [&str; 6] = ["CURSOR", "TIME", "ORIGIN", "SEQ", "KIND", "SUMMARY"];
/// Column widths of a followed table, where later rows are not known yet.
const FOLLOW_WIDTHS: [usize; 5] = [8, 24, 12, 6, 24];

fn follow_row(cells: &[String; 6]) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(FOLLOW_WIDTHS) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.push_str(&cells[5]);
    line.trim_end().to_string()
}

fn event_row(ev: &EventView) -> [String; 6] {
    [
        ev.cursor.to_string(),
        format_time_ms(ev.time_ms()),
        ev.origin.short(),
        ev.seq.to_string(),
        ev.kind.clone(),
        summary(&ev.payload),
    ]
}

/// The events table: cursor, time, origin (short), seq, kind and a summary of the payload.
pub fn render_events(events: &[EventView]) -> String {
    let mut rows = vec![EVENT_HEADER.map(String::from).to_vec()];
    rows.extend(events.iter().map(|e| event_row(e).to_vec()));
    crate::cli::table::align(&rows, 2)
}

/// `bolt info` for people.
pub fn render_info(info: &InfoView) -> String {
    let rows = [
        ["node", &info.node_id.to_string()],
        ["name", &info.name],
        ["version", &info.version],
        ["head", &info.head.to_string()],
        ["events", &info.events.to_string()],
        ["state cursor", &info.state_cursor.to_string()],
        ["state hash", &info.state_hash.to_string()],
        ["uptime", &format_duration(info.uptime_s)],
    ];
    crate::cli::table::align(&rows.map(|r| r.map(String::from).to_vec()), 2)
}

/// `bolt events verify` for people.
pub fn render_verify(v: &VerifyView) -> String {
    if v.ok {
        return format!(
            "ok: {} events from {} origin(s), every link and signature holds\n",
            v.events, v.origins
        );
    }
    let mut s = format!(
        "FAULTY: {} fault(s) in {} events from {} origin(s)\n",
        v.faults.len(),
        v.events,
        v.origins
    );
    for f in &v.faults {
        s.push_str(&format!("  - {f}\n"));
    }
    s
}

/// `bolt state` for people: the cursor and hash, every scalar field, then one table per map
/// (or list) of records. Generic over the state's shape, so new state fields show up as-is.
pub fn render_state(view: &StateView) -> String {
    let mut fields = vec![
        vec!["cursor".to_string(), view.cursor.to_string()],
        vec!["hash".to_string(), view.hash.to_string()],
    ];
    let mut tables = String::new();
    match &view.state {
        Value::Object(map) => {
            for (name, value) in map {
                match records(value) {
                    Some(rows) => {
                        tables.push_str(&format!("\n{name} ({})\n", rows.len()));
                        tables.push_str(&record_table(&rows));
                    }
                    None => fields.push(vec![name.clone(), cell(value)]),
                }
            }
        }
        other => fields.push(vec!["state".to_string(), cell(other)]),
    }
    let mut s = crate::cli::table::align(&fields, 2);
    s.push_str(&tables);
    s
}

/// A map or list whose values are all objects, as (key, record) pairs.
fn records(value: &Value) -> Option<Vec<(String, &serde_json::Map<String, Value>)>> {
    match value {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| v.as_object().map(|o| (k.clone(), o)))
            .collect(),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_object().map(|o| (i.to_string(), o)))
            .collect(),
        _ => None,
    }
}

fn record_table(rows: &[(String, &serde_json::Map<String, Value>)]) -> String {
    let mut columns: Vec<&String> = Vec::new();
    for (_, r) in rows {
        for k in r.keys() {
            if !columns.contains(&k) {
                columns.push(k);
            }
        }
    }
    let mut table = vec![std::iter::once("KEY".to_string())
        .chain(columns.iter().map(|c| c.to_uppercase()))
        .collect::<Vec<_>>()];
    for (key, r) in rows {
        table.push(
            std::iter::once(shorten_id(key))
                .chain(
                    columns
                        .iter()
                        .map(|c| r.get(*c).map(cell).unwrap_or_default()),
                )
                .collect(),
        );
    }
    crate::cli::table::align(&table, 2)
}

/// One value in a cell: scalars as they are, 64-hex ids shortened, the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => shorten_id(s),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => truncate(&other.to_string(), 40),
    }
}

fn shorten_id(s: &str) -> String {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        s[..12].to_string()
    } else {
        s.to_string()
    }
}

/// A one-line summary of a payload (`{"category": {"variant": {fields}}}`): its non-empty
/// fields as `key=value`, cut to 72 characters.
pub fn summary(payload: &Value) -> String {
    let fields = payload
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_object)
        .and_then(|m| m.values().next());
    let parts: Vec<String> = match fields {
        Some(Value::Object(fields)) => fields
            .iter()
            .filter(|(_, v)| !is_empty(v))
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect(),
        Some(other) if !is_empty(other) => vec![cell(other)],
        _ => Vec::new(),
    };
    truncate(&parts.join(" "), 72)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// `2026-11-03T12:34:56.789Z` from milliseconds since the Unix epoch (UTC).
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bolt_events::{Hash, NodeId};
    use serde_json::json;

    use super::*;

    #[test]
    fn root_and_socket_defaults_follow_the_user() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let all = env(&[
            ("XDG_DATA_HOME", "/home/u/data"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            default_paths(true, all),
            (PathBuf::from(DEFAULT_ROOT), PathBuf::from(DEFAULT_SOCKET))
        );
        assert_eq!(
            default_paths(false, all),
            (
                PathBuf::from("/home/u/data/bolt"),
                PathBuf::from("/run/user/1000/bolt.sock")
            )
        );
        assert_eq!(
            default_paths(false, env(&[("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "")])),
            (
                PathBuf::from("/home/u/.local/share/bolt"),
                PathBuf::from("/home/u/.local/share/bolt/bolt.sock")
            )
        );
    }

    #[test]
    fn times_are_utc_iso8601_with_milliseconds() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_time_ms(1_798_761_599_999),
            "2026-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn a_summary_shows_non_empty_fields_of_the_variant() {
        let p = json!({"node": {"started": {"name": "h1", "version": "0.1.0", "addr": null, "labels": {}}}});
        assert_eq!(summary(&p), "name=h1 version=0.1.0");
        let id = "ab".repeat(32);
        let p = json!({"placement": {"placed": {"service": "web", "replica": 2, "node": id}}});
        assert_eq!(summary(&p), "node=abababababab replica=2 service=web");
        let long = json!({"x": {"y": {"reason": "z".repeat(200)}}});
        assert_eq!(summary(&long).chars().count(), 72);
        assert!(summary(&long).ends_with('…'));
        assert_eq!(summary(&json!("odd")), "");
    }

    #[test]
    fn tables_align_every_column_but_the_last() {
        let rows = vec![
            vec!["A".to_string(), "LONG HEADER".to_string(), "Z".to_string()],
            vec![
                "longer".to_string(),
                "b".to_string(),
                "last column".to_string(),
            ],
        ];
        let t = crate::cli::table::align(&rows, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A       LONG HEADER  Z");
        assert_eq!(lines[1], "longer  b            last column");
    }

    #[test]
    fn events_table_has_a_row_per_event_under_the_header() {
        let ev = EventView {
            cursor: 12,
            origin: NodeId([0xab; 32]),
            seq: 3,
            hlc: bolt_events::Hlc::new(1_000, 0).0,
            schema: 2,
            kind: "node.stopped".into(),
            hash: Hash([1; 32]),
            prev: Hash([2; 32]),
            payload: json!({"node": {"stopped": {"reason": "SIGTERM"}}}),
        };
        let t = render_events(&[ev]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("CURSOR  TIME"));
        assert!(
            lines[1].starts_with(
                "12      1970-01-01T00:00:01.000Z  abababababab  3    node.stopped  reason=SIGTERM"
            ),
            "{t}"
        );
    }

    #[test]
    fn state_renders_scalars_then_a_table_per_map_of_records() {
        let view = StateView {
            cursor: 5,
            hash: Hash([3; 32]),
            state: json!({
                "applied": 5,
                "nodes": {"a1": {"name": "n1", "up": true}, "b2": {"name": "n2", "up": false, "starts": 2}},
                "volumes": {},
            }),
        };
        let t = render_state(&view);
        assert!(t.starts_with("cursor   5\nhash     0303"), "{t}");
        assert!(t.contains("\napplied  5\n"), "{t}");
        assert!(t.contains("\nvolumes  {}\n"), "{t}");
        assert!(
            t.contains(
                "\nnodes (2)\nKEY  NAME  UP     STARTS\na1   n1    true\nb2   n2    false  2\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn verify_report_lists_every_fault() {
        let ok = VerifyView {
            ok: true,
            events: 3,
            origins: 1,
            faults: vec![],
        };
        assert!(render_verify(&ok).starts_with("ok: 3 events from 1 origin(s)"));
        let bad = VerifyView {
            ok: false,
            events: 3,
            origins: 1,
            faults: vec![
                "cursor 1: bad signature".into(),
                "cursor 2: broken chain".into(),
            ],
        };
        let t = render_verify(&bad);
        assert!(t.starts_with("FAULTY: 2 fault(s)"));
        assert!(t.contains("  - cursor 1: bad signature\n  - cursor 2: broken chain\n"));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_duration(5), "5s");
        assert_eq!(format_duration(65), "1m05s");
        assert_eq!(format_duration(3_600 * 2 + 60), "2h01m");
        assert_eq!(format_duration(86_400 + 3_600), "1d01h");
    }
}
