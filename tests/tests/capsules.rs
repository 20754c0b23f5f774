//! End to end: capsules through the real `bolt` binary — `run` (foreground and `-d`), `ps`,
//! `logs`, `exec`, `attach`, `top`, `stop`, `kill`, `rm`, `inspect`, restart policies, and an
//! agent SIGKILLed while a capsule runs.
//!
//! Needs root and the loopback test registry with the fixtures pushed (`BOLT_TEST_REGISTRY`,
//! image `bolt-test/busybox:latest`; see docs/fixtures.md). Skipped with a message otherwise;
//! failed instead when `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bolt_tests::{busybox, one_error_line, root_and_registry, Node, Output, PATIENCE};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Tests that check "no new cgroup" take this exclusively; the others share it.
static CGROUPS: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

struct Env {
    node: Node,
    image: String,
    _guard: Guard,
    _dir: tempfile::TempDir,
}

fn setup(test: &str, exclusive: bool) -> Option<Env> {
    let registry = root_and_registry(test)?;
    let guard = if exclusive {
        Guard::Exclusive(CGROUPS.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Guard::Shared(CGROUPS.read().unwrap_or_else(|e| e.into_inner()))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::without_registry_auth(dir.path(), "n").unwrap();
    node.start().unwrap();
    Some(Env {
        node,
        image: busybox(&registry),
        _guard: guard,
        _dir: dir,
    })
}

impl Env {
    fn bolt(&self, args: &[&str]) -> Output {
        self.node.bolt(args).unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        self.node.ok(args)
    }

    /// `bolt run ARGS... IMAGE CMD...`.
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.bolt(&args)
    }

    fn ps_all(&self) -> Vec<Value> {
        self.ok(&["ps", "-a", "--format", "json"])
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn inspect(&self, name: &str) -> Value {
        let out = self.ok(&["inspect", "--format", "json", name]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v[0].clone()
    }

    fn capsule_events(&self) -> Vec<Value> {
        self.ok(&["events", "--format", "json"])
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["kind"].as_str().unwrap().starts_with("capsule."))
            .collect()
    }

    fn volume_events(&self) -> Vec<Value> {
        self.ok(&["events", "--format", "json"])
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["kind"].as_str().unwrap().starts_with("volume."))
            .collect()
    }

    fn events_of(&self, id: &str) -> Vec<(String, Value)> {
        self.capsule_events()
            .into_iter()
            .filter_map(|e| {
                let kind = e["kind"].as_str().unwrap().to_string();
                let variant = kind.trim_start_matches("capsule.").to_string();
                let fields = e["payload"]["capsule"][&variant].clone();
                (fields["id"] == id).then_some((kind, fields))
            })
            .collect()
    }

    fn capsules_dir(&self) -> PathBuf {
        self.node.root().join("capsules")
    }

    fn capsule_dirs(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.capsules_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing of capsule `id` is left: directory, cgroup, mounts.
    fn assert_gone(&self, id: &str) {
        assert!(
            !self.capsules_dir().join(id).exists(),
            "the directory of {id} is left"
        );
        assert!(!bolt_cgroups().contains(id), "a cgroup of {id} is left");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(id), "a mount of {id} is left");
    }
}

impl Drop for Env {
    /// A test that failed half-way must not leave capsules running (their supervisors outlive
    /// the agent): remove whatever this node still has.
    fn drop(&mut self) {
        if let Ok(out) = self.node.bolt(&["ps", "-a", "-q"]) {
            let ids: Vec<&str> = out.stdout.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.node.bolt(&args);
            }
        }
    }
}

/// Ids of every cgroup under Bolt's subtree, in every hierarchy.
fn bolt_cgroups() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut parents = vec![PathBuf::from("/sys/fs/cgroup/bolt")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            parents.push(e.path().join("bolt"));
        }
    }
    for p in parents {
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

/// Polls `f` until it is true; panics with `what` after [`PATIENCE`] (a hang guard, not a
/// timing assertion).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_of(v: &Value) -> &str {
    v["status"].as_str().unwrap()
}

