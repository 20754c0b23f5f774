//! The `bolt` command line: the client commands that talk to the agent, one file per command
//! group (capsules, images, networks, volumes, snapshots, events), one `--format` ([`Format`]),
//! one error ([`CliError`]) and one table writer ([`table`]).
//!
//! Rendering is pure (`render_*` take API views and return text) so it is tested without an
//! agent; [`run`] is the thin driver that parses, calls the client and prints. This layer
//! imports only `client` and `wire`: it never reaches into the agent's services, node, API or
//! supervisor (`bolt agent` and `bolt supervise` are started by the binary, not from here).

pub mod capsules;
pub mod cluster;
mod events;
pub mod images;
pub mod networks;
pub mod snapshots;
pub mod table;
mod util;
pub mod volumes;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bolt_events::Cursor;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{Client, ClientError, EventSelect};
use crate::wire::networks::plan;
use crate::wire::{default_network, DEFAULT_SNAPSHOT_EVERY};

pub use events::{render_events, render_info, render_state, render_verify, summary};

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
    Agent(AgentArgs),
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
    /// The cluster: init, token, show.
    #[command(subcommand)]
    Cluster(crate::cli::cluster::ClusterCommand),
    /// The cluster's nodes: ls.
    #[command(subcommand)]
    Node(crate::cli::cluster::NodeCommand),
}

/// `bolt agent`: where the agent keeps its files and how it runs. Run by the daemon
/// (`crate::daemon::main`), not by the client side of this module.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the node key, the event log and the lock live.
    #[arg(long, env = "BOLT_ROOT", default_value_os_t = default_root())]
    pub root: PathBuf,
    /// Store a state snapshot every this many events (0: never).
    #[arg(long, env = "BOLT_SNAPSHOT_EVERY", default_value_t = DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// The network of `bolt run` without --network: bridge (the default as root), none
    /// (the default rootless), host or a network's name.
    #[arg(
        long,
        env = "BOLT_DEFAULT_NETWORK",
        default_value = default_network(),
        value_parser = parse_default_network
    )]
    pub default_network: String,
    #[command(flatten)]
    pub registry: crate::cli::images::RegistryArgs,
    /// Start even though the root has capsules but its node key or event log is gone: a new
    /// key or an empty log, and those capsules are ended and their directories removed.
    #[arg(long)]
    pub start_over: bool,
    /// The mesh address to listen on (UDP, QUIC with mutual TLS), e.g. 10.0.0.1:7946. Without
    /// it the agent is a single node.
    #[arg(long, env = "BOLT_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// The address peers dial (default: --listen).
    #[arg(long, env = "BOLT_ADVERTISE")]
    pub advertise: Option<std::net::SocketAddr>,
    /// Join the cluster of the member at this address (with --token) at the first start.
    #[arg(long, requires = "token", requires = "listen")]
    pub join: Option<std::net::SocketAddr>,
    /// A join token from `bolt cluster token` on a member.
    #[arg(long, env = "BOLT_JOIN_TOKEN", requires = "join")]
    pub token: Option<String>,
    /// Lifetime of the node certificates this agent issues when it holds the cluster CA
    /// (nodes renew theirs when a third is left).
    #[arg(long, default_value = "365d", value_parser = crate::cli::cluster::parse_duration)]
    pub cert_ttl: std::time::Duration,
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
    /// Only events of this origin: a node id hex prefix (at least 4 digits) or a node name.
    #[arg(long)]
    pub origin: Option<String>,
    /// Only events of this kind: exact (`capsule.started`) or a prefix (`capsule.`,
    /// `cluster.*`).
    #[arg(long)]
    pub kind: Option<String>,
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

/// One step of a command that failed: the one error of every command group.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the event log has {0} fault(s)")]
    Faults(usize),
    /// The agent's one-line reason an operation failed.
    #[error("{0}")]
    Failed(String),
    /// A flag or argument that cannot be right (`--memory 12qq`).
    #[error("{0}")]
    Usage(String),
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CliError {
    /// True when stdout was closed by the reader (`bolt events | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// docker's exit code for a failed `run` or `exec`: the agent's (125, 126, 127), else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(ClientError::Api {
                exit_code: Some(c), ..
            }) => *c,
            _ => 125,
        }
    }
}

