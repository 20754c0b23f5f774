//! `bolt attach` and a foreground `bolt run`: the bridge between a capsule supervisor's attach
//! socket (framed stdio, [`crate::wire::frame`]) and one client, whatever carries it (the API
//! speaks WebSocket; the service only sees a [`StdioPeer`]).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::service::capsules::{CapsuleError, Capsules};
use crate::shim::ATTACH_SOCK;
use crate::wire::capsules::{exit_code_of, short, StreamEnd};
use crate::wire::frame;

/// How long an attach or exec stream waits for the agent to record an exit it was told of.
pub const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// The client end of an attach or exec stream: binary messages of one kind byte and the
/// payload, both ways.
pub trait StdioPeer: Send {
    /// Sends one message to the client; false once the client is gone.
    fn send(&mut self, msg: Vec<u8>) -> impl Future<Output = bool> + Send;
    /// The next message from the client; `None` once it closed or went away.
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// A capsule's attach socket, connected: [`Attach::run`] bridges it to a client.
#[derive(Debug)]
pub struct Attach {
    caps: Arc<Capsules>,
    id: String,
    restarts: u32,
    stream: tokio::net::UnixStream,
}

impl Capsules {
    /// Connects to the attach socket of capsule `key`. A supervisor that keeps output for its
    /// first client still serves after the exit; otherwise a capsule that is not running is a
    /// conflict.
    pub async fn attach(self: &Arc<Self>, key: &str) -> Result<Attach, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        let stream = match connect_attach(&self.dir_of(&id)).await {
            Ok(s) => s,
            Err(_) if !running => {
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} is not running",
                    short(&id)
                )))
            }
            Err(e) => {
                return Err(CapsuleError::Task(format!(
                    "attach to capsule {}: {e}",
                    short(&id)
                )))
            }
        };
        Ok(Attach {
            caps: Arc::clone(self),
            id,
            restarts,
            stream,
        })
    }
}

/// Connects to a capsule's attach socket through its open directory (`/proc/self/fd/N/...`):
/// the full path may be longer than a socket address holds.
async fn connect_attach(dir: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let d = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCK}", d.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&path).await;
    drop(d);
    stream
}

impl Attach {
    /// Copies frames between the supervisor and `peer` (stdin and its EOF only with `stdin`;
    /// resizes always); at the end waits for the agent to record the exit. Returns the
    /// [`StreamEnd`] to send, or `None` when the client detached or went away.
    pub async fn run(self, peer: &mut impl StdioPeer, stdin: bool) -> Option<StreamEnd> {
        let Attach {
            caps,
            id,
            restarts,
            stream,
        } = self;
        let supervisor_exit = bridge(stream, peer, stdin).await?;
        let recorded = caps.wait_recorded(&id, restarts, RECORD_PATIENCE).await;
        Some(match (recorded, supervisor_exit) {
            (Some(e), _) => StreamEnd {
                exit_code: exit_code_of(&e),
                oom: e.oom,
                error: None,
            },
            (None, Some(code)) => StreamEnd {
                exit_code: code,
                oom: false,
                error: None,
            },
            (None, None) => StreamEnd {
                exit_code: 125,
                oom: false,
                error: Some("the capsule's supervisor went away".into()),
            },
        })
    }
}

/// Copies frames between the supervisor's attach socket and `peer` until the supervisor ends
/// the stream (`Some` of the exit code it sent, if any) or the client goes away (`None`). A
/// client's stdin message longer than a frame may carry is split into several frames: the
/// supervisor drops a client that sends a frame over [`frame::MAX_PAYLOAD`].
async fn bridge(
    stream: tokio::net::UnixStream,
    peer: &mut impl StdioPeer,
    stdin: bool,
) -> Option<Option<i32>> {
    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = frame::Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut supervisor_exit: Option<i32> = None;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break;
                }
                decoder.push(buf.get(..n).unwrap_or_default());
                while let Ok(Some((kind, payload))) = decoder.next_frame() {
                    if kind == frame::EXIT {
                        supervisor_exit = serde_json::from_slice::<
                            bolt_capsule::runtime::supervisor::ExitRecord,
                        >(&payload)
                        .ok()
                        .map(|r| r.exit_code);
                        continue;
                    }
                    let mut msg = Vec::with_capacity(payload.len() + 1);
                    msg.push(kind);
                    msg.extend_from_slice(&payload);
                    if !peer.send(msg).await {
                        return None;
                    }
                }
                if supervisor_exit.is_some() {
                    break;
                }
            }
            msg = peer.recv() => match msg {
                None => return None,
                Some(b) => {
                    let Some((&kind, payload)) = b.split_first() else { continue };
                    let frames: Vec<Vec<u8>> = match kind {
                        frame::STDIN if stdin => frame::encode_split(kind, payload).collect(),
                        // Their payloads are a few bytes: anything past a frame is dropped.
                        frame::STDIN_EOF if stdin => vec![frame::encode(kind, capped(payload))],
                        frame::RESIZE => vec![frame::encode(kind, capped(payload))],
                        _ => continue,
                    };
                    let mut failed = false;
                    for f in frames {
                        if wr.write_all(&f).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
            },
        }
    }
    Some(supervisor_exit)
}

/// At most a frame's worth of `payload`.
fn capped(payload: &[u8]) -> &[u8] {
    payload.get(..frame::MAX_PAYLOAD).unwrap_or(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A client that sends `to_send`, then stays (never detaches on its own).
    struct Client {
        to_send: VecDeque<Vec<u8>>,
        got: Vec<Vec<u8>>,
    }

    impl StdioPeer for Client {
        async fn send(&mut self, msg: Vec<u8>) -> bool {
            self.got.push(msg);
            true
        }

        async fn recv(&mut self) -> Option<Vec<u8>> {
            match self.to_send.pop_front() {
                Some(m) => Some(m),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn a_stdin_message_over_a_frame_reaches_the_supervisor_whole() {
        let (agent_end, mut supervisor) = tokio::net::UnixStream::pair().unwrap();
        let big: Vec<u8> = (0..3 * frame::MAX_PAYLOAD + 7).map(|i| i as u8).collect();
        let mut msg = vec![frame::STDIN];
        msg.extend_from_slice(&big);
        let mut client = Client {
            to_send: VecDeque::from([msg, vec![frame::STDIN, b'!']]),
            got: Vec::new(),
        };
        let bridged = tokio::spawn(async move {
            let end = bridge(agent_end, &mut client, true).await;
            (end, client.got)
        });
        // The supervisor's side, decoding as the shim does (it drops a client whose frame is
        // over the limit).
        let mut decoder = frame::Decoder::default();
        let mut stdin = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while stdin.len() < big.len() + 1 {
            let n = supervisor.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "the bridge closed the attach");
            decoder.push(&buf[..n]);
            while let Some((kind, payload)) = decoder.next_frame().unwrap() {
                assert_eq!(kind, frame::STDIN);
                stdin.extend_from_slice(&payload);
            }
        }
        assert_eq!(&stdin[..big.len()], &big[..]);
        assert_eq!(&stdin[big.len()..], b"!");
        // The attach is still up: output still reaches the client.
        supervisor
            .write_all(&frame::encode(frame::STDOUT, b"still here"))
            .await
            .unwrap();
        drop(supervisor);
        let (end, got) = bridged.await.unwrap();
        assert_eq!(end, Some(None), "ended by the supervisor, not the client");
        assert_eq!(got, vec![[&[frame::STDOUT][..], b"still here"].concat()]);
    }
}
