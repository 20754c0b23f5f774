//! Root tests of the capsule runtime on the real kernel, on a busybox rootfs built here.
//!
//! Each test skips with a message when not run as root, and fails instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI). Every test checks that no cgroup, mount or directory is
//! left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bolt_capsule::runtime::cgroup::{self, BOLT_PARENT};
use bolt_capsule::runtime::{
    oci, CapsuleSpec, ExecSpec, ExitStatus, Hierarchy, NetworkMode, Rlimit, RlimitKind, Rootfs,
    Runtime, RuntimeError, Stdio, StdioSlot,
};
use nix::sys::signal::Signal;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A busybox lower layer and a capsule directory in one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bolt-rt-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let lower = dir.path().join("lower");
        common::busybox_lower(&lower);
        let id = format!(
            "t{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            name
        );
        Self { dir, id }
    }

    fn lower(&self) -> PathBuf {
        self.dir.path().join("lower")
    }

    fn capsule_dir(&self) -> PathBuf {
        self.dir.path().join("capsule")
    }

    fn spec(&self, args: &[&str]) -> CapsuleSpec {
        let rootfs = Rootfs::in_dir(vec![self.lower()], &self.capsule_dir());
        let mut spec = CapsuleSpec::new(
            self.id.clone(),
            rootfs,
            args.iter().map(|s| (*s).to_owned()).collect(),
        );
        spec.env.push("HOME=/root".into());
        spec
    }

    /// Asserts that nothing of the capsule is left: cgroups, mounts.
    fn assert_clean(&self) {
        assert_no_cgroup(&self.id);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.dir.path().to_string_lossy().into_owned();
        assert!(
            !mountinfo.contains(&root),
            "a mount under {root} is left:\n{mountinfo}"
        );
    }

    /// Removes the temporary directory and checks that it is gone.
    fn finish(self) {
        self.assert_clean();
        let path = self.dir.path().to_owned();
        self.dir.close().unwrap();
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

fn assert_no_cgroup(id: &str) {
    let dirs: Vec<PathBuf> = match Hierarchy::detect().unwrap() {
        Hierarchy::V1 { mounts } => mounts
            .iter()
            .map(|(_, m)| m.join(BOLT_PARENT).join(id))
            .collect(),
        Hierarchy::V2 { root } => vec![root.join(BOLT_PARENT).join(id)],
    };
    for d in dirs {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

fn runtime() -> Runtime {
    Runtime::new().unwrap()
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    stats: bolt_capsule::runtime::CgroupStats,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn reader(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

fn captured() -> (
    Stdio,
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
) {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    (stdio, reader(out_r), reader(err_r))
}

/// Runs a capsule to completion, capturing output and the final cgroup counters.
fn run(rt: &Runtime, spec: &CapsuleSpec) -> Result<Output, RuntimeError> {
    let (stdio, out, err) = captured();
    let mut capsule = rt.spawn(spec, stdio)?;
    let status = capsule.wait()?;
    let stats = capsule.stats()?;
    capsule.destroy()?;
    Ok(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        stats,
    })
}

#[test]
fn pid_one_inside() {
    if !bolt_skip::root("pid_one_inside") {
        return;
    }
    let fx = Fixture::new("pid1");
    let out = run(&runtime(), &fx.spec(&["sh", "-c", "echo $$"])).unwrap();
    assert_eq!(out.stdout.trim(), "1", "stderr: {}", out.stderr);
    assert_eq!(out.status.exit_code(), 0);
    fx.finish();
}

#[test]
fn ignored_signals_and_the_mask_are_not_inherited() {
    if !bolt_skip::root("ignored_signals_and_the_mask_are_not_inherited") {
        return;
    }
    // The test harness (Rust) ignores SIGPIPE; the capsule must start with every signal at its
    // default disposition and none blocked, as runc does.
    let fx = Fixture::new("sigs");
    let out = run(&runtime(), &fx.spec(&["cat", "/proc/self/status"])).unwrap();
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        field("SigIgn:"),
        "0000000000000000",
        "stdout: {}",
        out.stdout
    );
    assert_eq!(
        field("SigBlk:"),
        "0000000000000000",
        "stdout: {}",
        out.stdout
    );
    fx.finish();
}

#[test]
fn hostname_is_isolated() {
    if !bolt_skip::root("hostname_is_isolated") {
        return;
    }
    let fx = Fixture::new("uts");
    let before = nix::unistd::gethostname().unwrap();
    // Without CAP_SYS_ADMIN (docker's default set) the capsule cannot rename itself either.
    let script = "hostname; hostname changed-inside 2>/dev/null || echo refused; hostname";
    let mut spec = fx.spec(&["sh", "-c", script]);
    spec.hostname = Some("capsule-h".into());
    let out = run(&runtime(), &spec).unwrap();
    assert_eq!(
        out.stdout, "capsule-h\nrefused\ncapsule-h\n",
        "stderr: {}",
        out.stderr
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
    fx.finish();
}

#[test]
fn network_none_has_only_loopback_up() {
    if !bolt_skip::root("network_none_has_only_loopback_up") {
        return;
    }
    let fx = Fixture::new("net");
    let spec = fx.spec(&["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/flags"]);
    let out = run(&runtime(), &spec).unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"lo"),
        "stdout {:?} stderr {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(lines.len(), 2, "only lo: {:?}", out.stdout);
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");
    fx.finish();
}

#[test]
fn proc_shows_only_the_capsules_processes() {
    if !bolt_skip::root("proc_shows_only_the_capsules_processes") {
        return;
    }
    let fx = Fixture::new("proc");
    // A shell loop runs without forking: the only process is the shell, pid 1.
    let spec = fx.spec(&["sh", "-c", "for p in /proc/[0-9]*; do echo $p; done"]);
    let out = run(&runtime(), &spec).unwrap();
    assert_eq!(out.stdout, "/proc/1\n", "stderr: {}", out.stderr);
    fx.finish();
}

#[test]
fn host_filesystem_is_unreachable() {
    if !bolt_skip::root("host_filesystem_is_unreachable") {
        return;
    }
    let fx = Fixture::new("fs");
    let probe = fx.dir.path().join("host-probe");
    fs::write(&probe, "secret").unwrap();
    let script = format!(
        "test -e {p} && echo visible || echo hidden; test -e /var/tmp && echo var || echo novar; \
         cat /proc/1/root{p} 2>/dev/null || echo unreadable",
        p = probe.display()
    );
    let out = run(&runtime(), &fx.spec(&["sh", "-c", &script])).unwrap();
    assert_eq!(
        out.stdout, "hidden\nnovar\nunreadable\n",
        "stderr: {}",
        out.stderr
    );
    fx.finish();
}

#[test]
fn writes_go_to_the_upper_layer() {
    if !bolt_skip::root("writes_go_to_the_upper_layer") {
        return;
    }
    let fx = Fixture::new("upper");
    let out = run(&runtime(), &fx.spec(&["sh", "-c", "echo hi > /newfile"])).unwrap();
    assert_eq!(out.status.exit_code(), 0, "stderr: {}", out.stderr);
    assert!(fx.capsule_dir().join("upper/newfile").exists());
    assert!(!fx.lower().join("newfile").exists());
    fx.finish();
}

#[test]
fn security_settings_are_applied() {
    if !bolt_skip::root("security_settings_are_applied") {
        return;
    }
    let fx = Fixture::new("sec");
    let script = "grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs|Seccomp):' /proc/self/status; \
        wc -c < /proc/timer_list; \
        (echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sysctl-writable || echo sysctl-ro; \
        unshare -n true 2>/dev/null && echo unshare-ok || echo unshare-denied; \
        mount -t tmpfs none /tmp 2>/dev/null && echo mount-ok || echo mount-denied";
    let out = run(&runtime(), &fx.spec(&["sh", "-c", script])).unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let rt = runtime();
    let mask: u64 = if rt.hierarchy().is_some_and(Hierarchy::confines_devices) {
        0xa80425fb
    } else {
        0xa80425fb & !(1 << 27)
    };
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} missing in {:?} / {}", out.stdout, out.stderr))
            .to_owned()
    };
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), mask);
    assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16).unwrap(), mask);
    assert_eq!(u64::from_str_radix(&field("CapInh:"), 16).unwrap(), 0);
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    // The host's /proc/timer_list has content; the capsule's is /dev/null.
    assert!(fs::metadata("/proc/timer_list").is_ok());
    assert!(
        lines.contains(&"0"),
        "/proc/timer_list is masked: {:?}",
        out.stdout
    );
    assert!(lines.contains(&"sysctl-ro"));
    assert!(lines.contains(&"unshare-denied"));
    assert!(lines.contains(&"mount-denied"));
    fx.finish();
}

