//! Network boot over HTTP: boot parameters under `/v1/boot/params` (operators), and the
//! paths booting machines use under `/boot/` (no token: a machine in PXE has none).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use kiln_boot::params::lookup_order;
use kiln_boot::{BootParams, BootParamsInput, BootPlan, ScriptContext};
use kiln_types::MacAddress;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::auth::Caller;
use crate::boot_listener::{FileResolver, Resolved, StaticFile};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};

type ErrorBody = kiln_types::api::ErrorBody;

/// Boot settings the HTTP side needs.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// How nodes reach the server (written into scripts).
    pub public_url: String,
    /// Served under `/boot/files/`: kernels, initrds and root images placed by hand.
    pub files_dir: PathBuf,
    /// Served under `/boot/ipxe/`: iPXE binaries, for UEFI HTTP boot.
    pub ipxe_dir: PathBuf,
    /// Whether a machine that asks for a boot script with an unknown MAC is added to the
    /// inventory as `discovered`.
    pub auto_enroll: bool,
    /// How many unknown machines auto-enrolment takes.
    pub enrolment: kiln_db::EnrolmentLimits,
    /// The image whose highest version's kernel and initrd boot the node agent.
    pub ramdisk_image: String,
    /// The API listener's URL, where agents send what is too large for the boot listener
    /// (a captured disk).
    pub api_url: String,
    /// HOST:PORT of the network-disk gateway, when the server has one.
    pub network_disk_address: Option<String>,
    /// When the API listener speaks HTTPS: the certificate the deploy agent trusts there.
    pub api_trust_anchor: Option<ApiTrustAnchor>,
    /// Virtual-media nodes' boot media, served by the boot listener under `/boot/media/` by
    /// unguessable names while their operations last.
    pub media_dir: PathBuf,
}

/// Where the certificate an HTTPS API listener's chain ends in comes from (Kiln's CA, or
/// the last certificate of a site's chain), as it stands after reloads.
pub trait TrustAnchorSource: Send + Sync {
    /// The certificate, DER.
    fn trust_anchor_der(&self) -> Vec<u8>;
}

/// The deploy agent's trust in the HTTPS API listener: the boot script names the anchor's
/// SHA-256 (`kiln.api_ca=`), and the agent fetches the certificate from the boot listener
/// (`/boot/v1/api-ca`) and checks it against that digest before it trusts it.
#[derive(Clone)]
pub struct ApiTrustAnchor(pub Arc<dyn TrustAnchorSource>);

impl std::fmt::Debug for ApiTrustAnchor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiTrustAnchor")
    }
}

impl ApiTrustAnchor {
    fn sha256_hex(&self) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(self.0.trust_anchor_der()))
    }
}

/// The certificate the deploy agent trusts the HTTPS API listener through (DER). Public and
/// unauthenticated, like a CA certificate anywhere: the agent checks it against the digest
/// its boot script carries.
#[utoipa::path(get, path = "/boot/v1/api-ca", tag = "boot", security(()),
    responses((status = 200, content_type = "application/pkix-cert", body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn api_trust_anchor(State(state): State<ApiState>) -> ApiResult<impl IntoResponse> {
    let Some(anchor) = &state.boot.api_trust_anchor else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, crate::error::ErrorCode::NotFound, "the API listener speaks plain HTTP"));
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "application/pkix-cert")], anchor.0.trust_anchor_der()))
}

fn invalid(error: kiln_boot::InvalidBootParams) -> ApiError {
    ApiError::invalid(error.to_string())
}

