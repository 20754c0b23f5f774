//! What a capsule is asked to be: [`CapsuleSpec`] and its parts, with docker's defaults.

use std::path::{Path, PathBuf};

/// Errors of spec validation.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The id is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid capsule id {0:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    /// No command to run.
    #[error("empty command")]
    EmptyCommand,
    /// An environment entry is not `KEY=VALUE`.
    #[error("invalid environment entry {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// A string holds a NUL byte.
    #[error("{0} contains a NUL byte")]
    NulByte(&'static str),
    /// A path that must be absolute is not.
    #[error("{what} must be an absolute path: {path:?}")]
    RelativePath {
        /// Which field.
        what: &'static str,
        /// The value.
        path: String,
    },
    /// No lower layer for the overlay.
    #[error("rootfs needs at least one lower directory")]
    NoLowerDir,
    /// The hostname is empty or longer than 64 bytes.
    #[error("invalid hostname {0:?}")]
    BadHostname(String),
    /// A capability name is unknown.
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    /// A resource limit is out of range.
    #[error("invalid resource limit: {0}")]
    BadResource(&'static str),
    /// An rlimit asks for more than the host's hard limit, which cannot be raised here.
    #[error("rlimit {name} {hard} is above the host's hard limit {host_hard}")]
    RlimitAboveHost {
        /// The limit's name.
        name: &'static str,
        /// What was asked.
        hard: u64,
        /// The host's hard limit.
        host_hard: u64,
    },
    /// The soft limit exceeds the hard limit.
    #[error("rlimit {0}: soft limit above hard limit")]
    RlimitSoftAboveHard(&'static str),
    /// A granted device's capsule path is not a normal path under `/dev/`.
    #[error("invalid device path {0:?}: use a path under /dev/ that is not the runtime's own")]
    BadDevice(String),
    /// An extra mount ([`Mount`]) is invalid.
    #[error("invalid mount on {target:?}: {reason}")]
    BadMount {
        /// The mount's target inside the capsule.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The root filesystem: an overlay of read-only lower directories (unpacked image layers) and a
/// per-capsule writable upper directory, mounted on `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// Lower directories in image layer order: the base layer first, the top layer last.
    pub lower: Vec<PathBuf>,
    /// The capsule's writable layer.
    pub upper: PathBuf,
    /// overlayfs' work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged tree is mounted (inside the capsule's mount namespace only) and the
    /// `root.path` of the OCI bundle.
    pub target: PathBuf,
}

impl Rootfs {
    /// The usual layout under one capsule directory: `dir/upper`, `dir/work`, `dir/rootfs`.
    pub fn in_dir(lower: Vec<PathBuf>, dir: &Path) -> Self {
        Self {
            lower,
            upper: dir.join("upper"),
            work: dir.join("work"),
            target: dir.join("rootfs"),
        }
    }

    /// Creates `upper`, `work` and `target` (and their parents) if missing.
    pub fn prepare(&self) -> std::io::Result<()> {
        for d in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// The overlayfs mount data: `lowerdir=TOP:...:BASE,upperdir=..,workdir=..`.
    pub fn overlay_options(&self) -> String {
        let lower: Vec<String> = self
            .lower
            .iter()
            .rev()
            .map(|p| escape_overlay(&p.to_string_lossy()))
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            escape_overlay(&self.upper.to_string_lossy()),
            escape_overlay(&self.work.to_string_lossy())
        )
    }
}

/// overlayfs splits on ':' and ','; a backslash escapes them.
fn escape_overlay(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An extra mount inside the capsule: a volume or host path bound in, or a tmpfs.
///
/// Mounts are made after the capsule's root is in place (after `pivot_root`), so the target
/// is resolved inside the capsule: a symlink in the image cannot send it to a host path.
/// Missing target directories are created (in the capsule's writable layer); parents are
/// mounted before children whatever the order here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A recursive bind of a host file or directory (a named volume's `_data` or a host path).
    /// The parent clones the source tree (`open_tree`) before the capsule starts; the clone is
    /// private (nothing mounted in the capsule propagates back) and, when `readonly`, read-only
    /// recursively.
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute path inside the capsule.
        target: String,
        /// Make the whole bound tree read-only.
        readonly: bool,
    },
    /// A fresh tmpfs (always `nosuid,nodev`).
    Tmpfs {
        /// Absolute path inside the capsule.
        target: String,
        /// Size, mode, owner and flags.
        options: TmpfsOptions,
    },
}

/// Options of a tmpfs [`Mount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TmpfsOptions {
    /// `size=` in bytes (the kernel's default, half of RAM, when `None`).
    pub size_bytes: Option<u64>,
    /// `mode=` of the root directory (the kernel's default 1777 when `None`).
    pub mode: Option<u32>,
    /// `uid=` of the root directory.
    pub uid: Option<u32>,
    /// `gid=` of the root directory.
    pub gid: Option<u32>,
    /// Mount read-only.
    pub readonly: bool,
    /// Allow executing programs from it (docker's default is `noexec`).
    pub exec: bool,
}

impl TmpfsOptions {
    /// The mount data, e.g. `size=67108864,mode=1777`.
    pub fn data(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.size_bytes {
            parts.push(format!("size={s}"));
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode={m:o}"));
        }
        if let Some(u) = self.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(g) = self.gid {
            parts.push(format!("gid={g}"));
        }
        parts.join(",")
    }
}

impl Mount {
    /// The absolute path inside the capsule.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let target = self.target();
        let bad = |reason| SpecError::BadMount {
            target: target.to_owned(),
            reason,
        };
        if !target.starts_with('/') {
            return Err(bad("the target must be an absolute path"));
        }
        if target.contains('\0') {
            return Err(bad("the target contains a NUL byte"));
        }
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err(bad("the target cannot be /"));
        }
        if parts.iter().any(|p| *p == ".." || *p == ".") {
            return Err(bad("the target must not contain '.' or '..'"));
        }
        if matches!(parts.first(), Some(&"proc")) {
            return Err(bad("mounts on or under /proc are not allowed"));
        }
        if let Mount::Bind { source, .. } = self {
            if !source.is_absolute() {
                return Err(bad("the bind source must be an absolute host path"));
            }
            if source.as_os_str().as_encoded_bytes().contains(&0) {
                return Err(bad("the bind source contains a NUL byte"));
            }
        }
        Ok(())
    }
}

