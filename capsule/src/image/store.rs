//! The content-addressed image store.
//!
//! Layout under the root (the agent passes `ROOT/images`):
//! - `blobs/sha256/<hex>`: manifests, indexes, configs and compressed layers, each written to
//!   `tmp/` while hashed, verified against its digest (and declared size), fsynced, then renamed
//!   into place: a blob that is visible is verified.
//! - `layers/<diffid-hex>/`: unpacked layers, ready as overlayfs lowers; unpacked into `tmp/`,
//!   checked against the config's diff_id and renamed into place only on success.
//! - `refs/<sha256(reference)>.json`: image records (reference → manifest, config, layers),
//!   written atomically (temp file, fsync, rename, fsync of the directory).
//! - `tmp/`: in-progress files, emptied when the store is opened.
//! - `lock`: held (flock) by the one process that has the store open.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bolt_events::payload::ImageEvent;
use serde::{Deserialize, Serialize};

use super::digest::{Digest, Hasher};
use super::layout::LayoutError;
use super::manifest::{ManifestError, Platform};
use super::reference::{ImageRef, RefError};
use super::registry::{Registry, RegistryConfig, RegistryError};
use super::unpack::{UnpackError, UnpackOptions};

/// A failed store operation, by step.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("open image store {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("image store {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {expected}: content has digest {actual}; refusing it")]
    BlobDigest { expected: Digest, actual: Digest },
    #[error("blob {digest}: {actual} bytes where {expected} were declared; refusing it")]
    BlobSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("layer {digest}: uncompressed content has digest {actual} but the config's diff_id is {expected}; refusing it")]
    DiffId {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {digest} refused: {source}")]
    Unpack { digest: Digest, source: UnpackError },
    #[error("no image {0} in the store")]
    NotFound(String),
    #[error("image record {path} is unreadable: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("layer {0} is not unpacked in the store")]
    MissingLayer(Digest),
    #[error("manifest {0} is an index inside an index; nested indexes are not supported")]
    NestedIndex(String),
    #[error("the operation was cancelled")]
    Cancelled,
    #[error("background task failed: {0}")]
    Task(String),
}

pub(crate) fn io_at<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store root (`ROOT/images`).
    pub root: PathBuf,
    /// Registry settings (credentials, insecure registries, timeouts).
    pub registry: RegistryConfig,
    /// Platform picked from image indexes (default linux/amd64).
    pub platform: Platform,
    /// Layer unpack rules and caps.
    pub unpack: UnpackOptions,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// fsync blobs and records, syncfs each unpacked layer before it becomes visible.
    pub durable: bool,
}

impl StoreConfig {
    /// Defaults: linux/amd64, unpack rules for the current user, 4 downloads, durable.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            registry: RegistryConfig::default(),
            platform: Platform::default(),
            unpack: UnpackOptions::for_current_user(),
            max_concurrent_downloads: 4,
            durable: true,
        }
    }
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Compressed blob digest.
    pub digest: Digest,
    /// Uncompressed digest (the name of its unpacked directory).
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// What the store knows of one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalized reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// Media type of the image manifest.
    pub manifest_media_type: String,
    /// Digest of the index it was selected from, if any.
    #[serde(default)]
    pub index_digest: Option<Digest>,
    /// Config blob digest (the image id).
    pub config_digest: Digest,
    /// Layers, base first.
    pub layers: Vec<LayerRecord>,
    /// Compressed size: config plus layers.
    pub size: u64,
    /// Operating system from the config.
    pub os: String,
    /// Architecture from the config.
    pub architecture: String,
    /// When the record was written (ms since the epoch).
    pub stored_at_ms: u64,
}

impl ImageRecord {
    /// Every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.index_digest.iter())
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// The `image.pulled` event payload for this record.
    pub fn pulled_event(&self) -> ImageEvent {
        ImageEvent::Pulled {
            reference: self.reference.clone(),
            digest: self.manifest_digest.to_string(),
            config_digest: self.config_digest.to_string(),
            layers: self.layers.iter().map(|l| l.digest.to_string()).collect(),
            size: self.size,
        }
    }
}

/// The result of a pull or import: what the agent records as `ImageEvent::Pulled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The stored record.
    pub record: ImageRecord,
    /// Blobs fetched from the registry or archive by this operation.
    pub fetched: Vec<Digest>,
    /// Blobs that were already in the store.
    pub reused: Vec<Digest>,
    /// Layers unpacked by this operation (diff_ids).
    pub unpacked: Vec<Digest>,
}

