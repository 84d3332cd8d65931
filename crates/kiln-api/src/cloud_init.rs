//! The cloud-init metadata service: the NoCloud paths nodes read (`/cloud-init/`, and
//! `/cloud-init-secure/` with a node token), and the management API under
//! `/v1/cloud-init` (defaults, group configs, node data, tokens, previews).
//!
//! A node reads only its own documents. On `/cloud-init/` it is the node holding the
//! request's source address (`X-Forwarded-For` counts only from a trusted proxy); on
//! `/cloud-init-secure/` it is the node whose token the request carries. No path or query
//! names another node: impersonation is a separate, administrator-only path that is off
//! unless configured.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kiln_boot::cloud_init::{CloudInitGroupView, CloudInitInputs, CloudInitNode as NodeFacts};
use kiln_db::InventoryView;
use kiln_types::cloud_init::{
    CloudInitDefaults, CloudInitGroup, CloudInitGroupInput, CloudInitGroupSpec, CloudInitNode, CloudInitNodeInput, CloudInitToken,
};
use kiln_types::node::Node;
use kiln_types::scoped_name::{NameReference, ScopedName};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

/// How the metadata service decides who is asking.
#[derive(Debug, Clone, Default)]
pub struct CloudInitSettings {
    /// Peers whose `X-Forwarded-For` names the real client. From anyone else the header is
    /// refused: it would let a node claim another's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether administrators may read a node's documents as the node sees them
    /// (`/cloud-init/admin/impersonation/<node>/…`).
    pub impersonation: bool,
}

