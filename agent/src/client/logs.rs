//! A capsule's log lines from the agent (`GET /v1/capsules/{id}/logs`), whole or followed as
//! the NDJSON stream the agent sends while the capsule runs.

use bolt_capsule::runtime::supervisor::LogLine;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::{api_error, encode_segment, Client, ClientError};
use crate::wire::capsules::PATH_CAPSULES;

fn logs_path(key: &str, follow: bool, since: Option<u64>, tail: Option<usize>) -> String {
    let mut path = format!(
        "{PATH_CAPSULES}/{}/logs?follow={follow}",
        encode_segment(key)
    );
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    path
}

impl Client {
    /// The log lines of capsule `key` (at or after `since` ms, the last `tail`).
    pub async fn logs(
        &self,
        key: &str,
        since: Option<u64>,
        tail: Option<usize>,
    ) -> Result<Vec<LogLine>, ClientError> {
        let path = logs_path(key, false, since, tail);
        let (status, bytes) = self.get(&path).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<LogLine>(l).ok())
            .collect())
    }

    /// The log lines of capsule `key`, then every new one until it stops, each handed to
    /// `on_line` as it arrives.
    pub async fn follow_logs(
        &self,
        key: &str,
        since: Option<u64>,
        tail: Option<usize>,
        mut on_line: impl FnMut(&LogLine) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let path = logs_path(key, true, since, tail);
        let (resp, _conn) = self.send_raw(Method::GET, &path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Stream(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut partial = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Stream(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            partial.extend_from_slice(&data);
            while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=pos).collect();
                if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                    on_line(&l)?;
                }
            }
        }
        Ok(())
    }
}