#[test]
fn foreground_run_streams_output_and_exits_with_the_capsules_code() {
    let Some(env) = setup(
        "foreground_run_streams_output_and_exits_with_the_capsules_code",
        false,
    ) else {
        return;
    };
    let out = env.run(
        &["--rm", "--name", "fg"],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    // --rm: gone from the state once run returns, every transition an event.
    assert!(env.ps_all().is_empty());
    let kinds: Vec<String> = env
        .capsule_events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "capsule.created",
            "capsule.started",
            "capsule.exited",
            "capsule.removed"
        ]
    );
    let exited = &env.capsule_events()[2]["payload"]["capsule"]["exited"];
    assert_eq!(exited["code"], 3);
    assert_eq!(exited["oom"], false);
    let id = exited["id"].as_str().unwrap().to_string();
    env.assert_gone(&id);

    // Without --rm it stays, exited, with its output in the logs.
    let out = env.run(&["--name", "kept"], &["sh", "-c", "echo kept; exit 0"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "kept\n"));
    let kept = env.inspect("kept");
    assert_eq!(status_of(&kept), "exited");
    assert_eq!(kept["exit"]["exit_code"], 0);
    assert_eq!(env.ok(&["logs", "kept"]).stdout, "kept\n");
}

#[test]
fn capsule_is_pid_1_with_its_own_hostname_and_only_lo() {
    let Some(env) = setup("capsule_is_pid_1_with_its_own_hostname_and_only_lo", false) else {
        return;
    };
    let out = env.run(
        &["--rm", "--hostname", "box1"],
        &[
            "sh",
            "-c",
            "echo $$; hostname; ls /sys/class/net; for p in /proc/[0-9]*; do echo $p; done",
        ],
    );
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout, "1\nbox1\nlo\n/proc/1\n");
    // The default hostname is the short id, as docker.
    let out = env.run(&["-d", "--name", "h"], &["hostname"]);
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{out:?}");
    wait_until("h exits", || status_of(&env.inspect("h")) == "exited");
    assert_eq!(env.ok(&["logs", "h"]).stdout.trim(), &id[..12]);
    // Environment, workdir and user from flags.
    let out = env.run(
        &[
            "--rm",
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp/work",
            "-u",
            "65534:65534",
        ],
        &["sh", "-c", "echo $GREETING; pwd; id -u; id -g"],
    );
    assert_eq!(out.stdout, "hi\n/tmp/work\n65534\n65534\n", "{out:?}");
}

#[test]
fn memory_limit_kills_with_137_and_records_the_oom() {
    let Some(env) = setup("memory_limit_kills_with_137_and_records_the_oom", false) else {
        return;
    };
    let out = env.run(
        &["--name", "hog", "--memory", "16m"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(out.code, Some(137), "{out:?}");
    let v = env.inspect("hog");
    assert_eq!(v["exit"]["oom"], true, "{v}");
    assert_eq!(v["exit"]["signal"], 9);
    let id = v["id"].as_str().unwrap().to_string();
    let exited: Vec<Value> = env
        .events_of(&id)
        .into_iter()
        .filter(|(k, _)| k == "capsule.exited")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0]["oom"], true);
    assert_eq!(exited[0]["signal"], 9);
    let text = env.ok(&["ps", "-a"]).stdout;
    assert!(text.contains("Exited (137, OOM)"), "{text}");
}

#[test]
fn pids_limit_makes_fork_fail() {
    let Some(env) = setup("pids_limit_makes_fork_fail", false) else {
        return;
    };
    let out = env.run(
        &["--rm", "--pids-limit", "4"],
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; echo all",
        ],
    );
    assert!(out.stderr.contains("fork"), "{out:?}");
    assert!(!out.stdout.contains("all"));
}

