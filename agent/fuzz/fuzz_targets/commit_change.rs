//! Bytes → `bolt commit --change` instructions (`CMD`, `ENTRYPOINT`, `ENV`; one per line):
//! never a panic; every accepted `ENV` entry is `KEY=VALUE` with a key.
#![no_main]

use bolt_agent::service::snapshots::parse_changes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let changes: Vec<String> = s.split('\n').map(str::to_owned).collect();
    if let Ok(c) = parse_changes(&changes) {
        for kv in &c.env {
            assert!(
                kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
                "{kv:?}"
            );
        }
    }
});
