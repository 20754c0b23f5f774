//! The attach/exec stream client: a WebSocket on the agent's socket carrying framed stdio
//! ([`crate::wire::frame`]): output frames to this process's stdout/stderr, stdin and the
//! terminal's size to the agent, until the [`StreamEnd`].

use std::io::{IsTerminal, Read, Write};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{api_error, Client, ClientError};
use crate::wire::capsules::StreamEnd;
use crate::wire::frame;

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                s,
            );
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Reads this process's stdin on a thread: chunks, then `None` at the end.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16384];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx
                        .blocking_send(Some(buf.get(..n).unwrap_or_default().to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn ws_frame(kind: u8, payload: &[u8]) -> Message {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(kind);
    v.extend_from_slice(payload);
    Message::Binary(v.into())
}

/// An attach or exec session over a WebSocket: output frames to stdout/stderr, stdin (with
/// `stdin`) and terminal size (with `tty`) to the agent, until the [`StreamEnd`].
impl Client {
    /// Opens the stream at `path` (an attach or exec route), sends `first` as a text message
    /// when given (exec's request), and runs the session (stdin with `stdin`, raw mode and
    /// resizes with `tty`) until the agent's [`StreamEnd`].
    pub async fn stream_session(
        &self,
        path: &str,
        first: Option<String>,
        stdin: bool,
        tty: bool,
    ) -> Result<StreamEnd, ClientError> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let io = self.connect().await?;
        let url = format!("ws://localhost{path}");
        let (mut ws, _) = match tokio_tungstenite::client_async(url, io).await {
            Ok(v) => v,
            Err(WsError::Http(resp)) => {
                let status = resp.status();
                let body = resp.body().clone().unwrap_or_default();
                return Err(api_error(status, &body));
            }
            Err(e) => return Err(ClientError::Stream(format!("attach: {e}"))),
        };
        if let Some(text) = first {
            ws.send(Message::Text(text.into()))
                .await
                .map_err(|e| ClientError::Stream(e.to_string()))?;
        }
        let _raw = (tty && stdin).then(RawMode::enter);
        if tty {
            if let Some((rows, cols)) = window_size() {
                let _ = ws
                    .send(ws_frame(frame::RESIZE, &frame::resize(rows, cols)))
                    .await;
            }
        }
        let mut input = stdin.then(stdin_reader);
        let mut winch = if tty {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
        } else {
            None
        };
        let mut end = None;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        let Some((&kind, payload)) = b.split_first() else { continue };
                        if kind == frame::STDERR {
                            let mut e = std::io::stderr().lock();
                            e.write_all(payload)?;
                            e.flush()?;
                        } else {
                            let mut o = std::io::stdout().lock();
                            o.write_all(payload)?;
                            o.flush()?;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        end = serde_json::from_str::<StreamEnd>(t.as_str()).ok();
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if end.is_some() {
                            break;
                        }
                        return Err(ClientError::Stream(format!("the stream broke: {e}")));
                    }
                },
                chunk = async {
                    match input.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match chunk {
                    Some(Some(data)) => {
                        let _ = ws.send(ws_frame(frame::STDIN, &data)).await;
                    }
                    Some(None) | None => {
                        let _ = ws.send(ws_frame(frame::STDIN_EOF, &[])).await;
                        input = None;
                    }
                },
                _ = async {
                    match winch.as_mut() {
                        Some(s) => { s.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if let Some((rows, cols)) = window_size() {
                        let _ = ws.send(ws_frame(frame::RESIZE, &frame::resize(rows, cols))).await;
                    }
                }
            }
        }
        end.ok_or_else(|| {
            ClientError::Stream("the agent closed the stream without an exit status".into())
        })
    }
}
