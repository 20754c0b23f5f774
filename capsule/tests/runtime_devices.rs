//! Root tests of device confinement on the real kernel: the rootfs is `nodev` (a node shipped in
//! an image layer cannot be opened), only the default set and `--device` grants open, and the
//! cgroup v2 eBPF device program denies what it does not allow (run on this host's cgroup2 mount,
//! the unified one on a hybrid host).
//!
//! Each test skips with a message when not run as root, and fails instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1`. Nothing (cgroup, mount, directory) is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use bolt_capsule::runtime::devices::{self, Device, DEFAULT_RULES};
use bolt_capsule::runtime::{CapsuleSpec, Rootfs, Runtime, Stdio, StdioSlot};

/// A busybox lower layer with device nodes in it, as an image layer unpacked by root has them.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bolt-dev-")
            .tempdir_in("/var/tmp")
            .unwrap();
        common::busybox_lower(&dir.path().join("lower"));
        let id = format!("tdev{}-{name}", std::process::id());
        Self { dir, id }
    }

    fn lower(&self) -> PathBuf {
        self.dir.path().join("lower")
    }

    fn spec(&self, script: &str) -> CapsuleSpec {
        let rootfs = Rootfs::in_dir(vec![self.lower()], &self.dir.path().join("capsule"));
        let args = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        CapsuleSpec::new(self.id.clone(), rootfs, args)
    }

    fn finish(self) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.dir.path().to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&root), "a mount under {root} is left");
        self.dir.close().unwrap();
    }
}

fn reader(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

/// Runs the capsule; returns stdout and stderr together.
fn run(spec: &CapsuleSpec) -> String {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let w2 = w.try_clone().unwrap();
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(w),
        stderr: StdioSlot::Fd(w2),
        terminal: false,
    };
    let out = reader(r);
    let mut capsule = Runtime::new().unwrap().spawn(spec, stdio).unwrap();
    capsule.wait().unwrap();
    capsule.destroy().unwrap();
    out.join().unwrap()
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let dev = rustix::fs::makedev(major, minor);
    let ft = rustix::fs::FileType::from_raw_mode(kind);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        ft,
        rustix::fs::Mode::from_raw_mode(0o666),
        dev,
    )
    .unwrap();
}

#[test]
fn image_layer_device_nodes_cannot_be_opened() {
    if !bolt_skip::root("image_layer_device_nodes_cannot_be_opened") {
        return;
    }
    let fx = Fixture::new("nodev");
    // /dev/null's numbers, which every cgroup allows: only nodev stands in the way.
    mknod(&fx.lower().join("layer-null"), libc::S_IFCHR, 1, 3);
    let out = run(&fx.spec(
        "echo x > /layer-null && echo layer-opened || echo layer-refused; \
         echo x > /dev/null && echo dev-null-opened; \
         mknod /upper-null c 1 3 && (echo x > /upper-null && echo upper-opened || echo upper-refused)",
    ));
    assert!(out.contains("layer-refused"), "{out}");
    assert!(!out.contains("layer-opened"), "{out}");
    assert!(out.contains("dev-null-opened"), "{out}");
    // A node made in the writable layer (CAP_MKNOD is kept where devices are confined) does not
    // open either.
    assert!(!out.contains("upper-opened"), "{out}");
    fx.finish();
}

#[test]
fn only_granted_devices_open() {
    if !bolt_skip::root("only_granted_devices_open") {
        return;
    }
    let fx = Fixture::new("grant");
    // Without a grant: a node made in /dev (not nodev) for /dev/kmsg is refused by the cgroup.
    // Opening for writing without writing logs nothing.
    let out = run(&fx.spec("mknod /dev/k c 1 11 && ((: > /dev/k) && echo opened || echo refused)"));
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    // Granted write-only: made at the capsule path, opens for writing, not for reading.
    let mut spec = fx.spec(
        "ls -l /dev/kernel/k; (: > /dev/kernel/k) && echo w-opened; \
         ((: < /dev/kernel/k) && echo r-opened || echo r-refused)",
    );
    spec.devices
        .push(Device::from_spec("/dev/kmsg:/dev/kernel/k:w").unwrap());
    let out = run(&spec);
    assert!(out.contains("w-opened"), "{out}");
    assert!(out.contains("r-refused"), "{out}");
    assert!(!out.contains("r-opened"), "{out}");
    fx.finish();
}

/// The cgroup2 mount of this host (`/sys/fs/cgroup` on v2, `/sys/fs/cgroup/unified` on hybrid).
fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Removes the test's cgroup even when an assertion fails.
struct Group(PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn the_v2_device_program_denies_what_it_does_not_allow() {
    if !bolt_skip::root("the_v2_device_program_denies_what_it_does_not_allow") {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        panic!("no cgroup2 mount on this host (needed for the eBPF device program)");
    };
    let group = Group(mount.join(format!("bolt-devtest-{}", std::process::id())));
    fs::create_dir(&group.0).unwrap();
    devices::attach_device_filter(&group.0, &DEFAULT_RULES).unwrap();
    // The shell moves itself into the group, then opens an allowed and a denied device.
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 9; \
         (: > /dev/null) && echo null-opened; \
         (: > /dev/kmsg) 2>&1 && echo kmsg-opened || echo kmsg-refused",
        group.0.display()
    );
    let out = Command::new("/bin/busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("null-opened"), "{text}");
    assert!(text.contains("kmsg-refused"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    drop(group);
}
