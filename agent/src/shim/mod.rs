//! The per-capsule supervisor process: `bolt supervise DIR` (hidden), Bolt's containerd-shim.
//!
//! The agent spawns one per capsule start. It leaves the agent's session (`setsid`), so it and
//! its capsule outlive an agent crash, and it is the capsule's parent: it holds the capsule's
//! stdio (pipes, or a pty with `-t`), copies the output into the rotated log, serves attach
//! clients on `DIR/attach.sock`, reaps the capsule and records how it ended.
//!
//! It keeps the file formats of [`bolt_capsule::runtime::supervisor`] (`pid.json`,
//! `exit.json`, `log`, `log.1`, ...), so [`adopt`](bolt_capsule::runtime::adopt) and
//! [`read_logs`](bolt_capsule::runtime::supervisor::read_logs) work on its directory. It does
//! not call `supervise()` itself because that one keeps stdin on `/dev/null`, has no pty and
//! no way to tell the agent that the capsule started: this loop adds those and nothing else.
//!
//! Files in `DIR` (see also docs/runtime.md):
//!
//! | file | written by | what |
//! |---|---|---|
//! | `config.json` | agent | [`SupervisorConfig`]: what to run |
//! | `pid.json` | supervisor | the capsule's host pid, its start time, the supervisor's pid |
//! | `exit.json` | supervisor | exit status or start error, written last |
//! | `log`, `log.N` | supervisor | output as JSON lines, rotated by size |
//! | `attach.sock` | supervisor | attach clients (framed stdio, see [`frame`](crate::wire::frame)) |
//! | `supervisor.log` | supervisor's stderr | its own errors |
//! | `layer/{upper,work}/`, `rootfs/` | agent, runtime | the overlay's writable layer (a btrfs subvolume on btrfs) and mount point |
//!
//! The agent reads one JSON line ([`Report`]) from the supervisor's stdout when the capsule
//! started (or failed to), and a second one when it ended; then stdout is closed. After an
//! agent restart there is no pipe: the agent watches the supervisor's pid instead.

