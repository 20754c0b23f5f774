//! Bolt's default seccomp profile: docker's allow-list, compiled to classic BPF by hand (no
//! libseccomp).
//!
//! [`actions`] gives each syscall name of docker's default profile ([`profile`]) its action for a
//! capsule with a given capability set; [`filter`] resolves the names to this architecture's
//! numbers ([`table`], unknown names are skipped) and builds the filter, installed last, right
//! before `execve`:
//! 1. a foreign architecture (i386, x32 through its own audit arch) kills the process;
//! 2. a binary search on the syscall number over ranges of equal action;
//! 3. each leaf returns `ALLOW`, an errno, or checks one argument: `personality` with docker's
//!    personas only, `socket` except `AF_ALG`/`AF_VSOCK`, `clone` without namespace flags
//!    (unless `CAP_SYS_ADMIN`); `clone3` gets `ENOSYS` so libc falls back to `clone`;
//! 4. everything else, the x32 range included, gets `EPERM` (docker's `defaultErrnoRet`).
//!
//! See docs/runtime.md for what is denied, side by side with docker.

mod bpf;
pub mod profile;
pub mod table;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use bpf::{Insn, Program};
pub use profile::CLONE_NS_FLAGS;

/// `AUDIT_ARCH_*` of the target.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E;
/// `AUDIT_ARCH_*` of the target.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Errors building the filter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    /// A conditional jump is longer than classic BPF allows.
    #[error("seccomp program too long: jump of {0} instructions")]
    JumpTooFar(usize),
    /// The program has more instructions than the kernel accepts.
    #[error("seccomp program too long: {0} instructions")]
    TooLong(usize),
    /// A jump goes to a label that was never placed.
    #[error("seccomp program jumps to a label that is not placed")]
    UnboundLabel,
    /// A jump goes backwards (classic BPF only jumps forward).
    #[error("seccomp program jumps backwards")]
    BackwardJump,
}

/// What the filter answers for one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run it.
    Allow,
    /// Fail it with this errno.
    Errno(i32),
    /// Run it when the rule holds for its arguments, else fail it with `EPERM`.
    Check(ArgRule),
}

/// A rule on one argument, compared on its low 32 bits (the syscalls it is used for take an
/// `int` or `unsigned int` there, or only read those bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgRule {
    /// The argument is one of the values.
    OneOf {
        /// The argument's index.
        arg: u8,
        /// The values allowed.
        values: &'static [u32],
    },
    /// The argument is none of the values.
    NoneOf {
        /// The argument's index.
        arg: u8,
        /// The values refused.
        values: &'static [u32],
    },
    /// The argument has none of the mask's bits set.
    NoBits {
        /// The argument's index.
        arg: u8,
        /// The bits refused.
        mask: u32,
    },
}

/// The `EPERM` every syscall outside the profile gets.
pub const DEFAULT_ERRNO: i32 = libc::EPERM;

/// `SECCOMP_RET_ERRNO | errno`.
pub const fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

/// The bit of a capability name (`CAP_SYS_ADMIN`) in a capability mask.
fn cap_bit(name: &str) -> Option<u32> {
    super::spec::CAPABILITY_NAMES
        .iter()
        .position(|c| *c == name)
        .and_then(|p| u32::try_from(p).ok())
}

fn has_cap(cap_mask: u64, name: &str) -> bool {
    cap_bit(name).is_some_and(|b| b < 64 && cap_mask & (1u64 << b) != 0)
}

/// The capability mask of docker's (and Bolt's) default capability set.
pub fn default_cap_mask() -> u64 {
    super::spec::DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|c| cap_bit(c))
        .filter(|b| *b < 64)
        .fold(0, |m, b| m | (1u64 << b))
}

/// Docker's default profile for a capsule whose bounding set is `cap_mask`: the action of every
/// syscall name it lists, for every ABI (names this architecture lacks included). A name not
/// here gets `EPERM`.
pub fn actions(cap_mask: u64) -> BTreeMap<&'static str, Action> {
    let mut out = BTreeMap::new();
    let allowed = profile::ALLOWED
        .iter()
        .chain(profile::ALLOWED_SINCE_4_8)
        .chain(
            profile::ARCH_ALLOWED
                .iter()
                .filter(|(arches, _)| arches.contains(&profile::ARCH))
                .flat_map(|(_, names)| names.iter()),
        );
    for name in allowed {
        out.insert(*name, Action::Allow);
    }
    out.insert(
        "personality",
        Action::Check(ArgRule::OneOf {
            arg: 0,
            values: profile::PERSONALITY_ALLOWED,
        }),
    );
    out.insert(
        "socket",
        Action::Check(ArgRule::NoneOf {
            arg: 0,
            values: profile::SOCKET_DENIED_FAMILIES,
        }),
    );
    if !has_cap(cap_mask, "CAP_SYS_ADMIN") {
        out.insert(
            "clone",
            Action::Check(ArgRule::NoBits {
                arg: 0,
                mask: CLONE_NS_FLAGS,
            }),
        );
        // libc falls back to clone, whose flags the filter can read (clone3's are in memory).
        out.insert("clone3", Action::Errno(libc::ENOSYS));
    }
    for (cap, names) in profile::CAP_ALLOWED {
        if has_cap(cap_mask, cap) {
            for name in *names {
                out.insert(*name, Action::Allow);
            }
        }
    }
    out
}

