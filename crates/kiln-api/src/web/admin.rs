//! The administration page (projects, users, memberships, passwords, node allocation) and
//! the person's own password: each action is the `/v1` handler a client would call, so a
//! person who is not an administrator is refused exactly as the API refuses them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Redirect, Response};
use kiln_web::{Frame, Page};
use serde::Deserialize;

use super::page_response;
use super::pages::{api_input, frame, refused};
use super::session::Signed;
use crate::ApiState;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// `GET /ui/admin`.
pub(crate) async fn page(State(state): State<ApiState>, signed: Signed) -> Response {
    admin_page(&state, &signed, StatusCode::OK, None).await
}

async fn admin_page(state: &ApiState, signed: &Signed, status: StatusCode, error: Option<String>) -> Response {
    let loaded = async {
        let Json(users) = crate::tenancy::list_users(State(state.clone()), signed.caller()).await?;
        let Json(projects) = crate::tenancy::list_projects(State(state.clone()), signed.caller()).await?;
        Ok::<_, ApiError>((projects, users))
    };
    match loaded.await {
        Ok((projects, users)) => page_response(status, &Frame { error, ..frame(signed) }, &Page::Admin { projects, users }),
        Err(error) => refused(signed, error),
    }
}

/// After an administration action: the page again, with the API's refusal if there was one.
async fn after<T>(state: &ApiState, signed: &Signed, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(_) => Redirect::to("/ui/admin").into_response(),
        Err(error) if error.status == StatusCode::FORBIDDEN => refused(signed, error),
        Err(error) => admin_page(state, signed, error.status, Some(error.message)).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NamedForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    admin: Option<String>,
}

