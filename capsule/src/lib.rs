//! `bolt-capsule`: images (registry pulls, the content-addressed store, safe layer unpack) and the
//! capsule runtime (namespaces, cgroups, overlay rootfs, networking, volumes).
//!
//! It may depend on `bolt-events` only. It must never depend on `bolt-state`, `bolt-fabric` or
//! `bolt-dns`. All `unsafe` and raw syscalls live in one module, behind a trait.
pub mod image;
pub mod net;
pub mod runtime;
pub mod storage;
mod sys;
