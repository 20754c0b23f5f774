//! Bytes → `bolt image import` of a tar (OCI layout tar or docker-archive): the tar walk,
//! `index.json` / `manifest.json` parsing, blob verification and unpack, into a fresh store with
//! production's settings. Never a panic; a failed import leaves no image behind.
#![no_main]

use std::sync::OnceLock;

use bolt_capsule::image::{ImageStore, ImportOptions, StoreConfig};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // The host failing to give a temp dir is no finding, but must not pass silently either.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let archive = tmp.path().join("image.tar");
    std::fs::write(&archive, data).expect("write the archive");
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.durable = false;
    let store = ImageStore::open(cfg).expect("a fresh store");
    let rt = runtime();
    // With a name (picks among several, names an unnamed one) and without.
    for reference in [None, Some("fuzz/imported:latest".to_string())] {
        let opts = ImportOptions {
            reference,
            progress: None,
        };
        let res = rt.block_on(store.import(&archive, &opts));
        let listed = rt.block_on(store.list()).unwrap_or_default();
        if res.is_err() {
            assert!(listed.is_empty(), "a failed import stored {listed:?}");
        }
    }
});
