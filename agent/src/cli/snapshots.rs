//! `bolt snapshot create/ls/restore/rm` and `bolt commit`.
//!
//! Snapshot targets are written `capsule:NAME` (a capsule's writable layer) or `volume:NAME`;
//! docker has no snapshots, so the kind is always spelled out.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;

use crate::cli::util::{block_on, each_name, json_err, write_list};
use crate::cli::{CliError, Format};
use crate::client::{encode_segment, Client};
use crate::wire::snapshots::{CommitRequest, CommitView, SnapshotView};
use crate::wire::snapshots::{CreateSnapshotRequest, PATH_COMMIT, PATH_SNAPSHOTS};
use crate::wire::time::now_ms;

/// `bolt snapshot <command>`. TARGET is `capsule:NAME` or `volume:NAME`; the agent root must
/// be on btrfs.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a read-only snapshot of a capsule's writable layer or of a volume.
    Create {
        /// `capsule:NAME` or `volume:NAME`.
        target: String,
        /// Snapshot name: letters, digits, `_`, `.`, `-`.
        name: String,
    },
    /// List snapshots (of one target when given), oldest first.
    #[command(alias = "list")]
    Ls {
        /// `capsule:NAME` or `volume:NAME`.
        target: Option<String>,
        /// Print `TARGET NAME` only.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Replace the target's content with a snapshot's (stop the capsule, or the capsules that
    /// mount the volume, first). The snapshot stays.
    Restore {
        /// `capsule:NAME` or `volume:NAME`.
        target: String,
        /// Snapshot name.
        name: String,
    },
    /// Delete snapshots of a target.
    #[command(alias = "remove")]
    Rm {
        /// `capsule:NAME` or `volume:NAME`.
        target: String,
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `bolt commit [-m MSG] [-a AUTHOR] [-c INSTR]... CAPSULE IMAGE[:TAG]`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Commit message (the history entry's comment).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author.
    #[arg(short, long)]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction: CMD, ENTRYPOINT or ENV.
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Pause (freeze) a running capsule while its layer is read (`--pause=false` commits it
    /// live).
    #[arg(
        short,
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub pause: bool,
    /// Capsule name, id or id prefix.
    pub capsule: String,
    /// The new image's reference, `repo[:tag]`.
    pub reference: String,
}

/// Runs a snapshot command.
pub fn run(socket: PathBuf, cmd: SnapshotCommand) -> Result<ExitCode, CliError> {
    block_on(run_async(&Client::new(socket), cmd))
}

/// Runs `bolt commit`: prints the new image's id (manifest digest).
pub fn commit(socket: PathBuf, args: CommitArgs) -> Result<ExitCode, CliError> {
    let req = CommitRequest {
        capsule: args.capsule,
        reference: args.reference,
        comment: args.message,
        author: args.author,
        changes: args.change,
        pause: args.pause,
    };
    let v: CommitView = block_on(async {
        let body = serde_json::to_vec(&req).map_err(json_err)?;
        Ok(Client::new(socket)
            .call(Method::POST, PATH_COMMIT, Some(body))
            .await?)
    })?;
    if let Some(note) = &v.note {
        eprintln!("warning: {note}");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", v.image.image.digest)?;
    Ok(ExitCode::SUCCESS)
}

fn snapshot_path(target: &str, name: &str, suffix: &str) -> String {
    format!(
        "{PATH_SNAPSHOTS}/{}/{}{suffix}",
        encode_segment(target),
        encode_segment(name)
    )
}

async fn run_async(client: &Client, cmd: SnapshotCommand) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        SnapshotCommand::Create { target, name } => {
            let req = CreateSnapshotRequest { target, name };
            let body = serde_json::to_vec(&req).map_err(json_err)?;
            let v: SnapshotView = client
                .call(Method::POST, PATH_SNAPSHOTS, Some(body))
                .await?;
            writeln!(out, "{}", v.name)?;
        }
        SnapshotCommand::Ls {
            target,
            quiet,
            format,
        } => {
            let path = match &target {
                Some(t) => format!("{PATH_SNAPSHOTS}?target={}", encode_segment(t)),
                None => PATH_SNAPSHOTS.to_owned(),
            };
            let list: Vec<SnapshotView> = client.call(Method::GET, &path, None).await?;
            write_list(
                &mut out,
                &list,
                quiet,
                format,
                |v| format!("{}:{} {}", v.target_kind, v.target_name, v.name),
                |l| render_ls(l, now_ms()),
            )?;
        }
        SnapshotCommand::Restore { target, name } => {
            let path = snapshot_path(&target, &name, "/restore");
            client
                .call::<serde_json::Value>(Method::POST, &path, None)
                .await?;
            writeln!(out, "{name}")?;
        }
        SnapshotCommand::Rm { target, names } => {
            let removed = each_name(&mut out, names, async |name: &str| {
                let path = snapshot_path(&target, name, "");
                client
                    .call::<serde_json::Value>(Method::DELETE, &path, None)
                    .await
            });
            if !removed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "3 minutes ago", docker style.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    let (n, unit) = match s {
        0..=59 => return "less than a minute ago".to_owned(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// The `bolt snapshot ls` table.
pub fn render_ls(list: &[SnapshotView], now_ms: u64) -> String {
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|v| {
            [
                format!("{}:{}", v.target_kind, v.target_name),
                v.name.clone(),
                ago(now_ms, v.created_ms),
                v.restores.to_string(),
            ]
        })
        .collect();
    let head = ["TARGET", "SNAPSHOT", "CREATED", "RESTORES"].map(str::to_owned);
    let all: Vec<[String; 4]> = std::iter::once(head).chain(rows).collect();
    crate::cli::table::align(&all, 3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn snap(kind: &str, target: &str, name: &str, created_ms: u64) -> SnapshotView {
        SnapshotView {
            target_kind: kind.into(),
            target: format!("id-{target}"),
            target_name: target.into(),
            name: name.into(),
            created_ms,
            restores: 2,
            restored_ms: None,
            node: "abc".into(),
            path: "/x".into(),
        }
    }

    #[test]
    fn ls_shows_kind_and_name_of_each_target() {
        let now = 10_000_000;
        let t = render_ls(
            &[
                snap("capsule", "web", "before-upgrade", now - 120_000),
                snap("volume", "data", "v1", now - 5_000),
            ],
            now,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("TARGET"), "{t}");
        assert!(lines[1].starts_with("capsule:web"), "{t}");
        assert!(lines[1].contains("before-upgrade   2 minutes ago"), "{t}");
        assert!(lines[1].ends_with(" 2"), "{t}");
        assert!(lines[2].starts_with("volume:data"), "{t}");
        assert!(lines[2].contains("less than a minute ago"), "{t}");
        assert_eq!(render_ls(&[], now).lines().count(), 1);
    }

    #[test]
    fn snapshot_paths_encode_the_target() {
        assert_eq!(
            snapshot_path("capsule:web", "s1", "/restore"),
            "/v1/snapshots/capsule%3Aweb/s1/restore"
        );
    }

    #[derive(Debug, clap::Parser)]
    struct CommitCli {
        #[command(flatten)]
        args: CommitArgs,
    }

    #[test]
    fn commit_pause_flag_is_like_docker() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["commit"];
            argv.extend_from_slice(extra);
            argv.extend_from_slice(&["web", "img:1"]);
            CommitCli::try_parse_from(argv).map(|c| c.args.pause)
        };
        assert!(parse(&[]).unwrap());
        assert!(parse(&["-p"]).unwrap());
        assert!(parse(&["--pause"]).unwrap());
        assert!(parse(&["--pause=true"]).unwrap());
        assert!(!parse(&["--pause=false"]).unwrap());
        assert!(!parse(&["-p=false"]).unwrap());
        assert!(parse(&["--pause=maybe"]).is_err());
    }
}
