//! The client side of the API: ONE HTTP/1 client over the agent's unix socket (hyper, one
//! connection per request), the event stream over a WebSocket on the same socket
//! (tokio-tungstenite), the image calls ([`images`]) and the attach/exec stream client
//! ([`stream`]).
//!
//! This layer imports only `wire` (the paths and shapes the server speaks); it never imports
//! `api`, `service`, `node`, `shim` or `cli`.

pub mod images;
pub mod logs;
pub mod stream;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bolt_events::Cursor;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::wire::filter::{HEADER_CURSOR, HEADER_HEAD};
use crate::wire::{
    ErrorBody, EventView, EventsPage, HashView, InfoView, StateView, VerifyView, PATH_EVENTS,
    PATH_INFO, PATH_STATE, PATH_STATE_HASH, PATH_STREAM, PATH_VERIFY,
};

/// One step of talking to the agent that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the bolt agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing the bolt agent socket {path}: it belongs to uid {owner}, neither root nor \
         you (uid {user})"
    )]
    Untrusted {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error("talk to the bolt agent at {path}: {reason}")]
    Http { path: PathBuf, reason: String },
    /// The agent's one-line reason (and docker's exit code for a failed start).
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        exit_code: Option<i32>,
    },
    #[error("unreadable answer from the bolt agent: {0}")]
    Decode(String),
    #[error("{0}")]
    Stream(String),
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
}

fn stream_err(socket: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Stream(format!(
        "event stream from the bolt agent at {}: {e}",
        socket.display()
    ))
}

/// Percent-encode `s` as one path segment or query value (everything but unreserved
/// characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which events to ask for: an origin (node id hex prefix or node name) and a kind (exact or
/// a prefix ending in `.` or `.*`), both optional; the agent filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSelect {
    /// Only events of this origin.
    pub origin: Option<String>,
    /// Only events of this kind.
    pub kind: Option<String>,
}

impl EventSelect {
    /// The query parameters, each as `&name=value` (empty when nothing is selected).
    pub fn query(&self) -> String {
        let mut q = String::new();
        for (name, value) in [("origin", &self.origin), ("kind", &self.kind)] {
            if let Some(v) = value {
                q.push_str(&format!("&{name}={}", encode_segment(v)));
            }
        }
        q
    }
}

/// The error of an answer with a failing status: the agent's [`ErrorBody`], or the body as
/// text when it is not one.
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            message: e.error,
            exit_code: e.exit_code,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            message: format!(
                "the bolt agent answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
            exit_code: None,
        },
    }
}