/// `/a//b/` → `/a/b`: the form duplicate targets are compared in.
pub(crate) fn normalize_target(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for p in t.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Which network namespace the capsule gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A fresh network namespace with only `lo` (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Join an existing namespace (a bind-mounted `/proc/<pid>/ns/net` or `/run/netns/NAME`):
    /// the hook for bridge networking, which prepares the namespace and its veth first.
    Join(PathBuf),
}

/// The user the command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

/// Cgroup limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// Memory limit in bytes (swap is limited to the same total where the host accounts it).
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicpus (1000 = one full CPU), over a 100 ms period.
    pub cpu_millis: Option<u32>,
    /// CPU weight, 1..=10000 (cgroup v2 scale; 100 is the default; mapped to `cpu.shares` on v1).
    pub cpu_weight: Option<u16>,
    /// Maximum number of processes and threads.
    pub pids_limit: Option<u32>,
}

/// The CFS period Bolt uses for quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Resources {
    /// The CFS quota in microseconds per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_millis
            .map(|m| (u64::from(m) * CPU_PERIOD_US / 1000).max(1000))
    }

    /// v1 `cpu.shares` for the weight (the inverse of the OCI shares-to-weight conversion).
    pub fn cpu_shares(&self) -> Option<u64> {
        self.cpu_weight
            .map(|w| 2 + (u64::from(w.clamp(1, 10_000)) - 1) * 262_142 / 9_999)
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.memory_bytes.is_some_and(|m| m < 4096) {
            return Err(SpecError::BadResource("memory below 4096 bytes"));
        }
        if self.cpu_millis == Some(0) {
            return Err(SpecError::BadResource("cpu quota of 0"));
        }
        if self.cpu_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            return Err(SpecError::BadResource("cpu weight outside 1..=10000"));
        }
        if self.pids_limit == Some(0) {
            return Err(SpecError::BadResource("pids limit of 0"));
        }
        Ok(())
    }
}

