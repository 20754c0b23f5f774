//! Bytes → a stored image record (`refs/<sha256 of the reference>.json`) read back by the
//! store: list, get, layer dirs, config and gc over a record that may be anything. Never a
//! panic, and nothing outside the store root is touched.
#![no_main]

use std::sync::OnceLock;

use bolt_capsule::image::{Digest, ImageStore, StoreConfig};
use libfuzzer_sys::fuzz_target;

const REFERENCE: &str = "docker.io/fuzz/record:latest";

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
    let root = tmp.path().join("store");
    let refs = root.join("refs");
    std::fs::create_dir_all(&refs).expect("the store's refs");
    let name = format!("{}.json", Digest::of(REFERENCE.as_bytes()).hex());
    std::fs::write(refs.join(name), data).expect("write the record");
    std::fs::write(tmp.path().join("outside"), b"keep").expect("write the outside file");
    let mut cfg = StoreConfig::new(&root);
    cfg.durable = false;
    let store = ImageStore::open(cfg).expect("the store");
    let rt = runtime();
    rt.block_on(async {
        for rec in store.list().await.unwrap_or_default() {
            let _ = store.get(&rec.reference).await;
            let _ = store.layer_dirs(&rec.reference).await;
            let _ = store.image_config(&rec.reference).await;
        }
        let _ = store.get(REFERENCE).await;
        let _ = store.layer_dirs(REFERENCE).await;
        let _ = store.gc().await;
        let _ = store.remove(REFERENCE).await;
    });
    assert_eq!(
        std::fs::read(tmp.path().join("outside")).ok().as_deref(),
        Some(&b"keep"[..]),
        "the store touched a file outside its root"
    );
});