#[utoipa::path(get, path = "/v1/boot/params", tag = "boot", responses((status = 200, body = Vec<BootParams>), (status = 403, body = ErrorBody)))]
pub async fn list_params(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<BootParams>>> {
    caller.require_admin()?;
    Ok(Json(state.store.list_boot_params().await?))
}

/// `add`: refuses when any target already has parameters.
#[utoipa::path(post, path = "/v1/boot/params", tag = "boot", request_body = BootParamsInput,
    responses((status = 201, body = BootParams), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_params(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<BootParamsInput>,
) -> ApiResult<(StatusCode, Json<BootParams>)> {
    caller.require_admin()?;
    let params = BootParams::try_from(&input).map_err(invalid)?;
    let stored = state.store.put_boot_params(&caller.user, &params, false).await?;
    state.after_node_write().await;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `set`: the targets leave whatever parameters they had.
#[utoipa::path(put, path = "/v1/boot/params", tag = "boot", request_body = BootParamsInput,
    responses((status = 200, body = BootParams), (status = 400, body = ErrorBody)))]
pub async fn set_params(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<BootParamsInput>,
) -> ApiResult<Json<BootParams>> {
    caller.require_admin()?;
    let params = BootParams::try_from(&input).map_err(invalid)?;
    let stored = state.store.put_boot_params(&caller.user, &params, true).await?;
    state.after_node_write().await;
    Ok(Json(stored))
}

/// Takes the listed targets out of their entries.
#[utoipa::path(delete, path = "/v1/boot/params", tag = "boot", request_body = BootParamsInput,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_params(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<BootParamsInput>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let targets = input.targets().map_err(invalid)?;
    if targets.is_empty() {
        return Err(ApiError::invalid("name the targets to delete: macs, hosts, nids or groups"));
    }
    state.store.delete_boot_params(&caller.user, &targets).await?;
    state.after_node_write().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MacQuery {
    /// The MAC address the machine booted from.
    mac: String,
}

fn parse_mac(text: &str) -> Result<MacAddress, ApiError> {
    text.parse().map_err(|error| ApiError::invalid(format!("mac: {error}")))
}

fn ipxe(script: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], script)
}

/// The iPXE script for the machine booting from `mac` (OpenCHAMI BSS's path). An unknown
/// machine is enrolled (when auto-enrolment is on) and gets the default parameters, or a
/// script that waits and asks again.
#[utoipa::path(get, path = "/boot/v1/bootscript", tag = "boot", params(MacQuery), security(()),
    responses((status = 200, content_type = "text/plain", body = String), (status = 400, body = ErrorBody)))]
pub async fn bootscript(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    QueryParams(query): QueryParams<MacQuery>,
) -> ApiResult<impl IntoResponse> {
    let source = request_source(&state, peer, &headers);
    let mac = parse_mac(&query.mac)?;
    let (plan, node) = boot_plan(&state, mac, source).await?;
    let context = ScriptContext { server_url: &state.boot.public_url, mac, node: node.as_deref() };
    Ok(ipxe(kiln_boot::ipxe_script(&plan, &context)))
}

/// What the machine booting from `mac`, asking from `source`, boots next, for any boot
/// loader: provisioning's decision for a node being provisioned, else the boot parameters
/// that apply. An unknown machine is enrolled first, when auto-enrolment is on.
pub(crate) async fn boot_plan(
    state: &ApiState,
    mac: MacAddress,
    source: std::net::IpAddr,
) -> ApiResult<(BootPlan, Option<Arc<kiln_types::node::Node>>)> {
    let view = state.inventory.view();
    let mut node = view.by_mac(&mac).cloned();
    if node.is_none() && state.boot.auto_enroll {
        match state.store.enroll_discovered(mac, state.boot.enrolment).await? {
            kiln_db::Enrolment::Refused(reason) => tracing::debug!(%mac, %reason, "unknown machine not enrolled"),
            enrolment => {
                state.after_node_write().await;
                node = enrolment.node().map(Arc::new);
            }
        }
    }
    if let Some(known) = node.as_deref()
        && let Some(plan) = provisioning_plan(state, known, mac, Requester::Machine(source)).await?
    {
        return Ok((plan, node));
    }
    let order = lookup_order(mac, node.as_deref());
    // Enrolment adds a node, not boot parameters: the view taken above still has them all.
    let context = ScriptContext { server_url: &state.boot.public_url, mac, node: node.as_deref() };
    let plan = match view.boot_params_for(&order) {
        Some(params) => BootPlan::from_params(params, &context),
        None => BootPlan::AskAgain,
    };
    tracing::debug!(%mac, node = node.as_ref().map(|n| n.name.as_str()), "boot plan made");
    Ok((plan, node))
}

