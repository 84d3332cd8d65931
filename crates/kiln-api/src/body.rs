//! Request bodies held to their limits: a body that stops arriving is cut after an idle
//! time (408), a body read whole (JSON) must all arrive within a total time however it
//! trickles (408), and a JSON body whose declared length is over the limit is refused
//! before a byte of it is read (413), so a client that promises two gigabytes and sends ten
//! bytes, or sends one byte a minute less often than the idle time, holds nothing open.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use crate::error::{ApiError, ErrorCode};

/// The limits every request body on a listener is held to.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The largest body a handler that reads it whole (JSON) takes; streamed uploads have
    /// no limit but the store's.
    pub max_bytes: usize,
    /// How long a body may send nothing before the request is answered 408.
    pub idle: Duration,
    /// How long a body read whole may take to arrive before the request is answered 408.
    /// Streamed uploads are held to `idle` only: a large one may rightly take hours.
    pub whole_within: Duration,
}

/// The 408 for a body read whole that did not all arrive within `limits.whole_within`.
pub(crate) fn too_slow(limits: &BodyLimits) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!("the request body did not all arrive within {} s", limits.whole_within.as_secs()),
    )
}

/// The error a body that went quiet fails with, found again in the cause chain of the
/// handler's read.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {seconds} s")]
pub struct BodyIdle {
    pub seconds: u64,
}

/// Middleware: the limits go into the request's extensions (for [`crate::extract::JsonBody`])
/// and the body is wrapped in the idle timer.
pub(crate) async fn limit_bodies(State(limits): State<BodyLimits>, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(limits);
    let request = request.map(|body| Body::new(IdleTimeout::new(body, limits.idle)));
    next.run(request).await
}

/// A body that fails with [`BodyIdle`] when no frame arrives for `idle`. The clock starts
/// when the handler first reads, not when the request arrived.
struct IdleTimeout {
    inner: Body,
    idle: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeout {
    fn new(inner: Body, idle: Duration) -> IdleTimeout {
        IdleTimeout { inner, idle, deadline: None }
    }
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(context) {
            this.deadline = None;
            return Poll::Ready(frame);
        }
        let idle = this.idle;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match deadline.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyIdle { seconds: idle.as_secs() })))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses a request whose `Content-Length` is over `limits` before its body is read.
pub(crate) fn check_declared_length(headers: &axum::http::HeaderMap, limits: Option<&BodyLimits>) -> Result<(), ApiError> {
    let (Some(limits), Some(declared)) = (limits, headers.get(axum::http::header::CONTENT_LENGTH)) else { return Ok(()) };
    let declared: u64 =
        declared.to_str().ok().and_then(|text| text.parse().ok()).ok_or_else(|| ApiError::invalid("Content-Length is not a number"))?;
    if declared > limits.max_bytes as u64 {
        return Err(too_large(limits.max_bytes));
    }
    Ok(())
}

pub(crate) fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is over the limit of {max_bytes} bytes"),
    )
}

/// The API error for a body that could not be read whole: too large (413), gone quiet
/// (408), or cut off by the client (400).
pub(crate) fn unread_body(rejection: axum::extract::rejection::BytesRejection, limits: Option<&BodyLimits>) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return match limits {
            Some(limits) => too_large(limits.max_bytes),
            None => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, "the request body is over the limit"),
        };
    }
    went_idle(&rejection).unwrap_or_else(|| ApiError::invalid(format!("reading the request body: {rejection}")))
}

/// The 408 for a read that failed because the body went quiet, found in its cause chain.
pub(crate) fn went_idle(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(idle) = cause.downcast_ref::<BodyIdle>() {
            return Some(ApiError::new(StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout, idle.to_string()));
        }
        source = cause.source();
    }
    None
}

/// How large a free-form stored field may be: node `properties`, cloud-init data. Bodies
/// may be larger (a discovery document of many nodes); each such field is held to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    pub max_field_bytes: usize,
}

impl Default for FieldLimits {
    fn default() -> FieldLimits {
        FieldLimits { max_field_bytes: 64 << 10 }
    }
}

impl FieldLimits {
    /// Refuses `value` with 413 naming `field` when its JSON is over the limit.
    pub(crate) fn check(&self, field: &str, value: &impl serde::Serialize) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(value).map(|json| json.len()).unwrap_or(usize::MAX);
        if bytes > self.max_field_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("{field}: {bytes} bytes, over the limit of {} (max_field_bytes)", self.max_field_bytes),
            ));
        }
        Ok(())
    }
}
