//! Rootless capsules: the user namespace a capsule gets when the runtime runs without root.
//!
//! The capsule's first process is cloned with `CLONE_NEWUSER` together with its other
//! namespaces (the kernel creates the user namespace first and makes it the owner of the
//! others). It blocks on a pipe until the parent has written its id maps:
//!
//! - with a range in `/etc/subuid` and `/etc/subgid`, through the setuid helpers:
//!   `newuidmap PID 0 UID 1 1 SUBUID_START COUNT` (and `newgidmap` likewise): root inside is
//!   the calling user, ids 1.. are the subordinate range;
//! - without one (or without the helpers), the parent writes a single mapping of its own ids
//!   to 0 (`/proc/PID/uid_map`, `setgroups` denied first, then `gid_map`), which the kernel
//!   allows an unprivileged process for itself. Only root exists inside then.
//!
//! Everything here runs in the parent; the child's side is a plan step (`WaitParent`).

use std::path::{Path, PathBuf};

/// Errors of a rootless setup.
#[derive(Debug, thiserror::Error)]
pub enum UserNamespaceError {
    /// `/etc/subuid` or `/etc/subgid` could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `newuidmap`/`newgidmap` could not be started.
    #[error("run {helper}: {source}")]
    Helper {
        /// The helper.
        helper: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `newuidmap`/`newgidmap` failed.
    #[error("{helper} failed ({status}): {stderr}")]
    HelperFailed {
        /// The helper.
        helper: &'static str,
        /// Its exit status.
        status: String,
        /// Its error output (one line).
        stderr: String,
    },
    /// Writing `/proc/PID/{setgroups,uid_map,gid_map}` failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The capsule's user has no mapping in the user namespace.
    #[error(
        "user {uid}:{gid} is not mapped in the capsule's user namespace (add a range for this \
         user to /etc/subuid and /etc/subgid, or run as root inside)"
    )]
    Unmapped {
        /// The uid asked for.
        uid: u32,
        /// The gid asked for.
        gid: u32,
    },
}

/// One line of an id map: ids `inside..inside+count` in the namespace are
/// `outside..outside+count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

impl IdMap {
    /// Whether `id` (inside) is mapped by this line.
    pub fn maps(&self, id: u32) -> bool {
        id >= self.inside && u64::from(id) < u64::from(self.inside) + u64::from(self.count)
    }

    /// The host id of `id` (inside), if this line maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        if !self.maps(id) {
            return None;
        }
        self.outside.checked_add(id - self.inside)
    }
}

/// How the maps get written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapWriter {
    /// The setuid `newuidmap` / `newgidmap` helpers (subordinate ranges).
    Helpers,
    /// Direct writes of a single self-mapping (`setgroups` denied).
    SelfMap,
}

/// The user namespace of rootless capsules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// uid map lines.
    pub uid_map: Vec<IdMap>,
    /// gid map lines.
    pub gid_map: Vec<IdMap>,
    /// How they are written.
    pub writer: MapWriter,
}

/// The first range `start:count` of `/etc/subuid`-format `text` for the user `name` or the
/// numeric `id`; malformed lines, empty ranges and ranges running past the last id
/// (`4294967294`; `-1` is no id) are skipped.
pub fn subordinate_range(text: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut parts = line.split(':');
        let owner = parts.next()?;
        let start: u32 = parts.next()?.trim().parse().ok()?;
        let count: u32 = parts.next()?.trim().parse().ok()?;
        let owned = owner == name || owner.parse::<u32>().is_ok_and(|o| o == id);
        let fits = u64::from(start) + u64::from(count) <= u64::from(u32::MAX);
        (owned && count > 0 && fits).then_some((start, count))
    })
}

