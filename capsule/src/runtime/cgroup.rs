//! Cgroups for capsules: v2 on unified hosts, v1 on legacy and hybrid hosts (where the v1
//! controllers are mounted and cgroup2 holds none of ours), behind one trait.
//!
//! Every capsule gets `<mount>/bolt/<id>` in each v1 hierarchy it uses (memory, cpu, cpuacct,
//! pids, devices, freezer) or `<root>/bolt/<id>` on v2. A group can be frozen and thawed
//! (`freezer.state` on v1, `cgroup.freeze` on v2), as `bolt commit` does while it diffs a running
//! capsule's layer. Host mounts are only read, never changed.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::devices::{DeviceError, DeviceRule};
use super::spec::{Resources, CPU_PERIOD_US};

/// The directory under each hierarchy that Bolt owns.
pub const BOLT_PARENT: &str = "bolt";

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("read mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    /// No usable cgroup hierarchy is mounted.
    #[error("no usable cgroup hierarchy found in /proc/self/mountinfo")]
    NoHierarchy,
    /// The capsule's cgroup already exists.
    #[error("cgroup {0} already exists")]
    Exists(PathBuf),
    /// Creating a directory failed.
    #[error("create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file failed.
    #[error("write {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a control file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The group has no freezer (v1 host without the `freezer` hierarchy).
    #[error("no freezer for cgroup {0}")]
    NoFreezer(PathBuf),
    /// The group did not reach the wanted freezer state in time.
    #[error("cgroup {path} did not become {want} within {timeout:?}")]
    FreezeTimeout {
        /// The control file polled.
        path: PathBuf,
        /// The state waited for.
        want: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// The v2 device program could not be attached.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The cgroup could not be removed (processes keep it busy).
    #[error("remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup version a hierarchy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy (one hierarchy per controller), also on hybrid hosts.
    V1,
    /// Unified.
    V2,
}

/// Counters of one capsule's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupStats {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// CFS periods that elapsed with the quota enforced.
    pub cpu_periods: u64,
    /// Periods in which the group was throttled.
    pub cpu_throttled_periods: u64,
    /// Processes and threads now in the group.
    pub pids_current: u64,
    /// Processes killed by the OOM killer in this group.
    pub oom_kills: u64,
    /// Times the memory limit was hit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub memory_limit_hits: u64,
}

/// One capsule's cgroup, whatever the version.
pub trait Cgroup: std::fmt::Debug + Send + Sync {
    /// The version.
    fn version(&self) -> CgroupVersion;
    /// The directories (one per v1 hierarchy, one on v2).
    fn paths(&self) -> Vec<PathBuf>;
    /// Moves a process into the group (every hierarchy on v1).
    fn add_pid(&self, pid: i32) -> Result<(), CgroupError>;
    /// The pids in the group (host pid namespace).
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Current counters.
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// Processes killed by the OOM killer in this group (one file read, for exit paths).
    fn oom_kills(&self) -> Result<u64, CgroupError> {
        Ok(self.stats()?.oom_kills)
    }
    /// SIGKILLs every process in the group until it is empty (or `timeout` passes).
    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError>;
    /// Kills what remains and removes the group's directories.
    fn remove(&self) -> Result<(), CgroupError>;
    /// Freezes every process of the group and waits (bounded) until the kernel says it is
    /// frozen. On failure the group is thawed again (best effort).
    fn freeze(&self) -> Result<(), CgroupError>;
    /// Thaws the group and waits (bounded) until the kernel says it runs again.
    fn thaw(&self) -> Result<(), CgroupError>;
}

/// How long `freeze`/`thaw` wait for the kernel to report the new state.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a v2 `cgroup.events` text says the group is frozen (`None`: no `frozen` line).
pub fn v2_events_frozen(events: &str) -> Option<bool> {
    parse_keyed(events)
        .into_iter()
        .find(|(k, _)| k == "frozen")
        .map(|(_, v)| v == 1)
}

/// Whether a v1 `freezer.state` text is exactly `want` (`FROZEN`/`THAWED`; `FREEZING` is neither).
pub fn v1_state_is(state: &str, want: &str) -> bool {
    state.trim() == want
}

