//! `commit`: a capsule's overlay upper directory as an OCI layer (a tar of the changes), and
//! [`commit_image`]: that layer on top of the capsule's base image, stored as a new image.
//!
//! The layer:
//! - entries in a fixed order (depth first, names sorted bytewise), a directory before its
//!   contents, GNU headers with numeric ids only, no user or group names, so the same upper
//!   directory always gives the same bytes and `diff_id`; mtimes can be clamped for
//!   reproducible images ([`CommitOptions::clamp_mtime`]);
//! - overlay whiteouts (a 0/0 character device, or a file with `{trusted,user}.overlay.whiteout`)
//!   become `.wh.NAME`; an opaque directory (`overlay.opaque=y`) gets `.wh..wh..opq` right after
//!   its own entry;
//! - other `overlay.*` xattrs are dropped; the rest (`security.capability`, `user.*`) travel as
//!   PAX `SCHILY.xattr.*` records; hard links inside the upper directory stay hard links;
//!   sockets are skipped; a file whose name starts with `.wh.` is refused (it would read as a
//!   whiteout);
//! - upper directories made with `redirect_dir` or `metacopy` (their content lives partly in
//!   the lower layers) are refused: Bolt mounts overlays without them;
//! - directories are listed and files opened through `openat2` beneath the upper directory with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: a running capsule that swaps a file or a directory
//!   for a symlink (to a host file) during the walk makes the commit fail instead of reading what
//!   the link points at.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use serde_json::{json, Value};
use tar::{EntryType, Header};

use crate::image::digest::HashingWriter;
use crate::image::manifest::{
    DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST,
};
use crate::image::{Digest, ImageStore, ImportOptions};

/// Errors of a commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading the upper directory failed.
    #[error("read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The upper directory holds something a layer cannot express.
    #[error("{path}: {what} cannot be committed")]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// An entry changed between the walk's look at it and its opening (a running capsule
    /// swapped it): the commit is refused rather than reading something else.
    #[error("{0} changed while it was committed")]
    Changed(PathBuf),
    /// Writing the layer failed.
    #[error("write the layer: {0}")]
    Write(#[source] io::Error),
    /// The base image's config is not usable JSON.
    #[error("base image config: {0}")]
    Config(String),
    /// A staging step failed.
    #[error("{step} {path}: {source}")]
    Stage {
        /// The step.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image store refused or failed.
    #[error(transparent)]
    Image(#[from] crate::image::store::ImageError),
    /// The background task failed.
    #[error("commit task failed: {0}")]
    Task(String),
}

/// How a layer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitOptions {
    /// Clamp every mtime to at most this (seconds since the epoch), as `SOURCE_DATE_EPOCH`
    /// does: a rebuilt layer then has the same bytes.
    pub clamp_mtime: Option<u64>,
}

/// A written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// sha256 of the uncompressed tar: the layer's `diff_id`.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Entries written (whiteouts and opaque markers included).
    pub entries: u64,
    /// Whiteouts and opaque markers among them.
    pub whiteouts: u64,
    /// Sockets left out.
    pub skipped: u64,
}

