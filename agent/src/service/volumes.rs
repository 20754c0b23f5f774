//! Named volumes (`bolt volume ...`): the storage library's
//! [`VolumeStore`](bolt_capsule::storage::VolumeStore) under the agent root, each change
//! decided on the live state first and recorded as `volume.created` / `volume.removed`.
//!
//! Volume changes take the capsules' operations lock, so a `volume rm` cannot pass while a
//! `bolt run -v NAME:/dst` that mounts the volume is being decided.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bolt_capsule::storage::{CreateOptions, PruneReport, Volume, VolumeError};
use bolt_events::Payload;
use bolt_state::{decide, CapsuleStatus, Command, DecideError};

use crate::node::NodeError;
use crate::service::capsules::{CapsuleError, Capsules};

/// One step of a volume operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumesError {
    #[error(transparent)]
    Store(#[from] VolumeError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Capsule(#[from] CapsuleError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// The volume names that live (not removed) capsules mount: the named source of each `-v`
/// spec ([`bolt_state::rules::mounted_volume`]).
pub fn in_use(state: &bolt_state::State) -> BTreeSet<String> {
    state
        .capsules
        .values()
        .filter(|c| c.status != CapsuleStatus::Removed)
        .flat_map(|c| c.spec.mounts.iter())
        .filter_map(|m| bolt_state::rules::mounted_volume(m))
        .map(str::to_owned)
        .collect()
}

/// The volumes of this node. One per agent, shared as `Arc`.
#[derive(Debug)]
pub struct Volumes {
    caps: Arc<Capsules>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumesError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumesError::Task(e.to_string()))??)
}

impl Volumes {
    /// The volumes of the capsules' storage (they share its operations lock).
    pub fn new(caps: Arc<Capsules>) -> Arc<Volumes> {
        Arc::new(Volumes { caps })
    }

    /// The volumes on disk.
    pub async fn list(&self) -> Result<Vec<Volume>, VolumesError> {
        let store = self.caps.storage().volumes();
        blocking(move || store.list()).await
    }

    /// One volume.
    pub async fn inspect(&self, name: &str) -> Result<Volume, VolumesError> {
        let store = self.caps.storage().volumes();
        let name = name.to_owned();
        blocking(move || store.get(&name)).await
    }

    /// Creates a named volume and records it (`volume.created`); the volume goes again when
    /// the record fails.
    pub async fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, VolumesError> {
        let store = self.caps.storage().volumes();
        let _ops = self.caps.lock_ops().await;
        let cmd = Command::CreateVolume {
            name: name.to_owned(),
            driver: bolt_capsule::storage::volume::DRIVER.to_owned(),
            labels: labels.clone(),
        };
        let payloads = self.caps.state(move |s| decide(s, cmd)).await??;
        let opts = CreateOptions {
            labels,
            owner: None,
        };
        let vol = {
            let (store, name) = (store.clone(), name.to_owned());
            blocking(move || store.create(&name, &opts)).await?
        };
        if let Err(e) = self.caps.record(payloads).await {
            let name = name.to_owned();
            let _ = blocking(move || store.remove(&name, &BTreeSet::new())).await;
            return Err(e.into());
        }
        Ok(vol)
    }

    /// Removes a volume no live capsule mounts, and records it (`volume.removed`) when the
    /// state knows it.
    pub async fn remove(&self, name: &str) -> Result<(), VolumesError> {
        let store = self.caps.storage().volumes();
        let _ops = self.caps.lock_ops().await;
        let n = name.to_owned();
        let (used, payloads) = self
            .caps
            .state(move |s| -> Result<_, DecideError> {
                let used = in_use(s);
                let payloads = if s.volumes.contains_key(&n) {
                    decide(s, Command::RemoveVolume { name: n })?
                } else {
                    Vec::new()
                };
                Ok((used, payloads))
            })
            .await??;
        let n = name.to_owned();
        blocking(move || store.remove(&n, &used)).await?;
        self.caps.record(payloads).await?;
        Ok(())
    }

    /// Removes unused volumes (anonymous ones; named ones too with `all`), a `volume.removed`
    /// each.
    pub async fn prune(&self, all: bool) -> Result<PruneReport, VolumesError> {
        let store = self.caps.storage().volumes();
        let _ops = self.caps.lock_ops().await;
        let used = self.caps.state(in_use).await?;
        let report = blocking(move || store.prune(&used, all)).await?;
        let removed = report.removed.clone();
        let payloads = self
            .caps
            .state(move |s| {
                removed
                    .into_iter()
                    .filter(|n| s.volumes.contains_key(n))
                    .map(|name| {
                        Payload::Volume(bolt_events::payload::VolumeEvent::Removed { name })
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        self.caps.record(payloads).await?;
        Ok(report)
    }
}
