//! The cluster routes' shapes: `bolt cluster init|token|show` and `bolt node ls`.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`: this node's membership.
pub const PATH_CLUSTER: &str = "/v1/cluster";
/// `POST /v1/cluster/init`: make this node the first member of a new cluster.
pub const PATH_CLUSTER_INIT: &str = "/v1/cluster/init";
/// `POST /v1/cluster/token`: a one-time join token.
pub const PATH_CLUSTER_TOKEN: &str = "/v1/cluster/token";
/// `GET /v1/nodes`: every node the state knows, with what the mesh sees of it.
pub const PATH_NODES: &str = "/v1/nodes";
/// `DELETE /v1/nodes/{node}`: revoke a node (name or id prefix).
pub const PATH_NODE: &str = "/v1/nodes/{node}";
/// `POST /v1/cluster/leave`: this node leaves the cluster.
pub const PATH_CLUSTER_LEAVE: &str = "/v1/cluster/leave";

/// Body of `POST /v1/cluster/init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterInitRequest {
    /// The cluster's name (the CA's common name); `bolt` when left out.
    #[serde(default)]
    pub name: Option<String>,
}

/// Body of `POST /v1/cluster/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    /// How long the token stays valid, in seconds (1 s to 7 days).
    pub ttl_secs: u64,
}

/// A join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub token: String,
    pub ttl_secs: u64,
}

/// This node's membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Whether this node holds a cluster certificate.
    pub member: bool,
    /// The node's id (hex of its event key).
    pub node_id: String,
    /// SHA-256 of the cluster CA certificate, hex.
    pub ca_fingerprint: Option<String>,
    /// Whether this node holds the CA key (it can admit nodes).
    pub holds_ca: bool,
    /// The mesh address it listens on.
    pub listen: Option<String>,
    /// Seconds since the epoch when its certificate expires.
    pub cert_expires: Option<i64>,
}

/// One node of `bolt node ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub id: String,
    pub addr: Option<String>,
    /// `alive` (this node, or a connected peer heard from lately), `suspect` (known address,
    /// not heard from lately), `dead` (unreachable), `left` (stopped).
    pub state: String,
    /// Events of this node's origin that we heard of and do not hold yet.
    pub lag: u64,
    pub version: String,
    /// This is the node answering.
    pub this: bool,
}
