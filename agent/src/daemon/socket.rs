//! The API socket and who may call it. The API is root-equivalent (it starts capsules with any
//! mount), so: a root agent's socket is `root:bolt` 0660 (the `bolt` group is created when
//! missing), another user's agent keeps its socket 0600 for itself; the mode and group are set
//! between `bind` and `listen`, so nobody can connect while the file is wider; the path must not
//! be a symbolic link nor sit in a directory another user owns or may write (unless sticky); and
//! every accepted connection's `SO_PEERCRED` is checked: root, the agent's own user, or (root
//! agent) a process with `bolt` as its group or one of its supplementary groups. Others get a
//! 403 and the connection closed, counted in `bolt_api_connections_refused_total`.

use std::fs::DirBuilder;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The group whose members may call a root agent's API.
pub const GROUP: &str = "bolt";

/// Connections refused by the peer-credential check.
pub const METRIC_REFUSED: &str = "bolt_api_connections_refused_total";

/// One step of preparing or binding the API socket that failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("create the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "socket directory {path} belongs to uid {owner}, neither root nor this agent's user; \
         refusing to listen there"
    )]
    DirOwner { path: PathBuf, owner: u32 },
    #[error(
        "socket directory {path} has mode {mode:o}: others may replace the socket; \
         refusing to listen there"
    )]
    DirWritable { path: PathBuf, mode: u32 },
    #[error("socket path {path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("socket path {path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("stale socket {path} belongs to uid {owner}, neither root nor this agent's user")]
    Owner { path: PathBuf, owner: u32 },
    #[error("socket {path} is served by another bolt agent")]
    InUse { path: PathBuf },
    #[error("remove stale socket {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("look up group bolt: {0}")]
    GroupLookup(nix::Error),
    #[error("create group bolt (groupadd --system bolt): {0}")]
    GroupCreate(String),
    #[error("listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("set the mode of socket {path}: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("give socket {path} to group bolt: {source}")]
    Chown {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who may connect: root, `uid` (the agent's effective user), and members of `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub group: Option<u32>,
}

impl Access {
    /// This agent's rule: as root, root and the `bolt` group (created when missing); as
    /// another user, that user alone. A root agent on a host where the group can be neither
    /// found nor made (no `groupadd`, a read-only `/etc`) admits root alone, with a warning:
    /// narrower, never wider.
    pub fn for_this_process() -> Result<Access, SocketError> {
        let uid = rustix::process::geteuid().as_raw();
        if uid != 0 {
            return Ok(Access { uid, group: None });
        }
        let group = match bolt_group() {
            Ok(g) => Some(g),
            Err(e @ SocketError::GroupCreate(_)) => {
                tracing::warn!("{e}; the API socket admits root alone (mode 0600)");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Access { uid, group })
    }

    /// The socket file's mode under this rule.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Whether a peer with effective `uid`/`gid` and supplementary `groups` may call the API.
    pub fn admits(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0 || uid == self.uid || self.group.is_some_and(|g| gid == g || groups.contains(&g))
    }

    /// Whether the process on the other end of `stream` may call the API. Its supplementary
    /// groups are read from `/proc/PID/status`, whose effective uid must still be the one the
    /// kernel recorded at connect (a pid reused since then is refused).
    fn admits_peer(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        let (uid, gid) = (cred.uid(), cred.gid());
        if self.admits(uid, gid, &[]) {
            return Ok(());
        }
        let groups = match (self.group, cred.pid()) {
            (Some(_), Some(pid)) => std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| proc_groups(&s))
                .filter(|(euid, _)| *euid == uid)
                .map(|(_, groups)| groups)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if self.admits(uid, gid, &groups) {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} gid {gid} pid {} is neither root, uid {}, nor in group {GROUP}",
                cred.pid().unwrap_or(0),
                self.uid
            ))
        }
    }
}

