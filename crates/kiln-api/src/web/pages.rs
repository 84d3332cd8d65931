//! The console's pages and actions: each one calls the `/v1` handler a client would, with the
//! signed-in person as the caller, and renders or redirects on what it answers.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Redirect, Response};
use kiln_types::ProvisionState;
use kiln_web::{Frame, Page};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::session::{CsrfForm, Signed};
use super::{page_response, problem};
use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};

/// How many nodes the overview lists as busy or failed, and how many events pages show.
const OVERVIEW_LIST: usize = 20;
const EVENTS_SHOWN: u32 = 25;

pub(super) fn frame(signed: &Signed) -> Frame {
    Frame { user: Some(signed.caller.user.clone()), admin: signed.caller.admin, csrf: signed.csrf().to_owned(), notice: None, error: None }
}

/// The API's refusal as a page, in the API's words: a 404 stays a 404, so another project's
/// node looks exactly like a missing one here too.
pub(super) fn refused(signed: &Signed, error: ApiError) -> Response {
    let title = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::CONFLICT => "Not now",
        status if status.is_client_error() => "Not accepted",
        _ => "Something failed",
    };
    let page = Page::Problem { title: title.to_owned(), message: error.message };
    page_response(error.status, &frame(signed), &page)
}

/// A query or body for an API handler, made from the console's own values, as a client
/// would send them.
pub(super) fn api_input<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|error| ApiError::invalid(error.to_string()))
}

/// `GET /ui/`: nodes by state, what is under way, what failed, recent events.
pub(crate) async fn overview(State(state): State<ApiState>, signed: Signed) -> Response {
    let view = state.inventory.view();
    let scope = signed.caller.read_scope();
    let mut counts: HashMap<ProvisionState, usize> = HashMap::new();
    let (mut busy, mut failed) = (Vec::new(), Vec::new());
    let mut total = 0;
    for node in view.visible_nodes(&scope) {
        total += 1;
        *counts.entry(node.provision_state).or_default() += 1;
        if node.provision_state.is_failure() && failed.len() < OVERVIEW_LIST {
            failed.push(kiln_types::node::Node::clone(node));
        } else if node.provision_state.is_transitional() && busy.len() < OVERVIEW_LIST {
            busy.push(kiln_types::node::Node::clone(node));
        }
    }
    let states = ProvisionState::ALL
        .into_iter()
        .filter_map(|state| counts.get(&state).map(|&count| kiln_web::pages::StateCount { state, count }))
        .collect();
    let events = match recent_events(&state, &signed, None).await {
        Ok(events) => events,
        Err(error) => return refused(&signed, error),
    };
    page_response(StatusCode::OK, &frame(&signed), &Page::Overview { states, total, busy, failed, events })
}

async fn recent_events(state: &ApiState, signed: &Signed, node: Option<&str>) -> Result<Vec<kiln_types::api::Event>, ApiError> {
    let mut query = serde_json::json!({"limit": EVENTS_SHOWN, "order": "newest"});
    if let Some(node) = node {
        query["kind"] = "node".into();
        query["target"] = node.into();
    }
    let Json(events) = crate::events::list_events(State(state.clone()), signed.caller(), QueryParams(api_input(query)?)).await?;
    Ok(events)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NodesQuery {
    #[serde(default)]
    search: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    after: String,
}

/// `GET /ui/nodes`: `GET /v1/nodes` with the form's filters, a page of 100.
pub(crate) async fn nodes(State(state): State<ApiState>, signed: Signed, QueryParams(query): QueryParams<NodesQuery>) -> Response {
    let mut api_query = serde_json::Map::new();
    for (name, value) in [("search", &query.search), ("state", &query.state), ("group", &query.group), ("project", &query.project)] {
        if !value.trim().is_empty() {
            api_query.insert(name.to_owned(), value.trim().into());
        }
    }
    let filters = api_query.clone();
    if !query.after.is_empty() {
        api_query.insert("after".to_owned(), query.after.clone().into());
    }
    let listed = match api_input(api_query.into()) {
        Ok(api_query) => crate::nodes::list_nodes(State(state.clone()), signed.caller(), QueryParams(api_query)).await,
        Err(error) => Err(error),
    };
    let filter = kiln_web::pages::NodeFilterView {
        search: query.search.clone(),
        state: query.state.clone(),
        group: query.group.clone(),
        project: query.project.clone(),
    };
    let (nodes, next, status, error) = match listed {
        Ok(Json(page)) => (page.items, page.next, StatusCode::OK, None),
        Err(error) => (Vec::new(), None, error.status, Some(error.message)),
    };
    let href = |after: Option<&str>| {
        let mut pairs: Vec<(String, String)> =
            filters.iter().map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned())).collect();
        if let Some(after) = after {
            pairs.push(("after".to_owned(), after.to_owned()));
        }
        let query: Vec<String> = pairs.iter().map(|(name, value)| format!("{name}={}", query_encode(value))).collect();
        if query.is_empty() { "/ui/nodes".to_owned() } else { format!("/ui/nodes?{}", query.join("&")) }
    };
    let page = Page::Nodes {
        nodes,
        filter,
        next_href: next.as_deref().map(|next| href(Some(next))),
        first_href: (!query.after.is_empty()).then(|| href(None)),
    };
    page_response(status, &Frame { error, ..frame(&signed) }, &page)
}

