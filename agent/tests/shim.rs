//! The real supervisor, `bolt supervise DIR`, run the way the agent runs it: a config in a
//! capsule directory, one `Report` line on stdout when the capsule started (or failed to) and
//! one when it ended, and the records the agent adopts after a restart (`pid.json`,
//! `exit.json`, the rotated log).
//!
//! Root only (namespaces, overlay, cgroups): skipped with a message otherwise, a failure under
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bolt_agent::shim::{Report, SupervisorConfig};
use bolt_capsule::runtime::supervisor::{self, Adopted};
use bolt_capsule::runtime::{cgroup, Hierarchy};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A busybox image layer and a capsule directory beside it, under /var/tmp.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bolt-shim-")
            .tempdir_in("/var/tmp")
            .unwrap();
        busybox_lower(&dir.path().join("lower"));
        fs::create_dir(dir.path().join("capsule")).unwrap();
        let id = format!(
            "s{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self { dir, id }
    }

    fn capsule_dir(&self) -> PathBuf {
        self.dir.path().join("capsule")
    }

    /// Writes the config for `args` and starts `bolt supervise` on it, stdout piped.
    fn supervise(&self, args: &[&str]) -> Child {
        let cfg = SupervisorConfig {
            id: self.id.clone(),
            lower: vec![self.dir.path().join("lower")],
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: None,
            network: "none".into(),
            memory_bytes: None,
            cpu_millis: None,
            pids_limit: None,
            tty: false,
            stdin: false,
            attach_wait: false,
            log_max_bytes: 1 << 20,
            log_keep: 1,
            netns: None,
            mounts: Vec::new(),
            devices: Vec::new(),
        };
        cfg.store(&self.capsule_dir()).unwrap();
        Command::new(env!("CARGO_BIN_EXE_bolt"))
            .arg("supervise")
            .arg(self.capsule_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// Nothing of the capsule is left: no cgroup, no mount under the fixture.
    fn finish(self) {
        let dirs: Vec<PathBuf> = match Hierarchy::detect().unwrap() {
            Hierarchy::V1 { mounts } => mounts
                .iter()
                .map(|(_, m)| m.join(cgroup::BOLT_PARENT).join(&self.id))
                .collect(),
            Hierarchy::V2 { root } => vec![root.join(cgroup::BOLT_PARENT).join(&self.id)],
        };
        for d in dirs {
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.dir.path().to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&root), "a mount under {root} is left");
        self.dir.close().unwrap();
    }
}

/// A static busybox with its applet links, as an image layer.
fn busybox_lower(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is installed");
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// The supervisor's report lines, read until it closes stdout.
fn reports(child: &mut Child) -> Vec<Report> {
    let out = child.stdout.take().unwrap();
    BufReader::new(out)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn supervisor_records_pid_logs_and_exit() {
    if !bolt_skip::root("supervisor_records_pid_logs_and_exit") {
        return;
    }
    let fx = Fixture::new("sup");
    let mut child = fx.supervise(&["sh", "-c", "echo out; echo err >&2; echo partial; exit 3"]);
    let lines = reports(&mut child);
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert!(
        matches!(lines.first(), Some(Report::Started { .. })),
        "{lines:?}"
    );
    assert_eq!(lines.last(), Some(&Report::Exited { exit_code: 3 }));
    let state = fx.capsule_dir();
    let Adopted::Exited(exit) = supervisor::adopt(&state).unwrap() else {
        panic!("expected an exit record")
    };
    assert_eq!(exit.exit_code, 3);
    let logs = supervisor::read_logs(&state).unwrap();
    let text: Vec<(String, String)> = logs.into_iter().map(|l| (l.stream, l.line)).collect();
    assert!(text.contains(&("stdout".into(), "out".into())), "{text:?}");
    assert!(text.contains(&("stderr".into(), "err".into())), "{text:?}");
    assert!(
        text.contains(&("stdout".into(), "partial".into())),
        "{text:?}"
    );
    fx.finish();
}

#[test]
fn supervised_capsule_is_adopted_while_running_and_after_exit() {
    if !bolt_skip::root("supervised_capsule_is_adopted_while_running_and_after_exit") {
        return;
    }
    let fx = Fixture::new("adopt");
    let state = fx.capsule_dir();
    let mut child = fx.supervise(&["sleep", "60"]);
    wait_for("pid.json", || state.join("pid.json").exists());
    let Adopted::Running {
        record,
        supervisor_alive,
    } = supervisor::adopt(&state).unwrap()
    else {
        panic!("expected a running capsule")
    };
    assert!(supervisor_alive);
    assert_eq!(record.supervisor_pid, child.id() as i32);
    // The agent side stops it by pid (verified by the start time in the record).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let lines = reports(&mut child);
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert_eq!(lines.last(), Some(&Report::Exited { exit_code: 137 }));
    let Adopted::Exited(exit) = supervisor::adopt(&state).unwrap() else {
        panic!("expected an exit record")
    };
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.status.and_then(|s| s.signal), Some(9));
    fx.finish();
}

#[test]
fn supervisor_records_a_start_failure() {
    if !bolt_skip::root("supervisor_records_a_start_failure") {
        return;
    }
    let fx = Fixture::new("supfail");
    let mut child = fx.supervise(&["missing"]);
    let lines = reports(&mut child);
    assert_eq!(child.wait().unwrap().code(), Some(127));
    let [Report::Failed { error, exit_code }] = lines.as_slice() else {
        panic!("expected one failure report: {lines:?}")
    };
    assert_eq!(*exit_code, 127);
    assert!(error.contains("not found"), "{error}");
    let Adopted::Exited(exit) = supervisor::adopt(&fx.capsule_dir()).unwrap() else {
        panic!("expected an exit record")
    };
    assert_eq!(exit.exit_code, 127);
    assert!(exit.status.is_none());
    fx.finish();
}
