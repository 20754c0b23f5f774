//! Progress reports for pulls, pushes and imports: what the CLI turns into bars. No terminal code
//! here.

use std::fmt;
use std::sync::Arc;

use super::digest::Digest;

/// What is happening to one blob or layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes are arriving from the registry (or an archive).
    Fetching,
    /// The blob is verified and stored.
    Fetched,
    /// The blob was already in the store; nothing fetched.
    Reused,
    /// The layer is being unpacked (`done`/`total` are compressed bytes read).
    Unpacking,
    /// The layer is unpacked and verified against its diff_id.
    Unpacked,
    /// Bytes are going to the registry.
    Pushing,
    /// The registry already had this blob, or it was uploaded.
    Pushed,
}

/// One progress report: `done` of `total` bytes of blob `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The blob (for layers: the compressed digest).
    pub digest: Digest,
    /// What is happening.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes expected, when known.
    pub total: Option<u64>,
}

/// A progress callback. Called often (every received chunk): keep it cheap.
#[derive(Clone)]
pub struct ProgressFn(Arc<dyn Fn(&Progress) + Send + Sync>);

impl ProgressFn {
    /// Wrap a closure.
    pub fn new(f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        ProgressFn(Arc::new(f))
    }

    /// A callback that sends every report into a tokio channel (dropping reports when full).
    pub fn channel(tx: tokio::sync::mpsc::Sender<Progress>) -> Self {
        ProgressFn::new(move |p| {
            let _ = tx.try_send(p.clone());
        })
    }

    pub(crate) fn report(&self, digest: &Digest, phase: Phase, done: u64, total: Option<u64>) {
        (self.0)(&Progress {
            digest: digest.clone(),
            phase,
            done,
            total,
        });
    }
}

impl fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProgressFn")
    }
}

pub(crate) fn report(
    p: &Option<ProgressFn>,
    digest: &Digest,
    phase: Phase,
    done: u64,
    total: Option<u64>,
) {
    if let Some(p) = p {
        p.report(digest, phase, done, total);
    }
}
