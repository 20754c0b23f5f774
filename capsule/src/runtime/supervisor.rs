//! The per-capsule supervisor's core (Bolt's containerd-shim).
//!
//! A `bolt` subcommand runs [`supervise`] in its own (double-forked, `setsid`) process: it is the
//! capsule's parent, holds its stdio and collects its exit status, so the capsule outlives an
//! agent crash. Everything it knows goes to files in the state directory, each replaced
//! atomically (write to a temporary file, fsync, rename):
//!
//! - `pid.json`: the capsule's host pid, its start time (from `/proc/<pid>/stat`, against pid
//!   reuse) and the supervisor's pid, written once the capsule runs;
//! - `log`, `log.1`, ...: stdout and stderr as JSON lines, rotated by size;
//! - `exit.json`: the exit status (code, signal, OOM flag) or the start error, written last.
//!
//! A restarted agent calls [`adopt`] to learn, from those files and a liveness check, whether
//! the capsule still runs, has exited (and how), or was lost.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use super::{CapsuleSpec, ExitStatus, Runtime, RuntimeError, Stdio, StdioSlot};

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The capsule could not be started (also recorded in `exit.json`).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A state file could not be written or read.
    #[error("{what} {path}: {source}")]
    State {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something else than expected.
    #[error("parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Log rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperviseOptions {
    /// Rotate `log` once it exceeds this size.
    pub log_max_bytes: u64,
    /// How many rotated files to keep (`log.1` .. `log.N`).
    pub log_keep: usize,
}

impl Default for SuperviseOptions {
    fn default() -> Self {
        Self {
            log_max_bytes: 10 << 20,
            log_keep: 3,
        }
    }
}

/// `pid.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The capsule's first process, host pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// The supervisor's pid.
    pub supervisor_pid: i32,
}

/// `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// How the capsule ended; `None` when it never started.
    pub status: Option<ExitStatus>,
    /// The start error, when it never started.
    pub error: Option<String>,
    /// The exit code a CLI reports (the capsule's, or 125/126/127 for start errors).
    pub exit_code: i32,
    /// Wall clock, milliseconds since the epoch.
    pub finished_at_ms: u64,
}

/// One line of `log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Wall clock, milliseconds since the epoch.
    pub time_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
}

/// What [`adopt`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// No `pid.json` and no `exit.json`: the supervisor has not started the capsule (yet).
    NotStarted,
    /// The capsule runs.
    Running {
        /// The pid record.
        record: PidRecord,
        /// Whether the supervisor still runs (if not, nobody will write `exit.json`).
        supervisor_alive: bool,
    },
    /// The capsule ended and the supervisor recorded how.
    Exited(ExitRecord),
    /// The capsule is gone but no exit was recorded (the supervisor died too).
    Lost(PidRecord),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn state_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.to_owned();
    move |source| SupervisorError::State { what, path, source }
}