/// Who a provisioning plan is made for. A plan can carry secrets (an agent token, a network
/// disk's export name): a machine asking over the network gets them only from an address
/// Kiln gave it; a boot medium Kiln makes itself is served under a secret name, for the
/// node's BMC to fetch.
#[derive(Debug, Clone, Copy)]
enum Requester {
    Machine(std::net::IpAddr),
    BootMedium,
}

impl Requester {
    fn may_have_secrets_of(self, state: &ApiState, node: &kiln_types::node::Node, mac: MacAddress) -> bool {
        match self {
            Requester::Machine(peer) => speaks_for(state, node, mac, peer),
            Requester::BootMedium => true,
        }
    }
}

/// What a virtual-media node boots now, for the boot medium made for it: what its boot
/// script would say, were it asking from its own address. `None` when it is to boot nothing.
pub async fn boot_medium_plan(state: &ApiState, node: &kiln_types::node::Node) -> ApiResult<Option<BootPlan>> {
    let mac = kiln_types::static_network::StaticNetwork::of_node(node)
        .map(|network| network.mac)
        .or_else(|| node.interfaces.first().map(|interface| interface.mac_addr))
        .ok_or_else(|| ApiError::invalid("a node that boots from virtual media needs an interface (its MAC names it to its agent)"))?;
    provisioning_plan(state, node, mac, Requester::BootMedium).await
}

/// The plan of a node that provisioning decides the boot of: the deploy ramdisk while an
/// agent is to run, the local disk once deployed to it. `None`: boot parameters decide.
async fn provisioning_plan(
    state: &ApiState,
    node: &kiln_types::node::Node,
    mac: MacAddress,
    requester: Requester,
) -> ApiResult<Option<BootPlan>> {
    use kiln_types::ProvisionState::*;
    use kiln_types::provision::DeployMode;
    let agent_states = matches!(node.provision_state, Deploying | WaitAgent | Inspecting | Undeploying | Cleaning | Capturing);
    if !agent_states && node.provision_state != Active {
        return Ok(None);
    }
    let context = ScriptContext { server_url: &state.boot.public_url, mac, node: Some(node) };
    let status = state.store.provision_record(&node.id).await?.unwrap_or_default();
    let deployed_to_disk = status.target.as_ref().is_some_and(|target| target.mode == DeployMode::Disk);
    let waiting_for_system = status.step == Some(kiln_types::provision::ProvisionStep::WaitCallback);
    let running_image = node.provision_state == Active || waiting_for_system;
    if deployed_to_disk && running_image {
        return Ok(Some(BootPlan::LocalDisk));
    }
    if let Some(target) = status.target.as_ref().filter(|target| target.mode == DeployMode::Live)
        && (running_image || node.provision_state == Deploying)
    {
        return live_plan(state, &context, target).await;
    }
    if let Some(target) = status.target.as_ref().filter(|target| target.mode == DeployMode::Network)
        && (running_image || node.provision_state == Deploying)
    {
        return network_disk_plan(state, &context, target, requester).await;
    }
    if !agent_states || waiting_for_system {
        return Ok(None);
    }
    // The script carries the agent's token: only the machine itself may have it.
    if !requester.may_have_secrets_of(state, node, mac) {
        tracing::warn!(node = %node.name, %mac, ?requester, "a boot script with an agent token was asked for from an address Kiln did not give this MAC; none served");
        return Ok(Some(BootPlan::AskAgain));
    }
    let Some(token) = state.store.boot_agent_token(&node.id).await? else {
        // Between steps (the token not minted yet): ask again shortly.
        return Ok(Some(BootPlan::AskAgain));
    };
    let Some((kernel, initrd)) = ramdisk_urls(state, node).await else { return Ok(Some(BootPlan::AskAgain)) };
    let ramdisk = kiln_boot::RamdiskUrls { kernel: &kernel, initrd: &initrd };
    tracing::info!(node = %node.name, %mac, state = %node.provision_state, "deploy ramdisk boot script served");
    let digest = state.boot.api_trust_anchor.as_ref().map(ApiTrustAnchor::sha256_hex);
    let api = kiln_boot::AgentApi { url: &state.boot.api_url, trust_anchor_sha256: digest.as_deref() };
    Ok(Some(BootPlan::deploy_agent(&context, ramdisk, &node.id, &token, api)))
}

