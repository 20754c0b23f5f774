//! Bytes → layer unpack into a temp dir: never a panic, never a write outside the layer dir.
#![no_main]

use bolt_capsule::image::unpack::{unpack_layer, UnpackOptions};
use bolt_capsule::image::{WhiteoutMode, XattrNamespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let layer = tmp.path().join("layer");
    if std::fs::create_dir(&layer).is_err() {
        return;
    }
    let opts = UnpackOptions {
        max_bytes: 16 << 20,
        max_entries: 10_000,
        allow_devices: false,
        preserve_owner: false,
        whiteouts: WhiteoutMode::Xattr(XattrNamespace::User),
    };
    let _ = unpack_layer(data, &layer, &opts);
    // The oracle: the temp dir holds the layer dir and nothing else.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("layer")],
        "unpack wrote outside the layer dir"
    );
});
