//! Fuzz the log's table decoding: a `snapshots` row (order key + bytes) must split and
//! re-encode to itself, and a whole log file (the input, on redb's in-memory backend) opens to
//! an error or to a log whose every table reads without a panic.
//!
//! redb panics on some damaged pages; `Log` turns those into `LogError::Damaged` (its
//! `guarded`), so this target uses the default panic hook: only a panic that escapes `Log`
//! aborts the run.
#![no_main]

use std::sync::Once;

use bolt_events::id::Cursor;
use bolt_events::key::NodeKey;
use bolt_events::log::fuzz_api::{decode_snapshot_row, encode_snapshot_row};
use bolt_events::log::Log;
use libfuzzer_sys::fuzz_target;
use redb::backends::InMemoryBackend;
use redb::StorageBackend;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));

    if let Some((key, bytes)) = decode_snapshot_row(data) {
        assert_eq!(encode_snapshot_row(&key, &bytes), data);
    }

    let backend = InMemoryBackend::new();
    if backend.set_len(data.len() as u64).is_err() || backend.write(0, data).is_err() {
        return;
    }
    let Ok(log) = Log::open_with_backend(backend, NodeKey::from_seed([7; 32])) else {
        return;
    };
    let _ = log.snapshots();
    let _ = log.read_after(Cursor(0), 64);
    let _ = log.read_total_order(log.head());
    let _ = log.version_vector();
    let _ = log.verify();
});
