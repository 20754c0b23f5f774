//! Safe layer unpack: a (gzip, zstd or plain) tar layer into a directory that is ready to be an
//! overlayfs lower.
//!
//! Rules (see `docs/images.md`):
//! - Names are split into components; `.` and empty components are dropped, `..` is resolved
//!   lexically and refused if it climbs above the layer root. Absolute names are confined under
//!   the root (a leading `/` is dropped), as docker and podman do.
//! - Every parent directory is opened one component at a time with `O_NOFOLLOW|O_DIRECTORY`
//!   starting from the layer root: a path through a symlink (for example one created earlier in
//!   the same layer) is refused, never followed. Missing parents are created (0755).
//! - Symlink targets are resolved inside the layer, following the symlinks the layer itself holds,
//!   with chroot semantics (absolute targets start at the layer root); one whose `..` climbs above
//!   the root is refused. The check runs after the whole layer is written, so the order of
//!   entries cannot hide an escape. Hardlink targets follow the name rules and must already exist
//!   in the layer; a hardlink to a symlink is checked as a symlink at its new place.
//! - Whiteouts `.wh.NAME` become overlay whiteouts (a 0/0 character device, or with
//!   [`WhiteoutMode::Xattr`] an empty file with `<ns>.overlay.whiteout`), `.wh..wh..opq` sets
//!   `<ns>.overlay.opaque=y` on its directory; other `.wh..wh.*` names (aufs metadata) are skipped.
//! - Device nodes are refused unless allowed (root); owner, mode (with set-id bits), xattrs
//!   (`SCHILY.xattr.*`, minus `*.overlay.*`, which only whiteout conversion may set) and mtimes are
//!   kept; directory modes and times are applied last.
//! - Caps: total uncompressed bytes (and bytes written, for sparse entries), entry count, and the
//!   size of tar metadata (long names, pax records) read for one entry.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;

use super::digest::{Digest, Hasher};

/// Default cap on the uncompressed size of one layer (64 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// Default cap on entries in one layer.
pub const DEFAULT_MAX_ENTRIES: u64 = 1 << 20;
/// Cap on tar metadata (long names, pax records) read for one entry.
pub const MAX_ENTRY_METADATA: u64 = 4 << 20;
const MAX_LINK_HOPS: u32 = 40;

/// Why a layer was refused or could not be unpacked. Messages name the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer is not a readable tar stream: {0}")]
    Read(io::Error),
    #[error("layer expands past the limit of {limit} bytes (decompression bomb?)")]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("layer entry metadata (long name or pax records) exceeds {limit} bytes")]
    MetadataTooLarge { limit: u64 },
    #[error("layer entry {entry:?}: the name climbs out of the layer root with '..'")]
    Escape { entry: String },
    #[error("layer entry {entry:?}: empty name")]
    EmptyName { entry: String },
    #[error("layer entry {entry:?}: {kind} target {target:?} resolves outside the layer root")]
    LinkEscape {
        entry: String,
        kind: &'static str,
        target: String,
    },
    #[error(
        "layer entry {entry:?}: symlink resolution does not end (more than {MAX_LINK_HOPS} links)"
    )]
    LinkLoop { entry: String },
    #[error("layer entry {entry:?}: the path goes through the symlink {symlink:?}, refusing to write through it")]
    ThroughSymlink { entry: String, symlink: String },
    #[error("layer entry {entry:?}: {parent:?} is not a directory")]
    NotADirectory { entry: String, parent: String },
    #[error(
        "layer entry {entry:?}: hardlink target {target:?} does not exist earlier in the layer"
    )]
    LinkTarget { entry: String, target: String },
    #[error("layer entry {entry:?}: hardlink target {target:?} is a directory")]
    LinkToDirectory { entry: String, target: String },
    #[error("layer entry {entry:?}: {kind} without a target")]
    NoLinkName { entry: String, kind: &'static str },
    #[error("layer entry {entry:?}: device nodes are not allowed here (rootless or disabled)")]
    Device { entry: String },
    #[error("layer entry {entry:?}: unsupported tar entry type {kind:?}")]
    EntryType { entry: String, kind: String },
    #[error("layer entry {entry:?}: invalid whiteout")]
    Whiteout { entry: String },
    #[error("layer entry {entry:?}: bad header field: {source}")]
    Header { entry: String, source: io::Error },
    #[error("layer entry {entry:?}: {step}: {source}")]
    Io {
        entry: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("open layer directory {path}: {source}")]
    Dest { path: String, source: io::Error },
}

