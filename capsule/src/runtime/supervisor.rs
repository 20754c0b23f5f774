//! The per-capsule supervisor's records (Bolt's containerd-shim) and the reading side of them.
//!
//! The supervisor itself is the agent's `bolt supervise DIR` process (`bolt-agent`'s `shim`
//! module): it is the capsule's parent, holds its stdio and collects its exit status, so the
//! capsule outlives an agent crash. Everything it knows goes to files in the state directory,
//! in the formats defined here, each replaced atomically (a temporary file, then a rename):
//!
//! - `pid.json`: the capsule's host pid, its start time (from `/proc/<pid>/stat`, against pid
//!   reuse) and the supervisor's pid, written once the capsule runs;
//! - `log`, `log.1`, ...: stdout and stderr as JSON lines, rotated by size;
//! - `exit.json`: the exit status (code, signal, OOM flag) or the start error, written last.
//!
//! A restarted agent calls [`adopt`] to learn, from those files and a liveness check, whether
//! the capsule still runs, has exited (and how), or was lost.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExitStatus, RuntimeError};

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

/// Writes `value` as JSON to `path` with [`write_atomic`] (fsynced): how the supervisor
/// records how a capsule ended, so the record survives a host crash.
pub fn write_record<T: Serialize>(path: &Path, value: &T) -> Result<(), SupervisorError> {
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
        write_record(&dir.path().join(files::PID), &record).unwrap();
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
        write_record(&dir.path().join(files::PID), &stale).unwrap();
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
        write_record(&dir.path().join(files::EXIT), &exit).unwrap();
        assert_eq!(adopt(dir.path()).unwrap(), Adopted::Exited(exit));
    }
}
