//! The real [`Syscall`] implementation, on libc (nix has no allocation-free wrappers for several
//! of these).

use std::ffi::CStr;
use std::os::fd::RawFd;

use super::{BpfInsn, Errno, ExecArgs, Syscall};

/// `BPF_PROG_LOAD`, `BPF_PROG_ATTACH` (linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE` (`enum bpf_prog_type`).
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` (`enum bpf_attach_type`).
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: other programs (a nested runtime's) may be attached beside ours; the
/// kernel allows an access only when every one of them allows it.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` up to `expected_attach_type`; the kernel takes a
/// shorter attr and treats the rest as zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The syscalls of the running kernel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LinuxSyscall;

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn check_long(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// `MOVE_MOUNT_F_EMPTY_PATH` (linux/mount.h).
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `OPEN_TREE_CLONE` (linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOUNT_ATTR_RDONLY` (linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `struct mount_attr` (linux/mount.h, `MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, private copy of the mount tree at `source` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`), read-only throughout when `readonly` (`mount_setattr(AT_RECURSIVE)`).
/// Called in the parent before a capsule is cloned; the child attaches it with
/// [`Syscall::move_mount`]. Closing the fd without attaching it frees the copy.
pub(crate) fn detached_tree(
    source: &std::path::Path,
    readonly: bool,
) -> Result<std::os::fd::OwnedFd, Errno> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    use std::os::fd::AsRawFd;
    let fd = open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    // Private: nothing mounted under it inside the capsule propagates to the host's peers.
    let attr = MountAttr {
        attr_set: if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr has no glibc wrapper; it gets our open fd, a live NUL-terminated
    // empty path, integer flags and a pointer to `attr`, a live repr(C) `struct mount_attr`
    // whose size is passed with it; the kernel only reads it during the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(fd)
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: u64,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        // SAFETY: every pointer is either NULL (allowed by mount(2) for source, fstype and data)
        // or comes from a live NUL-terminated `CStr` borrowed for the duration of the call.
        check(unsafe {
            libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                flags as libc::c_ulong,
                opt_ptr(data).cast(),
            )
        })
    }

    fn move_mount(&self, fd: RawFd, target: &CStr) -> Result<(), Errno> {
        // SAFETY: move_mount has no glibc wrapper; it gets an fd, a live NUL-terminated empty
        // string, AT_FDCWD, the live NUL-terminated target and integer flags. A bad fd yields
        // EBADF.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    fn open_tree_clone(&self, source: &CStr, readonly: bool, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: open_tree has no glibc wrapper; it gets AT_FDCWD, the live NUL-terminated
        // `source` and integer flags, and returns a new fd (owned here, closed below).
        let tree = check_long(unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                source.as_ptr(),
                (OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint) as libc::c_uint,
            )
        })? as RawFd;
        let attr = MountAttr {
            attr_set: if readonly { MOUNT_ATTR_RDONLY } else { 0 },
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        };
        // SAFETY: as in `detached_tree`: our open fd, a live empty path, integer flags and a
        // pointer to the live repr(C) `attr` with its size; the kernel only reads it.
        let set = check_long(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                std::ptr::addr_of!(attr),
                std::mem::size_of::<MountAttr>(),
            )
        });
        // SAFETY: dup3 only reads its integer arguments; `fd` is the slot the parent reserved.
        let moved = set.and_then(|_| check(unsafe { libc::dup3(tree, fd, libc::O_CLOEXEC) }));
        // SAFETY: `tree` is our own fd, closed exactly once (the copy on `fd` stays).
        unsafe { libc::close(tree) };
        moved
    }

    fn umount2(&self, target: &CStr, flags: i32) -> Result<(), Errno> {
        // SAFETY: `target` is a live NUL-terminated string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        // SAFETY: both arguments are live NUL-terminated strings; pivot_root has no glibc
        // wrapper, so it goes through syscall(2) with exactly the two pointer arguments it takes.
        check_long(unsafe {
            libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
        })
        .map(drop)
    }

    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        // SAFETY: `path` is a live NUL-terminated string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        // SAFETY: `path` is a live NUL-terminated string.
        check(unsafe { libc::mkdir(path.as_ptr(), mode as libc::mode_t) })
    }

    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno> {
        // SAFETY: `path` is a live NUL-terminated string; mode and dev are plain integers.
        check(unsafe { libc::mknod(path.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        // SAFETY: both arguments are live NUL-terminated strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn sethostname(&self, name: &[u8]) -> Result<(), Errno> {
        // SAFETY: the pointer and length describe the borrowed slice; sethostname does not need
        // a terminating NUL.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: setsid takes no arguments and touches no memory.
        check(unsafe { libc::setsid() })?;
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal a terminal another
        // session holds); `fd` is only read by the kernel.
        check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        // SAFETY: plain socket(2) call; the fd it returns is closed below on every path.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(Errno::last());
        }
        // SAFETY: `ifreq` is a plain C struct for which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `sock` is an open socket and `req` a valid, writable ifreq naming "lo".
        let result =
            check(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) }).and_then(|()| {
                // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member of the union.
                unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
                // SAFETY: as above, with the flags to set.
                check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) })
            });
        // SAFETY: `sock` is our own open fd, closed exactly once.
        unsafe { libc::close(sock) };
        result
    }

    fn setns(&self, fd: RawFd, nstype: i32) -> Result<(), Errno> {
        // SAFETY: setns only reads its integer arguments; a bad fd yields EBADF.
        check(unsafe { libc::setns(fd, nstype) })
    }

    fn unshare(&self, flags: i32) -> Result<(), Errno> {
        // SAFETY: unshare only reads its integer argument.
        check(unsafe { libc::unshare(flags) })
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit on the stack, read by the kernel during the call.
        check(unsafe { libc::setrlimit(resource as _, &lim) })
    }

    fn drop_bounding_cap(&self, cap: u32) -> Result<(), Errno> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })
    }

    // The three id calls below go through syscall(2) on purpose: glibc's wrappers broadcast the
    // change to every thread it knows of (the "setxid" signal dance), and a child cloned from a
    // multi-threaded process would wait forever for threads that do not exist in it.

    fn setgroups(&self, groups: &[u32]) -> Result<(), Errno> {
        // SAFETY: the pointer and length describe the borrowed slice of gid_t (u32) values; the
        // raw syscall takes exactly (size, list).
        check_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
            .map(drop)
    }

    fn setresgid(&self, gid: u32) -> Result<(), Errno> {
        // SAFETY: integer arguments only.
        check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
    }

    fn setresuid(&self, uid: u32) -> Result<(), Errno> {
        // SAFETY: integer arguments only.
        check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
        let mut header = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: effective as u32,
                permitted: permitted as u32,
                inheritable: inheritable as u32,
            },
            CapData {
                effective: (effective >> 32) as u32,
                permitted: (permitted >> 32) as u32,
                inheritable: (inheritable >> 32) as u32,
            },
        ];
        // SAFETY: version 3 of the capset ABI takes a header and an array of two data structs,
        // which is exactly what we pass; both live on the stack for the whole call.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        })
        .map(drop)
    }

    fn clear_ambient_caps(&self) -> Result<(), Errno> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        })
    }

    fn seccomp(&self, filter: &[libc::sock_filter]) -> Result<(), Errno> {
        let Ok(len) = u16::try_from(filter.len()) else {
            return Err(Errno::E2BIG);
        };
        let prog = libc::sock_fprog {
            len,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `len` valid instructions borrowed for the call; the kernel
        // copies the program and never writes through the pointer.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        })
        .map(drop)
    }

    fn attach_device_filter(&self, cgroup: RawFd, insns: &[BpfInsn]) -> Result<(), Errno> {
        let Ok(insn_cnt) = u32::try_from(insns.len()) else {
            return Err(Errno::E2BIG);
        };
        let Ok(target_fd) = u32::try_from(cgroup) else {
            return Err(Errno::EBADF);
        };
        let license = c"Apache-2.0";
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(b"bolt_devices") {
            *d = *s;
        }
        let load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type: 0,
        };
        // SAFETY: bpf(2) reads `size_of::<ProgLoadAttr>()` bytes of `load`, a repr(C) prefix of
        // `union bpf_attr` alive for the call, and through it `insn_cnt` instructions of the
        // borrowed slice (`BpfInsn` is repr(C) `struct bpf_insn`) and the NUL-terminated license.
        // It writes nothing through them (no log buffer) and returns a new fd or -1.
        let prog = check_long(unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &load as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        })?;
        let Ok(prog) = RawFd::try_from(prog) else {
            return Err(Errno::EBADF);
        };
        // SAFETY: bpf(BPF_PROG_LOAD) just returned this fd; nothing else owns it, and the
        // OwnedFd closes it exactly once.
        let prog = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(prog) };
        let attach = ProgAttachAttr {
            target_fd,
            attach_bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            replace_bpf_fd: 0,
        };
        // SAFETY: bpf(2) reads `size_of::<ProgAttachAttr>()` bytes of `attach`, alive for the
        // call, holding two fds we keep open until it returns.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_ATTACH,
                &attach as *const ProgAttachAttr,
                std::mem::size_of::<ProgAttachAttr>(),
            )
        })
        .map(drop)
    }

    fn umask(&self, mode: u32) {
        // SAFETY: umask cannot fail and only reads its argument.
        unsafe { libc::umask(mode as libc::mode_t) };
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
        if from == to {
            // SAFETY: fcntl on an fd with an integer argument; a bad fd yields EBADF.
            return check(unsafe { libc::fcntl(to, libc::F_SETFD, 0) });
        }
        // SAFETY: dup2 only reads its integer arguments.
        check(unsafe { libc::dup2(from, to) }).map(drop)
    }

    fn close(&self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: closing an fd this process owns in the child copy of the fd table; the parent's
        // copy is unaffected.
        check(unsafe { libc::close(fd) })
    }

    fn cloexec_from(&self, first: u32) -> Result<(), Errno> {
        // SAFETY: close_range with integer arguments only.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        })
        .map(drop)
    }

    fn read_byte(&self, fd: RawFd) -> Result<usize, Errno> {
        let mut byte = 0u8;
        loop {
            // SAFETY: reads at most one byte into a stack variable that outlives the call.
            let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = Errno::last();
            if err != Errno::EINTR {
                return Err(err);
            }
        }
    }

    fn write_all(&self, fd: RawFd, mut buf: &[u8]) -> Result<(), Errno> {
        while !buf.is_empty() {
            // SAFETY: the pointer and length describe the borrowed slice.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = Errno::last();
                if err == Errno::EINTR {
                    continue;
                }
                return Err(err);
            }
            buf = buf.get(n as usize..).unwrap_or_default();
        }
        Ok(())
    }

    fn fork_sibling(&self) -> Result<i32, Errno> {
        // SAFETY: a raw clone with fork semantics (no CLONE_VM, no new stack). It is called only
        // from a single-threaded child set up by the runtime, which goes on to execute prepared
        // steps that do not allocate.
        let pid = check_long(unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        })?;
        Ok(pid as i32)
    }

    fn execve(&self, path: &CStr, args: &ExecArgs) -> Errno {
        // Ignored signals and the signal mask survive execve: a capsule must not inherit the
        // caller's (Rust ignores SIGPIPE, a shell may ignore SIGINT). Handlers reset by
        // themselves on exec; ignored dispositions do not, so every signal goes back to default.
        // The raw syscall, because glibc refuses its reserved real-time signals (32, 33), which a
        // caller may still have ignored. An all-zero kernel `sigaction` is SIG_DFL, no flags,
        // empty mask.
        let default_action = [0u64; 4];
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: rt_sigaction reads 32 bytes from `default_action`, alive for the call,
            // writes nothing (null old action), and is async-signal-safe.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
        }
        // SAFETY: an empty set built on the stack; sigprocmask is async-signal-safe.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        // SAFETY: `path` is NUL-terminated and `args` holds NULL-terminated arrays of pointers
        // into `CString`s it owns, all alive for the call.
        unsafe {
            libc::execve(
                path.as_ptr(),
                args.argv_ptrs.as_ptr(),
                args.envp_ptrs.as_ptr(),
            )
        };
        Errno::last()
    }

    fn exit(&self, code: i32) -> ! {
        // SAFETY: _exit ends the process without running atexit handlers or destructors, which
        // is what a cloned child of a multi-threaded process must do.
        unsafe { libc::_exit(code) }
    }
}

/// Clones the calling process with `flags` (namespace flags; `SIGCHLD` is added) and fork
/// semantics, runs `child` in the new process and ends it with `child`'s return value.
///
/// Returns the child's pid (as seen from the caller's pid namespace) in the caller.
///
/// `child` runs in a copy of the caller's memory with only the calling thread: locks held by
/// other threads stay held forever there, so it must not allocate, lock or touch stdio. The
/// runtime's plan runner is written for exactly that.
pub(crate) fn clone_child(flags: i32, child: &mut dyn FnMut() -> i32) -> Result<i32, Errno> {
    // SAFETY: a raw clone with fork semantics: the child gets a private copy of the address
    // space (no CLONE_VM) and continues on its copy of the current stack (stack argument 0), so
    // no Rust invariant about shared memory is broken. The child only runs `child`, whose contract
    // (above) forbids allocation and locks, then `_exit`s without unwinding back into the caller.
    let pid = check_long(unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    })?;
    if pid == 0 {
        // A panic must never unwind out of the child into the caller's frames (that would run
        // the parent's code twice); the plan runner does not panic, this is the backstop.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(125);
        // SAFETY: see `Syscall::exit`: end the child without running destructors.
        unsafe { libc::_exit(code) }
    }
    Ok(pid as i32)
}
