//! Client calls of the image routes: plain JSON requests, and the streamed ones (pull, push,
//! import) read line by line as the agent sends them.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::images;
use crate::client::{Client, ClientError};
use crate::service::images::{
    ExportRequest, ExportView, ImageView, ImportRequest, ProgressView, PruneView, PullRequest,
    PullView, PushRequest, PushView, RefView, StreamLine, TagRequest,
};
use crate::wire::ErrorBody;

/// A failed image call: the agent could not be asked, or it said the operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageCallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent's one-line reason.
    #[error("{0}")]
    Failed(String),
}

/// Percent-encode `s` as one path segment (everything but unreserved characters).
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

/// Keeps the connection task of one request and ends it when dropped.
struct Conn(tokio::task::JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    fn call_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            path: self.socket().to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// Send `method path` with an optional JSON body; the response head, its body unread.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(Response<Incoming>, Conn), ClientError> {
        let stream = tokio::net::UnixStream::connect(self.socket())
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket().to_path_buf(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.call_err(e))?;
        let conn = Conn(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let bytes = match body {
            Some(b) => {
                Bytes::from(serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(bytes)).map_err(|e| self.call_err(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.call_err(e))?;
        Ok((resp, conn))
    }

    /// A whole JSON answer; an error status becomes [`ClientError::Api`].
    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (resp, _conn) = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.call_err(e))?
            .to_bytes();
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A streamed answer: `on_progress` sees each progress line; the result line is returned.
    async fn streamed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        on_progress: &mut dyn FnMut(ProgressView),
    ) -> Result<T, ImageCallError> {
        let (resp, _conn) = self.send(Method::POST, path, Some(body)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.call_err(e))?
                .to_bytes();
            return Err(api_error(status.as_u16(), &bytes).into());
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<StreamLine<T>>(line)
                    .map_err(|e| ClientError::Decode(e.to_string()))?
                {
                    StreamLine::Progress(p) => on_progress(p),
                    StreamLine::Result(v) => return Ok(v),
                    StreamLine::Error(e) => return Err(ImageCallError::Failed(e)),
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(self.call_err(e).into()),
                None => {
                    return Err(self
                        .call_err("the agent closed the answer before the result")
                        .into())
                }
            }
        }
    }

    /// `POST /v1/images/pull`, streamed.
    pub async fn pull(
        &self,
        req: &PullRequest,
        on_progress: &mut dyn FnMut(ProgressView),
    ) -> Result<PullView, ImageCallError> {
        self.streamed(images::PATH_PULL, req, on_progress).await
    }

    /// `POST /v1/images/push`, streamed.
    pub async fn push(
        &self,
        req: &PushRequest,
        on_progress: &mut dyn FnMut(ProgressView),
    ) -> Result<PushView, ImageCallError> {
        self.streamed(images::PATH_PUSH, req, on_progress).await
    }

    /// `POST /v1/images/import`, streamed.
    pub async fn import(
        &self,
        req: &ImportRequest,
        on_progress: &mut dyn FnMut(ProgressView),
    ) -> Result<Vec<PullView>, ImageCallError> {
        self.streamed(images::PATH_IMPORT, req, on_progress).await
    }

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<ImageView>, ClientError> {
        self.json::<(), _>(Method::GET, images::PATH_IMAGES, None)
            .await
    }

    /// `DELETE /v1/images/{reference}`.
    pub async fn remove_image(&self, reference: &str) -> Result<RefView, ClientError> {
        let path = format!("{}/{}", images::PATH_IMAGES, encode_segment(reference));
        self.json::<(), _>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/images/tag`.
    pub async fn tag(&self, req: &TagRequest) -> Result<RefView, ClientError> {
        self.json(Method::POST, images::PATH_TAG, Some(req)).await
    }

    /// `POST /v1/images/prune`.
    pub async fn prune(&self) -> Result<PruneView, ClientError> {
        self.json::<(), _>(Method::POST, images::PATH_PRUNE, None)
            .await
    }

    /// `POST /v1/images/export`.
    pub async fn export(&self, req: &ExportRequest) -> Result<ExportView, ClientError> {
        self.json(Method::POST, images::PATH_EXPORT, Some(req))
            .await
    }
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    ClientError::Api { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_one_path_segment() {
        assert_eq!(
            encode_segment("127.0.0.1:5000/a/b:v1"),
            "127.0.0.1%3A5000%2Fa%2Fb%3Av1"
        );
        assert_eq!(encode_segment("x@sha256:ab"), "x%40sha256%3Aab");
        assert_eq!(encode_segment("plain-name_1.2~"), "plain-name_1.2~");
    }
}
