//! The services of a node: images, capsules, networks, volumes and snapshots. Each decides on
//! the live state, makes its change on the host and records it through [`crate::node`].
//!
//! Host effects live here (the image store, supervisors, top, log follow, attach bridging,
//! exec, bridges and veths, btrfs). A service must never import `api`, `client` or `cli`: it
//! speaks Rust types, and the API maps them to HTTP.

pub mod capsules;
pub mod images;
pub mod networks;
pub mod snapshots;