impl UserNamespace {
    /// The namespace for the user `uid:gid` (named `name`), from the contents of `/etc/subuid`
    /// and `/etc/subgid`: root inside is the user, ids from 1 are the subordinate ranges (with
    /// `helpers` available and a range in both files); otherwise only the user as root.
    pub fn for_user(
        name: &str,
        uid: u32,
        gid: u32,
        subuid: &str,
        subgid: &str,
        helpers: bool,
    ) -> Self {
        let own = |id| IdMap {
            inside: 0,
            outside: id,
            count: 1,
        };
        let ranges = (
            subordinate_range(subuid, name, uid),
            subordinate_range(subgid, name, uid),
        );
        match ranges {
            (Some((us, uc)), Some((gs, gc))) if helpers => Self {
                uid_map: vec![
                    own(uid),
                    IdMap {
                        inside: 1,
                        outside: us,
                        count: uc,
                    },
                ],
                gid_map: vec![
                    own(gid),
                    IdMap {
                        inside: 1,
                        outside: gs,
                        count: gc,
                    },
                ],
                writer: MapWriter::Helpers,
            },
            _ => Self {
                uid_map: vec![own(uid)],
                gid_map: vec![own(gid)],
                writer: MapWriter::SelfMap,
            },
        }
    }

    /// The namespace for the calling user, from `/etc/subuid`, `/etc/subgid` and whether
    /// `newuidmap`/`newgidmap` are installed. A missing file counts as empty.
    pub fn for_current_user() -> Result<Self, UserNamespaceError> {
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let read = |p: &str| match std::fs::read_to_string(p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(UserNamespaceError::Read {
                path: p.into(),
                source,
            }),
        };
        let helpers = find_helper("newuidmap").is_some() && find_helper("newgidmap").is_some();
        Ok(Self::for_user(
            &name,
            uid.as_raw(),
            gid.as_raw(),
            &read("/etc/subuid")?,
            &read("/etc/subgid")?,
            helpers,
        ))
    }

    /// Whether `setgroups(2)` works inside (it is denied with a self-map).
    pub fn setgroups_allowed(&self) -> bool {
        self.writer == MapWriter::Helpers
    }

    /// Whether `uid` is mapped inside.
    pub fn maps_uid(&self, uid: u32) -> bool {
        self.uid_map.iter().any(|m| m.maps(uid))
    }

    /// Whether `gid` is mapped inside.
    pub fn maps_gid(&self, gid: u32) -> bool {
        self.gid_map.iter().any(|m| m.maps(gid))
    }

    /// The host uid of `uid` inside.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        self.uid_map.iter().find_map(|m| m.to_host(uid))
    }

    /// Checks that a process can run as `uid:gid` with `groups` inside.
    pub fn check_user(&self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), UserNamespaceError> {
        if self.maps_uid(uid) && self.maps_gid(gid) && groups.iter().all(|g| self.maps_gid(*g)) {
            Ok(())
        } else {
            Err(UserNamespaceError::Unmapped { uid, gid })
        }
    }

    /// Writes the maps of the process `pid` (blocked in a new user namespace).
    pub fn write_maps(&self, pid: i32) -> Result<(), UserNamespaceError> {
        match self.writer {
            MapWriter::Helpers => {
                run_helper("newuidmap", &helper_args(pid, &self.uid_map))?;
                run_helper("newgidmap", &helper_args(pid, &self.gid_map))
            }
            MapWriter::SelfMap => {
                let proc = PathBuf::from(format!("/proc/{pid}"));
                write_proc(&proc.join("setgroups"), "deny")?;
                write_proc(&proc.join("gid_map"), &map_text(&self.gid_map))?;
                write_proc(&proc.join("uid_map"), &map_text(&self.uid_map))
            }
        }
    }
}

/// The arguments of `newuidmap`/`newgidmap`: `PID INSIDE OUTSIDE COUNT ...`.
pub fn helper_args(pid: i32, maps: &[IdMap]) -> Vec<String> {
    let mut args = vec![pid.to_string()];
    for m in maps {
        args.extend([
            m.inside.to_string(),
            m.outside.to_string(),
            m.count.to_string(),
        ]);
    }
    args
}

/// The text of a `/proc/PID/uid_map` write: one `INSIDE OUTSIDE COUNT` line per map.
pub fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