/// The deploy ramdisk image `node` boots its agent from: its own, where it was enrolled
/// through the Ironic API with `deploy_kernel` and `deploy_ramdisk` URLs that have been
/// fetched, else the site's.
async fn deploy_ramdisk_of(state: &ApiState, node: &kiln_types::node::Node) -> kiln_types::scoped_name::ScopedName {
    let site = kiln_types::scoped_name::ScopedName::from_key(&state.boot.ramdisk_image);
    let Ok(ironic) = state.store.ironic_fields(&node.id).await else { return site };
    let Some((kernel, ramdisk)) = kiln_ironic::images::deploy_ramdisk_urls(&ironic.driver_info) else { return site };
    let own = kiln_types::scoped_name::ScopedName::new(None, &kiln_ironic::images::deploy_ramdisk_image_name(kernel, ramdisk));
    if state.store.list_versions(&own).await.is_ok_and(|versions| !versions.is_empty()) {
        return own;
    }
    tracing::warn!(node = %node.name, %kernel, %ramdisk, "the node's deploy kernel and ramdisk are not fetched yet (an Ironic provision verb fetches them); the site's deploy ramdisk boots");
    site
}

/// The kernel and initramfs URLs of the node's deploy ramdisk's highest version.
async fn ramdisk_urls(state: &ApiState, node: &kiln_types::node::Node) -> Option<(String, String)> {
    let ramdisk = deploy_ramdisk_of(state, node).await;
    let versions = state.store.list_versions(&ramdisk).await.unwrap_or_default();
    let Some(version) = versions.iter().map(|version| version.version).max() else {
        tracing::warn!(node = %node.name, image = %ramdisk, "no deploy ramdisk image: run `kiln build ramdisk`");
        return None;
    };
    // The exact key: a bare name could, once this image is not public, name another's.
    let base = format!("{}/boot/images/{}/{version}", state.boot.public_url, ramdisk.path_segment());
    Some((format!("{base}/kernel"), format!("{base}/initrd")))
}

/// A live node's plan: the image's own kernel and initramfs with `root=live:URL` (dracut's
/// convention, as OpenCHAMI images expect), or, for an image without an initramfs, the
/// deploy ramdisk's, whose init fetches the root (`kiln.live=URL`), checks its SHA-256 and
/// boots it under a RAM overlay.
async fn live_plan(
    state: &ApiState,
    context: &ScriptContext<'_>,
    target: &kiln_types::provision::DeployTarget,
) -> ApiResult<Option<BootPlan>> {
    use kiln_types::image::{ArtifactKind, VersionRef};
    let node = context.node.expect("live nodes are known");
    let image = kiln_types::scoped_name::ScopedName::from_key(&target.image);
    let version = state.store.get_version(&image, &VersionRef::Number(target.version)).await?;
    // The exact key: a live image must stay public to be served, and a bare name could name
    // another project's public image.
    let base = format!("{}/boot/images/{}/{}", state.boot.public_url, image.path_segment(), target.version);
    let Some(root) = version.artifact(ArtifactKind::Root) else { return Ok(Some(BootPlan::AskAgain)) };
    let root_url = format!("{base}/root");
    let console = "console=tty0 console=ttyS0,115200";
    let server = &state.boot.public_url;
    let plan = match (version.artifact(ArtifactKind::Kernel), version.artifact(ArtifactKind::Initrd)) {
        (Some(_), Some(_)) => BootPlan::live(
            &format!("{base}/kernel"),
            &format!("{base}/initrd"),
            // dracut's livenet fetches the root into RAM itself: `rd.live.ram` would copy it
            // a second time. `ip=dhcp` as OpenCHAMI's boot parameters have it.
            &format!("{console} root=live:{root_url} ip=dhcp rd.live.overlay.overlayfs=1 kiln.server={server}"),
        ),
        _ => {
            let Some((kernel, initrd)) = ramdisk_urls(state, node).await else {
                return Ok(Some(BootPlan::AskAgain));
            };
            let command_line = format!("{console} kiln.live={root_url} kiln.live.sha256={} kiln.server={server}", root.sha256);
            BootPlan::live(&kernel, &initrd, &command_line)
        }
    };
    tracing::info!(node = %node.name, image = %target.image, version = target.version, "live boot planned");
    Ok(Some(plan))
}

