//! The node's images: the content-addressed store at `ROOT/images` (`bolt-capsule`) and the
//! events that record every change to it.
//!
//! A change is made in the store first and recorded after it succeeded, decided on the live
//! state (`bolt_state::decide`): a pull or an import appends `image.pulled`, a tag
//! `image.tagged`, an `rmi` `image.removed`. A push, an export and a prune change nothing the
//! state knows, so they append nothing.
//!
//! The store holds one record per reference; the state holds, per image digest, the nodes that
//! hold it and the references that name it. To keep both saying the same thing:
//! - a reference moved to another image (a re-pull or a tag over an existing name) also removes
//!   the old image from this node when no other local reference names it;
//! - an `rmi` of one name of an image this node still holds under other names appends
//!   `image.removed` of that name only: the state keeps each node's names of an image
//!   (`ImageInfo::held`) and the node's hold until its last name goes, and `decide` skips the
//!   in-use check while another name keeps the image;
//! - at start, [`Images::reconcile`] appends what an agent that stopped between a store
//!   change and its event left out.
//!
//! **For the capsule runtime:** [`Images::store`] is the store handle, and
//! [`Images::ensure`] pulls a reference that is not stored yet (recording the pull) and
//! returns its [`ImageRecord`]; the unpacked layer of each `rec.layers[i]` is the directory
//! `store.layer_path(&layer.diff_id)` (base first; overlayfs `lowerdir` lists them top first),
//! or all at once `store.layer_dirs(reference)`. [`Images::prune`] refuses to collect an
//! image that a live capsule of this node uses once no reference names it.

mod payloads;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bolt_capsule::image::auth::{self, AuthError};
use bolt_capsule::image::{
    Credentials, Digest, ExportFormat, ImageError, ImageRecord, ImageStore, ImportOptions, Phase,
    Platform, Progress, ProgressFn, PullOptions, Pulled, PushOptions, StoreConfig,
};
use bolt_events::{NodeId, Payload};
use bolt_state::{CapsuleStatus, DecideError, State};
use tokio::sync::mpsc;

use crate::node::{Node, NodeError};
use crate::wire::images::{
    ExportView, ImageView, ProgressView, PruneView, PullView, PushView, RefView,
};
use payloads::{naming_payloads, reconcile_payloads, removal_payloads};

/// One step of an image operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error("the state refused it: {0}")]
    Decide(DecideError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    Platform(String),
    #[error("invalid export format {0:?}: expected oci-dir or oci-tar")]
    Format(String),
    #[error("{path} must be an absolute path on the agent's host")]
    RelativePath { path: PathBuf },
    #[error("image {digest} is used by capsule {capsule} and no reference names it any more; remove the capsule first")]
    InUse { digest: String, capsule: String },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("commit: {0}")]
    Commit(#[from] bolt_capsule::storage::CommitError),
}

/// Registry settings of the agent's image store.
#[derive(Debug, Clone, Default)]
pub struct ImagesConfig {
    /// Registries (`host[:port]`) reached over plain HTTP although not on loopback.
    pub insecure_registries: Vec<String>,
    /// A docker-style `config.json` with registry credentials (None: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`). A missing file means no credentials.
    pub registry_auth: Option<PathBuf>,
    /// Cap on the uncompressed bytes of one layer (None: the store's default); a layer past it
    /// is refused as a decompression bomb.
    pub max_layer_bytes: Option<u64>,
}

/// The image service of a node: its store, the node that records every change, and a lock
/// that keeps a store change and the event recording it together. One per agent, shared as
/// `Arc`.
#[derive(Debug)]
pub struct Images {
    node: Arc<Node>,
    store: ImageStore,
    changes: tokio::sync::Mutex<()>,
}

