//! Request extractors whose failures are API errors in Kiln's shape, naming what was wrong.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Errors name the field and position (`unknown field 'colour' at line 1 column 9`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::invalid(format!("reading the request body: {rejection}")))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))
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