pub mod mounts;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bolt_capsule::runtime::supervisor::{files, proc_stat, ExitRecord, PidRecord};
use bolt_capsule::runtime::{
    CapsuleSpec, ExitStatus, NetworkMode, Resources, Rootfs, Runtime, Stdio, StdioSlot, User,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::wire::frame;

/// `config.json`: what the supervisor runs.
pub const CONFIG: &str = "config.json";
/// The attach socket.
pub const ATTACH_SOCK: &str = "attach.sock";
/// The supervisor's own stderr.
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// How long a supervisor that keeps output for its first attach client waits for one after
/// the capsule ended.
const LINGER: Duration = Duration::from_secs(10);
/// How long output may stay open after the capsule's first process ended (only a process
/// outside its pid namespace could hold it).
const DRAIN: Duration = Duration::from_secs(2);
/// Output kept for the first attach client; older output is dropped past this.
const FIRST_ATTACH_BUFFER: usize = 4 << 20;
/// Output queued for one slow client before it is dropped.
const CLIENT_BUFFER: usize = 8 << 20;
/// Longest line kept whole in the log; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// One step of the supervisor that failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("leave the agent's session: {0}")]
    Setsid(nix::Error),
    #[error("poll: {0}")]
    Poll(nix::Error),
    #[error(transparent)]
    Runtime(#[from] bolt_capsule::runtime::RuntimeError),
    #[error("open a pty: {0}")]
    Pty(nix::Error),
    #[error(transparent)]
    Log(#[from] bolt_capsule::runtime::supervisor::SupervisorError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.to_path_buf();
    move |source| SupervisorError::Io { what, path, source }
}

/// What the supervisor runs: everything the runtime spec needs, resolved by the agent (image
/// layers, command, environment, user ids, limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorConfig {
    /// Capsule id (names the cgroup).
    pub id: String,
    /// Unpacked image layers, base first.
    pub lower: Vec<PathBuf>,
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the capsule.
    pub workdir: String,
    /// uid of the process.
    pub uid: u32,
    /// gid of the process.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// Hostname (default: the first 12 characters of the id).
    pub hostname: Option<String>,
    /// `none` or `host`.
    pub network: String,
    /// Memory limit, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU quota, millicpus.
    pub cpu_millis: Option<u32>,
    /// Process limit.
    pub pids_limit: Option<u32>,
    /// Give the capsule a pty as stdin, stdout and stderr.
    pub tty: bool,
    /// Keep stdin open for attach clients (`-i`); otherwise it is `/dev/null`.
    pub stdin: bool,
    /// Keep the output for the first attach client (a foreground `bolt run`), and wait a while
    /// for it after the capsule ended.
    pub attach_wait: bool,
    /// Rotate `log` past this size.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
    /// The network namespace to join (a bridge network's, prepared by the agent).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Volumes, binds, tmpfs and the per-capsule `/etc` files.
    #[serde(default)]
    pub mounts: Vec<crate::shim::mounts::MountConfig>,
    /// Host devices granted (`--device`), resolved by the agent.
    #[serde(default)]
    pub devices: Vec<bolt_capsule::runtime::devices::Device>,
}

impl SupervisorConfig {
    /// The runtime spec, with the overlay's writable parts in `dir`: `dir/layer/{upper,work}`
    /// (the storage library's per-capsule layer, a btrfs subvolume on btrfs) when the agent made
    /// one, else `dir/{upper,work}` (capsules created before layers).
    pub fn runtime_spec(&self, dir: &Path) -> CapsuleSpec {
        let rootfs = if dir.join(bolt_capsule::storage::layer::LAYER_DIR).is_dir() {
            bolt_capsule::storage::layer::capsule_rootfs(dir, self.lower.clone())
        } else {
            Rootfs::in_dir(self.lower.clone(), dir)
        };
        let mut spec = CapsuleSpec::new(self.id.clone(), rootfs, self.args.clone());
        spec.env = self.env.clone();
        spec.workdir = self.workdir.clone();
        spec.user = User {
            uid: self.uid,
            gid: self.gid,
        };
        spec.additional_gids = self.additional_gids.clone();
        spec.hostname = self.hostname.clone();
        spec.network = match (&self.netns, self.network.as_str()) {
            (Some(path), _) => NetworkMode::Join(path.clone()),
            (None, "host") => NetworkMode::Host,
            _ => NetworkMode::None,
        };
        spec.mounts = self.mounts.iter().filter_map(|m| m.to_mount()).collect();
        spec.devices = self.devices.clone();
        spec.resources = Resources {
            memory_bytes: self.memory_bytes,
            cpu_millis: self.cpu_millis,
            cpu_weight: None,
            pids_limit: self.pids_limit,
        };
        spec
    }

    /// Reads `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<SupervisorConfig, SupervisorError> {
        let path = dir.join(CONFIG);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| SupervisorError::Config { path, source })
    }

    /// Writes `DIR/config.json` atomically.
    pub fn store(&self, dir: &Path) -> Result<(), SupervisorError> {
        let path = dir.join(CONFIG);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| SupervisorError::Config {
            path: path.clone(),
            source,
        })?;
        replace_file(&path, &bytes)
    }
}

