//! The volume routes' paths and JSON shapes (`/v1/volumes...`). Pure; never imports another
//! agent module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET` (list) and `POST` (create) volumes.
pub const PATH_VOLUMES: &str = "/v1/volumes";
/// `GET` (inspect) and `DELETE` (remove) one volume.
pub const PATH_VOLUME: &str = "/v1/volumes/{name}";
/// `POST`: remove unused volumes.
pub const PATH_VOLUMES_PRUNE: &str = "/v1/volumes/prune";

/// `POST /v1/volumes` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolumeRequest {
    /// Name.
    pub name: String,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/volumes/prune` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneQuery {
    /// Remove unused named volumes too (default: anonymous ones only).
    pub all: Option<bool>,
}
