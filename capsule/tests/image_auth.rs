//! Registry authentication against an in-test registry on 127.0.0.1 that demands a bearer token
//! (fetched with basic credentials from a docker config.json) or plain basic auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bolt_capsule::image::store::ImageError;
use bolt_capsule::image::{Credential, Credentials, Digest, ImageStore, PullOptions};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bearer,
    Basic,
}

struct Fake {
    mode: Mode,
    addr: String,
    /// path → (content type, bytes)
    content: HashMap<String, (String, Vec<u8>)>,
    token_requests: AtomicUsize,
    denied: AtomicUsize,
}

const USER: &str = "alice";
const PASS: &str = "s3cret";
const TOKEN: &str = "tok-123";

fn basic_ok(h: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

fn challenge(f: &Fake) -> Response {
    f.denied.fetch_add(1, Ordering::Relaxed);
    let www = match f.mode {
        Mode::Bearer => format!(
            r#"Bearer realm="http://{}/token",service="fake-registry""#,
            f.addr
        ),
        Mode::Basic => r#"Basic realm="fake-registry""#.to_string(),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, www)],
        "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
    )
        .into_response()
}

async fn handle(State(f): State<Arc<Fake>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let h = req.headers().clone();
    if path == "/token" {
        f.token_requests.fetch_add(1, Ordering::Relaxed);
        if !basic_ok(&h) {
            return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
        }
        return (
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"token":"{TOKEN}"}}"#),
        )
            .into_response();
    }
    let authorized = match f.mode {
        Mode::Bearer => {
            h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
        }
        Mode::Basic => basic_ok(&h),
    };
    if !authorized {
        return challenge(&f);
    }
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    match f.content.get(&path) {
        Some((ct, bytes)) => Response::builder()
            .header(header::CONTENT_TYPE, ct)
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Body::from(bytes.clone()))
            .unwrap(),
        None => (
            StatusCode::NOT_FOUND,
            "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}",
        )
            .into_response(),
    }
}

/// Start the fake registry holding one image at `private/app:1`.
fn start(rt: &tokio::runtime::Runtime, mode: Mode) -> Arc<Fake> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut tar = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_ustar();
    hd.set_size(7);
    hd.set_mode(0o644);
    tar.append_data(&mut hd, "secret", &b"content"[..]).unwrap();
    let layer = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let blob = gz.finish().unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Digest::of(&layer)
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        Digest::of(&config),
        config.len(),
        Digest::of(&blob),
        blob.len()
    )
    .into_bytes();
    let mut content = HashMap::new();
    let oct = "application/octet-stream".to_string();
    content.insert(
        "/v2/private/app/manifests/1".to_string(),
        (
            "application/vnd.oci.image.manifest.v1+json".to_string(),
            manifest,
        ),
    );
    content.insert(
        format!("/v2/private/app/blobs/{}", Digest::of(&config)),
        (oct.clone(), config),
    );
    content.insert(
        format!("/v2/private/app/blobs/{}", Digest::of(&blob)),
        (oct, blob),
    );
    let fake = Arc::new(Fake {
        mode,
        addr,
        content,
        token_requests: AtomicUsize::new(0),
        denied: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    fake
}

fn store_with(dir: &std::path::Path, creds: Credentials) -> ImageStore {
    let mut cfg = common::config(dir);
    cfg.registry.credentials = creds;
    ImageStore::open(cfg).unwrap()
}

#[test]
fn bearer_token_with_credentials_from_docker_config() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = start(&rt, Mode::Bearer);
    let tmp = tempfile::tempdir().unwrap();
    let cfg_path = tmp.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(
        &cfg_path,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            fake.addr
        ),
    )
    .unwrap();
    let store = store_with(&tmp.path().join("a"), Credentials::load(&cfg_path).unwrap());
    let image = format!("{}/private/app:1", fake.addr);
    let pulled = rt
        .block_on(store.pull(&image, &PullOptions::default()))
        .unwrap();
    assert!(
        fake.token_requests.load(Ordering::Relaxed) >= 1,
        "no token was requested"
    );
    let dirs = rt.block_on(store.layer_dirs(&image)).unwrap();
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("secret")).unwrap(),
        "content"
    );
    assert_eq!(pulled.fetched.len(), 2);

    // Without credentials, or with a wrong password, the pull is refused and nothing is stored.
    for creds in [Credentials::none(), {
        let mut c = Credentials::none();
        c.insert(
            &fake.addr,
            Credential::Basic {
                username: USER.into(),
                password: "wrong".into(),
            },
        );
        c
    }] {
        let store = store_with(
            &tmp.path()
                .join(format!("x{}", fake.denied.load(Ordering::Relaxed))),
            creds,
        );
        let before = common::listing(store.root());
        let err = rt
            .block_on(store.pull(&image, &PullOptions::default()))
            .unwrap_err();
        assert!(
            matches!(err, ImageError::Registry(_)),
            "expected a registry error, got {err}"
        );
        assert_eq!(common::listing(store.root()), before);
    }
}

#[test]
fn basic_auth() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = start(&rt, Mode::Basic);
    let tmp = tempfile::tempdir().unwrap();
    let mut creds = Credentials::none();
    creds.insert(
        &fake.addr,
        Credential::Basic {
            username: USER.into(),
            password: PASS.into(),
        },
    );
    let store = store_with(&tmp.path().join("a"), creds);
    let image = format!("{}/private/app:1", fake.addr);
    rt.block_on(store.pull(&image, &PullOptions::default()))
        .unwrap();
    assert_eq!(fake.token_requests.load(Ordering::Relaxed), 0);
    let store = store_with(&tmp.path().join("b"), Credentials::none());
    assert!(rt
        .block_on(store.pull(&image, &PullOptions::default()))
        .is_err());
}
