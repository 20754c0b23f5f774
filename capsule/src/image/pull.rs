//! Pull: manifest (index → platform), config, then layers fetched and unpacked concurrently,
//! each verified; on any failure what the pull made visible is taken back.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;

use super::digest::Digest;
use super::manifest::{self, Descriptor, ImageManifest, Parsed, Platform, OCI_MANIFEST};
use super::progress::{report, Phase, ProgressFn};
use super::reference::ImageRef;
use super::registry::RegistryError;
use super::store::{
    blob_key, blocking, io_at, layer_key, remove_tree, sync_dir, write_blob, ImageError,
    ImageStore, LayerRecord, Pulled, RecordFields, Txn,
};
use super::unpack::{unpack_layer, UnpackOptions};

/// Options for one pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Platform to pick from an index (default: the store's, linux/amd64).
    pub platform: Option<Platform>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

/// Where missing blobs come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A registry repository.
    Registry(ImageRef),
    /// An OCI image layout directory (`blobs/sha256/<hex>`).
    Dir(PathBuf),
    /// Nowhere: the blobs must already be in the store.
    Store,
}

/// Shared state of one pull or import.
pub(crate) struct Op<'a> {
    pub store: &'a ImageStore,
    pub txn: Txn,
    pub source: Source,
    pub progress: Option<ProgressFn>,
    pub cancel: Arc<AtomicBool>,
    pub fetched: Mutex<Vec<Digest>>,
    pub reused: Mutex<Vec<Digest>>,
    pub unpacked: Mutex<Vec<Digest>>,
}

impl std::fmt::Debug for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("source", &self.source).finish()
    }
}

/// A reader that stops when the operation is cancelled and reports progress.
struct OpReader<R> {
    inner: R,
    cancel: Arc<AtomicBool>,
    done: u64,
    last: u64,
    total: u64,
    digest: Digest,
    progress: Option<ProgressFn>,
}

impl<R: Read> Read for OpReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last >= (1 << 20) || (n == 0 && self.done != self.last) {
            self.last = self.done;
            report(
                &self.progress,
                &self.digest,
                Phase::Unpacking,
                self.done,
                Some(self.total),
            );
        }
        Ok(n)
    }
}

/// Feeds bytes received on the async side to the blocking blob writer.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        let chunk = self.cur.split_to(n);
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(&chunk);
        Ok(n)
    }
}

impl<'a> Op<'a> {
    pub fn new(store: &'a ImageStore, source: Source, progress: Option<ProgressFn>) -> Self {
        Op {
            store,
            txn: Txn::new(store),
            source,
            progress,
            cancel: Arc::new(AtomicBool::new(false)),
            fetched: Mutex::default(),
            reused: Mutex::default(),
            unpacked: Mutex::default(),
        }
    }

