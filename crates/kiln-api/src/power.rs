//! BMC operations on one node: power state and actions, the next boot device, system facts.
//! The BMC is called during the request, bounded by the driver's timeouts; what was asked is
//! recorded as an event (`node_bmc`), without credentials.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_bmc::{Bmc, BmcError, BmcTarget, BootDeviceRequest, PowerRequest, PowerState, PowerStatus, SystemFacts};
use kiln_types::node::Node;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

/// A BMC failure as an API error: 502 (the BMC, not Kiln, failed), with the fault kind as
/// the code so clients can tell a wrong password from a dead BMC.
fn bmc_error(error: BmcError) -> ApiError {
    let code = match error.fault() {
        kiln_bmc::FaultKind::Unreachable => ErrorCode::BmcUnreachable,
        kiln_bmc::FaultKind::Authentication => ErrorCode::BmcAuthentication,
        kiln_bmc::FaultKind::Protocol => ErrorCode::BmcProtocol,
        kiln_bmc::FaultKind::Refused => ErrorCode::BmcRefused,
    };
    let status = match error {
        BmcError::NotConfigured { .. } => StatusCode::CONFLICT,
        BmcError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, code, kiln_types::error_chain(&error))
}

/// The node's BMC driver, with its password opened.
async fn bmc_of(state: &ApiState, node: &Node) -> ApiResult<Bmc> {
    let password = state.store.bmc_password(&node.id).await?;
    Bmc::for_node(node, password, BmcTarget::DEFAULT_TIMEOUT).map_err(bmc_error)
}

fn visible_node(state: &ApiState, caller: &Caller, key: &str) -> ApiResult<std::sync::Arc<Node>> {
    state.inventory.view().get_visible(key, &caller.read_scope()).cloned().ok_or_else(|| ApiError::not_found("node", key))
}

fn writable_node(state: &ApiState, caller: &Caller, key: &str) -> ApiResult<std::sync::Arc<Node>> {
    let node = visible_node(state, caller, key)?;
    if !caller.can_write(node.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read node '{key}' but not operate it")));
    }
    Ok(node)
}

#[utoipa::path(get, path = "/v1/nodes/{node}/power", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = PowerStatus), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(crate) async fn get_power(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<Json<PowerStatus>> {
    let node = visible_node(&state, &caller, &key)?;
    let power_state = bmc_of(&state, &node).await?.power_state().await.map_err(bmc_error)?;
    Ok(Json(PowerStatus { node: node.name.clone(), power_state }))
}

/// Sends a power action to the node's BMC. The BMC may take a while to carry it out; the
/// answer has the state it reports right after.
#[utoipa::path(post, path = "/v1/nodes/{node}/power", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = PowerRequest,
    responses((status = 200, body = PowerStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn set_power(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(request): JsonBody<PowerRequest>,
) -> ApiResult<Json<PowerStatus>> {
    let node = writable_node(&state, &caller, &key)?;
    let bmc = bmc_of(&state, &node).await?;
    bmc.power(request.action).await.map_err(bmc_error)?;
    state.store.record_bmc_action(&caller.user, &node, "node.power", serde_json::json!({ "action": request.action })).await?;
    let power_state = bmc.power_state().await.unwrap_or(PowerState::Unknown);
    Ok(Json(PowerStatus { node: node.name.clone(), power_state }))
}

#[utoipa::path(put, path = "/v1/nodes/{node}/boot-device", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = BootDeviceRequest,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn set_boot_device(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(request): JsonBody<BootDeviceRequest>,
) -> ApiResult<StatusCode> {
    let node = writable_node(&state, &caller, &key)?;
    let bmc = bmc_of(&state, &node).await?;
    bmc.set_boot_device(request.device, request.once, request.mode).await.map_err(bmc_error)?;
    let details = serde_json::json!({ "device": request.device, "once": request.once, "mode": request.mode });
    state.store.record_bmc_action(&caller.user, &node, "node.boot-device", details).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the power-state sync last read from the node's BMC, and its faults.
#[utoipa::path(get, path = "/v1/nodes/{node}/power/sync", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = Option<kiln_types::api::PowerReading>), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_power_reading(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Option<kiln_types::api::PowerReading>>> {
    Ok(Json(state.store.power_reading(&key, &caller.read_scope()).await?))
}

#[utoipa::path(get, path = "/v1/nodes/{node}/bmc/facts", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = SystemFacts), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn get_facts(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<Json<SystemFacts>> {
    let node = visible_node(&state, &caller, &key)?;
    Ok(Json(bmc_of(&state, &node).await?.facts().await.map_err(bmc_error)?))
}