#[test]
fn detached_capsule_lists_logs_execs_tops_stops_and_is_removed() {
    let Some(env) = setup(
        "detached_capsule_lists_logs_execs_tops_stops_and_is_removed",
        false,
    ) else {
        return;
    };
    let out = env.run(
        &["-d", "--name", "web"],
        &[
            "sh",
            "-c",
            "echo started; echo warm >&2; while true; do sleep 0.1; done",
        ],
    );
    assert!(out.ok(), "{out:?}");
    let id = out.stdout.trim().to_string();
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));

    // ps is a projection of the state.
    let ps = env.ps_all();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["id"], id.as_str());
    assert_eq!(ps[0]["name"], "web");
    assert_eq!(status_of(&ps[0]), "running");
    let table = env.ok(&["ps"]).stdout;
    assert!(
        table.contains(&id[..12]) && table.contains("Up "),
        "{table}"
    );

    wait_until("the logs show the first lines", || {
        let o = env.ok(&["logs", "web"]);
        o.stdout == "started\n" && o.stderr == "warm\n"
    });
    let last = env.ok(&["logs", "--tail", "1", "web"]);
    assert_eq!(
        last.stdout.lines().count() + last.stderr.lines().count(),
        1,
        "{last:?}"
    );
    let ts = env.ok(&["logs", "-t", "web"]).stdout;
    assert!(ts.starts_with("20") && ts.contains("Z started"), "{ts}");

    // exec: same namespaces (hostname, pid 1 is the capsule's), exit codes, 127.
    let out = env.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(
        out.stdout,
        format!(
            "{}\nsh -c echo started; echo warm >&2; while true; do sleep 0.1; done ",
            &id[..12]
        )
    );
    assert_eq!(
        env.bolt(&["exec", "web", "sh", "-c", "exit 7"]).code,
        Some(7)
    );
    let missing = env.bolt(&["exec", "web", "no-such-command"]);
    assert_eq!(missing.code, Some(127));
    one_error_line(&missing);
    let out = env
        .node
        .bolt_with_input(&["exec", "-i", "web", "cat"], b"through stdin\n")
        .unwrap();
    assert_eq!(out.stdout, "through stdin\n", "{out:?}");
    // exec -u: a name from the capsule's own /etc/passwd (read beneath its layers).
    let out = env.ok(&["exec", "-u", "nobody", "web", "sh", "-c", "id -u; id -g"]);
    assert_eq!(out.stdout, "65534\n65534\n", "{out:?}");
    // A passwd the capsule swapped for a link to a host file is not followed.
    env.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "rm /etc/passwd; ln -s /proc/1/root/etc/hostname /etc/passwd",
    ]);
    let err = env.bolt(&["exec", "-u", "nobody", "web", "true"]);
    assert_eq!(err.code, Some(125), "{err:?}");
    assert!(one_error_line(&err).contains("nobody"), "{err:?}");

    // top: the capsule's processes, with host pids.
    let top = env.ok(&["top", "web"]).stdout;
    let pid = env.inspect("web")["pid"].as_u64().unwrap();
    assert!(top.lines().next().unwrap().contains("PID"));
    assert!(
        top.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&pid.to_string())),
        "{top}"
    );
    assert!(top.contains("sh -c echo started"), "{top}");

    // rm of a running capsule is refused; stop (pid 1 ignores SIGTERM: SIGKILL after 1 s).
    let refused = env.bolt(&["rm", "web"]);
    assert!(one_error_line(&refused).contains("running"));
    env.ok(&["stop", "-t", "1", "web"]);
    let v = env.inspect("web");
    assert_eq!(status_of(&v), "exited");
    assert_eq!(v["exit"]["exit_code"], 137);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // The pid may be reused by now; it is not our capsule then.
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                != "sh\0-c\0echo started; echo warm >&2; while true; do sleep 0.1; done\0"
        }
    );
    assert!(
        !bolt_cgroups().contains(&id),
        "the cgroup goes when it exits"
    );
    env.ok(&["rm", "web"]);
    assert!(env.ps_all().is_empty());
    env.assert_gone(&id);
    let kinds: Vec<String> = env.events_of(&id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "capsule.created",
            "capsule.started",
            "capsule.stop_requested",
            "capsule.exited",
            "capsule.removed"
        ]
    );
}

#[test]
fn kill_and_forced_rm_of_running_capsules() {
    let Some(env) = setup("kill_and_forced_rm_of_running_capsules", false) else {
        return;
    };
    assert!(env.run(&["-d", "--name", "k"], &["sleep", "1000"]).ok());
    assert!(env.run(&["-d", "--name", "f"], &["sleep", "1000"]).ok());
    env.ok(&["kill", "-s", "KILL", "k"]);
    let v = env.inspect("k");
    assert_eq!(status_of(&v), "exited");
    assert_eq!(v["exit"]["signal"], 9);
    let id = env.inspect("f")["id"].as_str().unwrap().to_string();
    env.ok(&["rm", "-f", "f"]);
    env.assert_gone(&id);
    assert_eq!(env.ps_all().len(), 1);
}

#[test]
fn logs_follow_ends_when_the_capsule_exits_and_attach_carries_stdin() {
    let Some(env) = setup(
        "logs_follow_ends_when_the_capsule_exits_and_attach_carries_stdin",
        false,
    ) else {
        return;
    };
    assert!(env
        .run(
            &["-d", "--name", "lf"],
            &["sh", "-c", "echo a; sleep 1; echo b; exit 2"]
        )
        .ok());
    let out = env.ok(&["logs", "-f", "lf"]);
    assert_eq!(out.stdout, "a\nb\n");
    assert_eq!(status_of(&env.inspect("lf")), "exited");

    // A capsule with stdin open: attach sends our input, its output comes back, and attach
    // exits with the capsule's code once stdin's end made it exit.
    assert!(env
        .run(&["-d", "-i", "--name", "cat"], &["sh", "-c", "cat; exit 4"])
        .ok());
    let out = env
        .node
        .bolt_with_input(&["attach", "cat"], b"hello\nworld\n")
        .unwrap();
    assert_eq!(out.code, Some(4), "{out:?}");
    assert_eq!(out.stdout, "hello\nworld\n");
    // Foreground -i: the same through run.
    let out = env
        .node
        .bolt_with_input(&["run", "--rm", "-i", &env.image, "wc", "-l"], b"1\n2\n3\n")
        .unwrap();
    assert_eq!(out.stdout.trim(), "3", "{out:?}");
}

