//! `Log::verify`: a full walk of the stored events, collecting every fault as a readable line.
//!
//! The signing rule: every signature present must verify, and every unsigned event must be
//! followed in its origin's chain by a signed one (the end of its run), so no origin's chain
//! ends unsigned.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::tables::{Tip, BY_ORIGIN, EVENTS, HEADS};
use super::{parallel_map, short_hash, storage, LogError, VerifyReport};
use crate::codec::CodecError;
use crate::envelope::Envelope;
use crate::id::{Hash, NodeId};

/// Events decoded and signature-checked together (only the signed ones cost a check).
const CHUNK: usize = 4096;

/// Walk every event in arrival order (each origin's events arrive in seq order, so this walks
/// every chain from seq 1 as well) and cross-check the index and the tips.
pub(super) fn run(txn: &ReadTransaction) -> Result<VerifyReport, LogError> {
    let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
    let index = txn.open_table(BY_ORIGIN).map_err(storage("open index"))?;
    let heads = txn.open_table(HEADS).map_err(storage("open heads"))?;

    let mut report = VerifyReport::default();
    let mut chains: BTreeMap<NodeId, (u64, Hash)> = BTreeMap::new();
    // origin -> (seq, cursor) of the first event of its run not closed by a signed event yet.
    let mut open_runs: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
    let mut expected_cursor = 1u64;

    let mut rows = events.iter().map_err(storage("read events"))?;
    loop {
        // A chunk at a time: decode, check the signatures on all cores, then walk the chains.
        let mut chunk: Vec<(u64, Result<Envelope, CodecError>, Hash)> = Vec::new();
        for row in rows.by_ref().take(CHUNK) {
            let (k, v) = row.map_err(storage("read events"))?;
            let bytes = v.value();
            let hash = Hash(*blake3::hash(bytes).as_bytes());
            chunk.push((k.value(), Envelope::from_bytes(bytes), hash));
        }
        if chunk.is_empty() {
            break;
        }
        let sigs = parallel_map(&chunk, |(_, env, _)| match env {
            Ok(env) if env.is_signed() => env.verify_signature().err(),
            _ => None,
        });
        for ((cursor, env, hash), sig) in chunk.into_iter().zip(sigs) {
            report.events += 1;
            if cursor != expected_cursor {
                report.faults.push(format!(
                    "cursor {cursor}: expected cursor {expected_cursor} next (arrival order has a hole)"
                ));
            }
            expected_cursor = cursor.saturating_add(1);
            let env = match env {
                Ok(env) => env,
                Err(e) => {
                    report
                        .faults
                        .push(format!("cursor {cursor}: unreadable event: {e}"));
                    continue;
                }
            };
            let name = format!("cursor {cursor}: event {}#{}", env.origin.short(), env.seq);
            let (last_seq, last_hash) = chains.get(&env.origin).copied().unwrap_or((0, Hash::ZERO));
            if env.seq != last_seq + 1 {
                report.faults.push(format!(
                    "{name}: seq gap, expected seq {} after {last_seq}",
                    last_seq + 1
                ));
            } else if env.prev != last_hash {
                report.faults.push(format!(
                    "{name}: broken chain, prev {} but the hash of seq {last_seq} is {}",
                    short_hash(&env.prev),
                    short_hash(&last_hash)
                ));
            }
            if let Some(e) = sig {
                report.faults.push(format!("{name}: {e}"));
            }
            if env.is_signed() {
                open_runs.remove(&env.origin);
            } else {
                open_runs.entry(env.origin).or_insert((env.seq, cursor));
            }
            if let Err(e) = env.decode_payload() {
                report
                    .faults
                    .push(format!("{name}: payload unreadable: {e}"));
            }
            match index
                .get((&env.origin.0, env.seq))
                .map_err(storage("read index"))?
            {
                Some(c) if c.value() == cursor => {}
                Some(c) => report.faults.push(format!(
                    "{name}: the origin index points at cursor {} instead",
                    c.value()
                )),
                None => report
                    .faults
                    .push(format!("{name}: missing from the origin index")),
            }
            // Go on from what is there, so one break is reported once, not for every later event.
            chains.insert(env.origin, (env.seq, hash));
        }
    }

    for (origin, (first, cursor)) in &open_runs {
        let last = chains.get(origin).map_or(*first, |&(seq, _)| seq);
        report.faults.push(format!(
            "origin {}: events seq {first}..={last} (from cursor {cursor}) end unsigned: no signed \
             event after them authenticates them",
            origin.short()
        ));
    }

    let indexed = index.len().map_err(storage("read index"))?;
    if indexed != report.events {
        report.faults.push(format!(
            "the origin index has {indexed} entries for {} events",
            report.events
        ));
    }
    let mut tipped = 0usize;
    for row in heads.iter().map_err(storage("read heads"))? {
        let (k, v) = row.map_err(storage("read heads"))?;
        let origin = NodeId(*k.value());
        let tip = Tip::from_row(v.value());
        tipped += 1;
        match chains.get(&origin) {
            Some(&(seq, hash)) if seq == tip.seq && hash == tip.hash => {}
            Some(&(seq, hash)) => report.faults.push(format!(
                "origin {}: recorded tip is seq {} ({}) but the events end at seq {seq} ({})",
                origin.short(),
                tip.seq,
                short_hash(&tip.hash),
                short_hash(&hash)
            )),
            None => report.faults.push(format!(
                "origin {}: has a recorded tip (seq {}) but no events",
                origin.short(),
                tip.seq
            )),
        }
    }
    if tipped != chains.len() {
        report.faults.push(format!(
            "{} origins have events but {tipped} have a recorded tip",
            chains.len()
        ));
    }
    report.origins = chains.len();
    Ok(report)
}
