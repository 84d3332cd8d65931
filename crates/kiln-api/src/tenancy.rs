//! `/v1/projects`, `/v1/users`, `/v1/tokens` and `/v1/whoami`: who may do what.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_auth::{ProjectScope, hash_token, mint_token};
use kiln_types::api::{CreatedToken, MembershipInput, PasswordInput, Project, ProjectInput, Token, TokenInput, User, UserInput, WhoAmI};
use kiln_types::validate;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};

type ErrorBody = kiln_types::api::ErrorBody;

#[utoipa::path(get, path = "/v1/whoami", tag = "tenancy", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub(crate) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: caller.user.clone(),
        admin: caller.admin,
        memberships: caller
            .memberships
            .iter()
            .map(|(project, role)| kiln_types::api::Membership { project: project.clone(), role: *role })
            .collect(),
    })
}

#[utoipa::path(get, path = "/v1/projects", tag = "tenancy", responses((status = 200, body = Vec<Project>)))]
pub(crate) async fn list_projects(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<Project>>> {
    let projects = match caller.read_scope() {
        ProjectScope::All => state.store.list_projects(None).await?,
        ProjectScope::Projects(names) => state.store.list_projects(Some(&names)).await?,
    };
    Ok(Json(projects))
}

#[utoipa::path(post, path = "/v1/projects", tag = "tenancy", request_body = ProjectInput,
    responses((status = 201, body = Project), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_project(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<ProjectInput>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    caller.require_admin()?;
    let name = validate::name("name", &input.name)?;
    let description = validate::single_line("description", &input.description, 1024)?;
    Ok((StatusCode::CREATED, Json(state.store.create_project(&caller.user, &name, &description).await?)))
}

#[utoipa::path(get, path = "/v1/projects/{project}", tag = "tenancy", params(("project" = String, Path)),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_project(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Project>> {
    if !caller.can_read(Some(&name)) {
        return Err(ApiError::not_found("project", &name));
    }
    Ok(Json(state.store.get_project(&name).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "tenancy", params(("project" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_project(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if !caller.can_read(Some(&name)) {
        return Err(ApiError::not_found("project", &name));
    }
    caller.require_admin()?;
    state.store.delete_project(&caller.user, &name).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/projects/{project}/members", tag = "tenancy", params(("project" = String, Path)),
    request_body = MembershipInput, responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(input): JsonBody<MembershipInput>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.store.set_membership(&caller.user, &project, &input.user, input.role).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/projects/{project}/members/{user}", tag = "tenancy",
    params(("project" = String, Path), ("user" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.store.remove_membership(&caller.user, &project, &user).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/users", tag = "tenancy", responses((status = 200, body = Vec<User>), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_users(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require_admin()?;
    Ok(Json(state.store.list_users().await?))
}

#[utoipa::path(post, path = "/v1/users", tag = "tenancy", request_body = UserInput,
    responses((status = 201, body = User), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<UserInput>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_admin()?;
    let name = validate::name("name", &input.name)?;
    Ok((StatusCode::CREATED, Json(state.store.create_user(&caller.user, &name, input.admin).await?)))
}

#[utoipa::path(get, path = "/v1/users/{user}", tag = "tenancy", params(("user" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_user(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<User>> {
    if !caller.admin && caller.user != name {
        return Err(ApiError::not_found("user", &name));
    }
    Ok(Json(state.store.get_user(&name).await?))
}

#[utoipa::path(delete, path = "/v1/users/{user}", tag = "tenancy", params(("user" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_user(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.store.delete_user(&caller.user, &name).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a user's password: administrators for anyone, a user for themselves.
#[utoipa::path(put, path = "/v1/users/{user}/password", tag = "tenancy", params(("user" = String, Path)), request_body = PasswordInput,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn set_password(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<PasswordInput>,
) -> ApiResult<StatusCode> {
    if !caller.admin && caller.user != name {
        return Err(ApiError::not_found("user", &name));
    }
    let hash = tokio::task::spawn_blocking(move || kiln_auth::hash_password(&input.password)).await.expect("no panic");
    let hash = hash.map_err(|error| match error {
        kiln_auth::PasswordError::Hash { .. } => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, kiln_types::api::ErrorCode::Internal, error.to_string())
        }
        refused => ApiError::invalid(format!("password: {refused}")),
    })?;
    state.store.set_password_hash(&caller.user, &name, Some(&hash)).await?;
    state.tokens.clear();
    tracing::info!(user = %name, actor = %caller.user, "password set");
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a user's password: they then sign in with tokens only.
#[utoipa::path(delete, path = "/v1/users/{user}/password", tag = "tenancy", params(("user" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_password(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if !caller.admin && caller.user != name {
        return Err(ApiError::not_found("user", &name));
    }
    state.store.set_password_hash(&caller.user, &name, None).await?;
    state.tokens.clear();
    tracing::info!(user = %name, actor = %caller.user, "password removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenListQuery {
    /// Whose tokens (admins only; others always see their own).
    user: Option<String>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tenancy", params(TokenListQuery), responses((status = 200, body = Vec<Token>)))]
pub(crate) async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(query): QueryParams<TokenListQuery>,
) -> ApiResult<Json<Vec<Token>>> {
    let user = match (caller.admin, query.user) {
        (true, user) => user,
        (false, Some(user)) if user != caller.user => return Err(ApiError::forbidden("only administrators list other users' tokens")),
        (false, _) => Some(caller.user.clone()),
    };
    Ok(Json(state.store.list_tokens(user.as_deref()).await?))
}

/// The response carries the token's secret: the only time it is ever shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tenancy", request_body = TokenInput,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<TokenInput>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let user = input.user.clone().unwrap_or_else(|| caller.user.clone());
    if user != caller.user {
        caller.require_admin()?;
    }
    let name = validate::single_line("name", &input.name, 128)?;
    let expires_at = input
        .expires_in_seconds
        .map(|seconds| {
            let seconds = i64::try_from(seconds).ok().filter(|s| *s > 0 && *s <= 10 * 366 * 24 * 3600);
            seconds
                .map(|s| jiff::Timestamp::now() + jiff::SignedDuration::from_secs(s))
                .ok_or_else(|| ApiError::invalid("expires_in_seconds: must be between 1 second and 10 years"))
        })
        .transpose()?;
    let secret = mint_token();
    let token = state.store.create_token(&caller.user, &user, &name, &hash_token(&secret), expires_at).await?;
    tracing::info!(token = %token.id, user = %user, actor = %caller.user, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tenancy", params(("id" = String, Path)),
    responses((status = 200, body = Token), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_token(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Token>> {
    let token = state.store.get_token(&id).await?;
    if !caller.admin && token.user != caller.user {
        return Err(ApiError::not_found("token", &id));
    }
    let token = state.store.revoke_token(&caller.user, &id).await?;
    state.tokens.clear();
    tracing::info!(token = %id, actor = %caller.user, "token revoked");
    Ok(Json(token))
}
