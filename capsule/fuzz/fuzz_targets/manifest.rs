//! Bytes → manifest/index/config parsing, platform selection, references and credentials:
//! never a panic.
#![no_main]

use std::path::Path;

use bolt_capsule::image::manifest::{parse_config, parse_manifest, select_platform, Parsed};
use bolt_capsule::image::{Credentials, ImageRef, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Index(idx)) = parse_manifest(data, None) {
        let _ = select_platform(&idx, &Platform::default());
        let _ = select_platform(
            &idx,
            &Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
            },
        );
    }
    let _ = parse_manifest(
        data,
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    );
    let _ = parse_config(data, data.first().copied().unwrap_or(0) as usize % 4);
    let _ = Credentials::parse(data, Path::new("fuzz"));
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ImageRef::parse(s);
        let _ = s.parse::<Platform>();
    }
});