const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// The overlay metadata of one entry, and the xattrs to keep.
#[derive(Debug, Default)]
struct Attrs {
    whiteout: bool,
    opaque: bool,
    keep: Vec<(Vec<u8>, Vec<u8>)>,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> CommitError + '_ {
    move |source| CommitError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Every xattr of `path` (not following a symlink), sorted by name.
fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rustix::io::Errno;
    let names = loop {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(errno(e)),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(got) => {
                buf.truncate(got);
                break buf;
            }
            // Grew between the two calls.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(errno(e)),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let os = OsStr::from_bytes(name);
        let value = loop {
            let n = match rustix::fs::lgetxattr_query(path, os) {
                Ok(n) => n,
                // Removed in between.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(errno(e)),
            };
            let mut buf = vec![0u8; n];
            match rustix::fs::lgetxattr(path, os, &mut buf[..]) {
                Ok(got) => {
                    buf.truncate(got);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(errno(e)),
            }
        };
        if let Some(v) = value {
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

fn attrs(path: &Path, is_dir: bool) -> Result<Attrs, CommitError> {
    let mut a = Attrs::default();
    for (name, value) in list_xattrs(path).map_err(read_err(path))? {
        let Some(key) = OVERLAY_PREFIXES.iter().find_map(|p| name.strip_prefix(*p)) else {
            a.keep.push((name, value));
            continue;
        };
        match key {
            b"whiteout" if !is_dir => a.whiteout = true,
            // "x" (kernel >= 6.7) marks a directory holding xattr whiteouts, not an opaque one.
            b"opaque" if is_dir && value == b"y" => a.opaque = true,
            b"redirect" => {
                return Err(CommitError::Unsupported {
                    path: path.to_path_buf(),
                    what: "a renamed directory (overlay redirect_dir)",
                })
            }
            b"metacopy" => {
                return Err(CommitError::Unsupported {
                    path: path.to_path_buf(),
                    what: "a metadata-only copy (overlay metacopy)",
                })
            }
            // origin, impure, nlink, upper, uuid, whiteouts, ...: overlay's own bookkeeping.
            _ => {}
        }
    }
    Ok(a)
}

/// One PAX record: `"LEN KEY=VALUE\n"`, where LEN counts the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Opens `rel` beneath the directory `root` without following any symlink (and no magic link,
/// no `..` escape); an empty `rel` is `root` itself.
fn open_beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // (openat2 refuses O_PATH with flags beyond O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.)
    let flags = match flags.contains(OFlags::PATH) {
        true => flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        false => flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
            // A concurrent rename anywhere on the system: the kernel asks to retry.
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other.map_err(errno),
        }
    }
}

/// A test hook run with an entry's name in the layer right before it is opened.
#[cfg(test)]
type BeforeOpen = Option<Box<dyn FnMut(&Path)>>;

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    opts: CommitOptions,
    links: HashMap<(u64, u64), PathBuf>,
    stats: Committed,
    /// The upper directory: everything is opened beneath it.
    root: OwnedFd,
    #[cfg(test)]
    before_open: BeforeOpen,
}

impl<W: Write> Walker<W> {
    fn mtime(&self, m: &fs::Metadata) -> u64 {
        let t = u64::try_from(m.mtime()).unwrap_or(0);
        self.opts.clamp_mtime.map_or(t, |c| t.min(c))
    }

    fn header(&self, m: &fs::Metadata, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(u64::from(m.uid()));
        h.set_gid(u64::from(m.gid()));
        h.set_mtime(self.mtime(m));
        h.set_size(0);
        h
    }

    fn pax(&mut self, name: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            data.extend(pax_record(&key, v));
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        // The name of a PAX header is informational; keep it short and valid.
        let short: Vec<u8> = name
            .as_os_str()
            .as_bytes()
            .iter()
            .take(80)
            .copied()
            .collect();
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend(short.iter().filter(|b| **b != b'/'));
        self.tar
            .append_data(&mut h, Path::new(OsStr::from_bytes(&pax_name)), &data[..])
    }

    fn empty_file(&mut self, m: &fs::Metadata, name: &Path, mode: u32) -> io::Result<()> {
        let mut h = self.header(m, EntryType::Regular);
        h.set_mode(mode);
        self.stats.entries += 1;
        self.stats.whiteouts += 1;
        self.tar.append_data(&mut h, name, io::empty())
    }

    fn before_open(&mut self, _rel: &Path) {
        #[cfg(test)]
        if let Some(hook) = self.before_open.as_mut() {
            hook(_rel);
        }
    }

