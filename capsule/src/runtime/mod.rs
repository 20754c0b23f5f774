//! The capsule runtime: Bolt's own OCI-compatible runtime on `nix`.
//!
//! [`Runtime::spawn`] starts a [`CapsuleSpec`] as pid 1 of new pid, mount, ipc, uts, net and
//! cgroup namespaces on an overlayfs root, limited by a cgroup ([`cgroup`]), with docker's
//! default capabilities, masked and read-only paths, `no_new_privs` and docker's seccomp
//! allow-list ([`seccomp`]). [`Capsule`] waits (exit code, signal, OOM flag), kills, lists pids,
//! reads counters and `exec`s more processes into the capsule. [`supervise`] is the per-capsule
//! supervisor's core; [`oci`] turns a spec into a runc-compatible bundle.
//!
//! See docs/runtime.md for the setup order and the reasons behind it.

pub mod cgroup;
pub mod devices;
pub mod oci;
mod plan;
pub mod seccomp;
pub mod spec;
pub mod supervisor;
pub mod userns;

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

pub use cgroup::{Cgroup, CgroupError, CgroupStats, CgroupVersion, Hierarchy};
pub use oci::{to_oci, write_bundle, OciError};
pub use seccomp::SeccompError;
pub use spec::{
    CapsuleSpec, Mount, NetworkMode, Resources, Rlimit, RlimitKind, Rootfs, SpecError,
    TmpfsOptions, User,
};
pub use supervisor::{adopt, Adopted, SuperviseOptions, SupervisorError};
pub use userns::{IdMap, MapWriter, UserNamespace, UserNamespaceError};

use crate::sys::{clone_child, detached_tree, ns, ExecArgs, LinuxSyscall};
use plan::{child_main, Failure, FailureKind, Op};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The user namespace of a rootless capsule could not be set up.
    #[error(transparent)]
    UserNamespace(#[from] UserNamespaceError),
    /// What a rootless runtime cannot do.
    #[error("rootless: {0}")]
    Rootless(&'static str),
    /// Host-side preparation failed (directories, pipes, namespace files).
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `clone(2)` failed.
    #[error("clone the capsule process: {0}")]
    Clone(#[source] Errno),
    /// A setup step inside the new process failed.
    #[error("capsule setup failed at step {index} ({step}): {errno}")]
    Setup {
        /// Index of the step in the plan.
        index: u32,
        /// What the step does.
        step: String,
        /// The error.
        errno: Errno,
    },
    /// The command does not exist in the capsule (docker's exit code 127).
    #[error("command not found in the capsule: {0}")]
    NotFound(String),
    /// The command exists but cannot be executed (docker's exit code 126).
    #[error("cannot execute {command} in the capsule: {errno}")]
    NotExecutable {
        /// The command.
        command: String,
        /// The error.
        errno: Errno,
    },
    /// `waitpid(2)` failed.
    #[error("wait for pid {pid}: {errno}")]
    Wait {
        /// The pid.
        pid: i32,
        /// The error.
        errno: Errno,
    },
    /// Sending a signal failed.
    #[error("signal pid {pid}: {errno}")]
    Kill {
        /// The pid.
        pid: i32,
        /// The error.
        errno: Errno,
    },
}

impl RuntimeError {
    /// The exit code a CLI should use for this error, as docker does: 127 when the command is
    /// missing, 126 when it cannot be executed, 125 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound(_) => 127,
            Self::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

fn cstring(what: &'static str, bytes: impl Into<Vec<u8>>) -> Result<CString, RuntimeError> {
    CString::new(bytes).map_err(|_| RuntimeError::Spec(SpecError::NulByte(what)))
}

fn cpath(what: &'static str, p: &Path) -> Result<CString, RuntimeError> {
    cstring(what, p.as_os_str().as_bytes())
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether the OOM killer killed a process of the capsule.
    pub oom_killed: bool,
}

impl ExitStatus {
    /// The shell-style code: the exit code, or 128 + signal (137 for SIGKILL).
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }

    fn from_wait(ws: WaitStatus) -> Option<Self> {
        match ws {
            WaitStatus::Exited(_, code) => Some(Self {
                code: Some(code),
                signal: None,
                oom_killed: false,
            }),
            WaitStatus::Signaled(_, sig, _) => Some(Self {
                code: None,
                signal: Some(sig as i32),
                oom_killed: false,
            }),
            _ => None,
        }
    }
}

/// Where one standard stream of the process goes.
#[derive(Debug, Default)]
pub enum StdioSlot {
    /// The caller's own stream.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// This fd (a pipe end, a file, a pty).
    Fd(OwnedFd),
}

/// The three standard streams.
#[derive(Debug, Default)]
pub struct Stdio {
    /// fd 0.
    pub stdin: StdioSlot,
    /// fd 1.
    pub stdout: StdioSlot,
    /// fd 2.
    pub stderr: StdioSlot,
    /// fd 0 is a terminal (a pty slave): the process leads a new session with it as its
    /// controlling terminal, so ^C and job control work as on a login terminal (runc's
    /// `process.terminal`).
    pub terminal: bool,
}

impl Stdio {
    /// All three inherited.
    pub fn inherit() -> Self {
        Self::default()
    }

    /// All three on `/dev/null`.
    pub fn null() -> Self {
        Self {
            stdin: StdioSlot::Null,
            stdout: StdioSlot::Null,
            stderr: StdioSlot::Null,
            terminal: false,
        }
    }

    /// Opens what is needed and returns `(fd, target)` pairs plus the owned fds to keep alive
    /// until the clone.
    fn prepare(self) -> Result<StdioFds, RuntimeError> {
        let terminal = self.terminal;
        let mut pairs = Vec::new();
        let mut keep = Vec::new();
        for (slot, target) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
            let fd = match slot {
                StdioSlot::Inherit => continue,
                StdioSlot::Null => OwnedFd::from(
                    File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(io("open /dev/null"))?,
                ),
                StdioSlot::Fd(fd) => fd,
            };
            pairs.push((fd.as_raw_fd(), target));
            keep.push(fd);
        }
        Ok((pairs, keep, terminal))
    }
}

/// `(fd, target)` pairs for the child, the fds to keep open until the clone, and whether fd 0
/// becomes the controlling terminal.
type StdioFds = (Vec<(RawFd, RawFd)>, Vec<OwnedFd>, bool);

/// A process to start inside a running capsule (`bolt exec`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSpec {
    /// Command and arguments.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` entries on top of the capsule's environment.
    pub env: Vec<String>,
    /// Working directory (the capsule's when `None`).
    pub workdir: Option<String>,
    /// User (the capsule's when `None`).
    pub user: Option<User>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Io {
        what: "create a pipe".into(),
        source: e.into(),
    })
}

