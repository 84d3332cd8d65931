//! `/v1/groups`: named sets of nodes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_types::api::{Group, GroupInput, GroupPatch};
use kiln_types::scoped_name::{NameReference, ScopedName};
use kiln_types::validate;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

#[utoipa::path(get, path = "/v1/groups", tag = "groups", responses((status = 200, body = Vec<Group>)))]
pub(crate) async fn list_groups(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(state.store.list_groups(&caller.read_scope()).await?))
}

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupInput,
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_group(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<GroupInput>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let name = validate::name("name", &input.name)?;
    let description = validate::single_line("description", &input.description, 1024)?;
    let group = state
        .store
        .create_group(&caller.user, &name, &description, input.project.as_deref(), &input.members, &caller.write_scope())
        .await?;
    state.after_node_write().await;
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups", params(("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_group(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Group>> {
    Ok(Json(state.store.get_group(&NameReference::parse("group", &name)?, &caller.read_scope()).await?))
}

#[utoipa::path(patch, path = "/v1/groups/{group}", tag = "groups", params(("group" = String, Path)), request_body = GroupPatch,
    responses((status = 200, body = Group), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update_group(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<GroupPatch>,
) -> ApiResult<Json<Group>> {
    let group = state.store.get_group(&NameReference::parse("group", &name)?, &caller.read_scope()).await?;
    let identity = ScopedName::new(group.project.as_deref(), &group.name);
    if !caller.can_write(group.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read group '{identity}' but not change it")));
    }
    let description = patch.description.as_deref().map(|text| validate::single_line("description", text, 1024)).transpose()?;
    let group =
        state.store.update_group(&caller.user, &identity, description.as_deref(), patch.members.as_deref(), &caller.write_scope()).await?;
    Ok(Json(group))
}

#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "groups", params(("group" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_group(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let group = state.store.get_group(&NameReference::parse("group", &name)?, &caller.read_scope()).await?;
    let identity = ScopedName::new(group.project.as_deref(), &group.name);
    if !caller.can_write(group.project.as_deref()) {
        return Err(ApiError::forbidden(format!("you may read group '{identity}' but not delete it")));
    }
    state.store.delete_group(&caller.user, &identity, &caller.write_scope()).await?;
    state.after_node_write().await;
    Ok(StatusCode::NO_CONTENT)
}
