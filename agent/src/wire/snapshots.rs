//! The snapshot and commit routes' paths and JSON shapes (`/v1/snapshots...`, `/v1/commit`).
//! Pure; never imports another agent module.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wire::images::PullView;

/// `GET` (list, `?target=KIND:NAME` for one target) and `POST` (create) snapshots.
pub const PATH_SNAPSHOTS: &str = "/v1/snapshots";
/// `DELETE`: remove one snapshot (`{target}` is `capsule:NAME` or `volume:NAME`).
pub const PATH_SNAPSHOT: &str = "/v1/snapshots/{target}/{name}";
/// `POST`: restore the target from the snapshot.
pub const PATH_SNAPSHOT_RESTORE: &str = "/v1/snapshots/{target}/{name}/restore";
/// `POST`: commit a capsule's changes as a new image.
pub const PATH_COMMIT: &str = "/v1/commit";

/// `POST /v1/snapshots` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSnapshotRequest {
    /// `capsule:NAME` or `volume:NAME`.
    pub target: String,
    /// The snapshot's name.
    pub name: String,
}

/// `GET /v1/snapshots` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only this target's snapshots.
    pub target: Option<String>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// `capsule` or `volume`.
    pub target_kind: String,
    /// The capsule id or the volume name.
    pub target: String,
    /// The capsule's name (the volume's name for a volume).
    pub target_name: String,
    /// The snapshot's name.
    pub name: String,
    /// When it was taken (HLC physical time, ms since the epoch).
    pub created_ms: u64,
    /// How many times it was restored.
    pub restores: u32,
    /// When it was last restored (ms since the epoch).
    pub restored_ms: Option<u64>,
    /// The node holding it (short id).
    pub node: String,
    /// The read-only subvolume on that node.
    pub path: PathBuf,
}

/// `POST /v1/commit` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// Capsule name, id or unique id prefix.
    pub capsule: String,
    /// The new image's reference (`repo[:tag]`).
    pub reference: String,
    /// History comment (`-m`).
    #[serde(default)]
    pub comment: Option<String>,
    /// Author (`-a`).
    #[serde(default)]
    pub author: Option<String>,
    /// Dockerfile instructions to apply (`-c`): `CMD`, `ENTRYPOINT`, `ENV`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Freeze a running capsule's cgroup while its layer is read (`-p`, default true, as
    /// `docker commit --pause`).
    #[serde(default = "default_pause")]
    pub pause: bool,
}

fn default_pause() -> bool {
    true
}

impl Default for CommitRequest {
    fn default() -> Self {
        Self {
            capsule: String::new(),
            reference: String::new(),
            comment: None,
            author: None,
            changes: Vec::new(),
            pause: true,
        }
    }
}

/// What `bolt commit` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitView {
    /// The capsule committed (id).
    pub capsule: String,
    /// The new layer's diff_id.
    pub diff_id: String,
    /// The stored image.
    pub image: PullView,
    /// Whether the capsule was frozen while its layer was read.
    #[serde(default)]
    pub paused: bool,
    /// Why a running capsule was committed live although pausing was asked (rootless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
