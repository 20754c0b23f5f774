//! `bolt volume create/ls/rm/inspect/prune`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bolt_capsule::storage::{PruneReport, Volume};
use clap::Subcommand;
use hyper::Method;

use crate::cli::util::{block_on, each_name, inspect_named, json_err, write_list};
use crate::cli::{CliError, Format};
use crate::client::{encode_segment, Client};
use crate::wire::volumes::{CreateVolumeRequest, PATH_VOLUMES, PATH_VOLUMES_PRUNE};

/// `bolt volume <command>`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume.
    Create {
        /// Labels, KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Name.
        name: String,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove volumes no live capsule mounts.
    #[command(alias = "remove")]
    Rm {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show volumes as JSON.
    Inspect {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove unused anonymous volumes (all unused ones with `--all`).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
    },
}

/// Runs a volume command.
pub fn run(socket: PathBuf, cmd: VolumeCommand) -> Result<ExitCode, CliError> {
    block_on(run_async(&Client::new(socket), cmd))
}

/// Parses `KEY=VALUE` labels.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, String> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("invalid label {l:?}: expected KEY=VALUE")),
        })
        .collect()
}

async fn run_async(client: &Client, cmd: VolumeCommand) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        VolumeCommand::Create { labels, name } => {
            let labels = match parse_labels(&labels) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("bolt: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let req = CreateVolumeRequest { name, labels };
            let body = serde_json::to_vec(&req).map_err(json_err)?;
            let v: Volume = client.call(Method::POST, PATH_VOLUMES, Some(body)).await?;
            writeln!(out, "{}", v.name)?;
        }
        VolumeCommand::Ls { quiet, format } => {
            let list: Vec<Volume> = client.call(Method::GET, PATH_VOLUMES, None).await?;
            write_list(
                &mut out,
                &list,
                quiet,
                format,
                |v| v.name.clone(),
                render_ls,
            )?;
        }
        VolumeCommand::Rm { names } => {
            let removed = each_name(&mut out, names, async |name: &str| {
                let path = format!("{PATH_VOLUMES}/{}", encode_segment(name));
                client
                    .call::<serde_json::Value>(Method::DELETE, &path, None)
                    .await
            });
            if !removed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::Inspect { names } => {
            inspect_named::<Volume>(&mut out, client, PATH_VOLUMES, names).await?;
        }
        VolumeCommand::Prune { all } => {
            let path = format!("{PATH_VOLUMES_PRUNE}?all={all}");
            let r: PruneReport = client.call(Method::POST, &path, None).await?;
            for name in &r.removed {
                writeln!(out, "{name}")?;
            }
            writeln!(out, "Total reclaimed space: {} B", r.bytes)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `bolt volume ls` table.
pub fn render_ls(list: &[Volume]) -> String {
    let mut rows = vec![["VOLUME NAME".to_owned(), "DRIVER".to_owned()]];
    rows.extend(list.iter().map(|v| [v.name.clone(), v.driver.clone()]));
    crate::cli::table::align(&rows, 3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        let l = parse_labels(&["a=1".into(), "b=".into()]).unwrap();
        assert_eq!(l.get("a").map(String::as_str), Some("1"));
        assert_eq!(l.get("b").map(String::as_str), Some(""));
        assert!(parse_labels(&["novalue".into()])
            .unwrap_err()
            .contains("novalue"));
        assert!(parse_labels(&["=x".into()]).is_err());
    }
}
