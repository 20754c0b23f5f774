//! Which filesystem a path is on (`statfs(2)` magic numbers), and whether a directory is a
//! btrfs subvolume.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::statfs::{statfs, FsType};

/// The inode number of every btrfs subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;

const BTRFS_MAGIC: i64 = 0x9123_683e;
const EXT4_MAGIC: i64 = 0xef53;
const XFS_MAGIC: i64 = 0x5846_5342;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const OVERLAY_MAGIC: i64 = 0x794c_7630;
const ZFS_MAGIC: i64 = 0x2fc1_2fc1;
const NFS_MAGIC: i64 = 0x6969;

/// A filesystem type, as far as storage cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// btrfs: subvolumes and snapshots.
    Btrfs,
    /// ext2/3/4 (one magic number).
    Ext4,
    /// XFS.
    Xfs,
    /// tmpfs.
    Tmpfs,
    /// overlayfs.
    Overlay,
    /// ZFS.
    Zfs,
    /// NFS.
    Nfs,
    /// Anything else, by magic number.
    Other(i64),
}

impl FsKind {
    /// The kind for a `statfs` magic number.
    pub fn from_magic(magic: i64) -> Self {
        match magic {
            BTRFS_MAGIC => FsKind::Btrfs,
            EXT4_MAGIC => FsKind::Ext4,
            XFS_MAGIC => FsKind::Xfs,
            TMPFS_MAGIC => FsKind::Tmpfs,
            OVERLAY_MAGIC => FsKind::Overlay,
            ZFS_MAGIC => FsKind::Zfs,
            NFS_MAGIC => FsKind::Nfs,
            m => FsKind::Other(m),
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::Btrfs => f.write_str("btrfs"),
            FsKind::Ext4 => f.write_str("ext4"),
            FsKind::Xfs => f.write_str("xfs"),
            FsKind::Tmpfs => f.write_str("tmpfs"),
            FsKind::Overlay => f.write_str("overlayfs"),
            FsKind::Zfs => f.write_str("zfs"),
            FsKind::Nfs => f.write_str("nfs"),
            FsKind::Other(m) => write!(f, "a filesystem with magic {m:#x}"),
        }
    }
}

fn magic(t: FsType) -> i64 {
    #[allow(clippy::unnecessary_cast)] // the field's width differs between libcs
    let m = t.0 as i64;
    m
}

/// The filesystem `path` is on.
pub fn fs_kind(path: &Path) -> io::Result<FsKind> {
    let st = statfs(path).map_err(io::Error::from)?;
    Ok(FsKind::from_magic(magic(st.filesystem_type())))
}

/// Whether `path` is the root of a btrfs subvolume (on btrfs, with inode number 256). Does not
/// follow a final symlink.
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() || meta.ino() != BTRFS_SUBVOLUME_ROOT_INO {
        return Ok(false);
    }
    Ok(fs_kind(path)? == FsKind::Btrfs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn magic_numbers_name_their_filesystems() {
        assert_eq!(FsKind::from_magic(0x9123_683e), FsKind::Btrfs);
        assert_eq!(FsKind::from_magic(0xef53), FsKind::Ext4);
        assert_eq!(FsKind::Ext4.to_string(), "ext4");
        assert_eq!(FsKind::from_magic(0x1234), FsKind::Other(0x1234));
        assert!(FsKind::Other(0x1234).to_string().contains("0x1234"));
    }

    #[test]
    fn proc_is_not_btrfs_and_a_plain_dir_is_no_subvolume() {
        let k = fs_kind(Path::new("/proc")).unwrap();
        assert_eq!(k, FsKind::Other(0x9fa0), "procfs magic");
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(
            !is_subvolume(&sub).unwrap(),
            "a fresh mkdir is never a subvolume root"
        );
        assert!(is_subvolume(&dir.path().join("missing")).is_err());
    }
}
