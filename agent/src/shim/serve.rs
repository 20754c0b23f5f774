//! The supervisor's loop: the capsule's stdio (pipes, or a pty with `-t`), its output copied
//! into the rotated log and framed to attach clients, stdin from attach clients, the first
//! client's buffer, and the wait for the capsule's first process to end.
//!
//! Part of [`crate::shim`]; imports only [`crate::wire`]'s framing and the capsule crate.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bolt_capsule::runtime::supervisor::ExitRecord;
use bolt_capsule::runtime::{Stdio, StdioSlot};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{SupervisorConfig, SupervisorError};
use crate::wire::frame;

/// How long a supervisor that keeps output for its first attach client waits for one after
/// the capsule ended.
const LINGER: Duration = Duration::from_secs(10);
/// How long output may stay open after the capsule's first process ended (only a process
/// outside its pid namespace could hold it).
const DRAIN: Duration = Duration::from_secs(2);
/// Output kept for the first attach client; older output is dropped past this.
const FIRST_ATTACH_BUFFER: usize = 4 << 20;
/// Output queued for one slow client before it is dropped.
const CLIENT_BUFFER: usize = 8 << 20;
/// Longest line kept whole in the log; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// The capsule's stdio: what the runtime gets, the output fds we read, stdin's write end.
pub(super) fn stdio_for(
    cfg: &SupervisorConfig,
) -> Result<(Stdio, Vec<Output>, Option<OwnedFd>), SupervisorError> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SupervisorError::Io {
            what: "create",
            path: PathBuf::from("pipe"),
            source: e.into(),
        })
    };
    if cfg.tty {
        let pty = nix::pty::openpty(None, None).map_err(SupervisorError::Pty)?;
        let master = pty.master;
        set_cloexec(&master);
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| SupervisorError::Io {
                what: "duplicate",
                path: PathBuf::from("pty"),
                source,
            })
        };
        let stdio = Stdio {
            stdin: StdioSlot::Fd(dup(&slave)?),
            stdout: StdioSlot::Fd(dup(&slave)?),
            stderr: StdioSlot::Fd(slave),
            terminal: true,
        };
        let writer = dup(&master)?;
        set_nonblocking(&writer);
        set_nonblocking(&master);
        let out = Output::new("stdout", super_frame_kind("stdout"), master);
        return Ok((stdio, vec![out], cfg.stdin.then_some(writer)));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_slot, stdin_w) = if cfg.stdin {
        let (r, w) = pipe()?;
        set_nonblocking(&w);
        (StdioSlot::Fd(r), Some(w))
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
        vec![
            Output::new("stdout", frame::STDOUT, out_r),
            Output::new("stderr", frame::STDERR, err_r),
        ],
        stdin_w,
    ))
}

