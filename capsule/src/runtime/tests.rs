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
        setgroups: true,
        no_new_privs: true,
        seccomp: Some(seccomp::default_filter().unwrap()),
    }
}

fn fds() -> PlanFds {
    PlanFds {
        stdio: vec![(10, 1)],
        terminal: false,
        close: vec![11, 12],
        go_read: 13,
        netns: None,
        cgroup_ns: true,
        mounts: Vec::new(),
        rootless: None,
        child_trees: Vec::new(),
    }
}

#[test]
fn a_terminal_becomes_the_controlling_terminal_of_a_new_session() {
    let s = spec();
    let mut with = fds();
    with.terminal = true;
    let sys = RecordingSyscall::new();
    let plan = capsule_plan(&s, &security(&s), &with).unwrap();
    let _ = run_plan(&sys, &plan);
    let calls = sys.calls();
    // After stdio is in place (fd 0 is the pty) and before anything else is set up.
    let ctty = position(&calls, "set_controlling_terminal 0");
    assert!(ctty > position(&calls, "close 12"));
    assert!(ctty < position(&calls, "umask 0"));
    // Without a terminal the step is not there.
    let sys = RecordingSyscall::new();
    let _ = run_plan(&sys, &capsule_plan(&s, &security(&s), &fds()).unwrap());
    assert!(!sys
        .calls()
        .iter()
        .any(|c| c.starts_with("set_controlling_terminal")));
}

#[test]
fn a_joined_network_namespace_is_entered_before_sysfs_is_mounted() {
    let mut s = spec();
    s.network = NetworkMode::Join("/run/netns/x".into());
    let mut with = fds();
    with.netns = Some(20);
    let sys = RecordingSyscall::new();
    let _ = run_plan(&sys, &capsule_plan(&s, &security(&s), &with).unwrap());
    let calls = sys.calls();
    // sysfs lists the interfaces of the mounting process's network namespace.
    let setns = position(&calls, "setns 20");
    assert!(setns < position(&calls, "mount sysfs "), "{calls:#?}");
    assert!(setns < position(&calls, "mount overlay "), "{calls:#?}");
    assert!(!calls.iter().any(|c| c == "loopback_up"), "{calls:#?}");
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
        terminal: false,
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

fn rootless_fds(tty_gid: bool) -> PlanFds {
    PlanFds {
        rootless: Some(RootlessPlan { tty_gid }),
        ..fds()
    }
}

fn rootless_security(s: &CapsuleSpec, ns: &UserNamespace) -> Security {
    Security {
        setgroups: ns.setgroups_allowed(),
        groups: Vec::new(),
        ..security(s)
    }
}

#[test]
fn rootless_waits_for_the_maps_then_mounts_without_device_nodes() {
    let sys = RecordingSyscall::new();
    let s = spec();
    let ns = UserNamespace::for_user("u", 1000, 1000, "u:100000:65536", "u:100000:65536", true);
    let plan = capsule_plan(&s, &rootless_security(&s, &ns), &rootless_fds(true)).unwrap();
    let _ = run_plan(&sys, &plan);
    let calls = sys.calls();
    // The maps come first: nothing privileged before the parent released us.
    let wait = position(&calls, "read_byte 13");
    assert!(wait < position(&calls, "umask 0"));
    assert!(wait < position(&calls, "mount - / - "));
    // Overlay metadata in user.* xattrs.
    let overlay = &calls[position(&calls, "mount overlay /run/c1/rootfs overlay")];
    assert!(overlay.ends_with(",userxattr"), "{overlay}");
    // Host device nodes bound on files: no mknod of a device.
    assert!(!calls
        .iter()
        .any(|c| c.starts_with("mknod") && !c.contains(" 100644 ")));
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let file = position(&calls, &format!("mknod /run/c1/rootfs/dev/{dev} 100644"));
        let bind = position(
            &calls,
            &format!("mount /dev/{dev} /run/c1/rootfs/dev/{dev} - 0x1000 "),
        );
        assert!(file < bind);
    }
    // Its own network namespace: a fresh (read-only) sysfs; devpts keeps gid=5 (mapped).
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount sysfs /run/c1/rootfs/sys sysfs")));
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount devpts") && c.ends_with(",gid=5")));
    // A second wait (cgroups) still comes before the cgroup namespace.
    let waits: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.as_str() == "read_byte 13")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(waits.len(), 2);
    assert!(waits[1] < position(&calls, "unshare 0x2000000"));
    // The subordinate range allows setgroups.
    assert!(calls.iter().any(|c| c.starts_with("setgroups")));
}