    /// Writes the entries under `dir` (`rel` is its name in the layer, empty for the root).
    fn walk(&mut self, dir: &Path, rel: &Path) -> Result<(), CommitError> {
        self.before_open(rel);
        let fd = open_beneath(&self.root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(read_err(dir))?;
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for e in rustix::fs::Dir::new(fd).map_err(|e| read_err(dir)(errno(e)))? {
            let e = e.map_err(|e| read_err(dir)(errno(e)))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let name_in_layer = rel.join(&name);
            self.entry(&path, &name_in_layer, &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, name: &OsStr) -> Result<(), CommitError> {
        let m = fs::symlink_metadata(path).map_err(read_err(path))?;
        let ft = m.file_type();
        let whiteout_name = |rel: &Path| {
            let mut n = b".wh.".to_vec();
            n.extend_from_slice(name.as_bytes());
            rel.with_file_name(OsStr::from_bytes(&n))
        };
        if ft.is_char_device() && m.rdev() == 0 {
            return self
                .empty_file(&m, &whiteout_name(rel), 0o644)
                .map_err(CommitError::Write);
        }
        if ft.is_socket() {
            self.stats.skipped += 1;
            return Ok(());
        }
        if name.as_bytes().starts_with(b".wh.") {
            return Err(CommitError::Unsupported {
                path: path.to_path_buf(),
                what: "a file named .wh.* (layers reserve the prefix for whiteouts)",
            });
        }
        let a = attrs(path, ft.is_dir())?;
        if a.whiteout && ft.is_file() {
            return self
                .empty_file(&m, &whiteout_name(rel), 0o644)
                .map_err(CommitError::Write);
        }
        self.pax(rel, &a.keep).map_err(CommitError::Write)?;
        self.stats.entries += 1;
        if ft.is_dir() {
            let mut h = self.header(&m, EntryType::Directory);
            let mut with_slash = rel.as_os_str().as_bytes().to_vec();
            with_slash.push(b'/');
            self.tar
                .append_data(
                    &mut h,
                    Path::new(OsStr::from_bytes(&with_slash)),
                    io::empty(),
                )
                .map_err(CommitError::Write)?;
            if a.opaque {
                self.empty_file(&m, &rel.join(".wh..wh..opq"), 0o644)
                    .map_err(CommitError::Write)?;
            }
            return self.walk(path, rel);
        }
        if ft.is_symlink() {
            // The link itself (O_PATH | O_NOFOLLOW), reached without following any other.
            self.before_open(rel);
            let link = open_beneath(&self.root, rel, OFlags::PATH).map_err(read_err(path))?;
            let target = rustix::fs::readlinkat(&link, "", Vec::new())
                .map_err(|e| read_err(path)(errno(e)))?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            let mut h = self.header(&m, EntryType::Symlink);
            return self
                .tar
                .append_link(&mut h, rel, &target)
                .map_err(CommitError::Write);
        }
        if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    let mut h = self.header(&m, EntryType::Link);
                    return self
                        .tar
                        .append_link(&mut h, rel, &first)
                        .map_err(CommitError::Write);
                }
                self.links.insert(key, rel.to_path_buf());
            }
            self.before_open(rel);
            let f = File::from(
                open_beneath(&self.root, rel, OFlags::RDONLY | OFlags::NONBLOCK)
                    .map_err(read_err(path))?,
            );
            // The same file the walk saw (not one swapped in since, a FIFO to block on, ...).
            let now = f.metadata().map_err(read_err(path))?;
            if !now.is_file() || (now.dev(), now.ino()) != (m.dev(), m.ino()) {
                return Err(CommitError::Changed(path.to_path_buf()));
            }
            let mut h = self.header(&m, EntryType::Regular);
            h.set_size(m.len());
            // A file that changes size while it is read would corrupt the archive: read
            // exactly the size in the header, padding with zeros if it shrank.
            let data = f.take(m.len()).chain(io::repeat(0)).take(m.len());
            return self
                .tar
                .append_data(&mut h, rel, data)
                .map_err(CommitError::Write);
        }
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else if ft.is_fifo() {
            EntryType::Fifo
        } else {
            return Err(CommitError::Unsupported {
                path: path.to_path_buf(),
                what: "a file of unknown type",
            });
        };
        let mut h = self.header(&m, kind);
        if kind != EntryType::Fifo {
            let rdev = m.rdev();
            let major =
                u32::try_from(((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)).unwrap_or(0);
            let minor = u32::try_from(((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)).unwrap_or(0);
            h.set_device_major(major).map_err(CommitError::Write)?;
            h.set_device_minor(minor).map_err(CommitError::Write)?;
        }
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(CommitError::Write)
    }
}

/// Writes the changes in `upper` (an overlay upper directory) as an uncompressed layer tar to
/// `out`; returns what was written and `out`.
pub fn commit<W: Write>(
    upper: &Path,
    out: W,
    opts: &CommitOptions,
) -> Result<(Committed, W), CommitError> {
    Walker::new(upper, out, opts)?.run(upper)
}

impl<W: Write> Walker<HashingWriter<W>> {
    fn new(upper: &Path, out: W, opts: &CommitOptions) -> Result<Self, CommitError> {
        let meta = fs::metadata(upper).map_err(read_err(upper))?;
        if !meta.is_dir() {
            return Err(CommitError::Read {
                path: upper.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        let root = File::open(upper).map_err(read_err(upper))?;
        let mut tar = tar::Builder::new(HashingWriter::new(out));
        tar.mode(tar::HeaderMode::Complete);
        Ok(Walker {
            tar,
            opts: *opts,
            links: HashMap::new(),
            stats: Committed {
                diff_id: Digest::of(b""),
                size: 0,
                entries: 0,
                whiteouts: 0,
                skipped: 0,
            },
            root: root.into(),
            #[cfg(test)]
            before_open: None,
        })
    }

    fn run(mut self, upper: &Path) -> Result<(Committed, W), CommitError> {
        self.walk(upper, Path::new(""))?;
        let hashing = self.tar.into_inner().map_err(CommitError::Write)?;
        let (diff_id, size, out) = hashing.finish();
        Ok((
            Committed {
                diff_id,
                size,
                ..self.stats
            },
            out,
        ))
    }
}

/// Formats seconds since the epoch as RFC 3339 (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days, on days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What goes into the new image's config besides the layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    /// `created` and the history entry's time, seconds since the epoch.
    pub created_s: u64,
    /// `author`.
    pub author: Option<String>,
    /// The history entry's comment (`docker commit -m`).
    pub comment: Option<String>,
    /// Replace `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// Replace `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Added to (or replacing by key in) `config.Env`.
    pub env: Vec<String>,
}

/// The new image config: the base config with the layer's diff_id appended to
/// `rootfs.diff_ids`, a history entry, `created`, and the changes.
pub fn derive_config(
    base: &[u8],
    diff_id: &Digest,
    changes: &ConfigChanges,
) -> Result<Vec<u8>, CommitError> {
    let mut cfg: Value =
        serde_json::from_slice(base).map_err(|e| CommitError::Config(e.to_string()))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| CommitError::Config("not a JSON object".into()))?;
    let created = rfc3339(changes.created_s);
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| CommitError::Config("rootfs.diff_ids is not a list".into()))?;
    ids.push(json!(diff_id.to_string()));
    let mut entry = serde_json::Map::new();
    entry.insert("created".into(), json!(created));
    entry.insert("created_by".into(), json!("bolt commit"));
    if let Some(a) = &changes.author {
        entry.insert("author".into(), json!(a));
    }
    if let Some(c) = &changes.comment {
        entry.insert("comment".into(), json!(c));
    }
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(Value::Object(entry)),
        None => {
            obj.insert("history".into(), json!([entry]));
        }
    }
    obj.insert("created".into(), json!(created));
    if let Some(a) = &changes.author {
        obj.insert("author".into(), json!(a));
    }
    if changes.cmd.is_some() || changes.entrypoint.is_some() || !changes.env.is_empty() {
        let config = obj.entry("config").or_insert_with(|| json!({}));
        let config = config
            .as_object_mut()
            .ok_or_else(|| CommitError::Config("config is not an object".into()))?;
        if let Some(c) = &changes.cmd {
            config.insert("Cmd".into(), json!(c));
        }
        if let Some(e) = &changes.entrypoint {
            config.insert("Entrypoint".into(), json!(e));
        }
        if !changes.env.is_empty() {
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for kv in &changes.env {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
                env.push(kv.clone());
            }
            config.insert("Env".into(), json!(env));
        }
    }
    serde_json::to_vec(&cfg).map_err(|e| CommitError::Config(e.to_string()))
}

/// A commit of a capsule's changes into the image store.
#[derive(Debug, Clone)]
pub struct ImageCommit {
    /// The capsule's image (a reference in the store).
    pub base: String,
    /// The capsule's overlay upper directory.
    pub upper: PathBuf,
    /// The new image's reference.
    pub reference: String,
    /// A directory that must not exist, on the store's filesystem ideally (blobs are hard
    /// linked from the store): the OCI layout is staged there and removed afterwards.
    pub staging: PathBuf,
    /// Gzip the layer blob (the diff_id is of the uncompressed tar either way).
    pub gzip: bool,
    /// How the tar is written.
    pub options: CommitOptions,
    /// Config changes, time, author, comment.
    pub changes: ConfigChanges,
}

/// What [`commit_image`] made.
#[derive(Debug, Clone)]
pub struct ImageCommitted {
    /// The layer.
    pub layer: Committed,
    /// The store's result (the new record; `Pulled::event()` is the `image.pulled` payload).
    pub pulled: crate::image::store::Pulled,
}

fn stage_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |source| CommitError::Stage {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<Digest, CommitError> {
    let d = Digest::of(bytes);
    let p = blobs.join(d.hex());
    fs::write(&p, bytes).map_err(stage_err("write", &p))?;
    Ok(d)
}

/// Writes the layer blob into `blobs`, returning (blob digest, blob size, layer).
fn stage_layer(req: &ImageCommit, blobs: &Path) -> Result<(Digest, u64, Committed), CommitError> {
    let tmp = blobs.join(".layer");
    let f = File::create(&tmp).map_err(stage_err("create", &tmp))?;
    let outer = HashingWriter::new(BufWriter::new(f));
    let (layer, blob_digest, blob_size) = if req.gzip {
        let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::default());
        let (layer, gz) = commit(&req.upper, gz, &req.options)?;
        let outer = gz.finish().map_err(CommitError::Write)?;
        let (d, n, mut w) = outer.finish();
        w.flush().map_err(CommitError::Write)?;
        (layer, d, n)
    } else {
        let (layer, outer) = commit(&req.upper, outer, &req.options)?;
        let (d, n, mut w) = outer.finish();
        w.flush().map_err(CommitError::Write)?;
        (layer, d, n)
    };
    let dest = blobs.join(blob_digest.hex());
    fs::rename(&tmp, &dest).map_err(stage_err("rename", &dest))?;
    Ok((blob_digest, blob_size, layer))
}

/// Commits `req.upper` as a new layer on top of `req.base` and stores the result as
/// `req.reference`, through the store's OCI-layout import (so the new image is verified and
/// unpacked like any other). The staging directory is removed in every case.
pub async fn commit_image(
    store: &ImageStore,
    req: &ImageCommit,
) -> Result<ImageCommitted, CommitError> {
    let base = store.require(&req.base).await?;
    let base_config_path = store.blob_path(&base.config_digest);
    let base_blobs: Vec<(Digest, PathBuf)> = base
        .layers
        .iter()
        .map(|l| (l.digest.clone(), store.blob_path(&l.digest)))
        .collect();
    let staging = req.staging.clone();
    fs::create_dir(&staging).map_err(stage_err("create", &staging))?;
    let req2 = req.clone();
    let base2 = base.clone();
    let staged = tokio::task::spawn_blocking(move || {
        let blobs = req2.staging.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(stage_err("create", &blobs))?;
        let (blob_digest, blob_size, layer) = stage_layer(&req2, &blobs)?;
        let base_config =
            fs::read(&base_config_path).map_err(stage_err("read", &base_config_path))?;
        let config = derive_config(&base_config, &layer.diff_id, &req2.changes)?;
        let config_digest = write_blob(&blobs, &config)?;
        for (d, src) in &base_blobs {
            let dst = blobs.join(d.hex());
            if fs::hard_link(src, &dst).is_err() {
                fs::copy(src, &dst).map_err(stage_err("copy", src))?;
            }
        }
        let mut layers: Vec<Value> = base2
            .layers
            .iter()
            .map(|l| {
                let mt = if l.media_type == DOCKER_LAYER_GZIP {
                    OCI_LAYER_GZIP
                } else {
                    l.media_type.as_str()
                };
                json!({"mediaType": mt, "digest": l.digest.to_string(), "size": l.size})
            })
            .collect();
        layers.push(json!({
            "mediaType": if req2.gzip { OCI_LAYER_GZIP } else { OCI_LAYER_TAR },
            "digest": blob_digest.to_string(),
            "size": blob_size,
        }));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
        }))
        .map_err(|e| CommitError::Config(e.to_string()))?;
        let manifest_digest = write_blob(&blobs, &manifest)?;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": crate::image::manifest::OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest.to_string(),
                "size": manifest.len(),
                "annotations": {crate::image::layout::IMAGE_NAME: req2.reference},
            }],
        }))
        .map_err(|e| CommitError::Config(e.to_string()))?;
        let p = req2.staging.join("index.json");
        fs::write(&p, index).map_err(stage_err("write", &p))?;
        let p = req2.staging.join("oci-layout");
        fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(stage_err("write", &p))?;
        Ok::<Committed, CommitError>(layer)
    })
    .await
    .map_err(|e| CommitError::Task(e.to_string()));
    let result = match staged {
        Ok(Ok(layer)) => store
            .import(
                &staging,
                &ImportOptions {
                    reference: Some(req.reference.clone()),
                    progress: None,
                },
            )
            .await
            .map_err(CommitError::from)
            .and_then(|mut v| {
                v.pop()
                    .map(|pulled| ImageCommitted { layer, pulled })
                    .ok_or_else(|| CommitError::Config("the store imported no image".into()))
            }),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let _ = fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod race_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let r = pax_record(b"a", b"b");
        assert_eq!(r, b"6 a=b\n");
        for n in [0, 1, 5, 90, 95, 96, 97, 990, 996, 1000] {
            let v = vec![b'x'; n];
            let r = pax_record(b"SCHILY.xattr.user.k", &v);
            let len: usize = std::str::from_utf8(r.split(|b| *b == b' ').next().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn config_gets_the_layer_history_and_changes() {
        let base = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","A=1"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[{"created_by":"base"}]}"#;
        let d = Digest::of(b"layer");
        let out = derive_config(
            base,
            &d,
            &ConfigChanges {
                created_s: 0,
                author: Some("me".into()),
                comment: Some("saved".into()),
                cmd: Some(vec!["nginx".into()]),
                entrypoint: None,
                env: vec!["A=2".into(), "B=3".into()],
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][1], json!(d.to_string()));
        assert_eq!(v["rootfs"]["diff_ids"][0], "sha256:aa");
        assert_eq!(v["history"][1]["comment"], "saved");
        assert_eq!(v["history"][1]["created_by"], "bolt commit");
        assert_eq!(v["created"], "1970-01-01T00:00:00Z");
        assert_eq!(v["config"]["Cmd"], json!(["nginx"]));
        assert_eq!(v["config"]["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(v["architecture"], "amd64");
        assert!(derive_config(b"[]", &d, &ConfigChanges::default()).is_err());
        assert!(derive_config(b"{", &d, &ConfigChanges::default()).is_err());
    }
}
