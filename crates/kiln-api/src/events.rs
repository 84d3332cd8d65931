//! `/v1/events`: the change log, filtered to what the caller may see.

use axum::Json;
use axum::extract::State;
use kiln_auth::ProjectScope;
use kiln_db::EventFilter;
use kiln_types::api::Event;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::QueryParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Only events with a greater id (for following the log).
    after: Option<i64>,
    /// At most this many events (default 100, at most 1000).
    limit: Option<u32>,
    /// `node`, `project`, `user`, `token` or `group`.
    kind: Option<String>,
    /// The name of the resource.
    target: Option<String>,
    /// `newest`: the most recent events first, rather than the oldest after `after`.
    order: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = Vec<Event>), (status = 400, body = kiln_types::api::ErrorBody)))]
pub(crate) async fn list_events(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(query): QueryParams<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let filter = EventFilter {
        projects: match caller.read_scope() {
            ProjectScope::All => None,
            ProjectScope::Projects(projects) => Some(projects),
        },
        target_kind: query.kind,
        target: query.target,
        after: query.after,
        limit: crate::extract::page_limit(query.limit)?,
        newest_first: match query.order.as_deref() {
            None | Some("oldest") => false,
            Some("newest") => true,
            Some(other) => return Err(crate::error::ApiError::invalid(format!("order: '{other}' is neither 'oldest' nor 'newest'"))),
        },
    };
    Ok(Json(state.store.list_events(&filter).await?))
}