/// The effective uid and the supplementary groups of a `/proc/PID/status` text.
fn proc_groups(status: &str) -> Option<(u32, Vec<u32>)> {
    let mut euid = None;
    let mut groups = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            euid = rest.split_whitespace().nth(1).and_then(|u| u.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .map(|g| g.parse().ok())
                .collect::<Option<Vec<u32>>>();
        }
    }
    Some((euid?, groups?))
}

/// The `bolt` group's id, creating the group (`groupadd --system bolt`) when it is missing.
fn bolt_group() -> Result<u32, SocketError> {
    let lookup = || nix::unistd::Group::from_name(GROUP).map_err(SocketError::GroupLookup);
    if let Some(g) = lookup()? {
        return Ok(g.gid.as_raw());
    }
    let out = std::process::Command::new("groupadd")
        .args(["--system", GROUP])
        .output()
        .map_err(|e| SocketError::GroupCreate(e.to_string()))?;
    // Another agent may have created it meanwhile (groupadd then fails): look again.
    match lookup()? {
        Some(g) => {
            tracing::info!("created group {GROUP} (gid {})", g.gid);
            Ok(g.gid.as_raw())
        }
        None => Err(SocketError::GroupCreate(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Make the socket's directory (0755) when missing and check it and the path: the directory
/// belongs to root or `access.uid` and others may not write it unless it is sticky; the path
/// is not a symbolic link. A stale socket there (nobody answers) of root or this user is
/// removed; a live one belongs to an agent on another root and is left alone. Called with the
/// root lock held.
pub fn prepare(path: &Path, access: &Access) -> Result<(), SocketError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| SocketError::Dir {
            path: dir.into(),
            source,
        })?;
    let meta = std::fs::metadata(dir).map_err(|source| SocketError::Inspect {
        path: dir.into(),
        source,
    })?;
    check_dir(dir, meta.uid(), meta.mode(), access)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(SocketError::Symlink { path: path.into() })
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(SocketError::NotASocket { path: path.into() })
        }
        Ok(meta) if meta.uid() != 0 && meta.uid() != access.uid => Err(SocketError::Owner {
            path: path.into(),
            owner: meta.uid(),
        }),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: path.into() });
            }
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| SocketError::Remove {
                path: path.into(),
                source,
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Inspect {
            path: path.into(),
            source,
        }),
    }
}