/// Reads the child's report from the error pipe: `None` when the pipe closed empty (exec
/// succeeded).
fn read_failure(err_r: OwnedFd) -> Result<Option<Failure>, RuntimeError> {
    let mut buf = Vec::with_capacity(Failure::LEN);
    File::from(err_r)
        .read_to_end(&mut buf)
        .map_err(io("read the capsule's setup status"))?;
    if buf.is_empty() {
        return Ok(None);
    }
    Ok(Some(Failure::decode(&buf).unwrap_or(Failure {
        index: u32::MAX,
        errno: Errno::EIO as i32,
        kind: FailureKind::Setup,
    })))
}

fn failure_error(f: Failure, plan: &[Op], command: &str) -> RuntimeError {
    let errno = Errno::from_raw(f.errno);
    match f.kind {
        FailureKind::NotFound => RuntimeError::NotFound(command.to_owned()),
        FailureKind::NotExecutable => RuntimeError::NotExecutable {
            command: command.to_owned(),
            errno,
        },
        FailureKind::Setup => RuntimeError::Setup {
            index: f.index,
            step: plan
                .get(f.index as usize)
                .map_or_else(|| "unknown step".to_owned(), Op::describe),
            errno,
        },
    }
}

fn wait_blocking(pid: i32) -> Result<ExitStatus, RuntimeError> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(ws) => {
                if let Some(s) = ExitStatus::from_wait(ws) {
                    return Ok(s);
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(RuntimeError::Wait { pid, errno }),
        }
    }
}

fn try_wait_pid(pid: i32) -> Result<Option<ExitStatus>, RuntimeError> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(ws) => Ok(ExitStatus::from_wait(ws)),
        Err(Errno::EINTR) => Ok(None),
        Err(errno) => Err(RuntimeError::Wait { pid, errno }),
    }
}

/// Ends and reaps a child we started whose setup failed.
fn reap_failed(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = wait_blocking(pid);
}

/// The security settings shared by a capsule's first process and its `exec`s.
struct Security {
    cap_mask: u64,
    last_cap: u32,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// False in a user namespace whose `setgroups` is denied (a self-map).
    setgroups: bool,
    no_new_privs: bool,
    seccomp: Option<Vec<libc::sock_filter>>,
}

impl Security {
    /// The tail of every plan: rlimits, user, capabilities, no_new_privs, umask, fds, seccomp,
    /// exec.
    fn push_tail(
        &self,
        plan: &mut Vec<Op>,
        rlimits: &[Rlimit],
        candidates: Vec<CString>,
        args: ExecArgs,
    ) {
        for r in rlimits {
            plan.push(Op::Rlimit {
                resource: r.kind.resource(),
                soft: r.soft,
                hard: r.hard,
            });
        }
        for cap in 0..=self.last_cap {
            if self.cap_mask & (1u64 << cap) == 0 {
                plan.push(Op::DropBounding(cap));
            }
        }
        plan.push(Op::SetIds {
            uid: self.uid,
            gid: self.gid,
            groups: self.setgroups.then(|| self.groups.clone()),
        });
        // A non-root user keeps no capabilities after setresuid (docker's behaviour too).
        plan.push(Op::Capset {
            mask: if self.uid == 0 { self.cap_mask } else { 0 },
        });
        plan.push(Op::ClearAmbient);
        if self.no_new_privs {
            plan.push(Op::NoNewPrivs);
        }
        plan.push(Op::Umask(0o022));
        plan.push(Op::CloexecFrom(3));
        if let Some(f) = &self.seccomp {
            plan.push(Op::Seccomp(f.clone()));
        }
        plan.push(Op::Exec { candidates, args });
    }
}

/// The paths `execve` tries for `command`: itself when it has a '/', else each `PATH` entry.
fn exec_candidates(command: &str, env: &[String]) -> Result<Vec<CString>, RuntimeError> {
    if command.contains('/') {
        return Ok(vec![cstring("command", command)?]);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(spec::DEFAULT_PATH);
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| cstring("command", format!("{}/{command}", d.trim_end_matches('/'))))
        .collect()
}

