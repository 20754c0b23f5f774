//! The network routes' paths and JSON shapes (`/v1/networks...`) and the `--network` rule both
//! the CLI and the agent check. Pure; never imports another agent module.

use std::net::Ipv4Addr;

use bolt_capsule::net::{ports, PortSpec};
use serde::{Deserialize, Serialize};

/// `GET` (list) and `POST` (create) networks.
pub const PATH_NETWORKS: &str = "/v1/networks";
/// `GET` (inspect) and `DELETE` (remove) one network.
pub const PATH_NETWORK: &str = "/v1/networks/{name}";

/// A network as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Name.
    pub name: String,
    /// Driver (`bridge`).
    pub driver: String,
    /// Subnet, CIDR.
    pub subnet: String,
    /// Gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// MTU.
    pub mtu: u32,
    /// The Linux bridge.
    pub bridge: String,
    /// Address -> capsule id.
    pub capsules: Vec<(Ipv4Addr, String)>,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    /// Name.
    pub name: String,
    /// Subnet, `A.B.C.D/LEN`.
    pub subnet: String,
    /// Gateway (default: the first host address).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// MTU (0 or absent: 1500).
    #[serde(default)]
    pub mtu: u32,
}

/// What `--network` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkChoice {
    /// Only `lo`.
    None,
    /// The host's namespace.
    Host,
    /// A bridge network by name.
    Bridge(String),
}

/// Parses `--network` and `-p` before anything is made: `-p` needs a bridge network.
pub fn plan(network: &str, ports: &[String]) -> Result<(NetworkChoice, Vec<PortSpec>), String> {
    let choice = match network {
        "none" => NetworkChoice::None,
        "host" => NetworkChoice::Host,
        "" => return Err("empty --network".into()),
        n if crate::wire::parse::valid_name(n) => NetworkChoice::Bridge(n.to_owned()),
        n => return Err(format!("invalid network name {n:?}")),
    };
    let specs = ports::parse_all(ports).map_err(|e| e.to_string())?;
    if !specs.is_empty() && !matches!(choice, NetworkChoice::Bridge(_)) {
        return Err(format!(
            "published ports need a bridge network (--network bridge), not {network}"
        ));
    }
    Ok((choice, specs))
}
