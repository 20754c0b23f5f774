//! `bolt-agent`: the `bolt` binary's library — the agent daemon, its HTTP/JSON API on a unix
//! socket, the client and the command line.
//!
//! This is the only crate that wires the others together: it owns the event log
//! (`bolt-events`), folds it into live state (`bolt-state`) and serves both. No other crate may
//! depend on it.
//!
//! The crate is split into layers, each a folder whose `mod.rs` says what it holds and what it
//! must never import (`agent/tests/layers.rs` keeps the rule; docs/ARCHITECTURE.md draws it):
//!
//! - [`wire`]: the shapes both sides speak (routes, requests, views, parsing). Imports nothing.
//! - [`node`]: the log, the live state replica, the head watch and the decide-append path.
//! - [`shim`]: `bolt supervise`, the per-capsule supervisor process, and its config.
//! - [`service`]: images, capsules, networks, volumes, snapshots: the host effects.
//! - [`api`]: the axum router under `/v1` (plus `/metrics`), one error type, OpenAPI.
//! - [`client`]: one HTTP client over the unix socket, and the stream clients.
//! - [`cli`]: the clap command line and its rendering.
//! - [`daemon`]: `bolt agent`, the composition root.

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod node;
pub mod service;
pub mod shim;
pub mod wire;