/// [`actions`] by this architecture's syscall number; names it lacks are skipped.
pub fn actions_by_number(cap_mask: u64) -> BTreeMap<u32, Action> {
    actions(cap_mask)
        .into_iter()
        .filter_map(|(name, a)| table::number(name).map(|nr| (nr, a)))
        .collect()
}

/// The syscalls of this architecture that a capsule with `cap_mask` cannot make at all (they
/// get `EPERM` whatever their arguments), by name.
pub fn denied(cap_mask: u64) -> Vec<&'static str> {
    let actions = actions(cap_mask);
    let mut out: Vec<&str> = table::SYSCALLS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !actions.contains_key(name))
        .collect();
    out.sort_unstable();
    out
}

/// The filter for a capsule whose bounding set is `cap_mask`.
pub fn filter(cap_mask: u64) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut p = Program::default();
    let native = p.label();
    p.push(Insn::Load(OFF_ARCH));
    p.push(Insn::JeqTo(AUDIT_ARCH, native));
    p.push(Insn::Ret(libc::SECCOMP_RET_KILL_PROCESS));
    p.push(Insn::Mark(native));
    p.push(Insn::Load(OFF_NR));
    search(&mut p, &ranges(&actions_by_number(cap_mask)));
    p.assemble()
}

/// The filter for docker's default capability set.
pub fn default_filter() -> Result<Vec<libc::sock_filter>, SeccompError> {
    filter(default_cap_mask())
}

/// The capabilities the profile looks at, as a mask.
fn gating_mask() -> u64 {
    profile::CAP_ALLOWED
        .iter()
        .filter_map(|(cap, _)| cap_bit(cap))
        .filter(|b| *b < 64)
        .fold(0, |m, b| m | (1u64 << b))
}

/// The filter for the default capabilities, built once, and the others built when asked.
#[derive(Debug, Clone)]
pub struct Filters {
    key: u64,
    default: Vec<libc::sock_filter>,
}

impl Filters {
    /// Builds the default filter.
    pub fn new() -> Result<Self, SeccompError> {
        Ok(Self {
            key: default_cap_mask() & gating_mask(),
            default: default_filter()?,
        })
    }

    /// The filter for a capsule whose bounding set is `cap_mask`.
    pub fn for_caps(&self, cap_mask: u64) -> Result<Vec<libc::sock_filter>, SeccompError> {
        if cap_mask & gating_mask() == self.key {
            Ok(self.default.clone())
        } else {
            filter(cap_mask)
        }
    }

    /// The default filter's length in instructions.
    pub fn default_len(&self) -> usize {
        self.default.len()
    }
}

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// The offset of argument `arg`'s low 32 bits (both targets are little-endian).
fn arg_low(arg: u8) -> u32 {
    OFF_ARGS + 8 * u32::from(arg)
}

/// The whole number space (0 ..= `u32::MAX`) as ranges of one action each: `(first number,
/// action)`, ascending, neighbours different. Numbers without an action get `EPERM`.
fn ranges(by_nr: &BTreeMap<u32, Action>) -> Vec<(u32, Action)> {
    let deny = Action::Errno(DEFAULT_ERRNO);
    let mut out: Vec<(u32, Action)> = Vec::new();
    let mut add = |start: u32, a: Action| {
        if out.last().is_none_or(|(_, last)| *last != a) {
            out.push((start, a));
        }
    };
    let mut next = 0u32;
    let mut covered = false;
    for (nr, a) in by_nr {
        if *nr > next {
            add(next, deny);
        }
        add(*nr, *a);
        match nr.checked_add(1) {
            Some(n) => next = n,
            None => covered = true,
        }
    }
    if !covered {
        add(next, deny);
    }
    out
}

/// A balanced binary search over `ranges` (the syscall number is in the accumulator).
fn search(p: &mut Program, ranges: &[(u32, Action)]) {
    match ranges {
        [] => p.push(Insn::Ret(ret_errno(DEFAULT_ERRNO))),
        [(_, a)] => leaf(p, *a),
        _ => {
            let mid = ranges.len() / 2;
            let upper = p.label();
            p.push(Insn::JgeFar(ranges[mid].0, upper));
            search(p, &ranges[..mid]);
            p.push(Insn::Mark(upper));
            search(p, &ranges[mid..]);
        }
    }
}

/// The instructions that end on one action.
fn leaf(p: &mut Program, action: Action) {
    let allow = Insn::Ret(libc::SECCOMP_RET_ALLOW);
    let deny = Insn::Ret(ret_errno(DEFAULT_ERRNO));
    match action {
        Action::Allow => p.push(allow),
        Action::Errno(e) => p.push(Insn::Ret(ret_errno(e))),
        Action::Check(rule) => {
            let hit = p.label();
            let (arg, on_hit, otherwise) = match rule {
                ArgRule::OneOf { arg, .. } => (arg, allow, deny),
                ArgRule::NoneOf { arg, .. } | ArgRule::NoBits { arg, .. } => (arg, deny, allow),
            };
            p.push(Insn::Load(arg_low(arg)));
            match rule {
                ArgRule::OneOf { values, .. } | ArgRule::NoneOf { values, .. } => {
                    for v in values {
                        p.push(Insn::JeqTo(*v, hit));
                    }
                }
                ArgRule::NoBits { mask, .. } => p.push(Insn::JsetTo(mask, hit)),
            }
            p.push(otherwise);
            p.push(Insn::Mark(hit));
            p.push(on_hit);
        }
    }
}