#[test]
fn restart_policy_on_failure_2_restarts_twice() {
    let Some(env) = setup("restart_policy_on_failure_2_restarts_twice", false) else {
        return;
    };
    assert!(env
        .run(
            &["-d", "--name", "rp", "--restart", "on-failure:2"],
            &["sh", "-c", "echo run; exit 1"],
        )
        .ok());
    let id = env.inspect("rp")["id"].as_str().unwrap().to_string();
    wait_until("two restarts and a final exit", || {
        let v = env.inspect("rp");
        v["restarts"] == 2 && status_of(&v) == "exited"
    });
    // Settled: no third restart follows.
    let kinds: Vec<String> = env.events_of(&id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "capsule.created",
            "capsule.started",
            "capsule.exited",
            "capsule.started",
            "capsule.exited",
            "capsule.started",
            "capsule.exited"
        ]
    );
    assert_eq!(env.ok(&["logs", "rp"]).stdout, "run\nrun\nrun\n");
    assert_eq!(env.inspect("rp")["restart"], "on-failure:2");

    // A success is not restarted by on-failure; `always` restarts until stopped by a person.
    assert!(env
        .run(
            &["-d", "--name", "ok", "--restart", "on-failure"],
            &["true"]
        )
        .ok());
    wait_until("ok exits", || status_of(&env.inspect("ok")) == "exited");
    assert_eq!(env.inspect("ok")["restarts"], 0);
    assert!(env
        .run(
            &["-d", "--name", "al", "--restart", "always"],
            &["sh", "-c", "sleep 0.2"]
        )
        .ok());
    wait_until("always restarts", || {
        env.inspect("al")["restarts"].as_u64().unwrap() >= 2
    });
    env.ok(&["stop", "-t", "1", "al"]);
    let stopped = env.inspect("al");
    assert_eq!(status_of(&stopped), "exited");
    let restarts = stopped["restarts"].clone();
    // Give a (wrong) restart every chance to happen before checking that none did.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.inspect("al")["restarts"], restarts);
    assert_eq!(status_of(&env.inspect("al")), "exited");
    // The person's stop is an event in the log, not a file beside the capsule.
    let al = env.inspect("al")["id"].as_str().unwrap().to_owned();
    let kinds: Vec<String> = env.events_of(&al).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "capsule.stop_requested")
            .count(),
        1,
        "{kinds:?}"
    );
    // `bolt start` overrides it, and the policy applies again from that start.
    let before = restarts.as_u64().unwrap();
    env.ok(&["start", "al"]);
    wait_until("always restarts after a start", || {
        env.inspect("al")["restarts"].as_u64().unwrap() >= before + 2
    });
    env.ok(&["rm", "-f", "al"]);
}

