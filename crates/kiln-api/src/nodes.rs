//! `/v1/nodes` and `/v1/discover/static`: the inventory.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_db::NodeFilter;
use kiln_types::api::{DiscoverySummary, Page};
use kiln_types::discovery::parse_document;
use kiln_types::node::{Node, NodeChange, NodeInput, NodePatch, NodeSpec};
use kiln_types::{MacAddress, ProvisionState};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NodeListQuery {
    /// Only nodes in this group.
    group: Option<String>,
    /// Only nodes in this provision state.
    state: Option<String>,
    /// Only nodes of this project.
    project: Option<String>,
    /// Only the node with an interface of this MAC.
    mac: Option<String>,
    /// Only nodes whose name, xname or a MAC contains this text, case aside.
    search: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// At most this many nodes (default 100, at most 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeListQuery),
    responses((status = 200, body = Page<Node>), (status = 400, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn list_nodes(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(query): QueryParams<NodeListQuery>,
) -> ApiResult<Json<Page<Node>>> {
    let mut filter = NodeFilter::new(caller.read_scope());
    if let Some(group) = &query.group {
        // Nodes hold their groups' keys; a group the caller cannot see matches no node.
        let reference = kiln_types::scoped_name::NameReference::parse("group", group)?;
        filter.group = Some(match state.store.get_group(&reference, &caller.read_scope()).await {
            Ok(found) => kiln_types::scoped_name::ScopedName::new(found.project.as_deref(), &found.name).key(),
            Err(kiln_db::StoreError::NotFound { .. }) => reference.to_string(),
            Err(error) => return Err(error.into()),
        });
    }
    filter.project = query.project;
    filter.search = query.search.filter(|text| !text.trim().is_empty()).map(|text| text.trim().to_owned());
    filter.after = query.after;
    filter.limit = crate::extract::page_limit(query.limit)?;
    filter.state = query.state.map(|text| text.parse::<ProvisionState>()).transpose().map_err(ApiError::invalid)?;
    filter.mac =
        query.mac.map(|text| text.parse::<MacAddress>()).transpose().map_err(|error| ApiError::invalid(format!("mac: {error}")))?;
    Ok(Json(state.inventory.view().list(&filter)))
}

#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = NodeInput,
    responses((status = 201, body = Node), (status = 400, body = kiln_types::api::ErrorBody), (status = 409, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn create_node(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<NodeInput>,
) -> ApiResult<(StatusCode, Json<Node>)> {
    caller.require_admin()?;
    state.field_limits.check("properties", &input.properties)?;
    let spec = NodeSpec::try_from(&input)?;
    let node = state.store.create_node(&caller.user, &spec).await?;
    state.after_node_write().await;
    tracing::info!(node = %node.name, actor = %caller.user, "node created");
    Ok((StatusCode::CREATED, Json(node)))
}

#[utoipa::path(get, path = "/v1/nodes/{node}", tag = "nodes",
    params(("node" = String, Path, description = "Name, xname or id")),
    responses((status = 200, body = Node), (status = 404, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn get_node(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<Json<Node>> {
    match state.inventory.view().get_visible(&key, &caller.read_scope()) {
        Some(node) => Ok(Json(Node::clone(node))),
        None => Err(ApiError::not_found("node", &key)),
    }
}

#[utoipa::path(patch, path = "/v1/nodes/{node}", tag = "nodes", request_body = NodePatch,
    params(("node" = String, Path, description = "Name, xname or id")),
    responses((status = 200, body = Node), (status = 400, body = kiln_types::api::ErrorBody), (status = 403, body = kiln_types::api::ErrorBody),
        (status = 404, body = kiln_types::api::ErrorBody), (status = 409, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn update_node(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(patch): JsonBody<NodePatch>,
) -> ApiResult<Json<Node>> {
    state.field_limits.check("properties", &patch.properties)?;
    let change = NodeChange::try_from(&patch)?;
    let node = state.store.get_node(&key, &caller.read_scope()).await?;
    if !caller.can_write(node.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read node '{key}' but not change it")));
    }
    // The physical inventory (identity, wiring, BMC) is the operators'; tenants arrange
    // their nodes (groups, role, properties, maintenance).
    let touches_inventory =
        change.name.is_some() || change.xname.is_some() || change.nid.is_some() || change.interfaces.is_some() || change.bmc.is_some();
    if touches_inventory {
        caller.require_admin()?;
    }
    let scope = if caller.admin { kiln_auth::ProjectScope::All } else { caller.write_scope() };
    let node = state.store.update_node(&caller.user, &key, &scope, &change).await?;
    state.after_node_write().await;
    Ok(Json(node))
}

#[utoipa::path(delete, path = "/v1/nodes/{node}", tag = "nodes",
    params(("node" = String, Path, description = "Name, xname or id")),
    responses((status = 204), (status = 403, body = kiln_types::api::ErrorBody), (status = 404, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn delete_node(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<StatusCode> {
    // Look first, so that a tenant asking about another tenant's node hears "not found",
    // not "forbidden".
    state.store.get_node(&key, &caller.read_scope()).await?;
    caller.require_admin()?;
    state.store.delete_node(&caller.user, &key, &kiln_auth::ProjectScope::All).await?;
    state.after_node_write().await;
    tracing::info!(node = %key, actor = %caller.user, "node deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The body is OpenCHAMI's static discovery document: a list of nodes, or `{ "nodes": [...] }`.
#[utoipa::path(post, path = "/v1/discover/static", tag = "nodes",
    request_body(content = Vec<kiln_types::discovery::DiscoveryEntry>, description = "OpenCHAMI nodes.yaml, as JSON"),
    responses((status = 200, body = DiscoverySummary), (status = 400, body = kiln_types::api::ErrorBody), (status = 409, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn discover_static(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(document): JsonBody<serde_json::Value>,
) -> ApiResult<Json<DiscoverySummary>> {
    caller.require_admin()?;
    let specs = parse_document(&document).map_err(|error| ApiError::invalid(kiln_types::error_chain(&error)))?;
    for (index, spec) in specs.iter().enumerate() {
        state.field_limits.check(&format!("[{index}].properties"), &spec.properties)?;
    }
    tracing::info!(actor = %caller.user, entries = specs.len(), "applying static discovery");
    let summary = state.store.discover(&caller.user, &specs).await?;
    state.after_node_write().await;
    tracing::info!(actor = %caller.user, created = summary.created.len(), updated = summary.updated.len(),
        unchanged = summary.unchanged.len(), "static discovery applied");
    Ok(Json(summary))
}

#[utoipa::path(post, path = "/v1/projects/{project}/allocate", tag = "projects", request_body = kiln_types::api::AllocationInput,
    params(("project" = String, Path)),
    responses((status = 200, body = Vec<Node>), (status = 403, body = kiln_types::api::ErrorBody), (status = 404, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn allocate_nodes(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(input): JsonBody<kiln_types::api::AllocationInput>,
) -> ApiResult<Json<Vec<Node>>> {
    caller.require_admin()?;
    let nodes = state.store.set_nodes_project(&caller.user, &input.nodes, Some(&project), None).await?;
    state.after_node_write().await;
    Ok(Json(nodes))
}

#[utoipa::path(post, path = "/v1/projects/{project}/release", tag = "projects", request_body = kiln_types::api::AllocationInput,
    params(("project" = String, Path)),
    responses((status = 200, body = Vec<Node>), (status = 403, body = kiln_types::api::ErrorBody), (status = 404, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn release_nodes(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(input): JsonBody<kiln_types::api::AllocationInput>,
) -> ApiResult<Json<Vec<Node>>> {
    caller.require_admin()?;
    let nodes = state.store.set_nodes_project(&caller.user, &input.nodes, None, Some(&project)).await?;
    state.after_node_write().await;
    Ok(Json(nodes))
}
