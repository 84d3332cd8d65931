//! The one route table: every route the API and boot listeners serve, registered together
//! with its OpenAPI operation, so the router and the document cannot drift apart.
//!
//! Routes are added only through [`RouteTable::documented`], which takes utoipa-axum's
//! `routes!` (a handler without a `#[utoipa::path]` does not compile there, and the path
//! and method come from that annotation alone). The one exception is a directory served as
//! files, added through [`RouteTable::mount`] under a prefix of [`UNDOCUMENTED_MOUNTS`]; a
//! test fails for any other mount. Other systems' APIs that Kiln speaks (Ironic's) are
//! documented by those systems: they are served beside the table, under the prefixes of
//! [`COMPATIBLE_APIS`].

use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::{ApiState, bmc_discovery, boot, cloud_init, console, events, groups, images, metrics, nodes, openapi, power, provision};
use crate::{tenancy, uploads};

/// Files under the data directory's `boot-files`, any path below it.
pub const BOOT_FILES_PREFIX: &str = "/boot/files";
/// Debian's iPXE binaries, any path below the iPXE directory.
pub const BOOT_IPXE_PREFIX: &str = "/boot/ipxe";
/// Virtual-media nodes' boot media, on the boot listener only: `/boot/media/{name}`, by
/// names that are unguessable and gone when the operation ends (a medium can carry an
/// agent token).
pub const BOOT_MEDIA_PREFIX: &str = "/boot/media";
/// Public images' artifacts: `/boot/images/{image}/{version}/{artifact}`.
pub const BOOT_IMAGES_PREFIX: &str = "/boot/images";
/// What an agent asks for: `/agent/v1/nodes/{node}/…`.
pub const AGENT_NODES_PREFIX: &str = "/agent/v1/nodes";
/// The suffix of the agent's artifact download under [`AGENT_NODES_PREFIX`].
pub const AGENT_ARTIFACT_SUFFIX: &str = "/artifact";

/// The prefixes that may be served without an OpenAPI operation, and why: directories of
/// files, whose paths are whatever the directory holds.
pub const UNDOCUMENTED_MOUNTS: [(&str, &str); 2] = [
    (BOOT_FILES_PREFIX, "a directory of boot files: its paths are the files in it"),
    (BOOT_IPXE_PREFIX, "the iPXE binaries' directory: its paths are the files in it"),
];

/// Other systems' APIs that Kiln answers as those systems document them, outside Kiln's
/// OpenAPI document: each prefix, and whose API it is.
pub const COMPATIBLE_APIS: [(&str, &str); 1] =
    [(crate::ironic::IRONIC_PREFIX, "OpenStack Ironic's v1 API, as Ironic's API reference documents it")];

/// Pages for people rather than an API: the web console, whose pages call the documented
/// handlers and are described by the handlers they call.
pub const PAGES: (&str, &str) = (crate::web::WEB_CONSOLE_PREFIX, "the web console's HTML pages, which call the documented handlers");

/// The routes of [`COMPATIBLE_APIS`] and [`PAGES`], which the API listener serves beside the
/// table's.
pub fn compatible_apis() -> axum::Router<ApiState> {
    crate::ironic::router().merge(crate::web::router())
}

/// Where the boot listener's file mounts read from.
#[derive(Debug, Clone, Copy)]
pub struct FileMounts<'a> {
    pub files_dir: &'a Path,
    pub ipxe_dir: &'a Path,
}

