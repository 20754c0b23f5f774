//! `bolt cluster init|token|show` and `bolt node ls`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use hyper::Method;

use crate::cli::util::{block_on, json_err, write_list};
use crate::cli::{CliError, Format};
use crate::client::Client;
use crate::wire::cluster::{
    ClusterInitRequest, ClusterView, NodeView, TokenRequest, TokenView, PATH_CLUSTER,
    PATH_CLUSTER_INIT, PATH_CLUSTER_LEAVE, PATH_CLUSTER_TOKEN, PATH_NODES,
};

/// `bolt cluster <command>`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make this node the first member of a new cluster (the agent needs --listen).
    Init {
        /// The cluster's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print a one-time join token for `bolt agent --join ADDR --token TOKEN`.
    Token {
        /// How long it stays valid (e.g. 30m, 1h; at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Leave the cluster: the node records cluster.left, stops gossiping and forgets its
    /// certificate (a node holding the CA cannot leave).
    Leave,
    /// Show this node's membership.
    Show {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `bolt node <command>`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes.
    #[command(alias = "list")]
    Ls {
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Revoke nodes (by name or id prefix): every node refuses their certificates and their
    /// events from now on. Run on a node that holds the cluster CA.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// `30s`, `15m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m or 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d")),
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Runs a cluster command.
pub fn run(socket: PathBuf, cmd: ClusterCommand) -> Result<ExitCode, CliError> {
    block_on(async move {
        let client = Client::new(socket);
        let mut out = std::io::stdout().lock();
        match cmd {
            ClusterCommand::Init { name } => {
                let body = serde_json::to_vec(&ClusterInitRequest { name }).map_err(json_err)?;
                let v: ClusterView = client
                    .call(Method::POST, PATH_CLUSTER_INIT, Some(body))
                    .await?;
                writeln!(
                    out,
                    "cluster created; CA {}; mesh on {}",
                    v.ca_fingerprint.unwrap_or_default(),
                    v.listen.unwrap_or_default()
                )?;
            }
            ClusterCommand::Token { ttl } => {
                let ttl = parse_duration(&ttl).map_err(|e| {
                    CliError::Client(crate::client::ClientError::Decode(format!("--ttl: {e}")))
                })?;
                let body = serde_json::to_vec(&TokenRequest {
                    ttl_secs: ttl.as_secs(),
                })
                .map_err(json_err)?;
                let t: TokenView = client
                    .call(Method::POST, PATH_CLUSTER_TOKEN, Some(body))
                    .await?;
                writeln!(out, "{}", t.token)?;
                // Where to join, as docker swarm prints it (stderr: stdout stays the token).
                if let Ok(v) = client
                    .call::<ClusterView>(Method::GET, PATH_CLUSTER, None)
                    .await
                {
                    if let Some(addr) = v.listen {
                        eprintln!(
                            "join with: bolt agent --listen IP:PORT --join {addr} --token {} \
                             (single use, valid {} s)",
                            t.token, t.ttl_secs
                        );
                    }
                }
            }
            ClusterCommand::Leave => {
                let _: serde_json::Value =
                    client.call(Method::POST, PATH_CLUSTER_LEAVE, None).await?;
                writeln!(out, "left the cluster")?;
            }
            ClusterCommand::Show { format } => {
                let v: ClusterView = client.call(Method::GET, PATH_CLUSTER, None).await?;
                match format {
                    Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
                    Format::Table => {
                        let rows = [
                            ["member".to_owned(), v.member.to_string()],
                            ["node".to_owned(), v.node_id],
                            ["ca".to_owned(), v.ca_fingerprint.unwrap_or_default()],
                            ["holds ca key".to_owned(), v.holds_ca.to_string()],
                            ["listen".to_owned(), v.listen.unwrap_or_default()],
                        ];
                        write!(out, "{}", crate::cli::table::align(&rows, 2))?;
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs a node command.
pub fn run_node(socket: PathBuf, cmd: NodeCommand) -> Result<ExitCode, CliError> {
    block_on(async move {
        let client = Client::new(socket);
        let mut out = std::io::stdout().lock();
        match cmd {
            NodeCommand::Ls { quiet, format } => {
                let list: Vec<NodeView> = client.call(Method::GET, PATH_NODES, None).await?;
                write_list(&mut out, &list, quiet, format, |n| n.id.clone(), render_ls)?;
            }
            NodeCommand::Rm { nodes } => {
                for n in nodes {
                    let path = format!("{PATH_NODES}/{}", crate::client::encode_segment(&n));
                    let _: serde_json::Value = client.call(Method::DELETE, &path, None).await?;
                    writeln!(out, "{n}")?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The `bolt node ls` table.
pub fn render_ls(list: &[NodeView]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "ID".to_owned(),
        "ADDRESS".to_owned(),
        "STATE".to_owned(),
        "LAG".to_owned(),
        "VERSION".to_owned(),
    ]];
    for n in list {
        rows.push([
            if n.this {
                format!("{} *", n.name)
            } else {
                n.name.clone()
            },
            n.id.chars().take(12).collect(),
            n.addr.clone().unwrap_or_else(|| "-".into()),
            n.state.clone(),
            n.lag.to_string(),
            n.version.clone(),
        ]);
    }
    crate::cli::table::align(&rows, 3)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_and_bad_ones_say_why() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration(" 2d ").unwrap(),
            Duration::from_secs(172_800)
        );
        for (bad, says) in [
            ("", "not a duration"),
            ("h", "not a duration"),
            ("1w", "the unit is one of"),
            ("-5m", "not a duration"),
            ("99999999999999999999d", "not a duration"),
            ("999999999999999999d", "too long"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