/// A resource limit (`setrlimit`), checked against the host's hard limit at spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which limit.
    pub kind: RlimitKind,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The rlimits Bolt sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitKind {
    /// `RLIMIT_NOFILE`.
    Nofile,
    /// `RLIMIT_NPROC`.
    Nproc,
    /// `RLIMIT_CORE`.
    Core,
    /// `RLIMIT_STACK`.
    Stack,
    /// `RLIMIT_MEMLOCK`.
    Memlock,
}

impl RlimitKind {
    /// The OCI name (`RLIMIT_NOFILE`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Nofile => "RLIMIT_NOFILE",
            Self::Nproc => "RLIMIT_NPROC",
            Self::Core => "RLIMIT_CORE",
            Self::Stack => "RLIMIT_STACK",
            Self::Memlock => "RLIMIT_MEMLOCK",
        }
    }

    /// The libc resource number.
    #[allow(clippy::unnecessary_cast)] // a c_int on some libcs
    pub fn resource(self) -> u32 {
        (match self {
            Self::Nofile => libc::RLIMIT_NOFILE,
            Self::Nproc => libc::RLIMIT_NPROC,
            Self::Core => libc::RLIMIT_CORE,
            Self::Stack => libc::RLIMIT_STACK,
            Self::Memlock => libc::RLIMIT_MEMLOCK,
        }) as u32
    }
}

/// Linux capability names, indexed by number (0..=40).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// runc's (and docker's) default masked paths: a `/dev/null` bind on files, an empty read-only
/// tmpfs on directories.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's (and docker's) default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The `PATH` used when the spec's environment has none (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the runtime needs to start one capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleSpec {
    /// Unique id; names the cgroup (`bolt/<id>`).
    pub id: String,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// Command and arguments (`args[0]` is looked up in the environment's `PATH` when it has no
    /// '/').
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the capsule, created when missing (default `/`).
    pub workdir: String,
    /// uid:gid of the process.
    pub user: User,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// Hostname (UTS namespace); defaults to the first 12 characters of the id.
    pub hostname: Option<String>,
    /// Network namespace.
    pub network: NetworkMode,
    /// Cgroup limits.
    pub resources: Resources,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Paths hidden from the capsule.
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// Capabilities kept (bounding, effective and permitted for uid 0); names like `CAP_KILL`.
    pub capabilities: Vec<String>,
    /// Resource limits, each at or below the host's hard limit.
    pub rlimits: Vec<Rlimit>,
    /// Set `no_new_privs`.
    pub no_new_privileges: bool,
    /// Install Bolt's default seccomp profile ([`super::seccomp`]).
    pub seccomp: bool,
    /// Volumes, binds and tmpfs mounts (none by default).
    pub mounts: Vec<Mount>,
    /// Host devices granted (`--device`): made in `/dev` and allowed by the cgroup, beside
    /// [`super::devices::DEFAULT_RULES`].
    pub devices: Vec<super::devices::Device>,
}

