//! Bytes → the values people type and the API checks: sizes (`--memory 64m`), `--cpus`,
//! `--since` (RFC 3339, unix seconds, durations like `1h30m`), timestamps and signals. Never a
//! panic; an accepted size or cpu count is in range.
#![no_main]

use bolt_agent::wire::capsules::parse_signal;
use bolt_agent::wire::parse::{parse_cpus, parse_size, valid_name};
use bolt_agent::wire::time::{format_time_ms, parse_rfc3339_ms, parse_since};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = parse_size(s) {
        assert!(n >= 1);
    }
    if let Ok(m) = parse_cpus(s) {
        assert!(m >= 1);
    }
    for now in [0, 1_700_000_000_000, u64::MAX] {
        let _ = parse_since(s, now);
    }
    if let Some(ms) = parse_rfc3339_ms(s) {
        let _ = format_time_ms(ms);
    }
    let _ = parse_signal(s);
    let _ = valid_name(s);
});
