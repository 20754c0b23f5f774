//! `bolt-dns`: the hickory DNS server for services and capsules, answering from a state snapshot.
//!
//! It may depend on `bolt-events` only. It must never depend on `bolt-state`, `bolt-capsule` or
//! `bolt-fabric`: the agent hands it a plain record snapshot.
