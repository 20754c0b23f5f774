//! `bolt exec`: a process started in a running capsule's namespaces and cgroup, and the
//! stream that carries its stdio to one client ([`StdioPeer`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bolt_capsule::runtime::{ExecSpec, Process, Runtime, Stdio, StdioSlot};
use tokio::io::unix::AsyncFd;

use crate::service::capsules::{async_fd, resolve_user, CapsuleError, Capsules, StdioPeer};
use crate::shim::SupervisorConfig;
use crate::wire::capsules::{one_line, short, ExecRequest, StreamEnd};
use crate::wire::frame;

/// How long exec output may stay open after its process ended (a background child holding it).
const EXEC_DRAIN: Duration = Duration::from_secs(1);

impl Capsules {
    // --- exec, top ------------------------------------------------------------------------------

    /// Starts a process in a running capsule (blocking: call from the blocking pool).
    pub fn exec_blocking(
        &self,
        id: &str,
        args: Vec<String>,
        env: Vec<String>,
        workdir: Option<String>,
        user: Option<String>,
        stdio: Stdio,
    ) -> Result<Process, CapsuleError> {
        let record = self.live_record(id)?;
        let dir = self.dir_of(id);
        let cfg = SupervisorConfig::load(&dir).map_err(|e| CapsuleError::Task(e.to_string()))?;
        let spec = cfg.runtime_spec(&dir);
        let user = match user {
            Some(u) => {
                let mut layers = vec![spec.rootfs.upper.clone()];
                layers.extend(cfg.lower.iter().rev().cloned());
                Some(
                    resolve_user(&u, &layers)
                        .map_err(CapsuleError::BadRequest)?
                        .0,
                )
            }
            None => None,
        };
        for e in &env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(CapsuleError::BadRequest(format!(
                    "invalid environment entry {e:?}: expected KEY=VALUE"
                )));
            }
        }
        let runtime = self
            .runtime
            .get_or_init(|| Runtime::for_this_user().map_err(|e| e.to_string()));
        let runtime = runtime
            .as_ref()
            .map_err(|e| CapsuleError::Task(e.clone()))?;
        let exec = ExecSpec {
            args,
            env,
            workdir,
            user,
        };
        runtime
            .exec(&spec, record.pid, &exec, stdio)
            .map_err(|e| CapsuleError::Start {
                error: one_line(&e.to_string()),
                exit_code: e.exit_code(),
            })
    }
}
/// Nonblocking, close-on-exec pipe.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

/// The exec process's stdio on our side: output readers (kind, fd) and stdin's writer.
struct ExecIo {
    outputs: Vec<(u8, AsyncFd<OwnedFd>)>,
    stdin: Option<AsyncFd<OwnedFd>>,
    pty: bool,
}

fn exec_stdio(req: &ExecRequest) -> std::io::Result<(Stdio, ExecIo)> {
    if req.tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let master = pty.master;
        let _ = nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let slave = pty.slave;
        let stdio = Stdio {
            stdin: StdioSlot::Fd(slave.try_clone()?),
            stdout: StdioSlot::Fd(slave.try_clone()?),
            stderr: StdioSlot::Fd(slave),
            terminal: true,
        };
        let writer = master.try_clone()?;
        set_nonblocking(&master);
        let io = ExecIo {
            outputs: vec![(frame::STDOUT, async_fd(master)?)],
            stdin: if req.stdin {
                Some(async_fd(writer)?)
            } else {
                None
            },
            pty: true,
        };
        return Ok((stdio, io));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_slot, stdin_w) = if req.stdin {
        let (r, w) = pipe()?;
        set_nonblocking(&w);
        (StdioSlot::Fd(r), Some(async_fd(w)?))
    } else {
        (StdioSlot::Null, None)
    };
    set_nonblocking(&out_r);
    set_nonblocking(&err_r);
    let stdio = Stdio {
        stdin: stdin_slot,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    Ok((
        stdio,
        ExecIo {
            outputs: vec![
                (frame::STDOUT, async_fd(out_r)?),
                (frame::STDERR, async_fd(err_r)?),
            ],
            stdin: stdin_w,
            pty: false,
        },
    ))
}

/// Reads from a nonblocking fd; EIO (a pty whose other side closed) reads as the end.
async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> usize {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return 0;
        };
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => return n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return 0,
            Err(_would_block) => {}
        }
    }
}

async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let Ok(mut guard) = fd.writable().await else {
            return false;
        };
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = data.get(n..).unwrap_or_default(),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return false,
            Err(_would_block) => {}
        }
    }
    true
}

