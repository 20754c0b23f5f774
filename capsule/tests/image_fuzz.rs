//! The fuzz entry points fed random and mutated bytes under proptest: no panic, and the layer
//! unpacker never writes beside its directory (capsule/fuzz's `unpack_layer` checks a whole
//! sentinel tree around it, with production's settings).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bolt_capsule::image::manifest::{parse_config, parse_manifest, select_platform, Parsed};
use bolt_capsule::image::unpack::{unpack_layer, UnpackOptions};
use bolt_capsule::image::{Credentials, Digest, ImageRef, Platform, WhiteoutMode, XattrNamespace};
use proptest::prelude::*;

fn opts() -> UnpackOptions {
    UnpackOptions {
        max_bytes: 4 << 20,
        max_entries: 2_000,
        allow_devices: false,
        preserve_owner: false,
        whiteouts: WhiteoutMode::Xattr(XattrNamespace::User),
    }
}

/// Unpack `data`; assert nothing appeared beside the layer dir.
fn unpack_contained(data: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let _ = unpack_layer(data, &layer, &opts());
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["layer".to_string()],
        "unpack wrote outside the layer dir"
    );
}

/// A small valid layer with every entry kind the unpacker knows, to mutate.
fn seed_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, b"", "");
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        b"root:x:0:0::/root:/bin/sh\n",
        "",
    );
    add("etc/link", tar::EntryType::Symlink, b"", "passwd");
    add("etc/hard", tar::EntryType::Link, b"", "etc/passwd");
    add("etc/.wh.gone", tar::EntryType::Regular, b"", "");
    add("opq/.wh..wh..opq", tar::EntryType::Regular, b"", "");
    add("fifo", tar::EntryType::Fifo, b"", "");
    b.into_inner().unwrap()
}

fn seed_manifest() -> Vec<u8> {
    let d = |n: u8| format!("sha256:{}", hex_of(&[n; 32]));
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        d(1)
    )
    .into_bytes()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mutate(mut base: Vec<u8>, edits: &[(usize, u8, u8)], cut: Option<usize>) -> Vec<u8> {
    for (pos, byte, op) in edits {
        if base.is_empty() {
            break;
        }
        let i = pos % base.len();
        match op % 3 {
            0 => base[i] = *byte,
            1 => base.insert(i, *byte),
            _ => {
                base.remove(i);
            }
        }
    }
    if let Some(c) = cut {
        if !base.is_empty() {
            base.truncate(c % base.len());
        }
    }
    base
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unpack_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        unpack_contained(&data);
    }

    #[test]
    fn unpack_mutated_tars(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8),
                           cut in proptest::option::of(any::<usize>()),
                           gzip in any::<bool>()) {
        let tar = mutate(seed_tar(), &edits, cut);
        unpack_contained(&tar);
        if gzip {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&seed_tar()).unwrap();
            let gz = mutate(e.finish().unwrap(), &edits, cut);
            unpack_contained(&gz);
        }
    }

    #[test]
    fn manifests_references_and_credentials(data in proptest::collection::vec(any::<u8>(), 0..512),
                                            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6)) {
        for bytes in [data.clone(), mutate(seed_manifest(), &edits, None)] {
            if let Ok(Parsed::Index(idx)) = parse_manifest(&bytes, None) {
                let _ = select_platform(&idx, &Platform::default());
            }
            let _ = parse_manifest(&bytes, Some("application/vnd.oci.image.manifest.v1+json"));
            let _ = parse_config(&bytes, 1);
            let _ = Credentials::parse(&bytes, Path::new("prop"));
            let s = String::from_utf8_lossy(&bytes);
            let _ = ImageRef::parse(&s);
            let _ = s.parse::<Platform>();
            let _ = Digest::parse(&s);
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    // The mutation bases must themselves be accepted, or the mutated cases test nothing.
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    unpack_layer(&seed_tar()[..], &layer, &opts()).unwrap();
    assert!(layer.join("etc/hard").is_file());
    assert!(matches!(
        parse_manifest(&seed_manifest(), None).unwrap(),
        Parsed::Index(_)
    ));
}
