//! `/v1/networks...`: create, list, inspect, remove bridge networks: thin handlers over
//! [`Networks`].

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::api::{refusal_status, ApiError, Res};
use crate::service::networks::{NetworkError, Networks};
use crate::wire::networks::{CreateNetworkRequest, NetworkView, PATH_NETWORK, PATH_NETWORKS};

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        let status = match &e {
            NetworkError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NetworkError::Decide(d) => refusal_status(d),
            NetworkError::NotFound(_) => StatusCode::NOT_FOUND,
            NetworkError::Conflict(_) | NetworkError::Host(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::line(status, &e.to_string())
    }
}

/// The network routes, merged into the API router.
pub fn routes<S>(networks: Arc<Networks>) -> Router<S> {
    Router::new()
        .route(PATH_NETWORKS, get(list).post(create))
        .route(PATH_NETWORK, get(inspect).delete(remove))
        .with_state(networks)
}

type Nets = State<Arc<Networks>>;

async fn list(State(nets): Nets) -> Res<Json<Vec<NetworkView>>> {
    Ok(Json(nets.list().await?))
}

async fn create(
    State(nets): Nets,
    body: Result<Json<CreateNetworkRequest>, JsonRejection>,
) -> Res<(StatusCode, Json<NetworkView>)> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(nets.create(req).await?)))
}

async fn inspect(State(nets): Nets, Path(name): Path<String>) -> Res<Json<NetworkView>> {
    Ok(Json(nets.inspect(&name).await?))
}

async fn remove(State(nets): Nets, Path(name): Path<String>) -> Res<Json<serde_json::Value>> {
    nets.remove(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

/// Adds the network routes and schemas to the OpenAPI document.
pub fn merge_openapi(doc: &mut serde_json::Value) {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NetworkError"}}}});
    let one = json!({"description": "the network", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Network"}}}});
    let name =
        json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.insert(
            PATH_NETWORKS.into(),
            json!({
                "get": {"operationId": "listNetworks", "summary": "The networks.",
                    "responses": {"200": {"description": "networks", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Network"}}}}}}},
                "post": {"operationId": "createNetwork", "summary": "Create a bridge network (network.created).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateNetwork"}}}},
                    "responses": {"201": one.clone(), "400": err("bad name, subnet, gateway or mtu"), "409": err("name taken, subnet overlaps a network or a host address")}}
            }),
        );
        paths.insert(
            PATH_NETWORK.into(),
            json!({
                "get": {"operationId": "inspectNetwork", "summary": "One network and its addresses.", "parameters": name.clone(),
                    "responses": {"200": one, "404": err("no such network")}},
                "delete": {"operationId": "removeNetwork", "summary": "Remove a network no capsule holds an address on (network.removed).", "parameters": name,
                    "responses": {"200": {"description": "removed: {\"removed\": name}"}, "404": err("no such network"), "409": err("capsules hold addresses on it")}}
            }),
        );
    }
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        schemas.insert("NetworkError".into(), json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}));
        schemas.insert(
            "CreateNetwork".into(),
            json!({"type": "object", "required": ["name", "subnet"], "properties": {
            "name": {"type": "string"}, "subnet": {"type": "string", "example": "10.89.0.0/24"},
            "gateway": {"type": "string", "nullable": true}, "mtu": {"type": "integer"}}}),
        );
        schemas.insert("Network".into(), json!({"type": "object", "required": ["name", "driver", "subnet", "gateway", "mtu", "bridge", "capsules"], "properties": {
            "name": {"type": "string"}, "driver": {"type": "string"}, "subnet": {"type": "string"},
            "gateway": {"type": "string"}, "mtu": {"type": "integer"}, "bridge": {"type": "string"},
            "capsules": {"type": "array", "description": "[address, capsule id] pairs", "items": {"type": "array", "items": {"type": "string"}}}}}));
    }
}
