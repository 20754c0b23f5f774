//! Unit tests of the profile and the filter, run through a classic-BPF interpreter.
#![allow(clippy::unwrap_used)]

use super::bpf::{Insn, Program, JA, JEQ_K, JGE_K, JSET_K, LD_W_ABS, RET_K};
use super::*;

/// A classic-BPF interpreter for the instructions the assembler emits.
fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            JA => pc += i.k as usize,
            JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
            JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
            JSET_K => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }),
            RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn call(prog: &[libc::sock_filter], name: &str, arg0: u64) -> u32 {
    let nr = table::number(name).unwrap_or_else(|| panic!("{name} is not a syscall here"));
    run(prog, AUDIT_ARCH, nr, [arg0, 0, 0, 0, 0, 0])
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = ret_errno(libc::EPERM);

fn mask(caps: &[&str]) -> u64 {
    caps.iter()
        .fold(0, |m, c| m | (1u64 << cap_bit(c).unwrap()))
}

/// Names every container needs, all in docker's list.
const CORE: &[&str] = &[
    "read",
    "write",
    "openat",
    "close",
    "mmap",
    "munmap",
    "mprotect",
    "brk",
    "execve",
    "exit_group",
    "futex",
    "clone",
    "wait4",
    "rt_sigaction",
    "rt_sigreturn",
    "getpid",
    "socket",
    "bind",
    "listen",
    "accept4",
    "connect",
    "sendto",
    "recvfrom",
    "epoll_wait",
    "epoll_ctl",
    "poll",
    "fcntl",
    "getdents64",
    "newfstatat",
    "statx",
    "chown",
    "setuid",
    "setgid",
    "setgroups",
    "capset",
    "prctl",
    "getrandom",
    "rseq",
    "set_robust_list",
    "prlimit64",
    "chroot",
    "mknod",
    "io_setup",
    "personality",
    "fchmodat2",
    "close_range",
    "pidfd_open",
];

/// Names docker's default profile refuses a capsule with the default capabilities.
const DANGEROUS: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsmount",
    "open_tree",
    "move_mount",
    "unshare",
    "setns",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "open_by_handle_at",
    "kcmp",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "syslog",
    "quotactl",
    "vhangup",
    "lookup_dcookie",
    "mbind",
    "set_mempolicy",
    "move_pages",
    "migrate_pages",
    "fanotify_init",
    "pidfd_getfd",
    "process_madvise",
    "sethostname",
    "setdomainname",
    "nfsservctl",
];

#[cfg(target_arch = "x86_64")]
const DANGEROUS_ARCH: &[&str] = &[
    "iopl",
    "ioperm",
    "uselib",
    "_sysctl",
    "sysfs",
    "ustat",
    "create_module",
    "query_module",
];
#[cfg(target_arch = "aarch64")]
const DANGEROUS_ARCH: &[&str] = &[];

#[test]
fn the_allow_list_has_dockers_core_names_and_not_the_dangerous_ones() {
    let actions = actions(default_cap_mask());
    for name in CORE {
        assert!(actions.contains_key(name), "{name} is not allowed");
    }
    let denied = denied(default_cap_mask());
    for name in DANGEROUS.iter().chain(DANGEROUS_ARCH) {
        assert!(!actions.contains_key(name), "{name} is allowed");
        assert!(denied.contains(name), "{name} is not in the denied list");
    }
}

#[test]
fn ordinary_syscalls_are_allowed_and_dangerous_ones_get_eperm() {
    let p = default_filter().unwrap();
    for name in CORE
        .iter()
        .filter(|n| !["clone", "socket", "personality"].contains(n))
    {
        assert_eq!(call(&p, name, 0), ALLOW, "{name}");
    }
    for name in DANGEROUS.iter().chain(DANGEROUS_ARCH) {
        assert_eq!(call(&p, name, 0), EPERM, "{name}");
    }
}