/// How whiteouts and opaque markers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// A 0/0 character device; opaque dirs get `trusted.overlay.opaque=y`. Needs root
    /// (CAP_MKNOD and CAP_SYS_ADMIN for `trusted.*`).
    CharDevice,
    /// Rootless: an empty regular file with `<ns>.overlay.whiteout=y` (its directory gets
    /// `<ns>.overlay.whiteouts=y`), opaque dirs `<ns>.overlay.opaque=y`. `User` is for overlay
    /// mounted with `userxattr` inside a user namespace (kernel >= 6.7 for xattr whiteouts).
    Xattr(XattrNamespace),
}

/// The xattr namespace overlay metadata lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNamespace {
    /// `trusted.overlay.*` (root).
    Trusted,
    /// `user.overlay.*` (overlay with `userxattr`).
    User,
}

impl XattrNamespace {
    fn prefix(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.",
            XattrNamespace::User => "user.overlay.",
        }
    }
}

/// Unpack settings.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Cap on uncompressed bytes (and on bytes written), per layer.
    pub max_bytes: u64,
    /// Cap on entries, per layer.
    pub max_entries: u64,
    /// Whether character and block device entries are created (else refused).
    pub allow_devices: bool,
    /// Whether uid/gid from the layer are applied (needs root).
    pub preserve_owner: bool,
    /// Whiteout format.
    pub whiteouts: WhiteoutMode,
}

impl UnpackOptions {
    /// Settings for the current effective user: as root devices, owners and char-device
    /// whiteouts; otherwise none of those and `user.overlay.*` xattr whiteouts.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            allow_devices: root,
            preserve_owner: root,
            whiteouts: if root {
                WhiteoutMode::CharDevice
            } else {
                WhiteoutMode::Xattr(XattrNamespace::User)
            },
        }
    }
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self::for_current_user()
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the whole uncompressed stream: compare with the config's diff_id.
    pub diff_id: Digest,
    /// Uncompressed bytes.
    pub size: u64,
    /// Tar entries seen.
    pub entries: u64,
    /// `*.overlay.*` xattrs found in the layer and not applied.
    pub skipped_xattrs: u64,
}

/// Shared counters between the reader inside the tar archive and the unpack loop.
#[derive(Debug, Default)]
struct Meter {
    total: Cell<u64>,
    limit: Cell<u64>,
    over: Cell<bool>,
    window: Cell<u64>,
    window_on: Cell<bool>,
    window_over: Cell<bool>,
}