/// The socket directory rule of [`prepare`].
fn check_dir(dir: &Path, owner: u32, mode: u32, access: &Access) -> Result<(), SocketError> {
    if owner != 0 && owner != access.uid {
        return Err(SocketError::DirOwner {
            path: dir.into(),
            owner,
        });
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(SocketError::DirWritable {
            path: dir.into(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Bind the socket at `path`, give it its mode (and the `bolt` group), then listen: connects
/// before `listen` are refused by the kernel, so there is no moment the socket is reachable
/// with a wider mode. The file is removed again when a step after `bind` fails.
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener, SocketError> {
    let bind_err = |source: std::io::Error| SocketError::Bind {
        path: path.into(),
        source,
    };
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| bind_err(e.into()))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| bind_err(e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| bind_err(e.into()))?;
    let finish = || -> Result<(), SocketError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode())).map_err(
            |source| SocketError::Chmod {
                path: path.into(),
                source,
            },
        )?;
        if let Some(gid) = access.group {
            std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|source| {
                SocketError::Chown {
                    path: path.into(),
                    source,
                }
            })?;
        }
        rustix::net::listen(&fd, 1024).map_err(|e| bind_err(e.into()))
    };
    finish()
        .and_then(|()| {
            UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).map_err(bind_err)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
}

/// The API's listener: accepts as a [`UnixListener`] does, then admits a connection only when
/// [`Access::admits_peer`] does; a refused peer gets a 403 and the connection closed.
#[derive(Debug)]
pub struct Guarded {
    pub listener: UnixListener,
    pub access: Access,
}

impl axum::serve::Listener for Guarded {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.access.admits_peer(&stream) {
                Ok(()) => return (stream, addr),
                Err(why) => {
                    metrics::counter!(METRIC_REFUSED).increment(1);
                    tracing::warn!("refused an API connection: {why}");
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Answer a refused peer with one 403 and close.
async fn refuse(mut stream: UnixStream) {
    let body = format!(
        "{{\"error\":\"permission denied: only root, the agent's user and group {GROUP} may call this agent\"}}"
    );
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    // Read the request's head before answering and drain what follows after: a socket closed
    // with unread input is reset, and the client would see a write error instead of the 403.
    // Bounded in time and bytes, so a refused peer holds nothing for long.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut drained = 0usize;
        while drained < 1 << 20 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ROOT_AGENT: Access = Access {
        uid: 0,
        group: Some(998),
    };

    #[test]
    fn root_the_agents_user_and_the_group_are_admitted() {
        assert!(ROOT_AGENT.admits(0, 0, &[]));
        assert!(ROOT_AGENT.admits(1000, 998, &[]), "primary group");
        assert!(ROOT_AGENT.admits(1000, 1000, &[27, 998]), "supplementary");
        assert!(!ROOT_AGENT.admits(1000, 1000, &[27]));
        let rootless = Access {
            uid: 1000,
            group: None,
        };
        assert!(rootless.admits(1000, 1000, &[]));
        assert!(rootless.admits(0, 0, &[]));
        assert!(!rootless.admits(1001, 998, &[998]));
        assert_eq!((ROOT_AGENT.mode(), rootless.mode()), (0o660, 0o600));
    }

    #[test]
    fn proc_status_gives_the_effective_uid_and_the_groups() {
        let status = "Name:\tbolt\nUid:\t1000\t1001\t1000\t1000\nGid:\t5\t5\t5\t5\n\
                      Groups:\t27 998 \nVmPeak:\t1 kB\n";
        assert_eq!(proc_groups(status), Some((1001, vec![27, 998])));
        assert_eq!(
            proc_groups("Uid:\t1\t1\t1\t1\nGroups:\t\n"),
            Some((1, vec![]))
        );
        assert_eq!(proc_groups("Groups:\t1\n"), None);
    }

    #[test]
    fn a_socket_dir_others_may_write_is_refused_unless_sticky() {
        let dir = Path::new("/d");
        let me = Access {
            uid: 1000,
            group: None,
        };
        check_dir(dir, 1000, 0o40700, &me).unwrap();
        check_dir(dir, 0, 0o40755, &me).unwrap();
        check_dir(dir, 0, 0o41777, &me).unwrap();
        assert!(matches!(
            check_dir(dir, 0, 0o40777, &me),
            Err(SocketError::DirWritable { mode: 0o777, .. })
        ));
        assert!(matches!(
            check_dir(dir, 1001, 0o40700, &me),
            Err(SocketError::DirOwner { owner: 1001, .. })
        ));
    }

    #[test]
    fn a_symlinked_socket_path_is_refused_and_its_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let me = Access {
            uid: rustix::process::geteuid().as_raw(),
            group: None,
        };
        let target = dir.path().join("elsewhere.sock");
        drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
        let path = dir.path().join("bolt.sock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            prepare(&path, &me),
            Err(SocketError::Symlink { .. })
        ));
        assert!(target.exists());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            prepare(&path, &me),
            Err(SocketError::NotASocket { .. })
        ));
    }

    #[tokio::test]
    async fn the_socket_has_its_mode_before_anyone_can_connect() {
        let dir = tempfile::tempdir().unwrap();
        let me = Access {
            uid: rustix::process::geteuid().as_raw(),
            group: None,
        };
        let path = dir.path().join("bolt.sock");
        let listener = bind(&path, &me).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let mut guarded = Guarded {
            listener,
            access: me,
        };
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.unwrap() }
        });
        let (_server, _) = axum::serve::Listener::accept(&mut guarded).await;
        client.await.unwrap();
    }
}
