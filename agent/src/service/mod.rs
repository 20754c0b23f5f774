//! The services of a node: images, capsules, networks, volumes and snapshots. Each decides on
//! the live state, makes its change on the host and records it through [`crate::node`].
//!
//! Host effects live here (the image store, supervisors, top, log follow, attach bridging,
//! exec, bridges and veths, btrfs). A service must never import `api`, `client` or `cli`: it
//! speaks Rust types, and the API maps them to HTTP.

pub mod capsules;
pub mod etc_files;
pub mod images;
pub mod networks;
pub mod snapshots;
pub mod volumes;

use std::path::Path;
use std::sync::Arc;

use crate::node::Node;

/// A service that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Images(#[from] images::ImagesError),
    #[error("capsules: {0}")]
    Capsules(#[from] capsules::CapsuleError),
}

/// Every service of a running node, built by the daemon in dependency order (node, images,
/// networks, capsules, volumes, snapshots) and cloned into whatever needs one of them: the
/// API router hands each route module only its own.
#[derive(Debug, Clone)]
pub struct Services {
    /// The log and the live state.
    pub node: Arc<Node>,
    /// The image store.
    pub images: Arc<images::Images>,
    /// Bridge networks and capsule attachments.
    pub networks: Arc<networks::Networks>,
    /// Capsules and their supervisors.
    pub capsules: Arc<capsules::Capsules>,
    /// Named volumes.
    pub volumes: Arc<volumes::Volumes>,
    /// Btrfs snapshots and `bolt commit`.
    pub snapshots: Arc<snapshots::Snapshots>,
}

impl Services {
    /// Opens every service of the agent root `root` in dependency order: images, networks,
    /// capsules (on both), volumes (on capsules), snapshots (on capsules and images). Nothing
    /// is brought back yet: the daemon then reconciles images, restores networks and re-adopts
    /// capsules, in that order. Blocking.
    pub fn open(
        node: Arc<Node>,
        root: &Path,
        images: &images::ImagesConfig,
    ) -> Result<Services, ServicesError> {
        let images = Arc::new(images::Images::open(Arc::clone(&node), root, images)?);
        let networks = networks::Networks::new(Arc::clone(&node), root);
        let capsules = capsules::Capsules::new(
            Arc::clone(&node),
            Arc::clone(&images),
            Arc::clone(&networks),
            root,
        )?;
        let volumes = volumes::Volumes::new(Arc::clone(&capsules));
        let snapshots = snapshots::Snapshots::new(Arc::clone(&capsules), Arc::clone(&images));
        Ok(Services {
            node,
            images,
            networks,
            capsules,
            volumes,
            snapshots,
        })
    }
}
