//! Named volumes (`bolt volume ...`): the storage library's
//! [`VolumeStore`](bolt_capsule::storage::VolumeStore) under the agent root, each change
//! decided on the live state first and recorded as `volume.created` / `volume.removed`.
//!
//! Volume changes take the capsules' operations lock, so a `volume rm` cannot pass while a
//! `bolt run -v NAME:/dst` that mounts the volume is being decided.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bolt_capsule::storage::{
    CreateOptions, Detached, PruneReport, Volume, VolumeError, VolumeStore,
};
use bolt_events::Payload;
use bolt_state::{decide, CapsuleStatus, Command, DecideError, VolumeInfo};

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

/// A volume as the state knows it, with what the disk adds (mountpoint, owner, anonymous,
/// subvolume). One the state holds but the disk lost is still listed, at its usual path.
fn from_state(store: &VolumeStore, info: &VolumeInfo) -> Volume {
    match store.get(&info.name) {
        Ok(v) => Volume {
            labels: info.labels.clone(),
            ..v
        },
        Err(_) => Volume {
            name: info.name.clone(),
            driver: info.driver.clone(),
            mountpoint: store.mountpoint(&info.name),
            labels: info.labels.clone(),
            created_ms: info.created.physical_ms(),
            owner: None,
            anonymous: false,
            subvolume: false,
        },
    }
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
        let known = self.caps.state(|s| s.volumes.clone()).await?;
        blocking(move || Ok(known.values().map(|v| from_state(&store, v)).collect())).await
    }
    /// One volume.
    pub async fn inspect(&self, name: &str) -> Result<Volume, VolumesError> {
        let store = self.caps.storage().volumes();
        let n = name.to_owned();
        let known = self.caps.state(move |s| s.volumes.get(&n).cloned()).await?;
        let Some(info) = known else {
            return Err(VolumeError::NotFound(name.to_owned()).into());
        };
        blocking(move || Ok(from_state(&store, &info))).await
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
        let payloads_empty = payloads.is_empty();
        let detached = {
            let store = store.clone();
            blocking(move || match store.detach(&n, &used) {
                Ok(d) => Ok(Some(d)),
                // Recorded but gone from disk: the removal is still recorded.
                Err(VolumeError::NotFound(_)) if !payloads_empty => Ok(None),
                Err(e) => Err(e),
            })
            .await?
        };
        self.record_then_purge(store, detached.into_iter().collect(), payloads)
            .await
    }

    /// Records the removal of volumes already renamed away, then deletes their data: a
    /// failed record puts them back, so nothing is deleted that the log still holds.
    async fn record_then_purge(
        &self,
        store: VolumeStore,
        detached: Vec<Detached>,
        payloads: Vec<Payload>,
    ) -> Result<(), VolumesError> {
        if let Err(e) = self.caps.record(payloads).await {
            let _ = blocking(move || {
                for d in detached {
                    d.restore()?;
                }
                Ok(())
            })
            .await;
            return Err(e.into());
        }
        blocking(move || {
            for d in detached {
                d.purge(&store)?;
            }
            Ok(())
        })
        .await
    }
    /// Removes unused volumes (anonymous ones; named ones too with `all`), a `volume.removed`
    /// each.
    pub async fn prune(&self, all: bool) -> Result<PruneReport, VolumesError> {
        let store = self.caps.storage().volumes();
        let _ops = self.caps.lock_ops().await;
        let used = self.caps.state(in_use).await?;
        let (detached, bytes) = {
            let store = store.clone();
            blocking(move || {
                let mut detached = Vec::new();
                let mut bytes = 0;
                for v in store.list()? {
                    if used.contains(&v.name) || !(all || v.anonymous) {
                        continue;
                    }
                    let size = store.usage(&v.name).unwrap_or(0);
                    match store.detach(&v.name, &used) {
                        Ok(d) => {
                            bytes += size;
                            detached.push(d);
                        }
                        Err(VolumeError::NotFound(_)) => {}
                        Err(e) => {
                            for d in detached {
                                let _ = d.restore();
                            }
                            return Err(e);
                        }
                    }
                }
                Ok((detached, bytes))
            })
            .await?
        };
        let removed: Vec<String> = detached.iter().map(|d| d.name().to_owned()).collect();
        let names = removed.clone();
        let payloads = self
            .caps
            .state(move |s| {
                names
                    .into_iter()
                    .filter(|n| s.volumes.contains_key(n))
                    .map(|name| {
                        Payload::Volume(bolt_events::payload::VolumeEvent::Removed { name })
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        self.record_then_purge(store, detached, payloads).await?;
        Ok(PruneReport { removed, bytes })
    }
}
