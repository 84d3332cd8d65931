//! The OpenAPI 3 document, generated from the route table (`routes.rs`) and the handlers'
//! annotations, and checked in as `openapi/kiln.json` (a test fails when the two differ).

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// What the document holds besides the routes' operations: its title, licence and the
/// bearer scheme. The operations come from the route table (`routes.rs`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Bare-metal provisioning and image management.", license(name = "Apache-2.0")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct KilnApi;

pub(crate) fn base_document() -> utoipa::openapi::OpenApi {
    KilnApi::openapi()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The document as pretty JSON, with the crate version as the API version.
pub fn openapi_document() -> String {
    let mounts = crate::routes::FileMounts { files_dir: std::path::Path::new("."), ipxe_dir: std::path::Path::new(".") };
    let (_, mut document) = crate::routes::api_table(mounts).split();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = document.to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn serve_document() -> impl IntoResponse {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_document);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}

#[cfg(test)]
mod tests {
    /// Fails when the handlers change without the checked-in document; run with
    /// `UPDATE_EXPECT=1` to regenerate it.
    #[test]
    fn checked_in_document_matches_the_code() {
        expect_test::expect_file!["../../../openapi/kiln.json"].assert_eq(&super::openapi_document());
    }

    /// The document's enums are the words the API speaks (serde's names), not the Rust
    /// variants.
    #[test]
    fn enum_schemas_use_the_wire_words() {
        use kiln_types::image::{ArtifactKind, Compression, ImageFormat, Visibility};
        use kiln_types::provision::ProvisionStep;
        let document: serde_json::Value = serde_json::from_str(&super::openapi_document()).expect("the document is JSON");
        let words = |name: &str| document["components"]["schemas"][name]["enum"].clone();
        let expected = |all: Vec<&str>| serde_json::json!(all);
        assert_eq!(words("Visibility"), expected(Visibility::ALL.iter().map(|value| value.as_str()).collect()));
        assert_eq!(words("ArtifactKind"), expected(ArtifactKind::ALL.iter().map(|value| value.as_str()).collect()));
        assert_eq!(words("ImageFormat"), expected(ImageFormat::ALL.iter().map(|value| value.as_str()).collect()));
        assert_eq!(words("Compression"), expected(Compression::ALL.iter().map(|value| value.as_str()).collect()));
        assert_eq!(words("ProvisionStep"), expected(ProvisionStep::ALL.iter().map(|value| value.as_str()).collect()));
    }

    /// The checked-in document is valid OpenAPI, as a client generator reads it:
    /// openapi-spec-validator (PyPI, installed by `scripts/install-deps` into
    /// `~/.cache/kiln-tools/openapi-venv`) finds no error. Skipped where it is not installed,
    /// unless `KILN_REQUIRE_OPENAPI_VALIDATOR` is set (CI).
    #[test]
    fn checked_in_document_is_valid_openapi() {
        let tools = std::env::var_os("KILN_TOOLS_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache/kiln-tools")));
        let validator = tools.map(|tools| tools.join("openapi-venv/bin/openapi-spec-validator")).filter(|path| path.exists());
        let Some(validator) = validator else {
            assert!(std::env::var_os("KILN_REQUIRE_OPENAPI_VALIDATOR").is_none(), "openapi-spec-validator is not installed");
            eprintln!("note: openapi-spec-validator is not installed (scripts/install-deps); skipped");
            return;
        };
        let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/kiln.json");
        let output = std::process::Command::new(&validator)
            .args(["--validation-errors", "all"])
            .arg(&document)
            .output()
            .expect("running openapi-spec-validator");
        assert!(
            output.status.success(),
            "openapi/kiln.json is not valid OpenAPI:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