struct MeteredReader<R> {
    inner: R,
    hasher: Hasher,
    meter: Rc<Meter>,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = &self.meter;
        let total = m.total.get().saturating_add(n as u64);
        if total > m.limit.get() {
            m.over.set(true);
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        if m.window_on.get() {
            let w = m.window.get().saturating_add(n as u64);
            m.window.set(w);
            if w > MAX_ENTRY_METADATA {
                m.window_over.set(true);
                return Err(io::Error::other("entry metadata limit exceeded"));
            }
        }
        m.total.set(total);
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Compression, sniffed from the first bytes.
fn sniff(head: &[u8]) -> super::manifest::Compression {
    use super::manifest::Compression;
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Unpack one layer (gzip, zstd or plain tar, sniffed) into `dest`, an existing empty
/// directory. On error `dest` holds partial content: the caller removes it.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    use super::manifest::Compression;
    let root = rustix::fs::openat(
        CWD,
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Dest {
        path: dest.display().to_string(),
        source: e.into(),
    })?;

    let mut reader = reader;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Read(e)),
        }
    }
    let head = head.get(..got).unwrap_or_default().to_vec();
    let chained = io::Cursor::new(head.clone()).chain(reader);
    let decoded: Box<dyn Read> = match sniff(&head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(128 << 10, chained),
        )),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(chained).map_err(UnpackError::Read)?)
        }
        Compression::None => Box::new(chained),
    };
    let meter = Rc::new(Meter::default());
    meter.limit.set(opts.max_bytes);
    let metered = MeteredReader {
        inner: decoded,
        hasher: Hasher::new(),
        meter: meter.clone(),
    };
    let mut archive = tar::Archive::new(metered);

    let mut un = Unpacker {
        root,
        opts,
        cache: None,
        dirs: Vec::new(),
        dir_index: HashMap::new(),
        root_meta: None,
        symlinks: Vec::new(),
        entries: 0,
        written: 0,
        skipped_xattrs: 0,
        buf: vec![0u8; 256 << 10],
    };
    let result = un.run(&mut archive, &meter);
    let mut metered = archive.into_inner();
    let map_read = |e: io::Error, m: &Meter| {
        if m.over.get() {
            UnpackError::TooLarge {
                limit: opts.max_bytes,
            }
        } else if m.window_over.get() {
            UnpackError::MetadataTooLarge {
                limit: MAX_ENTRY_METADATA,
            }
        } else {
            UnpackError::Read(e)
        }
    };
    match result {
        Err(RunError::Read(e)) => return Err(map_read(e, &meter)),
        Err(RunError::Unpack(e)) => return Err(e),
        Ok(()) => {}
    }
    // The diff_id covers the whole stream, including what follows the end-of-archive blocks.
    io::copy(&mut metered, &mut io::sink()).map_err(|e| map_read(e, &meter))?;
    un.finish()?;
    Ok(Unpacked {
        diff_id: metered.hasher.finish(),
        size: meter.total.get(),
        entries: un.entries,
        skipped_xattrs: un.skipped_xattrs,
    })
}

enum RunError {
    Read(io::Error),
    Unpack(UnpackError),
}

impl From<UnpackError> for RunError {
    fn from(e: UnpackError) -> Self {
        RunError::Unpack(e)
    }
}

type Comps = Vec<Vec<u8>>;

struct DirMeta {
    comps: Comps,
    mode: u32,
    mtime: Timespec,
}

/// Header fields of one entry, with pax overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker<'o> {
    root: OwnedFd,
    opts: &'o UnpackOptions,
    cache: Option<(Comps, Arc<OwnedFd>)>,
    dirs: Vec<DirMeta>,
    dir_index: HashMap<Comps, usize>,
    root_meta: Option<(u32, Timespec, u32, u32)>,
    symlinks: Vec<Comps>,
    entries: u64,
    written: u64,
    skipped_xattrs: u64,
    buf: Vec<u8>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn join(comps: &[Vec<u8>]) -> String {
    lossy(&comps.join(&b'/'))
}

/// Split a tar name into components, confining it under the root. `None` if `..` climbs out.
pub fn normalize(name: &[u8]) -> Option<Comps> {
    let mut out: Comps = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

fn io_err<'a>(entry: &'a str, step: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        step,
        source: e.into(),
    }
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

enum Walk {
    Ok(OwnedFd),
    Missing(usize),
    Symlink(usize),
    NotDir(usize),
}