impl CapsuleSpec {
    /// A spec with docker's defaults: root user, `/` workdir, no network, default masked and
    /// read-only paths, default capabilities, seccomp and `no_new_privs` on, `nofile` 1024.
    pub fn new(id: impl Into<String>, rootfs: Rootfs, args: Vec<String>) -> Self {
        Self {
            id: id.into(),
            rootfs,
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            workdir: "/".to_owned(),
            user: User::default(),
            additional_gids: Vec::new(),
            hostname: None,
            network: NetworkMode::None,
            resources: Resources::default(),
            readonly_rootfs: false,
            masked_paths: DEFAULT_MASKED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            readonly_paths: DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            capabilities: DEFAULT_CAPABILITIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            rlimits: vec![Rlimit {
                kind: RlimitKind::Nofile,
                soft: 1024,
                hard: 1024,
            }],
            no_new_privileges: true,
            seccomp: true,
            mounts: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// The hostname the capsule gets.
    pub fn effective_hostname(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => self.id.chars().take(12).collect(),
        }
    }

    /// The environment with `PATH` and `HOME` filled in when missing.
    pub fn effective_env(&self) -> Vec<String> {
        effective_env(&self.env, self.user.uid)
    }

    /// The capability mask of [`Self::capabilities`].
    pub fn capability_mask(&self) -> Result<u64, SpecError> {
        capability_mask(&self.capabilities)
    }

    /// Checks the spec (not the host). [`super::Runtime::spawn`] also checks rlimits against the
    /// host.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_id(&self.id)?;
        if self.args.is_empty() || self.args.first().is_some_and(String::is_empty) {
            return Err(SpecError::EmptyCommand);
        }
        no_nul("command", self.args.iter())?;
        no_nul("environment", self.env.iter())?;
        for e in &self.env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(SpecError::BadEnv(e.clone()));
            }
        }
        absolute("workdir", &self.workdir)?;
        for p in self.masked_paths.iter().chain(&self.readonly_paths) {
            absolute("masked or read-only path", p)?;
        }
        if self.rootfs.lower.is_empty() {
            return Err(SpecError::NoLowerDir);
        }
        let h = self.effective_hostname();
        if h.is_empty() || h.len() > 64 || h.contains('\0') {
            return Err(SpecError::BadHostname(h));
        }
        self.capability_mask()?;
        self.resources.validate()?;
        for r in &self.rlimits {
            if r.soft > r.hard {
                return Err(SpecError::RlimitSoftAboveHard(r.kind.name()));
            }
        }
        if let Some(d) = self.devices.iter().find(|d| !d.is_valid()) {
            return Err(SpecError::BadDevice(d.path.clone()));
        }
        let mut targets = std::collections::HashSet::new();
        for m in &self.mounts {
            m.validate()?;
            if !targets.insert(normalize_target(m.target())) {
                return Err(SpecError::BadMount {
                    target: m.target().to_owned(),
                    reason: "two mounts have this target",
                });
            }
        }
        Ok(())
    }
}

/// Checks a capsule id.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadId(id.to_owned()))
    }
}

fn no_nul<'a>(
    what: &'static str,
    mut it: impl Iterator<Item = &'a String>,
) -> Result<(), SpecError> {
    if it.any(|s| s.contains('\0')) {
        Err(SpecError::NulByte(what))
    } else {
        Ok(())
    }
}

fn absolute(what: &'static str, p: &str) -> Result<(), SpecError> {
    if p.starts_with('/') && !p.contains('\0') {
        Ok(())
    } else {
        Err(SpecError::RelativePath {
            what,
            path: p.to_owned(),
        })
    }
}

pub(crate) fn effective_env(env: &[String], uid: u32) -> Vec<String> {
    let mut out = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        out.push(if uid == 0 { "HOME=/root" } else { "HOME=/" }.to_owned());
    }
    out
}

