//! `/v1/capsules...`: create+start, list, inspect, stop, kill, remove, logs (follow as a
//! chunked NDJSON stream), attach and exec (WebSockets carrying framed stdio), top: thin
//! handlers over [`Capsules`]; the shapes are [`crate::wire::capsules`].
//!
//! WebSocket stdio: a binary message is one frame, its first byte the kind
//! ([`frame`](crate::wire::frame): 0 stdin, 1 stdout, 2 stderr, 4 stdin EOF, 5 resize)
//! and the rest the payload. The server ends with one text message, a [`StreamEnd`], and a
//! close frame.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bolt_capsule::runtime::supervisor::LogLine;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::api::{refusal_status, ApiError, Res};
use crate::service::capsules::{CapsuleError, Capsules, StdioPeer};
#[cfg(test)]
use crate::wire::capsules::ROUTES;
use crate::wire::capsules::{
    parse_signal, AttachQuery, CapsuleView, CreateRequest, ExecRequest, KillQuery, ListQuery,
    LogsQuery, RemoveQuery, StopQuery, StreamEnd, TopView, DEFAULT_STOP_TIMEOUT, PATH_ATTACH,
    PATH_CAPSULE, PATH_CAPSULES, PATH_EXEC, PATH_KILL, PATH_LOGS, PATH_START, PATH_STOP, PATH_TOP,
};
use crate::wire::images::NDJSON;

impl From<CapsuleError> for ApiError {
    fn from(e: CapsuleError) -> Self {
        let status = match &e {
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::Ambiguous(_)
            | CapsuleError::BadRequest(_)
            | CapsuleError::Start { .. } => StatusCode::BAD_REQUEST,
            CapsuleError::Decide(d) => refusal_status(d),
            CapsuleError::Image { .. } => StatusCode::NOT_FOUND,
            CapsuleError::Conflict(_) | CapsuleError::NotRunning(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let err = ApiError::line(status, &e.to_string());
        match &e {
            CapsuleError::Start { exit_code, .. } => err.with_exit_code(*exit_code),
            _ => err,
        }
    }
}

/// The capsule routes, merged into the API router.
pub fn routes<S>(caps: Arc<Capsules>) -> Router<S> {
    Router::new()
        .route(PATH_CAPSULES, get(list).post(create))
        .route(PATH_CAPSULE, get(inspect).delete(remove))
        .route(PATH_STOP, post(stop))
        .route(PATH_START, post(start))
        .route(PATH_KILL, post(kill))
        .route(PATH_LOGS, get(logs))
        .route(PATH_ATTACH, get(attach))
        .route(PATH_EXEC, get(exec))
        .route(PATH_TOP, get(top))
        .with_state(caps)
}

type Caps = State<Arc<Capsules>>;

async fn list(
    State(caps): Caps,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Res<Json<Vec<CapsuleView>>> {
    let Query(q) = q?;
    Ok(Json(
        caps.list(q.all.unwrap_or(false), q.all_nodes.unwrap_or(false))
            .await?,
    ))
}

async fn create(
    State(caps): Caps,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<CapsuleView>)> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(caps.create(req).await?)))
}

async fn inspect(State(caps): Caps, Path(id): Path<String>) -> Res<Json<CapsuleView>> {
    Ok(Json(caps.view(&id).await?))
}

