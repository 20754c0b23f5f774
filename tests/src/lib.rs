//! `bolt-tests`: end-to-end and multi-node harness. Nothing may depend on this crate.