fn invalid_field(index: Option<usize>, error: kiln_types::InvalidField) -> ApiError {
    match index {
        Some(index) => ApiError::invalid(format!("[{index}].{error}")),
        None => ApiError::invalid(error.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Management API.

#[utoipa::path(get, path = "/v1/cloud-init/defaults", tag = "cloud-init", responses((status = 200, body = CloudInitDefaults)))]
pub async fn get_defaults(State(state): State<ApiState>, _caller: Caller) -> ApiResult<Json<CloudInitDefaults>> {
    Ok(Json(CloudInitDefaults::clone(&state.inventory.view().cloud_init().defaults)))
}

/// Replaces the cluster defaults (`ci-defaults.yaml`). Administrators only: they reach
/// every node.
#[utoipa::path(put, path = "/v1/cloud-init/defaults", tag = "cloud-init", request_body = CloudInitDefaults,
    responses((status = 200, body = CloudInitDefaults), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_defaults(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(defaults): JsonBody<CloudInitDefaults>,
) -> ApiResult<Json<CloudInitDefaults>> {
    caller.require_admin()?;
    defaults.validate().map_err(|error| invalid_field(None, error))?;
    let stored = state.store.set_cloud_init_defaults(&caller.user, &defaults).await?;
    state.after_node_write().await;
    Ok(Json(stored))
}

#[utoipa::path(get, path = "/v1/cloud-init/groups", tag = "cloud-init", operation_id = "cloud_init_list_groups", responses((status = 200, body = Vec<CloudInitGroup>)))]
pub async fn list_groups(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<CloudInitGroup>>> {
    Ok(Json(state.store.list_cloud_init_groups(&caller.read_scope()).await?))
}

/// Sets the configs of the listed groups (the `ci-group-*.yaml` list), all or none;
/// a group that does not exist yet is created.
#[utoipa::path(post, path = "/v1/cloud-init/groups", tag = "cloud-init", request_body = Vec<CloudInitGroupInput>,
    responses((status = 200, body = Vec<CloudInitGroup>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_groups(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(inputs): JsonBody<Vec<CloudInitGroupInput>>,
) -> ApiResult<Json<Vec<CloudInitGroup>>> {
    if inputs.is_empty() {
        return Err(ApiError::invalid("the list of groups is empty"));
    }
    for (index, input) in inputs.iter().enumerate() {
        state.field_limits.check(&format!("[{index}]"), input)?;
    }
    let specs = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| CloudInitGroupSpec::try_from(input).map_err(|error| invalid_field(Some(index), error)))
        .collect::<Result<Vec<_>, _>>()?;
    let groups = state.store.put_cloud_init_groups(&caller.user, &specs, &caller.write_scope()).await?;
    state.after_node_write().await;
    Ok(Json(groups))
}

#[utoipa::path(get, path = "/v1/cloud-init/groups/{group}", tag = "cloud-init", operation_id = "cloud_init_get_group",
    params(("group" = String, Path, description = "Group name")),
    responses((status = 200, body = CloudInitGroup), (status = 404, body = ErrorBody)))]
pub async fn get_group(State(state): State<ApiState>, caller: Caller, Path(group): Path<String>) -> ApiResult<Json<CloudInitGroup>> {
    Ok(Json(state.store.get_cloud_init_group(&NameReference::parse("group", &group)?, &caller.read_scope()).await?))
}

/// Removes a group's cloud-init config (the group stays).
#[utoipa::path(delete, path = "/v1/cloud-init/groups/{group}", tag = "cloud-init", operation_id = "cloud_init_delete_group",
    params(("group" = String, Path, description = "Group name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_group(State(state): State<ApiState>, caller: Caller, Path(group): Path<String>) -> ApiResult<StatusCode> {
    state.store.delete_cloud_init_group(&caller.user, &NameReference::parse("group", &group)?, &caller.write_scope()).await?;
    state.after_node_write().await;
    Ok(StatusCode::NO_CONTENT)
}

/// What the group's cloud-config becomes on `node`: the template rendered with the
/// meta-data the node is served.
#[utoipa::path(get, path = "/v1/cloud-init/groups/{group}/render/{node}", tag = "cloud-init",
    params(("group" = String, Path, description = "Group name"), ("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn render_group(
    State(state): State<ApiState>,
    caller: Caller,
    Path((group, node)): Path<(String, String)>,
) -> ApiResult<Response> {
    let view = state.inventory.view();
    let scope = caller.read_scope();
    let node = view.get_visible(&node, &scope).ok_or_else(|| ApiError::not_found("node", &node))?;
    let found = state.store.get_group(&NameReference::parse("group", &group)?, &scope).await?;
    let key = ScopedName::new(found.project.as_deref(), &found.name).key();
    let record = view.cloud_init().groups.get(&key).ok_or_else(|| ApiError::not_found("cloud-init group", &group))?;
    let content = record.content.as_deref().ok_or_else(|| ApiError::not_found("cloud-init group", &group))?;
    let meta_data = kiln_boot::cloud_init::meta_data(&inputs(&state, &view, node, None));
    let rendered = kiln_boot::cloud_init::render_group(content, &meta_data)
        .map_err(|error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::RenderFailed, kiln_types::error_chain(&error)))?;
    Ok(text(rendered))
}

/// Sets the data of the listed nodes (`[{"id": NODE, "local-hostname": …}]`), all or none.
/// Each entry replaces the node's meta-data overrides; its secrets only when it has
/// `secret-data`.
#[utoipa::path(post, path = "/v1/cloud-init/nodes", tag = "cloud-init", request_body = Vec<CloudInitNodeInput>,
    responses((status = 200, body = Vec<CloudInitNode>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_nodes(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(inputs): JsonBody<Vec<CloudInitNodeInput>>,
) -> ApiResult<Json<Vec<CloudInitNode>>> {
    if inputs.is_empty() {
        return Err(ApiError::invalid("the list of nodes is empty"));
    }
    for (index, input) in inputs.iter().enumerate() {
        input.validate().map_err(|error| invalid_field(Some(index), error))?;
        state.field_limits.check(&format!("[{index}]"), input)?;
    }
    let nodes = state.store.set_cloud_init_nodes(&caller.user, &inputs, &caller.write_scope()).await?;
    state.after_node_write().await;
    Ok(Json(nodes))
}

#[utoipa::path(get, path = "/v1/cloud-init/nodes/{node}", tag = "cloud-init", operation_id = "cloud_init_get_node",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = CloudInitNode), (status = 404, body = ErrorBody)))]
pub async fn get_node(State(state): State<ApiState>, caller: Caller, Path(node): Path<String>) -> ApiResult<Json<CloudInitNode>> {
    Ok(Json(state.store.get_cloud_init_node(&node, &caller.read_scope()).await?))
}

/// The node's merged meta-data, as the node reads it on `/cloud-init/` (no secrets).
#[utoipa::path(get, path = "/v1/cloud-init/nodes/{node}/meta-data", tag = "cloud-init",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn node_meta_data(
    State(state): State<ApiState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<Map<String, Value>>> {
    let view = state.inventory.view();
    let node = view.get_visible(&node, &caller.read_scope()).ok_or_else(|| ApiError::not_found("node", &node))?;
    Ok(Json(kiln_boot::cloud_init::meta_data(&inputs(&state, &view, node, None))))
}

#[utoipa::path(get, path = "/v1/cloud-init/nodes/{node}/vendor-data", tag = "cloud-init",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
pub async fn node_vendor_data(State(state): State<ApiState>, caller: Caller, Path(node): Path<String>) -> ApiResult<Response> {
    let view = state.inventory.view();
    let node = view.get_visible(&node, &caller.read_scope()).ok_or_else(|| ApiError::not_found("node", &node))?;
    let inputs = inputs(&state, &view, node, None);
    Ok(text(kiln_boot::cloud_init::vendor_data(&inputs.base_url, &inputs.groups)))
}

/// Mints the node's token for `/cloud-init-secure/`, replacing the previous one. The token
/// is shown in this answer only.
#[utoipa::path(post, path = "/v1/cloud-init/nodes/{node}/token", tag = "cloud-init",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 201, body = CloudInitToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn mint_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<(StatusCode, Json<CloudInitToken>)> {
    // A node the caller can read but not change is 403, as everywhere; one it cannot see
    // is 404 in the store below.
    if let Some(visible) = state.inventory.view().get_visible(&node, &caller.read_scope())
        && !caller.can_write(visible.project.as_deref())
    {
        return Err(ApiError::forbidden(format!("you may read node '{node}' but not change it")));
    }
    let (node, token) = state.store.mint_cloud_init_token(&caller.user, &node, &caller.write_scope()).await?;
    state.after_node_write().await;
    let seed_url = format!("{}/cloud-init-secure/{token}/", state.boot.public_url);
    Ok((StatusCode::CREATED, Json(CloudInitToken { node, token, seed_url })))
}

// ---------------------------------------------------------------------------------------
// What nodes read.

/// The documents of the NoCloud datasource, and group configs.
enum Document {
    MetaData,
    UserData,
    VendorData,
    /// cloud-init's network configuration of the node's static addresses.
    NetworkConfig,
    Group(String),
}

impl Document {
    fn parse(name: &str) -> Option<Document> {
        match name {
            "meta-data" => Some(Document::MetaData),
            "user-data" => Some(Document::UserData),
            "vendor-data" => Some(Document::VendorData),
            "network-config" => Some(Document::NetworkConfig),
            other => other.strip_suffix(".yaml").filter(|group| !group.is_empty()).map(|group| Document::Group(group.to_owned())),
        }
    }
}

/// Who a node-facing request is for, and how it proved it.
struct Requester<'a> {
    node: &'a Arc<Node>,
    /// The token of a `/cloud-init-secure/` request: secrets are served, and group URLs
    /// carry the token too.
    token: Option<&'a str>,
}

/// Rendered meta-data of the `/cloud-init/` path by node id, with the inventory view (its
/// last event) it was rendered from. A document is a pure function of the view, so it is
/// rendered once per node and view rather than once per request: booting thousands of
/// nodes ask for the same documents while nothing changes.
#[derive(Debug, Default)]
pub struct MetaDataCache {
    entries: std::sync::RwLock<std::collections::HashMap<String, (i64, axum::body::Bytes)>>,
}

impl MetaDataCache {
    fn get_or_render(&self, view: &InventoryView, node_id: &str, render: impl FnOnce() -> String) -> axum::body::Bytes {
        let generation = view.last_event();
        if let Some((rendered_for, body)) = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(node_id)
            && *rendered_for == generation
        {
            return body.clone();
        }
        let body = axum::body::Bytes::from(render());
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Entries of deleted nodes are never asked for again: drop everything now and then.
        if entries.len() > 2 * view.len() + 1024 {
            entries.clear();
        }
        entries.insert(node_id.to_owned(), (generation, body.clone()));
        body
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

fn yaml(body: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = body.into();
    ([(header::CONTENT_TYPE, "application/yaml"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// Nothing here takes a query: a query naming a node is an attempt to read another's data.
fn refuse_query(uri: &Uri) -> ApiResult<()> {
    match uri.query() {
        Some(query) if !query.is_empty() => {
            Err(ApiError::invalid("cloud-init documents take no query: a node is identified by its address or token"))
        }
        _ => Ok(()),
    }
}

/// The address a request comes from: the peer, or what `X-Forwarded-For` says when the
/// peer is a trusted proxy (the right-most address not itself a trusted proxy).
pub(crate) fn client_address(settings: &CloudInitSettings, peer: IpAddr, headers: &HeaderMap) -> ApiResult<IpAddr> {
    let peer = peer.to_canonical();
    let trusted = |address: &IpAddr| settings.trusted_proxies.iter().any(|network| network.contains(address));
    let forwarded: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).collect();
    if forwarded.is_empty() {
        return Ok(peer);
    }
    if !trusted(&peer) {
        tracing::warn!(%peer, "X-Forwarded-For from a peer that is not a trusted proxy refused");
        return Err(ApiError::forbidden(
            "X-Forwarded-For is honoured only from trusted proxies (cloud_init.trusted_proxies); this peer is not one",
        ));
    }
    let mut chain = Vec::new();
    for value in forwarded {
        for part in value.split(',') {
            let address: IpAddr =
                part.trim().parse().map_err(|_| ApiError::invalid(format!("X-Forwarded-For: '{}' is not an address", part.trim())))?;
            chain.push(address.to_canonical());
        }
    }
    Ok(chain.into_iter().rev().find(|address| !trusted(address)).unwrap_or(peer))
}

/// The node at `address`; unknown addresses get 404, as do addresses two nodes claim.
fn node_at(view: &InventoryView, address: IpAddr) -> ApiResult<&Arc<Node>> {
    view.by_ip(&address).ok_or_else(|| ApiError::not_found("node with address", &address.to_string()))
}

fn base_url(state: &ApiState, defaults: &CloudInitDefaults) -> String {
    defaults.base_url.clone().unwrap_or_else(|| format!("{}/cloud-init", state.boot.public_url))
}

/// The base URL of `/cloud-init-secure/<token>`: beside the configured `/cloud-init` base
/// when there is one (it may be a proxy's), else this server's.
fn secure_base_url(state: &ApiState, defaults: &CloudInitDefaults, token: &str) -> String {
    match defaults.base_url.as_deref().and_then(|base| base.trim_end_matches('/').strip_suffix("/cloud-init")) {
        Some(prefix) => format!("{prefix}/cloud-init-secure/{token}"),
        None => format!("{}/cloud-init-secure/{token}", state.boot.public_url),
    }
}

/// Everything the documents of `node` depend on, from the inventory view.
fn inputs<'a>(state: &ApiState, view: &'a InventoryView, node: &'a Node, token: Option<&str>) -> CloudInitInputs<'a> {
    let cloud_init = view.cloud_init();
    let record = cloud_init.nodes.get(&node.id);
    let defaults: &'a CloudInitDefaults = &cloud_init.defaults;
    // A node is in groups without a project and in its own project's; where two share a
    // name, the node's project's is the one it sees (as a bare name in its `groups` means).
    let shadowed = |key: &&String| {
        !key.contains('/') && node.groups.iter().any(|other| ScopedName::name_of_key(other) == key.as_str() && other != *key)
    };
    let groups = node
        .groups
        .iter()
        .filter(|key| !shadowed(key))
        .map(|key| {
            let group = cloud_init.groups.get(key);
            CloudInitGroupView {
                // The node knows its groups by name, as OpenCHAMI's templates do: the
                // project is the node's own (or none).
                name: ScopedName::name_of_key(key),
                description: group.map_or("", |group| group.description.as_str()),
                meta_data: group.and_then(|group| group.meta_data.as_ref()),
                has_file: group.is_some_and(|group| group.content.is_some()),
            }
        })
        .collect();
    let local_ipv4 = node
        .interfaces
        .iter()
        .flat_map(|interface| interface.ip_addrs.iter())
        .filter_map(|entry| entry.ip_addr.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4);
    let base_url = match token {
        Some(token) => secure_base_url(state, defaults, token),
        None => base_url(state, defaults),
    };
    CloudInitInputs {
        defaults,
        node: NodeFacts {
            id: &node.id,
            name: &node.name,
            nid: node.nid,
            local_ipv4,
            overrides: record.map(|record| &record.meta_data),
            generation: record.map_or(0, |record| record.generation),
        },
        groups,
        base_url,
        secrets: token.and(record.map(|record| &record.secrets)),
    }
}

/// user-data: an empty mapping rather than nothing, as cloud-init warns about an empty
/// cloud-config.
const EMPTY_USER_DATA: &str = "#cloud-config\n{}\n";

/// The NoCloud seed of a node that boots with no DHCP: the documents it would fetch from
/// `/cloud-init/` (meta-data without secrets, user-data, vendor-data, whose group configs it
/// then fetches over the network it has configured), and its `network-config`. `None` when
/// the node has no static address, and so no need of one.
pub fn seed_documents(state: &ApiState, node: &Node) -> Option<Vec<(&'static str, String)>> {
    let network_config = kiln_boot::network_config::network_config(node)?;
    let view = state.inventory.view();
    let inputs = inputs(state, &view, node, None);
    Some(vec![
        ("meta-data", kiln_boot::cloud_init::to_yaml(&kiln_boot::cloud_init::meta_data(&inputs))),
        ("user-data", EMPTY_USER_DATA.to_owned()),
        ("vendor-data", kiln_boot::cloud_init::vendor_data(&inputs.base_url, &inputs.groups)),
        ("network-config", network_config),
    ])
}

fn serve(state: &ApiState, view: &InventoryView, requester: Requester<'_>, document: &str) -> ApiResult<Response> {
    let node = requester.node;
    let document = Document::parse(document).ok_or_else(|| ApiError::not_found("cloud-init document", document))?;
    let response = match document {
        Document::MetaData => {
            let render = || kiln_boot::cloud_init::to_yaml(&kiln_boot::cloud_init::meta_data(&inputs(state, view, node, requester.token)));
            match requester.token {
                // With secrets: rendered per request, never kept.
                Some(_) => yaml(render()),
                None => yaml(state.cloud_init_cache.get_or_render(view, &node.id, render)),
            }
        }
        Document::UserData => text(EMPTY_USER_DATA.to_owned()),
        Document::VendorData => {
            let inputs = inputs(state, view, node, requester.token);
            text(kiln_boot::cloud_init::vendor_data(&inputs.base_url, &inputs.groups))
        }
        // A node without a static address has none: cloud-init falls back to DHCP.
        Document::NetworkConfig => yaml(
            kiln_boot::network_config::network_config(node)
                .ok_or_else(|| ApiError::not_found("static network configuration of node", &node.name))?,
        ),
        Document::Group(group) => {
            // Only the node's own groups: another group's config is another node's data.
            // The node names the group as it knows it: its project's group, else the one
            // without a project.
            let own = kiln_types::scoped_name::ScopedName::new(node.project.as_deref(), &group).key();
            let content = [own, group.clone()]
                .into_iter()
                .find(|key| node.groups.contains(key))
                .and_then(|key| view.cloud_init().groups.get(&key).and_then(|record| record.content.clone()))
                .ok_or_else(|| ApiError::not_found("cloud-init group config", &group))?;
            text(content)
        }
    };
    tracing::debug!(node = %node.name, secure = requester.token.is_some(), "cloud-init document served");
    Ok(response)
}

/// `/cloud-init/<document>`: for the node at the request's address.
#[utoipa::path(get, path = "/cloud-init/{document}", tag = "cloud-init", security(()),
    params(("document" = String, Path, description = "meta-data, user-data, vendor-data, network-config or GROUP.yaml")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn node_document(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(document): Path<String>,
) -> ApiResult<Response> {
    refuse_query(&uri)?;
    let address = client_address(&state.cloud_init, peer.ip(), &headers)?;
    let view = state.inventory.view();
    let node = node_at(&view, address)?;
    serve(&state, &view, Requester { node, token: None }, &document)
}

/// The node a token belongs to. The lookup is by the token's SHA-256, and the stored hash
/// is compared again in constant time, so response times say nothing about valid tokens.
fn node_of_token<'a>(view: &'a InventoryView, token: &str) -> ApiResult<&'a Arc<Node>> {
    let hash = kiln_auth::hash_token(token);
    let node = view.by_cloud_init_token(&hash).ok_or_else(|| ApiError::not_found("cloud-init token", "…"))?;
    let stored = view.cloud_init().nodes.get(&node.id).and_then(|record| record.token_hash.as_deref()).unwrap_or_default();
    if bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) { Ok(node) } else { Err(ApiError::not_found("cloud-init token", "…")) }
}

/// `/cloud-init-secure/<token>/<document>`: the token's node, with its secrets. The token
/// sits in the path so stock cloud-init can use it (`ds=nocloud-net;s=<seed_url>`).
#[utoipa::path(get, path = "/cloud-init-secure/{token}/{document}", tag = "cloud-init",
    params(("token" = String, Path, description = "The node's cloud-init token"), ("document" = String, Path, description = "meta-data, user-data, vendor-data, network-config or GROUP.yaml")), security(()),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
pub async fn secure_document(
    State(state): State<ApiState>,
    uri: Uri,
    Path((token, document)): Path<(String, String)>,
) -> ApiResult<Response> {
    refuse_query(&uri)?;
    let view = state.inventory.view();
    let node = node_of_token(&view, &token)?;
    serve(&state, &view, Requester { node, token: Some(&token) }, &document)
}

/// `/cloud-init-secure/<document>` with `Authorization: Bearer <node token>` (OpenCHAMI's
/// secure path).
#[utoipa::path(get, path = "/cloud-init-secure/{document}", tag = "cloud-init",
    params(("document" = String, Path, description = "meta-data, user-data, vendor-data, network-config or GROUP.yaml")), security(()),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn secure_document_bearer(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Path(document): Path<String>,
) -> ApiResult<Response> {
    refuse_query(&uri)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("/cloud-init-secure/ needs the node's token (Authorization: Bearer …)"))?;
    let view = state.inventory.view();
    let node = node_of_token(&view, token)?;
    serve(&state, &view, Requester { node, token: Some(token) }, &document)
}

/// `/cloud-init/admin/impersonation/<node>/<document>`: what `node` is served, for an
/// administrator, when impersonation is enabled.
#[utoipa::path(get, path = "/cloud-init/admin/impersonation/{node}/{document}", tag = "cloud-init",
    params(("node" = String, Path, description = "Name, xname or id of the node"), ("document" = String, Path, description = "meta-data, user-data, vendor-data, network-config or GROUP.yaml")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn impersonate(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    Path((node, document)): Path<(String, String)>,
) -> ApiResult<Response> {
    refuse_query(&uri)?;
    caller.require_admin()?;
    if !state.cloud_init.impersonation {
        return Err(ApiError::forbidden("impersonation is disabled (cloud_init.impersonation = false)"));
    }
    let view = state.inventory.view();
    let target = view.get(&node).ok_or_else(|| ApiError::not_found("node", &node))?;
    tracing::info!(admin = %caller.user, node = %target.name, %document, "cloud-init impersonation");
    serve(&state, &view, Requester { node: target, token: None }, &document)
}
