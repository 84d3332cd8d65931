//! The OpenAPI 3 document, generated from the handlers' annotations and checked in as
//! `openapi/kiln.json` (a test fails when the two differ).

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Bare-metal provisioning and image management.", license(name = "Apache-2.0")),
    paths(
        crate::tenancy::whoami,
        crate::nodes::list_nodes, crate::nodes::create_node, crate::nodes::get_node, crate::nodes::update_node,
        crate::nodes::delete_node, crate::nodes::discover_static, crate::nodes::allocate_nodes, crate::nodes::release_nodes,
        crate::tenancy::list_projects, crate::tenancy::create_project, crate::tenancy::get_project, crate::tenancy::delete_project,
        crate::tenancy::set_member, crate::tenancy::remove_member,
        crate::tenancy::list_users, crate::tenancy::create_user, crate::tenancy::get_user, crate::tenancy::delete_user,
        crate::tenancy::list_tokens, crate::tenancy::create_token, crate::tenancy::revoke_token,
        crate::groups::list_groups, crate::groups::create_group, crate::groups::get_group, crate::groups::update_group,
        crate::groups::delete_group,
        crate::events::list_events,
        crate::boot::list_params, crate::boot::add_params, crate::boot::set_params, crate::boot::delete_params,
        crate::boot::bootscript, crate::boot::phone_home,
        crate::images::list_images, crate::images::create_image, crate::images::get_image, crate::images::update_image,
        crate::images::delete_image, crate::images::list_versions, crate::images::get_version, crate::images::delete_version,
        crate::images::set_tag, crate::images::delete_tag, crate::images::clone_image, crate::images::download_artifact,
        crate::images::collect_garbage, crate::images::verify_blobs,
        crate::uploads::create_upload, crate::uploads::get_upload, crate::uploads::append_upload, crate::uploads::delete_upload,
        crate::uploads::create_version, crate::uploads::import_image, crate::uploads::get_kernel,
        crate::cloud_init::get_defaults, crate::cloud_init::set_defaults, crate::cloud_init::list_groups,
        crate::cloud_init::set_groups, crate::cloud_init::get_group, crate::cloud_init::delete_group,
        crate::cloud_init::render_group, crate::cloud_init::set_nodes, crate::cloud_init::get_node,
        crate::cloud_init::node_meta_data, crate::cloud_init::node_vendor_data, crate::cloud_init::mint_token,
        crate::cloud_init::node_document, crate::cloud_init::secure_document, crate::cloud_init::secure_document_bearer,
        crate::cloud_init::impersonate,
        crate::bmc_discovery::discover_redfish,
        crate::power::get_power, crate::power::get_power_reading, crate::power::set_power, crate::power::set_boot_device, crate::power::get_facts,
        crate::provision::status, crate::provision::deploy, crate::provision::undeploy, crate::provision::inspect,
        crate::provision::clean, crate::provision::manage, crate::provision::provide,
        crate::provision::capture, crate::provision::heartbeat, crate::provision::result, crate::provision::artifact,
        crate::provision::artifact_map,
        crate::provision::capture_upload,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct KilnApi;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The document as pretty JSON, with the crate version as the API version.
pub fn openapi_document() -> String {
    let mut document = KilnApi::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = document.to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

pub(crate) async fn serve_document() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi_document())
}

#[cfg(test)]
mod tests {
    /// Fails when the handlers change without the checked-in document; run with
    /// `UPDATE_EXPECT=1` to regenerate it.
    #[test]
    fn checked_in_document_matches_the_code() {
        expect_test::expect_file!["../../../openapi/kiln.json"].assert_eq(&super::openapi_document());
    }
}
