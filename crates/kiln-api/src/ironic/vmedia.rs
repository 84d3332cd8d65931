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
pub(super) struct VmediaDetach {
    #[serde(default)]
    device_types: Option<String>,
}

/// `DELETE /v1/nodes/{node}/vmedia[?device_types=cdrom]`: empties the node's virtual CD.
pub(super) async fn detach_vmedia(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    Query(query): Query<VmediaDetach>,
) -> IronicResult<StatusCode> {
    vmedia_available(&caller)?;
    let node = writable(&state, &caller, &key)?;
    if let Some(other) = query.device_types.as_deref().and_then(|types| types.split(',').find(|kind| !kind.is_empty() && *kind != "cdrom"))
    {
        return Err(IronicError::invalid(format!("Kiln's virtual media is a CD: device_types 'cdrom', not '{other}'.")));
    }
    crate::power::eject_virtual_media(State(state.clone()), Caller(caller.context.clone()), Path(node.id.clone())).await?;
    Ok(StatusCode::NO_CONTENT)
}