impl Pulled {
    /// The event payload.
    pub fn event(&self) -> ImageEvent {
        self.record.pulled_event()
    }
}

/// A reference now naming an image: `ImageEvent::Tagged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// The new reference.
    pub reference: String,
    /// Manifest digest.
    pub digest: Digest,
}

impl Tagged {
    /// The event payload.
    pub fn event(&self) -> ImageEvent {
        ImageEvent::Tagged {
            reference: self.reference.clone(),
            digest: self.digest.to_string(),
        }
    }
}

/// A reference removed: `ImageEvent::Removed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The removed reference.
    pub reference: String,
    /// The manifest digest it named.
    pub digest: Digest,
}

impl Removed {
    /// The event payload.
    pub fn event(&self) -> ImageEvent {
        ImageEvent::Removed {
            reference: self.reference.clone(),
            digest: self.digest.to_string(),
        }
    }
}

/// What a GC removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: Vec<Digest>,
    /// Unpacked layers removed (diff_ids).
    pub layers: Vec<Digest>,
    /// Bytes of blobs freed.
    pub blob_bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub layers: PathBuf,
    pub refs: PathBuf,
    pub tmp: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Self {
        Paths {
            root: root.to_path_buf(),
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers"),
            refs: root.join("refs"),
            tmp: root.join("tmp"),
        }
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    pub fn record(&self, reference: &str) -> PathBuf {
        self.refs
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// A fresh name in `tmp/`.
    pub fn tmp(&self, kind: &str) -> PathBuf {
        let mut b = [0u8; 12];
        if getrandom::fill(&mut b).is_err() {
            // Fall back to time and a counter: names only need to be unique in this process.
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            return self.tmp.join(format!("{kind}-{t:x}-{n}"));
        }
        self.tmp.join(format!("{kind}-{}", hex::encode(b)))
    }
}

/// Per-key async locks, so one blob or layer is fetched or unpacked once at a time.
#[derive(Debug, Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(key).and_then(Weak::upgrade) {
            return l;
        }
        if map.len() > 4096 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&l));
        l
    }
}

pub(crate) struct Inner {
    pub cfg: StoreConfig,
    pub paths: Paths,
    pub registry: Registry,
    locks: KeyedLocks,
    /// Pulls and imports hold it shared; GC exclusively.
    pub gc_lock: tokio::sync::RwLock<()>,
    /// Serializes record changes (and rollbacks, which read records).
    pub records_lock: tokio::sync::Mutex<()>,
    /// In-flight users of each blob/layer key.
    pins: Mutex<HashMap<String, usize>>,
    /// Blobs fetched from registries since open.
    pub fetches: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.paths.root)
            .finish()
    }
}

/// The image store: pull, push, import, export, tag, remove, list, GC. Cheap to clone; one
/// process holds a store root at a time.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

/// What one operation created and pinned; undone on failure.
#[derive(Debug)]
pub(crate) struct Txn {
    store: Arc<Inner>,
    pinned: Mutex<Vec<String>>,
    created: Mutex<Vec<String>>,
}

pub(crate) fn blob_key(d: &Digest) -> String {
    format!("blob:{}", d.hex())
}

pub(crate) fn layer_key(d: &Digest) -> String {
    format!("layer:{}", d.hex())
}

impl Txn {
    pub fn new(store: &ImageStore) -> Self {
        Txn {
            store: store.inner.clone(),
            pinned: Mutex::default(),
            created: Mutex::default(),
        }
    }

    /// Mark `key` as in use by this operation (rollbacks of others leave it alone).
    pub fn pin(&self, key: &str) {
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if pinned.iter().any(|k| k == key) {
            return;
        }
        pinned.push(key.to_string());
        let mut pins = self.store.pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins.entry(key.to_string()).or_insert(0) += 1;
    }

