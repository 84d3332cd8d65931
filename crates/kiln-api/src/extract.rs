//! Request extractors whose failures are API errors in Kiln's shape, naming what was wrong.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::body::{BodyLimits, check_declared_length, too_slow, unread_body};
use crate::error::ApiError;

/// A JSON body, sent as JSON: a `Content-Type` other than `application/json` (or a
/// `+json` type) is refused with 415, so that a browser's cross-site form (`text/plain`)
/// can never act on a signed-in user's behalf. A declared length over the limit is refused
/// before the body is read, and a body not all read within the total time is 408. Errors name the field and position (`unknown field 'colour' at
/// line 1 column 9`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let limits = request.extensions().get::<BodyLimits>().copied();
        check_declared_length(request.headers(), limits.as_ref())?;
        let read = axum::body::Bytes::from_request(request, state);
        let bytes = match limits {
            Some(limits) => tokio::time::timeout(limits.whole_within, read).await.map_err(|_| too_slow(&limits))?,
            None => read.await,
        }
        .map_err(|rejection| unread_body(rejection, limits.as_ref()))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))
    }
}

/// Whether the request says its body is JSON: `application/json` or `application/*+json`,
/// with any parameters (`; charset=utf-8`).
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let media_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) if other.starts_with("application/") && other.ends_with("+json") => Ok(()),
        Some(other) => Err(unsupported(&format!("Content-Type '{other}'"))),
        None => Err(unsupported("no Content-Type")),
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        crate::error::ErrorCode::UnsupportedMediaType,
        format!("{what}: the body must be JSON, sent as Content-Type: application/json"),
    )
}

/// A list's `limit` parameter: 100 unless given, and refused (naming it) outside 1 to
/// [`kiln_db::MAX_PAGE_SIZE`], rather than quietly read as something else.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(100),
        Some(limit) if (1..=kiln_db::MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::invalid(format!("limit: {limit} is not between 1 and {}", kiln_db::MAX_PAGE_SIZE))),
    }
}

/// Query parameters, with errors in Kiln's shape.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from(query).map(QueryParams)
    }
}

fn serde_urlencoded_from<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().map_err(|_| ApiError::invalid("malformed query string"))?)
        .map(|axum::extract::Query(value)| value)
        .map_err(|rejection| ApiError::invalid(format!("invalid query parameters: {}", rejection.body_text())))
}