#[test]
fn a_sigkilled_agent_leaves_capsules_running_and_readopts_them() {
    let Some(mut env) = setup(
        "a_sigkilled_agent_leaves_capsules_running_and_readopts_them",
        false,
    ) else {
        return;
    };
    let wait_go = "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo done; exit 4";
    assert!(env
        .run(&["-d", "--name", "keep"], &["sh", "-c", wait_go])
        .ok());
    assert!(env.run(&["-d", "--name", "dies"], &["sleep", "1000"]).ok());
    let keep_pid = env.inspect("keep")["pid"].as_u64().unwrap() as i32;
    let dies_pid = env.inspect("dies")["pid"].as_u64().unwrap() as i32;

    env.node.stop_with(Signal::SIGKILL).unwrap();
    // The capsules outlive the agent; one of them ends while no agent watches.
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    assert!(alive(keep_pid) && alive(dies_pid));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dies_pid), Signal::SIGKILL).unwrap();

    env.node.start().unwrap();
    let keep = env.inspect("keep");
    assert_eq!(status_of(&keep), "running", "{keep}");
    assert_eq!(keep["pid"], keep_pid);
    wait_until("the exit that happened meanwhile is recorded", || {
        status_of(&env.inspect("dies")) == "exited"
    });
    assert_eq!(env.inspect("dies")["exit"]["signal"], 9);

    // The re-adopted capsule is still managed: exec into it, and its exit is recorded.
    env.ok(&["exec", "keep", "touch", "/tmp/go"]);
    wait_until("keep's exit is recorded", || {
        status_of(&env.inspect("keep")) == "exited"
    });
    let v = env.inspect("keep");
    assert_eq!(v["exit"]["code"], 4);
    assert_eq!(env.ok(&["logs", "keep"]).stdout, "done\n");
    let id = v["id"].as_str().unwrap().to_string();
    let exited = env
        .events_of(&id)
        .into_iter()
        .filter(|(k, _)| k == "capsule.exited")
        .count();
    assert_eq!(exited, 1, "the exit is recorded once");
    env.ok(&["rm", "keep", "dies"]);
    env.assert_gone(&id);
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let Some(env) = setup("bad_input_is_one_line_and_leaves_nothing", true) else {
        return;
    };
    let cgroups = bolt_cgroups();
    let registry = env.image.split('/').next().unwrap().to_string();
    let nothing_left = |what: &str| {
        assert!(
            env.capsule_dirs().is_empty(),
            "{what}: {:?}",
            env.capsule_dirs()
        );
        assert_eq!(bolt_cgroups(), cgroups, "{what}: a cgroup is left");
        assert!(env.ps_all().is_empty(), "{what}");
        assert!(env.capsule_events().is_empty(), "{what}: events recorded");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = env.node.root().to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&root), "{what}: a mount is left");
    };

    let unknown = format!("{registry}/bolt-test/no-such-image:latest");
    let out = env.bolt(&["run", "--rm", &unknown, "true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(one_error_line(&out).contains("no-such-image"));
    nothing_left("unknown image");

    let out = env.run(&["--rm"], &["no-such-command"]);
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(one_error_line(&out).contains("no-such-command"));
    nothing_left("missing command");

    let out = env.run(&[], &["/etc/passwd"]);
    assert_eq!(out.code, Some(126), "{out:?}");
    one_error_line(&out);
    nothing_left("not executable");

    let out = env.run(&["--memory", "12qq"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(one_error_line(&out).contains("12qq"));
    nothing_left("bad memory size");

    let out = env.run(&["--network", "bogus"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    one_error_line(&out);
    nothing_left("bad network");

    // Bad -v / --tmpfs specs: one line naming the spec; no volume made or recorded.
    for flags in [
        ["-v", "data:relative"],
        ["-v", "b@d:/data"],
        ["-v", "/tmp:/data:zz"],
        ["--tmpfs", "/scratch:size=lots"],
    ] {
        let out = env.run(&flags, &["true"]);
        assert_eq!(out.code, Some(125), "{out:?}");
        assert!(one_error_line(&out).contains(flags[1]), "{out:?}");
        nothing_left("bad mount spec");
        assert!(
            env.volume_events().is_empty(),
            "{flags:?}: a volume recorded"
        );
        let vols = env.node.root().join("volumes");
        assert!(
            std::fs::read_dir(&vols).map_or(true, |mut d| d.next().is_none()),
            "{flags:?}: a volume left in {vols:?}"
        );
    }
    // A bind of a missing host path: refused the same way.
    let out = env.run(&["-v", "/no/such/bolt/path:/data"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        one_error_line(&out).contains("/no/such/bolt/path"),
        "{out:?}"
    );
    nothing_left("missing bind source");

    // A duplicate name: refused; the first capsule is untouched.
    assert!(env.run(&["-d", "--name", "dup"], &["sleep", "1000"]).ok());
    let dirs = env.capsule_dirs();
    let out = env.run(&["--name", "dup"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(one_error_line(&out).contains("dup"));
    assert_eq!(env.capsule_dirs(), dirs);
    assert_eq!(env.ps_all().len(), 1);
    assert_eq!(status_of(&env.inspect("dup")), "running");
    env.ok(&["rm", "-f", "dup"]);
    nothing_left_after_removal(&env, &cgroups);
}

#[test]
fn named_volumes_persist_ro_refuses_writes_and_tmpfs_is_a_tmpfs() {
    let Some(env) = setup(
        "named_volumes_persist_ro_refuses_writes_and_tmpfs_is_a_tmpfs",
        false,
    ) else {
        return;
    };
    // One capsule writes to a named volume (created on demand, recorded once).
    let out = env.run(
        &["--rm", "-v", "shared:/data"],
        &["sh", "-c", "echo from-first > /data/note"],
    );
    assert!(out.ok(), "{out:?}");
    let host = env.node.root().join("volumes/shared/_data/note");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "from-first\n");
    let created = env.volume_events();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["kind"], "volume.created", "{created:?}");

    // The next one reads it, read-only, and cannot write there.
    let out = env.run(&["--rm", "-v", "shared:/data:ro"], &["cat", "/data/note"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout, "from-first\n");
    let out = env.run(
        &["--rm", "-v", "shared:/data:ro"],
        &["sh", "-c", "echo x > /data/other"],
    );
    assert!(
        !out.ok(),
        "a write to a read-only volume succeeded: {out:?}"
    );
    assert!(!env.node.root().join("volumes/shared/_data/other").exists());
    assert_eq!(
        env.volume_events().len(),
        1,
        "the volume was recorded again"
    );

    // A host bind, and a tmpfs.
    let hostdir = tempfile::tempdir().unwrap();
    std::fs::write(hostdir.path().join("in"), "bound\n").unwrap();
    let bind = format!("{}:/host", hostdir.path().display());
    let out = env.run(
        &["--rm", "-v", &bind, "--tmpfs", "/scratch"],
        &["sh", "-c", "cat /host/in && grep ' /scratch ' /proc/mounts"],
    );
    assert!(out.ok(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"bound"), "{out:?}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("tmpfs /scratch tmpfs ")),
        "{out:?}"
    );
}

#[test]
fn volume_commands_create_list_inspect_refuse_in_use_removal_and_prune() {
    let Some(env) = setup(
        "volume_commands_create_list_inspect_refuse_in_use_removal_and_prune",
        false,
    ) else {
        return;
    };
    assert_eq!(
        env.ok(&["volume", "create", "--label", "k=v", "made"])
            .stdout,
        "made\n"
    );
    let out = env.bolt(&["volume", "create", "made"]);
    assert!(one_error_line(&out).contains("made"), "{out:?}");
    let out = env.bolt(&["volume", "create", "b@d"]);
    assert!(one_error_line(&out).contains("b@d"), "{out:?}");

    // Used by a capsule (named volume created on demand by run).
    let id = env
        .ok(&["run", "-d", "-v", "used:/data", &env.image, "sleep", "1000"])
        .stdout
        .trim()
        .to_string();
    let names: BTreeSet<String> = env
        .ok(&["volume", "ls", "-q"])
        .lines()
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["made".to_string(), "used".to_string()])
    );
    let table = env.ok(&["volume", "ls"]).stdout;
    assert!(table.starts_with("VOLUME NAME"), "{table}");
    let v: Value = serde_json::from_str(&env.ok(&["volume", "inspect", "made"]).stdout).unwrap();
    assert_eq!(v[0]["name"], "made");
    assert_eq!(v[0]["labels"]["k"], "v");
    assert_eq!(
        v[0]["mountpoint"].as_str().unwrap(),
        env.node.root().join("volumes/made/_data").to_str().unwrap()
    );
    let out = env.bolt(&["volume", "inspect", "nope"]);
    assert!(one_error_line(&out).contains("nope"), "{out:?}");

    // In use while the capsule is not removed, running or stopped.
    let out = env.bolt(&["volume", "rm", "used"]);
    assert!(one_error_line(&out).contains("used"), "{out:?}");
    env.ok(&["kill", &id]);
    let out = env.bolt(&["volume", "rm", "used"]);
    one_error_line(&out);
    assert!(env.node.root().join("volumes/used").exists());
    // A prune of everything unused leaves it too.
    let pruned = env.ok(&["volume", "prune", "--all"]).stdout;
    assert!(pruned.lines().any(|l| l == "made"), "{pruned}");
    assert!(!pruned.lines().any(|l| l == "used"), "{pruned}");
    assert!(!env.node.root().join("volumes/made").exists());

    env.ok(&["rm", &id]);
    assert_eq!(env.ok(&["volume", "rm", "used"]).stdout, "used\n");
    assert!(!env.node.root().join("volumes/used").exists());
    assert!(env.ok(&["volume", "ls", "-q"]).stdout.is_empty());
    // Volumes are what the log says: a directory that looks like a volume but was never
    // recorded is not listed, nor inspected.
    let ghost = env.node.root().join("volumes/ghost");
    std::fs::create_dir_all(ghost.join("_data")).unwrap();
    std::fs::write(
        ghost.join("volume.json"),
        r#"{"name":"ghost","driver":"local","created_ms":1}"#,
    )
    .unwrap();
    assert!(env.ok(&["volume", "ls", "-q"]).stdout.is_empty());
    let out = env.bolt(&["volume", "inspect", "ghost"]);
    assert!(one_error_line(&out).contains("ghost"), "{out:?}");
    std::fs::remove_dir_all(&ghost).unwrap();
    let kinds: Vec<String> = env
        .volume_events()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["payload"]["volume"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .map(|f| f["name"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "volume.created made",
            "volume.created used",
            "volume.removed made",
            "volume.removed used"
        ],
        "{:?}",
        env.volume_events()
    );

    // An anonymous volume is recorded by its generated name: prune leaves it while used.
    let id = env
        .ok(&["run", "-d", "-v", "/anon", &env.image, "sleep", "1000"])
        .stdout
        .trim()
        .to_string();
    let anon = env.ok(&["volume", "ls", "-q"]).stdout.trim().to_string();
    assert!(!anon.is_empty() && !anon.contains('\n'), "{anon:?}");
    let mounts = env.inspect(&id)["spec"]["mounts"].clone();
    assert_eq!(mounts, serde_json::json!([format!("{anon}:/anon")]));
    let pruned = env.ok(&["volume", "prune"]).stdout;
    assert!(!pruned.contains(&anon), "{pruned}");
    assert!(env.node.root().join("volumes").join(&anon).exists());
    env.ok(&["rm", "-f", &id]);
    let pruned = env.ok(&["volume", "prune"]).stdout;
    assert!(pruned.lines().any(|l| l == anon), "{pruned}");
    assert!(!env.node.root().join("volumes").join(&anon).exists());
}

fn nothing_left_after_removal(env: &Env, cgroups: &BTreeSet<String>) {
    assert!(env.capsule_dirs().is_empty());
    assert_eq!(&bolt_cgroups(), cgroups);
    assert!(env.ps_all().is_empty());
}

#[test]
fn tty_gives_the_capsule_and_exec_a_terminal() {
    let Some(env) = setup("tty_gives_the_capsule_and_exec_a_terminal", false) else {
        return;
    };
    let out = env.run(
        &["--rm", "-t"],
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && test -t 2 && echo tty; exit 6",
        ],
    );
    assert_eq!(out.code, Some(6), "{out:?}");
    // A pty turns "\n" into "\r\n", and carries stderr on the same stream.
    assert_eq!(out.stdout, "tty\r\n");
    assert!(env.run(&["-d", "--name", "t"], &["sleep", "1000"]).ok());
    let out = env.ok(&["exec", "-t", "t", "sh", "-c", "test -t 1 && echo exec-tty"]);
    assert_eq!(out.stdout, "exec-tty\r\n");
    let out = env.ok(&["exec", "t", "sh", "-c", "test -t 1 || echo no-tty"]);
    assert_eq!(out.stdout, "no-tty\n");
    // The pty is the controlling terminal of a session the process leads (so ^C and job
    // control work): /proc/PID/stat's session is the shell itself and tty_nr is set.
    let stat = "read pid comm state ppid pgrp sid tty rest < /proc/$$/stat; echo $pid $sid $tty";
    for (how, out) in [
        ("run -t", env.run(&["--rm", "-t"], &["sh", "-c", stat])),
        ("exec -t", env.ok(&["exec", "-t", "t", "sh", "-c", stat])),
    ] {
        let f: Vec<&str> = out.stdout.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{how}: {out:?}");
        assert_eq!(
            f[0], f[1],
            "{how}: the shell leads its own session: {out:?}"
        );
        assert_ne!(
            f[2], "0",
            "{how}: the shell has a controlling terminal: {out:?}"
        );
    }
    let out = env.ok(&["exec", "t", "sh", "-c", stat]);
    assert!(
        out.stdout.trim_end().ends_with(" 0"),
        "no -t, no controlling terminal: {out:?}"
    );
    env.ok(&["rm", "-f", "t"]);
}

/// The value of a cgroup file of capsule `id`: v1 (`/sys/fs/cgroup/<v1 dir>/bolt/<id>/<file>`)
/// or v2 (`/sys/fs/cgroup/bolt/<id>/<v2 file>`).
fn cgroup_value(id: &str, v1: (&str, &str), v2: &str) -> String {
    let v1_path = Path::new("/sys/fs/cgroup")
        .join(v1.0)
        .join("bolt")
        .join(id)
        .join(v1.1);
    let v2_path = Path::new("/sys/fs/cgroup/bolt").join(id).join(v2);
    std::fs::read_to_string(&v1_path)
        .or_else(|_| std::fs::read_to_string(&v2_path))
        .unwrap_or_else(|e| panic!("{} / {}: {e}", v1_path.display(), v2_path.display()))
        .trim()
        .to_string()
}

#[test]
fn limits_from_the_flags_reach_the_capsules_cgroup() {
    let Some(env) = setup("limits_from_the_flags_reach_the_capsules_cgroup", false) else {
        return;
    };
    let out = env.run(
        &[
            "-d",
            "--name",
            "lim",
            "--memory",
            "48m",
            "--cpus",
            "0.25",
            "--pids-limit",
            "33",
        ],
        &["sleep", "1000"],
    );
    assert!(out.ok(), "{out:?}");
    let id = out.stdout.trim().to_string();
    let memory = cgroup_value(&id, ("memory", "memory.limit_in_bytes"), "memory.max");
    assert_eq!(memory, (48u64 << 20).to_string());
    let pids = cgroup_value(&id, ("pids", "pids.max"), "pids.max");
    assert_eq!(pids, "33");
    let quota = cgroup_value(&id, ("cpu", "cpu.cfs_quota_us"), "cpu.max");
    assert!(quota == "25000" || quota == "25000 100000", "{quota}");
    let v = env.inspect("lim");
    assert_eq!(v["spec"]["memory_bytes"], 48u64 << 20);
    assert_eq!(v["spec"]["cpu_millis"], 250);
    assert_eq!(v["spec"]["pids_limit"], 33);
    env.ok(&["rm", "-f", "lim"]);
    env.assert_gone(&id);
}

#[test]
fn start_runs_an_exited_capsule_again_in_its_own_layer() {
    let Some(env) = setup("start_runs_an_exited_capsule_again_in_its_own_layer", false) else {
        return;
    };
    // Each run appends to a file in the capsule's writable layer and prints the count.
    let count = "echo x >> /runs; wc -l < /runs; exit 3";
    let out = env.run(&["--name", "again"], &["sh", "-c", count]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    let id = env.inspect("again")["id"].as_str().unwrap().to_owned();
    assert_eq!(env.ok(&["start", "again"]).stdout, "again\n");
    wait_until("the second run to be recorded", || {
        env.events_of(&id)
            .iter()
            .filter(|(k, _)| k == "capsule.exited")
            .count()
            == 2
    });
    let logs = env.ok(&["logs", "again"]).stdout;
    assert_eq!(logs.lines().collect::<Vec<_>>(), ["1", "2"], "{logs:?}");
    let kinds: Vec<String> = env.events_of(&id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "capsule.created",
            "capsule.started",
            "capsule.exited",
            "capsule.started",
            "capsule.exited"
        ]
    );
    assert_eq!(env.inspect("again")["exit"]["exit_code"], 3);
    // A running capsule is left as it is; an unknown one is an error naming it.
    assert!(env.run(&["-d", "--name", "up"], &["sleep", "1000"]).ok());
    let pid = env.inspect("up")["pid"].clone();
    assert!(pid.is_u64(), "{pid}");
    env.ok(&["start", "up"]);
    assert_eq!(env.inspect("up")["pid"], pid);
    let out = env.bolt(&["start", "nosuch"]);
    assert!(!out.ok());
    assert!(one_error_line(&out).contains("nosuch"), "{out:?}");
    env.ok(&["rm", "-f", "up", "again"]);
}

#[test]
fn device_flag_grants_one_device_and_nothing_else_opens() {
    let Some(env) = setup(
        "device_flag_grants_one_device_and_nothing_else_opens",
        false,
    ) else {
        return;
    };
    // Without --device a node made in the capsule's /dev (c 1:11, the host's /dev/kmsg) is
    // refused by the cgroup. Opening for writing without writing logs nothing.
    let script = "mknod /dev/k c 1 11 2>/dev/null; ls /dev/k >/dev/null && \
        ((: > /dev/k) 2>&1 && echo opened || echo refused)";
    let out = env.run(&["--rm"], &["sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("refused"), "{out:?}");
    assert!(out.stdout.contains("Operation not permitted"), "{out:?}");
    // Granted write-only at another path: made there, opens for writing, not for reading.
    let out = env.run(
        &["--name", "dev", "--device", "/dev/kmsg:/dev/k:w"],
        &[
            "sh",
            "-c",
            "(: > /dev/k) && echo w-opened; ((: < /dev/k) 2>/dev/null && echo r-opened || echo r-refused)",
        ],
    );
    assert_eq!(out.stdout, "w-opened\nr-refused\n", "{out:?}");
    assert_eq!(
        env.inspect("dev")["spec"]["labels"]["bolt.devices"],
        "/dev/kmsg:/dev/k:w"
    );
    env.ok(&["rm", "dev"]);
    for (spec, want) in [
        ("/dev/kmsg:/etc/k", "invalid device"),
        ("/dev/kmsg:/dev/null", "invalid device"),
        ("/etc/hostname:/dev/x", "not a character or block device"),
        ("/dev/no-such-device", "stat device"),
    ] {
        let out = env.run(&["--rm", "--device", spec], &["true"]);
        assert_eq!(out.code, Some(125), "{spec}: {out:?}");
        assert!(one_error_line(&out).contains(want), "{spec}: {out:?}");
    }
    assert!(env.ps_all().is_empty());
}
