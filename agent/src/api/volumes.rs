//! `/v1/volumes...`: create, list, inspect, remove and prune named volumes: thin handlers over
//! [`Volumes`], each change recorded as a `volume.created` / `volume.removed` event.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bolt_capsule::storage::{PruneReport, Volume, VolumeError};
use serde_json::json;

use crate::api::{ApiError, Res};
use crate::service::volumes::{Volumes, VolumesError};
use crate::wire::volumes::{
    CreateVolumeRequest, PruneQuery, PATH_VOLUME, PATH_VOLUMES, PATH_VOLUMES_PRUNE,
};

impl From<VolumesError> for ApiError {
    fn from(e: VolumesError) -> Self {
        match e {
            VolumesError::Decide(d) => d.into(),
            VolumesError::Store(v) => {
                let status = match &v {
                    VolumeError::BadName(_) => StatusCode::BAD_REQUEST,
                    VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
                    VolumeError::Exists(_) | VolumeError::InUse(_) => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::line(status, &v.to_string())
            }
            other => ApiError::line(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
        }
    }
}

/// The volume routes, merged into the API router.
pub fn routes<S>(volumes: Arc<Volumes>) -> Router<S> {
    Router::new()
        .route(PATH_VOLUMES, get(list).post(create))
        .route(PATH_VOLUMES_PRUNE, post(prune))
        .route(PATH_VOLUME, get(inspect).delete(remove))
        .with_state(volumes)
}

type Vols = State<Arc<Volumes>>;

async fn list(State(v): Vols) -> Res<Json<Vec<Volume>>> {
    Ok(Json(v.list().await?))
}

async fn inspect(State(v): Vols, Path(name): Path<String>) -> Res<Json<Volume>> {
    Ok(Json(v.inspect(&name).await?))
}

async fn create(
    State(v): Vols,
    body: Result<Json<CreateVolumeRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<Volume>)> {
    let Json(req) = body?;
    Ok((
        StatusCode::CREATED,
        Json(v.create(&req.name, req.labels).await?),
    ))
}

async fn remove(State(v): Vols, Path(name): Path<String>) -> Res<Json<serde_json::Value>> {
    v.remove(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

async fn prune(
    State(v): Vols,
    q: Result<Query<PruneQuery>, QueryRejection>,
) -> Res<Json<PruneReport>> {
    let Query(q) = q?;
    Ok(Json(v.prune(q.all.unwrap_or(false)).await?))
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