impl Unpacker<'_> {
    fn run<R: Read>(
        &mut self,
        archive: &mut tar::Archive<MeteredReader<R>>,
        meter: &Meter,
    ) -> Result<(), RunError> {
        let mut entries = archive.entries().map_err(RunError::Read)?;
        loop {
            meter.window.set(0);
            meter.window_on.set(true);
            let next = entries.next();
            meter.window_on.set(false);
            let mut entry = match next {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(e)) => return Err(RunError::Read(e)),
            };
            self.entries += 1;
            if self.entries > self.opts.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.opts.max_entries,
                }
                .into());
            }
            self.entry(&mut entry)?;
            // Consume whatever the entry still holds so the next header read is metadata only.
            io::copy(&mut entry, &mut io::sink()).map_err(RunError::Read)?;
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, RunError> {
        let hdr_err = |source: io::Error| UnpackError::Header {
            entry: name.to_string(),
            source,
        };
        let h = entry.header();
        let old = h.as_old();
        // An all-NUL (or blank) numeric field reads as 0, as Go's archive/tar and GNU tar do.
        let mode = numeric(h.mode().map(u64::from), &old.mode).map_err(hdr_err)? as u32 & 0o7777;
        let mut uid = numeric(h.uid(), &old.uid).map_err(hdr_err)?;
        let mut gid = numeric(h.gid(), &old.gid).map_err(hdr_err)?;
        let mut mtime = ts(
            i64::try_from(numeric(h.mtime(), &old.mtime).map_err(hdr_err)?).unwrap_or(i64::MAX),
            0,
        );
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(RunError::Read)? {
            for ext in pax {
                let ext = ext.map_err(RunError::Read)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((lossy(x), value.to_vec()));
                } else if key == b"uid" {
                    uid = parse_u64(value).ok_or_else(|| hdr_err(io::Error::other("pax uid")))?;
                } else if key == b"gid" {
                    gid = parse_u64(value).ok_or_else(|| hdr_err(io::Error::other("pax gid")))?;
                } else if key == b"mtime" {
                    if let Some(t) = parse_pax_time(value) {
                        mtime = t;
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| hdr_err(io::Error::other("uid out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| hdr_err(io::Error::other("gid out of range")))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), RunError> {
        let raw = entry.path_bytes().into_owned();
        let name = lossy(&raw);
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = normalize(&raw).ok_or_else(|| UnpackError::Escape {
            entry: name.clone(),
        })?;
        let Some((leaf, parent)) = comps.split_last() else {
            if kind.is_dir() {
                let m = self.meta(entry, &name)?;
                self.root_meta = Some((m.mode, m.mtime, m.uid, m.gid));
                return Ok(());
            }
            return Err(UnpackError::EmptyName { entry: name }.into());
        };
        let (leaf, parent) = (leaf.clone(), parent.to_vec());

        if let Some(target) = leaf.strip_prefix(b".wh.") {
            let pfd = self.parent(&parent, &name)?;
            if target == b".wh..opq" {
                let attr = format!("{}opaque", self.ns().prefix());
                rustix::fs::fsetxattr(&*pfd, attr.as_str(), b"y", XattrFlags::empty())
                    .map_err(io_err(&name, "set opaque xattr"))?;
            } else if target.starts_with(b".wh.") {
                // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to do for overlay.
            } else if target.is_empty() || target == b"." || target == b".." {
                return Err(UnpackError::Whiteout { entry: name }.into());
            } else {
                self.whiteout(&pfd, target, &name)?;
            }
            return Ok(());
        }

        let meta = self.meta(entry, &name)?;
        let pfd = self.parent(&parent, &name)?;
        let leaf_s = leaf.as_slice();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let existing = stat_nofollow(&pfd, leaf_s);
                if !matches!(existing, Some(FileType::Directory)) {
                    if existing.is_some() {
                        self.remove(&pfd, leaf_s, &name)?;
                    }
                    rustix::fs::mkdirat(&*pfd, leaf_s, Mode::from_raw_mode(0o700))
                        .map_err(io_err(&name, "mkdir"))?;
                }
                let fd = rustix::fs::openat(&*pfd, leaf_s, dir_flags(), Mode::empty())
                    .map_err(io_err(&name, "open dir"))?;
                self.own(&fd, &meta, &name)?;
                self.xattrs(&fd, &meta, &name)?;
                match self.dir_index.get(&comps) {
                    Some(&i) => {
                        if let Some(d) = self.dirs.get_mut(i) {
                            d.mode = meta.mode;
                            d.mtime = meta.mtime;
                        }
                    }
                    None => {
                        self.dir_index.insert(comps.clone(), self.dirs.len());
                        self.dirs.push(DirMeta {
                            comps: comps.clone(),
                            mode: meta.mode,
                            mtime: meta.mtime,
                        });
                    }
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&pfd, leaf_s, &name)?;
                let fd = rustix::fs::openat(
                    &*pfd,
                    leaf_s,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err(&name, "create file"))?;
                let mut file = std::fs::File::from(fd);
                self.copy(entry, &mut file, &name)?;
                self.own(&file, &meta, &name)?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
                    .map_err(io_err(&name, "chmod"))?;
                self.xattrs(&file, &meta, &name)?;
                let t = Timestamps {
                    last_access: meta.mtime,
                    last_modification: meta.mtime,
                };
                rustix::fs::futimens(&file, &t).map_err(io_err(&name, "set times"))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| UnpackError::NoLinkName {
                        entry: name.clone(),
                        kind: "symlink",
                    })?;
                self.clear(&pfd, leaf_s, &name)?;
                rustix::fs::symlinkat(target.as_slice(), &*pfd, leaf_s)
                    .map_err(io_err(&name, "symlink"))?;
                self.own_at(&pfd, leaf_s, &meta, &name)?;
                self.times_at(&pfd, leaf_s, meta.mtime, &name)?;
                self.symlinks.push(comps.clone());
            }
            T::Link => {
                let target_raw =
                    entry
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .ok_or_else(|| UnpackError::NoLinkName {
                            entry: name.clone(),
                            kind: "hardlink",
                        })?;
                let target_s = lossy(&target_raw);
                let tcomps = normalize(&target_raw).ok_or_else(|| UnpackError::LinkEscape {
                    entry: name.clone(),
                    kind: "hardlink",
                    target: target_s.clone(),
                })?;
                let Some((tleaf, tparent)) = tcomps.split_last() else {
                    return Err(UnpackError::LinkToDirectory {
                        entry: name,
                        target: target_s,
                    }
                    .into());
                };
                if tcomps == comps {
                    return Ok(());
                }
                let missing = || UnpackError::LinkTarget {
                    entry: name.clone(),
                    target: target_s.clone(),
                };
                let tpfd = match self.walk(tparent, false) {
                    Walk::Ok(fd) => fd,
                    Walk::Missing(_) => return Err(missing().into()),
                    Walk::Symlink(i) => {
                        return Err(UnpackError::ThroughSymlink {
                            entry: name.clone(),
                            symlink: join(&tparent[..=i]),
                        }
                        .into())
                    }
                    Walk::NotDir(i) => {
                        return Err(UnpackError::NotADirectory {
                            entry: name.clone(),
                            parent: join(&tparent[..=i]),
                        }
                        .into())
                    }
                };
                let ttype = stat_nofollow(&tpfd, tleaf).ok_or_else(missing)?;
                if ttype == FileType::Directory {
                    return Err(UnpackError::LinkToDirectory {
                        entry: name,
                        target: target_s,
                    }
                    .into());
                }
                self.clear(&pfd, leaf_s, &name)?;
                // The parent may have been replaced by clear() only if leaf was a dir; reopen to be safe.
                let pfd = self.parent(&parent, &name)?;
                rustix::fs::linkat(&tpfd, tleaf.as_slice(), &*pfd, leaf_s, AtFlags::empty())
                    .map_err(io_err(&name, "hardlink"))?;
                if ttype == FileType::Symlink {
                    self.symlinks.push(comps.clone());
                }
            }
            T::Char | T::Block => {
                if !self.opts.allow_devices {
                    return Err(UnpackError::Device { entry: name }.into());
                }
                let h = entry.header();
                let hdr_err = |source: io::Error| UnpackError::Header {
                    entry: name.clone(),
                    source,
                };
                let major = h.device_major().map_err(hdr_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(hdr_err)?.unwrap_or(0);
                let ft = if kind == T::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                self.node(
                    &pfd,
                    leaf_s,
                    ft,
                    rustix::fs::makedev(major, minor),
                    &meta,
                    &name,
                )?;
            }
            T::Fifo => {
                self.node(&pfd, leaf_s, FileType::Fifo, 0, &meta, &name)?;
            }
            other => {
                return Err(UnpackError::EntryType {
                    entry: name,
                    kind: format!("{other:?}"),
                }
                .into());
            }
        }
        Ok(())
    }

    fn ns(&self) -> XattrNamespace {
        match self.opts.whiteouts {
            WhiteoutMode::CharDevice => XattrNamespace::Trusted,
            WhiteoutMode::Xattr(ns) => ns,
        }
    }

    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        name: &str,
    ) -> Result<(), RunError> {
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RunError::Read(e)),
            };
            self.written = self.written.saturating_add(n as u64);
            if self.written > self.opts.max_bytes {
                return Err(UnpackError::TooLarge {
                    limit: self.opts.max_bytes,
                }
                .into());
            }
            let chunk = self.buf.get(..n).unwrap_or_default();
            file.write_all(chunk).map_err(|source| UnpackError::Io {
                entry: name.to_string(),
                step: "write file",
                source,
            })?;
        }
    }

    fn node(
        &mut self,
        pfd: &OwnedFd,
        leaf: &[u8],
        ft: FileType,
        dev: u64,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        self.clear(pfd, leaf, name)?;
        rustix::fs::mknodat(pfd, leaf, ft, Mode::from_raw_mode(meta.mode & 0o777), dev)
            .map_err(io_err(name, "mknod"))?;
        self.own_at(pfd, leaf, meta, name)?;
        // The node was just created by us in a private directory; chmodat follows only symlinks.
        rustix::fs::chmodat(pfd, leaf, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(io_err(name, "chmod"))?;
        self.times_at(pfd, leaf, meta.mtime, name)
    }

    fn whiteout(&mut self, pfd: &OwnedFd, target: &[u8], name: &str) -> Result<(), UnpackError> {
        self.clear(pfd, target, name)?;
        match self.opts.whiteouts {
            WhiteoutMode::CharDevice => {
                rustix::fs::mknodat(
                    pfd,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(io_err(name, "create whiteout device"))?;
            }
            WhiteoutMode::Xattr(ns) => {
                let fd = rustix::fs::openat(
                    pfd,
                    target,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err(name, "create whiteout file"))?;
                let attr = format!("{}whiteout", ns.prefix());
                rustix::fs::fsetxattr(&fd, attr.as_str(), b"y", XattrFlags::empty())
                    .map_err(io_err(name, "set whiteout xattr"))?;
                let attr = format!("{}whiteouts", ns.prefix());
                rustix::fs::fsetxattr(pfd, attr.as_str(), b"y", XattrFlags::empty())
                    .map_err(io_err(name, "set whiteouts xattr"))?;
            }
        }
        Ok(())
    }

    fn own<Fd: AsFd>(&self, fd: Fd, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        if !self.opts.preserve_owner {
            return Ok(());
        }
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(io_err(name, "chown"))
    }

    fn own_at(
        &self,
        pfd: &OwnedFd,
        leaf: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if !self.opts.preserve_owner {
            return Ok(());
        }
        rustix::fs::chownat(
            pfd,
            leaf,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(name, "chown"))
    }

    fn times_at(
        &self,
        pfd: &OwnedFd,
        leaf: &[u8],
        t: Timespec,
        name: &str,
    ) -> Result<(), UnpackError> {
        let t = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(pfd, leaf, &t, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(name, "set times"))
    }

    fn xattrs<Fd: AsFd>(&mut self, fd: Fd, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        for (k, v) in &meta.xattrs {
            if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") {
                self.skipped_xattrs += 1;
                continue;
            }
            match rustix::fs::fsetxattr(fd.as_fd(), k.as_str(), v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => {
                    tracing::debug!(
                        entry = name,
                        xattr = k.as_str(),
                        "xattr not supported here, skipped"
                    );
                }
                Err(Errno::PERM) if !self.opts.preserve_owner => {
                    tracing::debug!(
                        entry = name,
                        xattr = k.as_str(),
                        "xattr not permitted rootless, skipped"
                    );
                }
                Err(e) => return Err(io_err(name, "set xattr")(e)),
            }
        }
        Ok(())
    }

    /// Remove whatever is at `leaf` (recursively for a directory), so a new entry can take its
    /// place. Nothing is followed.
    fn clear(&mut self, pfd: &OwnedFd, leaf: &[u8], name: &str) -> Result<(), UnpackError> {
        if stat_nofollow(pfd, leaf).is_some() {
            self.remove(pfd, leaf, name)?;
        }
        Ok(())
    }

    fn remove(&mut self, pfd: &OwnedFd, leaf: &[u8], name: &str) -> Result<(), UnpackError> {
        self.cache = None;
        remove_at(pfd, leaf).map_err(io_err(name, "replace existing entry"))
    }

    /// The directory `comps` under the root, created if missing, through no symlink.
    fn parent(&mut self, comps: &[Vec<u8>], entry: &str) -> Result<Arc<OwnedFd>, UnpackError> {
        if let Some((c, fd)) = &self.cache {
            if c.as_slice() == comps {
                return Ok(fd.clone());
            }
        }
        let fd = match self.walk(comps, true) {
            Walk::Ok(fd) => Arc::new(fd),
            Walk::Symlink(i) => {
                return Err(UnpackError::ThroughSymlink {
                    entry: entry.to_string(),
                    symlink: join(&comps[..=i]),
                })
            }
            Walk::NotDir(i) | Walk::Missing(i) => {
                return Err(UnpackError::NotADirectory {
                    entry: entry.to_string(),
                    parent: join(&comps[..=i]),
                })
            }
        };
        self.cache = Some((comps.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Open `comps` one component at a time from the root, never following a symlink.
    fn walk(&self, comps: &[Vec<u8>], create: bool) -> Walk {
        let mut cur = match self.root.try_clone() {
            Ok(fd) => fd,
            Err(_) => return Walk::Missing(0),
        };
        for (i, c) in comps.iter().enumerate() {
            let c = c.as_slice();
            let mut opened = rustix::fs::openat(&cur, c, dir_flags(), Mode::empty());
            if matches!(opened, Err(Errno::NOENT)) && create {
                if rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o755)).is_err() {
                    return Walk::Missing(i);
                }
                opened = rustix::fs::openat(&cur, c, dir_flags(), Mode::empty());
                if let Ok(fd) = &opened {
                    // mkdir applied the umask.
                    let _ = rustix::fs::fchmod(fd, Mode::from_raw_mode(0o755));
                }
            }
            match opened {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => return Walk::Missing(i),
                Err(_) => {
                    return match stat_nofollow(&cur, c) {
                        Some(FileType::Symlink) => Walk::Symlink(i),
                        Some(_) => Walk::NotDir(i),
                        None => Walk::Missing(i),
                    }
                }
            }
        }
        Walk::Ok(cur)
    }

    /// Resolve a symlink target inside the layer (chroot semantics, following the layer's own
    /// symlinks); error if it climbs above the root.
    fn check_symlink(&self, link: &[Vec<u8>]) -> Result<(), UnpackError> {
        let name = join(link);
        let Some((leaf, parent)) = link.split_last() else {
            return Ok(());
        };
        let pfd = match self.walk(parent, false) {
            Walk::Ok(fd) => fd,
            _ => return Ok(()), // replaced by a later entry
        };
        if stat_nofollow(&pfd, leaf) != Some(FileType::Symlink) {
            return Ok(());
        }
        let target = rustix::fs::readlinkat(&pfd, leaf.as_slice(), Vec::new())
            .map_err(io_err(&name, "read symlink"))?
            .into_bytes();
        let escape = || UnpackError::LinkEscape {
            entry: name.clone(),
            kind: "symlink",
            target: lossy(&target),
        };

        // stack of (component, dir fd of the path so far if it exists as a directory)
        let root = self.root.try_clone().map_err(|source| UnpackError::Io {
            entry: name.clone(),
            step: "dup root",
            source,
        })?;
        let mut fds: Vec<Option<OwnedFd>> = vec![Some(root)];
        let mut stack: Comps = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
        if !target.starts_with(b"/") {
            for c in parent {
                queue.push_back(c.clone());
            }
        }
        queue.extend(target.split(|b| *b == b'/').map(|c| c.to_vec()));
        let mut hops = 0u32;
        while let Some(c) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Err(escape());
                    }
                    fds.pop();
                    continue;
                }
                _ => {}
            }
            let here = fds.last().and_then(|f| f.as_ref());
            let kind = here.and_then(|d| stat_nofollow(d, &c));
            match kind {
                Some(FileType::Symlink) => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(UnpackError::LinkLoop { entry: name });
                    }
                    let Some(d) = here else { continue };
                    let t = rustix::fs::readlinkat(d, c.as_slice(), Vec::new())
                        .map_err(io_err(&name, "read symlink"))?
                        .into_bytes();
                    if t.starts_with(b"/") {
                        stack.clear();
                        fds.truncate(1);
                    }
                    for part in t.split(|b| *b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Some(FileType::Directory) => {
                    let fd = here.and_then(|d| {
                        rustix::fs::openat(d, c.as_slice(), dir_flags(), Mode::empty()).ok()
                    });
                    stack.push(c);
                    fds.push(fd);
                }
                _ => {
                    stack.push(c);
                    fds.push(None);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        let links = std::mem::take(&mut self.symlinks);
        for l in &links {
            self.check_symlink(l)?;
        }
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let name = join(&d.comps);
            let Walk::Ok(fd) = self.walk(&d.comps, false) else {
                continue;
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .map_err(io_err(&name, "chmod dir"))?;
            let t = Timestamps {
                last_access: d.mtime,
                last_modification: d.mtime,
            };
            rustix::fs::futimens(&fd, &t).map_err(io_err(&name, "set dir times"))?;
        }
        if let Some((mode, mtime, uid, gid)) = self.root_meta {
            let meta = Meta {
                mode,
                uid,
                gid,
                mtime,
                xattrs: Vec::new(),
            };
            self.own(&self.root, &meta, "/")?;
            rustix::fs::fchmod(&self.root, Mode::from_raw_mode(mode))
                .map_err(io_err("/", "chmod root"))?;
            let t = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
            rustix::fs::futimens(&self.root, &t).map_err(io_err("/", "set root times"))?;
        }
        Ok(())
    }
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC
}