#[test]
fn memory_limit_kills_with_137_and_the_oom_flag() {
    if !bolt_skip::root("memory_limit_kills_with_137_and_the_oom_flag") {
        return;
    }
    let fx = Fixture::new("oom");
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    spec.resources.memory_bytes = Some(16 << 20);
    let out = run(&runtime(), &spec).unwrap();
    assert_eq!(
        out.status.exit_code(),
        137,
        "{:?} {}",
        out.status,
        out.stderr
    );
    assert_eq!(out.status.signal, Some(9));
    assert!(out.status.oom_killed);
    assert!(out.stats.oom_kills >= 1);
    fx.finish();
}

#[test]
fn exiting_normally_has_no_oom_flag() {
    if !bolt_skip::root("exiting_normally_has_no_oom_flag") {
        return;
    }
    let fx = Fixture::new("nooom");
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"]);
    spec.resources.memory_bytes = Some(64 << 20);
    let out = run(&runtime(), &spec).unwrap();
    assert_eq!(out.status.exit_code(), 0, "{}", out.stderr);
    assert!(!out.status.oom_killed);
    fx.finish();
}

#[test]
fn pids_limit_makes_fork_fail() {
    if !bolt_skip::root("pids_limit_makes_fork_fail") {
        return;
    }
    let fx = Fixture::new("pids");
    let script = "n=0; for i in 1 2 3 4 5 6 7 8; do sleep 30 & n=$((n+1)); done; echo tried $n";
    let mut spec = fx.spec(&["sh", "-c", script]);
    spec.resources.pids_limit = Some(4);
    let out = run(&runtime(), &spec).unwrap();
    assert!(
        out.stderr.contains("fork"),
        "expected a fork failure, stderr: {:?}",
        out.stderr
    );
    fx.finish();
}

