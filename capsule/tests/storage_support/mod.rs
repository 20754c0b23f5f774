//! Helpers of the storage tests: root guard, a busybox lower layer, running capsules, leftover
//! checks, and a btrfs filesystem on a loop device that is always torn down.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bolt_capsule::runtime::{
    CapsuleSpec, ExitStatus, Rootfs, Runtime, RuntimeError, Stdio, StdioSlot,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A capsule id unique to this process.
pub fn capsule_id(name: &str) -> String {
    format!(
        "st{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub use crate::common::busybox_lower;

/// A spec running `sh -c script` on `rootfs`.
pub fn shell(id: &str, rootfs: Rootfs, script: &str) -> CapsuleSpec {
    CapsuleSpec::new(
        id.to_owned(),
        rootfs,
        vec!["sh".into(), "-c".into(), script.into()],
    )
}

/// A finished capsule's exit and output.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
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

/// Runs a capsule to completion, capturing its output; the capsule (cgroup) is removed.
pub fn run(rt: &Runtime, spec: &CapsuleSpec) -> Result<Output, RuntimeError> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    let (out, err) = (reader(out_r), reader(err_r));
    let mut capsule = rt.spawn(spec, stdio)?;
    let status = capsule.wait()?;
    capsule.destroy()?;
    Ok(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// Runs and asserts exit 0; returns stdout.
pub fn run_ok(rt: &Runtime, spec: &CapsuleSpec) -> String {
    let out = run(rt, spec).unwrap();
    assert_eq!(
        out.status.exit_code(),
        0,
        "capsule {} failed: stdout {:?} stderr {:?}",
        spec.id,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Mount points of this (host) mount namespace under `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&p))
        .collect()
}

/// A temporary directory under /var/tmp (a real disk filesystem, not tmpfs).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap()
}

/// A btrfs filesystem in a sparse file on a loop device, mounted in a temporary directory.
/// Dropping it unmounts, detaches the loop device and removes the file and directory, also
/// when the test failed.
pub struct LoopBtrfs {
    dir: Option<tempfile::TempDir>,
    image: PathBuf,
    device: Option<String>,
    mount: PathBuf,
    mounted: bool,
}

impl LoopBtrfs {
    /// Makes and mounts a 300 MiB btrfs.
    pub fn new() -> Self {
        let dir = tempdir("bolt-btrfs-");
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        let mut me = LoopBtrfs {
            image: image.clone(),
            mount: mount.clone(),
            dir: Some(dir),
            device: None,
            mounted: false,
        };
        let st = Command::new("truncate")
            .args(["-s", "300M"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success(), "truncate");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        me.device = Some(dev.clone());
        let out = sh("mkfs.btrfs", &["-q", "-f", &dev]);
        assert!(
            out.status.success(),
            "mkfs.btrfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The loop device.
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("")
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
            let _ = sh("losetup", &["-d", &dev]);
        }
        let _ = fs::remove_file(&self.image);
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// Loop devices backed by `image` (to check that none is left).
pub fn loop_devices_of(image: &Path) -> Vec<String> {
    let out = sh("losetup", &["-j", &image.to_string_lossy()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

impl LoopBtrfs {
    /// The backing file (for leftover checks after drop).
    pub fn image(&self) -> PathBuf {
        self.image.clone()
    }
}

/// Asserts that the capsule's cgroups are gone.
pub fn assert_no_cgroup(id: &str) {
    use bolt_capsule::runtime::cgroup::BOLT_PARENT;
    use bolt_capsule::runtime::Hierarchy;
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
