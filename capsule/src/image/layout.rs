//! Import and export: OCI image layout as a directory or a tar, and docker-archive (`docker
//! save`) tars on import. Everything imported goes through the same verified blob path and layer
//! unpack as a pull.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::manifest::{
    self, Descriptor, ImageIndex, ImageManifest, Parsed, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use super::progress::ProgressFn;
use super::pull::{Op, Source};
use super::reference::ImageRef;
use super::store::{blocking, io_at, write_blob, ImageError, ImageRecord, ImageStore, Pulled};

/// Annotation holding the tag (or full name) of an index.json entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and bolt write with the full reference.
pub const IMAGE_NAME: &str = "io.containerd.image.name";
const MAX_SMALL_FILE: u64 = 16 << 20;

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path} is neither an OCI image layout directory nor an image archive")]
    Unknown { path: PathBuf },
    #[error("{what} in the archive is not valid json: {reason}")]
    Json { what: String, reason: String },
    #[error("{what} in the archive is {size} bytes, over the limit of {MAX_SMALL_FILE}")]
    TooLarge { what: String, size: u64 },
    #[error("the archive has no image named {0}")]
    NoSuchImage(String),
    #[error("the archive holds {0} images without names: pass a reference to pick one")]
    Unnamed(usize),
    #[error("the archive is empty: no images in it")]
    Empty,
    #[error("docker archive lists {path:?}, which is not in the archive")]
    MissingFile { path: String },
    #[error("archive entry {0:?} has an unsafe name")]
    EntryName(String),
    #[error("read archive: {0}")]
    Read(io::Error),
}

/// Options for an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name the imported image (needed when the archive names none; with several images, picks
    /// the one whose tag matches).
    pub reference: Option<String>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// An OCI image layout directory.
    OciDir,
    /// The same layout in a tar file.
    OciTar,
}

#[derive(Serialize)]
struct OciLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: &'static str,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// An image found in an archive: its manifest and the names it carries.
struct Found {
    manifest: ImageManifest,
    digest: Digest,
    index: Option<Digest>,
    names: Vec<String>,
}

impl Found {
    fn clone_shallow(&self) -> Found {
        Found {
            manifest: self.manifest.clone(),
            digest: self.digest.clone(),
            index: self.index.clone(),
            names: Vec::new(),
        }
    }
}

fn names_of(d: &Descriptor) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(n) = d.annotations.get(IMAGE_NAME) {
        v.push(n.clone());
    }
    if let Some(n) = d.annotations.get(REF_NAME) {
        v.push(n.clone());
    }
    v
}

/// Normalize an archive member name: relative, no `..`, no empty components.
fn member_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn blob_member(name: &str) -> Option<Digest> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    Digest::from_hex(hex).ok()
}

impl ImageStore {
    /// Import an OCI image layout (directory or tar) or a docker-archive tar. Every blob is
    /// verified, every layer unpacked under the same rules as a pull. Returns one result per
    /// image stored.
    pub async fn import(
        &self,
        path: &Path,
        opts: &ImportOptions,
    ) -> Result<Vec<Pulled>, ImageError> {
        let _gc = self.inner.gc_lock.read().await;
        let is_dir = fs::metadata(path).map_err(io_at("stat", path))?.is_dir();
        if is_dir {
            if !path.join("index.json").is_file() {
                return Err(LayoutError::Unknown {
                    path: path.to_path_buf(),
                }
                .into());
            }
            let op = Op::new(self, Source::Dir(path.to_path_buf()), opts.progress.clone());
            let res = self.import_dir(&op, path, opts).await;
            op.txn.rollback().await;
            res
        } else {
            let op = Op::new(self, Source::Store, opts.progress.clone());
            let res = self.import_tar(&op, path, opts).await;
            // Drops what the archive held that no stored image uses (and everything on failure).
            op.txn.rollback().await;
            res
        }
    }

