//! A [`Syscall`] that records calls instead of making them, for unit tests of setup order.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::RawFd;

use super::{Errno, ExecArgs, Syscall};

/// Records each call as one line (`"mount overlay /x overlay"`), and fails the first call whose
/// line starts with `fail_on` (if set) with the given errno.
#[derive(Debug, Default)]
pub(crate) struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    fail_on: Option<(String, Errno)>,
    /// Errno for every `execve` (there is nothing to exec in a test).
    pub(crate) exec_errno: Option<Errno>,
}

impl RecordingSyscall {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn failing_on(prefix: &str, errno: Errno) -> Self {
        Self {
            fail_on: Some((prefix.to_owned(), errno)),
            ..Self::default()
        }
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn record(&self, line: String) -> Result<(), Errno> {
        let fail = match &self.fail_on {
            Some((prefix, errno)) if line.starts_with(prefix.as_str()) => Some(*errno),
            _ => None,
        };
        self.calls.borrow_mut().push(line);
        match fail {
            Some(errno) => Err(errno),
            None => Ok(()),
        }
    }
}

fn s(c: Option<&CStr>) -> String {
    c.map_or_else(|| "-".to_owned(), |c| c.to_string_lossy().into_owned())
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        self.record(format!(
            "mount {} {} {} {flags:#x} {}",
            s(source),
            s(Some(target)),
            s(fstype),
            s(data)
        ))
    }
    fn move_mount(&self, fd: RawFd, target: &CStr) -> Result<(), Errno> {
        self.record(format!("move_mount {fd} {}", s(Some(target))))
    }
    fn open_tree_clone(&self, source: &CStr, readonly: bool, fd: RawFd) -> Result<(), Errno> {
        let mode = if readonly { "ro" } else { "rw" };
        self.record(format!("open_tree_clone {} {mode} {fd}", s(Some(source))))
    }
    fn umount2(&self, target: &CStr, flags: i32) -> Result<(), Errno> {
        self.record(format!("umount2 {} {flags}", s(Some(target))))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        self.record(format!(
            "pivot_root {} {}",
            s(Some(new_root)),
            s(Some(put_old))
        ))
    }
    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        self.record(format!("chdir {}", s(Some(path))))
    }
    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        self.record(format!("mkdir {} {mode:o}", s(Some(path))))
    }
    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno> {
        self.record(format!("mknod {} {mode:o} {dev}", s(Some(path))))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        self.record(format!("symlink {} {}", s(Some(target)), s(Some(link))))
    }
    fn sethostname(&self, name: &[u8]) -> Result<(), Errno> {
        self.record(format!("sethostname {}", String::from_utf8_lossy(name)))
    }
    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno> {
        self.record(format!("set_controlling_terminal {fd}"))
    }
    fn loopback_up(&self) -> Result<(), Errno> {
        self.record("loopback_up".to_owned())
    }
    fn setns(&self, fd: RawFd, nstype: i32) -> Result<(), Errno> {
        self.record(format!("setns {fd} {nstype:#x}"))
    }
    fn unshare(&self, flags: i32) -> Result<(), Errno> {
        self.record(format!("unshare {flags:#x}"))
    }
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
        self.record(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn drop_bounding_cap(&self, cap: u32) -> Result<(), Errno> {
        self.record(format!("drop_bounding_cap {cap}"))
    }
    fn set_no_new_privs(&self) -> Result<(), Errno> {
        self.record("set_no_new_privs".to_owned())
    }
    fn setgroups(&self, groups: &[u32]) -> Result<(), Errno> {
        self.record(format!("setgroups {groups:?}"))
    }
    fn setresgid(&self, gid: u32) -> Result<(), Errno> {
        self.record(format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> Result<(), Errno> {
        self.record(format!("setresuid {uid}"))
    }
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
        self.record(format!(
            "capset {effective:#x} {permitted:#x} {inheritable:#x}"
        ))
    }
    fn clear_ambient_caps(&self) -> Result<(), Errno> {
        self.record("clear_ambient_caps".to_owned())
    }
    fn seccomp(&self, filter: &[libc::sock_filter]) -> Result<(), Errno> {
        self.record(format!("seccomp {}", filter.len()))
    }
    fn attach_device_filter(&self, cgroup: RawFd, insns: &[super::BpfInsn]) -> Result<(), Errno> {
        let text: Vec<String> = insns
            .iter()
            .map(|i| format!("{:02x}:{:02x}:{}:{:#x}", i.code, i.regs, i.off, i.imm))
            .collect();
        self.record(format!(
            "attach_device_filter {cgroup} {} {}",
            insns.len(),
            text.join(",")
        ))
    }
    fn umask(&self, mode: u32) {
        let _ = self.record(format!("umask {mode:o}"));
    }
    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
        self.record(format!("dup2 {from} {to}"))
    }
    fn close(&self, fd: RawFd) -> Result<(), Errno> {
        self.record(format!("close {fd}"))
    }
    fn cloexec_from(&self, first: u32) -> Result<(), Errno> {
        self.record(format!("cloexec_from {first}"))
    }
    fn read_byte(&self, fd: RawFd) -> Result<usize, Errno> {
        self.record(format!("read_byte {fd}")).map(|()| 1)
    }
    fn write_all(&self, fd: RawFd, buf: &[u8]) -> Result<(), Errno> {
        self.record(format!("write_all {fd} {}", buf.len()))
    }
    fn fork_sibling(&self) -> Result<i32, Errno> {
        // The recording continues as the new process (0).
        self.record("fork_sibling".to_owned()).map(|()| 0)
    }
    fn execve(&self, path: &CStr, args: &ExecArgs) -> Errno {
        let argv: Vec<String> = args
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let _ = self.record(format!("execve {} {}", s(Some(path)), argv.join(" ")));
        self.exec_errno.unwrap_or(Errno::ENOENT)
    }
    fn exit(&self, code: i32) -> ! {
        panic!("recording syscall asked to exit with {code}")
    }
}