    fn note(list: &Mutex<Vec<Digest>>, d: &Digest) {
        list.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d.clone());
    }

    fn take(list: &Mutex<Vec<Digest>>) -> Vec<Digest> {
        std::mem::take(&mut *list.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Put known bytes (a manifest fetched already) into the store, verified.
    pub async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), ImageError> {
        let key = blob_key(digest);
        self.txn.pin(&key);
        let lock = self.store.lock_for(&key);
        let _g = lock.lock().await;
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let paths = self.store.inner.paths.clone();
        let d = digest.clone();
        let durable = self.store.inner.cfg.durable;
        let size = bytes.len() as u64;
        blocking(move || {
            write_blob(
                &paths,
                io::Cursor::new(bytes),
                Some(&d),
                Some(size),
                durable,
                &mut |_| {},
            )
        })
        .await?;
        self.txn.created(&key);
        Ok(())
    }

    /// Make sure the blob `d` is in the store, fetching it from the source if not.
    pub async fn ensure_blob(&self, d: &Descriptor) -> Result<(), ImageError> {
        let key = blob_key(&d.digest);
        self.txn.pin(&key);
        let lock = self.store.lock_for(&key);
        let _g = lock.lock().await;
        let path = self.store.blob_path(&d.digest);
        match fs::metadata(&path) {
            Ok(m) if m.len() == d.size => {
                Op::note(&self.reused, &d.digest);
                report(
                    &self.progress,
                    &d.digest,
                    Phase::Reused,
                    d.size,
                    Some(d.size),
                );
                return Ok(());
            }
            Ok(_) => {
                // A stored blob with the wrong size cannot be the declared one; fetch again.
                let _ = fs::remove_file(&path);
            }
            Err(_) => {}
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        match &self.source {
            Source::Registry(r) => self.fetch(r, d).await?,
            Source::Dir(dir) => {
                let src = dir.join("blobs").join("sha256").join(d.digest.hex());
                let paths = self.store.inner.paths.clone();
                let durable = self.store.inner.cfg.durable;
                let (digest, size) = (d.digest.clone(), d.size);
                let progress = self.progress.clone();
                blocking(move || {
                    let f = File::open(&src).map_err(io_at("open", &src))?;
                    write_blob(
                        &paths,
                        BufReader::new(f),
                        Some(&digest),
                        Some(size),
                        durable,
                        &mut |n| report(&progress, &digest, Phase::Fetching, n, Some(size)),
                    )
                })
                .await?;
            }
            Source::Store => return Err(ImageError::MissingBlob(d.digest.clone())),
        }
        self.txn.created(&key);
        Op::note(&self.fetched, &d.digest);
        report(
            &self.progress,
            &d.digest,
            Phase::Fetched,
            d.size,
            Some(d.size),
        );
        Ok(())
    }

    async fn fetch(&self, r: &ImageRef, d: &Descriptor) -> Result<(), ImageError> {
        let registry = &self.store.inner.registry;
        let (mut stream, _len) = registry.blob(r, d).await?;
        self.store.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let paths = self.store.inner.paths.clone();
        let durable = self.store.inner.cfg.durable;
        let (digest, size) = (d.digest.clone(), d.size);
        let writer = tokio::task::spawn_blocking(move || {
            write_blob(
                &paths,
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                },
                Some(&digest),
                Some(size),
                durable,
                &mut |_| {},
            )
        });
        let mut done = 0u64;
        let mut stream_err: Option<RegistryError> = None;
        let mut cancelled = false;
        while let Some(item) = stream.next().await {
            if self.cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break;
            }
            match item {
                Ok(b) => {
                    done += b.len() as u64;
                    report(
                        &self.progress,
                        &d.digest,
                        Phase::Fetching,
                        done,
                        Some(d.size),
                    );
                    if done > d.size.saturating_add(1) {
                        // The writer refuses oversize content; stop downloading.
                        let _ = tx.send(b).await;
                        break;
                    }
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    stream_err = Some(e);
                    break;
                }
            }
        }
        // A short download ends the writer's input early: its size and digest checks refuse it.
        drop(tx);
        let res = writer.await.map_err(|e| ImageError::Task(e.to_string()))?;
        if cancelled {
            if res.is_ok() {
                // Everything arrived and verified before the cancel was seen: keep it.
                return Ok(());
            }
            return Err(ImageError::Cancelled);
        }
        match (res, stream_err) {
            (Ok(_), _) => Ok(()),
            // All bytes arrived: the content check is the real story (a corrupted blob).
            (Err(e @ ImageError::BlobDigest { .. }), _) if done == d.size => Err(e),
            (Err(_), Some(se)) => Err(se.into()),
            (Err(e), None) => Err(e),
        }
    }

    /// Make sure layer `l` is unpacked (checked against `diff_id`) from its blob.
    pub async fn ensure_layer(&self, l: &Descriptor, diff_id: &Digest) -> Result<(), ImageError> {
        let key = layer_key(diff_id);
        self.txn.pin(&key);
        let lock = self.store.lock_for(&key);
        let _g = lock.lock().await;
        let dest = self.store.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(());
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        let paths = self.store.inner.paths.clone();
        let blob = paths.blob(&l.digest);
        let opts: UnpackOptions = self.store.inner.cfg.unpack.clone();
        let durable = self.store.inner.cfg.durable;
        let (digest, size, want) = (l.digest.clone(), l.size, diff_id.clone());
        let progress = self.progress.clone();
        let cancel = self.cancel.clone();
        blocking(move || {
            let tmp = paths.tmp("layer");
            fs::create_dir(&tmp).map_err(io_at("create", &tmp))?;
            let res = (|| {
                let f = File::open(&blob).map_err(io_at("open", &blob))?;
                let reader = OpReader {
                    inner: BufReader::with_capacity(256 << 10, f),
                    cancel: cancel.clone(),
                    done: 0,
                    last: 0,
                    total: size,
                    digest: digest.clone(),
                    progress: progress.clone(),
                };
                let un = unpack_layer(reader, &tmp, &opts).map_err(|source| {
                    if cancel.load(Ordering::Relaxed) {
                        ImageError::Cancelled
                    } else {
                        ImageError::Unpack {
                            digest: digest.clone(),
                            source,
                        }
                    }
                })?;
                if un.diff_id != want {
                    return Err(ImageError::DiffId {
                        digest: digest.clone(),
                        expected: want.clone(),
                        actual: un.diff_id,
                    });
                }
                if durable {
                    let d = File::open(&tmp).map_err(io_at("open", &tmp))?;
                    rustix::fs::syncfs(&d).map_err(|e| io_at("syncfs", &tmp)(e.into()))?;
                }
                let dest = paths.layer(&want);
                fs::rename(&tmp, &dest).map_err(io_at("rename into place", &dest))?;
                if durable {
                    sync_dir(&dest)?;
                }
                Ok(())
            })();
            if res.is_err() {
                let _ = remove_tree(&tmp);
            }
            res
        })
        .await?;
        self.txn.created(&key);
        Op::note(&self.unpacked, diff_id);
        report(
            &self.progress,
            &l.digest,
            Phase::Unpacked,
            l.size,
            Some(l.size),
        );
        Ok(())
    }

    async fn layer_job(&self, l: &Descriptor, diff_id: &Digest) -> Result<(), ImageError> {
        let r = match self.ensure_blob(l).await {
            Ok(()) => self.ensure_layer(l, diff_id).await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Config, layers and record for an image manifest whose bytes are already stored.
    pub async fn complete(
        &self,
        reference: String,
        manifest: &ImageManifest,
        manifest_digest: Digest,
        index_digest: Option<Digest>,
    ) -> Result<Pulled, ImageError> {
        self.ensure_blob(&manifest.config).await?;
        let cfg_path = self.store.blob_path(&manifest.config.digest);
        let cfg_bytes =
            blocking(move || fs::read(&cfg_path).map_err(io_at("read", &cfg_path))).await?;
        let cfg = manifest::parse_config(&cfg_bytes, manifest.layers.len())?;

        let n = self.store.inner.cfg.max_concurrent_downloads.max(1);
        let mut jobs = Vec::with_capacity(manifest.layers.len());
        for (l, diff_id) in manifest.layers.iter().zip(cfg.diff_ids.iter()) {
            jobs.push(self.layer_job(l, diff_id));
        }
        // Wait for every job (none is dropped mid-write), then report the first real failure.
        let results: Vec<Result<(), ImageError>> =
            futures_util::stream::iter(jobs).buffered(n).collect().await;
        let mut first: Option<ImageError> = None;
        for r in results {
            if let Err(e) = r {
                match (&first, &e) {
                    (None, _) | (Some(ImageError::Cancelled), _) => first = Some(e),
                    _ => {}
                }
            }
        }
        if let Some(e) = first {
            return Err(e);
        }

        let layers = manifest
            .layers
            .iter()
            .zip(cfg.diff_ids.iter())
            .map(|(l, d)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: d.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect();
        let rec = self.store.new_record(RecordFields {
            reference,
            manifest_digest,
            manifest_media_type: if manifest.media_type.is_empty() {
                OCI_MANIFEST.to_string()
            } else {
                manifest.media_type.clone()
            },
            index_digest,
            config_digest: manifest.config.digest.clone(),
            config_size: manifest.config.size,
            layers,
            os: cfg.config.os().to_string(),
            architecture: cfg.config.architecture().to_string(),
        });
        self.store.write_record(&rec).await?;
        Ok(Pulled {
            record: rec,
            fetched: Op::take(&self.fetched),
            reused: Op::take(&self.reused),
            unpacked: Op::take(&self.unpacked),
        })
    }
}

impl ImageStore {
    /// Pull `reference` from its registry into the store and unpack its layers. Concurrent pulls
    /// share blobs and layers and fetch each once. On failure nothing the pull added stays
    /// visible.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Pulled, ImageError> {
        let r = ImageRef::parse(reference)?;
        let _gc = self.inner.gc_lock.read().await;
        let op = Op::new(self, Source::Registry(r.clone()), opts.progress.clone());
        let res = self.pull_inner(&op, &r, opts).await;
        if res.is_err() {
            op.txn.rollback().await;
        }
        res
    }

    async fn pull_inner(
        &self,
        op: &Op<'_>,
        r: &ImageRef,
        opts: &PullOptions,
    ) -> Result<Pulled, ImageError> {
        let registry = &self.inner.registry;
        let platform = opts
            .platform
            .clone()
            .unwrap_or_else(|| self.inner.cfg.platform.clone());
        let top = registry.manifest(r).await?;
        let (manifest, manifest_digest, index_digest) =
            match manifest::parse_manifest(&top.bytes, None)? {
                Parsed::Image(m) => {
                    op.put_bytes(&top.digest, top.bytes.clone()).await?;
                    (m, top.digest, None)
                }
                Parsed::Index(idx) => {
                    let entry = manifest::select_platform(&idx, &platform)?;
                    let child_ref = r.with_digest(&entry.digest);
                    let child = registry.manifest(&child_ref).await?;
                    let Parsed::Image(m) = manifest::parse_manifest(&child.bytes, None)? else {
                        return Err(ImageError::NestedIndex(child_ref.to_string()));
                    };
                    op.put_bytes(&top.digest, top.bytes.clone()).await?;
                    op.put_bytes(&child.digest, child.bytes.clone()).await?;
                    (m, child.digest, Some(top.digest))
                }
            };
        op.complete(r.to_string(), &manifest, manifest_digest, index_digest)
            .await
    }
}
