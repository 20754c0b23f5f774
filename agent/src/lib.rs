//! `bolt-agent`: the `bolt` binary's library — the agent daemon, its HTTP/JSON API on a unix
//! socket, the client and the command line.
//!
//! This is the only crate that wires the others together: it owns the event log
//! (`bolt-events`), folds it into live state (`bolt-state`) and serves both. No other crate may
//! depend on it.
//!
//! - [`node`]: the running node (log + live state replica + head watch); blocking core.
//! - [`daemon`]: `bolt agent` — lock, key, log, announce, serve, stop.
//! - [`api`]: the axum router under `/v1` (plus `/metrics`) and its OpenAPI document.
//! - [`wire`]: the JSON shapes shared by the server and the client.
//! - [`client`]: hyper over the unix socket, and the WebSocket event stream.
//! - [`cli`]: the clap command line and its table/JSON rendering.
//! - [`images`], [`api_images`], [`client_images`], [`cli_images`]: the image store, its
//!   routes, client calls and commands (`bolt pull`, `images`, `rmi`, `tag`, `push`, `image ...`).
//! - [`capsules`], [`supervisor`], [`api_capsules`], [`cli_capsules`]: capsules (create,
//!   supervise, events, restart policies, re-adoption), their routes and commands.
//! - [`networks`], [`api_networks`], [`cli_networks`]: bridge networks and capsule attachments.
//! - [`volumes`], [`api_volumes`], [`cli_volumes`]: mounts handed to the supervisor, named
//!   volume routes and commands (`bolt volume ...`).
//! - [`snapshots`], [`api_snapshots`], [`cli_snapshots`]: btrfs snapshots of capsule layers and
//!   volumes (`bolt snapshot ...`) and `bolt commit`.

pub mod api;
pub mod api_capsules;
pub mod api_images;
pub mod api_networks;
pub mod api_snapshots;
pub mod api_volumes;
pub mod capsules;
pub mod cli;
pub mod cli_capsules;
pub mod cli_images;
pub mod cli_networks;
pub mod cli_snapshots;
mod cli_util;
pub mod cli_volumes;
pub mod client;
pub mod client_images;
pub mod daemon;
pub mod images;
pub mod networks;
pub mod node;
pub mod snapshots;
pub mod supervisor;
pub mod table;
pub mod volumes;
pub mod wire;
