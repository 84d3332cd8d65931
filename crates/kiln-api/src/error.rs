//! API errors: one type that every handler returns, rendered as
//! `{ "error": { "code": "...", "message": "..." } }` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_db::StoreError;
pub use kiln_types::api::ErrorCode;
use kiln_types::api::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(kind: &str, key: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("{kind} '{key}' not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { kind, key } => ApiError::not_found(kind, &key),
            StoreError::Conflict { message } => ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message),
            StoreError::Invalid { message } => ApiError::invalid(message),
            other => {
                // The cause chain may hold SQL and connection details: log it, answer briefly.
                let mut chain = other.to_string();
                let mut source = std::error::Error::source(&other);
                while let Some(cause) = source {
                    chain.push_str(": ");
                    chain.push_str(&cause.to_string());
                    source = cause.source();
                }
                tracing::error!(error = %chain, "store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, other.to_string())
            }
        }
    }
}

impl From<kiln_auth::Denied> for ApiError {
    fn from(denied: kiln_auth::Denied) -> Self {
        ApiError::forbidden(denied.0)
    }
}

impl From<kiln_types::InvalidField> for ApiError {
    fn from(error: kiln_types::InvalidField) -> Self {
        ApiError::invalid(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
