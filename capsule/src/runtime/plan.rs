//! The child side of a spawn: a list of prepared steps ([`Op`]) run in order against a
//! [`Syscall`] implementation, without allocating (the child is cloned from a possibly
//! multi-threaded process).
//!
//! The parent builds the plan, clones, and keeps its copy: a failing child reports only the index
//! of the failing step and an errno through the error pipe ([`Failure`]), and the parent names
//! the step from its own copy.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use crate::sys::{Errno, ExecArgs, Syscall};

/// `MS_*` flags as `u64`.
pub(crate) mod ms {
    pub const RDONLY: u64 = libc::MS_RDONLY;
    pub const NOSUID: u64 = libc::MS_NOSUID;
    pub const NODEV: u64 = libc::MS_NODEV;
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    pub const REMOUNT: u64 = libc::MS_REMOUNT;
    pub const BIND: u64 = libc::MS_BIND;
    pub const REC: u64 = libc::MS_REC;
    pub const PRIVATE: u64 = libc::MS_PRIVATE;
    pub const STRICTATIME: u64 = libc::MS_STRICTATIME;
}

/// One setup step of a capsule's first process (or of an `exec`'d process).
pub(crate) enum Op {
    /// Put a stdio fd in place (`from == to` clears close-on-exec).
    Dup2 { from: RawFd, to: RawFd },
    /// Lead a new session with this fd (a pty) as the controlling terminal.
    ControllingTerminal(RawFd),
    /// Close an inherited fd the child must not hold (the parent's end of a pipe).
    Close(RawFd),
    /// Set the umask.
    Umask(u32),
    /// `mount(2)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: u64,
        data: Option<CString>,
    },
    /// `mkdir(2)`; an existing entry is fine.
    Mkdir { path: CString, mode: u32 },
    /// A device node (`mode` holds the `S_IFCHR`/`S_IFBLK` bits); an existing entry is fine.
    Mknod { path: CString, mode: u32, dev: u64 },
    /// An empty regular file (a mount point for a file bind); an existing entry is fine.
    CreateFile { path: CString },
    /// Attach the detached mount tree behind `fd` on `target`.
    MoveMount { fd: RawFd, target: CString },
    /// Clone the host's mount tree at `source` onto fd `fd` (rootless: the parent cannot).
    OpenTree {
        source: CString,
        readonly: bool,
        fd: RawFd,
    },
    /// A symlink; an existing entry is fine.
    Symlink { target: CString, link: CString },
    /// `chdir(root)`, `pivot_root(".", ".")`, detach the old root, `chdir("/")`.
    PivotRoot { root: CString },
    /// Hide a path: bind `/dev/null` on a file, a read-only tmpfs on a directory; missing paths
    /// are skipped.
    Mask { path: CString },
    /// Bind a path on itself read-only; missing paths are skipped.
    Readonly { path: CString },
    /// Remount `/` read-only.
    ReadonlyRoot,
    /// Set the hostname.
    Hostname(Vec<u8>),
    /// Bring up `lo`.
    LoopbackUp,
    /// Join the namespace behind `fd`.
    Setns { fd: RawFd, nstype: i32 },
    /// Block until the parent writes a byte (it has placed us in our cgroups) or closes the pipe.
    WaitParent(RawFd),
    /// `unshare(2)`.
    Unshare(i32),
    /// `setrlimit(2)`.
    Rlimit { resource: u32, soft: u64, hard: u64 },
    /// Drop one capability from the bounding set.
    DropBounding(u32),
    /// `setgroups` (skipped when `None`: a user namespace that denies it), `setresgid`,
    /// `setresuid`.
    SetIds {
        uid: u32,
        gid: u32,
        groups: Option<Vec<u32>>,
    },
    /// Effective and permitted capabilities (inheritable cleared).
    Capset { mask: u64 },
    /// Clear ambient capabilities.
    ClearAmbient,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `chdir(2)`.
    Chdir(CString),
    /// Every fd from this number on closes at exec.
    CloexecFrom(u32),
    /// Install the seccomp filter.
    Seccomp(Vec<libc::sock_filter>),
    /// Fork a sibling (a child of our parent), report its pid on `report_fd` and exit; the
    /// sibling goes on with the next step. Used by `exec`, since joining a pid namespace only
    /// takes effect for children.
    ForkSibling { report_fd: RawFd },
    /// Try `execve` on each candidate path in turn (the `PATH` lookup, done in the parent).
    Exec {
        candidates: Vec<CString>,
        args: ExecArgs,
    },
}

fn lossy(c: &CStr) -> std::borrow::Cow<'_, str> {
    c.to_string_lossy()
}