impl Capsules {
    /// The id of running capsule `key`, for an exec stream; a capsule that is not running is a
    /// conflict.
    pub async fn exec_target(&self, key: &str) -> Result<String, CapsuleError> {
        let (id, _, running) = self.generation(key).await?;
        if !running {
            return Err(CapsuleError::Conflict(format!(
                "capsule {} is not running",
                short(&id)
            )));
        }
        Ok(id)
    }

    /// Runs `req` in capsule `id` and bridges its stdio to `peer` until it ends. Returns the
    /// [`StreamEnd`] to send (a failed start included), or `None` when the client went away
    /// (the process runs on with stdin closed; its waiting thread reaps it).
    pub async fn exec_stream(
        self: &Arc<Self>,
        id: String,
        req: ExecRequest,
        peer: &mut impl StdioPeer,
    ) -> Option<StreamEnd> {
        let caps = Arc::clone(self);
        let fail = |error: String, exit_code: i32| StreamEnd {
            exit_code,
            oom: false,
            error: Some(error),
        };
        let (stdio, mut io) = match exec_stdio(&req) {
            Ok(v) => v,
            Err(e) => return Some(fail(format!("exec stdio: {e}"), 125)),
        };
        let spawned = {
            let caps = Arc::clone(&caps);
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                caps.exec_blocking(&id, req.cmd, req.env, req.workdir, req.user, stdio)
            })
            .await
        };
        let mut process = match spawned {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let code = e.exit_code();
                return Some(fail(one_line(&e.to_string()), code));
            }
            Err(e) => return Some(fail(e.to_string(), 125)),
        };
        // A plain thread, not the blocking pool: a pending wait must not hold up the agent's
        // shutdown (the runtime waits for blocking tasks; it does not wait for threads).
        let (wait_tx, mut waiter) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = wait_tx.send(process.wait());
        });
        // One reader task per output, into one channel; it closes when every output ended.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
        let pty = io.pty;
        let resize_fd = if pty {
            io.outputs
                .first()
                .and_then(|(_, fd)| fd.get_ref().try_clone().ok())
        } else {
            None
        };
        for (kind, fd) in std::mem::take(&mut io.outputs) {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    let n = read_fd(&fd, &mut buf).await;
                    if n == 0
                        || tx
                            .send((kind, buf.get(..n).unwrap_or_default().to_vec()))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut stdin = io.stdin.take();
        let mut status = None;
        let mut outputs_open = true;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        while outputs_open || status.is_none() {
            let deadline = drain_deadline;
            tokio::select! {
                chunk = rx.recv(), if outputs_open => match chunk {
                    Some((kind, data)) => {
                        let mut msg = Vec::with_capacity(data.len() + 1);
                        msg.push(kind);
                        msg.extend_from_slice(&data);
                        let _ = peer.send(msg).await;
                    }
                    None => outputs_open = false,
                },
                s = &mut waiter, if status.is_none() => {
                    status = Some(s);
                    drain_deadline = Some(tokio::time::Instant::now() + EXEC_DRAIN);
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => break,
                msg = peer.recv() => match msg {
                    None => {
                        // The client went away; the process runs on with stdin closed (its
                        // waiting thread reaps it).
                        drop(stdin);
                        return None;
                    }
                    Some(b) => {
                        let Some((&kind, payload)) = b.split_first() else { continue };
                        match kind {
                            frame::STDIN => {
                                if let Some(w) = &stdin {
                                    if !write_fd(w, payload).await {
                                        stdin = None;
                                    }
                                }
                            }
                            frame::STDIN_EOF => {
                                if let (true, Some(w)) = (pty, &stdin) {
                                    let _ = write_fd(w, &[4u8]).await;
                                }
                                stdin = None;
                            }
                            frame::RESIZE => {
                                if let (Some(fd), Some((rows, cols))) =
                                    (&resize_fd, frame::parse_resize(payload))
                                {
                                    let ws = rustix::termios::Winsize {
                                        ws_row: rows,
                                        ws_col: cols,
                                        ws_xpixel: 0,
                                        ws_ypixel: 0,
                                    };
                                    let _ = rustix::termios::tcsetwinsize(fd, ws);
                                }
                            }
                            _ => {}
                        }
                    }
                },
            }
        }
        let end = match status {
            Some(Ok(Ok(s))) => StreamEnd {
                exit_code: s.exit_code(),
                oom: false,
                error: None,
            },
            Some(Ok(Err(e))) => fail(e.to_string(), 125),
            Some(Err(e)) => fail(e.to_string(), 125),
            None => fail("the process was lost".into(), 125),
        };
        Some(end)
    }
}