/// The routes of one listener and their documentation, built together.
pub struct RouteTable {
    router: OpenApiRouter<ApiState>,
    mounts: Vec<&'static str>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable { router: OpenApiRouter::with_openapi(openapi::base_document()), mounts: Vec::new() }
    }

    /// Handlers that share one path, each with its `#[utoipa::path]`.
    fn documented(mut self, routes: UtoipaMethodRouter<ApiState>) -> Self {
        self.router = self.router.routes(routes);
        self
    }

    /// A directory served as files under `prefix`.
    fn mount(mut self, prefix: &'static str, directory: &Path) -> Self {
        let served = axum::Router::new()
            .fallback_service(tower_http::services::ServeDir::new(directory))
            .layer(axum::middleware::from_fn_with_state(Arc::new(directory.to_owned()), boot::file_etags));
        self.router = self.router.nest_service(prefix, served);
        self.mounts.push(prefix);
        self
    }

    fn merge(mut self, other: RouteTable) -> Self {
        self.router = self.router.merge(other.router);
        self.mounts.extend(other.mounts);
        self
    }

    /// The prefixes served as directories.
    pub fn mounts(&self) -> &[&'static str] {
        &self.mounts
    }

    /// The router and the OpenAPI document of what it serves.
    pub fn split(self) -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
        self.router.split_for_parts()
    }
}

/// Everything the API listener serves: `/v1`, the operator's cloud-init impersonation,
/// metrics, and the node-facing routes (for sites with one port).
pub fn api_table(mounts: FileMounts<'_>) -> RouteTable {
    v1_table().documented(routes!(cloud_init::impersonate)).documented(routes!(metrics::metrics_endpoint)).merge(node_table(mounts))
}

/// What machines use, without a user's token: boot scripts, phone-home, boot files and
/// images, cloud-init documents, the agent's protocol, and health.
pub fn node_table(mounts: FileMounts<'_>) -> RouteTable {
    RouteTable::new()
        .documented(routes!(boot::bootscript))
        .documented(routes!(boot::api_trust_anchor))
        .documented(routes!(boot::phone_home, boot::phone_home_post))
        .documented(routes!(images::boot_artifact))
        .mount(BOOT_FILES_PREFIX, mounts.files_dir)
        .mount(BOOT_IPXE_PREFIX, mounts.ipxe_dir)
        .documented(routes!(cloud_init::node_document))
        .documented(routes!(cloud_init::secure_document_bearer))
        .documented(routes!(cloud_init::secure_document))
        .documented(routes!(provision::exchange_token))
        .documented(routes!(provision::heartbeat))
        .documented(routes!(provision::result))
        .documented(routes!(provision::artifact))
        .documented(routes!(provision::artifact_map))
        // A disk image streamed in: no body limit applies.
        .documented(routes!(provision::capture_upload).layer(DefaultBodyLimit::disable()))
        .documented(routes!(crate::healthz))
}

fn v1_table() -> RouteTable {
    RouteTable::new()
        .documented(routes!(tenancy::whoami))
        .documented(routes!(nodes::list_nodes, nodes::create_node))
        .documented(routes!(nodes::get_node, nodes::update_node, nodes::delete_node))
        .documented(routes!(power::get_power, power::set_power))
        .documented(routes!(power::get_power_reading))
        .documented(routes!(power::set_boot_device))
        .documented(routes!(power::get_virtual_media, power::insert_virtual_media, power::eject_virtual_media))
        .documented(routes!(power::get_facts))
        .documented(routes!(console::get_console, console::type_on_console))
        .merge(provisioning_table())
        .documented(routes!(nodes::discover_static))
        .documented(routes!(bmc_discovery::discover_redfish))
        .merge(tenancy_table())
        .documented(routes!(groups::list_groups, groups::create_group))
        .documented(routes!(groups::get_group, groups::update_group, groups::delete_group))
        .documented(routes!(events::list_events))
        .documented(routes!(boot::list_params, boot::add_params, boot::set_params, boot::delete_params))
        .merge(image_table())
        .merge(cloud_init_table())
        .documented(routes!(openapi::serve_document))
}

fn provisioning_table() -> RouteTable {
    RouteTable::new()
        .documented(routes!(provision::status))
        .documented(routes!(provision::deploy))
        .documented(routes!(provision::undeploy))
        .documented(routes!(provision::abort))
        .documented(routes!(provision::inspect))
        .documented(routes!(provision::clean))
        .documented(routes!(provision::manage))
        .documented(routes!(provision::provide))
        .documented(routes!(provision::capture))
        .documented(routes!(provision::snapshot))
        .documented(routes!(provision::list_reservations))
}

