//! The Ironic-compatible API under `/ironic` on the API listener: OpenStack Ironic's v1 API
//! (the subset its `baremetal` command and openstacksdk use for nodes, ports, power and
//! provisioning) over Kiln's nodes, BMCs and lifecycle. The mapping is `kiln-ironic`'s,
//! without IO; this module is its HTTP side: microversion negotiation (every answer carries
//! the range), the ways a client authenticates (a Kiln token as `X-Auth-Token`, as
//! keystoneauth's `admin_token` sends it, or as a bearer; no token at all only where
//! `[ironic] noauth` says so, for a lab), and Ironic's error body.
//!
//! It is documented by Ironic's own API reference, not by Kiln's OpenAPI document: the route
//! table keeps it apart (`routes::COMPATIBLE_APIS`), and its tenancy is tested by its own
//! suite (`kiln-cli/tests/ironic.rs`).

mod images;
mod nodes;
mod ports;
mod vmedia;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use kiln_auth::AuthContext;
use kiln_ironic::version::{self, MAX, MAX_VERSION_HEADER, MIN, MIN_VERSION_HEADER, Microversion, VERSION_HEADER, VersionError};
use serde_json::{Value, json};

use crate::ApiState;
use crate::error::ApiError;

/// Where the Ironic-compatible API is served on the API listener.
pub const IRONIC_PREFIX: &str = "/ironic";

/// How the Ironic-compatible API is reached.
#[derive(Debug, Clone, Copy, Default)]
pub struct IronicSettings {
    /// Requests without a token act as an administrator (Ironic's `noauth`): for a lab only.
    pub noauth: bool,
}

/// An error in Ironic's shape.
#[derive(Debug)]
pub(crate) struct IronicError {
    status: StatusCode,
    message: String,
}

