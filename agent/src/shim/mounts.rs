//! Volumes, binds and tmpfs mounts of capsules, as the supervisor receives them.

use std::path::PathBuf;

use bolt_capsule::runtime::Mount;
use bolt_capsule::storage::mounts::TmpfsSpec;
use serde::{Deserialize, Serialize};

/// A mount in a supervisor's config: resolved by the agent, turned into a runtime
/// [`Mount`] by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountConfig {
    /// A bind of a host file or directory (a volume's `_data`, a host path, `/etc/hosts`).
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute path inside the capsule.
        target: String,
        /// Read-only.
        readonly: bool,
    },
    /// A tmpfs, as its `--tmpfs` spec.
    Tmpfs {
        /// `/dst[:options]`.
        spec: String,
    },
}

impl MountConfig {
    /// The runtime mount; `None` for a tmpfs spec that no longer parses.
    pub fn to_mount(&self) -> Option<Mount> {
        match self {
            MountConfig::Bind {
                source,
                target,
                readonly,
            } => Some(Mount::Bind {
                source: source.clone(),
                target: target.clone(),
                readonly: *readonly,
            }),
            MountConfig::Tmpfs { spec } => TmpfsSpec::parse(spec).ok().map(|t| t.to_mount()),
        }
    }
}