/// `POST /ui/admin/projects`: `POST /v1/projects`.
pub(crate) async fn create_project(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<NamedForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"name": form.name.trim(), "description": form.description.trim()})) {
        Ok(input) => crate::tenancy::create_project(State(state.clone()), signed.caller(), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    after(&state, &signed, result).await
}

/// `POST /ui/admin/projects/{project}/delete`: `DELETE /v1/projects/{project}`.
pub(crate) async fn delete_project(
    State(state): State<ApiState>,
    signed: Signed,
    Path(project): Path<String>,
    axum::Form(form): axum::Form<super::session::CsrfForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = crate::tenancy::delete_project(State(state.clone()), signed.caller(), Path(project)).await;
    after(&state, &signed, result).await
}

/// `POST /ui/admin/users`: `POST /v1/users`.
pub(crate) async fn create_user(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<NamedForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let input = serde_json::json!({"name": form.name.trim(), "admin": form.admin.as_deref() == Some("true")});
    let result = match api_input(input) {
        Ok(input) => crate::tenancy::create_user(State(state.clone()), signed.caller(), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    after(&state, &signed, result).await
}

/// `POST /ui/admin/users/{user}/delete`: `DELETE /v1/users/{user}`.
pub(crate) async fn delete_user(
    State(state): State<ApiState>,
    signed: Signed,
    Path(user): Path<String>,
    axum::Form(form): axum::Form<super::session::CsrfForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = crate::tenancy::delete_user(State(state.clone()), signed.caller(), Path(user)).await;
    after(&state, &signed, result).await
}

#[derive(Default, Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    /// The person's own change asks for it twice.
    #[serde(default)]
    repeated: Option<String>,
}

/// Never the password, wherever a form is printed.
impl std::fmt::Debug for PasswordForm {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PasswordForm").field("password", &"******").finish_non_exhaustive()
    }
}

async fn set_password(state: &ApiState, signed: &Signed, user: &str, password: &str) -> Result<StatusCode, ApiError> {
    let input = api_input(serde_json::json!({"password": password}))?;
    crate::tenancy::set_password(State(state.clone()), signed.caller(), Path(user.to_owned()), JsonBody(input)).await
}

/// `POST /ui/admin/users/{user}/password`: `PUT /v1/users/{user}/password`.
pub(crate) async fn user_password(
    State(state): State<ApiState>,
    signed: Signed,
    Path(user): Path<String>,
    axum::Form(form): axum::Form<PasswordForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = set_password(&state, &signed, &user, &form.password).await;
    after(&state, &signed, result).await
}

/// `POST /ui/account/password`: the person's own password (`PUT /v1/users/{self}/password`).
/// Every session of theirs ends with it, this one included.
pub(crate) async fn own_password(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<PasswordForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    if form.repeated.as_deref() != Some(form.password.as_str()) {
        let error = ApiError::invalid("the two passwords differ");
        return super::pages::tokens_page(&state, &signed, None, error.status, Some(error.message)).await;
    }
    let user = signed.caller.user.clone();
    match set_password(&state, &signed, &user, &form.password).await {
        Ok(_) => Redirect::to("/ui/sign-in").into_response(),
        Err(error) => super::pages::tokens_page(&state, &signed, None, error.status, Some(error.message)).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct MemberForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    role: String,
}

/// `POST /ui/admin/members`: `PUT /v1/projects/{project}/members`.
pub(crate) async fn set_member(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<MemberForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"user": form.user, "role": form.role})) {
        Ok(input) => crate::tenancy::set_member(State(state.clone()), signed.caller(), Path(form.project.clone()), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    after(&state, &signed, result).await
}

/// `POST /ui/admin/members/remove`: `DELETE /v1/projects/{project}/members/{user}`.
pub(crate) async fn remove_member(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<MemberForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = crate::tenancy::remove_member(State(state.clone()), signed.caller(), Path((form.project, form.user))).await;
    after(&state, &signed, result).await
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AllocationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    action: String,
}

/// `POST /ui/admin/allocation`: `POST /v1/projects/{project}/allocate` or `release`.
pub(crate) async fn allocation(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<AllocationForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let nodes: Vec<&str> =
        form.nodes.split(|character: char| character == ',' || character.is_whitespace()).filter(|node| !node.is_empty()).collect();
    let input = match api_input::<kiln_types::api::AllocationInput>(serde_json::json!({"nodes": nodes})) {
        Ok(input) => input,
        Err(error) => return after::<()>(&state, &signed, Err(error)).await,
    };
    let (state_, caller, project) = (State(state.clone()), signed.caller(), Path(form.project.clone()));
    let result = match form.action.as_str() {
        "allocate" => crate::nodes::allocate_nodes(state_, caller, project, JsonBody(input)).await,
        "release" => crate::nodes::release_nodes(state_, caller, project, JsonBody(input)).await,
        other => Err(ApiError::invalid(format!("action: '{other}' is neither 'allocate' nor 'release'"))),
    };
    after(&state, &signed, result).await
}

/// The boot parameters form's fields, as the API's errors name them.
const BOOT_FIELDS: [&str; 7] = ["kernel", "initrd", "params", "macs", "hosts", "nids", "groups"];

/// `GET /ui/admin/boot`: `GET /v1/boot/params` and `GET /v1/cloud-init/defaults`.
pub(crate) async fn boot_page(State(state): State<ApiState>, signed: Signed) -> Response {
    boot_view(&state, &signed, StatusCode::OK, kiln_web::pages::BootForm::default(), BTreeMap::new(), None).await
}

async fn boot_view(
    state: &ApiState,
    signed: &Signed,
    status: StatusCode,
    form: kiln_web::pages::BootForm,
    errors: BTreeMap<String, String>,
    cloud_init: Option<String>,
) -> Response {
    let loaded = async {
        let Json(entries) = crate::boot::list_params(State(state.clone()), signed.caller()).await?;
        let Json(defaults) = crate::cloud_init::get_defaults(State(state.clone()), signed.caller()).await?;
        Ok::<_, ApiError>((entries, defaults))
    };
    match loaded.await {
        Ok((entries, defaults)) => {
            let cloud_init = cloud_init.unwrap_or_else(|| match serde_yaml::to_value(&defaults) {
                Ok(serde_yaml::Value::Mapping(mapping)) if mapping.is_empty() => String::new(),
                _ => serde_yaml::to_string(&defaults).unwrap_or_default(),
            });
            page_response(status, &frame(signed), &Page::Boot { entries, form, cloud_init, errors })
        }
        Err(error) => refused(signed, error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BootParamsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    kernel: String,
    #[serde(default)]
    initrd: String,
    #[serde(default)]
    params: String,
    #[serde(default)]
    macs: String,
    #[serde(default)]
    hosts: String,
    #[serde(default)]
    nids: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    mode: String,
}

fn listed(text: &str) -> Vec<&str> {
    text.split(|character: char| character == ',' || character.is_whitespace()).filter(|item| !item.is_empty()).collect()
}

impl BootParamsForm {
    /// The API's input, or the field that is not even that.
    fn input(&self) -> Result<serde_json::Value, (String, String)> {
        let nids = listed(&self.nids)
            .into_iter()
            .map(|nid| nid.parse::<u32>().map_err(|_| ("nids".to_owned(), format!("'{nid}' is not a node number"))))
            .collect::<Result<Vec<u32>, _>>()?;
        let mut input = serde_json::json!({
            "macs": listed(&self.macs), "hosts": listed(&self.hosts), "nids": nids, "groups": listed(&self.groups),
        });
        for (name, value) in [("kernel", &self.kernel), ("initrd", &self.initrd), ("params", &self.params)] {
            if !value.trim().is_empty() {
                input[name] = value.trim().into();
            }
        }
        Ok(input)
    }

    fn shown(&self) -> kiln_web::pages::BootForm {
        kiln_web::pages::BootForm {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            params: self.params.clone(),
            macs: self.macs.clone(),
            hosts: self.hosts.clone(),
            nids: self.nids.clone(),
            groups: self.groups.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// The API's refusal beside the field it names, or at the top of the page.
async fn boot_refusal(state: &ApiState, signed: &Signed, form: &BootParamsForm, error: ApiError) -> Response {
    if error.status == StatusCode::FORBIDDEN {
        return refused(signed, error);
    }
    let mut errors = BTreeMap::new();
    match kiln_web::pages::field_of_error(&error.message, &BOOT_FIELDS) {
        (Some(field), message) => errors.insert(field.to_owned(), message.to_owned()),
        (None, message) => errors.insert("form".to_owned(), message.to_owned()),
    };
    boot_view(state, signed, error.status, form.shown(), errors, None).await
}

/// `POST /ui/admin/boot`: `POST` (add) or `PUT` (set) `/v1/boot/params`.
pub(crate) async fn save_boot_params(
    State(state): State<ApiState>,
    signed: Signed,
    axum::Form(form): axum::Form<BootParamsForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let input = match form.input() {
        Ok(input) => input,
        Err((field, message)) => {
            let errors = BTreeMap::from([(field, message)]);
            return boot_view(&state, &signed, StatusCode::BAD_REQUEST, form.shown(), errors, None).await;
        }
    };
    let result = match api_input::<kiln_types::boot::BootParamsInput>(input) {
        Ok(input) if form.mode == "set" => {
            crate::boot::set_params(State(state.clone()), signed.caller(), JsonBody(input)).await.map(|_| ())
        }
        Ok(input) => crate::boot::add_params(State(state.clone()), signed.caller(), JsonBody(input)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Redirect::to("/ui/admin/boot").into_response(),
        Err(error) => boot_refusal(&state, &signed, &form, error).await,
    }
}

/// `POST /ui/admin/boot/delete`: `DELETE /v1/boot/params` for an entry's targets.
pub(crate) async fn delete_boot_params(
    State(state): State<ApiState>,
    signed: Signed,
    axum::Form(form): axum::Form<BootParamsForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match form.input().map_err(|(field, message)| ApiError::invalid(format!("{field}: {message}"))).and_then(api_input) {
        Ok(input) => crate::boot::delete_params(State(state.clone()), signed.caller(), JsonBody(input)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Redirect::to("/ui/admin/boot").into_response(),
        Err(error) => boot_refusal(&state, &signed, &form, error).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CloudInitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    defaults: String,
}

/// `POST /ui/admin/cloud-init`: `PUT /v1/cloud-init/defaults` with the document, YAML or JSON.
pub(crate) async fn save_cloud_init(
    State(state): State<ApiState>,
    signed: Signed,
    axum::Form(form): axum::Form<CloudInitForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let document: Result<serde_json::Value, ApiError> = if form.defaults.trim().is_empty() {
        Ok(serde_json::json!({}))
    } else {
        serde_yaml::from_str(&form.defaults).map_err(|error| ApiError::invalid(format!("not a YAML or JSON document: {error}")))
    };
    let result = match document.and_then(api_input) {
        Ok(defaults) => crate::cloud_init::set_defaults(State(state.clone()), signed.caller(), JsonBody(defaults)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Redirect::to("/ui/admin/boot").into_response(),
        Err(error) if error.status == StatusCode::FORBIDDEN => refused(&signed, error),
        Err(error) => {
            let errors = BTreeMap::from([("defaults".to_owned(), error.message)]);
            boot_view(&state, &signed, error.status, kiln_web::pages::BootForm::default(), errors, Some(form.defaults)).await
        }
    }
}
