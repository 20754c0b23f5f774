//! Parsing of the values people type and both sides check: docker's sizes (`64m`), `--cpus`
//! and capsule names. Pure; never imports another agent module.

/// Parses a docker size: `64m`, `1g`, `512k`, `100b`, `1048576` (bytes), case-insensitive,
/// with an optional trailing `b` (`64mb`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use a number with an optional unit b, k, m or g");
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parses `--cpus 0.5` into millicpus.
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let bad = || format!("invalid --cpus {s:?}: use a positive number such as 0.5");
    let v: f64 = s.trim().parse().map_err(|_| bad())?;
    let millis = (v * 1000.0).round();
    if !millis.is_finite() || millis < 1.0 || millis > f64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(millis as u32)
}

/// Whether `name` is a valid capsule (or network) name: docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
/// at most 128 bytes; the state's rule ([`bolt_state::rules`]).
pub fn valid_name(name: &str) -> bool {
    bolt_state::rules::valid_capsule_name(name)
}