/// Replaces `path` atomically (temporary file, rename) without an fsync: the files of a capsule
/// directory must survive a crash of the agent or the supervisor, not of the host (which ends
/// the capsule too), and a start should not wait for the disk.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), SupervisorError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// A line the supervisor writes on its stdout for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// The capsule runs.
    Started {
        /// Its host pid.
        pid: i32,
        /// The supervisor's pid.
        supervisor_pid: i32,
    },
    /// It could not be started (also in `exit.json`).
    Failed {
        /// One line.
        error: String,
        /// 125, 126 or 127.
        exit_code: i32,
    },
    /// It ended (`exit.json` is written).
    Exited {
        /// The shell-style exit code.
        exit_code: i32,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `bolt supervise DIR`: leave the agent's session, run the capsule described by
/// `DIR/config.json`, and return the exit code the process should end with.
pub fn main(dir: &Path) -> i32 {
    // A process started by the agent is not a group leader, so this cannot fail with EPERM.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("bolt supervise: {}", SupervisorError::Setsid(e));
    }
    match run(dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bolt supervise {}: {e}", dir.display());
            125
        }
    }
}

fn report(r: &Report) {
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        // The agent may be gone (the pipe is broken): nothing to do then.
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}

/// Closes the report pipe: fd 1 becomes `/dev/null`.
fn close_reports() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn write_exit(dir: &Path, record: &ExitRecord) -> Result<(), SupervisorError> {
    let path = dir.join(files::EXIT);
    let bytes = serde_json::to_vec(record).map_err(|source| SupervisorError::Config {
        path: path.clone(),
        source,
    })?;
    replace_file(&path, &bytes)
}

fn run(dir: &Path) -> Result<i32, SupervisorError> {
    let cfg = SupervisorConfig::load(dir)?;
    let spec = cfg.runtime_spec(dir);

    let sock_path = dir.join(ATTACH_SOCK);
    let _ = fs::remove_file(&sock_path);
    // A socket path must fit in 108 bytes: bind it relative to the capsule's directory.
    std::env::set_current_dir(dir).map_err(io_err("enter", dir))?;
    let listener = UnixListener::bind(ATTACH_SOCK).map_err(io_err("bind", &sock_path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("configure", &sock_path))?;

    let (stdio, outputs, stdin_w) = stdio_for(&cfg)?;
    let started = Runtime::for_this_user().and_then(|rt| rt.spawn(&spec, stdio));
    let mut capsule = match started {
        Ok(c) => c,
        Err(e) => {
            let record = ExitRecord {
                status: None,
                error: Some(e.to_string()),
                exit_code: e.exit_code(),
                finished_at_ms: now_ms(),
            };
            let _ = fs::remove_file(&sock_path);
            write_exit(dir, &record)?;
            report(&Report::Failed {
                error: e.to_string(),
                exit_code: e.exit_code(),
            });
            close_reports();
            return Ok(e.exit_code());
        }
    };
    let pid = capsule.pid();
    let record = PidRecord {
        pid,
        start_time: proc_stat(pid).map_or(0, |(_, t)| t),
        supervisor_pid: std::process::id() as i32,
    };
    let pid_path = dir.join(files::PID);
    let bytes = serde_json::to_vec(&record).map_err(|source| SupervisorError::Config {
        path: pid_path.clone(),
        source,
    })?;
    replace_file(&pid_path, &bytes)?;
    report(&Report::Started {
        pid,
        supervisor_pid: record.supervisor_pid,
    });

    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let log = CapsuleLog::open(dir.join(files::LOG), cfg.log_max_bytes, cfg.log_keep)?;
    let mut lp = Loop {
        listener,
        clients: Vec::new(),
        outputs,
        stdin: stdin_w.map(|fd| Input {
            fd,
            pending: Vec::new(),
            eof: false,
        }),
        log,
        first: cfg.attach_wait.then(FirstBuffer::default),
        attached_ever: false,
        tty: cfg.tty,
    };
    lp.serve_until_exit(pidfd.as_ref())?;

    let status = capsule.wait()?;
    let destroyed = capsule.destroy();
    let record = ExitRecord {
        status: Some(status),
        error: None,
        exit_code: status.exit_code(),
        finished_at_ms: now_ms(),
    };
    write_exit(dir, &record)?;
    report(&Report::Exited {
        exit_code: status.exit_code(),
    });
    close_reports();
    if let Err(e) = destroyed {
        eprintln!("bolt supervise: remove the capsule's cgroup: {e}");
    }
    lp.finish(&record, cfg.attach_wait);
    let _ = fs::remove_file(&sock_path);
    Ok(exit_code_of(status))
}

fn exit_code_of(status: ExitStatus) -> i32 {
    status.exit_code()
}

/// The capsule's stdio: what the runtime gets, the output fds we read, stdin's write end.
fn stdio_for(
    cfg: &SupervisorConfig,
) -> Result<(Stdio, Vec<Output>, Option<OwnedFd>), SupervisorError> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SupervisorError::Io {
            what: "create",
            path: PathBuf::from("pipe"),
            source: e.into(),
        })
    };
    if cfg.tty {
        let pty = nix::pty::openpty(None, None).map_err(SupervisorError::Pty)?;
        let master = pty.master;
        set_cloexec(&master);
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| SupervisorError::Io {
                what: "duplicate",
                path: PathBuf::from("pty"),
                source,
            })
        };
        let stdio = Stdio {
            stdin: StdioSlot::Fd(dup(&slave)?),
            stdout: StdioSlot::Fd(dup(&slave)?),
            stderr: StdioSlot::Fd(slave),
            terminal: true,
        };
        let writer = dup(&master)?;
        set_nonblocking(&writer);
        set_nonblocking(&master);
        let out = Output::new("stdout", super_frame_kind("stdout"), master);
        return Ok((stdio, vec![out], cfg.stdin.then_some(writer)));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_slot, stdin_w) = if cfg.stdin {
        let (r, w) = pipe()?;
        set_nonblocking(&w);
        (StdioSlot::Fd(r), Some(w))
    } else {
        (StdioSlot::Null, None)
    };
    set_nonblocking(&out_r);
    set_nonblocking(&err_r);
    let stdio = Stdio {
        stdin: stdin_slot,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    Ok((
        stdio,
        vec![
            Output::new("stdout", frame::STDOUT, out_r),
            Output::new("stderr", frame::STDERR, err_r),
        ],
        stdin_w,
    ))
}