/// A network-mode node's plan: the deploy ramdisk's kernel and initramfs, whose init
/// attaches the node's clone over NBD (`kiln.nbd=`, `kiln.nbd.export=`) and boots the root
/// it finds there in place. The export name is the clone's credential: like an agent token,
/// only the node's own address is given it.
async fn network_disk_plan(
    state: &ApiState,
    context: &ScriptContext<'_>,
    target: &kiln_types::provision::DeployTarget,
    requester: Requester,
) -> ApiResult<Option<BootPlan>> {
    let node = context.node.expect("network-mode nodes are known");
    let Some(address) = state.boot.network_disk_address.as_deref() else {
        tracing::warn!(node = %node.name, "a network-mode node boots, but this server has no [netdisk]");
        return Ok(Some(BootPlan::AskAgain));
    };
    if !requester.may_have_secrets_of(state, node, context.mac) {
        tracing::warn!(node = %node.name, mac = %context.mac, ?requester, "a network disk's boot script was asked for from an address Kiln did not give this MAC; none served");
        return Ok(Some(BootPlan::AskAgain));
    }
    // Between the deploy's steps (the clone not made yet): ask again shortly.
    let Some(export) = state.store.network_disk_export(&node.id).await? else {
        return Ok(Some(BootPlan::AskAgain));
    };
    let Some((kernel, initrd)) = ramdisk_urls(state, node).await else { return Ok(Some(BootPlan::AskAgain)) };
    let command_line =
        format!("console=tty0 console=ttyS0,115200 kiln.nbd={address} kiln.nbd.export={export} kiln.server={}", state.boot.public_url);
    tracing::info!(node = %node.name, image = %target.image, version = target.version, "network disk boot planned");
    Ok(Some(BootPlan::network_disk(&kernel, &initrd, &command_line)))
}

/// A booted system's proof of life: records an event for the node with this MAC.
#[utoipa::path(get, path = "/boot/v1/phone-home", tag = "boot", params(MacQuery), security(()),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn phone_home(
    state: State<ApiState>,
    peer: ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    query: QueryParams<MacQuery>,
) -> ApiResult<StatusCode> {
    record_phone_home(state, peer, headers, query).await
}

/// The same proof of life as a POST, as cloud-init's `phone_home` module sends it (its form
/// body is not read: the MAC in the query names the node).
#[utoipa::path(post, path = "/boot/v1/phone-home", tag = "boot", operation_id = "phone_home_post", params(MacQuery), security(()),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn phone_home_post(
    state: State<ApiState>,
    peer: ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    query: QueryParams<MacQuery>,
) -> ApiResult<StatusCode> {
    record_phone_home(state, peer, headers, query).await
}

