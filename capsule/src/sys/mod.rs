//! The one place in `bolt-capsule` where raw syscalls and `unsafe` live.
//!
//! The runtime describes what a capsule's first process must do as a plan of steps (see
//! `runtime::plan`) and runs that plan against the [`Syscall`] trait. [`LinuxSyscall`] is the real
//! implementation; `RecordingSyscall` (tests only) records every call so unit tests can check the
//! order of setup steps without privileges.
//!
//! Every method of [`Syscall`] is called in a freshly cloned child of a possibly multi-threaded
//! process, so the Linux implementation never allocates or takes a lock: all strings arrive as
//! prepared `&CStr`, argument vectors as a prepared [`ExecArgs`].

// The workspace denies `unsafe_code`; this module is the single, audited exception: it wraps
// libc calls (clone, capset, seccomp, prctl, execve, ...) that have no safe equivalent in nix, and
// every `unsafe` block below carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod linux;

#[cfg(test)]
pub(crate) mod fake;

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

pub use nix::errno::Errno;

pub(crate) use linux::{clone_child, detached_tree, LinuxSyscall};

/// Namespace flags, re-exported as plain integers for plans.
pub(crate) mod ns {
    pub const NEWNS: i32 = libc::CLONE_NEWNS;
    pub const NEWUTS: i32 = libc::CLONE_NEWUTS;
    pub const NEWIPC: i32 = libc::CLONE_NEWIPC;
    pub const NEWPID: i32 = libc::CLONE_NEWPID;
    pub const NEWNET: i32 = libc::CLONE_NEWNET;
    pub const NEWCGROUP: i32 = libc::CLONE_NEWCGROUP;
    pub const NEWUSER: i32 = libc::CLONE_NEWUSER;
}

/// An `argv`/`envp` pair prepared for `execve(2)` before the clone, so the child does not
/// allocate.
pub(crate) struct ExecArgs {
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ExecArgs {
    /// Builds the NULL-terminated pointer arrays. The `CString`s move into the struct, so the
    /// pointers stay valid as long as it lives (a `CString`'s heap buffer does not move).
    pub(crate) fn new(argv: Vec<CString>, envp: Vec<CString>) -> Self {
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Self {
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        }
    }

    /// The arguments, for display and tests.
    pub(crate) fn argv(&self) -> &[CString] {
        &self._argv
    }
}

impl std::fmt::Debug for ExecArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecArgs")
            .field("argv", &self._argv)
            .field("envc", &self._envp.len())
            .finish()
    }
}

/// One eBPF instruction (`struct bpf_insn`, linux/bpf.h): opcode, destination register in the low
/// and source register in the high nibble of `regs`, offset and immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// The opcode.
    pub code: u8,
    /// `dst | src << 4`.
    pub regs: u8,
    /// Jump or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// Linux `dev_t` from a major and minor number (glibc's `makedev`).
pub(crate) const fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// The syscalls a capsule's setup needs, as seen by the plan runner.
///
/// Implementations used in a cloned child must not allocate.
pub(crate) trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> Result<(), Errno>;
    /// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches the detached
    /// mount tree behind `fd` (made by [`detached_tree`]) on `target`.
    fn move_mount(&self, fd: RawFd, target: &CStr) -> Result<(), Errno>;
    /// A detached, private, recursive copy of the mount tree at `source` (`open_tree(
    /// OPEN_TREE_CLONE | AT_RECURSIVE)`), read-only throughout when `readonly`, put on fd `fd`
    /// (close-on-exec, replacing what was there). The in-child twin of [`detached_tree`], for
    /// a capsule in its own user namespace: only there may an unprivileged caller clone mounts.
    fn open_tree_clone(&self, source: &CStr, readonly: bool, fd: RawFd) -> Result<(), Errno>;
    /// `umount2(2)`.
    fn umount2(&self, target: &CStr, flags: i32) -> Result<(), Errno>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno>;
    /// `chdir(2)`.
    fn chdir(&self, path: &CStr) -> Result<(), Errno>;
    /// `mkdir(2)`.
    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno>;
    /// `mknod(2)`.
    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno>;
    /// `symlink(2)`.
    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &[u8]) -> Result<(), Errno>;
    /// Sets `IFF_UP` on `lo` in the current network namespace.
    fn loopback_up(&self) -> Result<(), Errno>;
    /// `setns(2)`.
    fn setns(&self, fd: RawFd, nstype: i32) -> Result<(), Errno>;
    /// `unshare(2)`.
    fn unshare(&self, flags: i32) -> Result<(), Errno>;
    /// `setrlimit(2)`.
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno>;
    /// `prctl(PR_CAPBSET_DROP, cap)`.
    fn drop_bounding_cap(&self, cap: u32) -> Result<(), Errno>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    /// `setgroups(2)`.
    fn setgroups(&self, groups: &[u32]) -> Result<(), Errno>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&self, gid: u32) -> Result<(), Errno>;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&self, uid: u32) -> Result<(), Errno>;
    /// `capset(2)` with 64-bit masks (version 3 of the ABI).
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno>;
    /// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
    fn clear_ambient_caps(&self) -> Result<(), Errno>;
    /// Installs a classic-BPF seccomp filter (`seccomp(SECCOMP_SET_MODE_FILTER)`).
    fn seccomp(&self, filter: &[libc::sock_filter]) -> Result<(), Errno>;
    /// Loads `insns` as a `BPF_PROG_TYPE_CGROUP_DEVICE` program (raw `bpf(BPF_PROG_LOAD)`) and
    /// attaches it to the cgroup directory open at `cgroup` (`BPF_PROG_ATTACH`,
    /// `BPF_CGROUP_DEVICE`, `BPF_F_ALLOW_MULTI`). The program stays attached while the cgroup
    /// lives; the program's fd is closed before this returns. Called in the parent.
    fn attach_device_filter(&self, cgroup: RawFd, insns: &[BpfInsn]) -> Result<(), Errno>;
    /// `umask(2)`.
    fn umask(&self, mode: u32);
    /// `dup2(2)`; when `from == to` it clears `FD_CLOEXEC` instead.
    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno>;
    /// `setsid(2)`, then `ioctl(fd, TIOCSCTTY)`: the caller leads a new session whose
    /// controlling terminal is `fd` (job control and ^C for `-t`).
    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno>;
    /// `close(2)`.
    fn close(&self, fd: RawFd) -> Result<(), Errno>;
    /// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: every fd from `first` closes on exec.
    fn cloexec_from(&self, first: u32) -> Result<(), Errno>;
    /// Reads one byte; `Ok(0)` at end of file.
    fn read_byte(&self, fd: RawFd) -> Result<usize, Errno>;
    /// Writes the whole buffer.
    fn write_all(&self, fd: RawFd, buf: &[u8]) -> Result<(), Errno>;
    /// `clone(CLONE_PARENT)`: the new process is a sibling of the caller (a child of the
    /// caller's parent). Returns 0 in the new process and its pid in the caller.
    fn fork_sibling(&self) -> Result<i32, Errno>;
    /// `execve(2)`; returns only on failure.
    fn execve(&self, path: &CStr, args: &ExecArgs) -> Errno;
    /// `_exit(2)`.
    fn exit(&self, code: i32) -> !;
}
