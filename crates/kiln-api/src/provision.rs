//! Provisioning: operators' requests (deploy, undeploy, inspect, clean, manage, provide),
//! recorded as intent for the reconciler, and the agent protocol the node agent speaks.
//!
//! Nothing here moves a node between states: handlers record a request or an agent's
//! observation and wake the reconciler, which decides.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use kiln_image_store::BlobId;
use kiln_types::ProvisionState;
use kiln_types::image::ArtifactKind;
use kiln_types::provision::{
    AgentArtifact, AgentCommand, AgentResult, BlockMap, CleanMode, DeployMode, DeployRequest, DeployTarget, Heartbeat, Intent,
    ProvisionRecord, ProvisionStatus,
};
use kiln_types::scoped_name::ScopedName;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

pub(crate) async fn request(
    state: &ApiState,
    caller: &Caller,
    key: &str,
    intent: Intent,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    let node = state.store.get_node(key, &caller.read_scope()).await?;
    if !caller.can_write(node.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read node '{key}' but not provision it")));
    }
    let status = state.store.request_provision(&caller.user, &node.id, &caller.read_scope(), &intent).await?;
    tracing::info!(node = %node.name, request = intent.name(), user = %caller.user, "provisioning requested");
    state.provisioning_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// Splits `IMAGE[:VERSION]`.
fn image_reference(text: &str) -> (&str, Option<&str>) {
    match text.rsplit_once(':') {
        Some((image, version)) if !image.is_empty() && !version.is_empty() => (image, Some(version)),
        _ => (text, None),
    }
}

/// Deploys an image: written to a local disk (`disk`) or booted diskless (`live`). The image
/// version is fixed now, so a tag moving later does not change this deploy.
#[utoipa::path(post, path = "/v1/nodes/{node}/deploy", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = DeployRequest,
    responses((status = 202, body = ProvisionStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deploy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<DeployRequest>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    let (name, version) = image_reference(&body.image);
    let image = crate::images::visible_image(&state, &caller, name).await?;
    let reference = crate::images::version_ref(version.unwrap_or("latest"))?;
    let identity = image.scoped_name();
    let version = match (version, state.store.get_version(&identity, &reference).await) {
        (_, Ok(version)) => version,
        // Without a version: the highest, whether or not a `latest` tag exists.
        (None, Err(kiln_db::StoreError::NotFound { .. })) => state
            .store
            .list_versions(&identity)
            .await?
            .into_iter()
            .max_by_key(|version| version.version)
            .ok_or_else(|| ApiError::invalid(format!("image '{}' has no versions", image.name)))?,
        (_, Err(error)) => return Err(error.into()),
    };
    let needed: &[ArtifactKind] = match body.mode {
        DeployMode::Disk => &[ArtifactKind::Disk],
        DeployMode::Live => &[ArtifactKind::Root],
        DeployMode::Network => &[ArtifactKind::Disk],
    };
    if body.mode != DeployMode::Network && version.artifact(ArtifactKind::Layer).is_some() {
        return Err(ApiError::invalid(format!(
            "image {}:{} is a network-disk snapshot (a layer over its disk): deploy it with --mode network",
            image.name, version.version
        )));
    }
    if body.mode == DeployMode::Network {
        if state.boot.network_disk_address.is_none() {
            return Err(ApiError::invalid("network deploys need the server's network disks: [netdisk] in its configuration"));
        }
        if let Some(disk) = version.artifact(ArtifactKind::Disk)
            && !matches!(disk.format, kiln_types::image::ImageFormat::Raw | kiln_types::image::ImageFormat::Qcow2)
        {
            return Err(ApiError::invalid(format!(
                "image {}:{} has a {} disk artifact; a network deploy needs a raw or qcow2 disk",
                image.name, version.version, disk.format
            )));
        }
    }
    if body.mode == DeployMode::Live && image.visibility != kiln_types::image::Visibility::Public {
        // A live node fetches its root at every boot, with no credential to show.
        return Err(ApiError::invalid(format!("live deploys need a public image; '{}' is {}", image.name, image.visibility)));
    }
    for kind in needed {
        if version.artifact(*kind).is_none() {
            return Err(ApiError::invalid(format!(
                "image {}:{} has no {kind} artifact, which a {} deploy needs",
                image.name,
                version.version,
                body.mode.as_str()
            )));
        }
    }
    if let (Some(start), Some(end)) = (body.start_at, body.end_at)
        && end <= start
    {
        return Err(ApiError::invalid(format!("end_at ({end}) must be after start_at ({start})")));
    }
    if body.end_at.is_some_and(|end| end <= jiff::Timestamp::now()) {
        return Err(ApiError::invalid("end_at is in the past"));
    }
    let target = DeployTarget {
        image: identity.key(),
        version: version.version,
        mode: body.mode,
        root_device_hints: body.root_device_hints,
        wait_for_callback: body.wait_for_callback,
        start_at: body.start_at,
        end_at: body.end_at,
    };
    request(&state, &caller, &key, Intent::Deploy(target)).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/undeploy", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn undeploy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Undeploy).await
}

/// Stops the operation waiting on the node's agent (deploy, inspect, clean, capture): it
/// ends in its failure state with the reason "aborted on request", and the machine is
/// powered off (a capture's boots its disk again).
#[utoipa::path(post, path = "/v1/nodes/{node}/abort", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn abort(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Abort).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/inspect", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn inspect(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Inspect).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanRequest {
    #[serde(default)]
    pub mode: CleanMode,
}

#[utoipa::path(post, path = "/v1/nodes/{node}/clean", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = CleanRequest,
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clean(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<CleanRequest>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Clean { mode: body.mode }).await
}