impl Images {
    /// Open (creating) the store at `ROOT/images`: take its lock, clean what an interrupted
    /// pull left in its `tmp/`, and load the registry credentials. Blocking.
    pub fn open(node: Arc<Node>, root: &Path, cfg: &ImagesConfig) -> Result<Images, ImagesError> {
        let auth_path = cfg.registry_auth.clone().or_else(auth::default_config_path);
        let credentials = match &auth_path {
            Some(p) => Credentials::load(p)?,
            None => Credentials::none(),
        };
        let mut store_cfg = StoreConfig::new(root.join("images"));
        store_cfg.registry.credentials = credentials;
        store_cfg.registry.insecure = cfg.insecure_registries.clone();
        if let Some(max) = cfg.max_layer_bytes {
            store_cfg.unpack.max_bytes = max;
        }
        Ok(Images {
            node,
            store: ImageStore::open(store_cfg)?,
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// The store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing what the requests carry.

/// Parse `oci-dir` / `oci-tar` (default `oci-tar`).
pub fn parse_format(s: Option<&str>) -> Result<ExportFormat, ImagesError> {
    match s {
        None | Some("oci-tar") => Ok(ExportFormat::OciTar),
        Some("oci-dir") => Ok(ExportFormat::OciDir),
        Some(other) => Err(ImagesError::Format(other.to_string())),
    }
}

/// The wire name of an export format.
pub fn format_name(f: ExportFormat) -> &'static str {
    match f {
        ExportFormat::OciDir => "oci-dir",
        ExportFormat::OciTar => "oci-tar",
    }
}

/// Parse `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<Platform, ImagesError> {
    s.parse().map_err(|_| ImagesError::Platform(s.to_string()))
}

/// A progress callback that sends reports into a channel, thinned out: every phase change, and
/// within a phase a step of at least 1% (or 256 KiB) and the last byte. Nothing is dropped
/// that changes what a progress bar would show at the end.
pub fn progress_channel() -> (ProgressFn, mpsc::UnboundedReceiver<ProgressView>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ProgressFn::new(thinned(tx)), rx)
}

fn thinned(tx: mpsc::UnboundedSender<ProgressView>) -> impl Fn(&Progress) + Send + Sync {
    let last: Mutex<HashMap<Digest, (Phase, u64)>> = Mutex::default();
    move |p: &Progress| {
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        let step = p.total.map_or(256 << 10, |t| (t / 100).max(256 << 10));
        let send = match last.get(&p.digest) {
            None => true,
            Some((phase, done)) => {
                *phase != p.phase
                    || (p.done != *done
                        && (p.done.saturating_sub(*done) >= step || Some(p.done) == p.total))
            }
        };
        if send {
            last.insert(p.digest.clone(), (p.phase, p.done));
            let _ = tx.send(ProgressView::from(p));
        }
    }
}

/// Decide on the live state with `f`, then append what it returns. Returns the cursor of the
/// last event appended (None when there was nothing to append).
async fn record(
    node: &Arc<Node>,
    f: impl FnOnce(&State, NodeId) -> Result<Vec<Payload>, ImagesError> + Send + 'static,
) -> Result<Option<u64>, ImagesError> {
    let me = node.node_id();
    let appended = node.record(move |s| f(s, me)).await?;
    Ok(appended.last().map(|a| a.cursor.0))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImagesError> + Send + 'static,
) -> Result<T, ImagesError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImagesError::Task(e.to_string()))?
}

/// `created` from a stored image's config, if it has one.
async fn created_of(store: &ImageStore, reference: &str) -> Option<String> {
    store
        .image_config(reference)
        .await
        .ok()
        .and_then(|c| c.created().clone())
}

/// Store references to check a pull or import against: reference → the digest it named.
async fn names(store: &ImageStore) -> Result<HashMap<String, String>, ImagesError> {
    Ok(store
        .list()
        .await?
        .into_iter()
        .map(|r| (r.reference, r.manifest_digest.to_string()))
        .collect())
}

/// Record that each of `pulled` is stored, given what the references named before.
async fn record_stored(
    node: &Arc<Node>,
    store: &ImageStore,
    pulled: &[Pulled],
    before: &HashMap<String, String>,
) -> Result<Option<u64>, ImagesError> {
    let now = store.list().await?;
    let mut items = Vec::new();
    for p in pulled {
        let old = before.get(&p.record.reference).map(|d| {
            let held = now.iter().any(|r| r.manifest_digest.to_string() == *d);
            (d.clone(), held)
        });
        items.push((p.record.clone(), old));
    }
    record(node, move |s, me| {
        let mut out = Vec::new();
        for (rec, old) in &items {
            let old = old.as_ref().map(|(d, h)| (d.as_str(), *h));
            out.extend(naming_payloads(s, me, rec, old, false)?);
        }
        Ok(out)
    })
    .await
}

