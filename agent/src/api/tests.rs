//! Tests of the API router on a real node in a temp dir.

use std::path::Path;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request as HttpRequest;
use bolt_events::{Log, NodeKey};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tower::ServiceExt;

use super::node_router as router;
use super::*;
use crate::node::NodeOptions;

const SEED: [u8; 32] = [7; 32];

fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
        .clone()
}

/// A node on a fresh log in `dir`, started once (cursor 1 is its `node.started`).
fn started_node(dir: &Path) -> Arc<Node> {
    let log = Log::open(&dir.join("events.redb"), NodeKey::from_seed(SEED)).unwrap();
    let mut opts = NodeOptions::for_this_host();
    opts.name = "test-node".into();
    opts.metrics = Some(recorder());
    let node = Node::open(log, opts).unwrap();
    node.start().unwrap();
    node
}

async fn call(router: &Router, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = HttpRequest::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

async fn get_json(router: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, body) = call(router, Method::GET, uri).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {v}"))
}

#[tokio::test]
async fn info_shows_the_node_its_head_and_its_state_hash() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    let router = router(Arc::clone(&node));
    let (status, info) = get_json(&router, "/v1/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["node_id"], NodeKey::from_seed(SEED).id().to_string());
    assert_eq!(info["name"], "test-node");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["head"], 1);
    assert_eq!(info["events"], 1);
    assert_eq!(info["state_cursor"], 1);
    let at_one = node.state_hash(Some(Cursor(1))).unwrap();
    assert_eq!(info["state_hash"], at_one.hash.to_string());
}

#[tokio::test]
async fn events_lists_appended_events_after_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    node.stop("test").unwrap();
    let router = router(Arc::clone(&node));

    let (status, all) = get_json(&router, "/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2);
    let first = &all[0];
    assert_eq!(first["cursor"], 1);
    assert_eq!(first["kind"], "node.started");
    assert_eq!(first["origin"], node.node_id().to_string());
    assert_eq!(first["seq"], 1);
    assert_eq!(first["schema"], bolt_events::CURRENT_SCHEMA);
    assert_eq!(first["prev"], bolt_events::Hash::ZERO.to_string());
    assert!(first["hlc"].as_u64().unwrap() > 0);
    assert_eq!(first["payload"]["node"]["started"]["name"], "test-node");
    let second = &all[1];
    assert_eq!(second["cursor"], 2);
    assert_eq!(second["kind"], "node.stopped");
    assert_eq!(second["prev"], first["hash"]);
    assert_eq!(second["payload"]["node"]["stopped"]["reason"], "test");

    let (_, after_one) = get_json(&router, "/v1/events?since=1").await;
    assert_eq!(after_one.as_array().unwrap(), &all[1..]);
    let (_, page) = get_json(&router, "/v1/events?limit=1").await;
    assert_eq!(page.as_array().unwrap(), &all[..1]);
    let (_, none) = get_json(&router, "/v1/events?since=2").await;
    assert_eq!(none.as_array().unwrap().len(), 0);
}

/// A node (cursor 1: its start) holding a peer's start, stop and start (cursors 2 to 4,
/// replicated as the mesh would), then its own stop (cursor 5).
fn node_with_a_peer(dir: &Path) -> (Arc<Node>, Arc<Node>) {
    let node = started_node(dir);
    let peer_dir = dir.join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    let log = Log::open(&peer_dir.join("events.redb"), NodeKey::from_seed([9; 32])).unwrap();
    let mut opts = NodeOptions::for_this_host();
    opts.name = "peer-node".into();
    let peer = Node::open(log, opts).unwrap();
    peer.start().unwrap();
    peer.stop("test").unwrap();
    peer.start().unwrap();
    let run = peer.log().read_after(Cursor(0), 100).unwrap();
    let envelopes = run.into_iter().map(|a| a.event.envelope).collect();
    node.log().append_remote(envelopes).unwrap();
    node.stop("test").unwrap();
    (node, peer)
}

async fn get_page(router: &Router, uri: &str) -> (Vec<u64>, u64, u64) {
    let req = HttpRequest::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    let header = |name: &str| -> u64 { resp.headers()[name].to_str().unwrap().parse().unwrap() };
    let (cursor, head) = (header(HEADER_CURSOR), header(HEADER_HEAD));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let events: Vec<crate::wire::EventView> = serde_json::from_slice(&body).unwrap();
    (events.iter().map(|e| e.cursor).collect(), cursor, head)
}