/// The capability mask for a list of names.
pub fn capability_mask(names: &[String]) -> Result<u64, SpecError> {
    let mut mask = 0u64;
    for n in names {
        let upper = n.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let bit = CAPABILITY_NAMES
            .iter()
            .position(|c| *c == full)
            .ok_or_else(|| SpecError::UnknownCapability(n.clone()))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> CapsuleSpec {
        let rootfs = Rootfs::in_dir(vec!["/l/base".into(), "/l/top".into()], Path::new("/c"));
        CapsuleSpec::new("abc", rootfs, vec!["/bin/true".into()])
    }

    #[test]
    fn overlay_lists_top_layer_first_and_escapes() {
        let mut r = spec().rootfs;
        assert_eq!(
            r.overlay_options(),
            "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work"
        );
        r.lower = vec!["/a:b,c".into()];
        assert!(r.overlay_options().starts_with("lowerdir=/a\\:b\\,c,"));
    }

    #[test]
    fn validation_rejects_bad_input() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.args.clear();
        assert!(matches!(s.validate(), Err(SpecError::EmptyCommand)));
        let mut s = spec();
        s.id = "../x".into();
        assert!(matches!(s.validate(), Err(SpecError::BadId(_))));
        let mut s = spec();
        s.env.push("NOEQUALS".into());
        assert!(matches!(s.validate(), Err(SpecError::BadEnv(_))));
        let mut s = spec();
        s.workdir = "rel".into();
        assert!(matches!(s.validate(), Err(SpecError::RelativePath { .. })));
        let mut s = spec();
        s.capabilities.push("CAP_NOPE".into());
        assert!(matches!(s.validate(), Err(SpecError::UnknownCapability(_))));
        let mut s = spec();
        s.resources.cpu_weight = Some(0);
        assert!(matches!(s.validate(), Err(SpecError::BadResource(_))));
    }

    #[test]
    fn mounts_are_validated() {
        let bind = |source: &str, target: &str| Mount::Bind {
            source: source.into(),
            target: target.into(),
            readonly: false,
        };
        let mut s = spec();
        s.mounts = vec![
            bind("/srv/data", "/data"),
            Mount::Tmpfs {
                target: "/data/tmp".into(),
                options: TmpfsOptions::default(),
            },
        ];
        assert!(s.validate().is_ok());
        for (m, want) in [
            (bind("/x", "data"), "absolute"),
            (bind("/x", "/"), "cannot be /"),
            (bind("/x", "//"), "cannot be /"),
            (bind("/x", "/a/../etc"), "'..'"),
            (bind("/x", "/proc/sys"), "/proc"),
            (bind("rel", "/data"), "bind source"),
        ] {
            let mut s = spec();
            s.mounts = vec![m];
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
        let mut s = spec();
        s.mounts = vec![bind("/x", "/data/"), bind("/y", "//data")];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("two mounts"), "{e}");
    }

    #[test]
    fn tmpfs_data() {
        let o = TmpfsOptions {
            size_bytes: Some(64 << 20),
            mode: Some(0o1777),
            uid: Some(5),
            gid: None,
            readonly: false,
            exec: false,
        };
        assert_eq!(o.data(), "size=67108864,mode=1777,uid=5");
        assert_eq!(TmpfsOptions::default().data(), "");
    }

    #[test]
    fn default_caps_are_dockers() {
        let m = spec().capability_mask().unwrap();
        assert_eq!(m.count_ones(), 14);
        assert_ne!(m & (1 << 21), 1 << 21, "no CAP_SYS_ADMIN");
        assert_eq!(m & 1, 1, "CAP_CHOWN");
    }

    #[test]
    fn cpu_conversions() {
        let r = Resources {
            cpu_millis: Some(500),
            cpu_weight: Some(100),
            ..Resources::default()
        };
        assert_eq!(r.cpu_quota_us(), Some(50_000));
        // The inverse of the OCI shares-to-weight rule: converting back gives the weight.
        for w in [1u16, 39, 100, 5000, 10_000] {
            let r = Resources {
                cpu_weight: Some(w),
                ..Resources::default()
            };
            let shares = r.cpu_shares().unwrap();
            let back = 1 + (shares - 2) * 9_999 / 262_142;
            assert!(
                back.abs_diff(u64::from(w)) <= 1,
                "{w} -> {shares} -> {back}"
            );
        }
    }

    #[test]
    fn env_defaults() {
        let e = effective_env(&["A=1".into()], 1000);
        assert!(e.contains(&"HOME=/".to_owned()));
        assert!(e.iter().any(|v| v.starts_with("PATH=")));
    }
}