fn absolute(path: &Path) -> Result<(), ImagesError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ImagesError::RelativePath {
            path: path.to_path_buf(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The node's image operations.

impl Images {
    /// The stored image `reference` names, pulled first (and the pull recorded as
    /// `image.pulled`) when it is not stored or a layer directory is missing. Its layers are
    /// unpacked under `store.layer_path(&layer.diff_id)`.
    pub async fn ensure(&self, reference: &str) -> Result<ImageRecord, ImagesError> {
        let store = self.store.clone();
        if let Some(rec) = store.get(reference).await? {
            if store.layer_dirs(reference).await.is_ok() {
                return Ok(rec);
            }
        }
        let (pulled, _) = self.pull(reference, None, None).await?;
        Ok(pulled.record)
    }

    /// Pull `reference` into the store and record it (`image.pulled`, after an `image.removed`
    /// of the image the reference named before when nothing else names it here). Returns what
    /// the pull did and the cursor of its last event.
    pub async fn pull(
        &self,
        reference: &str,
        platform: Option<Platform>,
        progress: Option<ProgressFn>,
    ) -> Result<(Pulled, Option<u64>), ImagesError> {
        let store = self.store.clone();
        let before = names(&store).await?;
        let opts = PullOptions { platform, progress };
        let pulled = store.pull(reference, &opts).await?;
        let _g = self.changes.lock().await;
        let cursor =
            record_stored(&self.node, &store, std::slice::from_ref(&pulled), &before).await?;
        Ok((pulled, cursor))
    }

    /// [`Images::pull`] as the API answers it.
    pub async fn pull_view(
        &self,
        reference: &str,
        platform: Option<Platform>,
        progress: Option<ProgressFn>,
    ) -> Result<PullView, ImagesError> {
        let (pulled, cursor) = self.pull(reference, platform, progress).await?;
        let store = self.store.clone();
        let created = created_of(&store, &pulled.record.reference).await;
        Ok(PullView::new(&pulled, created, cursor))
    }

    /// Every stored image, sorted by reference.
    pub async fn list(&self) -> Result<Vec<ImageView>, ImagesError> {
        let store = self.store.clone();
        let mut out = Vec::new();
        for rec in store.list().await? {
            let created = created_of(&store, &rec.reference).await;
            out.push(ImageView::new(&rec, created));
        }
        Ok(out)
    }

    /// Point `target` at the image `source` names, and record it (`image.tagged`).
    pub async fn tag(&self, source: &str, target: &str) -> Result<RefView, ImagesError> {
        let store = self.store.clone();
        let _g = self.changes.lock().await;
        let old = store.get(target).await?;
        let tagged = store.tag(source, target).await?;
        let rec = store.require(&tagged.reference).await?;
        let now = store.list().await?;
        let old = old.map(|o| {
            let held = now.iter().any(|r| r.manifest_digest == o.manifest_digest);
            (o.manifest_digest.to_string(), held)
        });
        let cursor = {
            let rec = rec.clone();
            record(&self.node, move |s, me| {
                let old = old.as_ref().map(|(d, h)| (d.as_str(), *h));
                naming_payloads(s, me, &rec, old, true)
            })
            .await?
        };
        Ok(RefView {
            reference: tagged.reference,
            digest: tagged.digest.to_string(),
            cursor,
        })
    }

    /// Forget `reference` (its blobs stay until [`Images::prune`]) and record it
    /// (`image.removed`). Refused, before anything changes, while a capsule of this node uses
    /// the image and no other reference names it here.
    pub async fn remove(&self, reference: &str) -> Result<RefView, ImagesError> {
        let store = self.store.clone();
        let _g = self.changes.lock().await;
        let rec = store.require(reference).await?;
        let payloads = {
            let node = Arc::clone(&self.node);
            let rec = rec.clone();
            blocking(move || {
                let me = node.node_id();
                node.with_live_state(|s| removal_payloads(s, me, &rec))?
            })
            .await?
        };
        let removed = store.remove(&rec.reference).await?;
        let cursor = if payloads.is_empty() {
            None
        } else {
            let node = Arc::clone(&self.node);
            blocking(move || Ok(node.append(payloads)?.last().map(|a| a.cursor.0))).await?
        };
        Ok(RefView {
            reference: removed.reference,
            digest: removed.digest.to_string(),
            cursor,
        })
    }

    /// Remove every blob and unpacked layer no stored reference uses. Refused when a live
    /// capsule of this node uses an image no reference names any more.
    pub async fn prune(&self) -> Result<PruneView, ImagesError> {
        let store = self.store.clone();
        let _g = self.changes.lock().await;
        let in_use: Vec<(String, String)> = {
            let node = Arc::clone(&self.node);
            blocking(move || {
                let me = node.node_id();
                Ok(node.with_live_state(|s| {
                    s.capsules
                        .values()
                        .filter(|c| c.node == me && c.status != CapsuleStatus::Removed)
                        .map(|c| (c.id.clone(), c.spec.image_digest.clone()))
                        .collect()
                })?)
            })
            .await?
        };
        let records = store.list().await?;
        for (capsule, digest) in in_use {
            if !digest.is_empty()
                && !records
                    .iter()
                    .any(|r| r.manifest_digest.to_string() == digest)
            {
                return Err(ImagesError::InUse { digest, capsule });
            }
        }
        Ok(store.gc().await?.into())
    }

    /// Push a stored image to the registry its reference names (nothing is recorded: the node
    /// did not change).
    pub async fn push(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<PushView, ImagesError> {
        let store = self.store.clone();
        Ok(store
            .push(reference, &PushOptions { progress })
            .await?
            .into())
    }

    /// Import the images of an archive or layout at `path` (on this host) and record each
    /// (`image.pulled`).
    pub async fn import(
        &self,
        path: &Path,
        reference: Option<String>,
        progress: Option<ProgressFn>,
    ) -> Result<Vec<PullView>, ImagesError> {
        absolute(path)?;
        let store = self.store.clone();
        let before = names(&store).await?;
        let opts = ImportOptions {
            reference,
            progress,
        };
        let pulled = store.import(path, &opts).await?;
        let _g = self.changes.lock().await;
        let cursor = record_stored(&self.node, &store, &pulled, &before).await?;
        let mut out = Vec::new();
        for p in &pulled {
            let created = created_of(&store, &p.record.reference).await;
            out.push(PullView::new(p, created, cursor));
        }
        Ok(out)
    }

    /// Export stored images as an OCI layout (directory or tar) at `path` (on this host; it
    /// must not exist).
    pub async fn export(
        &self,
        references: &[String],
        path: &Path,
        format: ExportFormat,
    ) -> Result<ExportView, ImagesError> {
        absolute(path)?;
        let store = self.store.clone();
        store.export(references, path, format).await?;
        let mut refs = Vec::new();
        for r in references {
            refs.push(store.require(r).await?.reference);
        }
        Ok(ExportView {
            path: path.to_path_buf(),
            format: format_name(format).to_string(),
            references: refs,
        })
    }

    /// `bolt commit`: a capsule's writable layer (`req.upper`) becomes a new image
    /// `req.reference` on top of `req.base`, stored through the store's import and recorded
    /// like one (`image.pulled`, after an `image.removed` of the image the reference named
    /// before when nothing else names it here), so `bolt images` lists it and `bolt run` runs
    /// it. Returns the new layer's diff_id and the stored image.
    pub async fn commit(
        &self,
        req: &bolt_capsule::storage::commit::ImageCommit,
    ) -> Result<(String, PullView), ImagesError> {
        let store = self.store.clone();
        let before = names(&store).await?;
        let done = bolt_capsule::storage::commit::commit_image(&store, req).await?;
        let _g = self.changes.lock().await;
        let pulled = std::slice::from_ref(&done.pulled);
        let cursor = record_stored(&self.node, &store, pulled, &before).await?;
        let created = created_of(&store, &done.pulled.record.reference).await;
        Ok((
            done.layer.diff_id.to_string(),
            PullView::new(&done.pulled, created, cursor),
        ))
    }

    /// Make the state say what the store holds (what an agent that stopped between a store
    /// change and its event left out). Called by the daemon at start. Returns the events
    /// appended.
    pub async fn reconcile(&self) -> Result<usize, ImagesError> {
        let store = self.store.clone();
        let _g = self.changes.lock().await;
        let records = store.list().await?;
        let node = Arc::clone(&self.node);
        blocking(move || {
            let me = node.node_id();
            let payloads = node.with_live_state(|s| reconcile_payloads(s, me, &records))?;
            let n = payloads.len();
            if n > 0 {
                node.append(payloads)?;
            }
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_thinned_but_keeps_every_phase_and_the_last_byte() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let f = thinned(tx);
        let d = Digest::of(&[9]);
        let total = 100 << 20;
        let report = |phase, done| {
            f(&Progress {
                digest: d.clone(),
                phase,
                done,
                total: Some(total),
            })
        };
        for done in (0..=total).step_by(64 << 10) {
            report(Phase::Fetching, done);
        }
        report(Phase::Fetched, total);
        report(Phase::Unpacked, total);
        drop(f);
        let mut got = Vec::new();
        while let Ok(p) = rx.try_recv() {
            got.push(p);
        }
        assert!(got.len() < 110, "{} reports", got.len());
        assert_eq!(got.last().unwrap().phase, "unpacked");
        let fetching: Vec<&ProgressView> = got.iter().filter(|p| p.phase == "fetching").collect();
        assert_eq!(fetching.last().unwrap().done, total);
        assert!(got.iter().any(|p| p.phase == "fetched"));
    }
}
