//! Bolt's default seccomp profile: a small deny-list compiled to classic BPF by hand.
//!
//! The filter (installed last, right before `execve`):
//! 1. kills the process for a foreign architecture (no i386/x32 back doors),
//! 2. on x86_64 rejects the x32 syscall range with `EPERM`,
//! 3. rejects the syscalls in [`DENIED`] with `EPERM` (kernel modules, kexec, reboot, keyrings,
//!    bpf, perf, mount API, namespaces, clock setting, swap, io_uring, ...),
//! 4. rejects `clone` with any namespace flag with `EPERM` and `clone3` with `ENOSYS` (so libc
//!    falls back to `clone`, whose flags the filter can see), as docker's profile does,
//! 5. allows everything else.
//!
//! This is a deny-list, stricter than nothing and looser than docker's allow-list: see
//! docs/runtime.md.

/// `AUDIT_ARCH_*` of the target.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E;
/// `AUDIT_ARCH_*` of the target.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Errors building the filter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    /// A jump in the program is longer than classic BPF allows.
    #[error("seccomp program too long: jump of {0} instructions")]
    JumpTooFar(usize),
}

macro_rules! denied {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// The syscalls the default profile rejects with `EPERM`, by name and number.
        pub const DENIED: &[(&str, i64)] = &[
            $($(#[$m])* (stringify!($name), libc::$name as i64),)*
        ];
    };
}

denied!(
    SYS_acct,
    SYS_add_key,
    SYS_bpf,
    SYS_clock_adjtime,
    SYS_clock_settime,
    SYS_delete_module,
    SYS_finit_module,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fsopen,
    SYS_fspick,
    SYS_init_module,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_uring_setup,
    SYS_kcmp,
    SYS_kexec_file_load,
    SYS_kexec_load,
    SYS_keyctl,
    SYS_lookup_dcookie,
    SYS_mount,
    SYS_mount_setattr,
    SYS_move_mount,
    SYS_open_by_handle_at,
    SYS_open_tree,
    SYS_perf_event_open,
    SYS_pivot_root,
    SYS_quotactl,
    SYS_reboot,
    SYS_request_key,
    SYS_setns,
    SYS_settimeofday,
    SYS_swapoff,
    SYS_swapon,
    SYS_syslog,
    SYS_umount2,
    SYS_unshare,
    SYS_userfaultfd,
    SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    SYS_adjtimex,
    #[cfg(target_arch = "x86_64")]
    SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    SYS_modify_ldt,
);

/// The namespace flags `clone` may not carry.
pub const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// `SECCOMP_RET_ERRNO | errno`.
pub const fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

enum Insn {
    Load(u32),
    /// Jump to label when equal, else fall through.
    JeqTo(u32, Label),
    /// Fall through when equal, else jump to label.
    JneTo(u32, Label),
    JgeTo(u32, Label),
    JsetTo(u32, Label),
    Ret(u32),
    Mark(Label),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Eperm,
    Enosys,
    Kill,
    CloneCheck,
}

/// Builds the default filter for the target architecture.
pub fn default_filter() -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut p = vec![
        Insn::Load(OFF_ARCH),
        Insn::JneTo(AUDIT_ARCH, Label::Kill),
        Insn::Load(OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.push(Insn::JgeTo(0x4000_0000, Label::Eperm));
    for (_, nr) in DENIED {
        p.push(Insn::JeqTo(*nr as u32, Label::Eperm));
    }
    p.push(Insn::JeqTo(libc::SYS_clone3 as u32, Label::Enosys));
    p.push(Insn::JeqTo(libc::SYS_clone as u32, Label::CloneCheck));
    p.push(Insn::Ret(libc::SECCOMP_RET_ALLOW));
    p.push(Insn::Mark(Label::CloneCheck));
    p.push(Insn::Load(OFF_ARG0_LOW));
    p.push(Insn::JsetTo(CLONE_NS_FLAGS, Label::Eperm));
    p.push(Insn::Ret(libc::SECCOMP_RET_ALLOW));
    p.push(Insn::Mark(Label::Eperm));
    p.push(Insn::Ret(ret_errno(libc::EPERM)));
    p.push(Insn::Mark(Label::Enosys));
    p.push(Insn::Ret(ret_errno(libc::ENOSYS)));
    p.push(Insn::Mark(Label::Kill));
    p.push(Insn::Ret(libc::SECCOMP_RET_KILL_PROCESS));
    assemble(&p)
}

fn assemble(prog: &[Insn]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    // First pass: instruction index of every label.
    let mut labels = Vec::new();
    let mut index = 0usize;
    for insn in prog {
        match insn {
            Insn::Mark(l) => labels.push((*l, index)),
            _ => index += 1,
        }
    }
    let target = |l: Label, at: usize| -> Result<u8, SeccompError> {
        let to = labels
            .iter()
            .find(|(m, _)| *m == l)
            .map_or(at + 1, |(_, i)| *i);
        let off = to.saturating_sub(at + 1);
        u8::try_from(off).map_err(|_| SeccompError::JumpTooFar(off))
    };
    let mut out = Vec::with_capacity(index);
    for insn in prog {
        let at = out.len();
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        out.push(match *insn {
            Insn::Mark(_) => continue,
            Insn::Load(off) => f(LD_W_ABS, 0, 0, off),
            Insn::JeqTo(k, l) => f(JEQ_K, target(l, at)?, 0, k),
            Insn::JneTo(k, l) => f(JEQ_K, 0, target(l, at)?, k),
            Insn::JgeTo(k, l) => f(JGE_K, target(l, at)?, 0, k),
            Insn::JsetTo(k, l) => f(JSET_K, target(l, at)?, 0, k),
            Insn::Ret(k) => f(RET_K, 0, 0, k),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions the assembler emits.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
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
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                JSET_K => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn nr(n: i64) -> u32 {
        n as u32
    }

    #[test]
    fn allows_ordinary_syscalls() {
        let p = default_filter().unwrap();
        for n in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_openat,
        ] {
            assert_eq!(run(&p, AUDIT_ARCH, nr(n), 0), libc::SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn denies_the_list_with_eperm() {
        let p = default_filter().unwrap();
        for (name, n) in DENIED {
            assert_eq!(
                run(&p, AUDIT_ARCH, nr(*n), 0),
                ret_errno(libc::EPERM),
                "{name}"
            );
        }
    }

    #[test]
    fn clone_with_namespace_flags_is_denied_and_plain_clone_allowed() {
        let p = default_filter().unwrap();
        let clone = nr(libc::SYS_clone);
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
        assert_eq!(
            run(&p, AUDIT_ARCH, clone, fork_flags),
            libc::SECCOMP_RET_ALLOW
        );
        let user = libc::CLONE_NEWUSER as u64 | fork_flags;
        assert_eq!(run(&p, AUDIT_ARCH, clone, user), ret_errno(libc::EPERM));
        let net = libc::CLONE_NEWNET as u64;
        assert_eq!(run(&p, AUDIT_ARCH, clone, net), ret_errno(libc::EPERM));
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_clone3), 0),
            ret_errno(libc::ENOSYS)
        );
    }

    #[test]
    fn foreign_architecture_is_killed() {
        let p = default_filter().unwrap();
        let i386 = 0x4000_0003;
        assert_eq!(run(&p, i386, 0, 0), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_range_is_denied() {
        let p = default_filter().unwrap();
        assert_eq!(run(&p, AUDIT_ARCH, 0x4000_0000, 0), ret_errno(libc::EPERM));
    }
}