async fn record_phone_home(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    QueryParams(query): QueryParams<MacQuery>,
) -> ApiResult<StatusCode> {
    let source = request_source(&state, peer, &headers);
    let mac = parse_mac(&query.mac)?;
    let view = state.inventory.view();
    let node = view.by_mac(&mac).ok_or_else(|| ApiError::not_found("node with MAC", &mac.to_string()))?;
    // Anyone may say a machine is up (the event records from where), but only the
    // machine itself, from its own address, completes a deploy waiting for its callback.
    let verified = speaks_for(&state, node, mac, source);
    state.store.record_phone_home(node, &source.to_string(), verified).await?;
    tracing::info!(%mac, node = %node.name, address = %source, verified, "node phoned home");
    Ok(StatusCode::NO_CONTENT)
}

/// Where a machine's request comes from: the peer, or, behind a trusted proxy
/// (`cloud_init.trusted_proxies`), the address it forwarded for. A forwarded address from
/// any other peer is ignored.
pub(crate) fn request_source(state: &ApiState, peer: std::net::SocketAddr, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
    crate::cloud_init::client_address(&state.cloud_init, peer.ip(), headers).unwrap_or_else(|_| peer.ip().to_canonical())
}

/// Whether any of `node`'s interfaces may be speaking from `peer` (see [`speaks_for`]).
pub(crate) fn node_speaks_from(state: &ApiState, node: &kiln_types::node::Node, peer: std::net::IpAddr) -> bool {
    node.interfaces.iter().any(|interface| speaks_for(state, node, interface.mac_addr, peer))
}

/// Whether a request from `peer` may speak for the machine with `mac`, a node's: it comes
/// from one of the node's reserved addresses, or from the address Kiln's DHCP leased to
/// that MAC. MAC addresses are not secrets; this rule is what keeps a boot script's
/// secrets for the machine they were meant for.
pub(crate) fn speaks_for(state: &ApiState, node: &kiln_types::node::Node, mac: MacAddress, peer: std::net::IpAddr) -> bool {
    assigned_to(node, state.leases.as_deref(), [mac], peer)
}

/// Whether `peer` is an address Kiln gave `node`: one of its reserved addresses, or the one
/// Kiln's DHCP leased to one of `macs`. The rule for everything a node receives beyond the
/// public (boot scripts with secrets here, network disks at the gateway).
pub fn assigned_to(
    node: &kiln_types::node::Node,
    leases: Option<&dyn kiln_types::lease::LeaseLookup>,
    macs: impl IntoIterator<Item = MacAddress>,
    peer: std::net::IpAddr,
) -> bool {
    let peer = peer.to_canonical();
    let reserved = node
        .interfaces
        .iter()
        .flat_map(|interface| interface.ip_addrs.iter())
        .any(|entry| entry.ip_addr.parse::<std::net::IpAddr>().is_ok_and(|address| address == peer));
    reserved || leases.is_some_and(|leases| macs.into_iter().any(|mac| leases.leased_address(mac).is_some_and(|address| peer == address)))
}

/// What a request path names under a served directory.
enum ServedFile {
    /// A regular file inside the directory: where it is, its ETag and its metadata.
    Inside { path: PathBuf, etag: String, size: u64, modified: std::time::SystemTime },
    /// Something that resolves outside the directory (a symbolic link out of it).
    Outside,
    /// Nothing, or a path left to `ServeDir` to decode and refuse.
    Other,
}

