//! Client calls of the image routes: plain JSON requests, and the streamed ones (pull, push,
//! import) read line by line as the agent sends them.

use http_body_util::BodyExt;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{api_error, encode_segment, Client, ClientError};
use crate::wire::images::{
    self as images, ExportRequest, ExportView, ImageView, ImportRequest, ProgressView, PruneView,
    PullRequest, PullView, PushRequest, PushView, RefView, StreamLine, TagRequest,
};

/// A failed image call: the agent could not be asked, or it said the operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageCallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent's one-line reason.
    #[error("{0}")]
    Failed(String),
}

impl Client {
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
                .map_err(|e| self.http_err(e))?
                .to_bytes();
            return Err(api_error(status, &bytes).into());
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
                Some(Err(e)) => return Err(self.http_err(e).into()),
                None => {
                    return Err(self
                        .http_err("the agent closed the answer before the result")
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