/// Turns a network-mode node's disk into a new version of an image: only what the node
/// changed is stored, as a layer over the version it runs (BMI's snapshot). The node is
/// powered off for it, then boots its disk again.
#[utoipa::path(post, path = "/v1/nodes/{node}/snapshot", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = CaptureRequest,
    responses((status = 202, body = ProvisionStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn snapshot(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<CaptureRequest>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    disk_into_image(&state, &caller, &key, &body.image, DeployMode::Network).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The image the node's disk becomes a new version of; you must be able to change it.
    pub image: String,
}

/// Reads a deployed node's disk into a new version of an image (the node boots into the
/// agent for it, then boots its disk again).
#[utoipa::path(post, path = "/v1/nodes/{node}/capture", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = CaptureRequest,
    responses((status = 202, body = ProvisionStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn capture(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<CaptureRequest>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    disk_into_image(&state, &caller, &key, &body.image, DeployMode::Disk).await
}

/// A capture (`from` disk mode) or a snapshot (`from` network mode) of the node's disk into
/// a new version of `image`, refused with the other's name for a node in the other mode.
async fn disk_into_image(
    state: &ApiState,
    caller: &Caller,
    key: &str,
    image: &str,
    from: DeployMode,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    // The node first: for a node the caller cannot see, nothing about the image is told.
    let status = state.store.provision_status(key, &caller.read_scope()).await?;
    let image = crate::images::writable_image(state, caller, image).await?.scoped_name().key();
    let intent = match (from, status.target.as_ref().map(|target| target.mode)) {
        (_, Some(DeployMode::Live)) => {
            return Err(ApiError::invalid(format!("node '{key}' runs its image live: there is no disk to capture")));
        }
        (DeployMode::Network, Some(DeployMode::Network)) => Intent::Snapshot { image },
        (DeployMode::Network, _) => {
            return Err(ApiError::invalid(format!(
                "node '{key}' does not run from a network disk: capture its disk instead (kiln node capture)"
            )));
        }
        (_, Some(DeployMode::Network)) => {
            return Err(ApiError::invalid(format!(
                "node '{key}' runs from a network disk: take a snapshot of it instead (kiln node snapshot)"
            )));
        }
        _ => Intent::Capture { image },
    };
    request(state, caller, key, intent).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/manage", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn manage(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Manage).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/provide", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 202, body = ProvisionStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn provide(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<ProvisionStatus>)> {
    request(&state, &caller, &key, Intent::Provide).await
}

#[utoipa::path(get, path = "/v1/nodes/{node}/provision", tag = "provisioning",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = ProvisionStatus), (status = 404, body = ErrorBody)))]
pub async fn status(State(state): State<ApiState>, caller: Caller, Path(key): Path<String>) -> ApiResult<Json<ProvisionStatus>> {
    Ok(Json(state.store.provision_status(&key, &caller.read_scope()).await?))
}

/// The node and record an agent's bearer token belongs to, or `None` when there is no
/// token or it is not valid for this node (its operation may be over).
async fn agent_of_token(
    state: &ApiState,
    headers: &HeaderMap,
    node_id: &str,
) -> ApiResult<Option<(kiln_types::node::Node, ProvisionRecord)>> {
    let token = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = token else { return Ok(None) };
    Ok(state.store.authenticate_agent(node_id, token.trim()).await?)
}

/// The node and record an agent's bearer token belongs to; 401 for anything else, with the
/// same answer whether the node exists or not.
async fn agent(state: &ApiState, headers: &HeaderMap, node_id: &str) -> ApiResult<(kiln_types::node::Node, ProvisionRecord)> {
    agent_of_token(state, headers, node_id).await?.ok_or_else(|| {
        tracing::warn!(node = %node_id, "agent token refused");
        ApiError::unauthorized("this agent token is not valid for this node (or its operation is over)")
    })
}

/// What the node is being deployed with, while it waits for its agent to do it.
fn waiting_deploy<'a>(node: &kiln_types::node::Node, record: &'a ProvisionRecord) -> Option<&'a kiln_types::provision::DeployTarget> {
    record.target.as_ref().filter(|_| node.provision_state == ProvisionState::WaitAgent)
}

/// The artifact a deploy writes, as the agent fetches it.
async fn deploy_artifact(state: &ApiState, node_id: &str, record: &ProvisionRecord) -> ApiResult<Option<AgentArtifact>> {
    let Some(target) = record.target.as_ref().filter(|target| target.mode == DeployMode::Disk) else { return Ok(None) };
    let version =
        state.store.get_version(&ScopedName::from_key(&target.image), &kiln_types::image::VersionRef::Number(target.version)).await?;
    let Some(artifact) = version.artifact(ArtifactKind::Disk) else { return Ok(None) };
    Ok(Some(AgentArtifact {
        path: format!("/agent/v1/nodes/{node_id}/artifact"),
        sha256: artifact.sha256.clone(),
        size: artifact.size,
        format: artifact.format,
        compression: artifact.compression,
        map_path: is_mappable(artifact).then(|| format!("/agent/v1/nodes/{node_id}/artifact/map")),
    }))
}

/// Raw, uncompressed disk images get block maps: the agent then fetches only their data.
fn is_mappable(artifact: &kiln_types::image::Artifact) -> bool {
    artifact.compression.is_none() && artifact.format == kiln_types::image::ImageFormat::Raw
}

/// Block maps made on this replica, by image digest; at most [`BlockMaps::KEPT`] of them.
/// A map is made once even when a thousand agents ask for it at once.
#[derive(Default)]
pub struct BlockMaps {
    maps: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<Arc<BlockMap>>>>>,
}

impl BlockMaps {
    const KEPT: usize = 64;

    async fn get(&self, blobs: &kiln_image_store::BlobStore, sha256: &str) -> ApiResult<Arc<BlockMap>> {
        let cell = {
            let mut maps = self.maps.lock().expect("block map cache lock");
            if maps.len() >= Self::KEPT && !maps.contains_key(sha256) {
                // Maps are cheap to make again; whichever goes first does not matter.
                let evicted = maps.keys().next().cloned();
                if let Some(key) = evicted {
                    maps.remove(&key);
                }
            }
            maps.entry(sha256.to_owned()).or_default().clone()
        };
        let map = cell
            .get_or_try_init(|| async {
                let id = BlobId::parse(sha256)
                    .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, error.to_string()))?;
                let started = std::time::Instant::now();
                let map = blobs.block_map(&id, BlockMap::CHUNK_SIZE).await.map_err(crate::uploads::blob_error)?;
                tracing::info!(image = %sha256, chunks = map.chunks.len(), seconds = started.elapsed().as_secs_f64(), "block map made");
                Ok::<_, ApiError>(Arc::new(map))
            })
            .await?;
        Ok(map.clone())
    }
}

/// The agent's first call: the boot token its boot script carried, exchanged once for the
/// session token of the operation. A boot token is refused everywhere else, and a second
/// time here, so a token read off a boot script on the wire is worth nothing once the
/// machine has used it.
#[utoipa::path(post, path = "/agent/v1/nodes/{node}/session", tag = "agent",
    params(("node" = String, Path, description = "Id of the node")),
    responses((status = 200, body = kiln_types::provision::AgentSession), (status = 401, body = ErrorBody)))]
