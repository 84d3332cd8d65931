//! Kiln's REST API: the HTTP handlers under `/v1`, health and metrics, and the OpenAPI
//! document that describes them.
//!
//! Handlers are thin: they authenticate (by taking a [`auth::Caller`]), decide access by
//! asking the caller's context, validate input into specs, and call the store.

pub mod auth;
pub mod bmc_discovery;
pub mod body;
pub mod boot;
pub mod boot_listener;
pub mod boot_tftp;
pub mod cloud_init;
pub mod console;
pub mod error;
mod events;
mod extract;
mod groups;
pub mod images;
pub mod ironic;
pub mod metrics;
mod nodes;
mod openapi;
mod power;
pub mod provision;
pub mod routes;
mod tenancy;
mod uploads;
pub mod web;

pub use body::{BodyLimits, FieldLimits};
use std::sync::Arc;

use axum::Router;
use kiln_db::{Inventory, Store};

pub use openapi::openapi_document;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// Node reads are served from here; writes go to the store, then refresh it.
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<metrics::Metrics>,
    pub tokens: Arc<auth::TokenCache>,
    pub boot: Arc<boot::BootSettings>,
    pub images: Arc<images::ImageSettings>,
    pub cloud_init: Arc<cloud_init::CloudInitSettings>,
    pub(crate) cloud_init_cache: Arc<cloud_init::MetaDataCache>,
    /// Wakes this replica's reconciler when a request or an agent's result is recorded.
    pub provisioning_wake: Arc<tokio::sync::Notify>,
    /// Block maps of raw disk images, made once per image on this replica.
    pub(crate) block_maps: Arc<provision::BlockMaps>,
    /// How large free-form fields may be.
    pub field_limits: body::FieldLimits,
    /// What Kiln's own DHCP server has leased, when it runs one here: with the nodes'
    /// reserved addresses, where a machine may speak for its MAC from.
    pub leases: Option<Arc<dyn kiln_types::lease::LeaseLookup>>,
    /// How the Ironic-compatible API is reached.
    pub ironic: ironic::IronicSettings,
    /// How the web console keeps sessions.
    pub web: web::WebSettings,
    /// The serial consoles this replica reads, and the way to type into them.
    pub consoles: Arc<console::ConsoleHub>,
    /// The console's live streams open on this replica.
    pub(crate) web_streams: Arc<web::LiveStreams>,
}

impl ApiState {
    pub fn new(
        store: Store,
        inventory: Arc<Inventory>,
        boot: boot::BootSettings,
        images: images::ImageSettings,
        cloud_init: cloud_init::CloudInitSettings,
    ) -> Self {
        ApiState {
            store,
            inventory,
            metrics: Arc::default(),
            tokens: Arc::default(),
            boot: Arc::new(boot),
            images: Arc::new(images),
            cloud_init: Arc::new(cloud_init),
            cloud_init_cache: Arc::default(),
            provisioning_wake: Arc::default(),
            block_maps: Arc::default(),
            field_limits: body::FieldLimits::default(),
            leases: None,
            ironic: ironic::IronicSettings::default(),
            web: web::WebSettings::default(),
            web_streams: Arc::default(),
            consoles: Arc::default(),
        }
    }

    /// Brings the inventory view up to date after a write, so the caller reads its own
    /// write. A failure here is not the write's failure: the follower catches up later.
    pub(crate) async fn after_node_write(&self) {
        if let Err(error) = self.inventory.refresh().await {
            tracing::warn!(%error, "refreshing the inventory view after a write failed");
        }
    }
}

/// The API's routes (the route table's, with metrics and body limits). Bodies larger than
/// `limits.max_bytes` are refused with 413, bodies that go quiet with 408.
pub fn router(state: ApiState, limits: BodyLimits) -> Router {
    let (routes, _) = routes::api_table(file_mounts(&state)).split();
    with_listener_layers(routes.merge(routes::compatible_apis()), state, limits)
}

/// The routes of the boot listener: what booting machines and booted nodes ask for, and
/// health. Files the listener can send from the kernel never reach these routes; the rest
/// do. The API listener serves the same routes, for sites with one port.
pub fn boot_router(state: ApiState, limits: BodyLimits) -> Router {
    // Machines send heartbeats, inventories and callbacks: small. The API's larger limit is
    // for people's documents.
    let limits = BodyLimits { max_bytes: limits.max_bytes.min(BOOT_MAX_BODY_BYTES), ..limits };
    let (routes, _) = routes::node_table(file_mounts(&state)).split();
    with_listener_layers(routes, state, limits)
}

/// What every listener's routes get: the 404 for the rest, metrics, and body limits.
fn with_listener_layers(routes: axum::Router<ApiState>, state: ApiState, limits: BodyLimits) -> Router {
    routes
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(limits, body::limit_bodies))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::observe))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_bytes))
        .with_state(state)
}

/// The largest body the boot listener takes (axum's default, which it had before).
const BOOT_MAX_BODY_BYTES: usize = 2 << 20;

fn file_mounts(state: &ApiState) -> routes::FileMounts<'_> {
    routes::FileMounts { files_dir: &state.boot.files_dir, ipxe_dir: &state.boot.ipxe_dir }
}

/// Liveness and readiness: answers 200 when the database answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "ok", content_type = "text/plain"), (status = 500, body = kiln_types::api::ErrorBody)))]
async fn healthz(axum::extract::State(state): axum::extract::State<ApiState>) -> Result<&'static str, error::ApiError> {
    state.store.ping().await?;
    Ok("ok\n")
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::new(axum::http::StatusCode::NOT_FOUND, error::ErrorCode::NotFound, format!("no such endpoint: {}", uri.path()))
}
