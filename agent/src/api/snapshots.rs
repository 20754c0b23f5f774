//! `/v1/snapshots...` (btrfs snapshots of capsule layers and volumes) and `/v1/commit` (a
//! capsule's changes as a new image): thin handlers over [`Snapshots`].

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bolt_capsule::storage::SnapshotError;
use serde_json::json;

use crate::api::{refusal_status, ApiError, Res};
use crate::service::capsules::CapsuleError;
use crate::service::snapshots::{Snapshots, SnapshotsError, TargetArg};
use crate::wire::snapshots::{
    CommitRequest, CommitView, CreateSnapshotRequest, ListQuery, SnapshotView, PATH_COMMIT,
    PATH_SNAPSHOT, PATH_SNAPSHOTS, PATH_SNAPSHOT_RESTORE,
};

/// The status that fits a snapshot or commit error.
pub fn status_of(e: &SnapshotsError) -> StatusCode {
    match e {
        SnapshotsError::BadTarget(_) | SnapshotsError::BadChange(_) => StatusCode::BAD_REQUEST,
        SnapshotsError::NoVolume(_)
        | SnapshotsError::NoBase { .. }
        | SnapshotsError::NoLayer(_) => StatusCode::NOT_FOUND,
        SnapshotsError::Capsule(c) => match c {
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::Ambiguous(_) | CapsuleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CapsuleError::Conflict(_) => StatusCode::CONFLICT,
            CapsuleError::Decide(d) => refusal_status(d),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        SnapshotsError::Decide(d) => refusal_status(d),
        SnapshotsError::Storage(s) => match s {
            SnapshotError::BadName(_) | SnapshotError::BadTarget(_) => StatusCode::BAD_REQUEST,
            SnapshotError::NoTarget(_) | SnapshotError::NotFound { .. } => StatusCode::NOT_FOUND,
            SnapshotError::NeedBtrfs { .. }
            | SnapshotError::NeedBtrfsProgs { .. }
            | SnapshotError::NotSubvolume { .. }
            | SnapshotError::Exists { .. }
            | SnapshotError::InUse(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        SnapshotsError::Images(i) => super::images::status_of(i),
        SnapshotsError::Task(_) | SnapshotsError::Pause { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<SnapshotsError> for ApiError {
    fn from(e: SnapshotsError) -> Self {
        ApiError::line(status_of(&e), &e.to_string())
    }
}

fn target(s: &str) -> Res<TargetArg> {
    Ok(TargetArg::parse(s)?)
}

/// The snapshot and commit routes, merged into the API router.
pub fn routes<S>(snapshots: Arc<Snapshots>) -> Router<S> {
    Router::new()
        .route(PATH_SNAPSHOTS, get(list).post(create))
        .route(PATH_SNAPSHOT, delete(remove))
        .route(PATH_SNAPSHOT_RESTORE, post(restore))
        .route(PATH_COMMIT, post(commit))
        .with_state(snapshots)
}

type Snaps = State<Arc<Snapshots>>;

async fn list(
    State(snaps): Snaps,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Res<Json<Vec<SnapshotView>>> {
    let Query(q) = q?;
    let t = q.target.as_deref().map(target).transpose()?;
    Ok(Json(snaps.list(t).await?))
}

async fn create(
    State(snaps): Snaps,
    body: Result<Json<CreateSnapshotRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<SnapshotView>)> {
    let Json(req) = body?;
    let t = target(&req.target)?;
    let v = snaps.create(&t, &req.name).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn restore(
    State(snaps): Snaps,
    Path((t, name)): Path<(String, String)>,
) -> Res<Json<serde_json::Value>> {
    let arg = target(&t)?;
    snaps.restore(&arg, &name).await?;
    Ok(Json(json!({ "restored": name, "target": t })))
}

async fn remove(
    State(snaps): Snaps,
    Path((t, name)): Path<(String, String)>,
) -> Res<Json<serde_json::Value>> {
    let arg = target(&t)?;
    snaps.remove(&arg, &name).await?;
    Ok(Json(json!({ "removed": name, "target": t })))
}

async fn commit(
    State(snaps): Snaps,
    body: Result<Json<CommitRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<CommitView>)> {
    let Json(req) = body?;
    let v = snaps.commit(req).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Adds the snapshot and commit routes and schemas to the OpenAPI document.
pub fn merge_openapi(doc: &mut serde_json::Value) {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SnapshotError"}}}});
    let one = json!({"description": "the snapshot", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Snapshot"}}}});
    let params = json!([
        {"name": "target", "in": "path", "required": true, "description": "capsule:NAME or volume:NAME", "schema": {"type": "string"}},
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
    ]);
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.insert(
            PATH_SNAPSHOTS.into(),
            json!({
                "get": {"operationId": "listSnapshots", "summary": "Snapshots in the state (one target's with ?target=capsule:NAME or volume:NAME), oldest first. Needs the agent root on btrfs.",
                    "parameters": [{"name": "target", "in": "query", "required": false, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "snapshots", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Snapshot"}}}}},
                        "404": err("no such capsule or volume"), "409": err("snapshots need btrfs")}},
                "post": {"operationId": "createSnapshot", "summary": "Take a read-only btrfs snapshot of a capsule's writable layer or of a volume (snapshot.created).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSnapshot"}}}},
                    "responses": {"201": one, "400": err("bad target or name"), "404": err("no such capsule or volume"), "409": err("name taken, or snapshots need btrfs")}}
            }),
        );
        paths.insert(
            PATH_SNAPSHOT.into(),
            json!({
                "delete": {"operationId": "removeSnapshot", "summary": "Delete a snapshot (snapshot.removed).", "parameters": params.clone(),
                    "responses": {"200": {"description": "{\"removed\": name, \"target\": target}"}, "404": err("no such snapshot"), "409": err("snapshots need btrfs")}}
            }),
        );
        paths.insert(
            PATH_SNAPSHOT_RESTORE.into(),
            json!({
                "post": {"operationId": "restoreSnapshot", "summary": "Replace the target's content with the snapshot's (snapshot.restored); refused while the capsule runs or a running capsule mounts the volume.", "parameters": params,
                    "responses": {"200": {"description": "{\"restored\": name, \"target\": target}"}, "404": err("no such snapshot"), "409": err("in use, or snapshots need btrfs")}}
            }),
        );
        paths.insert(
            PATH_COMMIT.into(),
            json!({
                "post": {"operationId": "commitCapsule", "summary": "Make a new image from a capsule's writable layer on top of its image (recorded as image.pulled).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Commit"}}}},
                    "responses": {"201": {"description": "{\"capsule\": id, \"diff_id\": ..., \"image\": the stored image, \"paused\": bool, \"note\": why a running capsule was not paused (rootless)}"},
                        "400": err("bad change"), "404": err("no such capsule, or its image is gone"), "500": err("the capsule could not be paused")}}
            }),
        );
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        schemas.insert("SnapshotError".into(), json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}));
        schemas.insert(
            "CreateSnapshot".into(),
            json!({"type": "object", "required": ["target", "name"], "properties": {
                "target": {"type": "string", "description": "capsule:NAME or volume:NAME"},
                "name": {"type": "string", "description": "[A-Za-z0-9][A-Za-z0-9_.-]*, up to 200"}}}),
        );
        schemas.insert("Snapshot".into(), json!({"type": "object", "required": ["target_kind", "target", "target_name", "name", "created_ms", "restores", "node", "path"], "properties": {
            "target_kind": {"type": "string", "enum": ["capsule", "volume"]}, "target": {"type": "string"},
            "target_name": {"type": "string"}, "name": {"type": "string"},
            "created_ms": {"type": "integer"}, "restores": {"type": "integer"},
            "restored_ms": {"type": "integer", "nullable": true}, "node": {"type": "string"}, "path": {"type": "string"}}}));
        schemas.insert("Commit".into(), json!({"type": "object", "required": ["capsule", "reference"], "properties": {
            "capsule": {"type": "string"}, "reference": {"type": "string"},
            "comment": {"type": "string", "nullable": true}, "author": {"type": "string", "nullable": true},
            "changes": {"type": "array", "items": {"type": "string"}, "description": "CMD, ENTRYPOINT or ENV instructions"},
            "pause": {"type": "boolean", "default": true, "description": "freeze a running capsule's cgroup while its layer is read"}}}));
    }
}
