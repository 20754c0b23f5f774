//! Volumes, binds and tmpfs in real capsules (root). Each test checks that no mount is left on
//! the host and that the temporary root is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod storage_support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use bolt_capsule::runtime::{Mount, Runtime, RuntimeError};
use bolt_capsule::storage::{
    CreateOptions, Storage, StorageError, TmpfsSpec, VolumeError, VolumeSpec,
};
use storage_support::*;

/// An agent root (plain directories) with a busybox image layer.
struct Fx {
    dir: tempfile::TempDir,
    storage: Storage,
    rt: Runtime,
}

impl Fx {
    fn new() -> Self {
        let dir = tempdir("bolt-vol-");
        busybox_lower(&dir.path().join("lower"));
        let storage = Storage::open(dir.path().join("root")).unwrap();
        Self {
            dir,
            storage,
            rt: Runtime::new().unwrap(),
        }
    }

    fn lower(&self) -> Vec<PathBuf> {
        vec![self.dir.path().join("lower")]
    }

    /// Runs `script` in a fresh capsule (own writable layer) with the given `-v` and `--tmpfs`
    /// specs; the layer is removed afterwards.
    fn run(&self, name: &str, volumes: &[&str], tmpfs: &[&str], script: &str) -> Output {
        let id = capsule_id(name);
        let layers = self.storage.layers();
        let rootfs = layers.create(&id, self.lower()).unwrap();
        let v: Vec<VolumeSpec> = volumes.iter().map(|s| s.parse().unwrap()).collect();
        let t: Vec<TmpfsSpec> = tmpfs.iter().map(|s| s.parse().unwrap()).collect();
        let resolved = self
            .storage
            .resolve_mounts(&v, &t, &CreateOptions::default())
            .unwrap();
        let mut spec = shell(&id, rootfs, script);
        spec.mounts = resolved.mounts;
        let out = run(&self.rt, &spec);
        layers.remove(&id).unwrap();
        out.unwrap()
    }

    fn finish(self) {
        let left = mounts_under(self.dir.path());
        assert!(left.is_empty(), "mounts left: {left:?}");
        let path = self.dir.path().to_owned();
        self.dir.close().unwrap();
        assert!(!path.exists());
    }
}

