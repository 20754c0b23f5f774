//! The capsule commands of the `bolt` command line, with docker's flags: `run`, `ps`, `logs`,
//! `exec`, `attach`, `top`, `stop`, `kill`, `rm`, `inspect`, and the hidden `supervise` (the
//! per-capsule supervisor process, see [`crate::shim`]).
//!
//! Rendering is pure (`render_*` take API views and the time) and tested without an agent.
//! Exit codes follow docker: a foreground `run` exits with the capsule's code; 125 when Bolt
//! fails, 126 when the command cannot be executed, 127 when it is not found.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bolt_capsule::runtime::supervisor::LogLine;
use clap::{Args, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;

use crate::api::capsules::{
    CapsuleErrorBody, CapsuleView, CreateRequest, ExecRequest, StreamEnd, TopView, PATH_CAPSULES,
};
use crate::cli::util::{each_name, json_err, now_ms, write_list};
use crate::cli::CliError;
use crate::service::capsules::{parse_cpus, parse_size, short, DEFAULT_STOP_TIMEOUT};
use crate::shim::frame;

/// `--format` of the capsule commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum CapsuleFormat {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// The capsule commands (flattened into `bolt`'s command list).
#[derive(Debug, Subcommand)]
pub enum CapsuleCommand {
    /// Create and start a capsule from an image (pulls it when missing).
    Run(RunArgs),
    /// List capsules (running ones; -a for all).
    Ps {
        /// Show every capsule, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
        /// `json` prints one capsule per line.
        #[arg(long, value_enum, default_value_t)]
        format: CapsuleFormat,
    },
    /// Print a capsule's output.
    Logs {
        /// Keep printing new output until the capsule stops.
        #[arg(short, long)]
        follow: bool,
        /// Only output since this time: RFC 3339, unix seconds, or a duration ago (10m, 1h30m).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines (`all` for every line).
        #[arg(short = 'n', long)]
        tail: Option<String>,
        /// Prefix each line with its time.
        #[arg(short, long)]
        timestamps: bool,
        /// Capsule name or id.
        capsule: String,
    },
    /// Run a command in a running capsule.
    Exec(ExecArgs),
    /// Attach to a running capsule's stdio.
    Attach {
        /// Do not forward stdin.
        #[arg(long)]
        no_stdin: bool,
        /// Capsule name or id.
        capsule: String,
    },
    /// Show a capsule's processes.
    Top {
        /// Capsule name or id.
        capsule: String,
    },
    /// Start exited capsules again (their writable layer kept).
    Start {
        /// Capsule names or ids.
        #[arg(required = true)]
        capsules: Vec<String>,
    },
    /// Stop capsules: SIGTERM, then SIGKILL after the timeout.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = DEFAULT_STOP_TIMEOUT)]
        time: u64,
        /// Capsule names or ids.
        #[arg(required = true)]
        capsules: Vec<String>,
    },
    /// Send a signal to capsules (default SIGKILL).
    Kill {
        /// The signal: KILL, TERM, SIGHUP, 9, ...
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Capsule names or ids.
        #[arg(required = true)]
        capsules: Vec<String>,
    },
    /// Remove capsules.
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        /// Capsule names or ids.
        #[arg(required = true)]
        capsules: Vec<String>,
    },
    /// Show everything about capsules.
    Inspect {
        /// `json` prints a JSON array.
        #[arg(long, value_enum, default_value_t)]
        format: CapsuleFormat,
        /// Capsule names or ids.
        #[arg(required = true)]
        capsules: Vec<String>,
    },
    /// The per-capsule supervisor (started by the agent).
    #[command(hide = true)]
    Supervise {
        /// The capsule's directory.
        dir: PathBuf,
    },
}