    /// Record that this operation made `key` visible.
    pub fn created(&self, key: &str) {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.to_string());
    }

    /// Undo what this operation made visible, unless a record or another operation uses it.
    pub async fn rollback(&self) {
        let store = self.store.clone();
        let _records = store.records_lock.lock().await;
        let referenced = match referenced(&store.paths) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "rollback: cannot read records; leaving blobs for gc");
                return;
            }
        };
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        let mut doomed_dirs = Vec::new();
        {
            let pins = store.pins.lock().unwrap_or_else(|p| p.into_inner());
            for key in &created {
                if pins.get(key).copied().unwrap_or(0) > 1 || referenced.contains(key) {
                    continue;
                }
                if let Some(hex) = key.strip_prefix("blob:") {
                    let _ = fs::remove_file(store.paths.blobs.join(hex));
                } else if let Some(hex) = key.strip_prefix("layer:") {
                    let to = store.paths.tmp("rollback");
                    if fs::rename(store.paths.layers.join(hex), &to).is_ok() {
                        doomed_dirs.push(to);
                    }
                }
            }
        }
        for d in doomed_dirs {
            let _ = remove_tree(&d);
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let pinned = std::mem::take(&mut *self.pinned.lock().unwrap_or_else(|p| p.into_inner()));
        let mut pins = self.store.pins.lock().unwrap_or_else(|p| p.into_inner());
        for k in pinned {
            if let Some(n) = pins.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pins.remove(&k);
                }
            }
        }
    }
}

/// Keys (`blob:<hex>`, `layer:<hex>`) used by any record.
fn referenced(paths: &Paths) -> Result<HashSet<String>, ImageError> {
    let mut set = HashSet::new();
    for r in read_records(paths)? {
        for b in r.blobs() {
            set.insert(blob_key(b));
        }
        for l in &r.layers {
            set.insert(layer_key(&l.diff_id));
        }
    }
    Ok(set)
}

fn read_records(paths: &Paths) -> Result<Vec<ImageRecord>, ImageError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(&paths.refs).map_err(io_at("read", &paths.refs))?;
    for ent in rd {
        let ent = ent.map_err(io_at("read", &paths.refs))?;
        let p = ent.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match read_record_file(&p) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "skipping unreadable image record"),
        }
    }
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(out)
}

fn read_record_file(p: &Path) -> Result<ImageRecord, ImageError> {
    let bytes = fs::read(p).map_err(io_at("read", p))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Record {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Remove a directory tree without following symlinks, fixing permissions on the way.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    use std::os::unix::ffi::OsStrExt;
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        parent,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    super::unpack::remove_at(&dir, name.as_bytes()).map_err(io::Error::from)
}

/// Write `bytes` to `dest` atomically through a temp file in `tmp`.
pub(crate) fn write_atomic(
    tmp: &Path,
    dest: &Path,
    bytes: &[u8],
    durable: bool,
) -> Result<(), ImageError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
        .map_err(io_at("create", tmp))?;
    let res = (|| {
        f.write_all(bytes).map_err(io_at("write", tmp))?;
        if durable {
            f.sync_all().map_err(io_at("fsync", tmp))?;
        }
        fs::rename(tmp, dest).map_err(io_at("rename into place", dest))?;
        if durable {
            sync_dir(dest)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
    }
    res
}

pub(crate) fn sync_dir(child: &Path) -> Result<(), ImageError> {
    if let Some(dir) = child.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at("fsync", dir))?;
    }
    Ok(())
}