impl IronicError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> IronicError {
        IronicError { status, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> IronicError {
        IronicError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ApiError> for IronicError {
    fn from(error: ApiError) -> IronicError {
        IronicError { status: error.status, message: error.message }
    }
}

impl From<kiln_db::StoreError> for IronicError {
    fn from(error: kiln_db::StoreError) -> IronicError {
        ApiError::from(error).into()
    }
}

impl IntoResponse for IronicError {
    fn into_response(self) -> Response {
        (self.status, Json(kiln_ironic::error::error_body(self.status.as_u16(), &self.message))).into_response()
    }
}

pub(crate) type IronicResult<T> = Result<T, IronicError>;

/// The caller of an Ironic request, the version it negotiated and where the API is.
pub(crate) struct IronicCaller {
    pub(crate) context: AuthContext,
    pub(crate) version: Microversion,
    pub(crate) base_url: String,
}

impl FromRequestParts<ApiState> for IronicCaller {
    type Rejection = IronicError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let version = parts.extensions.get::<Microversion>().copied().unwrap_or(MIN);
        let header = |name: &str| parts.headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
        let token = header("x-auth-token")
            .or_else(|| header("authorization").and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))))
            .filter(|token| !token.is_empty());
        let basic = header("authorization").and_then(|value| value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")));
        let context = match (token, basic) {
            (Some(token), _) => crate::auth::authenticate(state, token).await?,
            // Ironic standalone's http_basic: a Kiln user and their password.
            (None, Some(encoded)) => {
                let (user, password) = basic_credentials(encoded)?;
                crate::auth::authenticate_password(state, &user, &password).await?
            }
            (None, None) if state.ironic.noauth => {
                AuthContext { user: "ironic-noauth".to_owned(), admin: true, memberships: Default::default() }
            }
            (None, None) => {
                return Err(IronicError::new(
                    StatusCode::UNAUTHORIZED,
                    "Authentication required: a Kiln token as X-Auth-Token, or a Kiln user and password (HTTP basic)",
                ));
            }
        };
        Ok(IronicCaller { context, version, base_url: format!("{}{IRONIC_PREFIX}", state.boot.api_url) })
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(encoded: &str) -> IronicResult<(String, String)> {
    use base64::Engine as _;
    let malformed =
        || IronicError::new(StatusCode::UNAUTHORIZED, "the Authorization header's Basic credentials are not base64 of USER:PASSWORD");
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (user, password) = text.split_once(':').ok_or_else(malformed)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// The node `key` (uuid or name) if the caller sees it; otherwise exactly as if missing.
pub(crate) fn visible(state: &ApiState, caller: &IronicCaller, key: &str) -> IronicResult<std::sync::Arc<kiln_types::node::Node>> {
    state
        .inventory
        .view()
        .get_visible(key, &caller.context.read_scope())
        .cloned()
        .ok_or_else(|| IronicError::new(StatusCode::NOT_FOUND, format!("Node {key} could not be found.")))
}

/// Middleware: negotiates the request's microversion (406 with the range when outside it,
/// as Ironic's clients expect to negotiate down), and answers the range on every response.
async fn negotiate(request: Request, next: Next) -> Response {
    let requested = request.headers().get(VERSION_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let (mut response, negotiated) = match version::negotiate(requested.as_deref()) {
        Ok(negotiated) => {
            let mut request = request;
            request.extensions_mut().insert(negotiated);
            (next.run(request).await, Some(negotiated))
        }
        Err(error) => {
            let status = match error {
                VersionError::Unsupported { .. } => StatusCode::NOT_ACCEPTABLE,
                VersionError::Malformed { .. } => StatusCode::BAD_REQUEST,
            };
            (IronicError::new(status, error.to_string()).into_response(), None)
        }
    };
    tracing::info!(%method, path, requested = requested.as_deref().unwrap_or("none"), negotiated = ?negotiated.map(|v| v.to_string()),
        status = response.status().as_u16(), "ironic request");
    let headers = response.headers_mut();
    for (name, value) in [(MIN_VERSION_HEADER, MIN), (MAX_VERSION_HEADER, MAX)] {
        headers.insert(name, HeaderValue::from_str(&value.to_string()).expect("a version is a header value"));
    }
    if let Some(negotiated) = negotiated {
        headers.insert(VERSION_HEADER, HeaderValue::from_str(&negotiated.to_string()).expect("a version is a header value"));
    }
    response
}

fn version_document(base_url: &str) -> Value {
    json!({
        "id": "v1",
        "status": "CURRENT",
        "version": MAX.to_string(),
        "min_version": MIN.to_string(),
        "links": [{ "href": format!("{base_url}/v1/"), "rel": "self" }],
    })
}

/// `GET /ironic/`: the versions, as Ironic's root answers them.
async fn root(State(state): State<ApiState>) -> Json<Value> {
    let base_url = format!("{}{IRONIC_PREFIX}", state.boot.api_url);
    Json(json!({
        "name": "OpenStack Ironic API (Kiln)",
        "description": "Kiln's Ironic-compatible API: nodes, ports, power and provisioning over Kiln's lifecycle.",
        "default_version": version_document(&base_url),
        "versions": [version_document(&base_url)],
    }))
}

/// `GET /ironic/v1`: the version and its collections.
async fn v1(State(state): State<ApiState>) -> Json<Value> {
    let base_url = format!("{}{IRONIC_PREFIX}", state.boot.api_url);
    let collection = |name: &str| json!([{ "href": format!("{base_url}/v1/{name}/"), "rel": "self" }]);
    Json(json!({
        "id": "v1",
        "links": [{ "href": format!("{base_url}/v1/"), "rel": "self" }],
        "media_types": [{ "base": "application/json", "type": "application/vnd.openstack.ironic.v1+json" }],
        "nodes": collection("nodes"),
        "ports": collection("ports"),
        "version": version_document(&base_url),
    }))
}

async fn unknown_path() -> IronicError {
    IronicError::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}

/// The Ironic-compatible API's routes, under [`IRONIC_PREFIX`].
pub fn router() -> axum::Router<ApiState> {
    let routes = axum::Router::new()
        .route("/", get(root))
        .route("/v1", get(v1))
        .route("/v1/", get(v1))
        // Ironic's clients ask for some collections with a trailing slash.
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/detail", get(nodes::list_detail))
        .route("/v1/nodes/{node}", get(nodes::show).patch(nodes::update).delete(nodes::delete))
        .route("/v1/nodes/{node}/states/power", put(nodes::set_power))
        .route("/v1/nodes/{node}/states/provision", put(nodes::set_provision))
        .route("/v1/nodes/{node}/maintenance", put(nodes::maintenance_on).delete(nodes::maintenance_off))
        .route("/v1/nodes/{node}/validate", get(nodes::validate))
        .route("/v1/nodes/{node}/vmedia", axum::routing::post(vmedia::attach_vmedia).delete(vmedia::detach_vmedia))
        .route("/v1/nodes/{node}/ports", get(ports::of_node))
        .route("/v1/ports", get(ports::list).post(ports::create))
        .route("/v1/ports/", get(ports::list).post(ports::create))
        .route("/v1/ports/detail", get(ports::list_detail))
        .route("/v1/ports/{port}", get(ports::show).delete(ports::delete))
        .fallback(unknown_path)
        .layer(axum::middleware::from_fn(negotiate));
    // `nest` serves the prefix itself as the root; `/ironic/` is the root too.
    let root_with_slash = axum::Router::new().route("/ironic/", get(root)).layer(axum::middleware::from_fn(negotiate));
    root_with_slash.nest(IRONIC_PREFIX, routes)
}