/// `bolt run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the capsule id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the capsule when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Name the capsule.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments).
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the capsule.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Hostname (default: the first 12 characters of the id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: none (only lo), host, bridge (the default bridge network) or a network's name
    /// (default: the agent's --default-network, bridge as root).
    #[arg(long)]
    pub network: Option<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/tcp|udp] (bridge networks).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// Mount a volume or host path: NAME:/dst[:ro], /host:/dst[:ro], /dst.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Mount a tmpfs: /dst[:size=64m,mode=1777,...].
    #[arg(long, value_name = "DST[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Memory limit: 64m, 1g, 512k, bytes.
    #[arg(short, long)]
    pub memory: Option<String>,
    /// CPUs: 0.5 is half a CPU.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids_limit: Option<u32>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Keep stdin open (forward this terminal's input).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Replace the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Image reference.
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `bolt exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Capsule name or id.
    pub capsule: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// One step of a capsule command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleCliError {
    #[error("cannot reach the bolt agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talk to the bolt agent at {path}: {reason}")]
    Http { path: PathBuf, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        exit_code: Option<i32>,
    },
    #[error("unreadable answer from the bolt agent: {0}")]
    Decode(String),
    #[error("{0}")]
    Usage(String),
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Stream(String),
}

impl CapsuleCliError {
    /// docker's exit code for a failed `run`.
    pub fn exit_code(&self) -> i32 {
        match self {
            CapsuleCliError::Api {
                exit_code: Some(c), ..
            } => *c,
            _ => 125,
        }
    }
}

type CliResult<T> = Result<T, CapsuleCliError>;

/// Runs a capsule command.
pub fn run(socket: PathBuf, cmd: CapsuleCommand) -> Result<ExitCode, CliError> {
    if let CapsuleCommand::Supervise { dir } = cmd {
        return Ok(exit_code(crate::shim::main(&dir)));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CapsuleCliError::Runtime)?;
    let is_run = matches!(cmd, CapsuleCommand::Run(_) | CapsuleCommand::Exec(_));
    match rt.block_on(run_async(&socket, cmd)) {
        Ok(code) => Ok(code),
        // run and exec report with docker's codes; the rest exit 1 through the caller.
        Err(e) if is_run => {
            eprintln!("bolt: {e}");
            Ok(exit_code(e.exit_code()))
        }
        Err(e) => Err(e.into()),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}

async fn run_async(socket: &Path, cmd: CapsuleCommand) -> CliResult<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        CapsuleCommand::Run(args) => return run_capsule(socket, args).await,
        CapsuleCommand::Exec(args) => return exec(socket, args).await,
        CapsuleCommand::Attach { no_stdin, capsule } => {
            let view: CapsuleView =
                call(socket, Method::GET, &capsule_path(&capsule, ""), None).await?;
            let stdin = !no_stdin
                && view
                    .spec
                    .labels
                    .get(crate::service::capsules::LABEL_STDIN)
                    .is_some_and(|v| v == "true");
            let tty = view
                .spec
                .labels
                .get(crate::service::capsules::LABEL_TTY)
                .is_some_and(|v| v == "true");
            let path = format!("{}?stdin={stdin}", capsule_path(&view.id, "/attach"));
            let end = stream_session(socket, &path, None, stdin, tty).await?;
            return Ok(end_code(&end));
        }
        CapsuleCommand::Ps { all, quiet, format } => {
            let list: Vec<CapsuleView> = call(
                socket,
                Method::GET,
                &format!("{PATH_CAPSULES}?all={all}"),
                None,
            )
            .await?;
            write_list(
                &mut out,
                &list,
                quiet,
                format,
                |c| short(&c.id),
                |l| render_ps(l, now_ms()),
            )?;
        }
        CapsuleCommand::Logs {
            follow,
            since,
            tail,
            timestamps,
            capsule,
        } => {
            drop(out);
            logs(
                socket,
                &capsule,
                follow,
                since.as_deref(),
                tail.as_deref(),
                timestamps,
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        CapsuleCommand::Top { capsule } => {
            let top: TopView =
                call(socket, Method::GET, &capsule_path(&capsule, "/top"), None).await?;
            out.write_all(render_top(&top).as_bytes())?;
        }
        CapsuleCommand::Start { capsules } => {
            let started = each_name(&mut out, capsules, async |c: &str| {
                call::<CapsuleView>(socket, Method::POST, &capsule_path(c, "/start"), None).await
            });
            if !started.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Stop { time, capsules } => {
            let stopped = each_name(&mut out, capsules, async |c: &str| {
                let path = format!("{}?timeout={time}", capsule_path(c, "/stop"));
                call::<CapsuleView>(socket, Method::POST, &path, None).await
            });
            if !stopped.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Kill { signal, capsules } => {
            let killed = each_name(&mut out, capsules, async |c: &str| {
                let path = format!("{}?signal={}", capsule_path(c, "/kill"), encode(&signal));
                call::<CapsuleView>(socket, Method::POST, &path, None).await
            });
            if !killed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Rm { force, capsules } => {
            let removed = each_name(&mut out, capsules, async |c: &str| {
                let path = format!("{}?force={force}", capsule_path(c, ""));
                call::<serde_json::Value>(socket, Method::DELETE, &path, None).await
            });
            if !removed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Inspect { format, capsules } => {
            let mut views = Vec::new();
            for c in capsules {
                views.push(
                    call::<CapsuleView>(socket, Method::GET, &capsule_path(&c, ""), None).await?,
                );
            }
            match format {
                CapsuleFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&views).map_err(json_err)?
                )?,
                CapsuleFormat::Table => {
                    for v in &views {
                        out.write_all(render_inspect(v).as_bytes())?;
                    }
                }
            }
        }
        CapsuleCommand::Supervise { .. } => {}
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn capsule_path(key: &str, suffix: &str) -> String {
    format!("{PATH_CAPSULES}/{}{suffix}", encode(key))
}

/// Percent-encodes a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP over the unix socket
// ---------------------------------------------------------------------------------------------

async fn connect(socket: &Path) -> CliResult<UnixStream> {
    UnixStream::connect(socket)
        .await
        .map_err(|source| CapsuleCliError::Connect {
            path: socket.to_path_buf(),
            source,
        })
}

async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> CliResult<hyper::Response<hyper::body::Incoming>> {
    let http = |e: &dyn std::fmt::Display| CapsuleCliError::Http {
        path: socket.to_path_buf(),
        reason: e.to_string(),
    };
    let io = TokioIo::new(connect(socket).await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(&e))?;
    sender.send_request(req).await.map_err(|e| http(&e))
}

fn api_error(status: StatusCode, body: &[u8]) -> CapsuleCliError {
    match serde_json::from_slice::<CapsuleErrorBody>(body) {
        Ok(e) => CapsuleCliError::Api {
            status: status.as_u16(),
            message: e.error,
            exit_code: e.exit_code,
        },
        Err(_) => CapsuleCliError::Api {
            status: status.as_u16(),
            message: format!(
                "the bolt agent answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
            exit_code: None,
        },
    }
}

pub(crate) async fn call<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> CliResult<T> {
    let resp = send(socket, method, path, body).await?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CapsuleCliError::Http {
            path: socket.to_path_buf(),
            reason: e.to_string(),
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| CapsuleCliError::Decode(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// run, exec, attach
// ---------------------------------------------------------------------------------------------

/// Environment entries from `-e` and `--env-file`: `KEY=VALUE` as is, a bare `KEY` takes this
/// process's value (and is dropped when unset).
pub fn collect_env(
    env: &[String],
    files: &[(PathBuf, String)],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut take = |entry: &str| -> Result<(), String> {
        if entry.starts_with('=') || entry.is_empty() {
            return Err(format!(
                "invalid environment entry {entry:?}: expected KEY=VALUE"
            ));
        }
        if entry.contains('=') {
            out.push(entry.to_owned());
        } else if let Some(v) = lookup(entry) {
            out.push(format!("{entry}={v}"));
        }
        Ok(())
    };
    for (_, text) in files {
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            take(line.trim_end_matches(['\r', '\n']))?;
        }
    }
    for e in env {
        take(e)?;
    }
    Ok(out)
}

/// The create request of a `bolt run`; flag errors (`--memory 12qq`) are usage errors.
pub fn create_request(args: &RunArgs) -> CliResult<CreateRequest> {
    let mut files = Vec::new();
    for p in &args.env_file {
        let text = std::fs::read_to_string(p).map_err(|source| CapsuleCliError::Read {
            path: p.clone(),
            source,
        })?;
        files.push((p.clone(), text));
    }
    let env = collect_env(&args.env, &files, |k| std::env::var(k).ok())
        .map_err(CapsuleCliError::Usage)?;
    let memory_bytes = args
        .memory
        .as_deref()
        .map(|m| parse_size(m).map_err(|e| CapsuleCliError::Usage(format!("--memory: {e}"))))
        .transpose()?;
    let cpu_millis = args
        .cpus
        .as_deref()
        .map(|c| parse_cpus(c).map_err(CapsuleCliError::Usage))
        .transpose()?;
    if args.pids_limit == Some(0) {
        return Err(CapsuleCliError::Usage(
            "--pids-limit must be positive".into(),
        ));
    }
    args.restart
        .parse::<crate::service::capsules::RestartPolicy>()
        .map_err(CapsuleCliError::Usage)?;
    if args.rm && args.restart != "no" {
        return Err(CapsuleCliError::Usage(
            "conflicting options: --restart and --rm".into(),
        ));
    }
    Ok(CreateRequest {
        image: args.image.clone(),
        command: args.command.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| vec![e.clone()]),
        name: args.name.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        network: args.network.clone(),
        memory_bytes,
        cpu_millis,
        pids_limit: args.pids_limit,
        restart: Some(args.restart.clone()),
        auto_remove: args.rm,
        tty: args.tty,
        stdin: args.interactive,
        attach: !args.detach,
        ports: args.publish.clone(),
        volumes: args.volume.clone(),
        tmpfs: args.tmpfs.clone(),
    })
}

async fn run_capsule(socket: &Path, args: RunArgs) -> CliResult<ExitCode> {
    let req = create_request(&args)?;
    let body = serde_json::to_vec(&req).map_err(json_err)?;
    let view: CapsuleView = call(socket, Method::POST, PATH_CAPSULES, Some(body)).await?;
    // What the agent ignored (a rootless agent's limits), as podman prints it.
    if let Some(w) = view
        .spec
        .labels
        .get(crate::service::capsules::LABEL_WARNINGS)
    {
        for line in w.lines() {
            eprintln!("warning: {line}");
        }
    }
    if args.detach {
        println!("{}", view.id);
        return Ok(ExitCode::SUCCESS);
    }
    let path = format!(
        "{}?stdin={}",
        capsule_path(&view.id, "/attach"),
        args.interactive
    );
    let proxy = (!args.tty).then(|| spawn_signal_proxy(socket.to_path_buf(), view.id.clone()));
    let end = stream_session(socket, &path, None, args.interactive, args.tty).await;
    if let Some(p) = proxy {
        p.abort();
    }
    let end = match end {
        Ok(end) => end,
        // The capsule ended before we attached and its output went with `--rm`: the state
        // still knows how it ended.
        Err(CapsuleCliError::Api { status: 409, .. }) => {
            let v: CapsuleView =
                call(socket, Method::GET, &capsule_path(&view.id, ""), None).await?;
            let (_, lines) = read_logs(socket, &view.id, None, None)
                .await
                .unwrap_or_default();
            print_lines(&lines, false)?;
            StreamEnd {
                exit_code: v.exit.map_or(125, |e| e.exit_code),
                oom: v.exit.is_some_and(|e| e.oom),
                error: None,
            }
        }
        Err(e) => return Err(e),
    };
    Ok(end_code(&end))
}

fn end_code(end: &StreamEnd) -> ExitCode {
    if let Some(e) = &end.error {
        eprintln!("bolt: {e}");
    }
    exit_code(end.exit_code)
}

/// Forwards SIGINT and SIGTERM to the capsule while a foreground `run` streams it.
fn spawn_signal_proxy(socket: PathBuf, id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for _ in 0..3 {
            let sig = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            let path = format!("{}?signal={sig}", capsule_path(&id, "/kill"));
            let _ = call::<CapsuleView>(&socket, Method::POST, &path, None).await;
        }
        // A capsule whose first process ignores the signals (pid 1 without a handler does)
        // would hold the terminal forever: the third one detaches, as docker's CLI does.
        eprintln!("bolt: got 3 signals; detaching (the capsule keeps running)");
        std::process::exit(130);
    })
}

async fn exec(socket: &Path, args: ExecArgs) -> CliResult<ExitCode> {
    let req = ExecRequest {
        cmd: args.command.clone(),
        env: collect_env(&args.env, &[], |k| std::env::var(k).ok())
            .map_err(CapsuleCliError::Usage)?,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        stdin: args.interactive,
    };
    let first = serde_json::to_string(&req).map_err(json_err)?;
    let path = capsule_path(&args.capsule, "/exec");
    let end = stream_session(socket, &path, Some(first), args.interactive, args.tty).await?;
    Ok(end_code(&end))
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                s,
            );
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Reads this process's stdin on a thread: chunks, then `None` at the end.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16384];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx
                        .blocking_send(Some(buf.get(..n).unwrap_or_default().to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn ws_frame(kind: u8, payload: &[u8]) -> Message {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(kind);
    v.extend_from_slice(payload);
    Message::Binary(v.into())
}

/// An attach or exec session over a WebSocket: output frames to stdout/stderr, stdin (with
/// `stdin`) and terminal size (with `tty`) to the agent, until the [`StreamEnd`].
async fn stream_session(
    socket: &Path,
    path: &str,
    first: Option<String>,
    stdin: bool,
    tty: bool,
) -> CliResult<StreamEnd> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let io = connect(socket).await?;
    let url = format!("ws://localhost{path}");
    let (mut ws, _) = match tokio_tungstenite::client_async(url, io).await {
        Ok(v) => v,
        Err(WsError::Http(resp)) => {
            let status = resp.status();
            let body = resp.body().clone().unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Err(e) => return Err(CapsuleCliError::Stream(format!("attach: {e}"))),
    };
    if let Some(text) = first {
        ws.send(Message::Text(text.into()))
            .await
            .map_err(|e| CapsuleCliError::Stream(e.to_string()))?;
    }
    let _raw = (tty && stdin).then(RawMode::enter);
    if tty {
        if let Some((rows, cols)) = window_size() {
            let _ = ws
                .send(ws_frame(frame::RESIZE, &frame::resize(rows, cols)))
                .await;
        }
    }
    let mut input = stdin.then(stdin_reader);
    let mut winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut end = None;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let Some((&kind, payload)) = b.split_first() else { continue };
                    if kind == frame::STDERR {
                        let mut e = std::io::stderr().lock();
                        e.write_all(payload)?;
                        e.flush()?;
                    } else {
                        let mut o = std::io::stdout().lock();
                        o.write_all(payload)?;
                        o.flush()?;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    end = serde_json::from_str::<StreamEnd>(t.as_str()).ok();
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if end.is_some() {
                        break;
                    }
                    return Err(CapsuleCliError::Stream(format!("the stream broke: {e}")));
                }
            },
            chunk = async {
                match input.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match chunk {
                Some(Some(data)) => {
                    let _ = ws.send(ws_frame(frame::STDIN, &data)).await;
                }
                Some(None) | None => {
                    let _ = ws.send(ws_frame(frame::STDIN_EOF, &[])).await;
                    input = None;
                }
            },
            _ = async {
                match winch.as_mut() {
                    Some(s) => { s.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some((rows, cols)) = window_size() {
                    let _ = ws.send(ws_frame(frame::RESIZE, &frame::resize(rows, cols))).await;
                }
            }
        }
    }
    end.ok_or_else(|| {
        CapsuleCliError::Stream("the agent closed the stream without an exit status".into())
    })
}

// ---------------------------------------------------------------------------------------------
// logs
// ---------------------------------------------------------------------------------------------

/// Parses `--since`: RFC 3339 (`2026-11-02T10:00:00Z`, offsets allowed), unix seconds
/// (`1700000000` or with a fraction), or a duration before `now_ms` (`90s`, `10m`, `1h30m`).
/// Returns ms since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    let bad =
        || format!("invalid --since {s:?}: use RFC 3339, unix seconds or a duration like 10m");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let v: f64 = t.parse().map_err(|_| bad())?;
        return Ok((v * 1000.0) as u64);
    }
    if let Some(d) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(d));
    }
    parse_rfc3339_ms(t).ok_or_else(bad)
}

fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1.0
        } else {
            match c {
                'h' => 3_600_000.0,
                'm' => 60_000.0,
                's' => 1000.0,
                _ => return None,
            }
        };
        let v: f64 = num.parse().ok()?;
        total = total.saturating_add((v * unit) as u64);
        num.clear();
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset_s) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off.get(1..)?.split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    } else {
        (time, 0)
    };
    let mut c = clock.split(':');
    let h: i64 = c.next()?.parse().ok()?;
    let mi: i64 = c.next()?.parse().ok()?;
    let sec: f64 = c.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || sec >= 61.0 {
        return None;
    }
    // days_from_civil (H. Hinnant).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 - offset_s;
    let ms = secs as f64 * 1000.0 + sec * 1000.0;
    (ms >= 0.0).then_some(ms as u64)
}

async fn read_logs(
    socket: &Path,
    key: &str,
    since: Option<u64>,
    tail: Option<usize>,
) -> CliResult<(u16, Vec<LogLine>)> {
    let mut path = format!("{}?follow=false", capsule_path(key, "/logs"));
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    let resp = send(socket, Method::GET, &path, None).await?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CapsuleCliError::Stream(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<LogLine>(l).ok())
        .collect();
    Ok((status.as_u16(), lines))
}

fn print_lines(lines: &[LogLine], timestamps: bool) -> CliResult<()> {
    for l in lines {
        print_line(l, timestamps)?;
    }
    Ok(())
}

fn print_line(l: &LogLine, timestamps: bool) -> CliResult<()> {
    let text = if timestamps {
        format!("{} {}\n", crate::cli::format_time_ms(l.time_ms), l.line)
    } else {
        format!("{}\n", l.line)
    };
    if l.stream == "stderr" {
        let mut e = std::io::stderr().lock();
        e.write_all(text.as_bytes())?;
        e.flush()?;
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes())?;
        o.flush()?;
    }
    Ok(())
}

async fn logs(
    socket: &Path,
    key: &str,
    follow: bool,
    since: Option<&str>,
    tail: Option<&str>,
    timestamps: bool,
) -> CliResult<()> {
    let since = since
        .map(|s| parse_since(s, now_ms()).map_err(CapsuleCliError::Usage))
        .transpose()?;
    let tail = match tail {
        None | Some("all") => None,
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            CapsuleCliError::Usage(format!("invalid --tail {t:?}: use a number or all"))
        })?),
    };
    if !follow {
        let (_, lines) = read_logs(socket, key, since, tail).await?;
        return print_lines(&lines, timestamps);
    }
    let mut path = format!("{}?follow=true", capsule_path(key, "/logs"));
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    let resp = send(socket, Method::GET, &path, None).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| CapsuleCliError::Stream(e.to_string()))?
            .to_bytes();
        return Err(api_error(status, &bytes));
    }
    let mut partial = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CapsuleCliError::Stream(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                print_line(&l, timestamps)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// docker's human duration: `Less than a second`, `5 seconds`, `About a minute`, `3 hours`...
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match s {
        0 => "Less than a second".into(),
        1..=59 => plural(s, "second"),
        60..=119 => "About a minute".into(),
        120..=3599 => plural(s / 60, "minute"),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => plural(s / 3600, "hour"),
        172_800..=1_209_599 => plural(s / 86_400, "day"),
        1_209_600..=5_183_999 => plural(s / 604_800, "week"),
        5_184_000..=63_071_999 => plural(s / 2_592_000, "month"),
        _ => plural(s / 31_536_000, "year"),
    }
}

/// `HH:MM` of a time in seconds since the epoch (UTC).
pub fn clock(secs: u64) -> String {
    let rem = secs % 86_400;
    format!("{:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// The STATUS column: `Up 5 seconds`, `Exited (0) 2 minutes ago`, `Created`.
pub fn status_text(c: &CapsuleView, now_ms: u64) -> String {
    use bolt_state::CapsuleStatus as S;
    match c.status {
        S::Running => format!(
            "Up {}",
            human_duration(now_ms.saturating_sub(c.started.unwrap_or(c.created)))
        ),
        S::Exited => {
            let code = c.exit.map_or(-1, |e| e.exit_code);
            let oom = if c.exit.is_some_and(|e| e.oom) {
                ", OOM"
            } else {
                ""
            };
            format!(
                "Exited ({code}{oom}) {} ago",
                human_duration(now_ms.saturating_sub(c.finished.unwrap_or(c.created)))
            )
        }
        S::Created => "Created".into(),
        S::Removed => "Removed".into(),
    }
}

fn quoted_command(cmd: &[String]) -> String {
    let full = cmd.join(" ");
    let shown: String = if full.chars().count() > 20 {
        let mut s: String = full.chars().take(19).collect();
        s.push('…');
        s
    } else {
        full
    };
    format!("\"{shown}\"")
}

/// `bolt ps`: CAPSULE ID, IMAGE, COMMAND, CREATED, STATUS, NAMES.
pub fn render_ps(list: &[CapsuleView], now_ms: u64) -> String {
    let mut rows = vec![[
        "CAPSULE ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
    ]
    .map(String::from)
    .to_vec()];
    for c in list {
        rows.push(vec![
            short(&c.id),
            c.image.clone(),
            quoted_command(&c.command),
            format!("{} ago", human_duration(now_ms.saturating_sub(c.created))),
            status_text(c, now_ms),
            c.name.clone(),
        ]);
    }
    crate::cli::table::align(&rows, 3)
}

/// `bolt top`.
pub fn render_top(top: &TopView) -> String {
    let mut rows = vec![top.titles.clone()];
    rows.extend(top.processes.iter().cloned());
    crate::cli::table::align(&rows, 3)
}

/// `bolt inspect` for people: one `key  value` line per field.
pub fn render_inspect(c: &CapsuleView) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let spec = &c.spec;
    let mut rows: Vec<Vec<String>> = vec![
        vec!["id".into(), c.id.clone()],
        vec!["name".into(), c.name.clone()],
        vec!["status".into(), format!("{:?}", c.status).to_lowercase()],
        vec!["image".into(), c.image.clone()],
        vec!["image digest".into(), c.image_digest.clone()],
        vec!["command".into(), c.command.join(" ")],
        vec!["pid".into(), opt(c.pid.map(|p| p.to_string()))],
        vec![
            "exit".into(),
            opt(c.exit.map(|e| {
                format!(
                    "{} (code {}, signal {}, oom {})",
                    e.exit_code,
                    e.code.map_or("-".into(), |v| v.to_string()),
                    e.signal.map_or("-".into(), |v| v.to_string()),
                    e.oom
                )
            })),
        ],
        vec!["restart policy".into(), c.restart.clone()],
        vec!["restarts".into(), c.restarts.to_string()],
        vec!["created".into(), crate::cli::format_time_ms(c.created)],
        vec![
            "started".into(),
            opt(c.started.map(crate::cli::format_time_ms)),
        ],
        vec![
            "finished".into(),
            opt(c.finished.map(crate::cli::format_time_ms)),
        ],
        vec!["node".into(), c.node.clone()],
        vec!["network".into(), spec.network.clone()],
        vec!["hostname".into(), opt(spec.hostname.clone())],
        vec!["user".into(), opt(spec.user.clone())],
        vec!["workdir".into(), opt(spec.workdir.clone())],
        vec![
            "memory".into(),
            opt(spec.memory_bytes.map(|m| m.to_string())),
        ],
        vec![
            "cpus".into(),
            opt(spec
                .cpu_millis
                .map(|m| format!("{}", f64::from(m) / 1000.0))),
        ],
        vec![
            "pids limit".into(),
            opt(spec.pids_limit.map(|m| m.to_string())),
        ],
    ];
    for e in &spec.env {
        rows.push(vec!["env".into(), e.clone()]);
    }
    for (k, v) in &spec.labels {
        rows.push(vec!["label".into(), format!("{k}={v}")]);
    }
    let mut s = crate::cli::table::align(&rows, 3);
    s.push('\n');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bolt_state::CapsuleStatus;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: CapsuleCommand,
    }

    fn parse(args: &[&str]) -> CapsuleCommand {
        let mut v = vec!["bolt"];
        v.extend_from_slice(args);
        T::try_parse_from(v).unwrap().cmd
    }

    fn view(status: CapsuleStatus) -> CapsuleView {
        CapsuleView {
            id: "0123456789abcdef".repeat(4),
            name: "web".into(),
            image: "busybox:latest".into(),
            image_digest: "sha256:x".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "sleep 1000; echo done and more".into(),
            ],
            status,
            pid: Some(42),
            exit: None,
            restarts: 0,
            restart: "no".into(),
            created: 1_000_000,
            started: Some(1_000_000),
            finished: None,
            node: "n".into(),
            spec: Default::default(),
            addresses: Default::default(),
        }
    }

    #[test]
    fn run_takes_dockers_flags_and_keeps_the_command_whole() {
        let CapsuleCommand::Run(r) = parse(&[
            "run",
            "-d",
            "--rm",
            "--name",
            "x",
            "-e",
            "A=1",
            "-w",
            "/w",
            "-u",
            "1:2",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "7",
            "-it",
            "img",
            "sh",
            "-c",
            "echo -n hi",
        ]) else {
            panic!()
        };
        assert!(r.detach && r.rm && r.interactive && r.tty);
        assert_eq!(r.image, "img");
        assert_eq!(r.command, ["sh", "-c", "echo -n hi"]);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(
            r.network, None,
            "no --network: the agent's --default-network decides"
        );
        let req = create_request(&r).unwrap();
        assert_eq!(req.memory_bytes, Some(64 << 20));
        assert_eq!(req.cpu_millis, Some(500));
        assert_eq!(req.pids_limit, Some(7));
        assert!(!req.attach, "-d does not attach");
    }

    #[test]
    fn bad_flags_are_usage_errors_with_125() {
        let CapsuleCommand::Run(r) = parse(&["run", "--memory", "12qq", "img"]) else {
            panic!()
        };
        let e = create_request(&r).unwrap_err();
        assert!(matches!(e, CapsuleCliError::Usage(_)), "{e}");
        assert_eq!(e.exit_code(), 125);
        assert!(e.to_string().contains("12qq"));
        let CapsuleCommand::Run(r) = parse(&["run", "--rm", "--restart", "always", "img"]) else {
            panic!()
        };
        assert!(create_request(&r).is_err());
        let CapsuleCommand::Run(r) = parse(&["run", "--restart", "sometimes", "img"]) else {
            panic!()
        };
        assert!(create_request(&r).is_err());
    }

    #[test]
    fn env_files_and_bare_keys() {
        let files = vec![(PathBuf::from("f"), "# c\n\nA=1\nB\nC=x=y\n".to_string())];
        let env = collect_env(&["D".into(), "E=2".into()], &files, |k| {
            (k == "B").then(|| "from-env".to_string())
        })
        .unwrap();
        assert_eq!(env, ["A=1", "B=from-env", "C=x=y", "E=2"]);
        assert!(collect_env(&["=x".into()], &[], |_| None).is_err());
    }

    #[test]
    fn since_accepts_rfc3339_unix_and_durations() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("1h30m", now).unwrap(), now - 5_400_000);
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00", now).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("", now).is_err());
    }

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(500), "Less than a second");
        assert_eq!(human_duration(1000), "1 second");
        assert_eq!(human_duration(45_000), "45 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(600_000), "10 minutes");
        assert_eq!(human_duration(3 * 3_600_000), "3 hours");
        assert_eq!(human_duration(3 * 86_400_000), "3 days");
    }

    #[test]
    fn ps_shows_status_and_a_short_quoted_command() {
        let mut exited = view(CapsuleStatus::Exited);
        exited.name = "done".into();
        exited.finished = Some(1_000_000);
        exited.exit = Some(crate::api::capsules::ExitView {
            code: None,
            signal: Some(9),
            oom: true,
            exit_code: 137,
        });
        let text = render_ps(&[view(CapsuleStatus::Running), exited], 1_005_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("CAPSULE ID"));
        assert!(lines[1].contains("0123456789ab"));
        assert!(!lines[1].contains("0123456789abc"), "ids are short");
        assert!(lines[1].contains("Up 5 seconds"), "{}", lines[1]);
        assert!(
            lines[1].contains("\"sh -c sleep 1000; e…\""),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("Exited (137, OOM) 5 seconds ago"),
            "{}",
            lines[2]
        );
        // Columns align by characters (the command has a multibyte ellipsis).
        let name_col = lines[0].chars().count() - "NAMES".len();
        let row: String = lines[1].chars().skip(name_col).collect();
        assert_eq!(row, "web");
    }

    #[test]
    fn top_and_inspect_render() {
        let top = TopView {
            titles: vec!["UID".into(), "PID".into(), "CMD".into()],
            processes: vec![vec!["0".into(), "12".into(), "sleep 5".into()]],
        };
        let t = render_top(&top);
        assert!(t.lines().nth(1).unwrap().ends_with("sleep 5"));
        let i = render_inspect(&view(CapsuleStatus::Running));
        assert!(i.contains("status") && i.contains("running"));
        assert!(i.contains("pid") && i.contains("42"));
    }

    #[test]
    fn clock_is_hours_and_minutes() {
        assert_eq!(clock(3600 * 13 + 60 * 5 + 7), "13:05");
    }
}