#[test]
fn rootless_host_network_binds_the_hosts_sys_read_only() {
    let sys = RecordingSyscall::new();
    let mut s = spec();
    s.network = NetworkMode::Host;
    let ns = UserNamespace::for_user("u", 1000, 1000, "", "", true);
    let plan = capsule_plan(&s, &rootless_security(&s, &ns), &rootless_fds(false)).unwrap();
    let _ = run_plan(&sys, &plan);
    let calls = sys.calls();
    assert!(!calls.iter().any(|c| c.contains(" sysfs ")), "{calls:#?}");
    let bind = position(&calls, "mount /sys /run/c1/rootfs/sys - 0x5000 ");
    let remount = position(&calls, "mount - /run/c1/rootfs/sys - ");
    assert!(bind < remount);
    let flags = calls[remount].split(' ').nth(4).unwrap();
    let flags = u64::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    use plan::ms::{BIND, NODEV, NOEXEC, NOSUID, RDONLY, REMOUNT};
    assert_eq!(flags, BIND | REMOUNT | RDONLY | NOSUID | NODEV | NOEXEC);
    // gid 5 is not mapped (a self-map): devpts without gid=5, and no setgroups (denied).
    let pts = &calls[position(&calls, "mount devpts")];
    assert!(!pts.contains("gid=5"), "{pts}");
    assert!(!calls.iter().any(|c| c.starts_with("setgroups")));
    assert!(calls.iter().any(|c| c == "setresuid 1000"));
}

#[test]
fn rootless_binds_are_cloned_by_the_child_before_the_rootfs_is_mounted() {
    let sys = RecordingSyscall::new();
    let mut s = spec();
    s.mounts = vec![Mount::Bind {
        source: "/home/u/vol".into(),
        target: "/data".into(),
        readonly: true,
    }];
    let ns = UserNamespace::for_user("u", 1000, 1000, "", "", true);
    let fds = PlanFds {
        mounts: vec![HostMount {
            tree: Some(40),
            file: false,
        }],
        child_trees: vec![(c"/home/u/vol".to_owned(), true, 40)],
        ..rootless_fds(false)
    };
    let plan = capsule_plan(&s, &rootless_security(&s, &ns), &fds).unwrap();
    let _ = run_plan(&sys, &plan);
    let calls = sys.calls();
    let clone = position(&calls, "open_tree_clone /home/u/vol ro 40");
    assert!(position(&calls, "read_byte 13") < clone);
    assert!(clone < position(&calls, "mount overlay"));
    assert!(position(&calls, "pivot_root") < position(&calls, "move_mount 40 /data"));
}

#[test]
fn rootless_refuses_unmapped_users_and_joined_networks() {
    let ns = UserNamespace::for_user("u", 1000, 1000, "", "", true);
    let rt = Runtime::with_hierarchy(None)
        .unwrap()
        .with_user_namespace(ns);
    // uid 1000 inside has no mapping in a self-mapped namespace: refused before any clone.
    let s = spec();
    assert!(matches!(
        rt.security(&s, s.user),
        Err(RuntimeError::UserNamespace(UserNamespaceError::Unmapped {
            uid: 1000,
            ..
        }))
    ));
    let mut s = spec();
    s.user = User::default();
    s.network = NetworkMode::Join("/run/netns/x".into());
    let err = rt.spawn(&s, Stdio::null()).unwrap_err();
    assert!(
        err.to_string().contains("bridge networking needs root"),
        "{err}"
    );
}

#[test]
fn rootfs_is_nodev_and_only_dev_holds_working_nodes() {
    let sys = RecordingSyscall::new();
    let (calls, _, _) = run(&sys, &spec());
    // The overlay (image layers and writable layer) is mounted nodev: 0x4 is MS_NODEV.
    let overlay = &calls[position(&calls, "mount overlay /run/c1/rootfs overlay")];
    assert!(
        overlay.starts_with(&format!(
            "mount overlay /run/c1/rootfs overlay {:#x} ",
            plan::ms::NODEV
        )),
        "{overlay}"
    );
    // The /dev tmpfs is not nodev: the runtime's own nodes there work.
    let dev = &calls[position(&calls, "mount tmpfs /run/c1/rootfs/dev ")];
    let flags = u64::from_str_radix(dev.split(' ').nth(4).unwrap().trim_start_matches("0x"), 16);
    assert_eq!(flags.unwrap() & plan::ms::NODEV, 0, "{dev}");
    // Character nodes: mode 020666 (S_IFCHR | 0666), /dev/null is 1:3.
    assert!(calls.contains(&format!(
        "mknod /run/c1/rootfs/dev/null 20666 {}",
        crate::sys::makedev(1, 3)
    )));
}

#[test]
fn granted_devices_are_made_in_dev_after_its_tmpfs() {
    let mut s = spec();
    s.devices.push(devices::Device {
        host: "/dev/vda".into(),
        path: "/dev/disks/xvda".into(),
        kind: devices::DeviceKind::Block,
        major: 254,
        minor: 0,
        mode: 0o660,
        access: devices::access::READ,
    });
    let sys = RecordingSyscall::new();
    let (calls, _, _) = run(&sys, &s);
    let dir = position(&calls, "mkdir /run/c1/rootfs/dev/disks 755");
    let node = position(
        &calls,
        &format!(
            "mknod /run/c1/rootfs/dev/disks/xvda 60660 {}",
            crate::sys::makedev(254, 0)
        ),
    );
    assert!(position(&calls, "mount tmpfs /run/c1/rootfs/dev ") < dir);
    assert!(dir < node && node < position(&calls, "pivot_root"));
    // A bad capsule path in a spec read back from disk is refused before anything runs.
    s.devices[0].path = "/etc/../dev/x".into();
    assert!(matches!(s.validate(), Err(SpecError::BadDevice(_))));
}