fn super_frame_kind(stream: &str) -> u8 {
    if stream == "stderr" {
        frame::STDERR
    } else {
        frame::STDOUT
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

fn set_cloexec(fd: &OwnedFd) {
    let _ = fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// One output stream of the capsule.
struct Output {
    name: &'static str,
    kind: u8,
    file: File,
    line: Vec<u8>,
    open: bool,
}

impl Output {
    fn new(name: &'static str, kind: u8, fd: OwnedFd) -> Self {
        Self {
            name,
            kind,
            file: File::from(fd),
            line: Vec::new(),
            open: true,
        }
    }
}

/// stdin's write end (a pipe, or the pty master), with what is not written yet.
struct Input {
    fd: OwnedFd,
    pending: Vec<u8>,
    eof: bool,
}

/// One attach client.
struct Client {
    stream: UnixStream,
    decoder: frame::Decoder,
    out: VecDeque<u8>,
    gone: bool,
}

/// Output kept for the first attach client.
#[derive(Default)]
struct FirstBuffer {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl FirstBuffer {
    fn push(&mut self, f: Vec<u8>) {
        self.bytes += f.len();
        self.frames.push_back(f);
        while self.bytes > FIRST_ATTACH_BUFFER {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

struct Loop {
    listener: UnixListener,
    clients: Vec<Client>,
    outputs: Vec<Output>,
    stdin: Option<Input>,
    log: CapsuleLog,
    first: Option<FirstBuffer>,
    attached_ever: bool,
    tty: bool,
}

/// What one poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Pidfd,
    Output(usize),
    Stdin,
    Client(usize),
}

impl Loop {
    /// Serves output, stdin and clients until the capsule's first process ended and its output
    /// is drained.
    fn serve_until_exit(&mut self, pidfd: Option<&OwnedFd>) -> Result<(), SupervisorError> {
        let mut exited_at: Option<Instant> = None;
        loop {
            let outputs_open = self.outputs.iter().any(|o| o.open);
            if !outputs_open && (exited_at.is_some() || pidfd.is_none()) {
                return Ok(());
            }
            if let Some(t) = exited_at {
                if t.elapsed() > DRAIN {
                    // Someone outside the capsule holds its output open; stop waiting.
                    for o in &mut self.outputs {
                        o.open = false;
                    }
                    return Ok(());
                }
            }
            let timeout = if exited_at.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            let watch_pidfd = if exited_at.is_none() { pidfd } else { None };
            self.poll_once(watch_pidfd, timeout, &mut exited_at)?;
        }
    }

    fn poll_once(
        &mut self,
        pidfd: Option<&OwnedFd>,
        timeout: PollTimeout,
        exited_at: &mut Option<Instant>,
    ) -> Result<(), SupervisorError> {
        let mut slots = Vec::new();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        slots.push(Slot::Listener);
        if let Some(p) = pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Pidfd);
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if o.open {
                fds.push(PollFd::new(o.file.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(i));
            }
        }
        if let Some(s) = &self.stdin {
            if !s.pending.is_empty() {
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLOUT));
                slots.push(Slot::Stdin);
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::POLLIN;
            if !c.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), flags));
            slots.push(Slot::Client(i));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(SupervisorError::Poll(e)),
        }
        let ready: Vec<(Slot, PollFlags)> = slots
            .iter()
            .zip(fds.iter())
            .filter_map(|(s, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (*s, r)))
            .collect();
        drop(fds);
        for (slot, revents) in ready {
            match slot {
                Slot::Listener => self.accept(),
                Slot::Pidfd => *exited_at = Some(Instant::now()),
                Slot::Output(i) => self.read_output(i)?,
                Slot::Stdin => self.flush_stdin(),
                Slot::Client(i) => {
                    if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                        self.read_client(i);
                    }
                    if revents.contains(PollFlags::POLLOUT) {
                        self.flush_client(i);
                    }
                    if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                        if let Some(c) = self.clients.get_mut(i) {
                            c.gone = true;
                        }
                    }
                }
            }
        }
        self.clients.retain(|c| !c.gone);
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut client = Client {
                        stream,
                        decoder: frame::Decoder::default(),
                        out: VecDeque::new(),
                        gone: false,
                    };
                    if let Some(first) = self.first.take() {
                        for f in first.frames {
                            client.out.extend(f);
                        }
                    }
                    self.attached_ever = true;
                    self.clients.push(client);
                    let i = self.clients.len() - 1;
                    self.flush_client(i);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn broadcast(&mut self, f: Vec<u8>) {
        if let Some(first) = &mut self.first {
            first.push(f.clone());
        }
        for i in 0..self.clients.len() {
            if let Some(c) = self.clients.get_mut(i) {
                if c.out.len() + f.len() > CLIENT_BUFFER {
                    c.gone = true;
                    continue;
                }
                c.out.extend(f.iter().copied());
            }
            self.flush_client(i);
        }
    }

    fn read_output(&mut self, i: usize) -> Result<(), SupervisorError> {
        let mut chunk = [0u8; 16384];
        let Some(o) = self.outputs.get_mut(i) else {
            return Ok(());
        };
        let n = match o.file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
                return Ok(())
            }
            // A pty master reads EIO once every slave fd is closed: that is its end.
            Err(_) => 0,
        };
        if n == 0 {
            o.open = false;
            if !o.line.is_empty() {
                let line = std::mem::take(&mut o.line);
                let name = o.name;
                self.log.line(name, &line, self.tty)?;
            }
            return Ok(());
        }
        let data = chunk.get(..n).unwrap_or_default();
        let (name, kind) = (o.name, o.kind);
        o.line.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = o.line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = o.line.drain(..=pos).collect();
            lines.push(line);
        }
        if o.line.len() > MAX_LINE {
            lines.push(std::mem::take(&mut o.line));
        }
        for mut l in lines {
            if l.last() == Some(&b'\n') {
                l.pop();
            }
            self.log.line(name, &l, self.tty)?;
        }
        self.broadcast(frame::encode(kind, data));
        Ok(())
    }

    fn read_client(&mut self, i: usize) {
        let mut chunk = [0u8; 16384];
        let mut frames = Vec::new();
        if let Some(c) = self.clients.get_mut(i) {
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        c.gone = true;
                        break;
                    }
                    Ok(n) => c.decoder.push(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.gone = true;
                        break;
                    }
                }
            }
            loop {
                match c.decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => {
                        c.gone = true;
                        break;
                    }
                }
            }
        }
        for (kind, payload) in frames {
            self.client_frame(kind, &payload);
        }
    }

    fn client_frame(&mut self, kind: u8, payload: &[u8]) {
        match kind {
            frame::STDIN => {
                if let Some(s) = &mut self.stdin {
                    if !s.eof {
                        s.pending.extend_from_slice(payload);
                    }
                }
                self.flush_stdin();
            }
            frame::STDIN_EOF => {
                if let Some(s) = &mut self.stdin {
                    s.eof = true;
                }
                self.flush_stdin();
            }
            frame::RESIZE => {
                if let (Some((rows, cols)), Some(o)) =
                    (frame::parse_resize(payload), self.outputs.first())
                {
                    if self.tty {
                        let ws = rustix::termios::Winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(o.file.as_fd(), ws);
                    }
                }
            }
            _ => {}
        }
    }

    fn flush_stdin(&mut self) {
        let Some(s) = &mut self.stdin else {
            return;
        };
        while !s.pending.is_empty() {
            match nix::unistd::write(s.fd.as_fd(), &s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    s.pending.clear();
                    s.eof = true;
                }
            }
        }
        if s.eof {
            if self.tty {
                // A pty has one fd for both ways: send the terminal's end-of-file instead.
                let _ = nix::unistd::write(s.fd.as_fd(), &[4u8]);
            }
            self.stdin = None;
        }
    }

    fn flush_client(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            match c.stream.write(a) {
                Ok(0) => {
                    c.gone = true;
                    return;
                }
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.gone = true;
                    return;
                }
            }
        }
    }

    /// Tells attached clients how the capsule ended and flushes what they still lack. With
    /// `attach_wait` and no client yet, waits up to [`LINGER`] for the first one.
    fn finish(&mut self, record: &ExitRecord, attach_wait: bool) {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        let exit = frame::encode(frame::EXIT, &payload);
        self.broadcast(exit.clone());
        let deadline = Instant::now() + LINGER;
        loop {
            let waiting_first = attach_wait && !self.attached_ever;
            let unsent = self.clients.iter().any(|c| !c.out.is_empty());
            if (!waiting_first && !unsent) || Instant::now() >= deadline {
                return;
            }
            let mut fds: Vec<PollFd<'_>> =
                vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            for c in &self.clients {
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLOUT));
            }
            if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
                continue;
            }
            drop(fds);
            self.accept();
            for i in 0..self.clients.len() {
                self.flush_client(i);
            }
            self.clients.retain(|c| !c.gone);
        }
    }
}