/// Serves files of a directory (`/boot/files`, `/boot/ipxe`) through `ServeDir` (Range,
/// Last-Modified), adding what it lacks: an ETag built from the file's modification time and
/// size as nginx does, `If-None-Match` answered with 304, and confinement: a symbolic link
/// that leads out of the directory is not followed, as the TFTP server does not follow one.
pub async fn file_etags(
    State(root): State<Arc<PathBuf>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let etag = match served_file(&root, request.uri().path()).await {
        ServedFile::Inside { etag, .. } => etag,
        ServedFile::Outside => {
            return ApiError::not_found("file", request.uri().path()).into_response();
        }
        ServedFile::Other => return next.run(request).await,
    };
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == etag));
    let value = header::HeaderValue::from_str(&etag).expect("hex digits and quotes are a valid header value");
    if matches && (request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, value)]).into_response();
    }
    let mut response = next.run(request).await;
    if response.status().is_success() {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn served_file(root: &std::path::Path, path: &str) -> ServedFile {
    let relative = path.trim_start_matches('/');
    // `..` and `.` are ServeDir's to refuse (it never lets them climb out). Percent-encoded
    // names are refused here: decoded, they could name a link this check did not see. Boot
    // file names do not need encoding.
    if relative.is_empty() || relative.contains(['%', '\\', '\0']) || relative.split('/').any(|part| part == ".." || part == ".") {
        return if relative.contains('%') { ServedFile::Outside } else { ServedFile::Other };
    }
    let Ok(root) = tokio::fs::canonicalize(root).await else { return ServedFile::Other };
    let Ok(file) = tokio::fs::canonicalize(root.join(relative)).await else { return ServedFile::Other };
    if !file.starts_with(&root) {
        return ServedFile::Outside;
    }
    let Ok(metadata) = tokio::fs::metadata(&file).await else { return ServedFile::Other };
    let modified = metadata.modified().ok().and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok());
    match modified {
        Some(modified) if metadata.is_file() => {
            let etag = format!("\"{:x}-{:x}-{:x}\"", modified.as_secs(), modified.subsec_nanos(), metadata.len());
            let modified_at = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
            ServedFile::Inside { path: file, etag, size: metadata.len(), modified: modified_at }
        }
        _ => ServedFile::Other,
    }
}

/// What the boot listener sends for a path: a file of `/boot/files/` or `/boot/ipxe/`, a
/// public image's artifact from the local blob store, or nothing (the router answers).
pub async fn resolve_boot_file(state: &ApiState, path: &str, headers: &axum::http::HeaderMap) -> Resolved {
    use crate::routes::{
        AGENT_ARTIFACT_SUFFIX, AGENT_NODES_PREFIX, BOOT_FILES_PREFIX, BOOT_IMAGES_PREFIX, BOOT_IPXE_PREFIX, BOOT_MEDIA_PREFIX,
    };
    let below = |prefix: &str| path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/'));
    let (root, relative) = if let Some(node_id) = below(AGENT_NODES_PREFIX).and_then(|rest| rest.strip_suffix(AGENT_ARTIFACT_SUFFIX)) {
        return crate::provision::resolve_agent_artifact(state, headers, node_id).await;
    } else if let Some(relative) = below(BOOT_FILES_PREFIX) {
        (&state.boot.files_dir, relative)
    } else if let Some(relative) = below(BOOT_IPXE_PREFIX) {
        (&state.boot.ipxe_dir, relative)
    } else if let Some(relative) = below(BOOT_MEDIA_PREFIX) {
        (&state.boot.media_dir, relative)
    } else if let Some(rest) = below(BOOT_IMAGES_PREFIX) {
        return crate::images::resolve_boot_artifact(state, rest).await;
    } else {
        return Resolved::Route;
    };
    match served_file(root, relative).await {
        ServedFile::Inside { path, etag, size, modified } => match std::fs::File::open(&path) {
            Ok(file) => Resolved::File(StaticFile {
                file,
                size,
                etag,
                last_modified: modified,
                content_type: "application/octet-stream",
                cache_control: None,
            }),
            Err(_) => Resolved::NotFound,
        },
        ServedFile::Outside | ServedFile::Other => Resolved::NotFound,
    }
}

/// [`resolve_boot_file`] as the boot listener's resolver.
pub struct BootFiles(pub ApiState);

impl FileResolver for BootFiles {
    fn resolve<'a>(&'a self, path: &'a str, headers: &'a axum::http::HeaderMap) -> futures::future::BoxFuture<'a, Resolved> {
        Box::pin(resolve_boot_file(&self.0, path, headers))
    }
}
