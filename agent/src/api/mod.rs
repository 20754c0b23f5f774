//! The HTTP/JSON API, versioned under `/v1`, served on the agent's unix socket.
//!
//! Handlers are thin: they parse the query, call one service (or one blocking [`Node`] method on
//! the blocking pool) and turn its result into JSON. Every error is one [`ApiError`]:
//! `{"error": "..."}` with a fitting status. The paths and shapes are `crate::wire`'s.
//!
//! This layer imports `service`, `node` and `wire`; it never imports `cli` or `client` (the
//! other side of the socket).

pub mod capsules;
pub mod cluster;
pub mod images;
pub mod networks;
pub mod snapshots;
pub mod volumes;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bolt_events::Cursor;
use bolt_state::{DecideError, Refusal};
use serde_json::json;

use crate::node::{Node, NodeError};
use crate::service::Services;
use crate::wire::capsules::one_line;
use crate::wire::filter::{EventFilter, HEADER_CURSOR, HEADER_HEAD};
pub use crate::wire::ROUTES;
use crate::wire::{
    AtQuery, ErrorBody, EventsQuery, MAX_EVENTS_PAGE, MAX_EVENTS_SCAN, PATH_EVENTS, PATH_INFO,
    PATH_METRICS, PATH_OPENAPI, PATH_STATE, PATH_STATE_HASH, PATH_STREAM, PATH_VERIFY,
};

/// Counter of HTTP requests, by method, route and status.
pub const METRIC_HTTP_REQUESTS: &str = "bolt_http_requests_total";

/// Events a stream reads from the log per step.
const STREAM_PAGE: usize = 1024;

/// The API router over a node's services: each route module gets only the service it serves.
pub fn router(services: &Services) -> Router {
    finish(
        node_routes(Arc::clone(&services.node))
            .merge(images::routes(Arc::clone(&services.images)))
            .merge(capsules::routes(Arc::clone(&services.capsules)))
            .merge(networks::routes(Arc::clone(&services.networks)))
            .merge(volumes::routes(Arc::clone(&services.volumes)))
            .merge(snapshots::routes(Arc::clone(&services.snapshots))),
    )
}

/// The router of the node's own routes alone (info, events, verify, stream, state, openapi,
/// metrics): an agent's log and state without its services.
pub fn node_router(node: Arc<Node>) -> Router {
    finish(node_routes(node))
}

/// The fallbacks and the request counter, around every route.
fn finish(routes: Router) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_requests))
}

fn node_routes(node: Arc<Node>) -> Router {
    Router::new()
        .route(PATH_INFO, get(info))
        .route(PATH_EVENTS, get(events))
        .route(PATH_VERIFY, get(verify))
        .route(PATH_STREAM, get(stream))
        .route(PATH_STATE, get(state))
        .route(PATH_STATE_HASH, get(state_hash))
        .route(PATH_OPENAPI, get(openapi))
        .route(PATH_METRICS, get(prometheus))
        .with_state(node)
}

