//! The pure parts of running a capsule: restart policies, generated names, docker's
//! entrypoint/cmd and environment rules, and user lookup in the image's files. Unit-tested.

use std::path::PathBuf;
use std::time::Duration;

use bolt_capsule::runtime::User;
use bolt_state::ExitInfo;

use crate::service::capsules::CapsuleError;
use crate::wire::capsules::{exit_code_of, RestartPolicy};

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// Whether a capsule that just exited is restarted. `restarts` is how many times it was
/// restarted already; a capsule a person stopped or killed is never restarted.
pub fn should_restart(
    policy: RestartPolicy,
    exit: &ExitInfo,
    restarts: u32,
    manually_stopped: bool,
) -> bool {
    if manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure(max) => {
            exit_code_of(exit) != 0 && max.is_none_or(|m| restarts < m)
        }
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
    }
}

/// Whether an exited capsule is started again when the agent starts (docker's daemon-start
/// rule): `always` ones are, `unless-stopped` ones unless a person stopped them.
pub fn restart_at_agent_start(policy: RestartPolicy, manually_stopped: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !manually_stopped,
        RestartPolicy::No | RestartPolicy::OnFailure(_) => false,
    }
}

/// The wait before restart number `restarts + 1`: 100 ms doubling, at most 12.8 s; a capsule
/// that ran for 10 s or more starts over at 100 ms (docker's rule).
pub fn restart_delay(restarts: u32, ran_for: Option<Duration>) -> Duration {
    if ran_for.is_some_and(|d| d >= Duration::from_secs(10)) {
        return Duration::from_millis(100);
    }
    Duration::from_millis(100u64 << restarts.min(7))
}

const ADJECTIVES: [&str; 24] = [
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry",
    "nimble", "proud", "quick", "quiet", "rapid", "sharp", "shiny", "silent", "swift", "tidy",
    "vivid", "witty", "zen", "bold",
];
const NOUNS: [&str; 24] = [
    "ampere", "bohr", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "joule", "kepler",
    "lovelace", "maxwell", "newton", "ohm", "pascal", "planck", "raman", "sagan", "tesla",
    "turing", "volta", "watt", "yalow", "zuse",
];

/// 32 random bytes as 64 hex digits: capsule ids, and unique names of the agent's scratch entries.
pub fn random_hex() -> Result<String, CapsuleError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| CapsuleError::Task(format!("random id: {e}")))?;
    Ok(hex::encode(buf))
}

/// A docker-style `adjective_noun` name from an id's bytes.
pub(super) fn name_from(id: &str, attempt: usize) -> String {
    let b = id.as_bytes();
    let a = usize::from(b.first().copied().unwrap_or(0)) + attempt;
    let n = usize::from(b.get(1).copied().unwrap_or(0)) * 7 + attempt;
    let base = format!(
        "{}_{}",
        ADJECTIVES[a % ADJECTIVES.len()],
        NOUNS[n % NOUNS.len()]
    );
    if attempt >= ADJECTIVES.len() {
        format!("{base}{attempt}")
    } else {
        base
    }
}

/// The argv a capsule runs: docker's entrypoint/cmd rule. `--entrypoint` replaces the image's
/// entrypoint and drops its cmd; command-line arguments replace the image's cmd.
pub fn resolve_command(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&[String]>,
    cmd: &[String],
) -> Vec<String> {
    let (ep, default_cmd): (&[String], &[String]) = match entrypoint {
        Some(e) => (e, &[]),
        None => (image_entrypoint, image_cmd),
    };
    let mut argv = ep.to_vec();
    if cmd.is_empty() {
        argv.extend(default_cmd.iter().cloned());
    } else {
        argv.extend(cmd.iter().cloned());
    }
    argv
}

/// The image's environment with the given entries on top (same key: the given one wins, in
/// the image's position; new keys after).
pub fn merge_env(image: &[String], given: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    let mut out: Vec<String> = image.to_vec();
    for g in given {
        let k = key(g);
        match out.iter_mut().find(|e| key(e) == k) {
            Some(slot) => *slot = g.clone(),
            None => out.push(g.clone()),
        }
    }
    out
}

/// The largest `/etc/passwd` or `/etc/group` read for a user lookup: a running capsule may grow
/// its own files without bound.
pub const MAX_ETC_BYTES: u64 = 4 << 20;