fn query_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `GET /ui/nodes/{node}`: the node, its provisioning status, its events, and what may be
/// done to it.
pub(crate) async fn node(State(state): State<ApiState>, signed: Signed, Path(key): Path<String>) -> Response {
    let loaded = async {
        let Json(node) = crate::nodes::get_node(State(state.clone()), signed.caller(), Path(key.clone())).await?;
        let Json(status) = crate::provision::status(State(state.clone()), signed.caller(), Path(node.name.clone())).await?;
        // Most node events name the node; some (cloud-init data) its id, which outlives a rename.
        let mut events = recent_events(&state, &signed, Some(&node.name)).await?;
        events.extend(recent_events(&state, &signed, Some(&node.id)).await?);
        events.sort_by_key(|event| std::cmp::Reverse(event.id));
        events.dedup_by_key(|event| event.id);
        events.truncate(EVENTS_SHOWN as usize);
        let Json(images) = crate::images::list_images(State(state.clone()), signed.caller()).await?;
        let console_query = api_input(serde_json::json!({}))?;
        let Json(console) =
            crate::console::get_console(State(state.clone()), signed.caller(), Path(node.name.clone()), QueryParams(console_query)).await?;
        Ok::<_, ApiError>((node, status, events, images, console))
    };
    match loaded.await {
        Ok((node, status, events, images, console)) => {
            let can_operate = signed.caller.can_write(node.project.as_deref());
            let images = images.iter().map(|image| image.scoped_name().to_string()).collect();
            let text = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &console.data).unwrap_or_default();
            let page = Page::Node {
                node: Box::new(node),
                status: Box::new(status),
                events,
                images,
                can_operate,
                console: String::from_utf8_lossy(&text).into_owned(),
                console_end: console.end,
            };
            page_response(StatusCode::OK, &frame(&signed), &page)
        }
        Err(error) => refused(&signed, error),
    }
}

/// After an action: back to the node's page, or the API's refusal.
fn back_to_node<T>(signed: &Signed, key: &str, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(_) => Redirect::to(&format!("/ui/nodes/{}", query_encode(key))).into_response(),
        Err(error) => refused(signed, error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PowerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

/// `POST /ui/nodes/{node}/power`: `POST /v1/nodes/{node}/power`.
pub(crate) async fn power(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    axum::Form(form): axum::Form<PowerForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"action": form.action})) {
        Ok(request) => crate::power::set_power(State(state), signed.caller(), Path(key.clone()), JsonBody(request)).await,
        Err(error) => Err(error),
    };
    back_to_node(&signed, &key, result)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeployForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    root_device: String,
    #[serde(default)]
    start_at: String,
    #[serde(default)]
    end_at: String,
}

/// A `datetime-local` field's value (`2026-12-24T08:00`, seconds optional), read as UTC,
/// as the form says; empty is `None`.
fn form_time(field: &str, text: &str) -> Result<Option<String>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let civil: jiff::civil::DateTime =
        text.parse().map_err(|_| ApiError::invalid(format!("{field}: '{text}' is not a date and time (2026-12-24T08:00)")))?;
    let instant =
        civil.to_zoned(jiff::tz::TimeZone::UTC).map_err(|error| ApiError::invalid(format!("{field}: '{text}': {error}")))?.timestamp();
    Ok(Some(instant.to_string()))
}

