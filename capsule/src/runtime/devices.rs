//! Which devices a capsule may open: docker's default set plus the host devices granted with
//! `--device HOST[:CONTAINER][:PERMS]`, enforced by the capsule's cgroup (`devices.allow` lines on
//! v1; on v2 a `BPF_PROG_TYPE_CGROUP_DEVICE` program generated here, as runc and crun do).
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` with
//! `access_type = access << 16 | type` and returns 1 (allow) or 0 (deny, `EPERM`). It is one
//! block per rule; a block falls through to the next on the first field that does not match.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::sys::BpfInsn;
use crate::sys::{Errno, LinuxSyscall, Syscall};

/// Errors of device specs and device confinement.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A `--device` spec does not parse.
    #[error("invalid device {spec:?}: {reason}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The host path could not be read.
    #[error("stat device {path}: {source}")]
    Stat {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host path is not a character or block device.
    #[error("{0} is not a character or block device")]
    NotADevice(PathBuf),
    /// The cgroup directory could not be opened.
    #[error("open cgroup {path}: {source}")]
    OpenCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading or attaching the eBPF device program failed.
    #[error("attach the device filter to {path}: {source}")]
    Attach {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A character device (`c`).
    Char,
    /// A block device (`b`).
    Block,
}

impl DeviceKind {
    /// `c` or `b`.
    pub fn letter(self) -> char {
        match self {
            Self::Char => 'c',
            Self::Block => 'b',
        }
    }

    /// `BPF_DEVCG_DEV_CHAR` or `BPF_DEVCG_DEV_BLOCK`.
    fn bpf_type(self) -> i32 {
        match self {
            Self::Char => 2,
            Self::Block => 1,
        }
    }

    /// The `S_IF*` bits of a node of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Self::Char => libc::S_IFCHR,
            Self::Block => libc::S_IFBLK,
        }
    }
}

/// Access bits, as the BPF context encodes them (`BPF_DEVCG_ACC_*`).
pub mod access {
    /// Create a node (`m`).
    pub const MKNOD: u8 = 1;
    /// Open for reading (`r`).
    pub const READ: u8 = 2;
    /// Open for writing (`w`).
    pub const WRITE: u8 = 4;
    /// `rwm`.
    pub const ALL: u8 = MKNOD | READ | WRITE;
}

/// Parses `rwm` letters (each at most once, at least one) into access bits.
pub fn parse_access(s: &str) -> Option<u8> {
    let mut bits = 0u8;
    for c in s.chars() {
        let b = match c {
            'r' => access::READ,
            'w' => access::WRITE,
            'm' => access::MKNOD,
            _ => return None,
        };
        if bits & b != 0 {
            return None;
        }
        bits |= b;
    }
    (bits != 0).then_some(bits)
}

/// The `rwm` letters of access bits.
pub fn access_letters(bits: u8) -> String {
    [
        (access::READ, 'r'),
        (access::WRITE, 'w'),
        (access::MKNOD, 'm'),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// One allow rule: `None` matches any kind, major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Character, block, or both.
    pub kind: Option<DeviceKind>,
    /// Major number.
    pub major: Option<u32>,
    /// Minor number.
    pub minor: Option<u32>,
    /// Allowed access bits ([`access`]).
    pub access: u8,
}

impl DeviceRule {
    const fn char(major: Option<u32>, minor: Option<u32>, access: u8) -> Self {
        Self {
            kind: Some(DeviceKind::Char),
            major,
            minor,
            access,
        }
    }

    /// The v1 `devices.allow` line (`c 1:3 rwm`).
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.map_or('a', DeviceKind::letter),
            num(self.major),
            num(self.minor),
            access_letters(self.access)
        )
    }
}

/// Docker's (and runc's) default: any node may be created, and only these may be opened: null,
/// zero, full, random, urandom, tty, console, ptmx and the pty slaves (`/dev/pts/*`).
pub const DEFAULT_RULES: [DeviceRule; 11] = [
    DeviceRule::char(None, None, access::MKNOD),
    DeviceRule {
        kind: Some(DeviceKind::Block),
        major: None,
        minor: None,
        access: access::MKNOD,
    },
    DeviceRule::char(Some(1), Some(3), access::ALL),
    DeviceRule::char(Some(1), Some(5), access::ALL),
    DeviceRule::char(Some(1), Some(7), access::ALL),
    DeviceRule::char(Some(1), Some(8), access::ALL),
    DeviceRule::char(Some(1), Some(9), access::ALL),
    DeviceRule::char(Some(5), Some(0), access::ALL),
    DeviceRule::char(Some(5), Some(1), access::ALL),
    DeviceRule::char(Some(5), Some(2), access::ALL),
    DeviceRule::char(Some(136), None, access::ALL),
];

/// Names under `/dev` that the runtime makes itself; a granted device may not take them.
const RESERVED: [&str; 14] = [
    "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "shm", "mqueue",
    "fd", "stdin", "stdout",
];

/// A host device granted to a capsule (`--device`), resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The host node (bound instead of made by a rootless capsule).
    pub host: PathBuf,
    /// Where the node is made in the capsule (under `/dev/`).
    pub path: String,
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits of the node (the host node's).
    pub mode: u32,
    /// Allowed access bits ([`access`]).
    pub access: u8,
}

impl Device {
    /// Parses `HOST[:CONTAINER][:PERMS]` (docker's syntax; CONTAINER defaults to HOST, PERMS to
    /// `rwm`) and reads the host node. CONTAINER must lie under `/dev/` and not be one of the
    /// runtime's own nodes.
    pub fn from_spec(spec: &str) -> Result<Self, DeviceError> {
        let bad = |reason| DeviceError::BadSpec {
            spec: spec.to_owned(),
            reason,
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if parse_access(p).is_some() => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] => (*h, *c, *p),
            _ => return Err(bad("expected HOST[:CONTAINER][:PERMS]")),
        };
        if !host.starts_with('/') {
            return Err(bad("the host path must be absolute"));
        }
        let access = parse_access(perms).ok_or_else(|| bad("permissions are letters of rwm"))?;
        let path = capsule_path(container).ok_or_else(|| {
            bad("the capsule path must be a normal path under /dev/ that is not the runtime's own")
        })?;
        let meta = std::fs::metadata(host).map_err(|source| DeviceError::Stat {
            path: host.into(),
            source,
        })?;
        let ft = meta.file_type();
        let kind = if ft.is_char_device() {
            DeviceKind::Char
        } else if ft.is_block_device() {
            DeviceKind::Block
        } else {
            return Err(DeviceError::NotADevice(host.into()));
        };
        let rdev = meta.rdev();
        Ok(Self {
            host: host.into(),
            path,
            kind,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
            mode: meta.mode() & 0o777,
            access,
        })
    }

    /// The allow rule of this device.
    pub fn rule(&self) -> DeviceRule {
        DeviceRule {
            kind: Some(self.kind),
            major: Some(self.major),
            minor: Some(self.minor),
            access: self.access,
        }
    }

    /// Whether the spec is valid (a spec read back from disk is checked again).
    pub fn is_valid(&self) -> bool {
        capsule_path(&self.path).as_deref() == Some(self.path.as_str())
    }
}

/// The normalized capsule path of a granted device: absolute, under `/dev/`, no `..`, no NUL,
/// not one of the runtime's own names.
fn capsule_path(p: &str) -> Option<String> {
    if p.contains('\0') || !p.starts_with("/dev/") {
        return None;
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_str()?),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    match parts.as_slice() {
        ["dev", first, ..] if !RESERVED.contains(first) && !first.starts_with("std") => {
            Some(format!("/{}", parts.join("/")))
        }
        _ => None,
    }
}

/// The allow-list of a capsule: the default rules, then one per granted device.
pub fn allow_rules(devices: &[Device]) -> Vec<DeviceRule> {
    DEFAULT_RULES
        .iter()
        .copied()
        .chain(devices.iter().map(Device::rule))
        .collect()
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// Opcodes (linux/bpf_common.h, linux/bpf.h).
mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_AND | BPF_K`: `dst &= imm` (32 bit).
    pub const AND32_K: u8 = 0x54;
    /// `BPF_ALU | BPF_RSH | BPF_K`: `dst >>= imm` (32 bit).
    pub const RSH32_K: u8 = 0x74;
    /// `BPF_ALU | BPF_MOV | BPF_X`: `dst = src` (32 bit).
    pub const MOV32_X: u8 = 0xbc;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
    pub const MOV64_K: u8 = 0xb7;
    /// `BPF_JMP | BPF_JNE | BPF_K`: `if dst != imm goto +off`.
    pub const JNE_K: u8 = 0x55;
    /// `BPF_JMP | BPF_JNE | BPF_X`: `if dst != src goto +off`.
    pub const JNE_X: u8 = 0x5d;
    /// `BPF_JMP | BPF_EXIT`.
    pub const EXIT: u8 = 0x95;
}

/// The cgroup device program allowing exactly `rules` (everything else is denied).
///
/// Registers: r2 = type, r3 = access, r4 = major, r5 = minor; r1 is scratch after the prologue.
pub fn device_filter(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut prog = vec![
        insn(op::LDX_W, 2, 1, 0, 0),
        insn(op::AND32_K, 2, 0, 0, 0xffff),
        insn(op::LDX_W, 3, 1, 0, 0),
        insn(op::RSH32_K, 3, 0, 0, 16),
        insn(op::LDX_W, 4, 1, 4, 0),
        insn(op::LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each jump's offset is patched to land on the first instruction after the block.
        let mut block: Vec<BpfInsn> = Vec::with_capacity(8);
        if let Some(kind) = rule.kind {
            block.push(insn(op::JNE_K, 2, 0, 0, kind.bpf_type()));
        }
        if rule.access & access::ALL != access::ALL {
            // The requested bits must all be allowed: (access & allowed) == access.
            block.push(insn(op::MOV32_X, 1, 3, 0, 0));
            block.push(insn(op::AND32_K, 1, 0, 0, i32::from(rule.access)));
            block.push(insn(op::JNE_X, 1, 3, 0, 0));
        }
        // Majors are 12 and minors 20 bits wide, so both fit the immediate.
        if let Some(major) = rule.major.and_then(|m| i32::try_from(m).ok()) {
            block.push(insn(op::JNE_K, 4, 0, 0, major));
        }
        if let Some(minor) = rule.minor.and_then(|m| i32::try_from(m).ok()) {
            block.push(insn(op::JNE_K, 5, 0, 0, minor));
        }
        block.push(insn(op::MOV64_K, 0, 0, 0, 1));
        block.push(insn(op::EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == op::JNE_K || ins.code == op::JNE_X {
                ins.off = i16::try_from(len - 1 - i).unwrap_or(0);
            }
        }
        prog.extend(block);
    }
    prog.push(insn(op::MOV64_K, 0, 0, 0, 0));
    prog.push(insn(op::EXIT, 0, 0, 0, 0));
    prog
}

/// What [`device_filter`]'s program decides for one access, evaluated here (for tests and
/// docs: the same blocks, read as rules).
pub fn rules_allow(
    rules: &[DeviceRule],
    kind: DeviceKind,
    major: u32,
    minor: u32,
    acc: u8,
) -> bool {
    rules.iter().any(|r| {
        r.kind.is_none_or(|k| k == kind)
            && acc & r.access == acc
            && r.major.is_none_or(|m| m == major)
            && r.minor.is_none_or(|m| m == minor)
    })
}

pub(crate) fn attach_with<S: Syscall>(
    sys: &S,
    cgroup_dir: &Path,
    rules: &[DeviceRule],
) -> Result<(), DeviceError> {
    let dir = std::fs::File::open(cgroup_dir).map_err(|source| DeviceError::OpenCgroup {
        path: cgroup_dir.to_owned(),
        source,
    })?;
    sys.attach_device_filter(dir.as_raw_fd(), &device_filter(rules))
        .map_err(|source| DeviceError::Attach {
            path: cgroup_dir.to_owned(),
            source,
        })
}

/// Loads the program for `rules` and attaches it to the cgroup v2 directory `cgroup_dir`.
pub fn attach_device_filter(cgroup_dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceError> {
    attach_with(&LinuxSyscall, cgroup_dir, rules)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sys::fake::RecordingSyscall;

    /// Runs the generated program on one access, the way the kernel's interpreter would, for
    /// the few opcodes the generator emits.
    fn run(prog: &[BpfInsn], kind: DeviceKind, major: u32, minor: u32, acc: u8) -> u64 {
        let ctx = [
            (u32::from(acc) << 16) | kind.bpf_type() as u32,
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                op::LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                op::AND32_K => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
                op::RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                op::MOV32_X => r[dst] = u64::from(r[src] as u32),
                op::MOV64_K => r[dst] = i.imm as i64 as u64,
                op::JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                op::JNE_X if r[dst] != r[src] => pc += i.off as usize,
                op::JNE_K | op::JNE_X => {}
                op::EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn program_for_one_rule_is_the_expected_instructions() {
        let rule = DeviceRule {
            kind: Some(DeviceKind::Block),
            major: Some(8),
            minor: Some(0),
            access: access::READ,
        };
        let prog = device_filter(&[rule]);
        let want = [
            insn(0x61, 2, 1, 0, 0),
            insn(0x54, 2, 0, 0, 0xffff),
            insn(0x61, 3, 1, 0, 0),
            insn(0x74, 3, 0, 0, 16),
            insn(0x61, 4, 1, 4, 0),
            insn(0x61, 5, 1, 8, 0),
            // block: type, access, major, minor, allow
            insn(0x55, 2, 0, 7, 1),
            insn(0xbc, 1, 3, 0, 0),
            insn(0x54, 1, 0, 0, 2),
            insn(0x5d, 1, 3, 4, 0),
            insn(0x55, 4, 0, 3, 8),
            insn(0x55, 5, 0, 2, 0),
            insn(0xb7, 0, 0, 0, 1),
            insn(0x95, 0, 0, 0, 0),
            // default: deny
            insn(0xb7, 0, 0, 0, 0),
            insn(0x95, 0, 0, 0, 0),
        ];
        assert_eq!(prog, want);
        // Wildcards and rwm emit no comparison.
        let any = device_filter(&[DeviceRule {
            kind: None,
            major: None,
            minor: None,
            access: access::ALL,
        }]);
        assert_eq!(any.len(), 6 + 2 + 2);
    }

    #[test]
    fn program_allows_the_defaults_and_grants_only() {
        let disk = Device {
            host: "/dev/vda".into(),
            path: "/dev/xvda".into(),
            kind: DeviceKind::Block,
            major: 254,
            minor: 0,
            mode: 0o660,
            access: access::READ,
        };
        let rules = allow_rules(&[disk]);
        let prog = device_filter(&rules);
        use access::{MKNOD, READ, WRITE};
        use DeviceKind::{Block, Char};
        let cases: [(DeviceKind, u32, u32, u8, bool); 14] = [
            (Char, 1, 3, READ | WRITE, true),   // null
            (Char, 1, 9, READ, true),           // urandom
            (Char, 5, 1, READ | WRITE, true),   // console
            (Char, 136, 7, READ | WRITE, true), // a pty
            (Char, 5, 2, READ | WRITE, true),   // ptmx
            (Block, 8, 0, MKNOD, true),         // making a node is allowed
            (Block, 8, 0, READ, false),         // opening a host disk is not
            (Block, 8, 0, WRITE, false),
            (Char, 1, 1, READ, false),    // /dev/mem
            (Char, 10, 200, READ, false), // tun
            (Block, 254, 0, READ, true),  // the granted disk, read-only
            (Block, 254, 0, READ | WRITE, false),
            (Block, 254, 1, READ, false),
            (Char, 254, 0, READ, false),
        ];
        for (kind, major, minor, acc, allowed) in cases {
            let got = run(&prog, kind, major, minor, acc);
            assert_eq!(
                got == 1,
                allowed,
                "{} {major}:{minor} {}",
                kind.letter(),
                access_letters(acc)
            );
            assert_eq!(rules_allow(&rules, kind, major, minor, acc), allowed);
        }
    }

    #[test]
    fn attaching_goes_through_the_syscall_with_the_program() {
        let sys = RecordingSyscall::new();
        let dir = tempfile::tempdir().unwrap();
        attach_with(&sys, dir.path(), &DEFAULT_RULES).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let n = device_filter(&DEFAULT_RULES).len();
        assert!(
            calls[0].starts_with("attach_device_filter ")
                && calls[0].contains(&format!(" {n} 61:12:0:0x0,54:02:0:0xffff,")),
            "{calls:?}"
        );
        // The last block allows the pty slaves: c 136:* rwm, then the final deny.
        assert!(
            calls[0].ends_with(
                "55:02:3:0x2,55:04:2:0x88,b7:00:0:0x1,95:00:0:0x0,b7:00:0:0x0,95:00:0:0x0"
            ),
            "{}",
            calls[0]
        );
        let failing = RecordingSyscall::failing_on("attach_device_filter", Errno::EPERM);
        let err = attach_with(&failing, dir.path(), &DEFAULT_RULES).unwrap_err();
        assert!(matches!(err, DeviceError::Attach { .. }), "{err}");
        assert!(matches!(
            attach_with(&sys, &dir.path().join("gone"), &DEFAULT_RULES),
            Err(DeviceError::OpenCgroup { .. })
        ));
    }

    #[test]
    fn v1_lines() {
        let lines: Vec<String> = DEFAULT_RULES.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[10], "c 136:* rwm");
    }

    #[test]
    fn device_specs_parse_like_docker() {
        let d = Device::from_spec("/dev/null:/dev/mynull:r").unwrap();
        assert_eq!(
            (d.path.as_str(), d.kind, d.major, d.minor, d.access),
            ("/dev/mynull", DeviceKind::Char, 1, 3, access::READ)
        );
        let d = Device::from_spec("/dev/kmsg:rw").unwrap();
        assert_eq!(
            (d.path.as_str(), d.access),
            ("/dev/kmsg", access::READ | access::WRITE)
        );
        // The runtime's own nodes cannot be replaced.
        assert!(Device::from_spec("/dev/zero").is_err());
        assert_eq!(
            Device::from_spec("/dev/zero:/dev/x/y").unwrap().path,
            "/dev/x/y"
        );
        for bad in [
            "dev/null",
            "/dev/null:/etc/null",
            "/dev/null:/dev/../etc/x",
            "/dev/null:/dev/pts/0",
            "/dev/null:/dev",
            "/dev/null:/dev/x:rwx",
            "/dev/null:/dev/x:rr",
            "/dev/null:/dev/x:r:w",
        ] {
            assert!(
                matches!(Device::from_spec(bad), Err(DeviceError::BadSpec { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Device::from_spec("/nonexistent-device:/dev/x"),
            Err(DeviceError::Stat { .. })
        ));
        assert!(matches!(
            Device::from_spec("/etc/hostname:/dev/x"),
            Err(DeviceError::NotADevice(_))
        ));
    }
}
