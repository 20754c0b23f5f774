//! End to end: btrfs snapshots of a capsule's writable layer and of a volume
//! (`bolt snapshot create/ls/restore/rm`), their refusal off btrfs, and `bolt commit`, through
//! the real `bolt` binary.
//!
//! The btrfs tests run an agent whose root is on a throwaway btrfs: a sparse file on a loop
//! device (`losetup`, `mkfs.btrfs`) mounted in a temporary directory. A drop guard stops the
//! agent and its capsules, unmounts the filesystem, detaches the loop device and removes the
//! file, also when the test fails; the test then checks that no mount or loop device is left.
//!
//! Needs root, `mkfs.btrfs`, `btrfs`, `losetup` and the loopback test registry
//! (`BOLT_TEST_REGISTRY`, image `bolt-test/busybox:latest`). Skipped with a message otherwise;
//! failed instead when `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bolt_tests::{
    busybox, mounts_under, one_error_line, root_and_registry, Node, Output, PATIENCE,
};
use serde_json::Value;

/// A btrfs in a sparse file on a loop device, mounted in a temporary directory under /var/tmp.
/// Dropping it unmounts, detaches the loop device and removes the file and the directory.
struct LoopBtrfs {
    dir: Option<tempfile::TempDir>,
    image: PathBuf,
    mount: PathBuf,
    device: Option<String>,
    mounted: bool,
}

