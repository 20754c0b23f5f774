//! The capsule commands of the `bolt` command line, with docker's flags: `run`, `ps`, `logs`,
//! `exec`, `attach`, `top`, `stop`, `kill`, `rm`, `inspect`, and the hidden `supervise` (the
//! per-capsule supervisor process, see [`crate::shim`]).
//!
//! Rendering is pure (`render_*` take API views and the time) and tested without an agent.
//! Exit codes follow docker: a foreground `run` exits with the capsule's code; 125 when Bolt
//! fails, 126 when the command cannot be executed, 127 when it is not found.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bolt_capsule::runtime::supervisor::LogLine;
use clap::{Args, Subcommand};
use hyper::Method;

mod render;
mod run;

use crate::cli::util::{each_name, json_err, write_list};
use crate::cli::{CliError, Format};
use crate::client::{encode_segment, Client, ClientError};
use crate::wire::capsules::{
    short, CapsuleView, TopView, DEFAULT_STOP_TIMEOUT, LABEL_STDIN, LABEL_TTY, PATH_CAPSULES,
};
use crate::wire::time::{format_time_ms, now_ms, parse_since};

pub use render::*;
pub use run::{collect_env, create_request};

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
        /// Every node's capsules, not only this node's.
        #[arg(long)]
        all_nodes: bool,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
        /// `json` prints one capsule per line.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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
        format: Format,
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
    /// Give the capsule a host device: /dev/HOST[:/dev/CONTAINER][:rwm].
    #[arg(long = "device", value_name = "HOST[:CONTAINER][:PERMS]")]
    pub device: Vec<String>,
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

pub(crate) type CliResult<T> = Result<T, CliError>;

/// Runs a capsule command.
/// (`bolt supervise DIR` is run by the binary itself, before the command line is parsed: it
/// is the supervisor process, not a client of the agent.)
pub fn run(socket: PathBuf, cmd: CapsuleCommand) -> Result<ExitCode, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let is_run = matches!(cmd, CapsuleCommand::Run(_) | CapsuleCommand::Exec(_));
    match rt.block_on(run_async(&Client::new(socket), cmd)) {
        Ok(code) => Ok(code),
        // run and exec report with docker's codes; the rest exit 1 through the caller.
        Err(e) if is_run => {
            eprintln!("bolt: {e}");
            Ok(exit_code(e.exit_code()))
        }
        Err(e) => Err(e),
    }
}

/// A process exit code from a shell-style one (clamped to 0..=255).
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}

async fn run_async(client: &Client, cmd: CapsuleCommand) -> CliResult<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        CapsuleCommand::Run(args) => return run::run_capsule(client, args).await,
        CapsuleCommand::Exec(args) => return run::exec(client, args).await,
        CapsuleCommand::Attach { no_stdin, capsule } => {
            let view: CapsuleView = client
                .call(Method::GET, &capsule_path(&capsule, ""), None)
                .await?;
            let stdin = !no_stdin
                && view
                    .spec
                    .labels
                    .get(LABEL_STDIN)
                    .is_some_and(|v| v == "true");
            let tty = view.spec.labels.get(LABEL_TTY).is_some_and(|v| v == "true");
            let path = format!("{}?stdin={stdin}", capsule_path(&view.id, "/attach"));
            let end = client.stream_session(&path, None, stdin, tty).await?;
            return Ok(run::end_code(&end));
        }
        CapsuleCommand::Ps {
            all,
            all_nodes,
            quiet,
            format,
        } => {
            let list: Vec<CapsuleView> = client
                .call(
                    Method::GET,
                    &format!("{PATH_CAPSULES}?all={all}&all_nodes={all_nodes}"),
                    None,
                )
                .await?;
            write_list(
                &mut out,
                &list,
                quiet,
                format,
                |c| short(&c.id),
                |l| render_ps_nodes(l, now_ms(), all_nodes),
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
                client,
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
            let top: TopView = client
                .call(Method::GET, &capsule_path(&capsule, "/top"), None)
                .await?;
            out.write_all(render_top(&top).as_bytes())?;
        }
        CapsuleCommand::Start { capsules } => {
            let started = each_name(&mut out, capsules, async |c: &str| {
                client
                    .call::<CapsuleView>(Method::POST, &capsule_path(c, "/start"), None)
                    .await
            });
            if !started.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Stop { time, capsules } => {
            let stopped = each_name(&mut out, capsules, async |c: &str| {
                let path = format!("{}?timeout={time}", capsule_path(c, "/stop"));
                client.call::<CapsuleView>(Method::POST, &path, None).await
            });
            if !stopped.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Kill { signal, capsules } => {
            let killed = each_name(&mut out, capsules, async |c: &str| {
                let path = format!(
                    "{}?signal={}",
                    capsule_path(c, "/kill"),
                    encode_segment(&signal)
                );
                client.call::<CapsuleView>(Method::POST, &path, None).await
            });
            if !killed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Rm { force, capsules } => {
            let removed = each_name(&mut out, capsules, async |c: &str| {
                let path = format!("{}?force={force}", capsule_path(c, ""));
                client
                    .call::<serde_json::Value>(Method::DELETE, &path, None)
                    .await
            });
            if !removed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        CapsuleCommand::Inspect { format, capsules } => {
            let mut views = Vec::new();
            for c in capsules {
                views.push(
                    client
                        .call::<CapsuleView>(Method::GET, &capsule_path(&c, ""), None)
                        .await?,
                );
            }
            match format {
                Format::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&views).map_err(json_err)?
                )?,
                Format::Table => {
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

pub(crate) fn capsule_path(key: &str, suffix: &str) -> String {
    format!("{PATH_CAPSULES}/{}{suffix}", encode_segment(key))
}

// ---------------------------------------------------------------------------------------------
// logs
// ---------------------------------------------------------------------------------------------

pub(crate) fn print_lines(lines: &[LogLine], timestamps: bool) -> CliResult<()> {
    for l in lines {
        print_line(l, timestamps)?;
    }
    Ok(())
}

fn print_line(l: &LogLine, timestamps: bool) -> CliResult<()> {
    let text = if timestamps {
        format!("{} {}\n", format_time_ms(l.time_ms), l.line)
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
    client: &Client,
    key: &str,
    follow: bool,
    since: Option<&str>,
    tail: Option<&str>,
    timestamps: bool,
) -> CliResult<()> {
    let since = since
        .map(|s| parse_since(s, now_ms()).map_err(CliError::Usage))
        .transpose()?;
    let tail =
        match tail {
            None | Some("all") => None,
            Some(t) => Some(t.parse::<usize>().map_err(|_| {
                CliError::Usage(format!("invalid --tail {t:?}: use a number or all"))
            })?),
        };
    if !follow {
        let lines = client.logs(key, since, tail).await?;
        return print_lines(&lines, timestamps);
    }
    client
        .follow_logs(key, since, tail, |l| {
            print_line(l, timestamps).map_err(|e| match e {
                CliError::Output(io) => ClientError::Output(io),
                other => ClientError::Stream(other.to_string()),
            })
        })
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::capsules::ExitView;
    use crate::wire::time::clock;
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
        assert!(matches!(e, CliError::Usage(_)), "{e}");
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
        exited.exit = Some(ExitView {
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
        // With --all-nodes, a NODE column with the short id of the node it runs on.
        let mut remote = view(CapsuleStatus::Running);
        remote.node = "abcdef0123456789abcdef".into();
        let text = render_ps_nodes(&[remote], 1_005_000, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("NODE"), "{}", lines[0]);
        assert!(lines[1].ends_with("abcdef012345"), "{}", lines[1]);
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
