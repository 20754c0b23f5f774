//! btrfs subvolumes and snapshots on a throwaway btrfs (a sparse file on a loop device), with
//! real capsules. The filesystem is unmounted, its loop device detached and its file removed
//! by a drop guard even when a test fails; each test checks that afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod storage_support;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use bolt_capsule::runtime::Runtime;
use bolt_capsule::storage::{
    is_subvolume, Backend, CreateOptions, FsKind, SnapshotError, Storage, Target, TmpfsSpec,
    VolumeSpec,
};
use storage_support::*;

fn ready(test: &str) -> bool {
    bolt_skip::root(test)
        && bolt_skip::tool(test, "mkfs.btrfs")
        && bolt_skip::tool(test, "btrfs")
        && bolt_skip::tool(test, "losetup")
}

/// A btrfs agent root with a busybox image layer on it.
struct Fx {
    fs: LoopBtrfs,
    storage: Storage,
    rt: Runtime,
}

impl Fx {
    fn new() -> Self {
        let fs = LoopBtrfs::new();
        busybox_lower(&fs.path().join("lower"));
        let storage = Storage::open(fs.path().join("root")).unwrap();
        Self {
            fs,
            storage,
            rt: Runtime::new().unwrap(),
        }
    }

    fn lower(&self) -> Vec<PathBuf> {
        vec![self.fs.path().join("lower")]
    }

    /// Tears everything down and checks that no mount, loop device or file is left.
    fn finish(self) {
        let Fx { fs, storage, rt } = self;
        drop((storage, rt));
        let mnt = fs.path().to_path_buf();
        let image = fs.image();
        let dir = mnt.parent().unwrap().to_path_buf();
        drop(fs);
        assert!(mounts_under(&dir).is_empty(), "mounts left under {dir:?}");
        assert!(loop_devices_of(&image).is_empty(), "loop device left");
        assert!(!dir.exists(), "{dir:?} left");
    }
}

#[test]
fn on_btrfs_layers_and_volumes_are_subvolumes() {
    if !ready("on_btrfs_layers_and_volumes_are_subvolumes") {
        return;
    }
    let fx = Fx::new();
    assert_eq!(fx.storage.backend().fs(), FsKind::Btrfs);
    assert!(fx.storage.backend().btrfs().is_some());
    let v = fx
        .storage
        .volumes()
        .create("db", &CreateOptions::default())
        .unwrap();
    assert!(v.subvolume);
    assert!(is_subvolume(&v.mountpoint).unwrap());
    let layers = fx.storage.layers();
    let rootfs = layers.create("c-sub", fx.lower()).unwrap();
    assert!(layers.is_subvolume("c-sub"));
    assert!(
        !is_subvolume(&rootfs.upper).unwrap(),
        "upper and work share one subvolume"
    );
    // A capsule runs on it: overlay renames from work into upper stay in one subvolume.
    let mut spec = shell(
        "c-sub",
        rootfs,
        "echo a > /etc/new && mv /etc/new /etc/moved && cat /etc/moved",
    );
    spec.mounts = vec![TmpfsSpec::parse("/run").unwrap().to_mount()];
    assert_eq!(run_ok(&fx.rt, &spec), "a\n");
    layers.remove("c-sub").unwrap();
    assert!(!layers.path("c-sub").exists());
    fx.storage.volumes().remove("db", &BTreeSet::new()).unwrap();
    fx.finish();
}