fn ok(out: &Output) -> &str {
    assert_eq!(
        out.status.exit_code(),
        0,
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    &out.stdout
}

#[test]
fn a_volume_written_by_one_capsule_is_read_by_the_next() {
    if !bolt_skip::root("a_volume_written_by_one_capsule_is_read_by_the_next") {
        return;
    }
    let fx = Fx::new();
    let w = fx.run(
        "writer",
        &["data1:/var/lib/data"],
        &[],
        "echo written-by-first > /var/lib/data/note && mkdir -p /var/lib/data/sub && echo deep > /var/lib/data/sub/f",
    );
    ok(&w);
    // The volume was created on first use and holds the file on the host.
    let vol = fx.storage.volumes().get("data1").unwrap();
    assert_eq!(
        fs::read_to_string(vol.mountpoint.join("note")).unwrap(),
        "written-by-first\n"
    );
    // A second capsule, with its own writable layer, at another path.
    let r = fx.run(
        "reader",
        &["data1:/srv"],
        &[],
        "cat /srv/note /srv/sub/f; test -e /var/lib/data/note && echo leaked || echo only-in-volume",
    );
    assert_eq!(ok(&r), "written-by-first\ndeep\nonly-in-volume\n");
    // An anonymous volume is new and empty each time.
    let a = fx.run(
        "anon1",
        &["/cache"],
        &[],
        "ls -A /cache | wc -l; echo x > /cache/x",
    );
    assert_eq!(ok(&a).trim(), "0");
    let a = fx.run("anon2", &["/cache"], &[], "ls -A /cache | wc -l");
    assert_eq!(ok(&a).trim(), "0");
    let vols = fx.storage.volumes().list().unwrap();
    assert_eq!(vols.iter().filter(|v| v.anonymous).count(), 2);
    // Prune takes the anonymous ones only, and never one in use.
    let in_use: BTreeSet<String> = BTreeSet::new();
    let report = fx.storage.volumes().prune(&in_use, false).unwrap();
    assert_eq!(report.removed.len(), 2);
    assert!(report.bytes > 0, "the anonymous volume held a file");
    let in_use: BTreeSet<String> = ["data1".to_owned()].into();
    let e = fx.storage.volumes().remove("data1", &in_use).unwrap_err();
    assert!(matches!(e, VolumeError::InUse(_)), "{e}");
    fx.storage
        .volumes()
        .remove("data1", &BTreeSet::new())
        .unwrap();
    assert!(fx.storage.volumes().list().unwrap().is_empty());
    fx.finish();
}

#[test]
fn read_only_volumes_and_binds_refuse_writes_and_rw_binds_write_through() {
    if !bolt_skip::root("read_only_volumes_and_binds_refuse_writes_and_rw_binds_write_through") {
        return;
    }
    let fx = Fx::new();
    let host = fx.dir.path().join("host-dir");
    fs::create_dir_all(host.join("nested")).unwrap();
    fs::write(host.join("nested/file"), "host content\n").unwrap();
    let host_file = fx.dir.path().join("motd");
    fs::write(&host_file, "hello from a file bind\n").unwrap();
    fx.storage
        .volumes()
        .create("ro-vol", &CreateOptions::default())
        .unwrap();
    let specs = [
        "ro-vol:/data:ro".to_owned(),
        format!("{}:/host:ro", host.display()),
        format!("{}:/etc/motd:ro", host_file.display()),
        format!("{}:/rw", host.display()),
    ];
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let script = "\
        touch /data/x 2>/dev/null && echo data-writable || echo data-ro; \
        touch /host/nested/x 2>/dev/null && echo host-writable || echo host-ro; \
        cat /host/nested/file; cat /etc/motd; \
        echo from-capsule > /rw/created; \
        grep ' /data ' /proc/mounts | grep -q ' ro,' && echo data-mount-ro";
    let out = fx.run("ro", &specs, &[], script);
    assert_eq!(
        ok(&out),
        "data-ro\nhost-ro\nhost content\nhello from a file bind\ndata-mount-ro\n"
    );
    assert_eq!(
        fs::read_to_string(host.join("created")).unwrap(),
        "from-capsule\n"
    );
    assert!(!host.join("nested/x").exists());
    // The file mount point was made in the capsule's layer, not on the host.
    fx.finish();
}

#[test]
fn tmpfs_is_a_tmpfs_with_its_options() {
    if !bolt_skip::root("tmpfs_is_a_tmpfs_with_its_options") {
        return;
    }
    let fx = Fx::new();
    let script = "\
        stat -f -c %T /scratch; \
        stat -c %a /scratch; \
        grep ' /scratch ' /proc/mounts; \
        dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>/dev/null && echo fit || echo full; \
        cp /bin/busybox /scratch/bb && /scratch/bb true && echo exec-ok || echo noexec; \
        stat -f -c %T /fast";
    let out = fx.run(
        "tmpfs",
        &[],
        &["/scratch:size=1m,mode=1777", "/fast:exec"],
        script,
    );
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "tmpfs", "{text}");
    assert_eq!(lines[1], "1777");
    let opts = lines[2];
    for want in [
        "tmpfs /scratch tmpfs",
        "nosuid",
        "nodev",
        "noexec",
        "size=1024k",
    ] {
        assert!(opts.contains(want), "{opts:?} lacks {want}");
    }
    assert_eq!(lines[3], "full", "a 1 MiB tmpfs refuses 2 MiB");
    assert_eq!(lines[4], "noexec");
    assert_eq!(lines[5], "tmpfs");
    fx.finish();
}

#[test]
fn a_symlink_in_the_image_cannot_send_a_mount_to_the_host() {
    if !bolt_skip::root("a_symlink_in_the_image_cannot_send_a_mount_to_the_host") {
        return;
    }
    let fx = Fx::new();
    // The image holds /escape -> ../../../../../../<host dir> and /abs -> <host dir>, and (so
    // that both resolve to something inside the capsule) the same path inside itself.
    let outside = fx.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let lower = fx.dir.path().join("lower");
    fs::create_dir_all(lower.join(outside.strip_prefix("/").unwrap())).unwrap();
    let rel = format!("{}{}", "../".repeat(12), outside.display());
    std::os::unix::fs::symlink(&rel, lower.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, lower.join("abs")).unwrap();
    let out = fx.run(
        "symlink",
        &["v-escape:/escape/sub", "v-abs:/abs/deeper/sub"],
        &["/escape/t"],
        "echo in > /escape/sub/f && echo in > /abs/deeper/sub/g && stat -f -c %T /escape/t",
    );
    assert_eq!(ok(&out), "tmpfs\n");
    // Nothing was created or mounted through the links on the host side.
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // The files are in the volumes.
    let vols = fx.storage.volumes();
    assert!(vols.get("v-escape").unwrap().mountpoint.join("f").exists());
    assert!(vols.get("v-abs").unwrap().mountpoint.join("g").exists());

    // A link that leads nowhere inside the capsule: the start fails at that step, and the
    // host path it names is still untouched.
    std::os::unix::fs::symlink(fx.dir.path().join("nowhere"), lower.join("dangling")).unwrap();
    let id = capsule_id("dangling");
    let rootfs = fx.storage.layers().create(&id, fx.lower()).unwrap();
    let mut spec = shell(&id, rootfs, "true");
    spec.mounts = vec![TmpfsSpec::parse("/dangling/x").unwrap().to_mount()];
    let e = run(&fx.rt, &spec).unwrap_err().to_string();
    assert!(e.contains("create directory /dangling/x"), "{e}");
    assert!(!fx.dir.path().join("nowhere").exists());
    fx.storage.layers().remove(&id).unwrap();
    fx.finish();
}

