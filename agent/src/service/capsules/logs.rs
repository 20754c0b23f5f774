//! `bolt logs`: a capsule's log lines, filtered, and followed across rotations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bolt_capsule::runtime::supervisor::LogLine;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::service::capsules::{CapsuleError, Capsules};

/// How often a followed log looks for new lines.
const FOLLOW_TICK: Duration = Duration::from_millis(100);

impl Capsules {
    /// The capsule's log lines, optionally only those at or after `since_ms`, and at most the
    /// last `tail`.
    pub async fn logs(
        &self,
        key: &str,
        since_ms: Option<u64>,
        tail: Option<usize>,
    ) -> Result<(String, Vec<LogLine>), CapsuleError> {
        let (id, _, _) = self.generation(key).await?;
        let dir = self.dir_of(&id);
        let lines = self
            .blocking(move || bolt_capsule::runtime::supervisor::read_logs(&dir))
            .await??;
        Ok((id, filter_logs(lines, since_ms, tail)))
    }

    /// The capsule's log lines (filtered as [`Capsules::logs`]), then every new line until it
    /// no longer runs, as they are written. The log file is opened first, so nothing written
    /// after the lines already there is missed.
    pub async fn follow_logs(
        self: &Arc<Self>,
        key: &str,
        since_ms: Option<u64>,
        tail: Option<usize>,
    ) -> Result<mpsc::Receiver<LogLine>, CapsuleError> {
        let (id, _, _) = self.generation(key).await?;
        let dir = self.dir_of(&id);
        let (tx, rx) = mpsc::channel::<LogLine>(64);
        let caps = Arc::clone(self);
        tokio::spawn(async move {
            follow(caps, id, dir, since_ms, tail, tx).await;
        });
        Ok(rx)
    }
}

/// Log lines at or after `since_ms`, the last `tail` of them.
pub fn filter_logs(
    lines: Vec<LogLine>,
    since_ms: Option<u64>,
    tail: Option<usize>,
) -> Vec<LogLine> {
    let mut v: Vec<LogLine> = lines
        .into_iter()
        .filter(|l| since_ms.is_none_or(|s| l.time_ms >= s))
        .collect();
    if let Some(t) = tail {
        let skip = v.len().saturating_sub(t);
        v.drain(..skip);
    }
    v
}

/// Sends the log lines of `id` (filtered), then every new line until the capsule no longer
/// runs. Follows `log` by its open file across rotations.
async fn follow(
    caps: Arc<Capsules>,
    id: String,
    dir: PathBuf,
    since: Option<u64>,
    tail: Option<usize>,
    tx: mpsc::Sender<LogLine>,
) {
    use bolt_capsule::runtime::supervisor::files;
    let log_path = dir.join(files::LOG);
    let mut current = tokio::fs::File::open(&log_path).await.ok();
    // Rotated files, oldest first, then what the open file holds now.
    let mut lines = Vec::new();
    for n in (1..=64).rev() {
        let p = dir.join(format!("{}.{n}", files::LOG));
        if let Ok(text) = tokio::fs::read_to_string(&p).await {
            lines.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<LogLine>(l).ok()),
            );
        }
    }
    let mut partial = Vec::new();
    if let Some(f) = current.as_mut() {
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf).await;
        take_lines(&mut partial, &buf, &mut lines);
    }
    for l in filter_logs(lines, since, tail) {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    loop {
        let running = caps.is_running(&id).await;
        // Read what was appended; switch to a new `log` after a rotation.
        loop {
            let mut buf = Vec::new();
            if let Some(f) = current.as_mut() {
                let _ = f.read_to_end(&mut buf).await;
            }
            let mut fresh = Vec::new();
            take_lines(&mut partial, &buf, &mut fresh);
            for l in fresh {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if !rotated(&log_path, current.as_ref()).await {
                break;
            }
            current = tokio::fs::File::open(&log_path).await.ok();
            partial.clear();
        }
        if !running || tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_TICK).await;
    }
}

/// Whether `path` now names another file than `open` (a rotation happened, or it appeared).
async fn rotated(path: &std::path::Path, open: Option<&tokio::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(now) = tokio::fs::metadata(path).await else {
        return false;
    };
    match open {
        None => true,
        Some(f) => match f.metadata().await {
            Ok(m) => m.ino() != now.ino() || m.dev() != now.dev(),
            Err(_) => true,
        },
    }
}

/// Splits complete JSON lines off `partial + bytes`.
fn take_lines(partial: &mut Vec<u8>, bytes: &[u8], out: &mut Vec<LogLine>) {
    partial.extend_from_slice(bytes);
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = partial.drain(..=pos).collect();
        if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
            out.push(l);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_split_across_reads() {
        let mut partial = Vec::new();
        let mut out = Vec::new();
        let a = br#"{"time_ms":1,"stream":"stdout","line":"a"}
{"time_ms":2,"stream":"std"#;
        take_lines(&mut partial, a, &mut out);
        assert_eq!(out.len(), 1);
        take_lines(&mut partial, b"err\",\"line\":\"b\"}\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].stream, "stderr");
    }
}