fn stat_nofollow<Fd: AsFd>(dir: Fd, leaf: &[u8]) -> Option<FileType> {
    rustix::fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|s| FileType::from_raw_mode(s.st_mode))
}

/// Remove `leaf` in `dir`, recursively if it is a directory, following no symlink.
pub(crate) fn remove_at<Fd: AsFd>(dir: Fd, leaf: &[u8]) -> Result<(), Errno> {
    let dir = dir.as_fd();
    match stat_nofollow(dir, leaf) {
        None => Ok(()),
        Some(FileType::Directory) => {
            let fd = rustix::fs::openat(dir, leaf, dir_flags(), Mode::empty())?;
            // Make sure we may list and delete inside (rootless, or a 0500 directory).
            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
            let mut names = Vec::new();
            let mut d = rustix::fs::Dir::read_from(&fd)?;
            while let Some(ent) = d.read() {
                let ent = ent?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            for n in names {
                remove_at(&fd, &n)?;
            }
            rustix::fs::unlinkat(dir, leaf, AtFlags::REMOVEDIR)
        }
        Some(_) => rustix::fs::unlinkat(dir, leaf, AtFlags::empty()),
    }
}

fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(e),
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec: i64 = sec.parse().ok()?;
    let mut nsec: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i64 = digits.parse().ok()?;
        nsec = n * 10i64.pow(9 - digits.len() as u32);
        if sec < 0 && nsec > 0 {
            // Before i64::MIN seconds: clamped to the earliest time (the kernel clamps further
            // to what the filesystem stores).
            return Some(match sec.checked_sub(1) {
                Some(s) => ts(s, 1_000_000_000 - nsec),
                None => ts(i64::MIN, 0),
            });
        }
    }
    Some(ts(sec, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        let v = |s: &str| {
            normalize(s.as_bytes()).map(|c| c.iter().map(|p| lossy(p)).collect::<Vec<_>>())
        };
        assert_eq!(v("./a/b/"), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(
            v("/etc/passwd"),
            Some(vec!["etc".to_string(), "passwd".to_string()])
        );
        assert_eq!(v("a/../b"), Some(vec!["b".to_string()]));
        assert_eq!(v("a/../../b"), None);
        assert_eq!(v("../x"), None);
        assert_eq!(v("/../x"), None);
        assert_eq!(v("."), Some(vec![]));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"12.5").map(|t| (t.tv_sec, t.tv_nsec)),
            Some((12, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"12").map(|t| (t.tv_sec, t.tv_nsec)),
            Some((12, 0))
        );
        assert_eq!(
            parse_pax_time(b"-1.5").map(|t| (t.tv_sec, t.tv_nsec)),
            Some((-2, 500_000_000))
        );
        assert!(parse_pax_time(b"x").is_none());
    }
}
