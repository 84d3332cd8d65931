//! BMC operations on one node: power state and actions, the next boot device, virtual media,
//! system facts.
//! The BMC is called during the request, bounded by the driver's timeouts; what was asked is
//! recorded as an event (`node_bmc`), without credentials.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_bmc::{Bmc, BmcError, BmcTarget, BootDevice, BootDeviceRequest, PowerRequest, PowerState, PowerStatus, SystemFacts};
use kiln_types::bmc::{VirtualMediaRequest, VirtualMediaStatus};
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
        // The BMC answered; the node's BMC record or the BMC's make lacks what was asked.
        BmcError::NotConfigured { .. } | BmcError::Lacks { .. } => StatusCode::CONFLICT,
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

/// The longest image URL taken: BMCs keep it in fixed fields, and a URL this long is a
/// mistake.
const MAX_IMAGE_URL_BYTES: usize = 2048;

/// An image URL a BMC can fetch: absolute http(s), a host, no credentials (the BMC would
/// show them to anyone who reads the drive's document).
fn checked_image_url(text: &str) -> ApiResult<String> {
    let invalid = |why: &str| ApiError::invalid(format!("image: '{text}' {why}"));
    // Never quoted back: the URL holds a password.
    let with_credentials = || ApiError::invalid("image: the URL holds credentials; BMCs show the image URL to anyone who reads the drive");
    if text.len() > MAX_IMAGE_URL_BYTES {
        return Err(ApiError::invalid(format!("image: the URL is {} bytes; at most {MAX_IMAGE_URL_BYTES}", text.len())));
    }
    let url = reqwest::Url::parse(text)
        .map_err(|error| if text.contains('@') { with_credentials() } else { invalid(&format!("is not a URL ({error})")) })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("is not an http:// or https:// URL, which is what BMCs fetch"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(with_credentials());
    }
    Ok(url.to_string())
}

fn media_status(node: &Node, drive: kiln_bmc::VirtualDrive) -> VirtualMediaStatus {
    VirtualMediaStatus {
        node: node.name.clone(),
        device: drive.device,
        media_types: drive.media_types,
        // A Kiln medium's name is its secret: even readers of the node do not see it.
        image: drive.image.map(|image| kiln_types::bmc::redacted_medium_url(&image).into_owned()),
        inserted: drive.inserted,
    }
}

#[utoipa::path(get, path = "/v1/nodes/{node}/virtual-media", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = VirtualMediaStatus), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn get_virtual_media(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<VirtualMediaStatus>> {
    let node = visible_node(&state, &caller, &key)?;
    let drive = bmc_of(&state, &node).await?.virtual_media().await.map_err(bmc_error)?;
    Ok(Json(media_status(&node, drive)))
}

/// Has the node's BMC fetch an image and show it to the node as a CD (Redfish
/// `VirtualMedia`), replacing what was in the drive; with `boot_once`, the next boot, only
/// that one, is from the CD. The answer is the drive as the insert left it.
#[utoipa::path(put, path = "/v1/nodes/{node}/virtual-media", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = VirtualMediaRequest,
    responses((status = 200, body = VirtualMediaStatus), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn insert_virtual_media(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(request): JsonBody<VirtualMediaRequest>,
) -> ApiResult<Json<VirtualMediaStatus>> {
    // The node first: another tenant's node is missing, whatever the body says.
    let node = writable_node(&state, &caller, &key)?;
    let image = checked_image_url(&request.image)?;
    let bmc = bmc_of(&state, &node).await?;
    let drive = bmc.insert_virtual_media(&image).await.map_err(bmc_error)?;
    // Recorded as soon as the medium is in, so that a failure of what follows does not hide it.
    let details = serde_json::json!({ "action": "insert", "image": image, "boot_once": request.boot_once });
    state.store.record_bmc_action(&caller.user, &node, "node.virtual-media", details).await?;
    if request.boot_once {
        bmc.set_boot_device(BootDevice::Cd, true, None).await.map_err(bmc_error)?;
    }
    Ok(Json(media_status(&node, drive)))
}

#[utoipa::path(delete, path = "/v1/nodes/{node}/virtual-media", tag = "bmc",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn eject_virtual_media(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<StatusCode> {
    let node = writable_node(&state, &caller, &key)?;
    bmc_of(&state, &node).await?.eject_virtual_media().await.map_err(bmc_error)?;
    state.store.record_bmc_action(&caller.user, &node, "node.virtual-media", serde_json::json!({ "action": "eject" })).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_are_absolute_http_without_credentials() {
        assert_eq!(checked_image_url("http://10.0.0.1:8080/boot/v1/media/x.iso").unwrap(), "http://10.0.0.1:8080/boot/v1/media/x.iso");
        assert!(checked_image_url("https://[fd00::1]/x.iso").is_ok());
        for (bad, why) in [
            ("/boot/x.iso", "is not a URL"),
            ("nfs://10.0.0.1/x.iso", "http:// or https://"),
            ("http://root:calvin@10.0.0.1/x.iso", "credentials"),
            ("http://root:calvin@bad host/x.iso", "credentials"),
            ("file:///tmp/x.iso", "http:// or https://"),
        ] {
            let error = checked_image_url(bad).unwrap_err();
            assert!(error.message.contains(why), "{bad}: {}", error.message);
            assert!(!error.message.contains("calvin"), "the password is not quoted back: {}", error.message);
        }
        assert!(checked_image_url(&format!("http://h/{}", "a".repeat(3000))).unwrap_err().message.contains("at most 2048"));
    }
}
