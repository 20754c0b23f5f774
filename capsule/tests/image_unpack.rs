//! Layer unpack rules, with tars built here (no registry): one test per rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use bolt_capsule::image::unpack::{unpack_layer, UnpackError, UnpackOptions, Unpacked};
use bolt_capsule::image::{Digest, WhiteoutMode, XattrNamespace};
use tar::{EntryType, Header};

/// A tar under construction; headers are written raw so hostile names survive.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Self {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        {
            let old = h.as_old_mut();
            assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        h
    }

    fn raw(mut self, h: Header, data: &[u8]) -> Self {
        self.b.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            EntryType::Regular,
            data.len() as u64,
            0o644,
            b"",
        );
        self.raw(h, data.as_bytes())
    }

    fn dir(self, name: &str, mode: u32) -> Self {
        let h = Self::header(name.as_bytes(), EntryType::Directory, 0, mode, b"");
        self.raw(h, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            EntryType::Symlink,
            0,
            0o777,
            target.as_bytes(),
        );
        self.raw(h, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            EntryType::Link,
            0,
            0o644,
            target.as_bytes(),
        );
        self.raw(h, b"")
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn opts() -> UnpackOptions {
    UnpackOptions::for_current_user()
}

/// Unpack into `<tmp>/store/layer`; probes for escapes live in `<tmp>/store` and `<tmp>`.
struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("store/layer")).unwrap();
        Case { tmp }
    }
    fn layer(&self) -> PathBuf {
        self.tmp.path().join("store/layer")
    }
    fn run(&self, tar: &[u8], o: &UnpackOptions) -> Result<Unpacked, UnpackError> {
        unpack_layer(tar, &self.layer(), o)
    }
    /// Everything outside the layer dir: must stay empty whatever the layer holds.
    fn outside(&self) -> Vec<String> {
        let mut out: Vec<String> = common::listing(self.tmp.path())
            .into_keys()
            .filter(|k| {
                !k.is_empty()
                    && k != "store"
                    && k != "store/layer"
                    && !k.starts_with("store/layer/")
            })
            .collect();
        out.sort();
        out
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn regular_entries_keep_metadata() {
    let mut t = Tar::new()
        .dir("etc/", 0o750)
        .pax(&[("SCHILY.xattr.user.bolt", b"yes")]);
    let mut h = Tar::header(b"etc/tool", EntryType::Regular, 5, 0o4755, b"");
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    t = t.raw(h, b"hello");
    let tar = t
        .symlink("etc/abs", "/etc/tool")
        .symlink("etc/rel", "tool")
        .hardlink("etc/tool2", "etc/tool")
        .dir("empty/", 0o700)
        .bytes();
    let c = Case::new();
    let un = c.run(&tar, &opts()).unwrap();
    assert_eq!(
        un.diff_id,
        Digest::of(&tar),
        "diff_id is the sha256 of the whole tar stream"
    );
    assert_eq!(un.size, tar.len() as u64);
    let l = c.layer();
    assert_eq!(fs::read_to_string(l.join("etc/tool")).unwrap(), "hello");
    let md = fs::metadata(l.join("etc/tool")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755, "set-id bits are kept");
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(md.nlink(), 2, "hardlink was not made");
    assert_eq!(md.ino(), fs::metadata(l.join("etc/tool2")).unwrap().ino());
    if common::is_root() {
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
    }
    assert_eq!(
        common::xattr(&l.join("etc/tool"), "user.bolt").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        fs::read_link(l.join("etc/abs")).unwrap(),
        Path::new("/etc/tool")
    );
    assert_eq!(fs::read_link(l.join("etc/rel")).unwrap(), Path::new("tool"));
    let etc = fs::metadata(l.join("etc")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!(
        etc.mtime(),
        1_700_000_000,
        "dir mtime must be applied after its children"
    );
    assert_eq!(
        fs::metadata(l.join("empty")).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(c.outside().is_empty());
}

#[test]
fn compressed_layers_have_the_uncompressed_diff_id() {
    let tar = Tar::new().file("a", "alpha").file("b/c", "gamma").bytes();
    let want = Digest::of(&tar);
    for (name, blob) in [
        ("plain", tar.clone()),
        ("gzip", gzip(&tar)),
        ("zstd", zstd::encode_all(&tar[..], 3).unwrap()),
    ] {
        let c = Case::new();
        let un = c.run(&blob, &opts()).unwrap();
        assert_eq!(un.diff_id, want, "{name}");
        assert_eq!(
            fs::read_to_string(c.layer().join("b/c")).unwrap(),
            "gamma",
            "{name}"
        );
        // Implicit parent directories are made 0755.
        assert_eq!(
            fs::metadata(c.layer().join("b")).unwrap().mode() & 0o7777,
            0o755
        );
    }
    // Trailing bytes after the end-of-archive blocks are part of the diff_id.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0u8; 1024]);
    let c = Case::new();
    assert_eq!(
        c.run(&padded, &opts()).unwrap().diff_id,
        Digest::of(&padded)
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let tar = Tar::new()
        .dir("d/", 0o755)
        .file("d/.wh.gone", "")
        .file("o/.wh..wh..opq", "")
        .file("o/new", "n")
        .bytes();
    if common::is_root() {
        let c = Case::new();
        let o = UnpackOptions {
            whiteouts: WhiteoutMode::CharDevice,
            ..opts()
        };
        c.run(&tar, &o).unwrap();
        let md = fs::symlink_metadata(c.layer().join("d/gone")).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0);
        assert!(!c.layer().join("d/.wh.gone").exists());
        assert_eq!(
            common::xattr(&c.layer().join("o"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert!(!c.layer().join("o/.wh..wh..opq").exists());
        assert!(c.layer().join("o/new").is_file());
    }
    // The rootless form: xattr whiteouts in the user namespace.
    let c = Case::new();
    let o = UnpackOptions {
        whiteouts: WhiteoutMode::Xattr(XattrNamespace::User),
        ..opts()
    };
    c.run(&tar, &o).unwrap();
    let gone = c.layer().join("d/gone");
    assert!(fs::symlink_metadata(&gone).unwrap().is_file());
    assert_eq!(
        common::xattr(&gone, "user.overlay.whiteout").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        common::xattr(&c.layer().join("d"), "user.overlay.whiteouts").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        common::xattr(&c.layer().join("o"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    for bad in ["x/.wh.", "x/.wh..", "x/.wh.."] {
        let tar = Tar::new().file(bad, "").bytes();
        let err = Case::new().run(&tar, &opts()).unwrap_err();
        assert!(matches!(err, UnpackError::Whiteout { .. }), "{bad}: {err}");
    }
}

#[test]
fn dotdot_escape_is_refused_and_absolute_names_are_confined() {
    let c = Case::new();
    let tar = Tar::new()
        .file("ok", "x")
        .file("../../escape", "bad")
        .bytes();
    let err = c.run(&tar, &opts()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Escape { entry } if entry == "../../escape"),
        "{err}"
    );
    assert!(err.to_string().contains("../../escape"));
    assert!(c.outside().is_empty(), "written outside: {:?}", c.outside());

    // `..` that stays inside is resolved.
    let c = Case::new();
    c.run(&Tar::new().file("a/../b", "x").bytes(), &opts())
        .unwrap();
    assert!(c.layer().join("b").is_file());

    // Absolute names land under the layer root.
    let c = Case::new();
    let probe = c.tmp.path().join("abs-probe");
    let name = probe.display().to_string();
    c.run(&Tar::new().file(&name, "x").bytes(), &opts())
        .unwrap();
    assert!(!probe.exists(), "absolute name written on the host");
    assert!(c.layer().join(name.trim_start_matches('/')).is_file());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let c = Case::new();
    let outside = c.tmp.path().display().to_string();
    let tar = Tar::new()
        .symlink("link", &outside)
        .file("link/x", "bad")
        .bytes();
    let err = c.run(&tar, &opts()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::ThroughSymlink { entry, symlink } if entry == "link/x" && symlink == "link"),
        "{err}"
    );
    assert!(c.outside().is_empty(), "written outside: {:?}", c.outside());

    // Same with a symlink to a directory inside the layer: never followed while unpacking.
    let c = Case::new();
    let tar = Tar::new()
        .dir("real/", 0o755)
        .symlink("alias", "real")
        .file("alias/x", "y")
        .bytes();
    assert!(matches!(
        c.run(&tar, &opts()).unwrap_err(),
        UnpackError::ThroughSymlink { .. }
    ));

    // A file over an existing symlink replaces the link, not its target.
    let c = Case::new();
    fs::write(c.tmp.path().join("target"), "keep").unwrap();
    let t = c.tmp.path().join("target").display().to_string();
    c.run(
        &Tar::new().symlink("f", &t).file("f", "new").bytes(),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(c.tmp.path().join("target")).unwrap(),
        "keep"
    );
    assert_eq!(fs::read_to_string(c.layer().join("f")).unwrap(), "new");
}

#[test]
fn symlinks_escaping_the_root_are_refused() {
    for (name, target) in [
        ("up", "../../etc"),
        ("d/up", "../../x"),
        ("abs", "/../etc/passwd"),
    ] {
        let c = Case::new();
        let err = c
            .run(&Tar::new().symlink(name, target).bytes(), &opts())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::LinkEscape { entry, kind: "symlink", .. } if entry == name),
            "{name} -> {target}: {err}"
        );
        assert!(c.outside().is_empty());
    }
    // Absolute targets resolve inside the root (as in the container) and are kept.
    let c = Case::new();
    c.run(
        &Tar::new()
            .symlink("etc/passwd-link", "/etc/passwd")
            .symlink("d/in", "../etc")
            .bytes(),
        &opts(),
    )
    .unwrap();
    // A chain whose escape only shows once a later entry exists: x -> d/.., then d -> . .
    let c = Case::new();
    let tar = Tar::new().symlink("x", "d/../..").bytes();
    assert!(matches!(
        c.run(&tar, &opts()).unwrap_err(),
        UnpackError::LinkEscape { .. }
    ));
    let c = Case::new();
    // x -> d/.. is inside when written (d does not exist yet); once d -> . exists, x is the parent
    // of the root. The check runs when the whole layer is there.
    let tar = Tar::new().symlink("x", "d/..").symlink("d", ".").bytes();
    let err = c.run(&tar, &opts()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::LinkEscape { entry, .. } if entry == "x"),
        "{err}"
    );
    let c = Case::new();
    c.run(
        &Tar::new().symlink("x", "d/..").dir("d/", 0o755).bytes(),
        &opts(),
    )
    .unwrap();
    // Loops are refused, not followed forever.
    let c = Case::new();
    let tar = Tar::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .symlink("c", "a/x")
        .bytes();
    assert!(matches!(
        c.run(&tar, &opts()).unwrap_err(),
        UnpackError::LinkLoop { .. }
    ));
}

#[test]
fn hardlinks_must_stay_inside_and_exist() {
    let c = Case::new();
    let err = c
        .run(
            &Tar::new()
                .file("a", "x")
                .hardlink("l", "../../etc/passwd")
                .bytes(),
            &opts(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::LinkEscape { entry, kind: "hardlink", .. } if entry == "l"),
        "{err}"
    );
    assert!(c.outside().is_empty());

    let c = Case::new();
    let err = c
        .run(&Tar::new().hardlink("l", "missing").bytes(), &opts())
        .unwrap_err();
    assert!(matches!(err, UnpackError::LinkTarget { .. }), "{err}");

    // A hardlink through an earlier symlink is refused.
    let c = Case::new();
    let outside = c.tmp.path().display().to_string();
    fs::write(c.tmp.path().join("secret"), "s").unwrap();
    let err = c
        .run(
            &Tar::new()
                .symlink("s", &outside)
                .hardlink("l", "s/secret")
                .bytes(),
            &opts(),
        )
        .unwrap_err();
    assert!(matches!(err, UnpackError::ThroughSymlink { .. }), "{err}");
    assert_eq!(
        fs::metadata(c.tmp.path().join("secret")).unwrap().nlink(),
        1
    );

    // A hardlink to a symlink is checked where the new name lives.
    let c = Case::new();
    let tar = Tar::new()
        .symlink("a/b/link", "../x")
        .hardlink("top", "a/b/link")
        .bytes();
    let err = c.run(&tar, &opts()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::LinkEscape { entry, .. } if entry == "top"),
        "{err}"
    );

    let c = Case::new();
    let err = c
        .run(
            &Tar::new().dir("d/", 0o755).hardlink("l", "d").bytes(),
            &opts(),
        )
        .unwrap_err();
    assert!(matches!(err, UnpackError::LinkToDirectory { .. }), "{err}");
}

#[test]
fn device_nodes_need_permission() {
    let mut h = Tar::header(b"dev/null", EntryType::Char, 0, 0o666, b"");
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    let tar = Tar::new().raw(h, b"").bytes();
    let c = Case::new();
    let err = c
        .run(
            &tar,
            &UnpackOptions {
                allow_devices: false,
                ..opts()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::Device { entry } if entry == "dev/null"),
        "{err}"
    );
    assert!(!c.layer().join("dev/null").exists());
    if common::is_root() {
        let c = Case::new();
        c.run(
            &tar,
            &UnpackOptions {
                allow_devices: true,
                ..opts()
            },
        )
        .unwrap();
        let md = fs::symlink_metadata(c.layer().join("dev/null")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
    }
    // FIFOs are fine rootless too.
    let c = Case::new();
    c.run(
        &Tar::new()
            .raw(Tar::header(b"fifo", EntryType::Fifo, 0, 0o600, b""), b"")
            .bytes(),
        &opts(),
    )
    .unwrap();
    assert!(fs::symlink_metadata(c.layer().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn decompression_bombs_and_entry_floods_are_capped() {
    let zeros = vec![0u8; 8 << 20];
    let mut t = Tar::new();
    let h = Tar::header(b"zeros", EntryType::Regular, zeros.len() as u64, 0o644, b"");
    t = t.raw(h, &zeros);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&t.bytes()).unwrap();
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 64 << 10);
    let c = Case::new();
    let err = c
        .run(
            &bomb,
            &UnpackOptions {
                max_bytes: 1 << 20,
                ..opts()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit } if limit == 1 << 20),
        "{err}"
    );

    let mut t = Tar::new();
    for i in 0..50 {
        t = t.file(&format!("f{i}"), "");
    }
    let c = Case::new();
    let err = c
        .run(
            &t.bytes(),
            &UnpackOptions {
                max_entries: 10,
                ..opts()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err}"
    );

    // A long-name entry bigger than the metadata cap is refused before it is held in memory.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNULongName);
    let long = vec![b'a'; 5 << 20];
    h.set_size(long.len() as u64);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    b.append(&h, &long[..]).unwrap();
    let tar = Tar { b }.file("x", "y").bytes();
    let err = Case::new().run(&tar, &opts()).unwrap_err();
    assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");
}

#[test]
fn overlay_xattrs_from_the_layer_are_not_applied() {
    let tar = Tar::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
        ])
        .dir("d/", 0o755)
        .bytes();
    let c = Case::new();
    let un = c.run(&tar, &opts()).unwrap();
    assert_eq!(un.skipped_xattrs, 2);
    assert!(common::xattr(&c.layer().join("d"), "trusted.overlay.redirect").is_none());
    assert!(common::xattr(&c.layer().join("d"), "user.overlay.opaque").is_none());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = Tar::new()
        .file("a", "file first")
        .dir("a/", 0o755)
        .file("a/inner", "i")
        .file("b/deep/x", "x")
        .file("b", "now a file")
        .dir("c/", 0o700)
        .dir("c/", 0o755)
        .bytes();
    let c = Case::new();
    c.run(&tar, &opts()).unwrap();
    assert!(c.layer().join("a/inner").is_file());
    assert_eq!(
        fs::read_to_string(c.layer().join("b")).unwrap(),
        "now a file"
    );
    assert_eq!(
        fs::metadata(c.layer().join("c")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn garbage_is_a_read_error_not_a_panic() {
    let c = Case::new();
    assert!(matches!(
        c.run(b"\x1f\x8bnot really gzip", &opts()),
        Err(UnpackError::Read(_))
    ));
    let c = Case::new();
    let mut tar = Tar::new().file("a", "xyz").bytes();
    tar.truncate(600);
    assert!(c.run(&tar, &opts()).is_err());
    // An empty stream is an empty layer.
    let c = Case::new();
    assert_eq!(c.run(b"", &opts()).unwrap().entries, 0);
}

#[test]
fn pax_mtimes_at_the_edges_of_i64_do_not_panic() {
    for mtime in [
        "-9223372036854775808.5",
        "-9223372036854775808",
        "9223372036854775807.999999999",
        "99999999999999999999999.1",
    ] {
        let c = Case::new();
        let tar = Tar::new()
            .pax(&[("mtime", mtime.as_bytes())])
            .file("a", "xyz")
            .bytes();
        let got = std::panic::catch_unwind(|| c.run(&tar, &opts()));
        let got = got.unwrap_or_else(|_| panic!("pax mtime {mtime} panicked"));
        got.unwrap_or_else(|e| panic!("pax mtime {mtime}: {e}"));
        assert_eq!(fs::read_to_string(c.layer().join("a")).unwrap(), "xyz");
    }
}