fn exec_args(args: &[String], env: &[String]) -> Result<ExecArgs, RuntimeError> {
    let argv = args
        .iter()
        .map(|a| cstring("command", a.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring("environment", e.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ExecArgs::new(argv, envp))
}

/// Inputs of [`capsule_plan`] that come from the host rather than the spec.
struct PlanFds {
    stdio: Vec<(RawFd, RawFd)>,
    /// fd 0 becomes the controlling terminal of a new session.
    terminal: bool,
    /// Parent-side pipe ends the child must close.
    close: Vec<RawFd>,
    go_read: RawFd,
    netns: Option<RawFd>,
    cgroup_ns: bool,
    /// One entry per `spec.mounts` entry, in the same order.
    mounts: Vec<HostMount>,
    /// Set for a capsule in its own user namespace (rootless).
    rootless: Option<RootlessPlan>,
    /// Bind sources the child clones itself (rootless): source, read-only, the fd slot.
    child_trees: Vec<(CString, bool, RawFd)>,
}

/// What a rootless capsule's plan needs to know about its user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RootlessPlan {
    /// gid 5 (`tty`, devpts' `gid=`) is mapped.
    tty_gid: bool,
}

/// What the parent prepared for one [`Mount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostMount {
    /// The detached tree of a bind (none for a tmpfs).
    tree: Option<RawFd>,
    /// The bind source is a file (the mount point must be a file too).
    file: bool,
}

/// Bind sources the child clones itself: source, read-only, the fd slot it fills.
type ChildTrees = Vec<(CString, bool, RawFd)>;

/// Opens each bind source as a detached tree (see [`crate::sys::detached_tree`]); the fds
/// must stay open until the child has attached them. `in_child` (rootless, where only the
/// child in its user namespace may clone mounts): each fd is a placeholder on `/dev/null` that
/// the child replaces with its own clone of the source.
fn prepare_mounts(
    spec: &CapsuleSpec,
    in_child: bool,
) -> Result<(Vec<HostMount>, Vec<OwnedFd>, ChildTrees), RuntimeError> {
    let mut out = Vec::with_capacity(spec.mounts.len());
    let mut keep = Vec::new();
    let mut child_trees = Vec::new();
    for m in &spec.mounts {
        match m {
            Mount::Bind {
                source, readonly, ..
            } => {
                let what = || format!("bind source {}", source.display());
                let meta = std::fs::metadata(source).map_err(io(what()))?;
                let fd = if in_child {
                    let slot =
                        OwnedFd::from(File::open("/dev/null").map_err(io("open /dev/null"))?);
                    child_trees.push((cpath("bind source", source)?, *readonly, slot.as_raw_fd()));
                    slot
                } else {
                    detached_tree(source, *readonly).map_err(|e| RuntimeError::Io {
                        what: format!("clone the mount tree of {}", what()),
                        source: e.into(),
                    })?
                };
                out.push(HostMount {
                    tree: Some(fd.as_raw_fd()),
                    file: !meta.is_dir(),
                });
                keep.push(fd);
            }
            Mount::Tmpfs { .. } => out.push(HostMount {
                tree: None,
                file: false,
            }),
        }
    }
    Ok((out, keep, child_trees))
}

/// The steps for the spec's extra mounts, run after `pivot_root` (so targets resolve inside
/// the capsule): parents before children, each target created when missing.
fn push_mounts(
    plan: &mut Vec<Op>,
    spec: &CapsuleSpec,
    host: &[HostMount],
) -> Result<(), RuntimeError> {
    let mut order: Vec<(usize, &Mount)> = spec.mounts.iter().enumerate().collect();
    // Stable: mounts of equal depth keep the spec's order.
    order.sort_by_key(|(_, m)| m.target().split('/').filter(|p| !p.is_empty()).count());
    for (i, m) in order {
        let target = spec::normalize_target(m.target());
        let prepared = host.get(i).copied().unwrap_or(HostMount {
            tree: None,
            file: false,
        });
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        let dirs = if prepared.file {
            parts.len().saturating_sub(1)
        } else {
            parts.len()
        };
        let mut prefix = String::new();
        for part in parts.iter().take(dirs) {
            prefix.push('/');
            prefix.push_str(part);
            plan.push(Op::Mkdir {
                path: cstring("mount target", prefix.as_str())?,
                mode: 0o755,
            });
        }
        if prepared.file {
            plan.push(Op::CreateFile {
                path: cstring("mount target", target.as_str())?,
            });
        }
        match (m, prepared.tree) {
            (Mount::Bind { .. }, Some(fd)) => plan.push(Op::MoveMount {
                fd,
                target: cstring("mount target", target.as_str())?,
            }),
            (Mount::Bind { source, .. }, None) => {
                return Err(RuntimeError::Io {
                    what: format!("bind source {} was not prepared", source.display()),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })
            }
            (Mount::Tmpfs { options, .. }, _) => {
                use plan::ms::{NODEV, NOEXEC, NOSUID, RDONLY};
                let mut flags = NOSUID | NODEV;
                if !options.exec {
                    flags |= NOEXEC;
                }
                if options.readonly {
                    flags |= RDONLY;
                }
                let data = options.data();
                plan.push(Op::Mount {
                    source: Some(cstring("source", "tmpfs")?),
                    target: cstring("mount target", target.as_str())?,
                    fstype: Some(cstring("fstype", "tmpfs")?),
                    flags,
                    data: if data.is_empty() {
                        None
                    } else {
                        Some(cstring("mount data", data)?)
                    },
                });
            }
        }
    }
    Ok(())
}

