//! Network namespaces as open file descriptors, and running code inside one.
//!
//! A namespace lives as long as something refers to it: a process in it, an open descriptor of
//! it (a [`Netns`]), a socket made in it, or a bind mount of it (a *named* namespace, which is
//! what `ip netns add` makes and what `NetworkMode::Join(path)` opens). Namespace switches are
//! per thread, so [`Netns::run`] runs a closure on a fresh thread that `setns`es first; the
//! calling thread never changes namespace, and the worker thread ends with the call.
//!
//! Everything here goes through `nix`'s safe wrappers (`setns`, `unshare`, `mount`, `umount2`,
//! `fstatfs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a namespace could not be opened, made, entered or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Opening a namespace file failed.
    #[error("open network namespace {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a namespace (not on nsfs).
    #[error("{0} is not a network namespace file")]
    NotNetns(PathBuf),
    /// `fstatfs` of a namespace file failed.
    #[error("inspect network namespace {path}: {source}")]
    Inspect {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("create a network namespace: {0}")]
    Unshare(Errno),
    /// `setns(CLONE_NEWNET)` failed (not a network namespace, or no privilege).
    #[error("enter network namespace: {0}")]
    Enter(Errno),
    /// The path of a named namespace is taken.
    #[error("network namespace file {0} already exists")]
    Exists(PathBuf),
    /// Creating the file or its directory failed.
    #[error("create {path}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Bind-mounting the namespace on its file failed.
    #[error("bind-mount network namespace on {path}: {source}")]
    Mount {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// Unmounting a named namespace failed.
    #[error("unmount network namespace {path}: {source}")]
    Unmount {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// Removing a named namespace's file failed.
    #[error("remove {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Starting the worker thread failed.
    #[error("start a namespace worker thread: {0}")]
    Thread(io::Error),
    /// Duplicating the descriptor failed.
    #[error("duplicate a network namespace descriptor: {0}")]
    Dup(io::Error),
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new(THREAD_NETNS))
    }

    /// Opens a namespace file: a named namespace (`/run/netns/NAME`, a bind mount) or a
    /// `/proc/PID/ns/net` link.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let st = fstatfs(&file).map_err(|source| NetnsError::Inspect {
            path: path.to_path_buf(),
            source,
        })?;
        if st.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotNetns(path.to_path_buf()));
        }
        Ok(Self {
            fd: OwnedFd::from(file),
        })
    }

    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::open(&PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    /// A new, empty namespace (only a `lo`, down) that lives as long as this handle, a copy of
    /// it, or anything made inside it. No file names it: nothing is left behind when the
    /// process dies.
    pub fn new_unnamed() -> Result<Self, NetnsError> {
        on_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
            Self::current()
        })?
    }

    /// A new, empty namespace bind-mounted on `path` (as `ip netns add` does), so that it
    /// outlives this process and can be joined by path (`NetworkMode::Join(path)`). The parent
    /// directory is created. Remove it with [`Netns::remove_named`]. On failure nothing is
    /// left at `path`.
    pub fn create_named(path: &Path) -> Result<Self, NetnsError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| NetnsError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => NetnsError::Exists(path.to_path_buf()),
                _ => NetnsError::Create {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let made = on_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
            mount(
                Some(THREAD_NETNS),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::Mount {
                path: path.to_path_buf(),
                source,
            })?;
            Self::open(path)
        })
        .and_then(|r| r);
        if made.is_err() {
            let _ = Self::remove_named(path);
        }
        made
    }

    /// Unmounts and removes a named namespace. The namespace itself ends when nothing else
    /// refers to it. Missing or already unmounted paths are fine.
    pub fn remove_named(path: &Path) -> Result<(), NetnsError> {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(NetnsError::Unmount {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetnsError::Remove {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// `/proc/self/fd/N` for this handle: a path that opens the namespace from this process
    /// while the handle lives, for `NetworkMode::Join` with an unnamed namespace (the capsule
    /// then keeps it alive by itself, and it ends with the capsule: nothing to clean up).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        Ok(Self {
            fd: self.fd.try_clone().map_err(NetnsError::Dup)?,
        })
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Sockets, netlink
    /// connections and child processes that `f` creates belong to this namespace, and so do the
    /// `/proc/sys/net` files it opens. A panic in `f` is passed on to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let fd = self.fd.as_fd();
        on_thread(move || {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
            Ok(f())
        })?
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` on a fresh scoped thread, passing a panic on.
fn on_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("bolt-netns".into())
            .spawn_scoped(s, f)
            .map_err(NetnsError::Thread)?;
        match handle.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