fn tenancy_table() -> RouteTable {
    RouteTable::new()
        .documented(routes!(tenancy::list_projects, tenancy::create_project))
        .documented(routes!(tenancy::get_project, tenancy::delete_project))
        .documented(routes!(tenancy::set_member))
        .documented(routes!(tenancy::remove_member))
        .documented(routes!(nodes::allocate_nodes))
        .documented(routes!(nodes::release_nodes))
        .documented(routes!(tenancy::list_users, tenancy::create_user))
        .documented(routes!(tenancy::get_user, tenancy::delete_user))
        .documented(routes!(tenancy::set_password, tenancy::remove_password))
        .documented(routes!(tenancy::list_tokens, tenancy::create_token))
        .documented(routes!(tenancy::revoke_token))
}

fn image_table() -> RouteTable {
    RouteTable::new()
        .documented(routes!(images::list_images, images::create_image))
        .documented(routes!(images::collect_garbage))
        .documented(routes!(images::verify_blobs))
        .documented(routes!(images::get_image, images::update_image, images::delete_image))
        .documented(routes!(images::list_versions, uploads::create_version))
        .documented(routes!(images::get_version, images::delete_version))
        .documented(routes!(uploads::get_kernel))
        .documented(routes!(images::download_artifact))
        .documented(routes!(images::set_tag, images::delete_tag))
        .documented(routes!(images::clone_image))
        .documented(routes!(uploads::import_image))
        .documented(routes!(uploads::create_upload))
        // Upload bodies are streamed to disk, never held: no size limit applies.
        .documented(routes!(uploads::get_upload, uploads::append_upload, uploads::delete_upload).layer(DefaultBodyLimit::disable()))
}

fn cloud_init_table() -> RouteTable {
    RouteTable::new()
        .documented(routes!(cloud_init::get_defaults, cloud_init::set_defaults))
        .documented(routes!(cloud_init::list_groups, cloud_init::set_groups))
        .documented(routes!(cloud_init::get_group, cloud_init::delete_group))
        .documented(routes!(cloud_init::render_group))
        .documented(routes!(cloud_init::set_nodes))
        .documented(routes!(cloud_init::get_node))
        .documented(routes!(cloud_init::node_meta_data))
        .documented(routes!(cloud_init::node_vendor_data))
        .documented(routes!(cloud_init::mint_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        api_table(FileMounts { files_dir: Path::new("/nonexistent"), ipxe_dir: Path::new("/nonexistent") })
    }

    /// Fails when a route is served outside the document: every mount must be one of the
    /// exempt directories (anything else goes through `documented`, which documents it).
    #[test]
    fn every_served_route_is_documented_or_an_exempt_mount() {
        let table = table();
        let exempt: Vec<&str> = UNDOCUMENTED_MOUNTS.iter().map(|(prefix, _)| *prefix).collect();
        for mount in table.mounts() {
            assert!(exempt.contains(mount), "{mount} is served without an OpenAPI operation and is not an exempt mount");
        }
    }

    /// The boot listener decides what it sends itself by these prefixes: they must name
    /// what the table serves.
    #[test]
    fn the_boot_listeners_prefixes_name_served_routes() {
        let (_, document) = table().split();
        let paths: Vec<&String> = document.paths.paths.keys().collect();
        assert!(paths.iter().any(|path| path.starts_with(&format!("{BOOT_IMAGES_PREFIX}/"))));
        assert!(paths.iter().any(|path| path.starts_with(&format!("{AGENT_NODES_PREFIX}/")) && path.ends_with(AGENT_ARTIFACT_SUFFIX)));
        assert!(table().mounts().contains(&BOOT_FILES_PREFIX) && table().mounts().contains(&BOOT_IPXE_PREFIX));
    }
}