/// Run a parsed client command against the agent at `socket`. `bolt agent` is the daemon's
/// (`crate::daemon::main`) and `bolt supervise` the supervisor's (`crate::shim::main`): the
/// binary runs those itself.
pub fn run(socket: PathBuf, command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Version => {
            println!("bolt {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Capsule(c) => crate::cli::capsules::run(socket, c),
        Command::Network(c) => crate::cli::networks::run(socket, c),
        Command::Volume(c) => crate::cli::volumes::run(socket, c),
        Command::Snapshot(c) => crate::cli::snapshots::run(socket, c),
        Command::Commit(a) => crate::cli::snapshots::commit(socket, a),
        Command::Cluster(c) => crate::cli::cluster::run(socket, c),
        Command::Node(c) => crate::cli::cluster::run_node(socket, c),
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            rt.block_on(run_client(Client::new(socket), command))
                .map_err(with_status)
        }
    }
}

/// `--default-network`: what `bolt run --network` accepts (none, host, bridge or a network's
/// name), refused before the agent starts rather than at every run.
fn parse_default_network(s: &str) -> Result<String, String> {
    plan(s, &[]).map(|_| s.to_owned())
}

/// The agent's refusal as `info`, `state`, `events` and the image commands print it: with the
/// HTTP status (`bolt: the bolt agent answered 404: no image ...`); the capsule, network,
/// volume and snapshot commands print the message alone, as docker does.
fn with_status(e: CliError) -> CliError {
    match e {
        CliError::Client(ClientError::Api {
            status,
            message,
            exit_code,
        }) => CliError::Client(ClientError::Api {
            status,
            message: if message.starts_with("the bolt agent answered") {
                message
            } else {
                format!("the bolt agent answered {status}: {message}")
            },
            exit_code,
        }),
        e => e,
    }
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
            None => {
                let select = EventSelect {
                    origin: args.origin,
                    kind: args.kind,
                };
                let since = Cursor(args.since);
                if args.follow {
                    events::follow(&client, since, &select, args.format, &mut out).await?
                } else {
                    events::list(&client, since, &select, args.format, &mut out).await?
                }
            }
        },
        Command::Images(cmd) => crate::cli::images::run(&client, cmd, &mut out).await?,
        Command::Agent(_)
        | Command::Version
        | Command::Capsule(_)
        | Command::Network(_)
        | Command::Volume(_)
        | Command::Snapshot(_)
        | Command::Commit(_)
        | Command::Cluster(_)
        | Command::Node(_) => {}
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bolt_events::{Hash, NodeId};
    use serde_json::json;

    use super::*;
    use crate::cli::events::format_duration;
    use crate::wire::time::format_time_ms;
    use crate::wire::{EventView, StateView, VerifyView};

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

    #[test]
    fn events_takes_origin_and_kind_with_follow_and_since() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "bolt",
            "events",
            "--origin",
            "node-b",
            "--kind",
            "capsule.*",
            "--follow",
            "--since",
            "7",
        ])
        .unwrap();
        let super::Command::Events(args) = cli.command else {
            panic!("not events: {cli:?}");
        };
        assert_eq!(args.origin.as_deref(), Some("node-b"));
        assert_eq!(args.kind.as_deref(), Some("capsule.*"));
        assert!(args.follow);
        assert_eq!(args.since, 7);
        let plain = super::Cli::try_parse_from(["bolt", "events"]).unwrap();
        let super::Command::Events(args) = plain.command else {
            panic!("not events");
        };
        assert_eq!((args.origin, args.kind), (None, None));
    }

    #[test]
    fn an_event_selection_is_encoded_as_query_parameters() {
        use crate::client::EventSelect;
        assert_eq!(EventSelect::default().query(), "");
        let select = EventSelect {
            origin: Some("node b".into()),
            kind: Some("cluster.*".into()),
        };
        assert_eq!(select.query(), "&origin=node%20b&kind=cluster.%2A");
    }
}