#[test]
fn every_number_gets_its_profile_action() {
    for caps in [default_cap_mask(), mask(&["CAP_SYS_ADMIN"]), u64::MAX, 0] {
        let p = filter(caps).unwrap();
        assert!(p.len() <= bpf::MAX_INSNS);
        let by_nr = actions_by_number(caps);
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([0x3fff_ffff, 0x4000_0000, 0x4000_0001, 0x4000_0100, u32::MAX]);
        for nr in numbers {
            let args = [0, 0, 0, 0, 0, 0];
            let want = match by_nr.get(&nr) {
                Some(Action::Allow) => ALLOW,
                Some(Action::Errno(e)) => ret_errno(*e),
                // Zero arguments: a persona of 0, family 0 (AF_UNSPEC), clone without flags.
                Some(Action::Check(_)) => ALLOW,
                None => EPERM,
            };
            assert_eq!(run(&p, AUDIT_ARCH, nr, args), want, "syscall {nr}");
        }
    }
}

#[test]
fn names_this_architecture_lacks_are_skipped() {
    let actions = actions(default_cap_mask());
    for name in [
        "chown32",
        "_llseek",
        "socketcall",
        "fcntl64",
        "ugetrlimit",
        "riscv_hwprobe",
    ] {
        assert!(actions.contains_key(name), "{name} is in docker's list");
        assert_eq!(table::number(name), None, "{name}");
    }
    let by_nr = actions_by_number(default_cap_mask());
    assert!(by_nr.len() < actions.len());
    assert!(by_nr.len() > 250, "{}", by_nr.len());
    assert_eq!(table::number("no_such_syscall"), None);
}

#[test]
fn personality_takes_dockers_personas_only() {
    let p = default_filter().unwrap();
    for persona in [0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        assert_eq!(call(&p, "personality", persona), ALLOW, "{persona:#x}");
    }
    // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_BSD.
    for persona in [0x0040000, 0x0400000, 0x6] {
        assert_eq!(call(&p, "personality", persona), EPERM, "{persona:#x}");
    }
}

#[test]
fn socket_refuses_af_alg_and_af_vsock() {
    let p = default_filter().unwrap();
    for family in [
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        39,
        41,
    ] {
        assert_eq!(call(&p, "socket", family as u64), ALLOW, "{family}");
    }
    for family in [libc::AF_ALG, libc::AF_VSOCK] {
        assert_eq!(call(&p, "socket", family as u64), EPERM, "{family}");
    }
}

#[test]
fn clone_without_cap_sys_admin_takes_no_namespace_flags_and_clone3_gets_enosys() {
    let p = default_filter().unwrap();
    let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    assert_eq!(call(&p, "clone", fork_flags), ALLOW);
    assert_eq!(call(&p, "clone", thread), ALLOW);
    for ns in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWCGROUP,
    ] {
        assert_eq!(call(&p, "clone", ns as u64 | fork_flags), EPERM, "{ns:#x}");
    }
    assert_eq!(call(&p, "clone3", 0), ret_errno(libc::ENOSYS));
}

#[test]
fn capabilities_open_dockers_gated_syscalls() {
    let admin = filter(mask(&["CAP_SYS_ADMIN"])).unwrap();
    let user = libc::CLONE_NEWUSER as u64;
    assert_eq!(call(&admin, "clone", user), ALLOW);
    assert_eq!(call(&admin, "clone3", 0), ALLOW);
    for name in ["mount", "umount2", "unshare", "setns", "bpf", "sethostname"] {
        assert_eq!(call(&admin, name, 0), ALLOW, "{name}");
    }
    // CAP_SYS_ADMIN opens neither modules nor kexec nor keyrings.
    for name in ["init_module", "kexec_load", "add_key", "keyctl"] {
        assert_eq!(call(&admin, name, 0), EPERM, "{name}");
    }
    let ptrace = filter(mask(&["CAP_SYS_PTRACE"])).unwrap();
    assert_eq!(call(&ptrace, "kcmp", 0), ALLOW);
    assert_eq!(call(&ptrace, "pidfd_getfd", 0), ALLOW);
    let nice = filter(mask(&["CAP_SYS_NICE"])).unwrap();
    assert_eq!(call(&nice, "mbind", 0), ALLOW);
    // chroot is gated by CAP_SYS_CHROOT, in the default set.
    assert_eq!(call(&filter(0).unwrap(), "chroot", 0), EPERM);
    assert_eq!(call(&default_filter().unwrap(), "chroot", 0), ALLOW);
}

