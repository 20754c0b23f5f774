//! Bytes → `Digest::parse` / `from_hex` (and through serde, as records and manifests carry
//! them): never a panic; whatever parses prints back to the same string.
#![no_main]

use bolt_capsule::image::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
        assert_eq!(Digest::from_hex(d.hex()).ok(), Some(d.clone()));
    }
    if let Ok(d) = Digest::from_hex(s) {
        assert_eq!(d.hex(), s);
    }
    let _ = serde_json::from_slice::<Digest>(data);
});
