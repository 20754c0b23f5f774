//! Root tests of the seccomp allow-list on the real kernel: the errno a capsule gets for the
//! syscalls docker's profile refuses (made with perl's `syscall`, from the host's /usr bound
//! read-only into a busybox rootfs), the per-capsule override, and nginx and redis from the
//! fixture debian image running under the filter.
//!
//! Skipped with a message when not root (or without the test registry for the image test),
//! failed instead under `BOLT_REQUIRE_ROOT_TESTS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use bolt_capsule::image::PullOptions;
use bolt_capsule::runtime::{CapsuleSpec, ExitStatus, Mount, Rootfs, Runtime, Stdio, StdioSlot};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn id(name: &str) -> String {
    format!(
        "t{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bolt-sc-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn reader(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

/// Runs a capsule to completion and captures its output; removes its cgroup and mounts.
fn run(spec: &CapsuleSpec) -> Output {
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    let (out, err) = (reader(out_r), reader(err_r));
    let mut capsule = Runtime::new().unwrap().spawn(spec, stdio).unwrap();
    let status = capsule.wait().unwrap();
    capsule.destroy().unwrap();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Asserts that no mount under `dir` is left.
fn assert_no_mount_under(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = dir.to_string_lossy().into_owned();
    assert!(!mountinfo.contains(&root), "a mount under {root} is left");
}

/// A busybox rootfs with the host's /usr (perl and its libraries) bound read-only on /usr, and
/// /lib, /lib64 as on the host (links into /usr on merged-/usr hosts, else bound too).
fn perl_spec(dir: &Path, name: &str, args: Vec<String>) -> CapsuleSpec {
    let lower = dir.join("lower");
    common::busybox_lower(&lower);
    let mut mounts = Vec::new();
    for top in ["usr", "lib", "lib64"] {
        let host = Path::new("/").join(top);
        if let Ok(target) = fs::read_link(&host) {
            std::os::unix::fs::symlink(target, lower.join(top)).unwrap();
        } else if host.is_dir() {
            fs::create_dir_all(lower.join(top)).unwrap();
            mounts.push(Mount::Bind {
                source: host,
                target: format!("/{top}"),
                readonly: true,
            });
        }
    }
    let rootfs = Rootfs::in_dir(vec![lower], &dir.join("capsule"));
    let mut spec = CapsuleSpec::new(id(name), rootfs, args);
    spec.mounts = mounts;
    spec
}

/// perl calls each `name:number:args..` with `syscall` and prints `name=ok` or `name=ERRNO`.
const PERL: &str = r#"for my $c (@ARGV) {
    my ($name, $nr, @a) = split /:/, $c;
    $! = 0;
    my $r = syscall($nr + 0, map { $_ + 0 } @a);
    print "$name=", ($r == -1 ? $! + 0 : "ok"), "\n";
}"#;

fn call(name: &str, nr: libc::c_long, args: &[i64]) -> String {
    let mut s = format!("{name}:{nr}");
    for a in args {
        s.push_str(&format!(":{a}"));
    }
    s
}

/// The results of the calls, by name.
fn results(out: &Output) -> BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

const ADDR_NO_RANDOMIZE: i64 = 0x0040000;

/// Calls the old deny-list let through and docker's profile refuses (harmless when they run).
fn refused_by_docker_only() -> Vec<String> {
    let mut calls = vec![
        call(
            "personality_no_randomize",
            libc::SYS_personality,
            &[ADDR_NO_RANDOMIZE],
        ),
        call("set_mempolicy", libc::SYS_set_mempolicy, &[0, 0, 0]),
        call("move_pages", libc::SYS_move_pages, &[0, 0, 0, 0, 0, 0]),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.push(call("sysfs", libc::SYS_sysfs, &[3]));
    calls
}

/// Calls every capsule may make.
fn allowed() -> Vec<String> {
    vec![
        call("getpid", libc::SYS_getpid, &[]),
        call("personality_query", libc::SYS_personality, &[0xffff_ffff]),
        call(
            "socket_unix",
            libc::SYS_socket,
            &[libc::AF_UNIX.into(), libc::SOCK_STREAM.into(), 0],
        ),
    ]
}

#[test]
fn syscalls_outside_dockers_profile_get_eperm() {
    if !bolt_skip::root("syscalls_outside_dockers_profile_get_eperm") {
        return;
    }
    let dir = tempdir();
    let mut args: Vec<String> = vec!["/usr/bin/perl".into(), "-e".into(), PERL.into()];
    args.extend(refused_by_docker_only());
    args.extend([
        call(
            "socket_af_alg",
            libc::SYS_socket,
            &[libc::AF_ALG.into(), libc::SOCK_SEQPACKET.into(), 0],
        ),
        call(
            "socket_af_vsock",
            libc::SYS_socket,
            &[libc::AF_VSOCK.into(), libc::SOCK_STREAM.into(), 0],
        ),
        call("kexec_load", libc::SYS_kexec_load, &[0, 0, 0, 0]),
        // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, without creating it.
        call("keyctl", libc::SYS_keyctl, &[0, -3, 0]),
        call("bpf", libc::SYS_bpf, &[0, 0, 0]),
        call(
            "unshare_user",
            libc::SYS_unshare,
            &[libc::CLONE_NEWUSER.into()],
        ),
        call("userfaultfd", libc::SYS_userfaultfd, &[0]),
        call("clone3", libc::SYS_clone3, &[0, 0]),
    ]);
    args.extend(allowed());
    let spec = perl_spec(dir.path(), "eperm", args);
    let out = run(&spec);
    assert_eq!(out.status.exit_code(), 0, "{}", out.stderr);
    let got = results(&out);
    let eperm = libc::EPERM.to_string();
    let mut refused: Vec<&str> = vec![
        "personality_no_randomize",
        "set_mempolicy",
        "move_pages",
        "socket_af_alg",
        "socket_af_vsock",
        "kexec_load",
        "keyctl",
        "bpf",
        "unshare_user",
        "userfaultfd",
    ];
    if cfg!(target_arch = "x86_64") {
        refused.push("sysfs");
    }
    for name in refused {
        assert_eq!(got.get(name), Some(&eperm), "{name}: {got:?}");
    }
    // clone3 gets ENOSYS so that libc falls back to clone.
    assert_eq!(
        got.get("clone3"),
        Some(&libc::ENOSYS.to_string()),
        "{got:?}"
    );
    for name in ["getpid", "personality_query", "socket_unix"] {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some("ok"),
            "{name}: {got:?}"
        );
    }
    assert_no_mount_under(dir.path());
}

#[test]
fn a_capsule_without_seccomp_makes_those_calls() {
    if !bolt_skip::root("a_capsule_without_seccomp_makes_those_calls") {
        return;
    }
    let dir = tempdir();
    let script = format!("grep Seccomp: /proc/self/status; exec /usr/bin/perl -e '{PERL}' \"$@\"");
    let mut args: Vec<String> = vec!["sh".into(), "-c".into(), script, "sh".into()];
    args.extend(refused_by_docker_only());
    args.push(call("clone3", libc::SYS_clone3, &[0, 0]));
    args.extend(allowed());
    let mut spec = perl_spec(dir.path(), "unconfined", args);
    spec.seccomp = false;
    let out = run(&spec);
    assert_eq!(out.status.exit_code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("Seccomp:\t0"), "{}", out.stdout);
    let got = results(&out);
    for name in [
        "personality_no_randomize",
        "set_mempolicy",
        "move_pages",
        "getpid",
    ] {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some("ok"),
            "{name}: {got:?}"
        );
    }
    // clone3(NULL, 0) reaches the kernel, which refuses the size.
    assert_eq!(
        got.get("clone3"),
        Some(&libc::EINVAL.to_string()),
        "{got:?}"
    );
    assert_no_mount_under(dir.path());
}

#[test]
fn nginx_and_redis_serve_under_the_filter() {
    let test = "nginx_and_redis_serve_under_the_filter";
    if !bolt_skip::root(test) {
        return;
    }
    let Some(reg) = common::registry(test) else {
        return;
    };
    let dir = tempdir();
    let store = common::store(dir.path());
    let reference = format!("{reg}/bolt-test/debian:bookworm");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio
        .block_on(store.pull(&reference, &PullOptions::default()))
        .unwrap();
    let layers = tokio.block_on(store.layer_dirs(&reference)).unwrap();
    let script = r#"set -e
redis-server --daemonize yes --save '' --logfile /tmp/redis.log
nginx
for i in $(seq 100); do
    redis-cli ping >/dev/null 2>&1 && (exec 3<>/dev/tcp/127.0.0.1/80) 2>/dev/null && break
    sleep 0.1
done
redis-cli set greeting hello >/dev/null
echo "redis $(redis-cli get greeting)"
exec 3<>/dev/tcp/127.0.0.1/80
printf 'GET / HTTP/1.0\r\nHost: capsule\r\n\r\n' >&3
echo "nginx $(head -n 1 <&3)"
grep Seccomp: /proc/self/status
"#;
    let rootfs = Rootfs::in_dir(layers, &dir.path().join("capsule"));
    let args = vec!["/bin/bash".into(), "-c".into(), script.into()];
    let spec = CapsuleSpec::new(id("nginx-redis"), rootfs, args);
    let out = run(&spec);
    assert_eq!(out.status.exit_code(), 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("redis hello"), "{}", out.stdout);
    assert!(
        out.stdout.contains("nginx HTTP/1.1 200 OK"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Seccomp:\t2"), "{}", out.stdout);
    assert_no_mount_under(dir.path());
}