fn super_frame_kind(stream: &str) -> u8 {
    if stream == "stderr" {
        frame::STDERR
    } else {
        frame::STDOUT
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

fn set_cloexec(fd: &OwnedFd) {
    let _ = fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// One output stream of the capsule.
pub(super) struct Output {
    name: &'static str,
    kind: u8,
    file: File,
    line: Vec<u8>,
    open: bool,
}

impl Output {
    fn new(name: &'static str, kind: u8, fd: OwnedFd) -> Self {
        Self {
            name,
            kind,
            file: File::from(fd),
            line: Vec::new(),
            open: true,
        }
    }
}

/// stdin's write end (a pipe, or the pty master), with what is not written yet.
struct Input {
    fd: OwnedFd,
    pending: Vec<u8>,
    eof: bool,
}

/// One attach client.
struct Client {
    stream: UnixStream,
    decoder: frame::Decoder,
    out: VecDeque<u8>,
    gone: bool,
}

/// Output kept for the first attach client.
#[derive(Default)]
struct FirstBuffer {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl FirstBuffer {
    fn push(&mut self, f: Vec<u8>) {
        self.bytes += f.len();
        self.frames.push_back(f);
        while self.bytes > FIRST_ATTACH_BUFFER {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

pub(super) struct Loop {
    listener: UnixListener,
    clients: Vec<Client>,
    outputs: Vec<Output>,
    stdin: Option<Input>,
    log: CapsuleLog,
    first: Option<FirstBuffer>,
    attached_ever: bool,
    tty: bool,
}

/// What one poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Pidfd,
    Output(usize),
    Stdin,
    Client(usize),
}

impl Loop {
    /// The loop over the attach socket, the capsule's output and stdin.
    pub(super) fn new(
        listener: UnixListener,
        outputs: Vec<Output>,
        stdin: Option<OwnedFd>,
        log: CapsuleLog,
        attach_wait: bool,
        tty: bool,
    ) -> Self {
        Self {
            listener,
            clients: Vec::new(),
            outputs,
            stdin: stdin.map(|fd| Input {
                fd,
                pending: Vec::new(),
                eof: false,
            }),
            log,
            first: attach_wait.then(FirstBuffer::default),
            attached_ever: false,
            tty,
        }
    }

    /// Serves output, stdin and clients until the capsule's first process ended and its output
    /// is drained.
    pub(super) fn serve_until_exit(
        &mut self,
        pidfd: Option<&OwnedFd>,
    ) -> Result<(), SupervisorError> {
        let mut exited_at: Option<Instant> = None;
        loop {
            let outputs_open = self.outputs.iter().any(|o| o.open);
            if !outputs_open && (exited_at.is_some() || pidfd.is_none()) {
                return Ok(());
            }
            if let Some(t) = exited_at {
                if t.elapsed() > DRAIN {
                    // Someone outside the capsule holds its output open; stop waiting.
                    for o in &mut self.outputs {
                        o.open = false;
                    }
                    return Ok(());
                }
            }
            let timeout = if exited_at.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            let watch_pidfd = if exited_at.is_none() { pidfd } else { None };
            self.poll_once(watch_pidfd, timeout, &mut exited_at)?;
        }
    }

    fn poll_once(
        &mut self,
        pidfd: Option<&OwnedFd>,
        timeout: PollTimeout,
        exited_at: &mut Option<Instant>,
    ) -> Result<(), SupervisorError> {
        let mut slots = Vec::new();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        slots.push(Slot::Listener);
        if let Some(p) = pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Pidfd);
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if o.open {
                fds.push(PollFd::new(o.file.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(i));
            }
        }
        if let Some(s) = &self.stdin {
            if !s.pending.is_empty() {
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLOUT));
                slots.push(Slot::Stdin);
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::POLLIN;
            if !c.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), flags));
            slots.push(Slot::Client(i));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(SupervisorError::Poll(e)),
        }
        let ready: Vec<(Slot, PollFlags)> = slots
            .iter()
            .zip(fds.iter())
            .filter_map(|(s, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (*s, r)))
            .collect();
        drop(fds);
        for (slot, revents) in ready {
            match slot {
                Slot::Listener => self.accept(),
                Slot::Pidfd => *exited_at = Some(Instant::now()),
                Slot::Output(i) => self.read_output(i)?,
                Slot::Stdin => self.flush_stdin(),
                Slot::Client(i) => {
                    if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                        self.read_client(i);
                    }
                    if revents.contains(PollFlags::POLLOUT) {
                        self.flush_client(i);
                    }
                    if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                        if let Some(c) = self.clients.get_mut(i) {
                            c.gone = true;
                        }
                    }
                }
            }
        }
        self.clients.retain(|c| !c.gone);
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut client = Client {
                        stream,
                        decoder: frame::Decoder::default(),
                        out: VecDeque::new(),
                        gone: false,
                    };
                    if let Some(first) = self.first.take() {
                        for f in first.frames {
                            client.out.extend(f);
                        }
                    }
                    self.attached_ever = true;
                    self.clients.push(client);
                    let i = self.clients.len() - 1;
                    self.flush_client(i);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn broadcast(&mut self, f: Vec<u8>) {
        if let Some(first) = &mut self.first {
            first.push(f.clone());
        }
        for i in 0..self.clients.len() {
            if let Some(c) = self.clients.get_mut(i) {
                if c.out.len() + f.len() > CLIENT_BUFFER {
                    c.gone = true;
                    continue;
                }
                c.out.extend(f.iter().copied());
            }
            self.flush_client(i);
        }
    }

    fn read_output(&mut self, i: usize) -> Result<(), SupervisorError> {
        let mut chunk = [0u8; 16384];
        let Some(o) = self.outputs.get_mut(i) else {
            return Ok(());
        };
        let n = match o.file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
                return Ok(())
            }
            // A pty master reads EIO once every slave fd is closed: that is its end.
            Err(_) => 0,
        };
        if n == 0 {
            o.open = false;
            if !o.line.is_empty() {
                let line = std::mem::take(&mut o.line);
                let name = o.name;
                self.log.line(name, &line, self.tty)?;
            }
            return Ok(());
        }
        let data = chunk.get(..n).unwrap_or_default();
        let (name, kind) = (o.name, o.kind);
        o.line.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = o.line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = o.line.drain(..=pos).collect();
            lines.push(line);
        }
        if o.line.len() > MAX_LINE {
            lines.push(std::mem::take(&mut o.line));
        }
        for mut l in lines {
            if l.last() == Some(&b'\n') {
                l.pop();
            }
            self.log.line(name, &l, self.tty)?;
        }
        self.broadcast(frame::encode(kind, data));
        Ok(())
    }

    fn read_client(&mut self, i: usize) {
        let mut chunk = [0u8; 16384];
        let mut frames = Vec::new();
        if let Some(c) = self.clients.get_mut(i) {
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        c.gone = true;
                        break;
                    }
                    Ok(n) => c.decoder.push(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.gone = true;
                        break;
                    }
                }
            }
            loop {
                match c.decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => {
                        c.gone = true;
                        break;
                    }
                }
            }
        }
        for (kind, payload) in frames {
            self.client_frame(kind, &payload);
        }
    }

    fn client_frame(&mut self, kind: u8, payload: &[u8]) {
        match kind {
            frame::STDIN => {
                if let Some(s) = &mut self.stdin {
                    if !s.eof {
                        s.pending.extend_from_slice(payload);
                    }
                }
                self.flush_stdin();
            }
            frame::STDIN_EOF => {
                if let Some(s) = &mut self.stdin {
                    s.eof = true;
                }
                self.flush_stdin();
            }
            frame::RESIZE => {
                if let (Some((rows, cols)), Some(o)) =
                    (frame::parse_resize(payload), self.outputs.first())
                {
                    if self.tty {
                        let ws = rustix::termios::Winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(o.file.as_fd(), ws);
                    }
                }
            }
            _ => {}
        }
    }

    fn flush_stdin(&mut self) {
        let Some(s) = &mut self.stdin else {
            return;
        };
        while !s.pending.is_empty() {
            match nix::unistd::write(s.fd.as_fd(), &s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    s.pending.clear();
                    s.eof = true;
                }
            }
        }
        if s.eof {
            if self.tty {
                // A pty has one fd for both ways: send the terminal's end-of-file instead.
                let _ = nix::unistd::write(s.fd.as_fd(), &[4u8]);
            }
            self.stdin = None;
        }
    }

    fn flush_client(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            match c.stream.write(a) {
                Ok(0) => {
                    c.gone = true;
                    return;
                }
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.gone = true;
                    return;
                }
            }
        }
    }

    /// Tells attached clients how the capsule ended and flushes what they still lack. With
    /// `attach_wait` and no client yet, waits up to [`LINGER`] for the first one.
    pub(super) fn finish(&mut self, record: &ExitRecord, attach_wait: bool) {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        let exit = frame::encode(frame::EXIT, &payload);
        self.broadcast(exit.clone());
        let deadline = Instant::now() + LINGER;
        loop {
            let waiting_first = attach_wait && !self.attached_ever;
            let unsent = self.clients.iter().any(|c| !c.out.is_empty());
            if (!waiting_first && !unsent) || Instant::now() >= deadline {
                return;
            }
            let mut fds: Vec<PollFd<'_>> =
                vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            for c in &self.clients {
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLOUT));
            }
            if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
                continue;
            }
            drop(fds);
            self.accept();
            for i in 0..self.clients.len() {
                self.flush_client(i);
            }
            self.clients.retain(|c| !c.gone);
        }
    }
}

