//! The image routes of the `/v1` API: pull, list, remove, tag, push, prune, import, export.
//!
//! Long operations (pull, push, import) answer `200` with `application/x-ndjson`, sent as it
//! happens: `{"progress": {...}}` lines, then one `{"result": ...}` or `{"error": "..."}` line.
//! The operation runs to its end even when the client goes away (a pull is then still
//! recorded). A request that is refused before the operation starts (bad body, bad reference,
//! no store) gets a plain JSON error with a 4xx/5xx status, like every other route.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bolt_capsule::image::{ImageError, ImageRef, ProgressFn};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::api::{refusal_status, ApiError, Res};
use crate::service::images::{parse_format, parse_platform, progress_channel, Images, ImagesError};
use crate::wire::images::{
    ExportRequest, ExportView, ImageView, ImportRequest, ProgressView, PruneView, PullRequest,
    PushRequest, RefView, StreamLine, TagRequest, NDJSON, PATH_EXPORT, PATH_IMAGE, PATH_IMAGES,
    PATH_IMPORT, PATH_PRUNE, PATH_PULL, PATH_PUSH, PATH_TAG,
};

/// The image routes, merged into the main router (which adds the fallbacks and the request
/// counter).
pub fn routes<S>(images: Arc<Images>) -> Router<S> {
    Router::new()
        .route(PATH_IMAGES, get(list))
        .route(PATH_IMAGE, delete(remove))
        .route(PATH_PULL, post(pull))
        .route(PATH_TAG, post(tag))
        .route(PATH_PUSH, post(push))
        .route(PATH_PRUNE, post(prune))
        .route(PATH_IMPORT, post(import))
        .route(PATH_EXPORT, post(export))
        .with_state(images)
}

