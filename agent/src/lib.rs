//! `bolt-agent`: wires the crates together.
