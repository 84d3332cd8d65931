//! Uploads from the browser: the console's script sends a file in pieces through these
//! routes, which are the API's resumable upload (`/v1/uploads`) and version creation with
//! the signed-in person as the caller, answering the API's own JSON.
//!
//! The script sends JSON and raw bytes, not forms, so the CSRF token travels in the
//! `X-CSRF-Token` header (from the page's `<meta name="csrf">`); a request without it is
//! refused before the handler runs. A page of another site can neither read the token nor
//! set the header without a preflight this server never allows.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};

use super::session::Signed;
use crate::ApiState;
use crate::error::{ApiError, ErrorCode};
use crate::extract::JsonBody;

/// The header that carries the session's CSRF token on the script's requests.
const CSRF_HEADER: &str = "x-csrf-token";

/// The refusal of a script request without the session's token, in the API's shape.
fn header_refusal(signed: &Signed, headers: &HeaderMap) -> Option<Response> {
    let sent = headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    signed.csrf_refusal(sent).map(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the request did not carry this session's X-CSRF-Token: reload the page and try again",
        )
        .into_response()
    })
}

/// `POST /ui/uploads`: `POST /v1/uploads`.
pub(crate) async fn create(
    State(state): State<ApiState>,
    signed: Signed,
    headers: HeaderMap,
    JsonBody(input): JsonBody<kiln_types::image::UploadInput>,
) -> Response {
    if let Some(refused) = header_refusal(&signed, &headers) {
        return refused;
    }
    crate::uploads::create_upload(State(state), signed.caller(), JsonBody(input)).await.into_response()
}

/// `GET /ui/uploads/{id}`: `GET /v1/uploads/{id}`, where a resumed upload stands. Reading
/// changes nothing, so it needs no token.
pub(crate) async fn show(State(state): State<ApiState>, signed: Signed, Path(id): Path<String>) -> Response {
    crate::uploads::get_upload(State(state), signed.caller(), Path(id)).await.into_response()
}

/// `PATCH /ui/uploads/{id}`: `PATCH /v1/uploads/{id}`, a piece at `Upload-Offset`.
pub(crate) async fn append(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = header_refusal(&signed, &headers) {
        return refused;
    }
    crate::uploads::append_upload(State(state), signed.caller(), Path(id), headers, body).await.into_response()
}

/// `POST /ui/images/{image}/versions`: `POST /v1/images/{image}/versions`, naming finished
/// uploads.
pub(crate) async fn create_version(
    State(state): State<ApiState>,
    signed: Signed,
    Path(image): Path<String>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<kiln_types::image::VersionInput>,
) -> Response {
    if let Some(refused) = header_refusal(&signed, &headers) {
        return refused;
    }
    match crate::uploads::create_version(State(state), signed.caller(), Path(image), JsonBody(input)).await {
        Ok((status, Json(version))) => (status, Json(version)).into_response(),
        Err(error) => error.into_response(),
    }
}