/// The capsule crate's log writer; a terminal's lines lose their trailing `\r` first.
struct CapsuleLog(bolt_capsule::runtime::supervisor::RotatingLog);

impl CapsuleLog {
    fn open(path: PathBuf, max: u64, keep: usize) -> Result<Self, SupervisorError> {
        let opts = bolt_capsule::runtime::supervisor::SuperviseOptions {
            log_max_bytes: max.max(1),
            log_keep: keep,
        };
        Ok(Self(bolt_capsule::runtime::supervisor::RotatingLog::open(
            path, opts,
        )?))
    }

    fn line(&mut self, stream: &str, bytes: &[u8], tty: bool) -> Result<(), SupervisorError> {
        let bytes = if tty {
            bytes.strip_suffix(b"\r").unwrap_or(bytes)
        } else {
            bytes
        };
        Ok(self.0.line(stream, bytes)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_split_reads() {
        let mut bytes = frame::encode(frame::STDOUT, b"hello");
        bytes.extend(frame::encode(frame::RESIZE, &frame::resize(24, 80)));
        bytes.extend(frame::encode(frame::STDIN_EOF, b""));
        let mut d = frame::Decoder::default();
        let mut got = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (frame::STDOUT, b"hello".to_vec()));
        assert_eq!(frame::parse_resize(&got[1].1), Some((24, 80)));
        assert_eq!(got[2], (frame::STDIN_EOF, Vec::new()));
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut d = frame::Decoder::default();
        d.push(&[frame::STDIN]);
        d.push(&(u32::MAX).to_le_bytes());
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn the_first_attach_buffer_drops_the_oldest_output() {
        let mut b = FirstBuffer::default();
        for i in 0..5u8 {
            b.push(vec![i; FIRST_ATTACH_BUFFER / 2]);
        }
        assert!(b.bytes <= FIRST_ATTACH_BUFFER);
        assert_eq!(b.frames.back().map(|f| f[0]), Some(4));
        assert_eq!(b.frames.len(), 2);
    }

    #[test]
    fn log_rotates_and_reads_back_with_the_capsule_crate() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CapsuleLog::open(dir.path().join(files::LOG), 300, 2).unwrap();
        for i in 0..30 {
            log.line("stdout", format!("line {i}\r").as_bytes(), true)
                .unwrap();
        }
        assert!(dir.path().join("log.1").exists());
        assert!(!dir.path().join("log.3").exists());
        let lines = bolt_capsule::runtime::supervisor::read_logs(dir.path()).unwrap();
        assert_eq!(lines.last().map(|l| l.line.as_str()), Some("line 29"));
        assert!(lines.len() < 30);
    }

    #[test]
    fn config_round_trips_and_maps_to_the_runtime_spec() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SupervisorConfig {
            id: "abc".into(),
            lower: vec!["/l/base".into()],
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            workdir: "/w".into(),
            uid: 7,
            gid: 8,
            additional_gids: vec![9],
            hostname: Some("h".into()),
            network: "host".into(),
            memory_bytes: Some(1 << 20),
            cpu_millis: Some(500),
            pids_limit: Some(10),
            tty: false,
            stdin: true,
            attach_wait: false,
            log_max_bytes: 1000,
            log_keep: 1,
            netns: None,
            mounts: Vec::new(),
            devices: vec![bolt_capsule::runtime::devices::Device {
                host: "/dev/vda".into(),
                path: "/dev/xvda".into(),
                kind: bolt_capsule::runtime::devices::DeviceKind::Block,
                major: 254,
                minor: 0,
                mode: 0o660,
                access: 2,
            }],
        };
        cfg.store(dir.path()).unwrap();
        assert_eq!(SupervisorConfig::load(dir.path()).unwrap(), cfg);
        let spec = cfg.runtime_spec(dir.path());
        assert_eq!(spec.network, NetworkMode::Host);
        assert_eq!(spec.user, User { uid: 7, gid: 8 });
        assert_eq!(spec.resources.memory_bytes, Some(1 << 20));
        assert_eq!(spec.devices, cfg.devices);
        assert_eq!(spec.rootfs.upper, dir.path().join("upper"));
        assert!(spec.validate().is_ok());
        // With a layer directory (made by the agent since layers), the overlay lives there.
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        let spec = cfg.runtime_spec(dir.path());
        assert_eq!(spec.rootfs.upper, dir.path().join("layer/upper"));
        assert_eq!(spec.rootfs.work, dir.path().join("layer/work"));
        assert_eq!(spec.rootfs.target, dir.path().join("rootfs"));
    }
}
