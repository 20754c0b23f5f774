//! The stored form of a [`State`]: a format byte, a keyed blake3 checksum of the body, then the
//! body (the state's canonical bincode encoding). The checksum is keyed with a secret derived
//! from the node key ([`bolt_events::Log::snapshot_key`]), so an edited snapshot cannot be given
//! a checksum that verifies without the key. It is checked before decoding, so a torn, corrupt
//! or forged snapshot is refused without the decoder ever reading garbage lengths (and the state
//! is folded from the log instead).

use crate::model::State;

/// The snapshot format this build writes and reads. 2: [`State::snapshots`] added; 3:
/// `CapsuleInfo::stop_requested` added; 4: `ImageInfo::held` added; 5: the checksum is keyed;
/// 6: `State::cluster`, `State::revoked` and `NodeInfo::{admitted, left, down}` added.
/// A snapshot of another format is refused and the state is folded from the log instead (old
/// snapshots are not converted: the log is the truth, a snapshot only a shortcut).
pub const SNAPSHOT_FORMAT: u8 = 6;

const HEADER: usize = 1 + 32;

/// The most memory the collections of a snapshot body may claim while it decodes (their lengths
/// times their element sizes): a damaged or forged length is a decode error, not an allocation
/// that aborts the agent.
const MAX_DECODED: usize = 256 << 20;

/// Why snapshot bytes could not be read back as a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("unknown snapshot format {0} (this build reads format {SNAPSHOT_FORMAT})")]
    UnknownFormat(u8),
    #[error("snapshot checksum does not match its content (damaged, or not written with this node's key)")]
    Checksum,
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the snapshot body")]
    Trailing(usize),
}

/// Encode a state for storage beside the log, its checksum keyed with `key`.
pub fn encode_state(state: &State, key: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    out[0] = SNAPSHOT_FORMAT;
    // Writing into a Vec cannot fail; a failure would leave a body the checksum refuses.
    let _ = bincode::encode_into_std_write(state, &mut out, bincode::config::standard());
    let sum = blake3::keyed_hash(key, &out[HEADER..]);
    out[1..HEADER].copy_from_slice(sum.as_bytes());
    out
}

/// Decode a stored state, checking format and the checksum keyed with `key` first.
pub fn decode_state(bytes: &[u8], key: &[u8; 32]) -> Result<State, SnapshotError> {
    if bytes.len() < HEADER {
        return Err(SnapshotError::Short(bytes.len()));
    }
    if bytes[0] != SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnknownFormat(bytes[0]));
    }
    let body = &bytes[HEADER..];
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&bytes[1..HEADER]);
    // blake3::Hash compares in constant time.
    if blake3::keyed_hash(key, body) != blake3::Hash::from_bytes(stored) {
        return Err(SnapshotError::Checksum);
    }
    let config = bincode::config::standard().with_limit::<MAX_DECODED>();
    let (state, used) = bincode::decode_from_slice::<State, _>(body, config)
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(SnapshotError::Trailing(body.len() - used));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: [u8; 32] = [3; 32];

    #[test]
    fn round_trips_and_refuses_damage() {
        let s = State {
            applied: 7,
            ..State::default()
        };
        let bytes = encode_state(&s, &KEY);
        assert_eq!(decode_state(&bytes, &KEY).unwrap(), s);

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode_state(&flipped, &KEY), Err(SnapshotError::Checksum));

        let mut format = bytes.clone();
        format[0] = 9;
        assert_eq!(
            decode_state(&format, &KEY),
            Err(SnapshotError::UnknownFormat(9))
        );

        assert_eq!(
            decode_state(&bytes[..5], &KEY),
            Err(SnapshotError::Short(5))
        );
    }

    #[test]
    fn another_key_or_an_unkeyed_checksum_is_refused() {
        let s = State {
            applied: 7,
            ..State::default()
        };
        let bytes = encode_state(&s, &KEY);
        assert_eq!(decode_state(&bytes, &[4; 32]), Err(SnapshotError::Checksum));
        let mut unkeyed = bytes.clone();
        let sum = blake3::hash(&unkeyed[HEADER..]);
        unkeyed[1..HEADER].copy_from_slice(sum.as_bytes());
        assert_eq!(decode_state(&unkeyed, &KEY), Err(SnapshotError::Checksum));
    }

    /// A snapshot of the format before the cluster fields (5) is refused, not misread: the
    /// replica skips it and folds from the log, which rebuilds the new fields.
    #[test]
    fn a_snapshot_of_the_previous_format_is_refused() {
        let mut old = encode_state(&State::default(), &KEY);
        old[0] = 5;
        assert_eq!(
            decode_state(&old, &KEY),
            Err(SnapshotError::UnknownFormat(5))
        );
    }

    /// Found by the `snapshot_decode` fuzz target: a body (under a valid header) whose map
    /// length asks for 190 GB aborted the process on the failed allocation.
    #[test]
    fn a_forged_length_is_an_error_not_an_abort() {
        let body: [u8; 59] = [
            0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0,
            0, 0, 0, 113, 0, 0, 0, 0, 0, 252, 255, 0, 0, 46, 58, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 32, 0,
        ];
        let mut forged = vec![SNAPSHOT_FORMAT];
        forged.extend_from_slice(blake3::keyed_hash(&KEY, &body).as_bytes());
        forged.extend_from_slice(&body);
        assert!(matches!(
            decode_state(&forged, &KEY),
            Err(SnapshotError::Decode(_))
        ));
    }
}