/// Writes `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SupervisorError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(state_err("create", &tmp))?;
    f.write_all(bytes).map_err(state_err("write", &tmp))?;
    f.sync_all().map_err(state_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(state_err("rename", path))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SupervisorError> {
    let bytes = serde_json::to_vec(value).map_err(|source| SupervisorError::Parse {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, SupervisorError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| SupervisorError::Parse {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err("read", path)(e)),
    }
}

/// `(state, start time)` of a live process, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn alive(pid: i32, start_time: Option<u64>) -> bool {
    match proc_stat(pid) {
        Some((state, start)) => state != 'Z' && start_time.is_none_or(|t| t == start),
        None => false,
    }
}

/// File names in the state directory.
pub mod files {
    /// The pid record.
    pub const PID: &str = "pid.json";
    /// The exit record.
    pub const EXIT: &str = "exit.json";
    /// The current log.
    pub const LOG: &str = "log";
}

/// Reads the state directory of a supervised capsule and checks liveness.
pub fn adopt(state_dir: &Path) -> Result<Adopted, SupervisorError> {
    if let Some(exit) = read_json::<ExitRecord>(&state_dir.join(files::EXIT))? {
        return Ok(Adopted::Exited(exit));
    }
    let Some(record) = read_json::<PidRecord>(&state_dir.join(files::PID))? else {
        return Ok(Adopted::NotStarted);
    };
    if alive(record.pid, Some(record.start_time)) {
        return Ok(Adopted::Running {
            record,
            supervisor_alive: alive(record.supervisor_pid, None),
        });
    }
    // It may have exited just now: the supervisor writes exit.json right after.
    if let Some(exit) = read_json::<ExitRecord>(&state_dir.join(files::EXIT))? {
        return Ok(Adopted::Exited(exit));
    }
    Ok(Adopted::Lost(record))
}

/// Starts `spec` with a detected runtime and default log rotation, and supervises it until it
/// exits. See [`supervise_with`].
pub fn supervise(spec: &CapsuleSpec, state_dir: &Path) -> Result<ExitStatus, SupervisorError> {
    let runtime = Runtime::new()?;
    supervise_with(&runtime, spec, state_dir, &SuperviseOptions::default())
}

/// The supervisor: starts the capsule with stdin on `/dev/null` and stdout/stderr on pipes,
/// writes `pid.json`, copies output to the rotated log, waits, writes `exit.json`, removes the
/// capsule's cgroup. A start failure is recorded in `exit.json` too (with 125/126/127).
pub fn supervise_with(
    runtime: &Runtime,
    spec: &CapsuleSpec,
    state_dir: &Path,
    opts: &SuperviseOptions,
) -> Result<ExitStatus, SupervisorError> {
    fs::create_dir_all(state_dir).map_err(state_err("create", state_dir))?;
    let (out_r, out_w) = super::pipe()?;
    let (err_r, err_w) = super::pipe()?;
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    let mut capsule = match runtime.spawn(spec, stdio) {
        Ok(c) => c,
        Err(e) => {
            write_json(
                &state_dir.join(files::EXIT),
                &ExitRecord {
                    status: None,
                    error: Some(e.to_string()),
                    exit_code: e.exit_code(),
                    finished_at_ms: now_ms(),
                },
            )?;
            return Err(e.into());
        }
    };
    let start_time = proc_stat(capsule.pid()).map_or(0, |(_, t)| t);
    write_json(
        &state_dir.join(files::PID),
        &PidRecord {
            pid: capsule.pid(),
            start_time,
            supervisor_pid: std::process::id() as i32,
        },
    )?;
    let mut log = RotatingLog::open(state_dir.join(files::LOG), *opts)?;
    pump(out_r, err_r, &mut log)?;
    let status = capsule.wait()?;
    let removed = capsule.destroy();
    write_json(
        &state_dir.join(files::EXIT),
        &ExitRecord {
            status: Some(status),
            error: None,
            exit_code: status.exit_code(),
            finished_at_ms: now_ms(),
        },
    )?;
    removed?;
    Ok(status)
}

/// Copies both pipes line by line into the log until both close (the capsule's pid namespace
/// is gone, or every holder closed them).
fn pump(out: OwnedFd, err: OwnedFd, log: &mut RotatingLog) -> Result<(), SupervisorError> {
    let mut streams = [
        Stream::new("stdout", File::from(out)),
        Stream::new("stderr", File::from(err)),
    ];
    loop {
        let open: Vec<usize> = (0..streams.len()).filter(|i| streams[*i].open).collect();
        if open.is_empty() {
            return Ok(());
        }
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|i| PollFd::new(streams[*i].file.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(state_err("poll", Path::new("pipes"))(e.into())),
        }
        let ready: Vec<usize> = open
            .iter()
            .zip(fds.iter())
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| *i)
            .collect();
        drop(fds);
        for i in ready {
            streams[i].read_into(log)?;
        }
    }
}

/// Longest line kept whole; longer output is split.
const MAX_LINE: usize = 16 * 1024;

struct Stream {
    name: &'static str,
    file: File,
    buf: Vec<u8>,
    open: bool,
}

impl Stream {
    fn new(name: &'static str, file: File) -> Self {
        Self {
            name,
            file,
            buf: Vec::new(),
            open: true,
        }
    }

    fn read_into(&mut self, log: &mut RotatingLog) -> Result<(), SupervisorError> {
        let mut chunk = [0u8; 8192];
        let n = match self.file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(state_err("read", Path::new(self.name))(e)),
        };
        if n == 0 {
            self.open = false;
            if !self.buf.is_empty() {
                let line = std::mem::take(&mut self.buf);
                log.line(self.name, &line)?;
            }
            return Ok(());
        }
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            log.line(self.name, line.get(..pos).unwrap_or_default())?;
        }
        if self.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut self.buf);
            log.line(self.name, &line)?;
        }
        Ok(())
    }
}