#[tokio::test]
async fn events_filter_by_origin_and_kind_and_resume_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (node, peer) = node_with_a_peer(dir.path());
    let router = router(Arc::clone(&node));
    let me = node.node_id().to_string();
    let them = peer.node_id().to_string();

    assert_eq!(
        get_page(&router, "/v1/events").await,
        (vec![1, 2, 3, 4, 5], 5, 5)
    );
    // By name, by prefix (any case), by whole id.
    let peer_events = (vec![2, 3, 4], 5, 5);
    assert_eq!(
        get_page(&router, "/v1/events?origin=peer-node").await,
        peer_events
    );
    let upper = them[..6].to_uppercase();
    assert_eq!(
        get_page(&router, &format!("/v1/events?origin={upper}")).await,
        peer_events
    );
    assert_eq!(
        get_page(&router, &format!("/v1/events?origin={them}")).await,
        peer_events
    );
    assert_eq!(
        get_page(&router, "/v1/events?origin=test-node").await,
        (vec![1, 5], 5, 5)
    );
    // Kinds: exact and prefix, combined with an origin.
    assert_eq!(
        get_page(&router, "/v1/events?kind=node.started").await.0,
        vec![1, 2, 4]
    );
    for prefix in ["node.", "node.*"] {
        assert_eq!(
            get_page(&router, &format!("/v1/events?kind={prefix}"))
                .await
                .0,
            vec![1, 2, 3, 4, 5]
        );
    }
    assert!(get_page(&router, "/v1/events?kind=capsule.*")
        .await
        .0
        .is_empty());
    assert_eq!(
        get_page(
            &router,
            &format!("/v1/events?origin={}&kind=node.stopped", &me[..8])
        )
        .await
        .0,
        vec![5]
    );
    // A full page ends at its last event; the next one resumes after it.
    assert_eq!(
        get_page(&router, "/v1/events?origin=peer-node&limit=2").await,
        (vec![2, 3], 3, 5)
    );
    assert_eq!(
        get_page(&router, "/v1/events?origin=peer-node&since=3").await,
        (vec![4], 5, 5)
    );
    assert_eq!(
        get_page(&router, "/v1/events?kind=node.stopped&since=5").await,
        (vec![], 5, 5)
    );
}

#[test]
fn a_filtered_scan_is_bounded_and_continues_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _peer) = node_with_a_peer(dir.path());
    let filter = node.event_filter(None, Some("node.stopped")).unwrap();
    // Two events looked at per request: 1 and 2 match nothing, 3 matches, then 5.
    let mut since = Cursor(0);
    let mut pages = Vec::new();
    loop {
        let page = node.events_scan(since, 10, &filter, 2).unwrap();
        let cursors: Vec<u64> = page.events.iter().map(|e| e.cursor).collect();
        pages.push((cursors, page.cursor.0));
        since = page.cursor;
        if !page.more() {
            break;
        }
    }
    assert_eq!(pages, vec![(vec![], 2), (vec![3], 4), (vec![5], 5)]);
    // Unfiltered, the scan budget caps the page too.
    let all = node
        .events_scan(Cursor(0), 10, &EventFilter::default(), 3)
        .unwrap();
    assert_eq!(all.events.len(), 3);
    assert!(all.more());
}

#[tokio::test]
async fn bad_filters_are_one_line_400s() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _peer) = node_with_a_peer(dir.path());
    let router = router(node);
    for (uri, needle) in [
        ("/v1/events?origin=abc", "origin \"abc\""),
        ("/v1/events?origin=nobody", "origin \"nobody\""),
        ("/v1/events?origin=", "origin must not be empty"),
        ("/v1/events?kind=", "kind must not be empty"),
        ("/v1/events?kind=.*", "kind must not be empty"),
        ("/v1/events?kind=cap*sule", "wildcard"),
        ("/v1/events/stream?origin=zz", "origin \"zz\""),
    ] {
        let (status, body) = get_json(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let error = error_of(&body);
        assert!(error.contains(needle), "{uri}: {error}");
        assert!(!error.contains('\n'), "{uri}: {error}");
    }
}

#[tokio::test]
async fn bad_queries_are_json_400s() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(started_node(dir.path()));
    for uri in [
        "/v1/events?since=abc",
        "/v1/events?limit=0",
        "/v1/events?limit=10001",
        "/v1/state?at=-1",
        "/v1/state/hash?at=x",
    ] {
        let (status, body) = get_json(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(!error_of(&body).is_empty(), "{uri}");
    }
}

