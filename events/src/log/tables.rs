//! The redb tables of the log and the small codecs of their values.
//!
//! | table       | key                    | value                         |
//! |-------------|------------------------|-------------------------------|
//! | `events`    | cursor `u64`           | encoded envelope bytes        |
//! | `by_origin` | `(origin, seq)`        | cursor `u64`                  |
//! | `heads`     | origin `[u8; 32]`      | `(seq, hash, hlc)` chain tip  |
//! | `snapshots` | cursor `u64`           | order key (48 bytes) + bytes  |
//! | `meta`      | name `&str`            | `u64`                         |

use redb::TableDefinition;

use crate::envelope::OrderKey;
use crate::hlc::Hlc;
use crate::id::{Hash, NodeId};

/// Events by arrival cursor.
pub(crate) const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
/// (origin, seq) -> cursor.
pub(crate) const BY_ORIGIN: TableDefinition<'static, (&'static [u8; 32], u64), u64> =
    TableDefinition::new("by_origin");
/// origin -> (seq, hash, hlc) of its newest event: the version vector and the chain tips.
pub(crate) const HEADS: TableDefinition<'static, &'static [u8; 32], (u64, &'static [u8; 32], u64)> =
    TableDefinition::new("heads");
/// cursor -> order key + opaque snapshot bytes.
pub(crate) const SNAPSHOTS: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("snapshots");
/// Format marker and the highest HLC of any stored event.
pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// `meta` key of the table layout version.
pub(crate) const META_LAYOUT: &str = "layout";
/// `meta` key of the highest HLC of any stored event.
pub(crate) const META_MAX_HLC: &str = "max_hlc";
/// The table layout this build writes and reads.
pub(crate) const LAYOUT: u64 = 1;

/// One origin's chain tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tip {
    pub seq: u64,
    pub hash: Hash,
    pub hlc: Hlc,
}

impl Tip {
    pub(crate) fn as_row(&self) -> (u64, &[u8; 32], u64) {
        (self.seq, &self.hash.0, self.hlc.0)
    }

    pub(crate) fn from_row(row: (u64, &[u8; 32], u64)) -> Tip {
        Tip {
            seq: row.0,
            hash: Hash(*row.1),
            hlc: Hlc(row.2),
        }
    }
}

const SNAPSHOT_HEADER: usize = 8 + 32 + 8;

/// A snapshot row: the order key in fixed width, then the opaque bytes.
pub(crate) fn encode_snapshot(key: &OrderKey, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + bytes.len());
    out.extend_from_slice(&key.hlc.0.to_le_bytes());
    out.extend_from_slice(&key.origin.0);
    out.extend_from_slice(&key.seq.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Split a snapshot row; `None` when it is too short to hold the order key.
pub(crate) fn decode_snapshot(row: &[u8]) -> Option<(OrderKey, Vec<u8>)> {
    if row.len() < SNAPSHOT_HEADER {
        return None;
    }
    let (head, rest) = row.split_at(SNAPSHOT_HEADER);
    let hlc = u64::from_le_bytes(head[..8].try_into().ok()?);
    let origin: [u8; 32] = head[8..40].try_into().ok()?;
    let seq = u64::from_le_bytes(head[40..48].try_into().ok()?);
    Some((
        OrderKey {
            hlc: Hlc(hlc),
            origin: NodeId(origin),
            seq,
        },
        rest.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_rows_round_trip_and_short_rows_are_refused() {
        let key = OrderKey {
            hlc: Hlc::new(77, 3),
            origin: NodeId([9; 32]),
            seq: 12,
        };
        let row = encode_snapshot(&key, b"state");
        assert_eq!(decode_snapshot(&row), Some((key, b"state".to_vec())));
        assert_eq!(decode_snapshot(&row[..47]), None);
    }
}
