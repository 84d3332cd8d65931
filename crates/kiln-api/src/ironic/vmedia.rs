//! Ironic's virtual media (microversion 1.89): `POST` and `DELETE /v1/nodes/{node}/vmedia`,
//! carried out by Kiln's own virtual media calls (`crate::power`), so the BMC work, the
//! checks of the image URL and the events are the same as `kiln node virtual-media`'s.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::nodes::writable;
use super::{IronicCaller, IronicError, IronicResult};
use crate::ApiState;
use crate::auth::Caller;
use crate::extract::JsonBody;

/// The microversion that added virtual media (`/v1/nodes/{node}/vmedia`).
const VMEDIA_MICROVERSION: u32 = 89;

#[derive(Debug, Deserialize)]
pub(super) struct VmediaAttach {
    device_type: String,
    image_url: String,
    #[serde(default)]
    image_download_source: Option<String>,
}

/// 404 below the microversion that added virtual media, as Ironic answers.
fn vmedia_available(caller: &IronicCaller) -> IronicResult<()> {
    if caller.version.at_least(VMEDIA_MICROVERSION) {
        return Ok(());
    }
    Err(IronicError::new(StatusCode::NOT_FOUND, format!("Virtual media needs microversion 1.{VMEDIA_MICROVERSION} or later.")))
}

/// `POST /v1/nodes/{node}/vmedia`: the BMC fetches `image_url` and shows it as the node's
/// CD. Kiln's BMCs fetch the image themselves (`image_download_source` `http`); Ironic's
/// `local` and `swift`, where the conductor stages a copy, are refused, saying so.
pub(super) async fn attach_vmedia(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    body: Result<JsonBody<VmediaAttach>, crate::error::ApiError>,
) -> IronicResult<StatusCode> {
    vmedia_available(&caller)?;
    let node = writable(&state, &caller, &key)?;
    let JsonBody(body) = body?;
    if body.device_type != "cdrom" {
        return Err(IronicError::invalid(format!("Kiln's virtual media is a CD: device_type 'cdrom', not '{}'.", body.device_type)));
    }
    if let Some(source) = body.image_download_source.as_deref().filter(|source| *source != "http") {
        return Err(IronicError::invalid(format!(
            "image_download_source '{source}' is not taken: the BMC fetches the image from its URL ('http')."
        )));
    }
    let request = kiln_types::bmc::VirtualMediaRequest { image: body.image_url, boot_once: false };
    let _drive =
        crate::power::insert_virtual_media(State(state.clone()), Caller(caller.context.clone()), Path(node.id.clone()), JsonBody(request))
            .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct VmediaDetachQuery {
    #[serde(default)]
    device_types: Option<String>,
}

/// What openstacksdk sends on the DELETE: the device types in a JSON body, comma-separated
/// as in the query (a list is taken too).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DeviceTypes {
    Joined(String),
    Listed(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct VmediaDetachBody {
    #[serde(default)]
    device_types: Option<DeviceTypes>,
}

/// `DELETE /v1/nodes/{node}/vmedia`: empties the node's virtual CD. The device types may be
/// given in the query (`?device_types=cdrom`, comma-separated) or, as openstacksdk sends
/// them, in a JSON body; any but `cdrom` is refused.
pub(super) async fn detach_vmedia(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    query: Result<Query<VmediaDetachQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> IronicResult<StatusCode> {
    vmedia_available(&caller)?;
    let node = writable(&state, &caller, &key)?;
    let query = super::nodes::parsed(query)?;
    let mut device_types: Vec<String> =
        query.device_types.iter().flat_map(|types| types.split(',')).filter(|kind| !kind.is_empty()).map(str::to_owned).collect();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let body: VmediaDetachBody = serde_json::from_slice(&body)
            .map_err(|error| IronicError::invalid(format!("The request body is not a JSON object with device_types: {error}.")))?;
        match body.device_types {
            Some(DeviceTypes::Joined(joined)) => device_types.extend(joined.split(',').filter(|kind| !kind.is_empty()).map(str::to_owned)),
            Some(DeviceTypes::Listed(listed)) => device_types.extend(listed),
            None => {}
        }
    }
    if let Some(other) = device_types.iter().find(|kind| *kind != "cdrom") {
        return Err(IronicError::invalid(format!("Kiln's virtual media is a CD: device_types 'cdrom', not '{other}'.")));
    }
    crate::power::eject_virtual_media(State(state.clone()), Caller(caller.context.clone()), Path(node.id.clone())).await?;
    Ok(StatusCode::NO_CONTENT)
}