/// The device nodes of a capsule's `/dev`: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// Builds the first process's steps (see docs/runtime.md for the order).
fn capsule_plan(
    spec: &CapsuleSpec,
    sec: &Security,
    fds: &PlanFds,
) -> Result<Vec<Op>, RuntimeError> {
    let root = &spec.rootfs.target;
    let at = |p: &str| cpath("rootfs path", &root.join(p.trim_start_matches('/')));
    let mut plan = Vec::with_capacity(64);
    for (from, to) in &fds.stdio {
        plan.push(Op::Dup2 {
            from: *from,
            to: *to,
        });
    }
    for fd in &fds.close {
        plan.push(Op::Close(*fd));
    }
    if fds.terminal {
        plan.push(Op::ControllingTerminal(0));
    }
    // In a new user namespace nothing is allowed until the parent has written the id maps.
    if fds.rootless.is_some() {
        plan.push(Op::WaitParent(fds.go_read));
    }
    // A joined network namespace (bridge networking) before anything is mounted: sysfs shows
    // the interfaces of the namespace that mounts it, so /sys/class/net must be the capsule's.
    if let (NetworkMode::Join(_), Some(fd)) = (&spec.network, fds.netns) {
        plan.push(Op::Setns {
            fd,
            nstype: ns::NEWNET,
        });
    }
    plan.push(Op::Umask(0));
    // Nothing we mount may propagate back to the host.
    plan.push(Op::Mount {
        source: None,
        target: cstring("path", "/")?,
        fstype: None,
        flags: plan::ms::REC | plan::ms::PRIVATE,
        data: None,
    });
    // Clone the bind sources the parent could not (rootless), before anything is mounted
    // here: a source above the rootfs must not show the capsule's own mounts.
    for (source, readonly, fd) in &fds.child_trees {
        plan.push(Op::OpenTree {
            source: source.clone(),
            readonly: *readonly,
            fd: *fd,
        });
    }
    let mut overlay = spec.rootfs.overlay_options();
    if fds.rootless.is_some() {
        // Overlay metadata (whiteouts, opaque dirs) in user.overlay.* xattrs, which a user
        // namespace may write; the rootless unpacker writes them that way.
        overlay.push_str(",userxattr");
    }
    // nodev: a device node shipped in an image layer (or made in the writable layer) cannot be
    // opened; only the nodes of the runtime's own /dev tmpfs work.
    plan.push(Op::Mount {
        source: Some(cstring("source", "overlay")?),
        target: cpath("rootfs target", root)?,
        fstype: Some(cstring("fstype", "overlay")?),
        flags: plan::ms::NODEV,
        data: Some(cstring("overlay options", overlay)?),
    });
    use plan::ms::{BIND, NODEV, NOEXEC, NOSUID, RDONLY, REC, REMOUNT, STRICTATIME};
    // devpts' gid=5 needs gid 5 mapped; sysfs needs a network namespace owned by the capsule's
    // user namespace (its own), else the host's /sys is bound read-only (as runc does).
    let pts = match fds.rootless {
        Some(r) if !r.tty_gid => "newinstance,ptmxmode=0666,mode=0620",
        _ => "newinstance,ptmxmode=0666,mode=0620,gid=5",
    };
    let bind_sys = fds.rootless.is_some() && spec.network != NetworkMode::None;
    let mounts: [(&str, &str, u64, Option<&str>); 6] = [
        ("/proc", "proc", NOSUID | NOEXEC | NODEV, None),
        (
            "/dev",
            "tmpfs",
            NOSUID | STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
        ("/dev/pts", "devpts", NOSUID | NOEXEC, Some(pts)),
        (
            "/dev/shm",
            "tmpfs",
            NOSUID | NOEXEC | NODEV,
            Some("mode=1777,size=65536k"),
        ),
        ("/dev/mqueue", "mqueue", NOSUID | NOEXEC | NODEV, None),
        ("/sys", "sysfs", NOSUID | NOEXEC | NODEV | RDONLY, None),
    ];
    for (dest, fstype, flags, data) in mounts {
        plan.push(Op::Mkdir {
            path: at(dest)?,
            mode: 0o755,
        });
        if dest == "/sys" && bind_sys {
            plan.push(Op::Mount {
                source: Some(cstring("source", "/sys")?),
                target: at(dest)?,
                fstype: None,
                flags: BIND | REC,
                data: None,
            });
            plan.push(Op::Mount {
                source: None,
                target: at(dest)?,
                fstype: None,
                flags: BIND | REMOUNT | flags,
                data: None,
            });
            continue;
        }
        plan.push(Op::Mount {
            source: Some(cstring("source", fstype)?),
            target: at(dest)?,
            fstype: Some(cstring("fstype", fstype)?),
            flags,
            data: data.map(|d| cstring("mount data", d)).transpose()?,
        });
    }
    let defaults = DEVICES.iter().map(|(name, major, minor)| {
        let host = format!("/dev/{name}");
        (host.clone(), host, libc::S_IFCHR | 0o666, *major, *minor)
    });
    let granted = spec.devices.iter().map(|d| {
        let host = d.host.to_string_lossy().into_owned();
        let mode = d.kind.mode_bits() | d.mode;
        (host, d.path.clone(), mode, d.major.into(), d.minor.into())
    });
    for (host, dest, mode, major, minor) in defaults.chain(granted) {
        // A granted device may sit in a directory of its own (/dev/snd/controlC0).
        let mut dir = Path::new(&dest).parent();
        let mut dirs = Vec::new();
        while let Some(d) = dir.filter(|d| *d != Path::new("/dev")) {
            dirs.push(d);
            dir = d.parent();
        }
        for d in dirs.iter().rev() {
            plan.push(Op::Mkdir {
                path: at(&d.to_string_lossy())?,
                mode: 0o755,
            });
        }
        let path = at(&dest)?;
        if fds.rootless.is_some() {
            // A user namespace cannot create device nodes: bind the host's (runc's way).
            plan.push(Op::CreateFile { path: path.clone() });
            plan.push(Op::Mount {
                source: Some(cstring("source", host)?),
                target: path,
                fstype: None,
                flags: BIND,
                data: None,
            });
        } else {
            plan.push(Op::Mknod {
                path,
                mode,
                dev: crate::sys::makedev(major, minor),
            });
        }
    }
    for (target, link) in DEV_SYMLINKS {
        plan.push(Op::Symlink {
            target: cstring("symlink", target)?,
            link: at(&format!("/dev/{link}"))?,
        });
    }
    plan.push(Op::Hostname(spec.effective_hostname().into_bytes()));
    if spec.network == NetworkMode::None {
        plan.push(Op::LoopbackUp);
    }
    plan.push(Op::PivotRoot {
        root: cpath("rootfs target", root)?,
    });
    // Volumes, binds and tmpfs before masking: a mount cannot uncover a masked path.
    push_mounts(&mut plan, spec, &fds.mounts)?;
    for p in &spec.masked_paths {
        plan.push(Op::Mask {
            path: cstring("masked path", p.as_str())?,
        });
    }
    for p in &spec.readonly_paths {
        plan.push(Op::Readonly {
            path: cstring("read-only path", p.as_str())?,
        });
    }
    if spec.readonly_rootfs {
        plan.push(Op::ReadonlyRoot);
    }
    // The parent has put us in our cgroups once this returns; a cgroup namespace made after
    // that has the capsule's group as its root.
    plan.push(Op::WaitParent(fds.go_read));
    if fds.cgroup_ns {
        plan.push(Op::Unshare(ns::NEWCGROUP));
    }
    push_workdir(&mut plan, &spec.workdir)?;
    let env = spec.effective_env();
    let command = spec.args.first().map(String::as_str).unwrap_or_default();
    sec.push_tail(
        &mut plan,
        &spec.rlimits,
        exec_candidates(command, &env)?,
        exec_args(&spec.args, &env)?,
    );
    Ok(plan)
}

/// Host-side fds an `exec` plan uses.
struct ExecFds {
    stdio: Vec<(RawFd, RawFd)>,
    /// fd 0 becomes the controlling terminal of a new session (in the forked process).
    terminal: bool,
    close: Vec<RawFd>,
    go_read: RawFd,
    namespaces: Vec<(RawFd, i32)>,
    report: RawFd,
}

/// The steps of an `exec` helper: wait to be placed in the cgroup, join the namespaces (mount
/// last), fork into the pid namespace; the forked process then sets up like a capsule's first
/// process.
fn exec_plan(
    sec: &Security,
    rlimits: &[Rlimit],
    fds: ExecFds,
    workdir: &str,
    args: &[String],
    env: &[String],
) -> Result<Vec<Op>, RuntimeError> {
    let mut plan = Vec::new();
    for (from, to) in fds.stdio {
        plan.push(Op::Dup2 { from, to });
    }
    for fd in fds.close {
        plan.push(Op::Close(fd));
    }
    plan.push(Op::WaitParent(fds.go_read));
    for (fd, nstype) in fds.namespaces {
        plan.push(Op::Setns { fd, nstype });
    }
    plan.push(Op::ForkSibling {
        report_fd: fds.report,
    });
    plan.push(Op::Close(fds.report));
    if fds.terminal {
        plan.push(Op::ControllingTerminal(0));
    }
    push_workdir(&mut plan, workdir)?;
    let command = args.first().map(String::as_str).unwrap_or_default();
    sec.push_tail(
        &mut plan,
        rlimits,
        exec_candidates(command, env)?,
        exec_args(args, env)?,
    );
    Ok(plan)
}

/// `mkdir -p` then `chdir` for the working directory.
fn push_workdir(plan: &mut Vec<Op>, workdir: &str) -> Result<(), RuntimeError> {
    let mut prefix = String::new();
    for part in workdir.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        plan.push(Op::Mkdir {
            path: cstring("workdir", prefix.as_str())?,
            mode: 0o755,
        });
    }
    plan.push(Op::Chdir(cstring("workdir", workdir)?));
    Ok(())
}