pub async fn exchange_token(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
) -> ApiResult<Json<kiln_types::provision::AgentSession>> {
    let token = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("Bearer "));
    // Under the boot script's own rule: only the machine, from its address, exchanges.
    let source = crate::boot::request_source(&state, peer, &headers);
    let from_the_node = state
        .inventory
        .view()
        .get_visible(&node_id, &kiln_auth::ProjectScope::All)
        .is_some_and(|node| node.id == node_id && crate::boot::node_speaks_from(&state, node, source));
    let session = match token {
        Some(token) if from_the_node => state.store.exchange_agent_token(&node_id, token.trim()).await?,
        _ => None,
    };
    match session {
        Some(token) => {
            tracing::info!(node = %node_id, "agent boot token exchanged for its session");
            Ok(Json(kiln_types::provision::AgentSession { token }))
        }
        None => {
            tracing::warn!(node = %node_id, "a boot token exchange was refused (not the node's, or used already)");
            Err(ApiError::unauthorized("this boot token is not valid for this node, or was exchanged already"))
        }
    }
}

/// The agent's heartbeat: records that it is alive and how far it got, and answers with
/// what it is to do.
#[utoipa::path(post, path = "/agent/v1/nodes/{node}/heartbeat", tag = "agent",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = Heartbeat,
    responses((status = 200, body = AgentCommand), (status = 401, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    JsonBody(heartbeat): JsonBody<Heartbeat>,
) -> ApiResult<Json<AgentCommand>> {
    let (node, record) = agent(&state, &headers, &node_id).await?;
    // What a machine sends is held to the limits of what operators send.
    state.field_limits.check("progress", &heartbeat.progress)?;
    state.store.record_heartbeat(&node.id, &heartbeat).await?;
    // An agent at work on the current command only reports progress: it is told to go on,
    // without resolving the command's artifact again on every heartbeat.
    if heartbeat.running == Some(record.command_id) {
        return Ok(Json(AgentCommand::Wait { seconds: kiln_lifecycle::agent::IDLE_HEARTBEAT_SECONDS }));
    }
    let artifact = match node.provision_state {
        ProvisionState::WaitAgent => deploy_artifact(&state, &node.id, &record).await?,
        _ => None,
    };
    let capture_path = format!("/agent/v1/nodes/{}/capture", node.id);
    let command = kiln_lifecycle::agent::agent_command(node.provision_state, &record, artifact, &capture_path, node.boot_interface());
    if command.id().is_some() {
        tracing::info!(node = %node.name, command = ?command.id(), state = %node.provision_state, "agent given a command");
    }
    Ok(Json(command))
}

/// How a command ended. Accepted once per command; the reconciler takes it from there.
#[utoipa::path(post, path = "/agent/v1/nodes/{node}/result", tag = "agent",
    params(("node" = String, Path, description = "Name, xname or id of the node")), request_body = AgentResult,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn result(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    JsonBody(result): JsonBody<AgentResult>,
) -> ApiResult<StatusCode> {
    let (node, _) = agent(&state, &headers, &node_id).await?;
    // The inventory becomes the node's properties: held to the same limit as properties.
    state.field_limits.check("inventory", &result.inventory)?;
    state.field_limits.check("error", &result.error)?;
    state.field_limits.check("root_device", &result.root_device)?;
    state.store.record_agent_result(&node.id, &result).await?;
    match &result.error {
        None => tracing::info!(node = %node.name, command = result.id, "agent finished its command"),
        Some(error) => tracing::warn!(node = %node.name, command = result.id, %error, "agent command failed"),
    }
    state.provisioning_wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// The image version the calling agent's node is being deployed with; 404 when the node is
/// not waiting for its agent to deploy.
async fn agent_deploy_version(state: &ApiState, headers: &HeaderMap, node_id: &str) -> ApiResult<kiln_types::image::ImageVersion> {
    let (node, record) = agent(state, headers, node_id).await?;
    let target = waiting_deploy(&node, &record).ok_or_else(|| ApiError::not_found("deploy", &node.name))?;
    Ok(state.store.get_version(&ScopedName::from_key(&target.image), &kiln_types::image::VersionRef::Number(target.version)).await?)
}

/// The boot listener's view of `/agent/v1/nodes/{node}/artifact`: the deploy's disk image as
/// a blob file to send with sendfile(2), when the store is a local directory and the agent's
/// token is good. Anything else goes to the router, which says why (once: no warning here).
pub(crate) async fn resolve_agent_artifact(state: &ApiState, headers: &HeaderMap, node_id: &str) -> crate::boot_listener::Resolved {
    use crate::boot_listener::Resolved;
    let Ok(Some((node, record))) = agent_of_token(state, headers, node_id).await else { return Resolved::Route };
    let Some(target) = waiting_deploy(&node, &record) else { return Resolved::Route };
    let Ok(version) =
        state.store.get_version(&ScopedName::from_key(&target.image), &kiln_types::image::VersionRef::Number(target.version)).await
    else {
        return Resolved::Route;
    };
    let Some(artifact) = version.artifact(ArtifactKind::Disk) else { return Resolved::Route };
    crate::images::artifact_file(state, &version, artifact, "private, no-store")
}

/// The disk image of the node's deploy, for its agent only (the image may be private).
/// Ranges are honoured, so an agent resumes a cut download where it stopped.
#[utoipa::path(get, path = "/agent/v1/nodes/{node}/artifact", tag = "agent",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 401, body = ErrorBody)))]
pub async fn artifact(
    State(state): State<ApiState>,
    method: Method,
    headers: HeaderMap,
    Path(node_id): Path<String>,
) -> ApiResult<Response> {
    let version = agent_deploy_version(&state, &headers, &node_id).await?;
    let artifact = crate::images::artifact_of(&version, "disk")?;
    crate::images::serve_artifact(&state, &version, artifact, &method, &headers).await
}

/// The block map of the node's deploy image: its data chunks and their SHA-256, for agents
/// to fetch and write only those. Made from the stored image (checked whole first) on the
/// first request and kept.
#[utoipa::path(get, path = "/agent/v1/nodes/{node}/artifact/map", tag = "agent",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    responses((status = 200, body = BlockMap), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn artifact_map(State(state): State<ApiState>, headers: HeaderMap, Path(node_id): Path<String>) -> ApiResult<Json<BlockMap>> {
    let version = agent_deploy_version(&state, &headers, &node_id).await?;
    let artifact = crate::images::artifact_of(&version, "disk")?;
    if !is_mappable(artifact) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotMapped, "only raw, uncompressed disk images have block maps"));
    }
    let map = state.block_maps.get(&state.images.blobs, &artifact.sha256).await?;
    Ok(Json(BlockMap::clone(&map)))
}