impl Op {
    /// A human description, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Op::Dup2 { from, to } => format!("set up stdio fd {to} from {from}"),
            Op::ControllingTerminal(fd) => format!("make fd {fd} the controlling terminal"),
            Op::Close(fd) => format!("close fd {fd}"),
            Op::Umask(m) => format!("umask {m:o}"),
            Op::Mount {
                source,
                target,
                fstype,
                ..
            } => format!(
                "mount {} ({}) on {}",
                source.as_deref().map_or_else(|| "-".into(), lossy),
                fstype.as_deref().map_or_else(|| "bind".into(), lossy),
                lossy(target)
            ),
            Op::Mkdir { path, .. } => format!("create directory {}", lossy(path)),
            Op::Mknod { path, .. } => format!("create device {}", lossy(path)),
            Op::CreateFile { path } => format!("create mount point file {}", lossy(path)),
            Op::MoveMount { target, .. } => format!("bind mount on {}", lossy(target)),
            Op::OpenTree { source, .. } => format!("clone the mount tree of {}", lossy(source)),
            Op::Symlink { link, .. } => format!("create symlink {}", lossy(link)),
            Op::PivotRoot { root } => format!("pivot_root into {}", lossy(root)),
            Op::Mask { path } => format!("mask {}", lossy(path)),
            Op::Readonly { path } => format!("make {} read-only", lossy(path)),
            Op::ReadonlyRoot => "make the root filesystem read-only".into(),
            Op::Hostname(h) => format!("set hostname {}", String::from_utf8_lossy(h)),
            Op::LoopbackUp => "bring up lo".into(),
            Op::Setns { nstype, .. } => format!("join namespace {nstype:#x}"),
            Op::WaitParent(_) => "wait for the parent".into(),
            Op::Unshare(f) => format!("unshare {f:#x}"),
            Op::Rlimit { resource, .. } => format!("set rlimit {resource}"),
            Op::DropBounding(c) => format!("drop capability {c} from the bounding set"),
            Op::SetIds { uid, gid, .. } => format!("switch to user {uid}:{gid}"),
            Op::Capset { .. } => "set capabilities".into(),
            Op::ClearAmbient => "clear ambient capabilities".into(),
            Op::NoNewPrivs => "set no_new_privs".into(),
            Op::Chdir(p) => format!("change directory to {}", lossy(p)),
            Op::CloexecFrom(n) => format!("mark fds from {n} close-on-exec"),
            Op::Seccomp(_) => "install the seccomp filter".into(),
            Op::ForkSibling { .. } => "fork into the capsule's pid namespace".into(),
            Op::Exec { args, .. } => format!(
                "execute {}",
                args.argv().first().map_or_else(|| "?".into(), |a| lossy(a))
            ),
        }
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why the child stopped before `execve` succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// A setup step failed.
    Setup = 0,
    /// No candidate path exists.
    NotFound = 1,
    /// A candidate exists but cannot be executed.
    NotExecutable = 2,
}

/// What the child reports through the error pipe: 12 bytes, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) index: u32,
    pub(crate) errno: i32,
    pub(crate) kind: FailureKind,
}

impl Failure {
    pub(crate) const LEN: usize = 12;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let (i, rest) = b.split_at_mut(4);
        let (e, k) = rest.split_at_mut(4);
        i.copy_from_slice(&self.index.to_le_bytes());
        e.copy_from_slice(&self.errno.to_le_bytes());
        k.copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let word = |r: std::ops::Range<usize>| -> Option<[u8; 4]> { b.get(r)?.try_into().ok() };
        let kind = match u32::from_le_bytes(word(8..12)?) {
            0 => FailureKind::Setup,
            1 => FailureKind::NotFound,
            2 => FailureKind::NotExecutable,
            _ => return None,
        };
        Some(Self {
            index: u32::from_le_bytes(word(0..4)?),
            errno: i32::from_le_bytes(word(4..8)?),
            kind,
        })
    }

    /// The process exit code the child uses (docker's convention).
    pub(crate) fn exit_code(&self) -> i32 {
        match self.kind {
            FailureKind::Setup => 125,
            FailureKind::NotFound => 127,
            FailureKind::NotExecutable => 126,
        }
    }
}