/// `POST /ui/nodes/{node}/deploy`: `POST /v1/nodes/{node}/deploy` with `IMAGE[:VERSION]`.
pub(crate) async fn deploy(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    axum::Form(form): axum::Form<DeployForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let image = match form.version.trim() {
        "" => form.image.trim().to_owned(),
        version => format!("{}:{version}", form.image.trim()),
    };
    let request = (|| {
        let mut request = serde_json::json!({"image": image});
        if !form.mode.is_empty() {
            request["mode"] = form.mode.clone().into();
        }
        if !form.root_device.trim().is_empty() {
            let mut hints = kiln_types::provision::RootDeviceHints::default();
            for hint in form.root_device.split_whitespace() {
                hints.add_from_text(hint).map_err(ApiError::invalid)?;
            }
            request["root_device_hints"] = serde_json::to_value(hints).map_err(|error| ApiError::invalid(error.to_string()))?;
        }
        if let Some(start_at) = form_time("start", &form.start_at)? {
            request["start_at"] = start_at.into();
        }
        if let Some(end_at) = form_time("end", &form.end_at)? {
            request["end_at"] = end_at.into();
        }
        api_input(request)
    })();
    let result = match request {
        Ok(request) => crate::provision::deploy(State(state), signed.caller(), Path(key.clone()), JsonBody(request)).await,
        Err(error) => Err(error),
    };
    back_to_node(&signed, &key, result)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConsoleQuery {
    #[serde(default)]
    after: Option<u64>,
}

/// `GET /ui/nodes/{node}/console`: `GET /v1/nodes/{node}/console`, for the page's script.
pub(crate) async fn console_output(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    QueryParams(query): QueryParams<ConsoleQuery>,
) -> Response {
    let result = match api_input(serde_json::json!({"after": query.after})) {
        Ok(query) => crate::console::get_console(State(state), signed.caller(), Path(key), QueryParams(query)).await,
        Err(error) => Err(error),
    };
    result.into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConsoleLineForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    line: String,
}

/// `POST /ui/nodes/{node}/console`: `POST /v1/nodes/{node}/console` with the line and Enter.
pub(crate) async fn console_line(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    axum::Form(form): axum::Form<ConsoleLineForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"text": format!("{}\r", form.line)})) {
        Ok(input) => crate::console::type_on_console(State(state), signed.caller(), Path(key.clone()), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    back_to_node(&signed, &key, result)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CaptureForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    image: String,
}

/// `POST /ui/nodes/{node}/capture`: `POST /v1/nodes/{node}/capture`.
pub(crate) async fn capture(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    axum::Form(form): axum::Form<CaptureForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"image": form.image.trim()})) {
        Ok(request) => crate::provision::capture(State(state), signed.caller(), Path(key.clone()), JsonBody(request)).await,
        Err(error) => Err(error),
    };
    back_to_node(&signed, &key, result)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct MaintenanceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    on: String,
}

/// `POST /ui/nodes/{node}/maintenance`: `PATCH /v1/nodes/{node}` with `maintenance`.
pub(crate) async fn maintenance(
    State(state): State<ApiState>,
    signed: Signed,
    Path(key): Path<String>,
    axum::Form(form): axum::Form<MaintenanceForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let result = match api_input(serde_json::json!({"maintenance": form.on == "true"})) {
        Ok(patch) => crate::nodes::update_node(State(state), signed.caller(), Path(key.clone()), JsonBody(patch)).await,
        Err(error) => Err(error),
    };
    back_to_node(&signed, &key, result)
}