/// `log` plus `log.1`..`log.N`, rotated when `log` exceeds the size limit; one JSON
/// [`LogLine`] per line. The agent's supervisor writes its logs with it too.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    opts: SuperviseOptions,
}

impl RotatingLog {
    /// Opens (appends to) the log at `path`.
    pub fn open(path: PathBuf, opts: SuperviseOptions) -> Result<Self, SupervisorError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(state_err("open", &path))?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(Self {
            path,
            file,
            size,
            opts,
        })
    }

    /// Appends one line of `stream` (without its newline), rotating when the log is full.
    pub fn line(&mut self, stream: &str, bytes: &[u8]) -> Result<(), SupervisorError> {
        let entry = LogLine {
            time_ms: now_ms(),
            stream: stream.to_owned(),
            line: String::from_utf8_lossy(bytes).into_owned(),
        };
        let mut text = serde_json::to_vec(&entry).map_err(|source| SupervisorError::Parse {
            path: self.path.clone(),
            source,
        })?;
        text.push(b'\n');
        self.file
            .write_all(&text)
            .map_err(state_err("write", &self.path))?;
        self.size += text.len() as u64;
        if self.size > self.opts.log_max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<(), SupervisorError> {
        if self.opts.log_keep == 0 {
            self.file
                .set_len(0)
                .map_err(state_err("truncate", &self.path))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.opts.log_keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                let to = self.rotated(n + 1);
                fs::rename(&from, &to).map_err(state_err("rotate", &from))?;
            }
        }
        let first = self.rotated(1);
        fs::rename(&self.path, &first).map_err(state_err("rotate", &self.path))?;
        *self = Self::open(self.path.clone(), self.opts)?;
        Ok(())
    }
}

/// Reads the log lines of a state directory, oldest first (rotated files included).
pub fn read_logs(state_dir: &Path) -> Result<Vec<LogLine>, SupervisorError> {
    let base = state_dir.join(files::LOG);
    let mut paths = Vec::new();
    for n in (1..=64).rev() {
        let mut name = base.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let p = PathBuf::from(name);
        if p.exists() {
            paths.push(p);
        }
    }
    paths.push(base);
    let mut out = Vec::new();
    for p in paths {
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(state_err("read", &p)(e)),
        };
        for l in text.lines() {
            if let Ok(line) = serde_json::from_str(l) {
                out.push(line);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn log_rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SuperviseOptions {
            log_max_bytes: 200,
            log_keep: 2,
        };
        let mut log = RotatingLog::open(dir.path().join(files::LOG), opts).unwrap();
        for i in 0..20 {
            log.line("stdout", format!("line {i}").as_bytes()).unwrap();
        }
        assert!(dir.path().join("log.1").exists());
        assert!(dir.path().join("log.2").exists());
        assert!(!dir.path().join("log.3").exists());
        let lines = read_logs(dir.path()).unwrap();
        let nums: Vec<u32> = lines
            .iter()
            .map(|l| l.line.trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert_eq!(nums.last(), Some(&19));
        assert!(nums.len() < 20, "old lines were rotated away");
    }

    #[test]
    fn adopt_reads_the_state_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(adopt(dir.path()).unwrap(), Adopted::NotStarted);
        // Our own process is a live "capsule" for the liveness check.
        let me = std::process::id() as i32;
        let (_, start) = proc_stat(me).unwrap();
        let record = PidRecord {
            pid: me,
            start_time: start,
            supervisor_pid: me,
        };
        write_json(&dir.path().join(files::PID), &record).unwrap();
        assert_eq!(
            adopt(dir.path()).unwrap(),
            Adopted::Running {
                record,
                supervisor_alive: true
            }
        );
        // A recycled pid (other start time) is not our capsule.
        let stale = PidRecord {
            start_time: start + 1,
            ..record
        };
        write_json(&dir.path().join(files::PID), &stale).unwrap();
        assert_eq!(adopt(dir.path()).unwrap(), Adopted::Lost(stale));
        let exit = ExitRecord {
            status: Some(ExitStatus {
                code: Some(3),
                signal: None,
                oom_killed: false,
            }),
            error: None,
            exit_code: 3,
            finished_at_ms: 1,
        };
        write_json(&dir.path().join(files::EXIT), &exit).unwrap();
        assert_eq!(adopt(dir.path()).unwrap(), Adopted::Exited(exit));
    }
}