async fn remove(
    State(caps): Caps,
    Path(id): Path<String>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Res<Json<serde_json::Value>> {
    let Query(q) = q?;
    let removed = caps.remove(&id, q.force.unwrap_or(false)).await?;
    Ok(Json(json!({ "removed": removed })))
}

async fn stop(
    State(caps): Caps,
    Path(id): Path<String>,
    q: Result<Query<StopQuery>, QueryRejection>,
) -> Res<Json<CapsuleView>> {
    let Query(q) = q?;
    let timeout = q.timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
    Ok(Json(caps.stop(&id, timeout).await?))
}

async fn start(State(caps): Caps, Path(id): Path<String>) -> Res<Json<CapsuleView>> {
    Ok(Json(caps.start(&id).await?))
}

async fn kill(
    State(caps): Caps,
    Path(id): Path<String>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> Res<Json<CapsuleView>> {
    let Query(q) = q?;
    let signal = match q.signal.as_deref() {
        Some(s) => parse_signal(s).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?,
        None => Signal::SIGKILL,
    };
    Ok(Json(caps.kill(&id, signal).await?))
}

async fn top(State(caps): Caps, Path(id): Path<String>) -> Res<Json<TopView>> {
    Ok(Json(caps.top(&id).await?))
}

fn ndjson(line: &LogLine) -> Vec<u8> {
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    v
}

async fn logs(
    State(caps): Caps,
    Path(key): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Res<Response> {
    let Query(q) = q?;
    let content_type = [(header::CONTENT_TYPE, NDJSON)];
    if !q.follow.unwrap_or(false) {
        let (_, lines) = caps.logs(&key, q.since, q.tail).await?;
        let body: Vec<u8> = lines.iter().flat_map(ndjson).collect();
        return Ok((content_type, body).into_response());
    }
    let rx = caps.follow_logs(&key, q.since, q.tail).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(ndjson(&line)), rx))
    });
    Ok((content_type, Body::from_stream(stream)).into_response())
}

/// A WebSocket as the client end of an attach or exec stream: binary messages carry frames;
/// text, ping and pong messages are skipped.
struct Ws(WebSocket);

impl StdioPeer for Ws {
    async fn send(&mut self, msg: Vec<u8>) -> bool {
        self.0.send(Message::Binary(msg.into())).await.is_ok()
    }

    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.0.recv().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Binary(b))) => return Some(b.to_vec()),
                Some(Ok(_)) => {}
            }
        }
    }
}

