//! The attach protocol: frames of `kind: u8, len: u32 (LE), payload` on `attach.sock`; on the
//! API's WebSocket a binary message is `kind` followed by the payload.
//!
//! Spoken by the supervisor (`crate::shim`), the agent's attach bridge and the CLI's stream
//! client. Pure; never imports another agent module.

/// Client to supervisor: bytes for the capsule's stdin.
pub const STDIN: u8 = 0;
/// Supervisor to client: the capsule's stdout (everything, with a pty).
pub const STDOUT: u8 = 1;
/// Supervisor to client: the capsule's stderr.
pub const STDERR: u8 = 2;
/// Supervisor to client: the capsule ended; the payload is `exit.json`.
pub const EXIT: u8 = 3;
/// Client to supervisor: close the capsule's stdin.
pub const STDIN_EOF: u8 = 4;
/// Client to supervisor: the terminal's size, `rows: u16, cols: u16` (LE).
pub const RESIZE: u8 = 5;

/// The largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One frame's bytes.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frames carrying `payload`: one, or several of at most [`MAX_PAYLOAD`] bytes each when
/// it is longer (a client's stdin message may be; the decoder refuses a longer frame).
pub fn encode_split(kind: u8, payload: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let first = payload.is_empty().then(|| encode(kind, &[]));
    first
        .into_iter()
        .chain(payload.chunks(MAX_PAYLOAD).map(move |c| encode(kind, c)))
}

/// The payload of a [`RESIZE`] frame.
pub fn resize(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_le_bytes().to_vec();
    p.extend_from_slice(&cols.to_le_bytes());
    p
}

/// `(rows, cols)` of a [`RESIZE`] payload.
pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    let rows = u16::from_le_bytes([*p.first()?, *p.get(1)?]);
    let cols = u16::from_le_bytes([*p.get(2)?, *p.get(3)?]);
    Some((rows, cols))
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// A frame that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attach frame of {0} bytes is over the limit")]
pub struct TooLarge(pub usize);

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, TooLarge> {
        let Some(header) = self.buf.get(..5) else {
            return Ok(None);
        };
        let kind = header[0];
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(TooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf.get(5..5 + len).unwrap_or_default().to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::wire::frame;

    #[test]
    fn frames_round_trip_across_split_reads() {
        let mut bytes = frame::encode(frame::STDOUT, b"hello");
        bytes.extend(frame::encode(frame::RESIZE, &frame::resize(24, 80)));
        bytes.extend(frame::encode(frame::STDIN_EOF, b""));
        let mut d = frame::Decoder::default();
        let mut got = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (frame::STDOUT, b"hello".to_vec()));
        assert_eq!(frame::parse_resize(&got[1].1), Some((24, 80)));
        assert_eq!(got[2], (frame::STDIN_EOF, Vec::new()));
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut d = frame::Decoder::default();
        d.push(&[frame::STDIN]);
        d.push(&(u32::MAX).to_le_bytes());
        assert!(d.next_frame().is_err());
    }
}