/// `POST /ui/nodes/{node}/{action}`: the provisioning request of that name.
pub(crate) async fn provision_action(
    State(state): State<ApiState>,
    signed: Signed,
    Path((key, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let (state, caller, path) = (State(state), signed.caller(), Path(key.clone()));
    let result = match action.as_str() {
        "manage" => crate::provision::manage(state, caller, path).await,
        "provide" => crate::provision::provide(state, caller, path).await,
        "inspect" => crate::provision::inspect(state, caller, path).await,
        "undeploy" => crate::provision::undeploy(state, caller, path).await,
        "abort" => crate::provision::abort(state, caller, path).await,
        "clean" => crate::provision::clean(state, caller, path, JsonBody(crate::provision::CleanRequest::default())).await,
        _ => return problem(StatusCode::NOT_FOUND, "Not found", &format!("There is no action '{action}'.")),
    };
    back_to_node(&signed, &key, result)
}

/// `GET /ui/images`.
pub(crate) async fn images(State(state): State<ApiState>, signed: Signed) -> Response {
    images_page(&state, &signed, StatusCode::OK, None).await
}

async fn images_page(state: &ApiState, signed: &Signed, status: StatusCode, error: Option<String>) -> Response {
    // Where the person may create one: the projects they are a member of (the API's rule,
    // `target_project`), and no project for an administrator.
    let mut projects: Vec<Option<String>> = Vec::new();
    if signed.caller.admin {
        projects.push(None);
    }
    projects.extend(
        signed
            .caller
            .memberships
            .iter()
            .filter(|(_, role)| **role == kiln_types::api::ProjectRole::Member)
            .map(|(project, _)| Some(project.clone())),
    );
    match crate::images::list_images(State(state.clone()), signed.caller()).await {
        Ok(Json(images)) => page_response(status, &Frame { error, ..frame(signed) }, &Page::Images { images, projects }),
        Err(error) => refused(signed, error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImageForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    visibility: String,
    #[serde(default)]
    description: String,
}

/// `POST /ui/images`: `POST /v1/images`, then the new image's page.
pub(crate) async fn create_image(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<ImageForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let mut input = serde_json::json!({"name": form.name.trim(), "description": form.description.trim()});
    if !form.project.is_empty() {
        input["project"] = form.project.clone().into();
    }
    if !form.visibility.is_empty() {
        input["visibility"] = form.visibility.clone().into();
    }
    let created = match api_input(input) {
        Ok(input) => crate::images::create_image(State(state.clone()), signed.caller(), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    match created {
        Ok((_, Json(image))) => Redirect::to(&format!("/ui/images/{}", query_encode(&image.scoped_name().to_string()))).into_response(),
        Err(error) => images_page(&state, &signed, error.status, Some(error.message)).await,
    }
}

/// `GET /ui/images/{image}`: the image and its versions' artifacts.
pub(crate) async fn image(State(state): State<ApiState>, signed: Signed, Path(reference): Path<String>) -> Response {
    let loaded = async {
        let Json(image) = crate::images::get_image(State(state.clone()), signed.caller(), Path(reference.clone())).await?;
        let Json(versions) = crate::images::list_versions(State(state.clone()), signed.caller(), Path(reference.clone())).await?;
        Ok::<_, ApiError>((image, versions))
    };
    match loaded.await {
        Ok((image, versions)) => {
            let can_upload = signed.caller.can_write(image.project.as_deref());
            page_response(StatusCode::OK, &frame(&signed), &Page::Image { image, versions, can_upload })
        }
        Err(error) => refused(&signed, error),
    }
}

/// `GET /ui/tokens`: the person's own API tokens.
pub(crate) async fn tokens(State(state): State<ApiState>, signed: Signed) -> Response {
    tokens_page(&state, &signed, None, StatusCode::OK, None).await
}

pub(super) async fn tokens_page(
    state: &ApiState,
    signed: &Signed,
    created: Option<kiln_types::api::CreatedToken>,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let query = match api_input(serde_json::json!({"user": signed.caller.user})) {
        Ok(query) => query,
        Err(error) => return refused(signed, error),
    };
    match crate::tenancy::list_tokens(State(state.clone()), signed.caller(), QueryParams(query)).await {
        Ok(Json(tokens)) => page_response(status, &Frame { error, ..frame(signed) }, &Page::Tokens { tokens, created }),
        Err(error) => refused(signed, error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

/// `POST /ui/tokens`: `POST /v1/tokens` for the person; the secret is shown once.
pub(crate) async fn create_token(State(state): State<ApiState>, signed: Signed, axum::Form(form): axum::Form<TokenForm>) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    let expires_in_seconds = match form.expires_in_days.trim() {
        "" => None,
        days => match days.parse::<u64>() {
            Ok(days) if days > 0 => Some(days.saturating_mul(86_400)),
            _ => {
                let message = format!("Expires after: '{days}' is not a whole number of days above 0");
                return tokens_page(&state, &signed, None, StatusCode::BAD_REQUEST, Some(message)).await;
            }
        },
    };
    let input = serde_json::json!({"name": form.name.trim(), "expires_in_seconds": expires_in_seconds});
    let created = match api_input(input) {
        Ok(input) => crate::tenancy::create_token(State(state.clone()), signed.caller(), JsonBody(input)).await,
        Err(error) => Err(error),
    };
    match created {
        Ok((_, Json(created))) => tokens_page(&state, &signed, Some(created), StatusCode::CREATED, None).await,
        Err(error) => tokens_page(&state, &signed, None, error.status, Some(error.message)).await,
    }
}

/// `POST /ui/tokens/{token}/revoke`: `DELETE /v1/tokens/{token}`.
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    match crate::tenancy::revoke_token(State(state), signed.caller(), Path(id)).await {
        Ok(_) => Redirect::to("/ui/tokens").into_response(),
        Err(error) => refused(&signed, error),
    }
}

/// `GET /ui/reservations`: `GET /v1/reservations` as a calendar of the next two weeks.
pub(crate) async fn reservations(State(state): State<ApiState>, signed: Signed) -> Response {
    match crate::provision::list_reservations(State(state), signed.caller()).await {
        Ok(Json(reservations)) => {
            let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
            page_response(StatusCode::OK, &frame(&signed), &Page::Reservations { reservations, today, days: 14 })
        }
        Err(error) => refused(&signed, error),
    }
}