#[test]
fn cpu_quota_throttles() {
    if !bolt_skip::root("cpu_quota_throttles") {
        return;
    }
    let fx = Fixture::new("cpu");
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i";
    let mut spec = fx.spec(&["sh", "-c", script]);
    // 2 ms of CPU per 100 ms period: any busy loop longer than that is throttled.
    spec.resources.cpu_millis = Some(20);
    spec.resources.cpu_weight = Some(50);
    let out = run(&runtime(), &spec).unwrap();
    assert_eq!(out.stdout.trim(), "20000", "stderr {}", out.stderr);
    assert!(out.stats.cpu_periods > 0, "{:?}", out.stats);
    assert!(out.stats.cpu_throttled_periods > 0, "{:?}", out.stats);
    assert!(out.stats.cpu_usage_ns > 0);
    fx.finish();
}

#[test]
fn exit_codes_and_signals_propagate() {
    if !bolt_skip::root("exit_codes_and_signals_propagate") {
        return;
    }
    let fx = Fixture::new("exit");
    let rt = runtime();
    let out = run(&rt, &fx.spec(&["sh", "-c", "exit 42"])).unwrap();
    assert_eq!(out.status.code, Some(42));
    assert_eq!(out.status.exit_code(), 42);

    let mut capsule = rt.spawn(&fx.spec(&["sleep", "60"]), Stdio::null()).unwrap();
    assert_eq!(capsule.pids().unwrap(), vec![capsule.pid()]);
    capsule.kill(Signal::SIGKILL).unwrap();
    let status = capsule.wait().unwrap();
    assert_eq!(status.signal, Some(9));
    assert_eq!(status.exit_code(), 137);
    assert!(!status.oom_killed);
    capsule.destroy().unwrap();
    fx.finish();
}

#[test]
fn missing_or_unexecutable_command_is_an_error_with_127_or_126() {
    if !bolt_skip::root("missing_or_unexecutable_command_is_an_error_with_127_or_126") {
        return;
    }
    let fx = Fixture::new("e127");
    let rt = runtime();
    let err = rt
        .spawn(&fx.spec(&["no-such-command"]), Stdio::null())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound(_)), "{err}");
    assert_eq!(err.exit_code(), 127);
    fx.assert_clean();

    let script = fx.lower().join("bin/not-exec");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let err = rt
        .spawn(&fx.spec(&["/bin/not-exec"]), Stdio::null())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotExecutable { .. }), "{err}");
    assert_eq!(err.exit_code(), 126);
    fx.finish();
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    if !bolt_skip::root("bad_input_is_refused_and_leaves_nothing") {
        return;
    }
    let fx = Fixture::new("bad");
    let rt = runtime();
    let mut spec = fx.spec(&["true"]);
    spec.rlimits.push(Rlimit {
        kind: RlimitKind::Nofile,
        soft: u64::MAX - 1,
        hard: u64::MAX - 1,
    });
    let err = rt.spawn(&spec, Stdio::null()).unwrap_err();
    assert!(err.to_string().contains("hard limit"), "{err}");
    fx.assert_clean();

    // A second capsule with the same id is refused while the first runs.
    let first = rt.spawn(&fx.spec(&["sleep", "60"]), Stdio::null()).unwrap();
    let err = rt.spawn(&fx.spec(&["true"]), Stdio::null()).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(
        first.pids().unwrap().contains(&first.pid()),
        "first still runs"
    );
    first.destroy().unwrap();
    fx.finish();
}