#[test]
fn a_volume_snapshot_restore_brings_back_the_earlier_content() {
    if !ready("a_volume_snapshot_restore_brings_back_the_earlier_content") {
        return;
    }
    let fx = Fx::new();
    let vols = [VolumeSpec::parse("appdata:/data").unwrap()];
    let run_with_volume = |name: &str, script: &str| -> String {
        let id = capsule_id(name);
        let layers = fx.storage.layers();
        let rootfs = layers.create(&id, fx.lower()).unwrap();
        let resolved = fx
            .storage
            .resolve_mounts(&vols, &[], &CreateOptions::default())
            .unwrap();
        let mut spec = shell(&id, rootfs, script);
        spec.mounts = resolved.mounts;
        let out = run_ok(&fx.rt, &spec);
        layers.remove(&id).unwrap();
        out
    };
    run_with_volume(
        "w1",
        "echo version-1 > /data/state; mkdir /data/d; echo keep > /data/d/k",
    );
    let snaps = fx.storage.snapshots();
    let target = Target::Volume("appdata".into());
    let s1 = snaps.create(&target, "before-upgrade").unwrap();
    assert!(s1.created_ms > 0);
    assert!(is_subvolume(&s1.path).unwrap());
    // The snapshot is read-only.
    let e = fs::write(s1.path.join("state"), "tamper").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    run_with_volume(
        "w2",
        "echo version-2 > /data/state; rm -r /data/d; echo added > /data/new",
    );
    assert_eq!(
        run_with_volume("r1", "cat /data/state; ls /data"),
        "version-2\nnew\nstate\n"
    );
    snaps.create(&target, "after-upgrade").unwrap();
    let names: Vec<String> = snaps
        .list(&target)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["before-upgrade", "after-upgrade"]);

    // In use: refused, nothing changes.
    let in_use: BTreeSet<Target> = [target.clone()].into();
    let e = snaps
        .restore(&target, "before-upgrade", &in_use)
        .unwrap_err();
    assert!(matches!(e, SnapshotError::InUse(_)), "{e}");
    assert_eq!(run_with_volume("r2", "cat /data/state"), "version-2\n");

    snaps
        .restore(&target, "before-upgrade", &BTreeSet::new())
        .unwrap();
    assert_eq!(
        run_with_volume("r3", "cat /data/state /data/d/k; ls /data"),
        "version-1\nkeep\nd\nstate\n"
    );
    // The restored volume is writable and still a subvolume; the snapshot is unchanged.
    let data = fx.storage.volumes().get("appdata").unwrap().mountpoint;
    assert!(is_subvolume(&data).unwrap());
    run_with_volume("w3", "echo version-3 > /data/state");
    assert_eq!(
        fs::read_to_string(s1.path.join("state")).unwrap(),
        "version-1\n"
    );
    // Nothing of the swap is left beside the volume.
    let beside: Vec<String> = fs::read_dir(data.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, ["_data", "volume.json"]);
    // A second restore of the other snapshot works too.
    snaps
        .restore(&target, "after-upgrade", &BTreeSet::new())
        .unwrap();
    assert_eq!(run_with_volume("r4", "cat /data/state"), "version-2\n");

    snaps.remove(&target, "after-upgrade").unwrap();
    assert!(matches!(
        snaps.remove(&target, "after-upgrade"),
        Err(SnapshotError::NotFound { .. })
    ));
    assert_eq!(snaps.list(&target).unwrap().len(), 1);
    assert_eq!(snaps.list_all().unwrap().len(), 1);
    // Removing the volume removes its snapshots.
    fx.storage
        .volumes()
        .remove("appdata", &BTreeSet::new())
        .unwrap();
    assert!(snaps.list(&target).unwrap().is_empty());
    assert!(!snaps.dir(&target).exists());
    fx.finish();
}

#[test]
fn a_capsule_layer_snapshot_restore_brings_back_the_earlier_files() {
    if !ready("a_capsule_layer_snapshot_restore_brings_back_the_earlier_files") {
        return;
    }
    let fx = Fx::new();
    let id = "layer-snap";
    let layers = fx.storage.layers();
    layers.create(id, fx.lower()).unwrap();
    // The same capsule started again keeps its layer (docker start after stop).
    let start = |script: &str| -> String {
        let spec = shell(id, layers.rootfs(id, fx.lower()), script);
        run_ok(&fx.rt, &spec)
    };
    start("echo one > /etc/app.conf; rm /etc/passwd");
    let snaps = fx.storage.snapshots();
    let target = Target::Capsule(id.into());
    snaps.create(&target, "s1").unwrap();
    start("echo two > /etc/app.conf; echo root:x:0:0::/:/bin/sh > /etc/passwd");
    assert_eq!(
        start("cat /etc/app.conf /etc/passwd"),
        "two\nroot:x:0:0::/:/bin/sh\n"
    );
    snaps.restore(&target, "s1", &BTreeSet::new()).unwrap();
    assert_eq!(
        start("cat /etc/app.conf; test -e /etc/passwd && echo passwd || echo no-passwd"),
        "one\nno-passwd\n"
    );
    assert!(layers.is_subvolume(id));
    // Duplicate names and unknown snapshots are refused.
    assert!(matches!(
        snaps.create(&target, "s1"),
        Err(SnapshotError::Exists { .. })
    ));
    assert!(matches!(
        snaps.restore(&target, "nope", &BTreeSet::new()),
        Err(SnapshotError::NotFound { .. })
    ));
    // Removing the capsule's layer removes its snapshots.
    layers.remove(id).unwrap();
    assert!(snaps.list(&target).unwrap().is_empty());
    assert!(matches!(
        snaps.create(&target, "s2"),
        Err(SnapshotError::NoTarget(_))
    ));
    fx.finish();
}

#[test]
fn snapshots_elsewhere_say_they_need_btrfs() {
    if !bolt_skip::root("snapshots_elsewhere_say_they_need_btrfs") {
        return;
    }
    let dir = tempdir("bolt-nobtrfs-");
    let storage = Storage::open(dir.path()).unwrap();
    let fs = storage.backend().fs();
    if !bolt_skip::unless(
        "snapshots_elsewhere_say_they_need_btrfs",
        fs != FsKind::Btrfs,
        "needs a temporary directory off btrfs, and /var/tmp is on btrfs",
    ) {
        return;
    }
    assert!(matches!(storage.backend(), Backend::Plain(_)));
    storage
        .volumes()
        .create("plain", &CreateOptions::default())
        .unwrap();
    let e = storage
        .snapshots()
        .create(&Target::Volume("plain".into()), "s1")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("snapshots need btrfs ({} is on {fs})", dir.path().display())
    );
    dir.close().unwrap();
}