async fn send_end(socket: &mut WebSocket, end: &StreamEnd) {
    if let Ok(text) = serde_json::to_string(end) {
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn attach(
    State(caps): Caps,
    Path(key): Path<String>,
    q: Result<Query<AttachQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let Query(q) = q?;
    let ws = ws?;
    let session = caps.attach(&key).await?;
    let stdin = q.stdin.unwrap_or(false);
    Ok(ws.on_upgrade(move |socket| async move {
        let mut peer = Ws(socket);
        if let Some(end) = session.run(&mut peer, stdin).await {
            send_end(&mut peer.0, &end).await;
        }
    }))
}

async fn exec(
    State(caps): Caps,
    Path(key): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let ws = ws?;
    let id = caps.exec_target(&key).await?;
    Ok(ws.on_upgrade(move |socket| run_exec(caps, id, socket)))
}

/// Reads the [`ExecRequest`] (the first text message), then runs it.
async fn run_exec(caps: Arc<Capsules>, id: String, mut socket: WebSocket) {
    let req = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecRequest>(t.as_str()) {
                Ok(r) => break r,
                Err(e) => {
                    let end = StreamEnd {
                        exit_code: 125,
                        oom: false,
                        error: Some(format!("bad exec request: {e}")),
                    };
                    return send_end(&mut socket, &end).await;
                }
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    };
    let mut peer = Ws(socket);
    if let Some(end) = caps.exec_stream(id, req, &mut peer).await {
        send_end(&mut peer.0, &end).await;
    }
}

/// The OpenAPI path items of the capsule routes (merged into the API document).
pub fn openapi_paths() -> serde_json::Map<String, serde_json::Value> {
    let err = |what: &str| {
        json!({"description": what,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CapsuleError"}}}})
    };
    let ok = |what: &str, schema: serde_json::Value| json!({"description": what, "content": {"application/json": {"schema": schema}}});
    let capsule = json!({"$ref": "#/components/schemas/Capsule"});
    let id = json!({"name": "id", "in": "path", "required": true,
                    "description": "capsule id, name or unique id prefix",
                    "schema": {"type": "string"}});
    let q = |name: &str, ty: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "description": what,
               "schema": {"type": ty}})
    };
    let ws = |summary: &str, params: serde_json::Value| {
        json!({"get": {"summary": summary, "parameters": params,
                       "responses": {"101": {"description": "switching to the WebSocket protocol"},
                                     "400": err("not a WebSocket upgrade"),
                                     "404": err("no such capsule"),
                                     "409": err("the capsule is not running")}}})
    };
    let mut m = serde_json::Map::new();
    m.insert(PATH_CAPSULES.into(), json!({
        "get": {"operationId": "listCapsules", "summary": "Capsules of the state (running ones unless all=true), newest first.",
                "parameters": [q("all", "boolean", "also capsules that do not run")],
                "responses": {"200": ok("capsules", json!({"type": "array", "items": capsule}))}},
        "post": {"operationId": "createCapsule",
                 "summary": "Create and start a capsule (pulls a missing image). Nothing is left when it fails.",
                 "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateCapsule"}}}},
                 "responses": {"201": ok("the started capsule", capsule.clone()),
                               "400": err("bad input, or the command cannot run (exit_code 126/127)"),
                               "404": err("unknown image"),
                               "409": err("the name is in use")}}
    }));
    m.insert(PATH_CAPSULE.into(), json!({
        "get": {"operationId": "inspectCapsule", "summary": "One capsule.", "parameters": [id.clone()],
                "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule")}},
        "delete": {"operationId": "removeCapsule", "summary": "Remove a capsule (a running one with force=true).",
                   "parameters": [id.clone(), q("force", "boolean", "kill it first when it runs")],
                   "responses": {"200": ok("removed", json!({"type": "object"})), "404": err("no such capsule"),
                                 "409": err("the capsule runs")}}
    }));
    m.insert(PATH_START.into(), json!({"post": {"operationId": "startCapsule",
        "summary": "Start an exited capsule again in its own layer (its writes kept); a running one is left as it is.",
        "parameters": [id.clone()],
        "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule"),
                      "409": err("the capsule is being removed")}}}));
    m.insert(PATH_STOP.into(), json!({"post": {"operationId": "stopCapsule",
        "summary": "SIGTERM, then SIGKILL after the timeout; marks it stopped for restart policies.",
        "parameters": [id.clone(), q("timeout", "integer", "seconds before SIGKILL (default 10)")],
        "responses": {"200": ok("capsule", capsule.clone()), "404": err("no such capsule")}}}));
    m.insert(
        PATH_KILL.into(),
        json!({"post": {"operationId": "killCapsule",
        "summary": "Send a signal to the capsule's first process (default SIGKILL).",
        "parameters": [id.clone(), q("signal", "string", "SIGTERM, TERM or 15")],
        "responses": {"200": ok("capsule", capsule.clone()), "400": err("bad signal"),
                      "404": err("no such capsule"), "409": err("not running")}}}),
    );
    m.insert(PATH_LOGS.into(), json!({"get": {"operationId": "capsuleLogs",
        "summary": "Log lines as NDJSON ({time_ms, stream, line}); with follow=true a chunked stream until the capsule stops.",
        "parameters": [id.clone(), q("follow", "boolean", "keep streaming"),
                       q("since", "integer", "ms since the epoch"), q("tail", "integer", "last N lines")],
        "responses": {"200": {"description": "log lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                      "404": err("no such capsule")}}}));
    m.insert(PATH_ATTACH.into(), ws("WebSocket: the capsule's stdio as binary frames (kind byte + payload), then a StreamEnd text message.",
        json!([id.clone(), q("stdin", "boolean", "forward stdin")])));
    m.insert(PATH_EXEC.into(), ws("WebSocket: send an ExecRequest text message first; stdio frames both ways, then a StreamEnd.",
        json!([id.clone()])));
    m.insert(
        PATH_TOP.into(),
        json!({"get": {"operationId": "capsuleTop", "summary": "The capsule's processes.",
        "parameters": [id],
        "responses": {"200": ok("processes", json!({"$ref": "#/components/schemas/Top"})),
                      "404": err("no such capsule"), "409": err("not running")}}}),
    );
    m
}

/// Adds the capsule paths and schemas to the API's OpenAPI document.
pub fn merge_openapi(doc: &mut serde_json::Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.extend(openapi_paths());
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        schemas.extend(openapi_schemas());
    }
}

/// The OpenAPI schemas of the capsule routes.
pub fn openapi_schemas() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let strs = json!({"type": "array", "items": {"type": "string"}});
    m.insert("CapsuleError".into(), json!({"type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "exit_code": {"type": "integer", "nullable": true}}}));
    m.insert(
        "CreateCapsule".into(),
        json!({"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string"}, "command": strs.clone(), "entrypoint": strs.clone(),
        "name": {"type": "string"}, "env": strs.clone(), "workdir": {"type": "string"},
        "user": {"type": "string"}, "hostname": {"type": "string"},
        "network": {"type": "string", "description": "none, host, bridge or a network's name"},
        "ports": strs.clone(), "volumes": strs.clone(), "tmpfs": strs.clone(),
        "memory_bytes": {"type": "integer"}, "cpu_millis": {"type": "integer"},
        "pids_limit": {"type": "integer"}, "restart": {"type": "string"},
        "auto_remove": {"type": "boolean"}, "tty": {"type": "boolean"},
        "stdin": {"type": "boolean"}, "attach": {"type": "boolean"}}}),
    );
    m.insert("Capsule".into(), json!({"type": "object",
        "required": ["id", "name", "image", "command", "status", "restarts", "created", "node", "spec"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "image": {"type": "string"},
            "image_digest": {"type": "string"}, "command": strs.clone(),
            "status": {"type": "string", "enum": ["created", "running", "exited", "removed"]},
            "pid": {"type": "integer", "nullable": true},
            "exit": {"type": "object", "nullable": true, "properties": {
                "code": {"type": "integer", "nullable": true}, "signal": {"type": "integer", "nullable": true},
                "oom": {"type": "boolean"}, "exit_code": {"type": "integer"}}},
            "restarts": {"type": "integer"}, "restart": {"type": "string"},
            "created": {"type": "integer"}, "started": {"type": "integer", "nullable": true},
            "finished": {"type": "integer", "nullable": true}, "node": {"type": "string"},
            "spec": {"type": "object"}}}));
    m.insert(
        "Top".into(),
        json!({"type": "object", "required": ["titles", "processes"],
        "properties": {"titles": strs.clone(), "processes": {"type": "array", "items": strs}}}),
    );
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::node::{Node, NodeOptions};
    use crate::service::Services;
    use axum::http::{Method, Request};
    use bolt_events::{Log, NodeKey};
    use bolt_state::Command;
    use tower::ServiceExt;

    /// A capsule `c1` recorded as running, its process a `sleep` child of the test with a
    /// `pid.json` as the supervisor writes it.
    async fn running_capsule(root: &std::path::Path) -> (Arc<Node>, Services, std::process::Child) {
        let log = Log::open(&root.join("events.redb"), NodeKey::from_seed([7; 32])).unwrap();
        let node = Node::open(log, NodeOptions::for_this_host()).unwrap();
        node.start().unwrap();
        let services = Services::open(Arc::clone(&node), root, &Default::default()).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let (id, name) = ("c1".to_owned(), "c1".to_owned());
        node.decide_commands::<CapsuleError>(vec![Command::CreateCapsule {
            id: id.clone(),
            name,
            spec: Default::default(),
        }])
        .await
        .unwrap();
        node.decide_commands::<CapsuleError>(vec![Command::StartCapsule {
            id: id.clone(),
            pid,
        }])
        .await
        .unwrap();
        let dir = services.capsules.dir_of(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let (_, start_time) = bolt_capsule::runtime::supervisor::proc_stat(pid as i32).unwrap();
        let record = bolt_capsule::runtime::supervisor::PidRecord {
            pid: pid as i32,
            start_time,
            supervisor_pid: std::process::id() as i32,
        };
        std::fs::write(dir.join("pid.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        (node, services, child)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_timeout_that_overflows_is_refused_before_anything_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (node, services, mut child) = running_capsule(dir.path()).await;
        let head = node.log().head();
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/capsules/c1/stop?timeout=18446744073709551615")
            .body(Body::empty())
            .unwrap();
        let resp = crate::api::router(&services).oneshot(req).await;
        let still_running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        let resp = resp.unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("timeout"), "{body}");
        assert_eq!(node.log().head(), head, "nothing recorded");
        assert!(still_running, "not signalled");
    }

    #[test]
    fn every_route_has_an_openapi_entry() {
        let paths = openapi_paths();
        for r in ROUTES {
            assert!(paths.contains_key(r), "{r}");
        }
        assert_eq!(paths.len(), ROUTES.len());
    }
}