fn find_helper(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run_helper(helper: &'static str, args: &[String]) -> Result<(), UserNamespaceError> {
    let path = find_helper(helper).unwrap_or_else(|| PathBuf::from(helper));
    let out = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| UserNamespaceError::Helper { helper, source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(UserNamespaceError::HelperFailed {
        helper,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn write_proc(path: &Path, text: &str) -> Result<(), UserNamespaceError> {
    std::fs::write(path, text).map_err(|source| UserNamespaceError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SUBUID: &str = "# comment\nalice:100000:65536\nbroken line\n1001:200000:1000\nzero:1:0\n";

    #[test]
    fn ranges_are_found_by_name_or_uid() {
        assert_eq!(
            subordinate_range(SUBUID, "alice", 1000),
            Some((100000, 65536))
        );
        assert_eq!(subordinate_range(SUBUID, "bob", 1001), Some((200000, 1000)));
        assert_eq!(subordinate_range(SUBUID, "carol", 1002), None);
        // An empty range is no range.
        assert_eq!(subordinate_range(SUBUID, "zero", 7), None);
    }

    #[test]
    fn a_range_past_the_last_id_is_no_range() {
        // Found by the `subuid` fuzz target: host ids of such a range overflowed (a panic in a
        // debug build, a wrapped, wrong host id in release).
        let past = "alice:4294967290:10
";
        assert_eq!(subordinate_range(past, "alice", 1000), None);
        let ns = UserNamespace::for_user("alice", 1000, 1000, past, past, true);
        assert_eq!(ns.writer, MapWriter::SelfMap);
        assert_eq!(ns.host_uid(9), None);
        let last = "alice:4294967285:10
";
        assert_eq!(
            subordinate_range(last, "alice", 1000),
            Some((4294967285, 10))
        );
        let ns = UserNamespace::for_user("alice", 1000, 1000, last, last, true);
        assert_eq!(ns.host_uid(10), Some(4294967294));
        // A map line built by hand that runs past the end maps nothing there.
        let m = IdMap {
            inside: 1,
            outside: u32::MAX - 1,
            count: 10,
        };
        assert_eq!(m.to_host(2), Some(u32::MAX));
        assert_eq!(m.to_host(3), None);
    }

    #[test]
    fn a_subordinate_range_maps_root_to_the_user_and_the_rest_to_the_range() {
        let ns = UserNamespace::for_user("alice", 1000, 1000, SUBUID, SUBUID, true);
        assert_eq!(ns.writer, MapWriter::Helpers);
        assert_eq!(
            helper_args(42, &ns.uid_map),
            ["42", "0", "1000", "1", "1", "100000", "65536"]
        );
        assert_eq!(ns.host_uid(0), Some(1000));
        assert_eq!(ns.host_uid(1000), Some(100999));
        assert_eq!(ns.host_uid(65536), Some(165535));
        assert_eq!(ns.host_uid(65537), None);
        assert!(ns.setgroups_allowed());
        assert!(ns.check_user(1000, 1000, &[5, 10]).is_ok());
    }

    #[test]
    fn without_a_range_or_helpers_only_the_user_is_mapped_to_root() {
        for ns in [
            UserNamespace::for_user("carol", 1002, 1002, SUBUID, SUBUID, true),
            UserNamespace::for_user("alice", 1000, 1000, SUBUID, SUBUID, false),
            // A uid range without a gid range.
            UserNamespace::for_user("alice", 1000, 1000, SUBUID, "", true),
        ] {
            assert_eq!(ns.writer, MapWriter::SelfMap);
            assert_eq!(
                map_text(&ns.uid_map),
                format!("0 {} 1\n", ns.uid_map[0].outside)
            );
            assert!(!ns.setgroups_allowed());
            assert!(ns.check_user(0, 0, &[]).is_ok());
            assert!(matches!(
                ns.check_user(1000, 0, &[]),
                Err(UserNamespaceError::Unmapped { uid: 1000, .. })
            ));
            assert!(ns.check_user(0, 0, &[5]).is_err());
        }
    }
}