/// Reads `etc/<file>` from the first of `layers` (top first) that has it, as a regular file
/// under a real `etc` directory, or `None`. The path is resolved in one `openat2` beneath the
/// layer with no symlinks at all (a layer's link, or one a running capsule swaps in while this
/// reads, must not read the host's files) and opened `O_PATH` first (a device or fifo there is
/// never opened). A symlink, a whiteout or anything but a regular file hides the lower layers'
/// file, as before. Over [`MAX_ETC_BYTES`] is an error, found without reading the file whole.
fn read_etc(layers: &[PathBuf], file: &str) -> Result<Option<String>, String> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    use std::io::Read;
    let what = |e: Errno| format!("read the capsule's /etc/{file}: {e}");
    for l in layers {
        let dir = match rustix::fs::open(
            l,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => d,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(what(e)),
        };
        let found = rustix::fs::openat2(
            &dir,
            format!("etc/{file}"),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        );
        let fd = match found {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            // `etc` is a symlink or not a directory: nothing below it is read.
            Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => return Ok(None),
            Err(e) => return Err(what(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(what)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_ETC_BYTES {
            return Err(format!(
                "the capsule's /etc/{file} is {} bytes, over the limit of {MAX_ETC_BYTES}",
                st.st_size
            ));
        }
        // Reopened for reading through the O_PATH descriptor: the same inode, never a path.
        let readable = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(what)?;
        let mut bytes = Vec::new();
        std::fs::File::from(readable)
            .take(MAX_ETC_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read the capsule's /etc/{file}: {e}"))?;
        if bytes.len() as u64 > MAX_ETC_BYTES {
            return Err(format!(
                "the capsule's /etc/{file} is over the limit of {MAX_ETC_BYTES} bytes"
            ));
        }
        return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
    }
    Ok(None)
}

/// Resolves a docker `--user` (`uid`, `name`, `uid:gid`, `name:group`) against the image's
/// `/etc/passwd` and `/etc/group` (layers top first, read by [`read_etc`]). A numeric uid not in
/// passwd gets gid 0, as in docker; a passwd entry whose gid is not a number is refused (it is
/// not read as 0, root's group).
pub fn resolve_user(spec: &str, layers: &[PathBuf]) -> Result<(User, Vec<u32>), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((User { uid: 0, gid: 0 }, Vec::new()));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_etc(layers, "passwd")?.unwrap_or_default();
    let groups = read_etc(layers, "group")?.unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (name, uid, gid) = (f.first()?, f.get(2)?.parse::<u32>().ok()?, f.get(3)?);
        let matches = match user.parse::<u32>() {
            Ok(u) => u == uid,
            Err(_) => *name == user,
        };
        matches.then(|| {
            (
                (*name).to_owned(),
                uid,
                gid.parse::<u32>().map_err(|_| *gid),
            )
        })
    });
    let (name, uid, mut gid) = match (entry, user.parse::<u32>()) {
        (Some((name, uid, Ok(gid))), _) => (name, uid, gid),
        // An explicit group replaces the entry's gid below.
        (Some((name, uid, Err(_))), _) if group.is_some() => (name, uid, 0),
        (Some((name, _, Err(bad))), _) => {
            return Err(format!(
                "invalid gid {bad:?} for user {name} in the capsule's /etc/passwd"
            ))
        }
        (None, Ok(uid)) => (String::new(), uid, 0),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&g))
                        .then(|| f.get(2).and_then(|v| v.parse().ok()))
                        .flatten()
                })
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut extra = Vec::new();
    if !name.is_empty() && group.is_none() {
        for l in groups.lines() {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Some(g) = f.get(2).and_then(|v| v.parse::<u32>().ok()) {
                    if g != gid && !extra.contains(&g) {
                        extra.push(g);
                    }
                }
            }
        }
    }
    Ok((User { uid, gid }, extra))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::service::capsules::{filter_logs, rootless_limits_warning};
    use crate::wire::parse::{parse_cpus, parse_size, valid_name};
    use bolt_capsule::runtime::supervisor::LogLine;

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            code: Some(code),
            signal: None,
            oom: false,
        }
    }

    #[test]
    fn rootless_limits_warn_once_naming_each_flag() {
        assert_eq!(rootless_limits_warning(false, false, false), None);
        assert_eq!(
            rootless_limits_warning(true, false, false).as_deref(),
            Some("rootless: no cgroup controllers delegated; --memory ignored")
        );
        assert_eq!(
            rootless_limits_warning(true, true, true).as_deref(),
            Some(
                "rootless: no cgroup controllers delegated; --memory, --cpus, --pids-limit ignored"
            )
        );
    }

    #[test]
    fn restart_policies_parse_and_print() {
        for s in [
            "no",
            "always",
            "unless-stopped",
            "on-failure",
            "on-failure:3",
        ] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        assert_eq!("".parse::<RestartPolicy>().unwrap(), RestartPolicy::No);
        for bad in ["sometimes", "on-failure:x", "on-failure:-1", "always:2"] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn on_failure_restarts_failures_up_to_its_count() {
        let p = RestartPolicy::OnFailure(Some(2));
        assert!(should_restart(p, &exit(1), 0, false));
        assert!(should_restart(p, &exit(1), 1, false));
        assert!(!should_restart(p, &exit(1), 2, false));
        assert!(
            !should_restart(p, &exit(0), 0, false),
            "success is not a failure"
        );
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
            oom: true,
        };
        assert!(should_restart(p, &killed, 0, false), "137 is a failure");
        assert!(should_restart(
            RestartPolicy::OnFailure(None),
            &exit(3),
            99,
            false
        ));
    }

    #[test]
    fn manual_stops_win_over_every_policy() {
        for p in [
            RestartPolicy::Always,
            RestartPolicy::UnlessStopped,
            RestartPolicy::OnFailure(None),
        ] {
            assert!(!should_restart(p, &exit(1), 0, true), "{p}");
        }
        assert!(should_restart(RestartPolicy::Always, &exit(0), 5, false));
        assert!(!should_restart(RestartPolicy::No, &exit(1), 0, false));
        assert!(restart_at_agent_start(RestartPolicy::Always, true));
        assert!(!restart_at_agent_start(RestartPolicy::UnlessStopped, true));
        assert!(restart_at_agent_start(RestartPolicy::UnlessStopped, false));
        assert!(!restart_at_agent_start(
            RestartPolicy::OnFailure(None),
            false
        ));
    }

    #[test]
    fn restart_delay_doubles_and_resets_after_a_long_run() {
        assert_eq!(restart_delay(0, None), Duration::from_millis(100));
        assert_eq!(restart_delay(3, None), Duration::from_millis(800));
        assert_eq!(restart_delay(50, None), Duration::from_millis(12_800));
        assert_eq!(
            restart_delay(5, Some(Duration::from_secs(30))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("100b").unwrap(), 100);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        for bad in ["12qq", "", "m", "-1m", "1x", "0", "abc"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("web"));
        assert!(valid_name("a.b-c_1"));
        for bad in ["", "-a", "_a", "a/b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let n = name_from(&"ab".repeat(32), 0);
        assert!(valid_name(&n) && n.contains('_'), "{n}");
        assert_ne!(name_from("abcd", 0), name_from("abcd", 1));
    }

    #[test]
    fn command_follows_entrypoint_and_cmd_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ep = s(&["/entry"]);
        let cmd = s(&["default"]);
        assert_eq!(
            resolve_command(&ep, &cmd, None, &[]),
            s(&["/entry", "default"])
        );
        assert_eq!(
            resolve_command(&ep, &cmd, None, &s(&["x"])),
            s(&["/entry", "x"])
        );
        assert_eq!(
            resolve_command(&ep, &cmd, Some(&s(&["/other"])), &[]),
            s(&["/other"])
        );
        assert_eq!(
            resolve_command(&[], &s(&["/bin/sh"]), None, &[]),
            s(&["/bin/sh"])
        );
        assert!(resolve_command(&[], &[], None, &[]).is_empty());
    }

    #[test]
    fn env_overrides_keep_the_image_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_env(&s(&["PATH=/bin", "A=1"]), &s(&["A=2", "B=3"])),
            s(&["PATH=/bin", "A=2", "B=3"])
        );
    }

    #[test]
    fn users_resolve_from_the_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let base = dir.path().join("base");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            base.join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
        )
        .unwrap();
        let layers = vec![top.clone(), base.clone()];
        let (u, extra) = resolve_user("app", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(extra, vec![50]);
        let (u, _) = resolve_user("nobody", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        let (u, _) = resolve_user("4242", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let (u, _) = resolve_user("1000:staff", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(resolve_user("ghost", &layers).is_err());
        assert!(resolve_user("app:nogroup", &layers).is_err());
        // A top layer that replaces /etc/passwd wins; a symlink is never followed.
        std::os::unix::fs::symlink("/etc/passwd", top.join("etc/passwd")).unwrap();
        assert!(resolve_user("app", &layers).is_err());
    }

    /// A one-layer rootfs whose `etc/passwd` is `passwd`, and a "host" file outside it.
    fn rootfs_and_host(passwd: &str) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("rootfs");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/passwd"), passwd).unwrap();
        let host = dir.path().join("host-passwd");
        std::fs::write(&host, "hostonly:x:4242:4242::/:/bin/sh\n").unwrap();
        (dir, vec![layer], host)
    }

    #[test]
    fn a_passwd_entry_with_a_bad_gid_is_refused_not_root() {
        let (_dir, layers, _) =
            rootfs_and_host("bad:x:1001:notanumber::/:/bin/sh\nbig:x:1002:4294967296::/:/bin/sh\n");
        for user in ["bad", "1001", "big"] {
            let err = resolve_user(user, &layers).unwrap_err();
            assert!(err.contains("gid"), "{user}: {err}");
        }
        // An explicit group still works.
        let (u, _) = resolve_user("bad:7", &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1001, 7));
    }

    #[test]
    fn a_huge_passwd_is_refused_without_being_read_whole() {
        let (_dir, layers, _) = rootfs_and_host("");
        let f = std::fs::File::create(layers[0].join("etc/passwd")).unwrap();
        f.set_len(64 << 30).unwrap(); // sparse: 64 GiB of nothing
        let err = resolve_user("app", &layers).unwrap_err();
        assert!(err.contains("over the limit"), "{err}");
    }

    #[test]
    fn passwd_and_etc_symlinked_to_the_host_are_not_followed() {
        let (dir, layers, host) = rootfs_and_host("");
        let etc = layers[0].join("etc");
        std::fs::remove_file(etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink(&host, etc.join("passwd")).unwrap();
        assert!(resolve_user("hostonly", &layers).is_err());
        // `etc` itself a link to a host directory.
        let host_etc = dir.path().join("host-etc");
        std::fs::create_dir_all(&host_etc).unwrap();
        std::fs::copy(&host, host_etc.join("passwd")).unwrap();
        std::fs::remove_dir_all(&etc).unwrap();
        std::os::unix::fs::symlink(&host_etc, &etc).unwrap();
        assert!(resolve_user("hostonly", &layers).is_err());
    }

    #[test]
    fn a_passwd_swapped_for_a_host_link_while_read_is_never_followed() {
        // A running capsule owns its upper layer: it can swap /etc/passwd between a file and a
        // link to a host file as fast as it likes while the agent resolves `exec -u`.
        let (_dir, layers, host) = rootfs_and_host("app:x:1000:1000::/:/bin/sh\n");
        let etc = layers[0].join("etc");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (etc, stop) = (etc.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::remove_file(etc.join("link"));
                    std::os::unix::fs::symlink(&host, etc.join("link")).unwrap();
                    std::fs::rename(etc.join("link"), etc.join("passwd")).unwrap();
                    std::fs::write(etc.join("file"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
                    std::fs::rename(etc.join("file"), etc.join("passwd")).unwrap();
                }
            })
        };
        let started = std::time::Instant::now();
        let mut followed = 0;
        while started.elapsed() < Duration::from_secs(2) {
            if resolve_user("hostonly", &layers).is_ok() {
                followed += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert_eq!(
            followed, 0,
            "read the host's file through the link {followed} times"
        );
    }

    #[test]
    fn logs_filter_by_time_and_tail() {
        let lines: Vec<LogLine> = (0..10)
            .map(|i| LogLine {
                time_ms: i * 10,
                stream: "stdout".into(),
                line: i.to_string(),
            })
            .collect();
        let got = filter_logs(lines.clone(), Some(50), None);
        assert_eq!(got.first().unwrap().line, "5");
        let got = filter_logs(lines.clone(), None, Some(2));
        assert_eq!(
            got.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["8", "9"]
        );
        assert_eq!(filter_logs(lines, Some(1000), Some(3)).len(), 0);
    }
}
