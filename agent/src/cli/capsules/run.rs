//! `bolt run`, `bolt exec` and the foreground stream: the create request from docker's flags,
//! the environment from `-e`/`--env-file`, signal forwarding, and docker's exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;

use crate::cli::capsules::{capsule_path, exit_code, print_lines, CliResult, ExecArgs, RunArgs};
use crate::cli::util::json_err;
use crate::cli::CliError;
use crate::client::{Client, ClientError};
use crate::wire::capsules::{
    CapsuleView, CreateRequest, ExecRequest, RestartPolicy, StreamEnd, LABEL_WARNINGS,
    PATH_CAPSULES,
};
use crate::wire::parse::{parse_cpus, parse_size};

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
        let text = std::fs::read_to_string(p).map_err(|source| CliError::Read {
            path: p.clone(),
            source,
        })?;
        files.push((p.clone(), text));
    }
    let env = collect_env(&args.env, &files, |k| std::env::var(k).ok()).map_err(CliError::Usage)?;
    let memory_bytes = args
        .memory
        .as_deref()
        .map(|m| parse_size(m).map_err(|e| CliError::Usage(format!("--memory: {e}"))))
        .transpose()?;
    let cpu_millis = args
        .cpus
        .as_deref()
        .map(|c| parse_cpus(c).map_err(CliError::Usage))
        .transpose()?;
    if args.pids_limit == Some(0) {
        return Err(CliError::Usage("--pids-limit must be positive".into()));
    }
    args.restart
        .parse::<RestartPolicy>()
        .map_err(CliError::Usage)?;
    if args.rm && args.restart != "no" {
        return Err(CliError::Usage(
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
        devices: args.device.clone(),
    })
}

pub(crate) async fn run_capsule(client: &Client, args: RunArgs) -> CliResult<ExitCode> {
    let req = create_request(&args)?;
    let body = serde_json::to_vec(&req).map_err(json_err)?;
    let view: CapsuleView = client.call(Method::POST, PATH_CAPSULES, Some(body)).await?;
    // What the agent ignored (a rootless agent's limits), as podman prints it.
    if let Some(w) = view.spec.labels.get(LABEL_WARNINGS) {
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
    let proxy = (!args.tty).then(|| spawn_signal_proxy(client.clone(), view.id.clone()));
    let end = client
        .stream_session(&path, None, args.interactive, args.tty)
        .await;
    if let Some(p) = proxy {
        p.abort();
    }
    let end = match end {
        Ok(end) => end,
        // The capsule ended before we attached and its output went with `--rm`: the state
        // still knows how it ended.
        Err(ClientError::Api { status: 409, .. }) => {
            let v: CapsuleView = client
                .call(Method::GET, &capsule_path(&view.id, ""), None)
                .await?;
            let lines = client.logs(&view.id, None, None).await.unwrap_or_default();
            print_lines(&lines, false)?;
            StreamEnd {
                exit_code: v.exit.map_or(125, |e| e.exit_code),
                oom: v.exit.is_some_and(|e| e.oom),
                error: None,
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok(end_code(&end))
}

pub(crate) fn end_code(end: &StreamEnd) -> ExitCode {
    if let Some(e) = &end.error {
        eprintln!("bolt: {e}");
    }
    exit_code(end.exit_code)
}

/// Forwards SIGINT and SIGTERM to the capsule while a foreground `run` streams it.
fn spawn_signal_proxy(client: Client, id: String) -> tokio::task::JoinHandle<()> {
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
            let _ = client.call::<CapsuleView>(Method::POST, &path, None).await;
        }
        // A capsule whose first process ignores the signals (pid 1 without a handler does)
        // would hold the terminal forever: the third one detaches, as docker's CLI does.
        eprintln!("bolt: got 3 signals; detaching (the capsule keeps running)");
        std::process::exit(130);
    })
}

pub(crate) async fn exec(client: &Client, args: ExecArgs) -> CliResult<ExitCode> {
    let req = ExecRequest {
        cmd: args.command.clone(),
        env: collect_env(&args.env, &[], |k| std::env::var(k).ok()).map_err(CliError::Usage)?,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        stdin: args.interactive,
    };
    let first = serde_json::to_string(&req).map_err(json_err)?;
    let path = capsule_path(&args.capsule, "/exec");
    let end = client
        .stream_session(&path, Some(first), args.interactive, args.tty)
        .await?;
    Ok(end_code(&end))
}