    async fn import_dir(
        &self,
        op: &Op<'_>,
        dir: &Path,
        opts: &ImportOptions,
    ) -> Result<Vec<Pulled>, ImageError> {
        let dir2 = dir.to_path_buf();
        let read = move |d: &Digest| -> Result<Vec<u8>, ImageError> {
            let p = dir2.join("blobs").join("sha256").join(d.hex());
            read_small(&p, &d.to_string())
        };
        let index_bytes = read_small(&dir.join("index.json"), "index.json")?;
        let found = self.find_images(&index_bytes, &read)?;
        self.store_found(op, found, opts, &read).await
    }

    /// Walk index.json down to image manifests (one per entry; nested indexes by platform).
    fn find_images(
        &self,
        index_bytes: &[u8],
        read: &dyn Fn(&Digest) -> Result<Vec<u8>, ImageError>,
    ) -> Result<Vec<Found>, ImageError> {
        let index: ImageIndex =
            serde_json::from_slice(index_bytes).map_err(|e| LayoutError::Json {
                what: "index.json".into(),
                reason: e.to_string(),
            })?;
        let mut found = Vec::new();
        for entry in &index.manifests {
            let bytes = read(&entry.digest)?;
            if Digest::of(&bytes) != entry.digest {
                return Err(ImageError::BlobDigest {
                    expected: entry.digest.clone(),
                    actual: Digest::of(&bytes),
                });
            }
            match manifest::parse_manifest(&bytes, Some(&entry.media_type))? {
                Parsed::Image(m) => found.push(Found {
                    manifest: m,
                    digest: entry.digest.clone(),
                    index: None,
                    names: names_of(entry),
                }),
                Parsed::Index(idx) => {
                    let child = manifest::select_platform(&idx, &self.inner.cfg.platform)?;
                    let cbytes = read(&child.digest)?;
                    if Digest::of(&cbytes) != child.digest {
                        return Err(ImageError::BlobDigest {
                            expected: child.digest.clone(),
                            actual: Digest::of(&cbytes),
                        });
                    }
                    let Parsed::Image(m) =
                        manifest::parse_manifest(&cbytes, Some(&child.media_type))?
                    else {
                        return Err(ImageError::NestedIndex(child.digest.to_string()));
                    };
                    found.push(Found {
                        manifest: m,
                        digest: child.digest.clone(),
                        index: Some(entry.digest.clone()),
                        names: names_of(entry),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Pick the images to store and name them, then complete each like a pull.
    async fn store_found(
        &self,
        op: &Op<'_>,
        found: Vec<Found>,
        opts: &ImportOptions,
        read: &(dyn Fn(&Digest) -> Result<Vec<u8>, ImageError> + Sync),
    ) -> Result<Vec<Pulled>, ImageError> {
        if found.is_empty() {
            return Err(LayoutError::Empty.into());
        }
        let mut chosen: Vec<(String, Found)> = Vec::new();
        match &opts.reference {
            Some(want) => {
                let r = ImageRef::parse(want)?;
                let tag = r.tag().unwrap_or("latest").to_string();
                let full = r.to_string();
                let n = found.len();
                let mut pick = None;
                for f in found {
                    let matches = f.names.iter().any(|name| {
                        name == &tag
                            || ImageRef::parse(name)
                                .map(|x| x.to_string() == full)
                                .unwrap_or(false)
                    });
                    if matches || n == 1 {
                        pick = Some(f);
                        if matches {
                            break;
                        }
                    }
                }
                let f = pick.ok_or_else(|| LayoutError::NoSuchImage(full.clone()))?;
                chosen.push((full, f));
            }
            None => {
                let mut unnamed = 0;
                for f in found {
                    // A full name (with a registry, repository or tag) names it; a bare tag does not.
                    let mut names: Vec<String> = f
                        .names
                        .iter()
                        .filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
                        .filter_map(|n| ImageRef::parse(n).ok())
                        .map(|r| r.to_string())
                        .collect();
                    names.dedup();
                    if names.is_empty() {
                        unnamed += 1;
                    }
                    for n in names {
                        chosen.push((n, f.clone_shallow()));
                    }
                }
                if unnamed > 0 {
                    return Err(LayoutError::Unnamed(unnamed).into());
                }
            }
        }
        let mut out = Vec::new();
        for (reference, f) in chosen {
            let bytes = read(&f.digest)?;
            op.put_bytes(&f.digest, Bytes::from(bytes)).await?;
            if let Some(idx) = &f.index {
                let ib = read(idx)?;
                op.put_bytes(idx, Bytes::from(ib)).await?;
            }
            out.push(
                op.complete(reference, &f.manifest, f.digest.clone(), f.index.clone())
                    .await?,
            );
        }
        Ok(out)
    }

    async fn import_tar(
        &self,
        op: &Op<'_>,
        path: &Path,
        opts: &ImportOptions,
    ) -> Result<Vec<Pulled>, ImageError> {
        // Pass 1 (blocking): every blob-like member goes into the store, verified; small json
        // members are kept in memory.
        let paths = self.inner.paths.clone();
        let durable = self.inner.cfg.durable;
        let p = path.to_path_buf();
        let written: Arc<Mutex<Vec<Digest>>> = Arc::default();
        let w2 = written.clone();
        let scanned = blocking(move || scan_tar(&p, &paths, durable, &w2)).await;
        // Everything the scan stored is this import's, to be taken back if unused (even when
        // the scan failed half way).
        for d in written.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            op.txn.pin(&super::store::blob_key(d));
            op.txn.created(&super::store::blob_key(d));
        }
        let scanned = scanned?;
        let small = scanned.small;
        let blobs = scanned.blobs;
        let store = self.clone();
        let read = move |d: &Digest| -> Result<Vec<u8>, ImageError> {
            let p = store.blob_path(d);
            read_small(&p, &d.to_string())
        };
        if let Some(index_bytes) = small.get("index.json") {
            let found = self.find_images(index_bytes, &read)?;
            return self.store_found(op, found, opts, &read).await;
        }
        let Some(manifest_json) = small.get("manifest.json") else {
            return Err(LayoutError::Unknown {
                path: path.to_path_buf(),
            }
            .into());
        };
        // docker-archive: build an OCI manifest per image.
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(manifest_json).map_err(|e| LayoutError::Json {
                what: "manifest.json".into(),
                reason: e.to_string(),
            })?;
        let mut found = Vec::new();
        for e in entries {
            let member = |name: &str| -> Result<Digest, ImageError> {
                let n = member_name(name.as_bytes())
                    .ok_or_else(|| LayoutError::EntryName(name.to_string()))?;
                blobs.get(&n).cloned().ok_or_else(|| {
                    LayoutError::MissingFile {
                        path: name.to_string(),
                    }
                    .into()
                })
            };
            let config = member(&e.config)?;
            let config_size = fs::metadata(self.blob_path(&config))
                .map_err(io_at("stat", &self.blob_path(&config)))?
                .len();
            let mut layers = Vec::new();
            for l in &e.layers {
                let d = member(l)?;
                let bp = self.blob_path(&d);
                let size = fs::metadata(&bp).map_err(io_at("stat", &bp))?.len();
                let mut head = [0u8; 4];
                let n = File::open(&bp)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(io_at("read", &bp))?;
                let media_type = match head.get(..n).unwrap_or_default() {
                    [0x1f, 0x8b, ..] => OCI_LAYER_GZIP,
                    [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
                    _ => OCI_LAYER_TAR,
                };
                layers.push(Descriptor {
                    media_type: media_type.to_string(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                });
            }
            let m = ImageManifest {
                schema_version: 2,
                media_type: OCI_MANIFEST.to_string(),
                config: Descriptor {
                    media_type: OCI_CONFIG.to_string(),
                    digest: config,
                    size: config_size,
                    platform: None,
                    annotations: BTreeMap::new(),
                },
                layers,
                annotations: BTreeMap::new(),
            };
            let bytes = serde_json::to_vec(&m).map_err(|e| LayoutError::Json {
                what: "manifest".into(),
                reason: e.to_string(),
            })?;
            let digest = Digest::of(&bytes);
            op.put_bytes(&digest, Bytes::from(bytes)).await?;
            let names = e.repo_tags.unwrap_or_default();
            found.push(Found {
                manifest: m,
                digest,
                index: None,
                names,
            });
        }
        self.store_found(op, found, opts, &read).await
    }

    /// Export images as an OCI image layout (directory or tar) at `dest`, which must not exist.
    /// index.json names each image with `org.opencontainers.image.ref.name` (its tag) and
    /// `io.containerd.image.name` (the full reference).
    pub async fn export(
        &self,
        references: &[String],
        dest: &Path,
        format: ExportFormat,
    ) -> Result<(), ImageError> {
        let mut records: Vec<ImageRecord> = Vec::new();
        for r in references {
            records.push(self.require(r).await?);
        }
        let dest = dest.to_path_buf();
        let store = self.clone();
        blocking(move || {
            if dest.exists() {
                return Err(io_at("export to", &dest)(io::Error::from(
                    io::ErrorKind::AlreadyExists,
                )));
            }
            let mut entries = Vec::new();
            let mut blobs: Vec<Digest> = Vec::new();
            for rec in &records {
                let mpath = store.blob_path(&rec.manifest_digest);
                let size = fs::metadata(&mpath).map_err(io_at("stat", &mpath))?.len();
                let r = ImageRef::parse(&rec.reference)?;
                let mut annotations = BTreeMap::new();
                annotations.insert(IMAGE_NAME.to_string(), rec.reference.clone());
                annotations.insert(
                    REF_NAME.to_string(),
                    r.tag()
                        .map(str::to_string)
                        .unwrap_or_else(|| rec.manifest_digest.to_string()),
                );
                entries.push(Descriptor {
                    media_type: rec.manifest_media_type.clone(),
                    digest: rec.manifest_digest.clone(),
                    size,
                    platform: Some(manifest::PlatformSpec {
                        architecture: rec.architecture.clone(),
                        os: rec.os.clone(),
                        variant: None,
                    }),
                    annotations,
                });
                for d in [&rec.manifest_digest, &rec.config_digest]
                    .into_iter()
                    .chain(rec.layers.iter().map(|l| &l.digest))
                {
                    if !blobs.contains(d) {
                        blobs.push(d.clone());
                    }
                }
            }
            let index = ImageIndex {
                schema_version: 2,
                media_type: OCI_INDEX.to_string(),
                manifests: entries,
                annotations: BTreeMap::new(),
            };
            let index_json = serde_json::to_vec_pretty(&index).map_err(|e| LayoutError::Json {
                what: "index.json".into(),
                reason: e.to_string(),
            })?;
            let layout_json =
                serde_json::to_vec(&OciLayoutFile { version: "1.0.0" }).map_err(|e| {
                    LayoutError::Json {
                        what: "oci-layout".into(),
                        reason: e.to_string(),
                    }
                })?;
            // The temp file sits beside the destination, not in the store: a rename across
            // filesystems (store on one, `-o /dev/shm/x` on another) would fail with EXDEV.
            let tmp = export_tmp_path(&dest);
            let res = match format {
                ExportFormat::OciDir => write_dir(&tmp, &store, &blobs, &index_json, &layout_json),
                ExportFormat::OciTar => write_tar(&tmp, &store, &blobs, &index_json, &layout_json),
            };
            let res = res
                .and_then(|()| fs::rename(&tmp, &dest).map_err(io_at("rename into place", &dest)));
            if res.is_err() {
                let _ = super::store::remove_tree(&tmp);
            }
            res
        })
        .await
    }
}

/// A hidden, unique sibling of `dest` to write an export into before renaming it into place.
fn export_tmp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dest.with_file_name(format!(".{name}.bolt-tmp-{}-{nanos}", std::process::id()))
}

fn read_small(p: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    let f = File::open(p).map_err(io_at("open", p))?;
    let size = f.metadata().map_err(io_at("stat", p))?.len();
    if size > MAX_SMALL_FILE {
        return Err(LayoutError::TooLarge {
            what: what.to_string(),
            size,
        }
        .into());
    }
    let mut v = Vec::with_capacity(size as usize);
    f.take(MAX_SMALL_FILE)
        .read_to_end(&mut v)
        .map_err(io_at("read", p))?;
    Ok(v)
}

fn write_dir(
    tmp: &Path,
    store: &ImageStore,
    blobs: &[Digest],
    index: &[u8],
    layout: &[u8],
) -> Result<(), ImageError> {
    let bdir = tmp.join("blobs").join("sha256");
    fs::create_dir_all(&bdir).map_err(io_at("create", &bdir))?;
    for d in blobs {
        let to = bdir.join(d.hex());
        fs::copy(store.blob_path(d), &to).map_err(io_at("copy blob to", &to))?;
    }
    fs::write(tmp.join("index.json"), index).map_err(io_at("write", &tmp.join("index.json")))?;
    fs::write(tmp.join("oci-layout"), layout).map_err(io_at("write", &tmp.join("oci-layout")))?;
    Ok(())
}

fn write_tar(
    tmp: &Path,
    store: &ImageStore,
    blobs: &[Digest],
    index: &[u8],
    layout: &[u8],
) -> Result<(), ImageError> {
    let f = File::create(tmp).map_err(io_at("create", tmp))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    let werr = |e: io::Error| io_at("write", tmp)(e);
    let small = |b: &mut tar::Builder<BufWriter<File>>,
                 name: &str,
                 data: &[u8]|
     -> Result<(), ImageError> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).map_err(werr)
    };
    small(&mut b, "oci-layout", layout)?;
    for name in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, name, io::empty()).map_err(werr)?;
    }
    for d in blobs {
        let p = store.blob_path(d);
        let mut f = File::open(&p).map_err(io_at("open", &p))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(f.metadata().map_err(io_at("stat", &p))?.len());
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)
            .map_err(werr)?;
    }
    small(&mut b, "index.json", index)?;
    let mut w = b.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    Ok(())
}

struct Scanned {
    /// Member name → digest of its content (stored as a blob).
    blobs: HashMap<String, Digest>,
    /// Small json members.
    small: HashMap<String, Vec<u8>>,
}

/// Read an archive once: `blobs/sha256/<hex>` members are stored verified against their names;
/// any other regular member is stored under the digest of its content (docker-archive layers
/// and configs); top-level json members are also kept in memory.
fn scan_tar(
    path: &Path,
    paths: &super::store::Paths,
    durable: bool,
    written: &Mutex<Vec<Digest>>,
) -> Result<Scanned, ImageError> {
    let note = |d: &Digest| {
        written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d.clone())
    };
    let f = File::open(path).map_err(io_at("open", path))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut out = Scanned {
        blobs: HashMap::new(),
        small: HashMap::new(),
    };
    for entry in archive.entries().map_err(LayoutError::Read)? {
        let mut entry = entry.map_err(LayoutError::Read)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file()) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let name = member_name(&raw)
            .ok_or_else(|| LayoutError::EntryName(String::from_utf8_lossy(&raw).into_owned()))?;
        let size = entry.header().size().map_err(LayoutError::Read)?;
        let is_json = !name.contains('/')
            && (name.ends_with(".json") || name == "oci-layout" || name == "repositories");
        if is_json {
            if size > MAX_SMALL_FILE {
                return Err(LayoutError::TooLarge { what: name, size }.into());
            }
            let mut v = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_SMALL_FILE)
                .read_to_end(&mut v)
                .map_err(LayoutError::Read)?;
            if name.ends_with(".json") && name != "index.json" && name != "manifest.json" {
                let (d, _) = write_blob(paths, &v[..], None, None, durable, &mut |_| {})?;
                note(&d);
                out.blobs.insert(name.clone(), d);
            }
            out.small.insert(name, v);
            continue;
        }
        let expect = blob_member(&name);
        let dest_exists = expect.as_ref().is_some_and(|d| paths.blob(d).is_file());
        let d = if dest_exists { expect.clone() } else { None };
        let d = match d {
            Some(d) => d,
            None => {
                write_blob(
                    paths,
                    &mut entry,
                    expect.as_ref(),
                    Some(size).filter(|_| expect.is_some()),
                    durable,
                    &mut |_| {},
                )?
                .0
            }
        };
        note(&d);
        out.blobs.insert(name, d);
    }
    Ok(out)
}