/// Stream `reader` into the blob store: hashed while written to `tmp/`, size-capped, verified,
/// fsynced and renamed into place. With `expect` unset the digest is whatever the content
/// hashes to. `on_bytes` sees the running count.
pub(crate) fn write_blob<R: Read>(
    paths: &Paths,
    mut reader: R,
    expect: Option<&Digest>,
    expect_size: Option<u64>,
    durable: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(Digest, u64), ImageError> {
    let tmp = paths.tmp("blob");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_at("create", &tmp))?;
    let res = (|| {
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at("read blob content for", &tmp)(e)),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            if let (Some(size), Some(d)) = (expect_size, expect) {
                if hasher.len() > size {
                    return Err(ImageError::BlobSize {
                        digest: d.clone(),
                        expected: size,
                        actual: hasher.len(),
                    });
                }
            }
            f.write_all(chunk).map_err(io_at("write", &tmp))?;
            on_bytes(hasher.len());
        }
        let len = hasher.len();
        let actual = hasher.finish();
        if let Some(d) = expect {
            if let Some(size) = expect_size {
                if len != size && actual != *d {
                    return Err(ImageError::BlobSize {
                        digest: d.clone(),
                        expected: size,
                        actual: len,
                    });
                }
            }
            if actual != *d {
                return Err(ImageError::BlobDigest {
                    expected: d.clone(),
                    actual,
                });
            }
            if let Some(size) = expect_size {
                if len != size {
                    return Err(ImageError::BlobSize {
                        digest: d.clone(),
                        expected: size,
                        actual: len,
                    });
                }
            }
        }
        if durable {
            f.sync_all().map_err(io_at("fsync", &tmp))?;
        }
        let dest = paths.blob(&actual);
        fs::rename(&tmp, &dest).map_err(io_at("rename into place", &dest))?;
        if durable {
            sync_dir(&dest)?;
        }
        Ok((actual, len))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Run blocking work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ImageStore {
    /// Open (creating) the store at `cfg.root`: take its lock and empty `tmp/` (what an
    /// interrupted operation left).
    pub fn open(cfg: StoreConfig) -> Result<Self, ImageError> {
        let paths = Paths::new(&cfg.root);
        for d in [
            &paths.root,
            &paths.blobs,
            &paths.layers,
            &paths.refs,
            &paths.tmp,
        ] {
            fs::create_dir_all(d).map_err(|source| ImageError::Open {
                path: d.clone(),
                source,
            })?;
        }
        let lock_path = paths.root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| ImageError::Open {
                path: lock_path.clone(),
                source,
            })?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(ImageError::Locked {
                    path: paths.root.clone(),
                })
            }
            Err(e) => {
                return Err(ImageError::Open {
                    path: lock_path,
                    source: e.into(),
                })
            }
        }
        let rd = fs::read_dir(&paths.tmp).map_err(|source| ImageError::Open {
            path: paths.tmp.clone(),
            source,
        })?;
        for ent in rd.flatten() {
            let p = ent.path();
            if let Err(e) = remove_tree(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot clean temp entry");
            }
        }
        let registry = Registry::new(cfg.registry.clone());
        Ok(ImageStore {
            inner: Arc::new(Inner {
                cfg,
                paths,
                registry,
                locks: KeyedLocks::default(),
                gc_lock: tokio::sync::RwLock::new(()),
                records_lock: tokio::sync::Mutex::new(()),
                pins: Mutex::default(),
                fetches: AtomicU64::new(0),
                _lock: lock,
            }),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.inner.paths.root
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Blobs fetched from registries since the store was opened.
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Path of a blob (present or not).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.paths.blob(d)
    }

    /// Path of an unpacked layer directory (present or not).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.paths.layer(diff_id)
    }

    /// Whether a verified blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.inner.paths.blob(d).is_file()
    }

    pub(crate) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.get(key)
    }

    /// The record for a reference.
    pub async fn get(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let r = ImageRef::parse(reference)?;
        let p = self.inner.paths.record(&r.to_string());
        blocking(move || match fs::metadata(&p) {
            Ok(_) => read_record_file(&p).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at("stat", &p)(e)),
        })
        .await
    }

    /// The record for a reference, or `NotFound`.
    pub async fn require(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        self.get(reference)
            .await?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// Every image record, sorted by reference.
    pub async fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let paths = self.inner.paths.clone();
        blocking(move || read_records(&paths)).await
    }

    /// The OCI image configuration (entrypoint, env, user, ...) of a stored image.
    pub async fn image_config(
        &self,
        reference: &str,
    ) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        let rec = self.require(reference).await?;
        let p = self.inner.paths.blob(&rec.config_digest);
        let bytes = blocking(move || fs::read(&p).map_err(io_at("read", &p))).await?;
        Ok(super::manifest::parse_config(&bytes, rec.layers.len())?.config)
    }

    /// Unpacked layer directories of a stored image, base first (overlayfs `lowerdir` lists
    /// them top first: reverse this).
    pub async fn layer_dirs(&self, reference: &str) -> Result<Vec<PathBuf>, ImageError> {
        let rec = self.require(reference).await?;
        let dirs: Vec<PathBuf> = rec
            .layers
            .iter()
            .map(|l| self.inner.paths.layer(&l.diff_id))
            .collect();
        for (d, l) in dirs.iter().zip(&rec.layers) {
            if !d.is_dir() {
                return Err(ImageError::MissingLayer(l.diff_id.clone()));
            }
        }
        Ok(dirs)
    }

    pub(crate) async fn write_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let _g = self.inner.records_lock.lock().await;
        self.write_record_locked(rec).await
    }

    async fn write_record_locked(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Record {
            path: self.inner.paths.refs.clone(),
            reason: e.to_string(),
        })?;
        let dest = self.inner.paths.record(&rec.reference);
        let tmp = self.inner.paths.tmp("record");
        let durable = self.inner.cfg.durable;
        blocking(move || write_atomic(&tmp, &dest, &bytes, durable)).await
    }

    pub(crate) fn new_record(&self, fields: RecordFields) -> ImageRecord {
        ImageRecord {
            reference: fields.reference,
            manifest_digest: fields.manifest_digest,
            manifest_media_type: fields.manifest_media_type,
            index_digest: fields.index_digest,
            size: fields.config_size + fields.layers.iter().map(|l| l.size).sum::<u64>(),
            config_digest: fields.config_digest,
            layers: fields.layers,
            os: fields.os,
            architecture: fields.architecture,
            stored_at_ms: now_ms(),
        }
    }

    /// Point `dst` at the image `src` names.
    pub async fn tag(&self, src: &str, dst: &str) -> Result<Tagged, ImageError> {
        let dst = ImageRef::parse(dst)?.to_string();
        let _g = self.inner.records_lock.lock().await;
        let mut rec = self.require(src).await?;
        rec.reference = dst.clone();
        rec.stored_at_ms = now_ms();
        self.write_record_locked(&rec).await?;
        Ok(Tagged {
            reference: dst,
            digest: rec.manifest_digest,
        })
    }

    /// Forget a reference. Its blobs and layers stay until [`ImageStore::gc`].
    pub async fn remove(&self, reference: &str) -> Result<Removed, ImageError> {
        let r = ImageRef::parse(reference)?.to_string();
        let _g = self.inner.records_lock.lock().await;
        let rec = self.require(&r).await?;
        let p = self.inner.paths.record(&r);
        let durable = self.inner.cfg.durable;
        blocking(move || {
            fs::remove_file(&p).map_err(io_at("remove", &p))?;
            if durable {
                sync_dir(&p)?;
            }
            Ok(())
        })
        .await?;
        Ok(Removed {
            reference: r,
            digest: rec.manifest_digest,
        })
    }

    /// Remove blobs and unpacked layers no record uses, and anything left in `tmp/`. Waits for
    /// in-flight pulls and imports. Layers in use by running capsules must be kept referenced
    /// by a record (the agent refuses `rmi` of an image in use).
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        let _w = self.inner.gc_lock.write().await;
        let _g = self.inner.records_lock.lock().await;
        let paths = self.inner.paths.clone();
        blocking(move || {
            let keep = referenced(&paths)?;
            let mut report = GcReport::default();
            let rd = fs::read_dir(&paths.blobs).map_err(io_at("read", &paths.blobs))?;
            for ent in rd {
                let ent = ent.map_err(io_at("read", &paths.blobs))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let Ok(d) = Digest::from_hex(&name) else {
                    let _ = remove_tree(&ent.path());
                    continue;
                };
                if keep.contains(&blob_key(&d)) {
                    continue;
                }
                let len = ent.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(ent.path()).map_err(io_at("remove", &ent.path()))?;
                report.blob_bytes += len;
                report.blobs.push(d);
            }
            let rd = fs::read_dir(&paths.layers).map_err(io_at("read", &paths.layers))?;
            for ent in rd {
                let ent = ent.map_err(io_at("read", &paths.layers))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let d = Digest::from_hex(&name).ok();
                if d.as_ref().is_some_and(|d| keep.contains(&layer_key(d))) {
                    continue;
                }
                remove_tree(&ent.path()).map_err(io_at("remove", &ent.path()))?;
                if let Some(d) = d {
                    report.layers.push(d);
                }
            }
            let rd = fs::read_dir(&paths.tmp).map_err(io_at("read", &paths.tmp))?;
            for ent in rd.flatten() {
                let _ = remove_tree(&ent.path());
            }
            report.blobs.sort();
            report.layers.sort();
            Ok(report)
        })
        .await
    }
}

/// Fields of a new record.
#[derive(Debug)]
pub(crate) struct RecordFields {
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    pub os: String,
    pub architecture: String,
}