#[test]
fn exec_joins_a_running_capsule() {
    if !bolt_skip::root("exec_joins_a_running_capsule") {
        return;
    }
    let fx = Fixture::new("exec");
    let rt = runtime();
    let mut spec = fx.spec(&["sleep", "60"]);
    spec.hostname = Some("exec-host".into());
    let capsule = rt.spawn(&spec, Stdio::null()).unwrap();
    let (mut stdio, out, err) = captured();
    // The exec'd shell waits on stdin until its cgroup membership is checked (it could end
    // before the check otherwise).
    let (hold_r, hold_w) = pipe();
    stdio.stdin = StdioSlot::Fd(hold_r);
    let exec = ExecSpec {
        args: vec![
            "sh".into(),
            "-c".into(),
            "read _; echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $FOO; pwd"
                .into(),
        ],
        env: vec!["FOO=bar".into()],
        workdir: Some("/tmp".into()),
        user: None,
    };
    let mut process = capsule.exec(&rt, &exec, stdio).unwrap();
    let pids = capsule.pids().unwrap();
    assert!(
        pids.contains(&process.pid()),
        "exec'd process is in the cgroup: {pids:?}"
    );
    drop(hold_w);
    let status = process.wait().unwrap();
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert_eq!(status.exit_code(), 0, "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_ne!(lines[0], "1");
    assert!(
        lines[0].parse::<u32>().unwrap() < 100,
        "pid inside the namespace: {}",
        lines[0]
    );
    assert_eq!(lines[1], "exec-host");
    assert_eq!(lines[2].trim(), "sleep 60");
    assert_eq!(lines[3], "bar");
    assert_eq!(lines[4], "/tmp");

    let err = capsule
        .exec(
            &rt,
            &ExecSpec {
                args: vec!["nope".into()],
                ..ExecSpec::default()
            },
            Stdio::null(),
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
    capsule.destroy().unwrap();
    fx.finish();
}

#[test]
fn host_network_sees_the_host_interfaces() {
    if !bolt_skip::root("host_network_sees_the_host_interfaces") {
        return;
    }
    let fx = Fixture::new("hostnet");
    let mut spec = fx.spec(&["sh", "-c", "ls /sys/class/net | wc -l"]);
    spec.network = NetworkMode::Host;
    let out = run(&runtime(), &spec).unwrap();
    let host = fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(
        out.stdout.trim(),
        host.to_string(),
        "stderr: {}",
        out.stderr
    );
    fx.finish();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// runc takes the same bundle and prints the same view of the capsule.
#[test]
fn runc_accepts_the_bundle_and_agrees() {
    if !bolt_skip::root("runc_accepts_the_bundle_and_agrees") {
        return;
    }
    if !bolt_skip::unless(
        "runc_accepts_the_bundle_and_agrees",
        Command::new("runc").arg("--version").output().is_ok(),
        "needs runc, which is not installed",
    ) {
        return;
    }
    let fx = Fixture::new("runc");
    let script = "hostname; id; pwd; echo $$; ls /dev | sort | tr '\\n' ' '; echo; \
        grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
        ls /sys/class/net; env | sort; \
        cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\\n' ' '; echo; \
        wc -c < /proc/timer_list; unshare -n true 2>/dev/null || echo unshare-denied";
    let mut spec = fx.spec(&["sh", "-c", script]);
    spec.hostname = Some("same".into());
    spec.resources.memory_bytes = Some(64 << 20);
    spec.resources.pids_limit = Some(64);

    let ours = run(&runtime(), &spec).unwrap();
    assert_eq!(ours.status.exit_code(), 0, "stderr: {}", ours.stderr);
    fx.assert_clean();
    // runc needs a fresh upper layer and the overlay mounted for it.
    fs::remove_dir_all(fx.capsule_dir()).unwrap();

    let bundle = fx.dir.path().join("bundle");
    oci::write_bundle(&spec, &bundle).unwrap();
    let rootfs = oci::mount_rootfs(&spec.rootfs).unwrap();
    let runc_root = fx.dir.path().join("runc-state");
    // runc makes `/bolt` in every cgroup hierarchy and removes only its leaf: take the empty
    // parents away after it, even when an assertion below fails.
    struct RuncParents;
    impl Drop for RuncParents {
        fn drop(&mut self) {
            cgroup::remove_empty_parents();
        }
    }
    let _parents = RuncParents;
    let output = Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&spec.id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    drop(rootfs);
    let runc_out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "runc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Both keep CAP_MKNOD behind a device filter (v1 devices controller, v2 eBPF program). runc
    // adds /dev/core -> /proc/kcore when the kernel has /proc/kcore (this host's does not; the
    // VM's Debian kernel does).
    let v2 = matches!(
        cgroup::Hierarchy::detect().map(|h| h.version()),
        Ok(cgroup::CgroupVersion::V2)
    );
    let runc_out = if v2 {
        v2_differences_removed(&runc_out)
    } else {
        runc_out.into_owned()
    };
    assert_eq!(ours.stdout, runc_out, "ours (left) and runc (right) differ");
    fx.finish();
}

#[test]
fn runc_v2_difference_is_only_dev_core() {
    let runc =
        "same\ncore fd null urandom \nCapPrm:\t00000000a80425fb\nCapInh:\t0000000000000000\n";
    assert_eq!(
        v2_differences_removed(runc),
        "same\nfd null urandom \nCapPrm:\t00000000a80425fb\nCapInh:\t0000000000000000\n"
    );
}

/// runc's view of a capsule on cgroup v2 as Bolt's should be: no `core` in the /dev listing.
fn v2_differences_removed(runc_out: &str) -> String {
    let mut out = String::new();
    for line in runc_out.split_inclusive('\n') {
        if line.split(' ').any(|w| w == "urandom") {
            let words: Vec<&str> = line.split(' ').filter(|w| *w != "core").collect();
            out.push_str(&words.join(" "));
        } else {
            out.push_str(line);
        }
    }
    out
}

#[test]
fn spec_files_are_checked_before_anything_runs() {
    // Not root-only: validation happens before any privileged step.
    let rootfs = Rootfs::in_dir(
        vec![PathBuf::from("/nonexistent")],
        Path::new("/nonexistent/c"),
    );
    let spec = CapsuleSpec::new("ok", rootfs, vec![]);
    let err = Runtime::with_hierarchy(None)
        .unwrap()
        .spawn(&spec, Stdio::null())
        .unwrap_err();
    assert!(matches!(
        err,
        RuntimeError::Spec(bolt_capsule::runtime::SpecError::EmptyCommand)
    ));
    assert_eq!(err.exit_code(), 125);
}

/// Thaws a group when dropped, so a failed assertion never leaves a capsule frozen.
struct Thaw<'a>(&'a dyn cgroup::Cgroup);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw();
    }
}

#[test]
fn a_frozen_capsule_makes_no_progress_until_thawed() {
    if !bolt_skip::root("a_frozen_capsule_makes_no_progress_until_thawed") {
        return;
    }
    let fx = Fixture::new("freeze");
    let rt = runtime();
    let spec = fx.spec(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count; done",
    ]);
    let capsule = rt.spawn(&spec, Stdio::null()).unwrap();
    let count = fx.capsule_dir().join("upper/count");
    let read = || fs::read_to_string(&count).unwrap_or_default();
    wait_for("the counter to start", || !read().trim().is_empty());

    let group = Hierarchy::detect().unwrap().open(&fx.id);
    group.freeze().unwrap();
    let thaw = Thaw(group.as_ref());
    let frozen_at = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), frozen_at, "the counter moved while frozen");
    // Freezing twice is harmless; the state files say frozen.
    group.freeze().unwrap();

    group.thaw().unwrap();
    drop(thaw);
    wait_for("the counter to move after thaw", || read() != frozen_at);
    // Thawing a running group again is harmless too.
    group.thaw().unwrap();
    capsule.destroy().unwrap();
    fx.finish();
}