/// A capture's upload: the node's disk as its agent reads it (zstd-compressed, streamed),
/// stored as a new version of the image the capture names. The agent reports the result
/// afterwards, as for any command.
#[utoipa::path(put, path = "/agent/v1/nodes/{node}/capture", tag = "agent",
    params(("node" = String, Path, description = "Name, xname or id of the node")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = kiln_types::image::ImageVersion), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn capture_upload(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<kiln_types::image::ImageVersion>)> {
    let (node, record) = agent(&state, &headers, &node_id).await?;
    let image = match (node.provision_state, &record.operation.capture_image) {
        (ProvisionState::Capturing, Some(image)) if record.agent_result.is_none() => image.clone(),
        _ => return Err(ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, format!("node '{}' is not capturing", node.name))),
    };
    let note = format!("captured from node {}", node.name);
    let version = crate::uploads::ingest_body_as_version(
        &state,
        &format!("node:{}", node.name),
        &ScopedName::from_key(&image),
        ArtifactKind::Disk,
        body,
        note,
    )
    .await?;
    tracing::info!(node = %node.name, image = %image, version = version.version, "disk captured");
    Ok((StatusCode::CREATED, Json(version)))
}

/// Who holds which machine when: deploys waiting for their start and deploys on nodes, of the
/// nodes the caller sees, earliest first.
#[utoipa::path(get, path = "/v1/reservations", tag = "provisioning",
    responses((status = 200, body = Vec<kiln_types::provision::Reservation>)))]
pub async fn list_reservations(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<kiln_types::provision::Reservation>>> {
    Ok(Json(state.store.list_reservations(&caller.read_scope()).await?))
}