/// Keeps the connection task of one request and ends it when dropped.
struct Conn(tokio::task::JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
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

    /// Connect, trusting only an agent of root or of this user: the socket file must belong to
    /// one of them, and so must the process that listens on it (its `SO_PEERCRED`), so a
    /// socket another user planted at the path is never sent a request.
    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        };
        let user = nix::unistd::geteuid().as_raw();
        let untrusted = |owner| ClientError::Untrusted {
            path: self.socket.clone(),
            owner,
            user,
        };
        let owner = std::fs::metadata(&self.socket).map_err(connect_err)?.uid();
        if owner != 0 && owner != user {
            return Err(untrusted(owner));
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(connect_err)?;
        let server = stream.peer_cred().map_err(connect_err)?.uid();
        if server != 0 && server != user {
            return Err(untrusted(server));
        }
        Ok(stream)
    }

    fn http_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            path: self.socket.clone(),
            reason: e.to_string(),
        }
    }

    /// Sends `method path` with an optional JSON body (already encoded); the response head,
    /// its body unread, and the connection (dropped: closed).
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(Response<Incoming>, Conn), ClientError> {
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.http_err(e))?;
        let conn = Conn(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.http_err(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http_err(e))?;
        Ok((resp, conn))
    }

    /// [`Client::send_raw`] with a body to encode as JSON.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(Response<Incoming>, Conn), ClientError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string())))
            .transpose()?;
        self.send_raw(method, path, bytes).await
    }

    /// The status and the whole body of an answer.
    async fn whole(
        &self,
        (resp, _conn): (Response<Incoming>, Conn),
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_err(e))?
            .to_bytes();
        Ok((status, body))
    }

    /// A whole JSON answer; an error status becomes [`ClientError::Api`].
    fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(api_error(status, body));
        }
        serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `method path` with an optional JSON body; the JSON answer.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.whole(self.send(method, path, body).await?).await?;
        Self::decode(status, &bytes)
    }

    /// `method path` with an optional body already encoded as JSON; the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.whole(self.send_raw(method, path, body).await?).await?;
        Self::decode(status, &bytes)
    }

    /// `GET path_and_query`: the status and the whole body.
    pub async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.whole(self.send_raw(Method::GET, path_and_query, None).await?)
            .await
    }

    /// `GET path_and_query` as JSON; an error status becomes [`ClientError::Api`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        self.call(Method::GET, path_and_query, None).await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<InfoView, ClientError> {
        self.get_json(PATH_INFO).await
    }

    /// `GET /v1/events`: up to `limit` events after `since`.
    pub async fn events(&self, since: Cursor, limit: usize) -> Result<Vec<EventView>, ClientError> {
        self.get_json(&format!("{}?since={since}&limit={limit}", PATH_EVENTS))
            .await
    }

    /// `GET /v1/events` with a filter: up to `limit` matching events after `since`, and the
    /// cursor the agent's bounded scan reached (continue after it while the page says more).
    pub async fn events_page(
        &self,
        since: Cursor,
        limit: usize,
        select: &EventSelect,
    ) -> Result<EventsPage, ClientError> {
        let path = format!(
            "{}?since={since}&limit={limit}{}",
            PATH_EVENTS,
            select.query()
        );
        let (resp, conn) = self.send_raw(Method::GET, &path, None).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Cursor)
        };
        let (cursor, head) = (header(HEADER_CURSOR), header(HEADER_HEAD));
        let (status, bytes) = self.whole((resp, conn)).await?;
        let events: Vec<EventView> = Self::decode(status, &bytes)?;
        // An older agent sends no headers: its pages end at their last event, and a short
        // page is the end.
        let last = events.last().map_or(since, |e| Cursor(e.cursor));
        let cursor = cursor.unwrap_or(last);
        let head = head.unwrap_or(if events.len() < limit {
            cursor
        } else {
            Cursor(u64::MAX)
        });
        Ok(EventsPage {
            events,
            cursor,
            head,
        })
    }

    /// `GET /v1/events/verify`.
    pub async fn verify(&self) -> Result<VerifyView, ClientError> {
        self.get_json(PATH_VERIFY).await
    }

    /// `GET /v1/state`, live or at a cursor.
    pub async fn state(&self, at: Option<Cursor>) -> Result<StateView, ClientError> {
        self.get_json(&with_at(PATH_STATE, at)).await
    }

    /// `GET /v1/state/hash`, live or at a cursor.
    pub async fn state_hash(&self, at: Option<Cursor>) -> Result<HashView, ClientError> {
        self.get_json(&with_at(PATH_STATE_HASH, at)).await
    }

    /// Open `GET /v1/events/stream?since=CURSOR`.
    pub async fn stream(&self, since: Cursor) -> Result<EventStream, ClientError> {
        self.stream_select(since, &EventSelect::default()).await
    }

    /// Open `GET /v1/events/stream?since=CURSOR&origin=..&kind=..`: only matching events.
    pub async fn stream_select(
        &self,
        since: Cursor,
        select: &EventSelect,
    ) -> Result<EventStream, ClientError> {
        let io = self.connect().await?;
        let url = format!(
            "ws://localhost{}?since={since}{}",
            PATH_STREAM,
            select.query()
        );
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .map_err(|e| match e {
                // A refused upgrade carries the agent's one-line reason (a bad filter).
                tokio_tungstenite::tungstenite::Error::Http(resp)
                    if resp.status().is_client_error() =>
                {
                    let body = resp.body().as_deref().unwrap_or_default();
                    api_error(resp.status(), body)
                }
                e => self.stream_err(e),
            })?;
        Ok(EventStream {
            ws,
            socket: self.socket.clone(),
        })
    }

    fn stream_err(&self, e: impl std::fmt::Display) -> ClientError {
        stream_err(&self.socket, e)
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
                Err(e) => return Some(Err(stream_err(&self.socket, e))),
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
                    return Some(Err(stream_err(
                        &self.socket,
                        format!("closed by the agent: {}", frame.reason),
                    )))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }
}