fn ok_if_exists(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

fn skip_missing(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Runs one step. `Ok(())` means go on; the `Exec` step never returns `Ok`.
fn run_op(sys: &dyn Syscall, op: &Op) -> Result<(), (Errno, FailureKind)> {
    let setup = |e: Errno| (e, FailureKind::Setup);
    match op {
        Op::Dup2 { from, to } => sys.dup2(*from, *to).map_err(setup),
        Op::ControllingTerminal(fd) => sys.set_controlling_terminal(*fd).map_err(setup),
        Op::Close(fd) => sys.close(*fd).map_err(setup),
        Op::Umask(m) => {
            sys.umask(*m);
            Ok(())
        }
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys
            .mount(
                source.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            )
            .map_err(setup),
        Op::Mkdir { path, mode } => ok_if_exists(sys.mkdir(path, *mode)).map_err(setup),
        Op::Mknod { path, mode, dev } => ok_if_exists(sys.mknod(path, *mode, *dev)).map_err(setup),
        Op::CreateFile { path } => {
            ok_if_exists(sys.mknod(path, libc::S_IFREG | 0o644, 0)).map_err(setup)
        }
        Op::MoveMount { fd, target } => sys.move_mount(*fd, target).map_err(setup),
        Op::OpenTree {
            source,
            readonly,
            fd,
        } => sys.open_tree_clone(source, *readonly, *fd).map_err(setup),
        Op::Symlink { target, link } => ok_if_exists(sys.symlink(target, link)).map_err(setup),
        Op::PivotRoot { root } => (|| {
            sys.chdir(root)?;
            sys.pivot_root(c".", c".")?;
            sys.umount2(c".", libc::MNT_DETACH)?;
            sys.chdir(c"/")
        })()
        .map_err(setup),
        Op::Mask { path } => match sys.mount(Some(c"/dev/null"), path, None, ms::BIND, None) {
            Err(Errno::ENOTDIR) => {
                skip_missing(sys.mount(Some(c"tmpfs"), path, Some(c"tmpfs"), ms::RDONLY, None))
            }
            other => skip_missing(other),
        }
        .map_err(setup),
        Op::Readonly { path } => {
            match sys.mount(Some(path), path, None, ms::BIND | ms::REC, None) {
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
                Ok(()) => sys.mount(
                    Some(path),
                    path,
                    None,
                    ms::BIND
                        | ms::REC
                        | ms::REMOUNT
                        | ms::RDONLY
                        | ms::NOSUID
                        | ms::NODEV
                        | ms::NOEXEC,
                    None,
                ),
            }
            .map_err(setup)
        }
        Op::ReadonlyRoot => sys
            .mount(None, c"/", None, ms::BIND | ms::REMOUNT | ms::RDONLY, None)
            .map_err(setup),
        Op::Hostname(h) => sys.sethostname(h).map_err(setup),
        Op::LoopbackUp => sys.loopback_up().map_err(setup),
        Op::Setns { fd, nstype } => sys.setns(*fd, *nstype).map_err(setup),
        Op::WaitParent(fd) => match sys.read_byte(*fd) {
            Ok(1) => Ok(()),
            // The parent went away (or gave up) without releasing us.
            Ok(_) => Err(setup(Errno::EPIPE)),
            Err(e) => Err(setup(e)),
        },
        Op::Unshare(f) => sys.unshare(*f).map_err(setup),
        Op::Rlimit {
            resource,
            soft,
            hard,
        } => sys.setrlimit(*resource, *soft, *hard).map_err(setup),
        Op::DropBounding(c) => match sys.drop_bounding_cap(*c) {
            // A capability the kernel does not know.
            Err(Errno::EINVAL) => Ok(()),
            other => other.map_err(setup),
        },
        Op::SetIds { uid, gid, groups } => (|| {
            if let Some(groups) = groups {
                sys.setgroups(groups)?;
            }
            sys.setresgid(*gid)?;
            sys.setresuid(*uid)
        })()
        .map_err(setup),
        Op::Capset { mask } => sys.capset(*mask, *mask, 0).map_err(setup),
        Op::ClearAmbient => match sys.clear_ambient_caps() {
            // Kernels without ambient capabilities.
            Err(Errno::EINVAL) => Ok(()),
            other => other.map_err(setup),
        },
        Op::NoNewPrivs => sys.set_no_new_privs().map_err(setup),
        Op::Chdir(p) => sys.chdir(p).map_err(setup),
        Op::CloexecFrom(n) => sys.cloexec_from(*n).map_err(setup),
        Op::Seccomp(f) => sys.seccomp(f).map_err(setup),
        Op::ForkSibling { report_fd } => match sys.fork_sibling() {
            Ok(0) => Ok(()),
            Ok(pid) => {
                let code = match sys.write_all(*report_fd, &pid.to_le_bytes()) {
                    Ok(()) => 0,
                    Err(_) => 125,
                };
                sys.exit(code)
            }
            Err(e) => Err(setup(e)),
        },
        Op::Exec { candidates, args } => {
            let mut denied = false;
            for path in candidates {
                match sys.execve(path, args) {
                    Errno::ENOENT | Errno::ENOTDIR => {}
                    Errno::EACCES => denied = true,
                    e => return Err((e, FailureKind::NotExecutable)),
                }
            }
            Err(if denied {
                (Errno::EACCES, FailureKind::NotExecutable)
            } else {
                (Errno::ENOENT, FailureKind::NotFound)
            })
        }
    }
}

/// Runs the steps in order; returns the failure of the first step that fails (a successful
/// `Exec` does not return at all).
pub(crate) fn run_plan(sys: &dyn Syscall, plan: &[Op]) -> Failure {
    for (index, op) in plan.iter().enumerate() {
        if let Err((errno, kind)) = run_op(sys, op) {
            return Failure {
                index: index as u32,
                errno: errno as i32,
                kind,
            };
        }
    }
    // A plan without an Exec step: report it as a setup failure on the last step.
    Failure {
        index: plan.len().saturating_sub(1) as u32,
        errno: Errno::EINVAL as i32,
        kind: FailureKind::Setup,
    }
}

/// The body of the cloned child: run the plan, report the failure, exit.
pub(crate) fn child_main(sys: &dyn Syscall, plan: &[Op], error_fd: RawFd) -> i32 {
    let failure = run_plan(sys, plan);
    let _ = sys.write_all(error_fd, &failure.encode());
    failure.exit_code()
}
