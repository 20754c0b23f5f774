//! The client side of the API: HTTP/1 over the agent's unix socket (hyper, one connection per
//! request) and the event stream over a WebSocket on the same socket (tokio-tungstenite).

pub mod images;

use std::path::{Path, PathBuf};

use bolt_events::Cursor;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api;
use crate::wire::{ErrorBody, EventView, HashView, InfoView, StateView, VerifyView};

/// One step of talking to the agent that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the bolt agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talk to the bolt agent at {path}: {reason}")]
    Http { path: PathBuf, reason: String },
    #[error("the bolt agent answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("unreadable answer from the bolt agent: {0}")]
    Decode(String),
    #[error("event stream from the bolt agent at {path}: {reason}")]
    Stream { path: PathBuf, reason: String },
}

/// A client of one agent socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the agent listening on `socket`. Connects lazily, once per request.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })
    }

    fn http_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            path: self.socket.clone(),
            reason: e.to_string(),
        }
    }

    /// `GET path_and_query`: the status and the whole body.
    pub async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.http_err(e))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path_and_query)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.http_err(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http_err(e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_err(e))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    }

    /// `GET path_and_query` as JSON; an error status becomes [`ClientError::Api`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        let (status, body) = self.get(path_and_query).await?;
        if !status.is_success() {
            let message = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => e.error,
                Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
            };
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<InfoView, ClientError> {
        self.get_json(api::PATH_INFO).await
    }

    /// `GET /v1/events`: up to `limit` events after `since`.
    pub async fn events(&self, since: Cursor, limit: usize) -> Result<Vec<EventView>, ClientError> {
        self.get_json(&format!("{}?since={since}&limit={limit}", api::PATH_EVENTS))
            .await
    }

    /// `GET /v1/events/verify`.
    pub async fn verify(&self) -> Result<VerifyView, ClientError> {
        self.get_json(api::PATH_VERIFY).await
    }

    /// `GET /v1/state`, live or at a cursor.
    pub async fn state(&self, at: Option<Cursor>) -> Result<StateView, ClientError> {
        self.get_json(&with_at(api::PATH_STATE, at)).await
    }

    /// `GET /v1/state/hash`, live or at a cursor.
    pub async fn state_hash(&self, at: Option<Cursor>) -> Result<HashView, ClientError> {
        self.get_json(&with_at(api::PATH_STATE_HASH, at)).await
    }

    /// Open `GET /v1/events/stream?since=CURSOR`.
    pub async fn stream(&self, since: Cursor) -> Result<EventStream, ClientError> {
        let io = self.connect().await?;
        let url = format!("ws://localhost{}?since={since}", api::PATH_STREAM);
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .map_err(|e| self.stream_err(e))?;
        Ok(EventStream {
            ws,
            socket: self.socket.clone(),
        })
    }

    fn stream_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Stream {
            path: self.socket.clone(),
            reason: e.to_string(),
        }
    }
}

fn with_at(path: &str, at: Option<Cursor>) -> String {
    match at {
        Some(at) => format!("{path}?at={at}"),
        None => path.to_string(),
    }
}

/// A live event stream.
#[derive(Debug)]
pub struct EventStream {
    ws: WebSocketStream<UnixStream>,
    socket: PathBuf,
}

impl EventStream {
    /// The next event; `None` once the agent closed the stream.
    pub async fn next(&mut self) -> Option<Result<EventView, ClientError>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => {
                    return Some(Err(ClientError::Stream {
                        path: self.socket.clone(),
                        reason: e.to_string(),
                    }))
                }
            };
            match msg {
                Message::Text(text) => {
                    return Some(
                        serde_json::from_str(text.as_str())
                            .map_err(|e| ClientError::Decode(e.to_string())),
                    )
                }
                Message::Close(Some(frame))
                    if !matches!(frame.code, CloseCode::Normal | CloseCode::Away) =>
                {
                    return Some(Err(ClientError::Stream {
                        path: self.socket.clone(),
                        reason: format!("closed by the agent: {}", frame.reason),
                    }))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }
}