/// The capsule crate's log writer; a terminal's lines lose their trailing `\r` first.
pub(super) struct CapsuleLog(bolt_capsule::runtime::supervisor::RotatingLog);

impl CapsuleLog {
    pub(super) fn open(path: PathBuf, max: u64, keep: usize) -> Result<Self, SupervisorError> {
        let opts = bolt_capsule::runtime::supervisor::SuperviseOptions {
            log_max_bytes: max.max(1),
            log_keep: keep,
        };
        Ok(Self(bolt_capsule::runtime::supervisor::RotatingLog::open(
            path, opts,
        )?))
    }

    fn line(&mut self, stream: &str, bytes: &[u8], tty: bool) -> Result<(), SupervisorError> {
        let bytes = if tty {
            bytes.strip_suffix(b"\r").unwrap_or(bytes)
        } else {
            bytes
        };
        Ok(self.0.line(stream, bytes)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bolt_capsule::runtime::supervisor::files;

    use super::*;

    #[test]
    fn the_first_attach_buffer_drops_the_oldest_output() {
        let mut b = FirstBuffer::default();
        for i in 0..5u8 {
            b.push(vec![i; FIRST_ATTACH_BUFFER / 2]);
        }
        assert!(b.bytes <= FIRST_ATTACH_BUFFER);
        assert_eq!(b.frames.back().map(|f| f[0]), Some(4));
        assert_eq!(b.frames.len(), 2);
    }

    #[test]
    fn log_rotates_and_reads_back_with_the_capsule_crate() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CapsuleLog::open(dir.path().join(files::LOG), 300, 2).unwrap();
        for i in 0..30 {
            log.line("stdout", format!("line {i}\r").as_bytes(), true)
                .unwrap();
        }
        assert!(dir.path().join("log.1").exists());
        assert!(!dir.path().join("log.3").exists());
        let lines = bolt_capsule::runtime::supervisor::read_logs(dir.path()).unwrap();
        assert_eq!(lines.last().map(|l| l.line.as_str()), Some("line 29"));
        assert!(lines.len() < 30);
    }
}
