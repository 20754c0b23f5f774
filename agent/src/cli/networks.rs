//! `bolt network create/ls/rm/inspect`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use hyper::Method;

use crate::cli::util::{block_on, each_name, inspect_named, json_err, write_list};
use crate::cli::{CliError, Format};
use crate::client::{encode_segment, Client};
use crate::wire::networks::PATH_NETWORKS;
use crate::wire::networks::{CreateNetworkRequest, NetworkView};

/// `bolt network <command>`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create {
        /// Subnet, A.B.C.D/LEN (must not overlap another network or a host address).
        #[arg(long)]
        subnet: String,
        /// Gateway (default: the first host address).
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// MTU (default 1500).
        #[arg(long, default_value_t = 0)]
        mtu: u32,
        /// Name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove networks no capsule holds an address on.
    #[command(alias = "remove")]
    Rm {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show networks as JSON.
    Inspect {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a network command.
pub fn run(socket: PathBuf, cmd: NetworkCommand) -> Result<ExitCode, CliError> {
    block_on(run_async(&Client::new(socket), cmd))
}

async fn run_async(client: &Client, cmd: NetworkCommand) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        NetworkCommand::Create {
            subnet,
            gateway,
            mtu,
            name,
        } => {
            let req = CreateNetworkRequest {
                name,
                subnet,
                gateway,
                mtu,
            };
            let body = serde_json::to_vec(&req).map_err(json_err)?;
            let n: NetworkView = client.call(Method::POST, PATH_NETWORKS, Some(body)).await?;
            writeln!(out, "{}", n.name)?;
        }
        NetworkCommand::Ls { quiet, format } => {
            let list: Vec<NetworkView> = client.call(Method::GET, PATH_NETWORKS, None).await?;
            write_list(
                &mut out,
                &list,
                quiet,
                format,
                |n| n.name.clone(),
                render_ls,
            )?;
        }
        NetworkCommand::Rm { names } => {
            let removed = each_name(&mut out, names, async |name: &str| {
                let path = format!("{PATH_NETWORKS}/{}", encode_segment(name));
                client
                    .call::<serde_json::Value>(Method::DELETE, &path, None)
                    .await
            });
            if !removed.await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCommand::Inspect { names } => {
            inspect_named::<NetworkView>(&mut out, client, PATH_NETWORKS, names).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `bolt network ls` table.
pub fn render_ls(list: &[NetworkView]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "DRIVER".to_owned(),
        "SUBNET".to_owned(),
        "GATEWAY".to_owned(),
        "BRIDGE".to_owned(),
        "CAPSULES".to_owned(),
    ]];
    for n in list {
        rows.push([
            n.name.clone(),
            n.driver.clone(),
            n.subnet.clone(),
            n.gateway.to_string(),
            n.bridge.clone(),
            n.capsules.len().to_string(),
        ]);
    }
    crate::cli::table::align(&rows, 3)
}