/// The one error answer of every route: a status and [`ErrorBody`] (`{"error": "..."}`, plus
/// docker's `exit_code` when a capsule could not be started). Each service's error maps into
/// it in that service's route module; a state refusal maps once, by its kind.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// An answer with `status` and the message as it is.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                exit_code: None,
            },
        }
    }

    /// An answer with `status` and the first line of `message` (errors stay one line).
    pub fn line(status: StatusCode, message: &str) -> ApiError {
        ApiError::new(status, one_line(message))
    }

    /// The same answer carrying docker's exit code for a failed start.
    pub fn with_exit_code(mut self, exit_code: i32) -> ApiError {
        self.body.exit_code = Some(exit_code);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The status of a state refusal: not found 404, conflict 409, invalid 400.
pub fn refusal_status(e: &DecideError) -> StatusCode {
    match e.kind() {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Conflict => StatusCode::CONFLICT,
        Refusal::Invalid => StatusCode::BAD_REQUEST,
    }
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> ApiError {
        ApiError::line(refusal_status(&e), &e.to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        let status = match &e {
            NodeError::BeyondHead { .. } => StatusCode::NOT_FOUND,
            NodeError::Limit { .. } | NodeError::Filter(_) => StatusCode::BAD_REQUEST,
            NodeError::Decide(d) => refusal_status(d),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::line(StatusCode::BAD_REQUEST, &e.body_text())
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(e: WebSocketUpgradeRejection) -> ApiError {
        ApiError::new(e.status(), e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// A route's result.
pub type Res<T> = Result<T, ApiError>;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Run a blocking node method on the blocking pool.
async fn blocking<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ApiError> {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || f(&node))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

async fn info(State(node): State<Arc<Node>>) -> ApiResult<crate::wire::InfoView> {
    blocking(&node, Node::info).await.map(Json)
}

/// The filter of an events query, resolved on the node (names to ids).
async fn filter_of(node: &Arc<Node>, q: &EventsQuery) -> Result<EventFilter, ApiError> {
    let (origin, kind) = (q.origin.clone(), q.kind.clone());
    blocking(node, move |n| {
        n.event_filter(origin.as_deref(), kind.as_deref())
    })
    .await
}

/// The matching events as a JSON array; the cursor the scan reached and the log head in the
/// [`HEADER_CURSOR`] and [`HEADER_HEAD`] headers.
async fn events(
    State(node): State<Arc<Node>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let filter = filter_of(&node, &q).await?;
    let since = q.since.unwrap_or_default();
    let limit = q.limit.unwrap_or(MAX_EVENTS_PAGE);
    let page = blocking(&node, move |n| n.events_page(since, limit, &filter)).await?;
    Ok((
        [
            (HEADER_CURSOR, page.cursor.0.to_string()),
            (HEADER_HEAD, page.head.0.to_string()),
        ],
        Json(page.events),
    )
        .into_response())
}

async fn verify(State(node): State<Arc<Node>>) -> ApiResult<crate::wire::VerifyView> {
    blocking(&node, Node::verify).await.map(Json)
}

async fn state(
    State(node): State<Arc<Node>>,
    q: Result<Query<AtQuery>, QueryRejection>,
) -> ApiResult<crate::wire::StateView> {
    let Query(q) = q?;
    blocking(&node, move |n| n.state(q.at)).await.map(Json)
}

async fn state_hash(
    State(node): State<Arc<Node>>,
    q: Result<Query<AtQuery>, QueryRejection>,
) -> ApiResult<crate::wire::HashView> {
    let Query(q) = q?;
    blocking(&node, move |n| n.state_hash(q.at)).await.map(Json)
}

async fn stream(
    State(node): State<Arc<Node>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    // A bad filter is refused before anything else, with its own reason.
    let filter = filter_of(&node, &q).await?;
    let ws = ws?;
    let ticket = node.stream_ticket().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        )
    })?;
    let since = q.since.unwrap_or_default();
    Ok(ws.on_upgrade(move |socket| async move {
        follow(node, socket, since, filter).await;
        drop(ticket);
    }))
}

/// Send every event after `last` that passes `filter`, then each new one as it commits, until
/// the peer leaves or the agent shuts down (then: what is left, and a close frame). Each step
/// looks at a bounded number of events; `last` moves past non-matching ones too.
async fn follow(node: Arc<Node>, mut socket: WebSocket, mut last: Cursor, filter: EventFilter) {
    let filter = Arc::new(filter);
    let mut head = node.watch_head();
    let mut shutdown = node.watch_shutdown();
    loop {
        loop {
            let f = Arc::clone(&filter);
            let page = match blocking(&node, move |n| n.events_page(last, STREAM_PAGE, &f)).await {
                Ok(page) => page,
                Err(e) => {
                    close(&mut socket, close_code::ERROR, &e.body.error).await;
                    return;
                }
            };
            for ev in &page.events {
                let text = match serde_json::to_string(ev) {
                    Ok(t) => t,
                    Err(e) => {
                        close(&mut socket, close_code::ERROR, &e.to_string()).await;
                        return;
                    }
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            last = last.max(page.cursor);
            if !page.more() {
                break;
            }
        }
        if *shutdown.borrow() {
            close(&mut socket, close_code::AWAY, "the agent is stopping").await;
            return;
        }
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    close(&mut socket, close_code::AWAY, "the log is closed").await;
                    return;
                }
            }
            _ = shutdown.changed() => {}
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // The peer may be gone already; nothing more to tell it then.
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

async fn prometheus(State(node): State<Arc<Node>>) -> Response {
    match &node.options().metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn count_requests(req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(METRIC_HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    resp
}

/// The OpenAPI 3 document of every route.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = core_openapi_document();
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.extend(images::openapi_paths());
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(images::openapi_schemas());
    }
    capsules::merge_openapi(&mut doc);
    networks::merge_openapi(&mut doc);
    volumes::merge_openapi(&mut doc);
    snapshots::merge_openapi(&mut doc);
    doc
}

fn core_openapi_document() -> serde_json::Value {
    let cursor = |name: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "description": what,
               "schema": {"type": "integer", "format": "uint64", "minimum": 0}})
    };
    let ok = |what: &str, schema: &str| {
        json!({"description": what,
               "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
    };
    let err = |what: &str| {
        json!({"description": what,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let hash = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    let origin = json!({"name": "origin", "in": "query", "required": false,
        "description": "only events of this origin: a node id hex prefix (at least 4 digits) or a node name",
        "schema": {"type": "string"}});
    let kind = json!({"name": "kind", "in": "query", "required": false,
        "description": "only events of this kind: exact (`capsule.started`) or a prefix ending in `.` or `.*` (`cluster.*`)",
        "schema": {"type": "string", "example": "capsule.*"}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "bolt agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API of one Bolt node, served on its unix socket."
        },
        "paths": {
            PATH_INFO: {"get": {
                "operationId": "info", "summary": "The node, its log head and its state hash.",
                "responses": {"200": ok("node info", "Info"), "500": err("log failure")}
            }},
            PATH_EVENTS: {"get": {
                "operationId": "events",
                "summary": format!("Events after a cursor that pass the filter, in arrival order; one request looks at no more than {MAX_EVENTS_SCAN} events and says in `{HEADER_CURSOR}` how far it got."),
                "parameters": [
                    cursor("since", "only events after this cursor (default 0)"),
                    {"name": "limit", "in": "query", "required": false,
                     "description": "at most this many events",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_PAGE}},
                    origin.clone(),
                    kind.clone()
                ],
                "responses": {
                    "200": {"description": "events",
                        "headers": {
                            HEADER_CURSOR: {"description": "the cursor the scan reached: continue after it",
                                            "schema": {"type": "integer"}},
                            HEADER_HEAD: {"description": "the log head when the page was read",
                                          "schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema":
                        {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}}},
                    "400": err("bad query"), "500": err("log failure")
                }
            }},
            PATH_VERIFY: {"get": {
                "operationId": "verifyEvents",
                "summary": "Check every chain link and signature; faults come with ok=false.",
                "responses": {"200": ok("verify report", "VerifyReport"), "500": err("log failure")}
            }},
            PATH_STREAM: {"get": {
                "operationId": "streamEvents",
                "summary": "WebSocket: every event after `since` as a JSON text message (an Event), then live appends.",
                "parameters": [cursor("since", "resume after this cursor (default 0)"), origin, kind],
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": err("not a WebSocket upgrade or bad query"),
                              "503": err("the agent is shutting down")}
            }},
            PATH_STATE: {"get": {
                "operationId": "state", "summary": "The live state, or the state right after a cursor.",
                "parameters": [cursor("at", "time travel to this cursor")],
                "responses": {"200": ok("state", "State"), "400": err("bad query"),
                              "404": err("cursor beyond the log head"), "500": err("log failure")}
            }},
            PATH_STATE_HASH: {"get": {
                "operationId": "stateHash", "summary": "The hash of the live state or of the state at a cursor.",
                "parameters": [cursor("at", "time travel to this cursor")],
                "responses": {"200": ok("state hash", "StateHash"), "400": err("bad query"),
                              "404": err("cursor beyond the log head"), "500": err("log failure")}
            }},
            PATH_OPENAPI: {"get": {
                "operationId": "openapi", "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            PATH_METRICS: {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics (text exposition format).",
                "responses": {"200": {"description": "metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "503": err("no metrics recorder")}
            }}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Info": {"type": "object",
                     "required": ["node_id", "name", "version", "head", "events", "state_cursor", "state_hash", "uptime_s"],
                     "properties": {
                        "node_id": hash, "name": {"type": "string"}, "version": {"type": "string"},
                        "head": {"type": "integer"}, "events": {"type": "integer"},
                        "state_cursor": {"type": "integer"}, "state_hash": hash,
                        "uptime_s": {"type": "integer"}}},
            "Event": {"type": "object",
                      "required": ["cursor", "origin", "seq", "hlc", "schema", "kind", "hash", "prev", "payload"],
                      "properties": {
                        "cursor": {"type": "integer"}, "origin": hash, "seq": {"type": "integer"},
                        "hlc": {"type": "integer", "description": "milliseconds << 16 | logical counter"},
                        "schema": {"type": "integer"}, "kind": {"type": "string", "example": "node.started"},
                        "hash": hash, "prev": hash,
                        "payload": {"type": "object", "description": "{category: {variant: fields}}"}}},
            "VerifyReport": {"type": "object", "required": ["ok", "events", "origins", "faults"],
                             "properties": {"ok": {"type": "boolean"}, "events": {"type": "integer"},
                                            "origins": {"type": "integer"},
                                            "faults": {"type": "array", "items": {"type": "string"}}}},
            "State": {"type": "object", "required": ["cursor", "hash", "state"],
                      "properties": {"cursor": {"type": "integer"}, "hash": hash,
                                     "state": {"type": "object"}}},
            "StateHash": {"type": "object", "required": ["cursor", "hash"],
                          "properties": {"cursor": {"type": "integer"}, "hash": hash}}
        }}
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