/// The status that fits an image error.
pub fn status_of(e: &ImagesError) -> StatusCode {
    match e {
        ImagesError::Platform(_) | ImagesError::Format(_) | ImagesError::RelativePath { .. } => {
            StatusCode::BAD_REQUEST
        }
        ImagesError::Decide(d) => refusal_status(d),
        ImagesError::InUse { .. } => StatusCode::CONFLICT,
        ImagesError::Store(e) => match e {
            ImageError::Ref(_) | ImageError::Layout(_) => StatusCode::BAD_REQUEST,
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::Registry(_) => StatusCode::BAD_GATEWAY,
            ImageError::Manifest(_)
            | ImageError::BlobDigest { .. }
            | ImageError::BlobSize { .. }
            | ImageError::DiffId { .. }
            | ImageError::Unpack { .. }
            | ImageError::NestedIndex(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as one line (causes joined, no newlines).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<ImagesError> for ApiError {
    fn from(e: ImagesError) -> ApiError {
        ApiError::new(status_of(&e), one_line(&e))
    }
}

fn check_ref(reference: &str) -> Res<()> {
    ImageRef::parse(reference)
        .map(|_| ())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, one_line(&e)))
}

/// Run `op` in its own task and stream its progress, then its outcome, as JSON lines.
fn streamed<T, F>(what: String, op: impl FnOnce(ProgressFn) -> F) -> Response
where
    T: Serialize + Send + 'static,
    F: Future<Output = Result<T, ImagesError>> + Send + 'static,
{
    let (progress, rx) = progress_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let fut = op(progress);
    let what_task = what.clone();
    tokio::spawn(async move {
        let res = fut.await;
        if let Err(e) = &res {
            tracing::warn!("{what_task}: {e}");
        }
        let _ = done_tx.send(res);
    });
    struct Pump<T> {
        rx: mpsc::UnboundedReceiver<ProgressView>,
        done: Option<oneshot::Receiver<Result<T, ImagesError>>>,
    }
    let line = |l: &StreamLine<T>| -> Bytes {
        let mut v = serde_json::to_vec(l).unwrap_or_else(|e| {
            // Views are plain data; this does not happen, but never send a broken line.
            serde_json::to_vec(&StreamLine::<()>::Error(format!("encode answer: {e}")))
                .unwrap_or_default()
        });
        v.push(b'\n');
        Bytes::from(v)
    };
    let stream = futures_util::stream::unfold(
        Pump {
            rx,
            done: Some(done_rx),
        },
        move |mut pump| {
            let what = what.clone();
            async move {
                let done = pump.done.as_mut()?;
                tokio::select! {
                    biased;
                    Some(p) = pump.rx.recv() => {
                        Some((Ok::<_, std::convert::Infallible>(line(&StreamLine::Progress(p))), pump))
                    }
                    res = done => {
                        pump.done = None;
                        let mut out = Vec::new();
                        while let Ok(p) = pump.rx.try_recv() {
                            out.extend_from_slice(&line(&StreamLine::Progress(p)));
                        }
                        let last = match res {
                            Ok(Ok(v)) => StreamLine::Result(v),
                            Ok(Err(e)) => StreamLine::Error(format!("{what}: {}", one_line(&e))),
                            Err(_) => StreamLine::Error(format!("{what}: the operation was dropped")),
                        };
                        out.extend_from_slice(&line(&last));
                        Some((Ok(Bytes::from(out)), pump))
                    }
                }
            }
        },
    );
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response()
}

type Imgs = State<Arc<Images>>;

async fn pull(
    State(images): Imgs,
    body: Result<Json<PullRequest>, JsonRejection>,
) -> Res<Response> {
    let Json(req) = body?;
    check_ref(&req.reference)?;
    let platform = req.platform.as_deref().map(parse_platform).transpose()?;
    let what = format!("pull {}", req.reference);
    Ok(streamed(what, move |progress| async move {
        images
            .pull_view(&req.reference, platform, Some(progress))
            .await
    }))
}

async fn push(
    State(images): Imgs,
    body: Result<Json<PushRequest>, JsonRejection>,
) -> Res<Response> {
    let Json(req) = body?;
    check_ref(&req.reference)?;
    images
        .store()
        .require(&req.reference)
        .await
        .map_err(ImagesError::from)?;
    let what = format!("push {}", req.reference);
    Ok(streamed(what, move |progress| async move {
        images.push(&req.reference, Some(progress)).await
    }))
}

async fn import(
    State(images): Imgs,
    body: Result<Json<ImportRequest>, JsonRejection>,
) -> Res<Response> {
    let Json(req) = body?;
    if let Some(r) = &req.reference {
        check_ref(r)?;
    }
    if !req.path.is_absolute() {
        return Err(ImagesError::RelativePath { path: req.path }.into());
    }
    let what = format!("import {}", req.path.display());
    Ok(streamed(what, move |progress| async move {
        images
            .import(&req.path, req.reference, Some(progress))
            .await
    }))
}

async fn list(State(images): Imgs) -> Res<Json<Vec<ImageView>>> {
    Ok(Json(images.list().await?))
}

async fn remove(State(images): Imgs, Path(reference): Path<String>) -> Res<Json<RefView>> {
    check_ref(&reference)?;
    Ok(Json(images.remove(&reference).await?))
}

async fn tag(
    State(images): Imgs,
    body: Result<Json<TagRequest>, JsonRejection>,
) -> Res<Json<RefView>> {
    let Json(req) = body?;
    check_ref(&req.source)?;
    check_ref(&req.target)?;
    Ok(Json(images.tag(&req.source, &req.target).await?))
}

async fn prune(State(images): Imgs) -> Res<Json<PruneView>> {
    Ok(Json(images.prune().await?))
}

async fn export(
    State(images): Imgs,
    body: Result<Json<ExportRequest>, JsonRejection>,
) -> Res<Json<ExportView>> {
    let Json(req) = body?;
    if req.references.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no image to export"));
    }
    for r in &req.references {
        check_ref(r)?;
    }
    let format = parse_format(req.format.as_deref())?;
    Ok(Json(
        images.export(&req.references, &req.path, format).await?,
    ))
}

/// The OpenAPI path items of the image routes (merged into the document's `paths`).
pub fn openapi_paths() -> Map<String, Value> {
    let ok = |what: &str, schema: Value| json!({"description": what, "content": {"application/json": {"schema": schema}}});
    let err = |what: &str| {
        json!({"description": what,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let stream = |what: &str, result: Value| {
        json!({"description": format!("{what}: JSON lines, sent as it happens: {{\"progress\": ImageProgress}} lines, then {{\"result\": ...}} or {{\"error\": \"...\"}}"),
               "content": {NDJSON: {"schema": {"type": "object", "properties": {
                   "progress": {"$ref": "#/components/schemas/ImageProgress"},
                   "result": result,
                   "error": {"type": "string"}}}}}})
    };
    let body = |props: Value, required: Value| {
        json!({"required": true, "content": {"application/json": {"schema":
            {"type": "object", "required": required, "properties": props}}}})
    };
    let string = json!({"type": "string"});
    let mut m = Map::new();
    m.insert(PATH_IMAGES.into(), json!({"get": {
        "operationId": "listImages", "summary": "Every image in this node's store, by reference.",
        "responses": {"200": ok("images", json!({"type": "array", "items": schema("Image")})),
                      "503": err("no image store")}
    }}));
    m.insert(PATH_IMAGE.into(), json!({"delete": {
        "operationId": "removeImage",
        "summary": "Forget a reference (rmi); records image.removed. Blobs stay until a prune.",
        "parameters": [{"name": "reference", "in": "path", "required": true,
                        "description": "the reference, percent-encoded as one segment", "schema": string}],
        "responses": {"200": ok("removed", schema("ImageRef")), "400": err("bad reference"),
                      "404": err("no such image"), "409": err("used by a capsule of this node")}
    }}));
    m.insert(PATH_PULL.into(), json!({"post": {
        "operationId": "pullImage",
        "summary": "Pull from a registry and unpack; records image.pulled.",
        "requestBody": body(json!({"reference": string, "platform": {"type": "string", "example": "linux/amd64"}}), json!(["reference"])),
        "responses": {"200": stream("progress, then the pull", schema("Pull")),
                      "400": err("bad request"), "503": err("no image store")}
    }}));
    m.insert(PATH_TAG.into(), json!({"post": {
        "operationId": "tagImage", "summary": "Point a new reference at a stored image; records image.tagged.",
        "requestBody": body(json!({"source": string, "target": string}), json!(["source", "target"])),
        "responses": {"200": ok("tagged", schema("ImageRef")), "400": err("bad reference"),
                      "404": err("no such image")}
    }}));
    m.insert(PATH_PUSH.into(), json!({"post": {
        "operationId": "pushImage", "summary": "Push a stored image to the registry its reference names.",
        "requestBody": body(json!({"reference": string}), json!(["reference"])),
        "responses": {"200": stream("progress, then the push", schema("Push")),
                      "400": err("bad reference"), "404": err("no such image")}
    }}));
    m.insert(PATH_PRUNE.into(), json!({"post": {
        "operationId": "pruneImages", "summary": "Remove blobs and unpacked layers no reference uses.",
        "responses": {"200": ok("pruned", schema("Prune")),
                      "409": err("a capsule uses an image no reference names")}
    }}));
    m.insert(PATH_IMPORT.into(), json!({"post": {
        "operationId": "importImages",
        "summary": "Import an OCI layout (directory or tar) or a docker-archive tar from a path on the agent's host; records image.pulled.",
        "requestBody": body(json!({"path": string, "reference": string}), json!(["path"])),
        "responses": {"200": stream("progress, then the imported images", json!({"type": "array", "items": schema("Pull")})),
                      "400": err("bad request")}
    }}));
    m.insert(PATH_EXPORT.into(), json!({"post": {
        "operationId": "exportImages",
        "summary": "Write stored images as an OCI layout (directory or tar) to a new path on the agent's host.",
        "requestBody": body(json!({"references": {"type": "array", "items": string}, "path": string,
                                   "format": {"type": "string", "enum": ["oci-tar", "oci-dir"]}}),
                            json!(["references", "path"])),
        "responses": {"200": ok("exported", schema("Export")), "400": err("bad request"),
                      "404": err("no such image")}
    }}));
    m
}

/// The OpenAPI schemas of the image routes (merged into `components.schemas`).
pub fn openapi_schemas() -> Map<String, Value> {
    let digest = json!({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"});
    let digests = json!({"type": "array", "items": digest});
    let int = json!({"type": "integer"});
    let string = json!({"type": "string"});
    let mut m = Map::new();
    m.insert("Image".into(), json!({"type": "object",
        "required": ["reference", "repository", "digest", "config_digest", "size", "os", "architecture", "stored_at_ms", "layers"],
        "properties": {
            "reference": string, "repository": string, "tag": {"type": "string", "nullable": true},
            "digest": digest, "config_digest": digest, "index_digest": {"type": "string", "nullable": true},
            "size": int, "os": string, "architecture": string,
            "created": {"type": "string", "nullable": true, "description": "from the image config (RFC 3339)"},
            "stored_at_ms": int,
            "layers": {"type": "array", "items": {"type": "object", "properties": {
                "digest": digest, "diff_id": digest, "size": int, "media_type": string}}}}}));
    m.insert(
        "Pull".into(),
        json!({"type": "object",
        "required": ["image", "fetched", "reused", "unpacked"],
        "properties": {"image": {"$ref": "#/components/schemas/Image"},
                       "fetched": digests, "reused": digests, "unpacked": digests,
                       "cursor": {"type": "integer", "nullable": true}}}),
    );
    m.insert(
        "ImageRef".into(),
        json!({"type": "object", "required": ["reference", "digest"],
        "properties": {"reference": string, "digest": digest,
                       "cursor": {"type": "integer", "nullable": true}}}),
    );
    m.insert("Push".into(), json!({"type": "object", "required": ["reference", "digest", "uploaded", "skipped"],
        "properties": {"reference": string, "digest": digest, "uploaded": digests, "skipped": digests}}));
    m.insert(
        "Prune".into(),
        json!({"type": "object", "required": ["blobs", "layers", "blob_bytes"],
        "properties": {"blobs": digests, "layers": digests, "blob_bytes": int}}),
    );
    m.insert(
        "Export".into(),
        json!({"type": "object", "required": ["path", "format", "references"],
        "properties": {"path": string, "format": string,
                       "references": {"type": "array", "items": string}}}),
    );
    m.insert("ImageProgress".into(), json!({"type": "object", "required": ["digest", "phase", "done"],
        "properties": {"digest": digest,
                       "phase": {"type": "string", "enum": ["fetching", "fetched", "reused", "unpacking", "unpacked", "pushing", "pushed"]},
                       "done": int, "total": {"type": "integer", "nullable": true}}}));
    m
}
