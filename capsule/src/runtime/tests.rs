//! Unit tests of the setup order, on the recording syscall fake.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::plan::{run_plan, FailureKind};
use super::*;
use crate::sys::fake::RecordingSyscall;

fn spec() -> CapsuleSpec {
    let rootfs = Rootfs::in_dir(vec!["/layers/base".into()], Path::new("/run/c1"));
    let mut s = CapsuleSpec::new("c1", rootfs, vec!["sh".into(), "-c".into(), "true".into()]);
    s.user = User {
        uid: 1000,
        gid: 1000,
    };
    s.workdir = "/srv/app".into();
    s
}

fn security(s: &CapsuleSpec) -> Security {
    Security {
        cap_mask: s.capability_mask().unwrap(),
        last_cap: 40,
        uid: s.user.uid,
        gid: s.user.gid,
        groups: vec![s.user.gid],
        no_new_privs: true,
        seccomp: Some(seccomp::default_filter().unwrap()),
    }
}

fn fds() -> PlanFds {
    PlanFds {
        stdio: vec![(10, 1)],
        close: vec![11, 12],
        go_read: 13,
        netns: None,
        cgroup_ns: true,
        mounts: Vec::new(),
    }
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call starting with {prefix:?} in {calls:#?}"))
}

fn run(sys: &RecordingSyscall, s: &CapsuleSpec) -> (Vec<String>, plan::Failure, Vec<Op>) {
    let plan = capsule_plan(s, &security(s), &fds()).unwrap();
    let f = run_plan(sys, &plan);
    (sys.calls(), f, plan)
}

#[test]
fn setup_runs_in_the_documented_order() {
    let sys = RecordingSyscall::new();
    let (calls, failure, _) = run(&sys, &spec());
    // The fake cannot exec: the plan ends at the exec step, command not found.
    assert_eq!(failure.kind, FailureKind::NotFound);
    let order = [
        "dup2 10 1",
        "close 11",
        "umask 0",
        "mount - / - ",
        "mount overlay /run/c1/rootfs overlay",
        "mount proc /run/c1/rootfs/proc",
        "mount tmpfs /run/c1/rootfs/dev ",
        "mount devpts /run/c1/rootfs/dev/pts",
        "mount sysfs /run/c1/rootfs/sys",
        "mknod /run/c1/rootfs/dev/null",
        "symlink /proc/self/fd /run/c1/rootfs/dev/fd",
        "sethostname c1",
        "loopback_up",
        "chdir /run/c1/rootfs",
        "pivot_root . .",
        "umount2 . ",
        "mount /dev/null /proc/kcore",
        "mount /proc/sys /proc/sys",
        "read_byte 13",
        "unshare 0x2000000",
        "mkdir /srv 755",
        "chdir /srv/app",
        "setrlimit 7 1024 1024",
        "drop_bounding_cap 2",
        "setgroups [1000]",
        "setresgid 1000",
        "setresuid 1000",
        "capset 0x0 0x0 0x0",
        "clear_ambient_caps",
        "set_no_new_privs",
        "umask 22",
        "cloexec_from 3",
        "seccomp",
        "execve /usr/local/sbin/sh sh -c true",
    ];
    let mut last = 0;
    for step in order {
        let at = position(&calls, step);
        assert!(
            at >= last,
            "{step:?} at {at} comes before an earlier step ({last})"
        );
        last = at;
    }
    // Every PATH entry was tried, in order.
    let execs: Vec<&String> = calls.iter().filter(|c| c.starts_with("execve")).collect();
    assert_eq!(execs.len(), 6);
    assert!(execs[5].starts_with("execve /bin/sh"));
}

#[test]
fn kept_capabilities_stay_in_the_bounding_set() {
    let sys = RecordingSyscall::new();
    let (calls, _, _) = run(&sys, &spec());
    let dropped: Vec<u32> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("drop_bounding_cap "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(dropped.len(), 41 - 14);
    assert!(!dropped.contains(&0), "CAP_CHOWN is kept");
    assert!(dropped.contains(&21), "CAP_SYS_ADMIN is dropped");
}

#[test]
fn root_keeps_the_default_set_as_effective() {
    let sys = RecordingSyscall::new();
    let mut s = spec();
    s.user = User::default();
    let mask = s.capability_mask().unwrap();
    let (calls, _, _) = run(&sys, &s);
    let expected = format!("capset {mask:#x} {mask:#x} 0x0");
    assert!(calls.contains(&expected), "{calls:#?}");
}

#[test]
fn host_network_skips_loopback_and_readonly_root_remounts() {
    let sys = RecordingSyscall::new();
    let mut s = spec();
    s.network = NetworkMode::Host;
    s.readonly_rootfs = true;
    let (calls, _, _) = run(&sys, &s);
    assert!(!calls.iter().any(|c| c == "loopback_up"));
    let ro = position(&calls, "mount - / - 0x1021");
    assert!(ro > position(&calls, "pivot_root"));
}

#[test]
fn a_failing_step_is_reported_by_index() {
    let sys = RecordingSyscall::failing_on("mount overlay", Errno::EINVAL);
    let (calls, failure, plan) = run(&sys, &spec());
    assert_eq!(failure.kind, FailureKind::Setup);
    assert_eq!(failure.errno, Errno::EINVAL as i32);
    assert!(plan[failure.index as usize]
        .describe()
        .starts_with("mount overlay"));
    // Nothing ran after the failure.
    assert!(calls.last().unwrap().starts_with("mount overlay"));
    let err = failure_error(failure, &plan, "sh");
    assert_eq!(err.exit_code(), 125);
    assert!(err.to_string().contains("mount overlay"), "{err}");
}

#[test]
fn exec_failures_map_to_126_and_127() {
    let sys = RecordingSyscall::new();
    let (_, failure, plan) = run(&sys, &spec());
    assert_eq!(failure_error(failure, &plan, "sh").exit_code(), 127);
    let mut sys = RecordingSyscall::new();
    sys.exec_errno = Some(Errno::EACCES);
    let (_, failure, plan) = run(&sys, &spec());
    assert_eq!(failure.kind, FailureKind::NotExecutable);
    assert_eq!(failure_error(failure, &plan, "sh").exit_code(), 126);
}

#[test]
fn masked_missing_paths_are_skipped_and_directories_get_tmpfs() {
    let sys = RecordingSyscall::failing_on("mount /dev/null /proc/acpi", Errno::ENOTDIR);
    let (calls, failure, _) = run(&sys, &spec());
    assert_eq!(
        failure.kind,
        FailureKind::NotFound,
        "the plan went on to exec"
    );
    let bind = position(&calls, "mount /dev/null /proc/acpi");
    assert!(calls[bind + 1].starts_with("mount tmpfs /proc/acpi tmpfs 0x1"));
}

#[test]
fn exec_plan_joins_namespaces_then_forks_then_drops_privileges() {
    let s = spec();
    let sec = security(&s);
    let fds = ExecFds {
        stdio: vec![],
        close: vec![20, 21, 22],
        go_read: 23,
        namespaces: vec![(30, ns::NEWIPC), (31, ns::NEWPID), (32, ns::NEWNS)],
        report: 24,
    };
    let env = s.effective_env();
    let plan = exec_plan(&sec, &s.rlimits, fds, "/", &["ls".into()], &env).unwrap();
    let sys = RecordingSyscall::new();
    let f = run_plan(&sys, &plan);
    assert_eq!(f.kind, FailureKind::NotFound);
    let calls = sys.calls();
    let mnt = position(&calls, &format!("setns 32 {:#x}", ns::NEWNS));
    assert!(position(&calls, "read_byte 23") < position(&calls, "setns 30"));
    assert!(position(&calls, &format!("setns 31 {:#x}", ns::NEWPID)) < mnt);
    assert!(mnt < position(&calls, "fork_sibling"));
    assert!(position(&calls, "fork_sibling") < position(&calls, "setresuid"));
    assert!(position(&calls, "seccomp") < position(&calls, "execve"));
}

#[test]
fn mounts_come_after_pivot_root_parents_first_and_before_masking() {
    let mut s = spec();
    s.mounts = vec![
        Mount::Tmpfs {
            target: "/data/cache".into(),
            options: TmpfsOptions {
                size_bytes: Some(1 << 20),
                mode: Some(0o1777),
                ..TmpfsOptions::default()
            },
        },
        Mount::Bind {
            source: "/srv/vol".into(),
            target: "/data/".into(),
            readonly: true,
        },
        Mount::Bind {
            source: "/etc/hosts".into(),
            target: "/etc/hosts".into(),
            readonly: false,
        },
    ];
    let mut f = fds();
    f.mounts = vec![
        HostMount {
            tree: None,
            file: false,
        },
        HostMount {
            tree: Some(40),
            file: false,
        },
        HostMount {
            tree: Some(41),
            file: true,
        },
    ];
    let plan = capsule_plan(&s, &security(&s), &f).unwrap();
    let sys = RecordingSyscall::new();
    let failure = run_plan(&sys, &plan);
    assert_eq!(failure.kind, FailureKind::NotFound);
    let calls = sys.calls();
    let pivot = position(&calls, "pivot_root");
    let data = position(&calls, "move_mount 40 /data");
    let cache = position(&calls, "mount tmpfs /data/cache tmpfs");
    let hosts = position(&calls, "move_mount 41 /etc/hosts");
    assert!(pivot < position(&calls, "mkdir /data 755"));
    assert!(position(&calls, "mkdir /data 755") < data);
    assert!(data < cache, "the parent mount comes first: {calls:#?}");
    assert!(position(&calls, "mkdir /data/cache 755") < cache);
    // A file bind gets a file as its mount point, in a created parent directory.
    assert!(position(&calls, "mkdir /etc 755") < position(&calls, "mknod /etc/hosts 100644 0"));
    assert!(position(&calls, "mknod /etc/hosts") < hosts);
    assert!(!calls.iter().any(|c| c == "mkdir /etc/hosts 755"));
    // nosuid, nodev, noexec; size and mode as data.
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    assert_eq!(
        calls[cache],
        format!("mount tmpfs /data/cache tmpfs {flags:#x} size=1048576,mode=1777")
    );
    assert!(cache < position(&calls, "mount /dev/null /proc/kcore"));
}

#[test]
fn a_bind_without_a_prepared_tree_is_refused() {
    let mut s = spec();
    s.mounts = vec![Mount::Bind {
        source: "/srv/vol".into(),
        target: "/data".into(),
        readonly: false,
    }];
    let err = capsule_plan(&s, &security(&s), &fds()).unwrap_err();
    assert!(err.to_string().contains("/srv/vol"), "{err}");
}

#[test]
fn failure_records_round_trip() {
    let f = plan::Failure {
        index: 7,
        errno: 13,
        kind: FailureKind::NotExecutable,
    };
    assert_eq!(plan::Failure::decode(&f.encode()), Some(f));
    assert_eq!(plan::Failure::decode(&[1, 2, 3]), None);
}
