//! `bolt-fabric`: the mTLS QUIC mesh between agents (quinn + rustls, cluster CA from rcgen), SWIM
//! membership (foca) and event sync by version vectors, and a [`transport::Transport`] trait
//! with a QUIC and an in-memory implementation so that what runs over the mesh is tested over
//! both.
//!
//! It may depend on `bolt-events` only. It must never depend on `bolt-state`, `bolt-capsule`,
//! `bolt-dns` or the agent: the agent wires the mesh to the log.

pub mod frame;
pub mod identity;
pub mod join;
pub mod membership;
mod membership_wire;
pub mod quic;
pub mod replicate;
pub mod sim;
pub mod transport;