fn read_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// The runtime: host facts detected once (cgroup hierarchy, cgroup namespaces, the last
/// capability) and the compiled default seccomp filter.
pub struct Runtime {
    hierarchy: Option<Hierarchy>,
    cgroup_ns: bool,
    last_cap: u32,
    filters: seccomp::Filters,
    /// Rootless: every capsule gets its own user namespace with these maps.
    userns: Option<UserNamespace>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("hierarchy", &self.hierarchy)
            .field("cgroup_ns", &self.cgroup_ns)
            .field("last_cap", &self.last_cap)
            .field("seccomp_insns", &self.filters.default_len())
            .field("userns", &self.userns)
            .finish()
    }
}

impl Runtime {
    /// Detects the host's cgroup hierarchy (from `/proc/self/mountinfo`) and features.
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_hierarchy(Some(Hierarchy::detect()?))
    }

    /// A runtime with the given hierarchy; `None` runs capsules without cgroup limits (for
    /// hosts that delegate none).
    pub fn with_hierarchy(hierarchy: Option<Hierarchy>) -> Result<Self, RuntimeError> {
        Ok(Self {
            hierarchy,
            cgroup_ns: Path::new("/proc/self/ns/cgroup").exists(),
            last_cap: read_last_cap(),
            filters: seccomp::Filters::new()?,
            userns: None,
        })
    }

    /// A rootless runtime for the calling (non-root) user: each capsule in its own user
    /// namespace mapped from `/etc/subuid` and `/etc/subgid` (see [`userns`]), and no cgroup
    /// limits (none are delegated to users on a v1 or hybrid host).
    pub fn rootless() -> Result<Self, RuntimeError> {
        Ok(Self::with_hierarchy(None)?.with_user_namespace(UserNamespace::for_current_user()?))
    }

    /// [`Runtime::new`] as root, [`Runtime::rootless`] otherwise.
    pub fn for_this_user() -> Result<Self, RuntimeError> {
        if nix::unistd::geteuid().is_root() {
            Self::new()
        } else {
            Self::rootless()
        }
    }

    /// Runs every capsule in a new user namespace with the given maps.
    pub fn with_user_namespace(mut self, userns: UserNamespace) -> Self {
        self.userns = Some(userns);
        self
    }

    /// The user namespace of rootless capsules, when this runtime is rootless.
    pub fn user_namespace(&self) -> Option<&UserNamespace> {
        self.userns.as_ref()
    }

    /// The cgroup hierarchy in use.
    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.hierarchy.as_ref()
    }

    fn security(&self, spec: &CapsuleSpec, user: User) -> Result<Security, RuntimeError> {
        let mut cap_mask = spec.capability_mask()?;
        // Without a device controller, CAP_MKNOD would let a capsule create and open any
        // device node: keep it only where the devices cgroup confines opening.
        if !self
            .hierarchy
            .as_ref()
            .is_some_and(Hierarchy::confines_devices)
        {
            cap_mask &= !(1u64 << 27);
        }
        // Supplementary groups are exactly the configured ones (as runc does).
        let groups = spec.additional_gids.clone();
        let mut setgroups = true;
        if let Some(ns) = &self.userns {
            ns.check_user(user.uid, user.gid, &groups)?;
            setgroups = ns.setgroups_allowed();
        }
        Ok(Security {
            cap_mask,
            last_cap: self.last_cap,
            uid: user.uid,
            gid: user.gid,
            groups,
            setgroups,
            no_new_privs: spec.no_new_privileges,
            seccomp: if spec.seccomp {
                Some(self.filters.for_caps(cap_mask)?)
            } else {
                None
            },
        })
    }

    /// Starts a capsule. On error nothing is left behind (no process, cgroup or mount).
    pub fn spawn(&self, spec: &CapsuleSpec, stdio: Stdio) -> Result<Capsule, RuntimeError> {
        spec.validate()?;
        if self.userns.is_some() && matches!(spec.network, NetworkMode::Join(_)) {
            // A namespace made by root is not ours to join (and bridges need root to make).
            return Err(RuntimeError::Rootless("bridge networking needs root"));
        }
        check_rlimits(&spec.rlimits)?;
        spec.rootfs
            .prepare()
            .map_err(io("create the capsule's rootfs directories"))?;
        let sec = self.security(spec, spec.user)?;
        let (stdio_pairs, _stdio_keep, terminal) = stdio.prepare()?;
        let netns = match &spec.network {
            NetworkMode::Join(p) => Some(OwnedFd::from(
                File::open(p).map_err(io(format!("open network namespace {}", p.display())))?,
            )),
            _ => None,
        };
        let (host_mounts, mount_fds, child_trees) = prepare_mounts(spec, self.userns.is_some())?;
        let (go_r, go_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let fds = PlanFds {
            stdio: stdio_pairs,
            terminal,
            close: vec![go_w.as_raw_fd(), err_r.as_raw_fd()],
            go_read: go_r.as_raw_fd(),
            netns: netns.as_ref().map(AsRawFd::as_raw_fd),
            cgroup_ns: self.cgroup_ns,
            mounts: host_mounts,
            rootless: self.userns.as_ref().map(|ns| RootlessPlan {
                tty_gid: ns.maps_gid(5),
            }),
            child_trees,
        };
        let plan = capsule_plan(spec, &sec, &fds)?;

        let cgroup = match &self.hierarchy {
            Some(h) => Some(h.create(
                &spec.id,
                &spec.resources,
                &devices::allow_rules(&spec.devices),
            )?),
            None => None,
        };
        let remove_cgroup = |cg: &Option<Box<dyn Cgroup>>| {
            if let Some(cg) = cg {
                let _ = cg.remove();
            }
        };

        let mut flags = ns::NEWPID | ns::NEWNS | ns::NEWIPC | ns::NEWUTS;
        if spec.network == NetworkMode::None {
            flags |= ns::NEWNET;
        }
        if self.userns.is_some() {
            // Created first by the kernel, it owns the other new namespaces.
            flags |= ns::NEWUSER;
        }
        let err_fd = err_w.as_raw_fd();
        let pid = match clone_child(flags, &mut || child_main(&LinuxSyscall, &plan, err_fd)) {
            Ok(pid) => pid,
            Err(e) => {
                remove_cgroup(&cgroup);
                return Err(RuntimeError::Clone(e));
            }
        };
        drop((go_r, err_w, netns, mount_fds));
        if let Some(userns) = &self.userns {
            if let Err(e) = userns.write_maps(pid) {
                reap_failed(pid);
                remove_cgroup(&cgroup);
                return Err(e.into());
            }
            // The first release: the maps are written (the second comes after the cgroups).
            let _ = nix::unistd::write(&go_w, &[1]);
        }
        if let Some(cg) = &cgroup {
            if let Err(e) = cg.add_pid(pid) {
                reap_failed(pid);
                remove_cgroup(&cgroup);
                return Err(e.into());
            }
        }
        // Release the child; if it already failed, the write fails with EPIPE and the error
        // pipe says why.
        let _ = nix::unistd::write(&go_w, &[1]);
        drop(go_w);
        let command = spec.args.first().cloned().unwrap_or_default();
        match read_failure(err_r) {
            Ok(None) => Ok(Capsule {
                spec: spec.clone(),
                pid,
                cgroup,
                status: None,
                removed: false,
            }),
            Ok(Some(f)) => {
                reap_failed(pid);
                remove_cgroup(&cgroup);
                Err(failure_error(f, &plan, &command))
            }
            Err(e) => {
                reap_failed(pid);
                remove_cgroup(&cgroup);
                Err(e)
            }
        }
    }

    /// Starts a process inside the running capsule whose first process is `pid` (host pid)
    /// and whose spec is `spec`: joins its namespaces and cgroup, then applies the capsule's
    /// capabilities, `no_new_privs`, seccomp and user (or `exec.user`).
    pub fn exec(
        &self,
        spec: &CapsuleSpec,
        pid: i32,
        exec: &ExecSpec,
        stdio: Stdio,
    ) -> Result<Process, RuntimeError> {
        if exec.args.first().is_none_or(String::is_empty) {
            return Err(SpecError::EmptyCommand.into());
        }
        let user = exec.user.unwrap_or(spec.user);
        let sec = self.security(spec, user)?;
        let mut env = spec.env.clone();
        env.extend(exec.env.iter().cloned());
        let env = spec::effective_env(&env, user.uid);
        let workdir = exec.workdir.clone().unwrap_or_else(|| spec.workdir.clone());

        let mut kinds = Vec::new();
        if self.userns.is_some() {
            // First: it gives the capabilities needed to join the others, which it owns.
            kinds.push(("user", ns::NEWUSER));
        }
        kinds.extend([("ipc", ns::NEWIPC), ("uts", ns::NEWUTS)]);
        if spec.network != NetworkMode::Host {
            kinds.push(("net", ns::NEWNET));
        }
        if self.cgroup_ns {
            kinds.push(("cgroup", ns::NEWCGROUP));
        }
        kinds.push(("pid", ns::NEWPID));
        kinds.push(("mnt", ns::NEWNS));
        let mut ns_fds = Vec::new();
        for (name, kind) in kinds {
            let path = format!("/proc/{pid}/ns/{name}");
            let f = File::open(&path).map_err(io(format!("open {path}")))?;
            ns_fds.push((OwnedFd::from(f), kind));
        }

        let (stdio_pairs, _stdio_keep, terminal) = stdio.prepare()?;
        let (go_r, go_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let ns_raw: Vec<(RawFd, i32)> = ns_fds.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
        let plan = exec_plan(
            &sec,
            &spec.rlimits,
            ExecFds {
                stdio: stdio_pairs,
                terminal,
                close: vec![go_w.as_raw_fd(), err_r.as_raw_fd(), report_r.as_raw_fd()],
                go_read: go_r.as_raw_fd(),
                namespaces: ns_raw,
                report: report_w.as_raw_fd(),
            },
            &workdir,
            &exec.args,
            &env,
        )?;
        let command = exec.args.first().cloned().unwrap_or_default();

        let err_fd = err_w.as_raw_fd();
        let helper = clone_child(0, &mut || child_main(&LinuxSyscall, &plan, err_fd))
            .map_err(RuntimeError::Clone)?;
        drop((go_r, err_w, report_w));
        if let Some(h) = &self.hierarchy {
            if let Err(e) = h.open(&spec.id).add_pid(helper) {
                reap_failed(helper);
                return Err(e.into());
            }
        }
        let _ = nix::unistd::write(&go_w, &[1]);
        drop(go_w);
        let mut pid_bytes = [0u8; 4];
        let got_pid = File::from(report_r).read_exact(&mut pid_bytes).is_ok();
        // The helper exits right after the fork (or failed before it).
        let _ = wait_blocking(helper);
        let child = got_pid.then(|| i32::from_le_bytes(pid_bytes));
        match (read_failure(err_r), child) {
            (Ok(None), Some(child)) => Ok(Process {
                pid: child,
                status: None,
            }),
            (result, child) => {
                if let Some(c) = child {
                    reap_failed(c);
                }
                Err(match result {
                    Ok(Some(f)) => failure_error(f, &plan, &command),
                    Ok(None) => RuntimeError::Setup {
                        index: 0,
                        step: "fork into the capsule's pid namespace".into(),
                        errno: Errno::EIO,
                    },
                    Err(e) => e,
                })
            }
        }
    }
}

fn check_rlimits(rlimits: &[Rlimit]) -> Result<(), RuntimeError> {
    use nix::sys::resource::{getrlimit, Resource};
    for r in rlimits {
        let res = match r.kind {
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
            RlimitKind::Nproc => Resource::RLIMIT_NPROC,
            RlimitKind::Core => Resource::RLIMIT_CORE,
            RlimitKind::Stack => Resource::RLIMIT_STACK,
            RlimitKind::Memlock => Resource::RLIMIT_MEMLOCK,
        };
        let Ok((_, host_hard)) = getrlimit(res) else {
            continue;
        };
        // This host cannot raise a hard limit (no CAP_SYS_RESOURCE): refuse up front rather
        // than fail inside the capsule.
        if host_hard != libc::RLIM_INFINITY && r.hard > host_hard {
            return Err(SpecError::RlimitAboveHost {
                name: r.kind.name(),
                hard: r.hard,
                host_hard,
            }
            .into());
        }
    }
    Ok(())
}

/// A running (or exited, not yet removed) capsule. Dropping it kills what still runs and
/// removes its cgroup; [`Capsule::destroy`] does the same and reports errors.
#[derive(Debug)]
pub struct Capsule {
    spec: CapsuleSpec,
    pid: i32,
    cgroup: Option<Box<dyn Cgroup>>,
    status: Option<ExitStatus>,
    removed: bool,
}

impl Capsule {
    /// The capsule's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The spec it runs.
    pub fn spec(&self) -> &CapsuleSpec {
        &self.spec
    }

    /// Host pid of the capsule's first process (pid 1 inside).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its cgroup, when the runtime has a hierarchy.
    pub fn cgroup(&self) -> Option<&dyn Cgroup> {
        self.cgroup.as_deref()
    }

    fn with_oom(&self, mut s: ExitStatus) -> ExitStatus {
        if let Some(cg) = &self.cgroup {
            s.oom_killed = cg.oom_kills().is_ok_and(|n| n > 0);
        }
        s
    }

    /// Waits for the first process to exit (the kernel then ends the rest of the pid
    /// namespace). The OOM flag comes from the cgroup's OOM-kill counter.
    pub fn wait(&mut self) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.with_oom(wait_blocking(self.pid)?);
        self.status = Some(s);
        Ok(s)
    }

    /// The exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let s = try_wait_pid(self.pid)?.map(|s| self.with_oom(s));
        self.status = s;
        Ok(s)
    }

    /// Sends a signal to the first process (a no-op once it has been reaped).
    pub fn kill(&self, signal: Signal) -> Result<(), RuntimeError> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid), signal).map_err(|errno| RuntimeError::Kill {
            pid: self.pid,
            errno,
        })
    }

    /// Host pids of every process in the capsule (from its cgroup; just the first process
    /// without cgroups).
    pub fn pids(&self) -> Result<Vec<i32>, RuntimeError> {
        match &self.cgroup {
            Some(cg) => Ok(cg.pids()?),
            None => Ok(if self.status.is_none() {
                vec![self.pid]
            } else {
                Vec::new()
            }),
        }
    }

    /// Cgroup counters (zeros without cgroups).
    pub fn stats(&self) -> Result<CgroupStats, RuntimeError> {
        match &self.cgroup {
            Some(cg) => Ok(cg.stats()?),
            None => Ok(CgroupStats::default()),
        }
    }

    /// Starts another process in the capsule.
    pub fn exec(
        &self,
        runtime: &Runtime,
        exec: &ExecSpec,
        stdio: Stdio,
    ) -> Result<Process, RuntimeError> {
        runtime.exec(&self.spec, self.pid, exec, stdio)
    }

    /// Kills whatever still runs, reaps the first process and removes the cgroup.
    pub fn destroy(mut self) -> Result<Option<ExitStatus>, RuntimeError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<Option<ExitStatus>, RuntimeError> {
        if self.removed {
            return Ok(self.status);
        }
        self.removed = true;
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let s = wait_blocking(self.pid)?;
            self.status = Some(self.with_oom(s));
        }
        if let Some(cg) = &self.cgroup {
            cg.remove()?;
        }
        Ok(self.status)
    }
}

impl Drop for Capsule {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// A process started by [`Runtime::exec`]. Dropping it kills and reaps it if still running.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    status: Option<ExitStatus>,
}

impl Process {
    /// Host pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = wait_blocking(self.pid)?;
        self.status = Some(s);
        Ok(s)
    }

    /// Sends a signal (a no-op once reaped).
    pub fn kill(&self, signal: Signal) -> Result<(), RuntimeError> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid), signal).map_err(|errno| RuntimeError::Kill {
            pid: self.pid,
            errno,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            reap_failed(self.pid);
        }
    }
}

/// How long [`Cgroup::kill_all`] keeps trying by default.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
