//! The client against a served API: the event stream's backlog, live events, resume and
//! shutdown, filtered pages and streams, and the one-line error of an agent that is not there.
#![allow(clippy::unwrap_used)]

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;

use bolt_agent::api::node_router as router;
use bolt_agent::client::{Client, ClientError, EventSelect};
use bolt_agent::node::{Node, NodeOptions};
use bolt_events::{Cursor, Log, NodeKey};

const SEED: [u8; 32] = [7; 32];

/// A node on a fresh log in `dir`, started once (cursor 1 is its `node.started`).
fn started_node(dir: &Path) -> Arc<Node> {
    let log = Log::open(&dir.join("events.redb"), NodeKey::from_seed(SEED)).unwrap();
    let mut opts = NodeOptions::for_this_host();
    opts.name = "test-node".into();
    let node = Node::open(log, opts).unwrap();
    node.start().unwrap();
    node
}

#[tokio::test]
async fn stream_sends_the_backlog_then_live_events_and_resumes_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(axum::serve(listener, router(Arc::clone(&node))).into_future());
    let client = Client::new(&sock);

    let info = client.info().await.unwrap();
    assert_eq!(info.node_id, node.node_id());

    let mut stream = client.stream(Cursor(0)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.cursor, first.kind.as_str()), (1, "node.started"));
    let stopping = Arc::clone(&node);
    tokio::task::spawn_blocking(move || stopping.stop("live").unwrap())
        .await
        .unwrap();
    let live = stream.next().await.unwrap().unwrap();
    assert_eq!((live.cursor, live.kind.as_str()), (2, "node.stopped"));
    drop(stream);

    let mut resumed = client.stream(Cursor(1)).await.unwrap();
    let again = resumed.next().await.unwrap().unwrap();
    assert_eq!(again, live, "resuming after cursor 1 starts at cursor 2");

    node.begin_shutdown();
    assert!(resumed.next().await.is_none(), "shutdown closes the stream");
    drop(resumed);
    assert!(node.drain_streams(std::time::Duration::from_secs(10)).await);
    let refused = client.stream(Cursor(0)).await;
    assert!(refused.is_err(), "no new stream once shutting down");
    server.abort();
}

#[tokio::test]
async fn filtered_pages_and_streams_send_only_matching_events_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let node = started_node(dir.path());
    node.stop("one").unwrap();
    node.start().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(axum::serve(listener, router(Arc::clone(&node))).into_future());
    let client = Client::new(&sock);
    let stopped = EventSelect {
        origin: Some("test-node".into()),
        kind: Some("node.stopped".into()),
    };

    let page = client.events_page(Cursor(0), 100, &stopped).await.unwrap();
    let cursors: Vec<u64> = page.events.iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, vec![2]);
    assert_eq!((page.cursor, page.head), (Cursor(3), Cursor(3)));
    assert!(!page.more());

    // The stream skips the starts, backlog and live alike.
    let mut stream = client.stream_select(Cursor(0), &stopped).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.cursor, first.kind.as_str()), (2, "node.stopped"));
    let n = Arc::clone(&node);
    tokio::task::spawn_blocking(move || {
        n.stop("two").unwrap();
        n.start().unwrap();
        n.stop("three").unwrap();
    })
    .await
    .unwrap();
    let live = stream.next().await.unwrap().unwrap();
    assert_eq!((live.cursor, live.kind.as_str()), (4, "node.stopped"));
    let next = stream.next().await.unwrap().unwrap();
    assert_eq!(next.cursor, 6);
    drop(stream);

    // Resuming after the last delivered event, with the same selection.
    let mut resumed = client.stream_select(Cursor(4), &stopped).await.unwrap();
    assert_eq!(resumed.next().await.unwrap().unwrap(), next);
    drop(resumed);

    // A bad selection is the agent's one line, on a page and on a stream.
    let bad = EventSelect {
        origin: Some("xyz".into()),
        kind: None,
    };
    for err in [
        client.events_page(Cursor(0), 10, &bad).await.unwrap_err(),
        client.stream_select(Cursor(0), &bad).await.unwrap_err(),
    ] {
        match err {
            ClientError::Api {
                status, message, ..
            } => {
                assert_eq!(status, 400);
                assert!(message.contains("origin \"xyz\""), "{message}");
            }
            other => panic!("not the agent's refusal: {other}"),
        }
    }
    server.abort();
}

#[tokio::test]
async fn client_says_it_cannot_reach_a_missing_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let err = Client::new(&sock).info().await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let line = err.to_string();
    assert!(line.starts_with(&format!(
        "cannot reach the bolt agent at {}: ",
        sock.display()
    )));
    assert!(!line.contains('\n'));
}