#[test]
fn mounts_inside_a_bind_do_not_propagate_to_the_host() {
    if !bolt_skip::root("mounts_inside_a_bind_do_not_propagate_to_the_host") {
        return;
    }
    let fx = Fx::new();
    // A shared host mount as the bind source: without a private copy, the tmpfs mounted under
    // it inside the capsule would appear on the host.
    let shared = fx.dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &shared,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let guard = Unmount(shared.clone());
    nix::mount::mount(
        None::<&str>,
        &shared,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    fs::create_dir(shared.join("inner")).unwrap();
    let spec = format!("{}:/data", shared.display());
    let out = fx.run(
        "propagation",
        &[&spec],
        &["/data/inner"],
        "stat -f -c %T /data/inner",
    );
    assert_eq!(ok(&out), "tmpfs\n");
    assert_eq!(
        mounts_under(&shared),
        vec![shared.to_string_lossy().into_owned()],
        "only the host's own mount"
    );
    drop(guard);
    fx.finish();
}

#[test]
fn bad_specs_and_missing_sources_leave_nothing() {
    if !bolt_skip::root("bad_specs_and_missing_sources_leave_nothing") {
        return;
    }
    let fx = Fx::new();
    let s = &fx.storage;
    // Parse errors name the bad part.
    let e = "data:relative"
        .parse::<VolumeSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"relative\" must be absolute"), "{e}");
    let e = "/t:size=huge".parse::<TmpfsSpec>().unwrap_err().to_string();
    assert!(e.contains("bad size value \"huge\""), "{e}");
    // Duplicate target: refused before any volume is made.
    let v: Vec<VolumeSpec> = vec!["newvol1:/data".parse().unwrap()];
    let t: Vec<TmpfsSpec> = vec!["/data".parse().unwrap()];
    let e = s
        .resolve_mounts(&v, &t, &CreateOptions::default())
        .unwrap_err();
    assert!(matches!(e, StorageError::Spec(_)), "{e}");
    // A missing bind source: refused before any volume is made.
    let missing = fx.dir.path().join("missing");
    let v: Vec<VolumeSpec> = vec![
        "newvol2:/a".parse().unwrap(),
        format!("{}:/b", missing.display()).parse().unwrap(),
    ];
    let e = s
        .resolve_mounts(&v, &[], &CreateOptions::default())
        .unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert!(s.volumes().list().unwrap().is_empty(), "no volume made");
    // The runtime names a bind source that vanished after resolving, and leaves no cgroup.
    let id = capsule_id("vanished");
    let rootfs = s.layers().create(&id, fx.lower()).unwrap();
    let mut spec = shell(&id, rootfs, "true");
    spec.mounts = vec![Mount::Bind {
        source: missing.clone(),
        target: "/x".into(),
        readonly: false,
    }];
    let e = run(&fx.rt, &spec).unwrap_err();
    assert!(matches!(e, RuntimeError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_no_cgroup(&id);
    s.layers().remove(&id).unwrap();
    fx.finish();
}

#[test]
fn a_rootless_owner_gets_the_volume() {
    if !bolt_skip::root("a_rootless_owner_gets_the_volume") {
        return;
    }
    let fx = Fx::new();
    let opts = CreateOptions {
        owner: Some(bolt_capsule::storage::Owner {
            uid: 1000,
            gid: 1000,
        }),
        ..CreateOptions::default()
    };
    let v: Vec<VolumeSpec> = vec!["owned:/data".parse().unwrap()];
    let resolved = fx.storage.resolve_mounts(&v, &[], &opts).unwrap();
    assert_eq!(resolved.created.len(), 1);
    let vol = &resolved.created[0];
    let m = fs::metadata(&vol.mountpoint).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // A capsule running as uid 1000 (no capabilities) can write there.
    let id = capsule_id("owned");
    let rootfs = fx.storage.layers().create(&id, fx.lower()).unwrap();
    let mut spec = shell(&id, rootfs, "echo mine > /data/f && stat -c %u /data/f");
    spec.user = bolt_capsule::runtime::User {
        uid: 1000,
        gid: 1000,
    };
    spec.mounts = resolved.mounts;
    assert_eq!(run_ok(&fx.rt, &spec), "1000\n");
    fx.storage.layers().remove(&id).unwrap();
    fx.finish();
}