/// Polls `path` until `done` holds for its text, or `timeout` passes.
fn wait_state(
    path: &Path,
    want: &'static str,
    done: &dyn Fn(&str) -> bool,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        if done(&read_file(path)?) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(CgroupError::FreezeTimeout {
                path: path.to_owned(),
                want,
                timeout,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// The mounted cgroup hierarchies of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// v1 controllers: `(controller, mount point)`.
    V1 {
        /// Mount point of each controller Bolt uses that is mounted.
        mounts: Vec<(String, PathBuf)>,
    },
    /// The unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

/// The v1 controllers Bolt uses.
/// (`freezer` only holds the group so `bolt commit` can pause it: one more mkdir per start.)
pub const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"];

impl Hierarchy {
    /// Detects the hierarchy from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupError> {
        let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        Self::from_mountinfo(&text).ok_or(CgroupError::NoHierarchy)
    }

    /// Parses mountinfo: any v1 controller mount means v1 (hybrid hosts included, whose
    /// cgroup2 mount holds no controller Bolt needs); else the cgroup2 mount.
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4);
            let mut r = right.split(' ');
            let (fstype, _source, options) = (r.next(), r.next(), r.next());
            let Some(mount_point) = mount_point else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
            match fstype {
                Some("cgroup") => {
                    for opt in options.unwrap_or("").split(',') {
                        if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                            v1.push((opt.to_owned(), mount_point.clone()));
                        }
                    }
                }
                Some("cgroup2") if v2.is_none() => v2 = Some(mount_point),
                _ => {}
            }
        }
        if !v1.is_empty() {
            Some(Self::V1 { mounts: v1 })
        } else {
            v2.map(|root| Self::V2 { root })
        }
    }

    /// The version.
    pub fn version(&self) -> CgroupVersion {
        match self {
            Self::V1 { .. } => CgroupVersion::V1,
            Self::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// Whether device access is confined: the v1 `devices` controller, or on v2 the eBPF
    /// device program attached to every capsule's group ([`super::devices`]).
    pub fn confines_devices(&self) -> bool {
        match self {
            Self::V1 { mounts } => mounts.iter().any(|(c, _)| c == "devices"),
            Self::V2 { .. } => true,
        }
    }

    /// The group of capsule `id`, without touching the filesystem (to re-open a running
    /// capsule's group).
    pub fn open(&self, id: &str) -> Box<dyn Cgroup> {
        match self {
            Self::V1 { .. } => Box::new(self.open_v1(id)),
            Self::V2 { root } => Box::new(CgroupV2 {
                dir: root.join(BOLT_PARENT).join(id),
            }),
        }
    }

    fn open_v1(&self, id: &str) -> CgroupV1 {
        let mut dirs: Vec<(Vec<String>, PathBuf)> = Vec::new();
        if let Self::V1 { mounts } = self {
            for (ctrl, mount) in mounts {
                let dir = mount.join(BOLT_PARENT).join(id);
                match dirs.iter_mut().find(|(_, d)| *d == dir) {
                    Some((ctrls, _)) => ctrls.push(ctrl.clone()),
                    None => dirs.push((vec![ctrl.clone()], dir)),
                }
            }
        }
        CgroupV1 { dirs }
    }

    /// Creates the group of capsule `id` with the limits, allowing only the devices of
    /// `devices` (`devices.allow` on v1, an eBPF device program on v2). On failure nothing is
    /// left behind.
    pub fn create(
        &self,
        id: &str,
        res: &Resources,
        devices: &[DeviceRule],
    ) -> Result<Box<dyn Cgroup>, CgroupError> {
        let (group, writes): (Box<dyn Cgroup>, _) = match self {
            Self::V1 { .. } => {
                let g = self.open_v1(id);
                let by_controller: Vec<(String, PathBuf)> = g
                    .dirs
                    .iter()
                    .flat_map(|(cs, d)| cs.iter().map(move |c| (c.clone(), d.clone())))
                    .collect();
                let writes = v1_limit_writes(res, &by_controller, devices);
                (Box::new(g), writes)
            }
            Self::V2 { root } => {
                prepare_v2_parent(root)?;
                let dir = root.join(BOLT_PARENT).join(id);
                let writes = v2_limit_writes(res, std::slice::from_ref(&dir));
                (Box::new(CgroupV2 { dir }), writes)
            }
        };
        create_dirs(&group.paths())?;
        for (path, value, required) in writes {
            match write_file(&path, &value) {
                Ok(()) => {}
                Err(CgroupError::Write { ref source, .. })
                    if !required && source.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = group.remove();
                    return Err(e);
                }
            }
        }
        if let Self::V2 { .. } = self {
            for dir in group.paths() {
                if let Err(e) = super::devices::attach_device_filter(&dir, devices) {
                    let _ = group.remove();
                    return Err(e.into());
                }
            }
        }
        Ok(group)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4).and_then(|o| {
            std::str::from_utf8(o)
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        });
        match (bytes.get(i), oct) {
            (Some(b'\\'), Some(v)) => {
                out.push(v);
                i += 4;
            }
            (Some(b), _) => {
                out.push(*b);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a counter file; a missing file (controller not mounted) reads as 0.
fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads `key value` lines; a missing file reads as empty.
fn read_keyed(path: &Path) -> Result<Vec<(String, u64)>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(parse_keyed(&s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses `key value` lines (cpu.stat, memory.events, memory.oom_control).
pub fn parse_keyed(s: &str) -> Vec<(String, u64)> {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn keyed(kv: &[(String, u64)], key: &str) -> u64 {
    kv.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

/// Creates each directory; on failure removes the ones this call created.
fn create_dirs(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let mut created: Vec<&PathBuf> = Vec::new();
    let result = (|| {
        for dir in dirs {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(|source| CgroupError::Create {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            // A concurrent removal of the last capsule may take the `bolt` parent away between
            // the two calls (see `remove_empty_parent`): make it again once.
            let made = match fs::create_dir(dir) {
                Err(e) if e.kind() == ErrorKind::NotFound => dir
                    .parent()
                    .map_or(Err(e), fs::create_dir_all)
                    .and_then(|()| fs::create_dir(dir)),
                other => other,
            };
            match made {
                Ok(()) => created.push(dir),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists(dir.clone()))
                }
                Err(source) => {
                    return Err(CgroupError::Create {
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for dir in created {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// On v2, controllers must be enabled in the parents' `cgroup.subtree_control`.
fn prepare_v2_parent(root: &Path) -> Result<(), CgroupError> {
    let parent = root.join(BOLT_PARENT);
    fs::create_dir_all(&parent).map_err(|source| CgroupError::Create {
        path: parent.clone(),
        source,
    })?;
    let available = read_file(&root.join("cgroup.controllers"))?;
    for dir in [root, parent.as_path()] {
        let control = dir.join("cgroup.subtree_control");
        let enabled = read_file(&control)?;
        for c in ["cpu", "memory", "pids"] {
            let wanted = available.split_whitespace().any(|a| a == c);
            let on = enabled.split_whitespace().any(|a| a == c);
            if wanted && !on {
                write_file(&control, &format!("+{c}"))?;
            }
        }
    }
    Ok(())
}

/// The control-file writes for `res` on v1: `(file, value, required)`. Optional files (memsw
/// without swap accounting) are skipped when missing.
pub fn v1_limit_writes(
    res: &Resources,
    dirs: &[(String, PathBuf)],
    devices: &[DeviceRule],
) -> Vec<(PathBuf, String, bool)> {
    let dir = |c: &str| dirs.iter().find(|(k, _)| k == c).map(|(_, d)| d.clone());
    let mut w = Vec::new();
    if let (Some(m), Some(d)) = (res.memory_bytes, dir("memory")) {
        w.push((d.join("memory.limit_in_bytes"), m.to_string(), true));
        w.push((d.join("memory.memsw.limit_in_bytes"), m.to_string(), false));
    }
    if let Some(d) = dir("cpu") {
        if let Some(q) = res.cpu_quota_us() {
            w.push((d.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string(), true));
            w.push((d.join("cpu.cfs_quota_us"), q.to_string(), true));
        }
        if let Some(s) = res.cpu_shares() {
            w.push((d.join("cpu.shares"), s.to_string(), true));
        }
    }
    if let (Some(p), Some(d)) = (res.pids_limit, dir("pids")) {
        w.push((d.join("pids.max"), p.to_string(), true));
    }
    if let Some(d) = dir("devices") {
        w.push((d.join("devices.deny"), "a".to_owned(), true));
        for rule in devices {
            w.push((d.join("devices.allow"), rule.v1_line(), true));
        }
    }
    w
}

/// The control-file writes for `res` on v2.
pub fn v2_limit_writes(res: &Resources, dirs: &[PathBuf]) -> Vec<(PathBuf, String, bool)> {
    let Some(d) = dirs.first() else {
        return Vec::new();
    };
    let mut w = Vec::new();
    if let Some(m) = res.memory_bytes {
        w.push((d.join("memory.max"), m.to_string(), true));
        w.push((d.join("memory.swap.max"), "0".to_owned(), false));
    }
    if let Some(q) = res.cpu_quota_us() {
        w.push((d.join("cpu.max"), format!("{q} {CPU_PERIOD_US}"), true));
    }
    if let Some(weight) = res.cpu_weight {
        w.push((d.join("cpu.weight"), weight.to_string(), true));
    }
    if let Some(p) = res.pids_limit {
        w.push((d.join("pids.max"), p.to_string(), true));
    }
    w
}

fn parse_pids(s: &str) -> Vec<i32> {
    s.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn kill_loop(
    procs: &dyn Fn() -> Result<Vec<i32>, CgroupError>,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let pids = procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // These pids are in the capsule's own group: processes this runtime started.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if start.elapsed() > timeout {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn rmdir_retry(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if start.elapsed() < timeout && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the `bolt` parent of a group's directory when it is empty, so the bolt-owned subtree
/// goes away with its last capsule and nothing is left on the host. Fails silently while another
/// capsule still lives there (the kernel refuses to remove a non-empty cgroup).
fn remove_empty_parent(dir: &Path) {
    if let Some(parent) = dir.parent() {
        if parent.file_name().is_some_and(|n| n == BOLT_PARENT) {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Removes the empty `bolt` directory of every mounted cgroup hierarchy. An external runtime given
/// our bundle (`runc`, whose `cgroupsPath` is `/bolt/<id>`) makes it in every hierarchy, including
/// ones Bolt never uses (the named `systemd` one, `blkio`), and removes only the leaf.
pub fn remove_empty_parents() {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if !(post.starts_with("cgroup ") || post.starts_with("cgroup2 ")) {
            continue;
        }
        if let Some(mount) = pre.split(' ').nth(4) {
            let _ = fs::remove_dir(Path::new(&unescape_mountinfo(mount)).join(BOLT_PARENT));
        }
    }
}

/// A v1 group: one directory per hierarchy.
#[derive(Debug)]
pub struct CgroupV1 {
    dirs: Vec<(Vec<String>, PathBuf)>,
}

impl CgroupV1 {
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    fn procs_dir(&self) -> Option<&Path> {
        self.dir("pids")
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()))
    }
}

impl Cgroup for CgroupV1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for (_, d) in &self.dirs {
            write_file(&d.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for (_, d) in &self.dirs {
            match fs::read_to_string(d.join("cgroup.procs")) {
                Ok(s) => all.extend(parse_pids(&s)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: d.join("cgroup.procs"),
                        source,
                    })
                }
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut s = CgroupStats::default();
        if let Some(d) = self.dir("memory") {
            s.memory_bytes = read_u64(&d.join("memory.usage_in_bytes"))?;
            s.memory_limit_hits = read_u64(&d.join("memory.failcnt"))?;
            s.oom_kills = keyed(&read_keyed(&d.join("memory.oom_control"))?, "oom_kill");
        }
        if let Some(d) = self.dir("cpuacct") {
            s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"))?;
        }
        if let Some(d) = self.dir("cpu") {
            let kv = read_keyed(&d.join("cpu.stat"))?;
            s.cpu_periods = keyed(&kv, "nr_periods");
            s.cpu_throttled_periods = keyed(&kv, "nr_throttled");
        }
        if let Some(d) = self.dir("pids") {
            s.pids_current = read_u64(&d.join("pids.current"))?;
        }
        Ok(s)
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        match self.dir("memory") {
            Some(d) => Ok(keyed(
                &read_keyed(&d.join("memory.oom_control"))?,
                "oom_kill",
            )),
            None => Ok(0),
        }
    }

    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        if self.procs_dir().is_none() {
            return Ok(());
        }
        kill_loop(&|| self.pids(), timeout)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all(REMOVE_TIMEOUT)?;
        let mut first_err = None;
        for (_, d) in &self.dirs {
            match rmdir_retry(d, REMOVE_TIMEOUT) {
                Ok(()) => remove_empty_parent(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        let d = self.dir("freezer").ok_or_else(|| {
            CgroupError::NoFreezer(self.paths().first().cloned().unwrap_or_default())
        })?;
        let state = d.join("freezer.state");
        let result = write_file(&state, "FROZEN").and_then(|()| {
            wait_state(
                &state,
                "FROZEN",
                &|s| v1_state_is(s, "FROZEN"),
                FREEZE_TIMEOUT,
            )
        });
        if result.is_err() {
            let _ = write_file(&state, "THAWED");
        }
        result
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        let d = self.dir("freezer").ok_or_else(|| {
            CgroupError::NoFreezer(self.paths().first().cloned().unwrap_or_default())
        })?;
        let state = d.join("freezer.state");
        write_file(&state, "THAWED")?;
        wait_state(
            &state,
            "THAWED",
            &|s| v1_state_is(s, "THAWED"),
            FREEZE_TIMEOUT,
        )
    }
}

/// A v2 group.
#[derive(Debug)]
pub struct CgroupV2 {
    dir: PathBuf,
}

impl Cgroup for CgroupV2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        match fs::read_to_string(self.dir.join("cgroup.procs")) {
            Ok(s) => Ok(parse_pids(&s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(CgroupError::Read {
                path: self.dir.join("cgroup.procs"),
                source,
            }),
        }
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let d = &self.dir;
        let cpu = read_keyed(&d.join("cpu.stat"))?;
        let events = read_keyed(&d.join("memory.events"))?;
        Ok(CgroupStats {
            memory_bytes: read_u64(&d.join("memory.current"))?,
            cpu_usage_ns: keyed(&cpu, "usage_usec").saturating_mul(1000),
            cpu_periods: keyed(&cpu, "nr_periods"),
            cpu_throttled_periods: keyed(&cpu, "nr_throttled"),
            pids_current: read_u64(&d.join("pids.current"))?,
            oom_kills: keyed(&events, "oom_kill"),
            memory_limit_hits: keyed(&events, "max"),
        })
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        Ok(keyed(
            &read_keyed(&self.dir.join("memory.events"))?,
            "oom_kill",
        ))
    }

    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() {
            write_file(&kill_file, "1")?;
        }
        kill_loop(&|| self.pids(), timeout)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.kill_all(REMOVE_TIMEOUT)?;
        rmdir_retry(&self.dir, REMOVE_TIMEOUT)?;
        remove_empty_parent(&self.dir);
        Ok(())
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        let control = self.dir.join("cgroup.freeze");
        let events = self.dir.join("cgroup.events");
        let result = write_file(&control, "1").and_then(|()| {
            wait_state(
                &events,
                "frozen",
                &|s| v2_events_frozen(s) == Some(true),
                FREEZE_TIMEOUT,
            )
        });
        if result.is_err() {
            let _ = write_file(&control, "0");
        }
        result
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        write_file(&self.dir.join("cgroup.freeze"), "0")?;
        wait_state(
            &self.dir.join("cgroup.events"),
            "thawed",
            &|s| v2_events_frozen(s) != Some(true),
            FREEZE_TIMEOUT,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_is_v1() {
        let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
        let Hierarchy::V1 { mounts } = &h else {
            panic!("expected v1, got {h:?}")
        };
        let names: Vec<&str> = mounts.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "devices", "pids"]);
        assert!(h.confines_devices());
        let g = h.open("c1");
        assert!(g
            .paths()
            .contains(&PathBuf::from("/sys/fs/cgroup/memory/bolt/c1")));
    }

    #[test]
    fn pure_v2_host() {
        let text = "25 20 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_mountinfo(text).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(
            h.open("x").paths(),
            [PathBuf::from("/sys/fs/cgroup/bolt/x")]
        );
        assert!(Hierarchy::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }

    #[test]
    fn comounted_cpu_cpuacct_share_a_directory() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let h = Hierarchy::from_mountinfo(text).unwrap();
        let g = h.open("z");
        assert_eq!(g.paths().len(), 1);
        let Hierarchy::V1 { .. } = &h else { panic!() };
        assert_eq!(h.open_v1("z").dirs[0].0, ["cpu", "cpuacct"]);
    }

    #[test]
    fn v1_writes_map_the_limits() {
        let res = Resources {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            cpu_weight: None,
            pids_limit: Some(10),
        };
        let dirs = vec![
            ("memory".to_owned(), PathBuf::from("/m")),
            ("cpu".to_owned(), PathBuf::from("/c")),
            ("pids".to_owned(), PathBuf::from("/p")),
        ];
        let w = v1_limit_writes(&res, &dirs, &[]);
        let get = |f: &str| {
            w.iter()
                .find(|(p, _, _)| p.ends_with(f))
                .map(|(_, v, _)| v.clone())
        };
        assert_eq!(get("memory.limit_in_bytes").as_deref(), Some("67108864"));
        assert_eq!(
            get("memory.memsw.limit_in_bytes").as_deref(),
            Some("67108864")
        );
        assert_eq!(get("cpu.cfs_quota_us").as_deref(), Some("50000"));
        assert_eq!(get("cpu.cfs_period_us").as_deref(), Some("100000"));
        assert_eq!(get("pids.max").as_deref(), Some("10"));
        assert!(get("cpu.shares").is_none());
    }

    #[test]
    fn v2_writes_map_the_limits() {
        let res = Resources {
            memory_bytes: Some(1 << 20),
            cpu_millis: Some(250),
            cpu_weight: Some(200),
            pids_limit: Some(3),
        };
        let w = v2_limit_writes(&res, &[PathBuf::from("/g")]);
        let get = |f: &str| {
            w.iter()
                .find(|(p, _, _)| p.ends_with(f))
                .map(|(_, v, _)| v.clone())
        };
        assert_eq!(get("memory.max").as_deref(), Some("1048576"));
        assert_eq!(get("cpu.max").as_deref(), Some("25000 100000"));
        assert_eq!(get("cpu.weight").as_deref(), Some("200"));
        assert_eq!(get("pids.max").as_deref(), Some("3"));
    }

    #[test]
    fn freezer_is_a_v1_hierarchy_of_the_group() {
        let text = format!(
            "{HYBRID}37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
        );
        let h = Hierarchy::from_mountinfo(&text).unwrap();
        let g = h.open_v1("c2");
        assert_eq!(
            g.dir("freezer"),
            Some(Path::new("/sys/fs/cgroup/freezer/bolt/c2"))
        );
        assert!(h
            .open("c2")
            .paths()
            .contains(&PathBuf::from("/sys/fs/cgroup/freezer/bolt/c2")));
        // Without the hierarchy, freezing fails with a clear error, not a panic.
        let plain = Hierarchy::from_mountinfo(HYBRID).unwrap().open("c3");
        assert!(matches!(plain.freeze(), Err(CgroupError::NoFreezer(_))));
    }

    #[test]
    fn freezer_states_parse() {
        assert_eq!(v2_events_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(v2_events_frozen("populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(v2_events_frozen("populated 0\n"), None);
        assert!(v1_state_is("FROZEN\n", "FROZEN"));
        assert!(!v1_state_is("FREEZING\n", "FROZEN"));
        assert!(!v1_state_is("THAWED\n", "FROZEN"));
    }

    #[test]
    fn parses_counters() {
        let kv = parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        assert_eq!(keyed(&kv, "oom_kill"), 2);
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