#[test]
fn every_gating_capability_is_known() {
    for (cap, _) in profile::CAP_ALLOWED {
        assert!(cap_bit(cap).is_some(), "{cap}");
    }
    assert_ne!(default_cap_mask(), 0);
}

#[test]
fn foreign_architecture_is_killed() {
    let p = default_filter().unwrap();
    let i386 = 0x4000_0003;
    let nr = table::number("read").unwrap();
    assert_eq!(run(&p, i386, nr, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_range_is_denied() {
    let p = default_filter().unwrap();
    // x32's read and execve.
    for nr in [0x4000_0000, 0x4000_0000 + 520] {
        assert_eq!(run(&p, AUDIT_ARCH, nr, [0; 6]), EPERM);
    }
}

macro_rules! same_as_libc {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), libc::$name as u32)),*]
    };
}

#[test]
fn the_table_agrees_with_libc() {
    let known = same_as_libc!(
        SYS_read,
        SYS_write,
        SYS_openat,
        SYS_close,
        SYS_mmap,
        SYS_clone,
        SYS_clone3,
        SYS_execve,
        SYS_exit_group,
        SYS_socket,
        SYS_personality,
        SYS_mount,
        SYS_umount2,
        SYS_unshare,
        SYS_setns,
        SYS_bpf,
        SYS_keyctl,
        SYS_add_key,
        SYS_kexec_load,
        SYS_init_module,
        SYS_open_by_handle_at,
        SYS_io_uring_setup,
        SYS_userfaultfd,
        SYS_perf_event_open,
        SYS_pidfd_open,
        SYS_close_range,
        SYS_openat2,
        SYS_faccessat2,
        SYS_landlock_create_ruleset,
        SYS_memfd_secret,
        SYS_futex_waitv,
        SYS_set_mempolicy_home_node,
        SYS_mseal,
        SYS_statx,
        SYS_rseq,
        SYS_newfstatat,
        SYS_getrandom,
        SYS_move_pages,
        SYS_mbind,
    );
    for (name, nr) in known {
        let name = name.trim_start_matches("SYS_");
        assert_eq!(table::number(name), Some(nr), "{name}");
        assert_eq!(table::name(nr), Some(name), "{nr}");
    }
    let mut names: Vec<&str> = table::SYSCALLS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), table::SYSCALLS.len(), "a name twice");
    assert!(
        table::SYSCALLS.windows(2).all(|w| w[0].1 < w[1].1),
        "a number twice or out of order"
    );
}

#[test]
fn far_jumps_reach_past_255_instructions_and_short_ones_refuse() {
    let mut p = Program::default();
    let far = p.label();
    p.push(Insn::Load(0));
    p.push(Insn::JgeFar(5, far));
    for _ in 0..300 {
        p.push(Insn::Ret(EPERM));
    }
    p.push(Insn::Mark(far));
    p.push(Insn::Ret(ALLOW));
    let prog = p.assemble().unwrap();
    assert_eq!(run(&prog, 0, 7, [0; 6]), ALLOW);
    assert_eq!(run(&prog, 0, 4, [0; 6]), EPERM);

    let mut p = Program::default();
    let far = p.label();
    p.push(Insn::JeqTo(5, far));
    for _ in 0..300 {
        p.push(Insn::Ret(EPERM));
    }
    p.push(Insn::Mark(far));
    p.push(Insn::Ret(ALLOW));
    assert_eq!(p.assemble().unwrap_err(), SeccompError::JumpTooFar(300));

    let mut p = Program::default();
    let nowhere = p.label();
    p.push(Insn::JeqTo(5, nowhere));
    assert_eq!(p.assemble().unwrap_err(), SeccompError::UnboundLabel);
}
