//! Kiln's REST API: the HTTP handlers under `/v1`, health and metrics, and the OpenAPI
//! document that describes them.
//!
//! Handlers are thin: they authenticate (by taking a [`auth::Caller`]), decide access by
//! asking the caller's context, validate input into specs, and call the store.

pub mod auth;
pub mod bmc_discovery;
pub mod boot;
pub mod boot_listener;
pub mod cloud_init;
pub mod error;
mod events;
mod extract;
mod groups;
pub mod images;
pub mod metrics;
mod nodes;
mod openapi;
mod power;
pub mod provision;
mod tenancy;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};
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

/// The API's routes. Bodies larger than `max_body_bytes` are refused with 413.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/whoami", get(tenancy::whoami))
        .route("/nodes", get(nodes::list_nodes).post(nodes::create_node))
        .route("/nodes/{node}", get(nodes::get_node).patch(nodes::update_node).delete(nodes::delete_node))
        .route("/nodes/{node}/power", get(power::get_power).post(power::set_power))
        .route("/nodes/{node}/power/sync", get(power::get_power_reading))
        .route("/nodes/{node}/boot-device", put(power::set_boot_device))
        .route("/nodes/{node}/bmc/facts", get(power::get_facts))
        .route("/nodes/{node}/provision", get(provision::status))
        .route("/nodes/{node}/deploy", post(provision::deploy))
        .route("/nodes/{node}/undeploy", post(provision::undeploy))
        .route("/nodes/{node}/inspect", post(provision::inspect))
        .route("/nodes/{node}/clean", post(provision::clean))
        .route("/nodes/{node}/manage", post(provision::manage))
        .route("/nodes/{node}/provide", post(provision::provide))
        .route("/nodes/{node}/capture", post(provision::capture))
        .route("/discover/static", post(nodes::discover_static))
        .route("/discover/redfish", post(bmc_discovery::discover_redfish))
        .route("/projects", get(tenancy::list_projects).post(tenancy::create_project))
        .route("/projects/{project}", get(tenancy::get_project).delete(tenancy::delete_project))
        .route("/projects/{project}/members", put(tenancy::set_member))
        .route("/projects/{project}/members/{user}", delete(tenancy::remove_member))
        .route("/projects/{project}/allocate", post(nodes::allocate_nodes))
        .route("/projects/{project}/release", post(nodes::release_nodes))
        .route("/users", get(tenancy::list_users).post(tenancy::create_user))
        .route("/users/{user}", get(tenancy::get_user).delete(tenancy::delete_user))
        .route("/tokens", get(tenancy::list_tokens).post(tenancy::create_token))
        .route("/tokens/{id}", delete(tenancy::revoke_token))
        .route("/groups", get(groups::list_groups).post(groups::create_group))
        .route("/groups/{group}", get(groups::get_group).patch(groups::update_group).delete(groups::delete_group))
        .route("/events", get(events::list_events))
        .route("/boot/params", get(boot::list_params).post(boot::add_params).put(boot::set_params).delete(boot::delete_params))
        .route("/images", get(images::list_images).post(images::create_image))
        .route("/images/gc", post(images::collect_garbage))
        .route("/images/verify", post(images::verify_blobs))
        .route("/images/{image}", get(images::get_image).patch(images::update_image).delete(images::delete_image))
        .route("/images/{image}/versions", get(images::list_versions).post(uploads::create_version))
        .route("/images/{image}/versions/{version}", get(images::get_version).delete(images::delete_version))
        .route("/images/{image}/versions/{version}/get-kernel", post(uploads::get_kernel))
        .route("/images/{image}/versions/{version}/{artifact}", get(images::download_artifact))
        .route("/images/{image}/tags/{tag}", put(images::set_tag).delete(images::delete_tag))
        .route("/images/{image}/clone", post(images::clone_image))
        .route("/images/{image}/import", post(uploads::import_image))
        .route("/uploads", post(uploads::create_upload))
        .route(
            "/uploads/{id}",
            get(uploads::get_upload)
                .patch(uploads::append_upload)
                .delete(uploads::delete_upload)
                // Upload bodies are streamed to disk, never held: no size limit applies.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/cloud-init/defaults", get(cloud_init::get_defaults).put(cloud_init::set_defaults))
        .route("/cloud-init/groups", get(cloud_init::list_groups).post(cloud_init::set_groups))
        .route("/cloud-init/groups/{group}", get(cloud_init::get_group).delete(cloud_init::delete_group))
        .route("/cloud-init/groups/{group}/render/{node}", get(cloud_init::render_group))
        .route("/cloud-init/nodes", post(cloud_init::set_nodes))
        .route("/cloud-init/nodes/{node}", get(cloud_init::get_node))
        .route("/cloud-init/nodes/{node}/meta-data", get(cloud_init::node_meta_data))
        .route("/cloud-init/nodes/{node}/vendor-data", get(cloud_init::node_vendor_data))
        .route("/cloud-init/nodes/{node}/token", post(cloud_init::mint_token))
        .route("/openapi.json", get(openapi::serve_document));
    Router::new()
        .nest("/v1", v1)
        .merge(node_routes(&state))
        .route("/cloud-init/admin/impersonation/{node}/{document}", get(cloud_init::impersonate))
        .route("/metrics", get(metrics::metrics_endpoint))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::observe))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The routes of the boot listener: what booting machines and booted nodes ask for, and
/// health. Files the listener can send from the kernel never reach these routes; the rest
/// do. The API listener serves the same routes, for sites with one port.
pub fn boot_router(state: ApiState) -> Router {
    node_routes(&state).fallback(not_found).layer(axum::middleware::from_fn_with_state(state.clone(), metrics::observe)).with_state(state)
}

/// What machines use, without a token: boot scripts, phone-home, boot files and images,
/// cloud-init documents.
fn node_routes(state: &ApiState) -> Router<ApiState> {
    let served_directory = |directory: &std::path::Path| {
        Router::new()
            .fallback_service(tower_http::services::ServeDir::new(directory))
            .layer(axum::middleware::from_fn_with_state(Arc::new(directory.to_owned()), boot::file_etags))
    };
    Router::new()
        .route("/boot/v1/bootscript", get(boot::bootscript))
        .route("/boot/v1/phone-home", get(boot::phone_home).post(boot::phone_home))
        .route("/boot/images/{image}/{version}/{artifact}", get(images::boot_artifact))
        .nest("/boot/files", served_directory(&state.boot.files_dir))
        .nest("/boot/ipxe", served_directory(&state.boot.ipxe_dir))
        .route("/cloud-init/{document}", get(cloud_init::node_document))
        .route("/cloud-init-secure/{document}", get(cloud_init::secure_document_bearer))
        .route("/cloud-init-secure/{token}/{document}", get(cloud_init::secure_document))
        .route("/agent/v1/nodes/{node}/heartbeat", post(provision::heartbeat))
        .route("/agent/v1/nodes/{node}/result", post(provision::result))
        .route("/agent/v1/nodes/{node}/artifact", get(provision::artifact))
        .route("/agent/v1/nodes/{node}/artifact/map", get(provision::artifact_map))
        // A disk image streamed in: no body limit applies.
        .route("/agent/v1/nodes/{node}/capture", put(provision::capture_upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/healthz", get(healthz))
}

/// Liveness and readiness: answers 200 when the database answers.
async fn healthz(axum::extract::State(state): axum::extract::State<ApiState>) -> Result<&'static str, error::ApiError> {
    state.store.ping().await?;
    Ok("ok\n")
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::new(axum::http::StatusCode::NOT_FOUND, error::ErrorCode::NotFound, format!("no such endpoint: {}", uri.path()))
}
