//! `/v1/volumes...`: create, list, inspect, remove and prune named volumes (the storage
//! library's [`VolumeStore`](bolt_capsule::storage::VolumeStore)), each change recorded as a
//! `volume.created` / `volume.removed` event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bolt_capsule::storage::{CreateOptions, PruneReport, Volume, VolumeError};
use bolt_events::Payload;
use bolt_state::{decide, CapsuleStatus, Command, DecideError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::node::Node;
use crate::service::capsules::{one_line, CapsuleError, Capsules};

/// `GET` (list) and `POST` (create) volumes.
pub const PATH_VOLUMES: &str = "/v1/volumes";
/// `GET` (inspect) and `DELETE` (remove) one volume.
pub const PATH_VOLUME: &str = "/v1/volumes/{name}";
/// `POST`: remove unused volumes.
pub const PATH_VOLUMES_PRUNE: &str = "/v1/volumes/prune";

/// `POST /v1/volumes` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolumeRequest {
    /// Name.
    pub name: String,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/volumes/prune` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneQuery {
    /// Remove unused named volumes too (default: anonymous ones only).
    pub all: Option<bool>,
}

/// An error answer: status and a one-line message.
#[derive(Debug)]
pub struct VolumeApiError {
    status: StatusCode,
    error: String,
}

impl VolumeApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: one_line(&error.into()),
        }
    }
}

impl From<VolumeError> for VolumeApiError {
    fn from(e: VolumeError) -> Self {
        let status = match &e {
            VolumeError::BadName(_) => StatusCode::BAD_REQUEST,
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeError::Exists(_) | VolumeError::InUse(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<DecideError> for VolumeApiError {
    fn from(e: DecideError) -> Self {
        let status = match &e {
            DecideError::VolumeExists(_) | DecideError::VolumeInUse { .. } => StatusCode::CONFLICT,
            DecideError::UnknownVolume(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.to_string())
    }
}

impl From<CapsuleError> for VolumeApiError {
    fn from(e: CapsuleError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<JsonRejection> for VolumeApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<QueryRejection> for VolumeApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl IntoResponse for VolumeApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error }))).into_response()
    }
}

type Res<T> = Result<T, VolumeApiError>;

fn manager(node: &Node) -> Res<Arc<Capsules>> {
    node.capsules.get().cloned().ok_or_else(|| {
        VolumeApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "volumes are not available in this agent",
        )
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Res<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumeApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The volume routes, merged into the API router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(PATH_VOLUMES, get(list).post(create))
        .route(PATH_VOLUMES_PRUNE, post(prune))
        .route(PATH_VOLUME, get(inspect).delete(remove))
}

/// The volume names that live (not removed) capsules mount: the source of each `-v` spec.
pub fn in_use(state: &bolt_state::State) -> BTreeSet<String> {
    state
        .capsules
        .values()
        .filter(|c| c.status != CapsuleStatus::Removed)
        .flat_map(|c| c.spec.mounts.iter())
        .filter_map(|m| m.split(':').next())
        .filter(|s| !s.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

async fn list(State(node): State<Arc<Node>>) -> Res<Json<Vec<Volume>>> {
    let store = manager(&node)?.storage().volumes();
    Ok(Json(blocking(move || store.list()).await??))
}

async fn inspect(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Res<Json<Volume>> {
    let store = manager(&node)?.storage().volumes();
    Ok(Json(blocking(move || store.get(&name)).await??))
}

async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateVolumeRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<Volume>)> {
    let Json(req) = body?;
    let caps = manager(&node)?;
    let store = caps.storage().volumes();
    let _ops = caps.lock_ops().await;
    let cmd = Command::CreateVolume {
        name: req.name.clone(),
        driver: bolt_capsule::storage::volume::DRIVER.to_owned(),
        labels: req.labels.clone(),
    };
    let payloads = caps.state(move |s| decide(s, cmd)).await??;
    let opts = CreateOptions {
        labels: req.labels,
        owner: None,
    };
    let name = req.name.clone();
    let vol = {
        let store = store.clone();
        blocking(move || store.create(&name, &opts)).await??
    };
    if let Err(e) = caps.record(payloads).await {
        let name = req.name;
        let _ = blocking(move || store.remove(&name, &BTreeSet::new())).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(vol)))
}

async fn remove(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Res<Json<serde_json::Value>> {
    let caps = manager(&node)?;
    let store = caps.storage().volumes();
    let _ops = caps.lock_ops().await;
    let n = name.clone();
    let (used, payloads) = caps
        .state(move |s| -> Result<_, DecideError> {
            let used = in_use(s);
            let payloads = if s.volumes.contains_key(&n) {
                decide(s, Command::RemoveVolume { name: n })?
            } else {
                Vec::new()
            };
            Ok((used, payloads))
        })
        .await??;
    let n = name.clone();
    blocking(move || store.remove(&n, &used)).await??;
    caps.record(payloads).await?;
    Ok(Json(json!({ "removed": name })))
}

async fn prune(
    State(node): State<Arc<Node>>,
    q: Result<Query<PruneQuery>, QueryRejection>,
) -> Res<Json<PruneReport>> {
    let Query(q) = q?;
    let caps = manager(&node)?;
    let store = caps.storage().volumes();
    let _ops = caps.lock_ops().await;
    let used = caps.state(in_use).await?;
    let all = q.all.unwrap_or(false);
    let report = blocking(move || store.prune(&used, all)).await??;
    let removed = report.removed.clone();
    let payloads = caps
        .state(move |s| {
            removed
                .into_iter()
                .filter(|n| s.volumes.contains_key(n))
                .map(|name| Payload::Volume(bolt_events::payload::VolumeEvent::Removed { name }))
                .collect::<Vec<_>>()
        })
        .await?;
    caps.record(payloads).await?;
    Ok(Json(report))
}

/// Adds the volume routes and schemas to the OpenAPI document.
pub fn merge_openapi(doc: &mut serde_json::Value) {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VolumeError"}}}});
    let one = json!({"description": "the volume", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Volume"}}}});
    let name =
        json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.insert(
            PATH_VOLUMES.into(),
            json!({
                "get": {"operationId": "listVolumes", "summary": "The volumes on disk.",
                    "responses": {"200": {"description": "volumes", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Volume"}}}}}}},
                "post": {"operationId": "createVolume", "summary": "Create a named volume (volume.created).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateVolume"}}}},
                    "responses": {"201": one.clone(), "400": err("bad name"), "409": err("name taken")}}
            }),
        );
        paths.insert(
            PATH_VOLUMES_PRUNE.into(),
            json!({
                "post": {"operationId": "pruneVolumes", "summary": "Remove unused volumes (anonymous ones; named ones too with all=true); a volume.removed each.",
                    "parameters": [{"name": "all", "in": "query", "required": false, "schema": {"type": "boolean"}}],
                    "responses": {"200": {"description": "{\"removed\": [names], \"bytes\": N}"}}}
            }),
        );
        paths.insert(
            PATH_VOLUME.into(),
            json!({
                "get": {"operationId": "inspectVolume", "summary": "One volume.", "parameters": name.clone(),
                    "responses": {"200": one, "404": err("no such volume")}},
                "delete": {"operationId": "removeVolume", "summary": "Remove a volume no live capsule mounts (volume.removed).", "parameters": name,
                    "responses": {"200": {"description": "removed: {\"removed\": name}"}, "404": err("no such volume"), "409": err("a capsule uses it")}}
            }),
        );
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        schemas.insert("VolumeError".into(), json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}));
        schemas.insert(
            "CreateVolume".into(),
            json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}),
        );
        schemas.insert("Volume".into(), json!({"type": "object", "required": ["name", "driver", "mountpoint", "labels", "created_ms", "anonymous", "subvolume"], "properties": {
            "name": {"type": "string"}, "driver": {"type": "string"}, "mountpoint": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_ms": {"type": "integer"}, "owner": {"type": "object", "nullable": true},
            "anonymous": {"type": "boolean"}, "subvolume": {"type": "boolean"}}}));
    }
}
