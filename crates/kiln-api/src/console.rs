//! `/v1/nodes/{node}/console`: a node's serial console, read from the store (any replica
//! answers, and the output outlives a restart) and typed into through the replica that
//! reads the console now ([`ConsoleHub`], which `kiln-server`'s console capture fills).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use kiln_types::api::{ConsoleInput, ConsoleOutput, ErrorBody};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, QueryParams};

/// The most one request types.
const MAX_INPUT_BYTES: usize = 4096;
/// Typed requests waiting for the line at once; more are refused rather than waited for.
const TYPED_QUEUE: usize = 16;

/// The consoles this replica reads now, each with the way to type into it.
#[derive(Debug, Default)]
pub struct ConsoleHub {
    typing: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
}

/// A console held open by its reader; the hub forgets it when this is dropped (unless a newer
/// reader of the same console has taken its place since).
pub struct ConsoleAttachment<'a> {
    hub: &'a ConsoleHub,
    node_id: String,
    sender: mpsc::Sender<Vec<u8>>,
}

impl Drop for ConsoleAttachment<'_> {
    fn drop(&mut self) {
        let mut typing = self.hub.typing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if typing.get(&self.node_id).is_some_and(|registered| registered.same_channel(&self.sender)) {
            typing.remove(&self.node_id);
        }
    }
}

impl ConsoleHub {
    /// Registers the reader of `node_id`'s console: what people type arrives on the receiver.
    pub fn attach(&self, node_id: &str) -> (mpsc::Receiver<Vec<u8>>, ConsoleAttachment<'_>) {
        let (sender, receiver) = mpsc::channel(TYPED_QUEUE);
        self.typing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(node_id.to_owned(), sender.clone());
        (receiver, ConsoleAttachment { hub: self, node_id: node_id.to_owned(), sender })
    }

    fn sender(&self, node_id: &str) -> Option<mpsc::Sender<Vec<u8>>> {
        self.typing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(node_id).cloned()
    }

    fn connected(&self, node_id: &str) -> bool {
        self.typing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains_key(node_id)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsoleQuery {
    /// Only what came after this offset (the `end` of the previous answer).
    after: Option<u64>,
}

/// The node's recent serial output (the last 256 KiB), or what came after `after`.
#[utoipa::path(get, path = "/v1/nodes/{node}/console", tag = "bmc", params(("node" = String, Path, description = "Name, xname or id"), ConsoleQuery),
    responses((status = 200, body = ConsoleOutput), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_console(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    QueryParams(query): QueryParams<ConsoleQuery>,
) -> ApiResult<Json<ConsoleOutput>> {
    let node = state.inventory.view().get_visible(&key, &caller.read_scope()).cloned().ok_or_else(|| ApiError::not_found("node", &key))?;
    let tail = state.store.read_console(&node.id, query.after).await?;
    Ok(Json(ConsoleOutput {
        node: node.name.clone(),
        start: tail.start,
        end: tail.end,
        data: base64::engine::general_purpose::STANDARD.encode(&tail.data),
        truncated: tail.truncated,
        connected: state.consoles.connected(&node.id),
    }))
}

/// Types `text` on the node's serial console, through the replica that reads it.
#[utoipa::path(post, path = "/v1/nodes/{node}/console", tag = "bmc", params(("node" = String, Path, description = "Name, xname or id")),
    request_body = ConsoleInput,
    responses((status = 202), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn type_on_console(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(input): JsonBody<ConsoleInput>,
) -> ApiResult<StatusCode> {
    let node = state.inventory.view().get_visible(&key, &caller.read_scope()).cloned().ok_or_else(|| ApiError::not_found("node", &key))?;
    if !caller.can_write(node.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read node '{key}' but not type on its console")));
    }
    if input.text.is_empty() || input.text.len() > MAX_INPUT_BYTES {
        return Err(ApiError::invalid(format!("text: between 1 and {MAX_INPUT_BYTES} bytes")));
    }
    let not_connected = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!(
                "node '{}': no console connection on this server (its BMC offers none Kiln reads, or it is not reachable now)",
                node.name
            ),
        )
    };
    let sender = state.consoles.sender(&node.id).ok_or_else(not_connected)?;
    let bytes = input.text.len();
    sender.try_send(input.text.into_bytes()).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            format!("node '{}': the serial line has not yet taken what was typed before: try again shortly", node.name),
        ),
        mpsc::error::TrySendError::Closed(_) => not_connected(),
    })?;
    // What was typed may be a password: how much, never what.
    tracing::info!(node = %node.name, actor = %caller.user, bytes, "typed on the serial console");
    Ok(StatusCode::ACCEPTED)
}