#[tokio::test]
async fn state_travels_back_to_any_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    node.stop("test").unwrap();
    node.start().unwrap();
    let router = router(Arc::clone(&node));
    let id = node.node_id().to_string();

    let (status, at1) = get_json(&router, "/v1/state?at=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(at1["cursor"], 1);
    assert_eq!(at1["state"]["nodes"][&id]["up"], true);
    let (_, at2) = get_json(&router, "/v1/state?at=2").await;
    assert_eq!(at2["state"]["nodes"][&id]["up"], false);
    let (_, live) = get_json(&router, "/v1/state").await;
    assert_eq!(live["cursor"], 3);
    assert_eq!(live["state"]["nodes"][&id]["up"], true);
    assert_ne!(at1["hash"], at2["hash"]);
    assert_ne!(at2["hash"], live["hash"]);

    for at in 1..=3 {
        let (_, full) = get_json(&router, &format!("/v1/state?at={at}")).await;
        let (_, hash) = get_json(&router, &format!("/v1/state/hash?at={at}")).await;
        assert_eq!(hash["hash"], full["hash"], "at {at}");
        assert_eq!(hash["cursor"], at);
    }
    let (_, live_hash) = get_json(&router, "/v1/state/hash").await;
    let (_, at3) = get_json(&router, "/v1/state/hash?at=3").await;
    assert_eq!(live_hash, at3);

    let (status, beyond) = get_json(&router, "/v1/state?at=99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&beyond).contains("beyond"), "{beyond}");
}

#[tokio::test]
async fn verify_reports_a_clean_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    node.stop("test").unwrap();
    let (status, report) = get_json(&router(node), "/v1/events/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true);
    assert_eq!(report["events"], 2);
    assert_eq!(report["origins"], 1);
    assert_eq!(report["faults"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn openapi_lists_every_route_and_every_listed_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    let router = router(Arc::clone(&node));
    let (status, doc) = get_json(&router, PATH_OPENAPI).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    // Every route, the services' too.
    let services = Services::open(Arc::clone(&node), dir.path(), &Default::default());
    let router = super::router(&services.unwrap());
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    let mut routes = ROUTES.to_vec();
    listed.sort_unstable();
    routes.sort_unstable();
    assert_eq!(listed, routes);
    for (path, item) in paths {
        let ops = item.as_object().unwrap();
        assert!(!ops.is_empty(), "{path} has no operation");
        for (method, op) in ops {
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let uri = path.replace("{reference}", "x").replace("{id}", "x");
            let (status, body) = call(&router, method.clone(), &uri).await;
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains("no route for") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is listed but not served: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(started_node(dir.path()));
    let (status, body) = get_json(&router, "/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("/v1/nope"));
    let (status, body) = call(&router, Method::POST, "/v1/info").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(error_of(&body).contains("POST"));
    let (status, body) = get_json(&router, PATH_STREAM).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a plain GET is not an upgrade"
    );
    assert!(!error_of(&body).is_empty());
}

#[tokio::test]
async fn metrics_exposes_appends_head_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(started_node(dir.path()));
    let _ = call(&router, Method::GET, "/v1/info").await;
    let (status, body) = call(&router, Method::GET, PATH_METRICS).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for needle in [
        "bolt_events_appended_total{kind=\"node.started\"}",
        "bolt_event_append_seconds",
        "bolt_log_head",
        "bolt_http_requests_total{method=\"GET\",route=\"/v1/info\",status=\"200\"}",
    ] {
        assert!(text.contains(needle), "no {needle} in:\n{text}");
    }
}

async fn post_json(router: &Router, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = HttpRequest::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn cluster_routes_refuse_bad_input_with_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    let head = node.log().head();
    let cluster = crate::node::cluster::Cluster::open(
        Arc::clone(&node),
        dir.path(),
        None,
        crate::node::cluster::CERT_TTL,
    )
    .unwrap();
    let router: Router = super::cluster::routes(cluster);
    let (status, v) = get_json(&router, "/v1/cluster").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["member"], false);
    let cases = [
        (
            "/v1/cluster/init",
            r#"{"name": ""}"#,
            StatusCode::BAD_REQUEST,
            "cluster name",
        ),
        (
            "/v1/cluster/init",
            r#"{"name": "a\u0007b"}"#,
            StatusCode::BAD_REQUEST,
            "cluster name",
        ),
        (
            "/v1/cluster/init",
            r#"{"name": 5}"#,
            StatusCode::BAD_REQUEST,
            "name",
        ),
        ("/v1/cluster/init", "{}", StatusCode::CONFLICT, "--listen"),
        (
            "/v1/cluster/token",
            r#"{"ttl_secs": 0}"#,
            StatusCode::BAD_REQUEST,
            "lifetime",
        ),
        (
            "/v1/cluster/token",
            r#"{"ttl_secs": 604801}"#,
            StatusCode::BAD_REQUEST,
            "lifetime",
        ),
        (
            "/v1/cluster/token",
            r#"{"ttl_secs": 60}"#,
            StatusCode::CONFLICT,
            "does not hold the cluster CA",
        ),
        (
            "/v1/cluster/leave",
            "{}",
            StatusCode::CONFLICT,
            "not a cluster member",
        ),
    ];
    for (uri, body, want, says) in cases {
        let (status, v) = post_json(&router, uri, body).await;
        assert_eq!(status, want, "{uri} {body}: {v}");
        let line = error_of(&v);
        assert!(
            line.contains(says) && !line.contains('\n'),
            "{uri} {body}: {line}"
        );
    }
    let (status, v) = call(&router, Method::DELETE, "/v1/nodes/nosuchnode").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&v)
    );
    // Nothing was recorded and nothing was written.
    assert_eq!(node.log().head(), head);
    assert!(!dir.path().join("cluster").exists());
}
