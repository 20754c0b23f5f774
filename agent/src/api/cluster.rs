//! `/v1/cluster...` and `/v1/nodes`: thin handlers over [`Cluster`]: `bolt cluster init`,
//! `bolt cluster token`, `bolt cluster show` and `bolt node ls`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::{ApiError, Res};
use crate::node::cluster::{Cluster, ClusterError};
use crate::wire::cluster::{
    ClusterInitRequest, ClusterView, NodeView, TokenRequest, TokenView, PATH_CLUSTER,
    PATH_CLUSTER_INIT, PATH_CLUSTER_LEAVE, PATH_CLUSTER_TOKEN, PATH_NODE, PATH_NODES,
};

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::AlreadyMember => StatusCode::CONFLICT,
            ClusterError::NotMember | ClusterError::NoCa | ClusterError::NoListen => {
                StatusCode::CONFLICT
            }
            ClusterError::BadTtl | ClusterError::Token(_) => StatusCode::BAD_REQUEST,
            ClusterError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ClusterError::Ambiguous(_) | ClusterError::CaHolderLeaves => StatusCode::CONFLICT,
            ClusterError::Node(crate::node::NodeError::Decide(_)) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::line(status, &e.to_string())
    }
}

/// The cluster routes (the daemon merges them into the API router).
pub fn routes<S>(cluster: Arc<Cluster>) -> Router<S> {
    Router::new()
        .route(PATH_CLUSTER, get(show))
        .route(PATH_CLUSTER_INIT, post(init))
        .route(PATH_CLUSTER_TOKEN, post(token))
        .route(PATH_NODES, get(nodes))
        .route(PATH_NODE, axum::routing::delete(revoke))
        .route(PATH_CLUSTER_LEAVE, post(leave))
        .with_state(cluster)
}

type C = State<Arc<Cluster>>;

fn task(e: tokio::task::JoinError) -> ApiError {
    ApiError::line(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

async fn show(State(c): C) -> Json<ClusterView> {
    Json(c.view())
}

async fn init(
    State(c): C,
    body: Result<Json<ClusterInitRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<ClusterView>)> {
    let Json(req) = body.map_err(|e| ApiError::line(StatusCode::BAD_REQUEST, &e.body_text()))?;
    let name = req.name.unwrap_or_else(|| "bolt".into());
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::line(
            StatusCode::BAD_REQUEST,
            "cluster name must be 1 to 64 printable characters",
        ));
    }
    // Key generation and file writes block; the mesh start needs the runtime.
    let rt = tokio::runtime::Handle::current();
    let view = tokio::task::spawn_blocking(move || {
        let _guard = rt.enter();
        c.init(&name)
    })
    .await
    .map_err(task)??;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn token(
    State(c): C,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Res<Json<TokenView>> {
    let Json(req) = body.map_err(|e| ApiError::line(StatusCode::BAD_REQUEST, &e.body_text()))?;
    let token = c.token(Duration::from_secs(req.ttl_secs))?;
    Ok(Json(TokenView {
        token,
        ttl_secs: req.ttl_secs,
    }))
}

async fn nodes(State(c): C) -> Res<Json<Vec<NodeView>>> {
    let v = tokio::task::spawn_blocking(move || c.nodes())
        .await
        .map_err(task)?
        .map_err(|e| ApiError::line(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    Ok(Json(v))
}

async fn revoke(
    State(c): C,
    axum::extract::Path(node): axum::extract::Path<String>,
) -> Res<Json<serde_json::Value>> {
    let id = tokio::task::spawn_blocking(move || c.revoke(&node, "revoked with bolt node rm"))
        .await
        .map_err(task)??;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

async fn leave(State(c): C) -> Res<Json<serde_json::Value>> {
    tokio::task::spawn_blocking(move || c.leave())
        .await
        .map_err(task)??;
    Ok(Json(serde_json::json!({ "left": true })))
}