impl LoopBtrfs {
    fn new() -> LoopBtrfs {
        let dir = tempfile::Builder::new()
            .prefix("bolt-e2e-btrfs-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        // From here on, the guard undoes whatever was done, whichever step fails.
        let mut me = LoopBtrfs {
            dir: Some(dir),
            image: image.clone(),
            mount: mount.clone(),
            device: None,
            mounted: false,
        };
        std::fs::File::create(&image)
            .unwrap()
            .set_len(400 << 20)
            .unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        me.device = Some(dev.clone());
        let out = Command::new("mkfs.btrfs")
            .args(["-q", "-f", &dev])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.btrfs: {out:?}");
        nix::mount::mount(
            Some(dev.as_str()),
            &mount,
            Some("btrfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        me.mounted = true;
        me
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted {
            if nix::mount::umount(&self.mount).is_err() {
                let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
            }
            self.mounted = false;
        }
        if let Some(dev) = self.device.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).output();
        }
        let _ = std::fs::remove_file(&self.image);
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// Loop devices backed by `image`.
fn loop_devices_of(image: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An agent on a root (on btrfs or not). Fields drop in order: the node (agent, capsules,
/// their mounts) before the filesystem it lives on.
struct Env {
    node: Node,
    image: String,
    fs: Option<LoopBtrfs>,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    /// An agent whose root is on a fresh btrfs.
    fn on_btrfs(test: &str) -> Option<Env> {
        let registry = root_and_registry(test)?;
        for tool in ["mkfs.btrfs", "btrfs", "losetup"] {
            if !bolt_skip::tool(test, tool) {
                return None;
            }
        }
        let fs = LoopBtrfs::new();
        let node = Self::node(fs.path());
        Some(Env {
            node,
            image: busybox(&registry),
            fs: Some(fs),
            _dir: None,
        })
    }

    /// An agent on an ordinary temporary directory.
    fn plain(test: &str) -> Option<Env> {
        let registry = root_and_registry(test)?;
        let dir = tempfile::tempdir().unwrap();
        let node = Self::node(dir.path());
        Some(Env {
            node,
            image: busybox(&registry),
            fs: None,
            _dir: Some(dir),
        })
    }

    fn node(dir: &Path) -> Node {
        let mut node = Node::without_registry_auth(dir, "n").unwrap();
        node.start().unwrap();
        node
    }

    fn bolt(&self, args: &[&str]) -> Output {
        self.node.bolt(args).unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        self.node.ok(args)
    }

    /// The one-line error of a command that must fail.
    fn fails(&self, args: &[&str]) -> String {
        one_error_line(&self.bolt(args))
    }

    fn exec(&self, capsule: &str, script: &str) -> String {
        self.ok(&["exec", capsule, "sh", "-c", script]).stdout
    }

    fn status(&self, capsule: &str) -> String {
        let out = self.ok(&["inspect", "--format", "json", capsule]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v[0]["status"].as_str().unwrap().to_owned()
    }

    fn snapshots(&self, target: Option<&str>) -> Vec<Value> {
        let mut args = vec!["snapshot", "ls", "--format", "json"];
        args.extend(target);
        self.ok(&args)
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn event_kinds(&self, prefix: &str) -> Vec<String> {
        self.ok(&["events", "--format", "json"])
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    /// Stops everything and tears the filesystem down; checks that no mount, loop device or
    /// file of it is left.
    fn finish(self) {
        let Env { node, fs, _dir, .. } = self;
        drop(node);
        if let Some(fs) = fs {
            let image = fs.image.clone();
            let dir = fs.mount.parent().unwrap().to_path_buf();
            drop(fs);
            assert!(mounts_under(&dir).is_empty(), "mounts left under {dir:?}");
            assert!(loop_devices_of(&image).is_empty(), "loop device left");
            assert!(!dir.exists(), "{dir:?} left");
        }
        drop(_dir);
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_btrfs_snapshot_restore_brings_back_the_earlier_content() {
    let Some(mut env) = Env::on_btrfs("a_btrfs_snapshot_restore_brings_back_the_earlier_content")
    else {
        return;
    };
    let root = env.node.root().to_path_buf();
    // A create that fails leaves no layer (subvolume) behind.
    let out = env.bolt(&["run", "--name", "broken", &env.image, "/no/such/command"]);
    assert!(!out.ok(), "{out:?}");
    let left: Vec<_> = std::fs::read_dir(root.join("capsules"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // `--restart always`: the capsule starts again on its own layer when the agent restarts
    // (Bolt has no `start` command yet).
    let id = env
        .ok(&[
            "run",
            "-d",
            "--name",
            "keeper",
            "--restart",
            "always",
            "-v",
            "appdata:/data",
            &env.image,
            "sleep",
            "100000",
        ])
        .stdout
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "{id:?}");
    // Its layer and the volume are subvolumes: btrfs gives a subvolume's root inode 256.
    for p in [
        root.join("capsules").join(&id).join("layer"),
        root.join("volumes/appdata/_data"),
    ] {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), 256, "{p:?}");
    }

    env.exec(
        "keeper",
        "echo one > /etc/state && mkdir /etc/dir && echo vol-one > /data/f",
    );
    assert_eq!(
        env.ok(&["snapshot", "create", "capsule:keeper", "s1"])
            .stdout,
        "s1\n"
    );
    env.ok(&["snapshot", "create", "volume:appdata", "v1"]);
    env.exec(
        "keeper",
        "echo two > /etc/state && rmdir /etc/dir && echo new > /etc/added && echo vol-two > /data/f",
    );

    // Restores are refused while the capsule runs: it, and the volume it mounts.
    let e = env.fails(&["snapshot", "restore", "capsule:keeper", "s1"]);
    assert!(e.contains("is running") && e.contains("stop it"), "{e}");
    let e = env.fails(&["snapshot", "restore", "volume:appdata", "v1"]);
    assert!(e.contains("mounted by running capsule"), "{e}");
    assert_eq!(
        env.exec("keeper", "cat /etc/state /data/f"),
        "two\nvol-two\n"
    );
    // Bad input: a target without its kind, a taken name, an unknown snapshot.
    let e = env.fails(&["snapshot", "create", "keeper", "s2"]);
    assert!(e.contains("expected capsule:NAME or volume:NAME"), "{e}");
    let e = env.fails(&["snapshot", "create", "capsule:keeper", "s1"]);
    assert!(e.contains("already has a snapshot named s1"), "{e}");
    let e = env.fails(&["snapshot", "create", "capsule:ghost", "s1"]);
    assert!(e.contains("no such capsule"), "{e}");

    env.ok(&["stop", "-t", "1", "keeper"]);
    assert_eq!(
        env.ok(&["snapshot", "restore", "capsule:keeper", "s1"])
            .stdout,
        "s1\n"
    );
    env.ok(&["snapshot", "restore", "volume:appdata", "v1"]);
    // Nothing is left beside the restored layer or volume.
    let beside: Vec<String> = std::fs::read_dir(root.join("capsules").join(&id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".restore-"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // Start it again (the agent restarts `always` capsules) on the restored layer and volume.
    env.node.stop().unwrap();
    env.node.start().unwrap();
    wait_until("keeper runs again", || env.status("keeper") == "running");
    assert_eq!(
        env.exec(
            "keeper",
            "cat /etc/state /data/f; test -d /etc/dir && echo dir; test -e /etc/added || echo no-added"
        ),
        "one\nvol-one\ndir\nno-added\n"
    );

    // `ls` is the state's projection: both targets, with their restore counts.
    let all = env.snapshots(None);
    let brief: Vec<(String, String, String, u64)> = all
        .iter()
        .map(|v| {
            (
                v["target_kind"].as_str().unwrap().to_owned(),
                v["target_name"].as_str().unwrap().to_owned(),
                v["name"].as_str().unwrap().to_owned(),
                v["restores"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        brief.contains(&("capsule".into(), "keeper".into(), "s1".into(), 1)),
        "{brief:?}"
    );
    assert!(
        brief.contains(&("volume".into(), "appdata".into(), "v1".into(), 1)),
        "{brief:?}"
    );
    assert_eq!(all.len(), 2, "{all:?}");
    let only = env.snapshots(Some("volume:appdata"));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["target"], "appdata");
    let snap_path = PathBuf::from(
        env.snapshots(Some("capsule:keeper"))[0]["path"]
            .as_str()
            .unwrap(),
    );
    assert!(snap_path.join("upper/etc/state").is_file(), "{snap_path:?}");
    let table = env.ok(&["snapshot", "ls"]).stdout;
    assert!(table.starts_with("TARGET"), "{table}");
    assert!(
        table.contains("capsule:keeper") && table.contains("volume:appdata"),
        "{table}"
    );

    // `rm` removes one (state and disk).
    env.ok(&["snapshot", "rm", "capsule:keeper", "s1"]);
    assert!(env.snapshots(Some("capsule:keeper")).is_empty());
    assert!(!snap_path.exists(), "{snap_path:?} left");
    let e = env.fails(&["snapshot", "rm", "capsule:keeper", "s1"]);
    assert!(e.contains("no snapshot named s1"), "{e}");

    assert_eq!(
        env.event_kinds("snapshot."),
        [
            "snapshot.created",
            "snapshot.created",
            "snapshot.restored",
            "snapshot.restored",
            "snapshot.removed"
        ]
    );

    // Removing the capsule and the volume takes their snapshots (state and disk).
    env.ok(&["rm", "-f", "keeper"]);
    env.ok(&["volume", "rm", "appdata"]);
    assert!(env.snapshots(None).is_empty());
    let left: Vec<PathBuf> = ["snapshots/capsules", "snapshots/volumes"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().flatten())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    env.finish();
}

#[test]
fn snapshots_off_btrfs_say_they_need_btrfs_and_change_nothing() {
    let Some(env) = Env::plain("snapshots_off_btrfs_say_they_need_btrfs_and_change_nothing") else {
        return;
    };
    let root = env.node.root().to_path_buf();
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&root)
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_owned();
    if !bolt_skip::unless(
        "snapshots_off_btrfs_say_they_need_btrfs_and_change_nothing",
        fs != "btrfs",
        "needs a temporary directory off btrfs, and it is on btrfs",
    ) {
        return;
    }
    env.ok(&[
        "run",
        "--name",
        "plain",
        "-v",
        "pdata:/data",
        &env.image,
        "true",
    ]);
    let before = env.ok(&["events", "--format", "json"]).lines().len();
    for args in [
        &["snapshot", "create", "capsule:plain", "s1"][..],
        &["snapshot", "create", "volume:pdata", "s1"],
        &["snapshot", "restore", "capsule:plain", "s1"],
        &["snapshot", "rm", "volume:pdata", "s1"],
        &["snapshot", "ls"],
    ] {
        let e = env.fails(args);
        assert!(
            e.contains("snapshots need btrfs") && e.contains(&format!("{} is on ", root.display())),
            "{args:?}: {e}"
        );
    }
    assert_eq!(
        env.ok(&["events", "--format", "json"]).lines().len(),
        before,
        "a refused snapshot appended an event"
    );
    let snaps: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(snaps.is_empty(), "{snaps:?}");
    env.ok(&["rm", "plain"]);
    env.finish();
}

#[test]
fn commit_makes_an_image_that_runs_with_the_capsules_changes() {
    let Some(env) = Env::plain("commit_makes_an_image_that_runs_with_the_capsules_changes") else {
        return;
    };
    env.ok(&[
        "run",
        "--name",
        "maker",
        &env.image,
        "sh",
        "-c",
        "echo hello-from-commit > /hello && rmdir /tmp",
    ]);
    let digest = env
        .ok(&[
            "commit",
            "-m",
            "add hello",
            "-c",
            r#"CMD ["cat", "/hello"]"#,
            "-c",
            "ENV GREETING=hi",
            "maker",
            "committed:1",
        ])
        .stdout
        .trim()
        .to_owned();
    assert!(digest.starts_with("sha256:"), "{digest:?}");

    // Listed, and recorded like a pull.
    let images = env.ok(&["images"]).stdout;
    assert!(images.contains("committed"), "{images}");
    let pulled: Vec<Value> = env
        .ok(&["events", "--format", "json"])
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "image.pulled")
        .collect();
    assert!(
        pulled.iter().any(|e| {
            let p = &e["payload"]["image"]["pulled"];
            p["digest"] == digest.as_str() && p["reference"].as_str().unwrap().contains("committed")
        }),
        "{pulled:?}"
    );

    // A new capsule on it sees the file and the deletion; its CMD and ENV are the changes.
    let out = env.ok(&["run", "--rm", "committed:1", "cat", "/hello"]);
    assert_eq!(out.stdout, "hello-from-commit\n");
    let out = env.ok(&["run", "--rm", "committed:1"]);
    assert_eq!(out.stdout, "hello-from-commit\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "committed:1",
        "sh",
        "-c",
        "echo $GREETING; test -e /tmp || echo no-tmp; test -x /bin/busybox && echo base",
    ]);
    assert_eq!(out.stdout, "hi\nno-tmp\nbase\n");

    let e = env.fails(&["commit", "-c", "EXPOSE 80", "maker", "committed:2"]);
    assert!(e.contains("invalid --change"), "{e}");
    let e = env.fails(&["commit", "ghost", "committed:3"]);
    assert!(e.contains("no such capsule"), "{e}");
    env.ok(&["rm", "maker"]);
    env.finish();
}

/// Whether capsule `id`'s cgroup is frozen, from whichever freezer file this host has (v1
/// `freezer.state`, v2 `cgroup.freeze`); `None` when neither exists.
fn frozen(id: &str) -> Option<bool> {
    let v1 = Path::new("/sys/fs/cgroup/freezer/bolt")
        .join(id)
        .join("freezer.state");
    let v2 = Path::new("/sys/fs/cgroup/bolt")
        .join(id)
        .join("cgroup.freeze");
    if let Ok(s) = std::fs::read_to_string(v1) {
        return Some(s.trim() != "THAWED");
    }
    std::fs::read_to_string(v2).ok().map(|s| s.trim() != "0")
}

#[test]
fn committing_a_busy_running_capsule_pauses_it_and_leaves_it_running() {
    let Some(env) = Env::plain("committing_a_busy_running_capsule_pauses_it_and_leaves_it_running")
    else {
        return;
    };
    let id = env
        .ok(&[
            "run",
            "-d",
            "--name",
            "busy",
            &env.image,
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /count; echo $i > /data.$((i % 8)); done",
        ])
        .stdout
        .trim()
        .to_owned();
    let count = || env.exec("busy", "cat /count 2>/dev/null || true");
    // Past 8, every /data.N exists.
    wait_until("the counter to pass 8", || {
        count().trim().parse::<u64>().is_ok_and(|n| n > 8)
    });
    assert_eq!(frozen(&id), Some(false), "a fresh capsule is not frozen");

    let digest = env.ok(&["commit", "busy", "busy-snap:1"]).stdout;
    assert!(digest.trim().starts_with("sha256:"), "{digest:?}");
    // Not left frozen: the counter advances after the commit.
    assert_eq!(frozen(&id), Some(false), "the capsule is left frozen");
    assert_eq!(env.status("busy"), "running");
    let after = count();
    wait_until("the counter to advance after the commit", || {
        count() != after
    });

    // The image runs and holds the files the capsule wrote (a file may be caught empty between
    // the shell's truncate and write: only their presence is the capsule's).
    let out = env.ok(&[
        "run",
        "--rm",
        "busy-snap:1",
        "sh",
        "-c",
        "test -f /count && ls /data.* | wc -l",
    ]);
    assert_eq!(out.stdout.trim(), "8", "{:?}", out.stdout);

    // `--pause=false` commits it live; it still runs afterwards.
    let live = env
        .ok(&["commit", "--pause=false", "busy", "busy-snap:2"])
        .stdout;
    assert!(live.trim().starts_with("sha256:"), "{live:?}");
    assert_eq!(frozen(&id), Some(false));
    env.ok(&["run", "--rm", "busy-snap:2", "true"]);
    env.ok(&["rm", "-f", "busy"]);
    env.finish();
}
