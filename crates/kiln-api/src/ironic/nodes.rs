//! Ironic's nodes over Kiln's: enrol (`baremetal node create`), list and show (with
//! `fields` and `detail`), JSON-patch updates (`node set`/`unset`), delete, power, provision
//! verbs, maintenance and validation.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use kiln_auth::ProjectScope;
use kiln_ironic::documents::{DEFAULT_BOOT_INTERFACE, NODE_LIST_FIELDS, NodeFacts, node_document, select};
use kiln_ironic::driver::{DriverError, split_driver_info};
use kiln_ironic::patch::{PatchOperation, apply};
use kiln_ironic::states::{ProvisionVerb, provision_verb};
use kiln_types::bmc::PowerAction;
use kiln_types::ironic::IronicFields;
use kiln_types::node::{Node, NodeChange, NodeInput, NodeSpec, validate_bmc};
use kiln_types::provision::{DeployRequest, Intent, RootDeviceHints};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{IronicCaller, IronicError, IronicResult, images, visible};
use crate::ApiState;
use crate::auth::Caller;
use crate::extract::JsonBody;

/// The query of a node listing or show. Booleans come as Python writes them (`True`);
/// a parameter Kiln does not take is refused rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeQuery {
    fields: Option<String>,
    detail: Option<String>,
    limit: Option<usize>,
    marker: Option<String>,
    provision_state: Option<String>,
    maintenance: Option<String>,
    driver: Option<String>,
}

type NodeQueryResult = Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>;

/// Ironic's power state words for what Kiln's power sync last read.
fn power_word(kiln: &str) -> Option<&'static str> {
    match kiln {
        "on" => Some("power on"),
        "off" => Some("power off"),
        _ => None,
    }
}

fn driver_error(error: DriverError) -> IronicError {
    IronicError::invalid(error.to_string())
}

/// The node `key` if the caller may change it: 404 if it may not see it, 403 if only that.
pub(super) fn writable(state: &ApiState, caller: &IronicCaller, key: &str) -> IronicResult<Arc<Node>> {
    let node = visible(state, caller, key)?;
    if !caller.context.can_write(node.project.as_deref()) {
        return Err(IronicError::new(StatusCode::FORBIDDEN, format!("You may read node {key} but not change it.")));
    }
    Ok(node)
}

fn require_admin(caller: &IronicCaller, what: &str) -> IronicResult<()> {
    if caller.context.admin { Ok(()) } else { Err(IronicError::new(StatusCode::FORBIDDEN, format!("Only administrators {what}."))) }
}

/// A node's whole document, with what the store knows of its errors and power.
async fn document_of(state: &ApiState, caller: &IronicCaller, node: &Node) -> IronicResult<Map<String, Value>> {
    let ironic = state.store.ironic_fields(&node.id).await?;
    let status = state.store.provision_status(&node.id, &ProjectScope::All).await?;
    let reading = state.store.power_reading(&node.id, &ProjectScope::All).await?;
    let power = reading.and_then(|reading| reading.power_state).and_then(|word| power_word(&word));
    let pending = status.pending.as_ref();
    // The state as the store has it, with its pending request: the inventory view follows
    // the store within moments, and a client that waits must never see the two disagree.
    let node = Node { provision_state: status.provision_state, maintenance: status.maintenance, ..node.clone() };
    let facts = NodeFacts { node: &node, ironic: &ironic, last_error: status.last_error.as_deref(), power_state: power, pending };
    Ok(node_document(facts, caller.version, &caller.base_url))
}

/// The query, or Ironic's 400 naming what is wrong with it.
pub(super) fn parsed<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> IronicResult<T> {
    query.map(|Query(query)| query).map_err(|rejection| IronicError::invalid(rejection.body_text()))
}

/// `True`, `true`, `1`… as Ironic's clients send booleans.
pub(super) fn boolean(name: &str, text: Option<&str>) -> IronicResult<Option<bool>> {
    match text.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes" | "on") => Ok(Some(true)),
        Some("false" | "0" | "no" | "off") => Ok(Some(false)),
        Some(other) => Err(IronicError::invalid(format!("{name}: '{other}' is not a boolean"))),
    }
}

/// The link to the page after `last`: the same query with `marker` moved on.
pub(super) fn next_link(base_url: &str, collection: &str, raw_query: Option<&str>, last: &str) -> String {
    let mut pairs: Vec<&str> =
        raw_query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty() && !pair.starts_with("marker=")).collect();
    let marker = format!("marker={last}");
    pairs.push(&marker);
    format!("{base_url}/v1/{collection}?{}", pairs.join("&"))
}

fn fields_of(query: &NodeQuery) -> Option<Vec<&str>> {
    query.fields.as_deref().map(|fields| fields.split(',').map(str::trim).filter(|field| !field.is_empty()).collect())
}

/// The `fields` asked for (each must exist at the negotiated version), or the short form's
/// fields that exist at it (`name` only from 1.5).
fn selected(document: &Map<String, Value>, fields: Option<&[&str]>, short: &[&str]) -> IronicResult<Value> {
    let fields = match fields {
        Some(fields) => fields.to_vec(),
        None => short.iter().copied().filter(|field| document.contains_key(*field)).collect(),
    };
    Ok(Value::Object(select(document, &fields).map_err(|error| IronicError::invalid(error.to_string()))?))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    query: NodeQueryResult,
) -> IronicResult<Json<Value>> {
    let query = parsed(query)?;
    let node = visible(&state, &caller, &key)?;
    let document = document_of(&state, &caller, &node).await?;
    match fields_of(&query) {
        Some(fields) => Ok(Json(selected(&document, Some(&fields), &[])?)),
        None => Ok(Json(Value::Object(document))),
    }
}

pub(super) async fn list(
    State(state): State<ApiState>,
    caller: IronicCaller,
    query: NodeQueryResult,
    RawQuery(raw): RawQuery,
) -> IronicResult<Json<Value>> {
    let query = parsed(query)?;
    let detail = boolean("detail", query.detail.as_deref())?.unwrap_or(false);
    listing(&state, &caller, &query, detail, "nodes", raw.as_deref()).await
}

pub(super) async fn list_detail(
    State(state): State<ApiState>,
    caller: IronicCaller,
    query: NodeQueryResult,
    RawQuery(raw): RawQuery,
) -> IronicResult<Json<Value>> {
    listing(&state, &caller, &parsed(query)?, true, "nodes/detail", raw.as_deref()).await
}

/// The nodes the caller sees (each judged by its own project), by uuid, a page at a time
/// (`limit`, `marker`), filtered.
async fn listing(
    state: &ApiState,
    caller: &IronicCaller,
    query: &NodeQuery,
    detail: bool,
    collection: &str,
    raw_query: Option<&str>,
) -> IronicResult<Json<Value>> {
    if detail && query.fields.is_some() {
        return Err(IronicError::invalid("Can not specify ?detail=True and fields in the same request."));
    }
    let limit = query.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(IronicError::invalid(format!("limit: {limit} is outside 1 to 1000")));
    }
    let maintenance = boolean("maintenance", query.maintenance.as_deref())?;
    let view = state.inventory.view();
    let scope = caller.context.read_scope();
    let mut nodes: Vec<&Arc<Node>> = view.visible_nodes(&scope).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let ironic = state.store.all_ironic_fields().await?;
    let power: HashMap<String, String> = state.store.all_power_states().await?;
    let notes = state.store.all_provision_notes().await?;
    let empty = IronicFields::default();
    let fields = fields_of(query);
    let mut page = Vec::new();
    let mut last_uuid = None;
    let mut more = false;
    for node in nodes.into_iter().filter(|node| query.marker.as_deref().is_none_or(|marker| node.id.as_str() > marker)) {
        let fields_of_node = ironic.get(&node.id).unwrap_or(&empty);
        let power_state = power.get(&node.id).and_then(|word| power_word(word));
        // The state as the store has it with its request and error (the view follows within
        // moments), so that a listing and a show never disagree.
        let note = notes.get(&node.id);
        let current;
        let node = match note {
            Some(note) if note.state != node.provision_state => {
                current = Node { provision_state: note.state, ..Node::clone(node) };
                &current
            }
            _ => node.as_ref(),
        };
        let (pending, last_error) = note.map_or((None, None), |note| (note.pending.as_ref(), note.last_error.as_deref()));
        let facts = NodeFacts { node, ironic: fields_of_node, last_error, power_state, pending };
        let document = node_document(facts, caller.version, &caller.base_url);
        let matches = query.provision_state.as_deref().is_none_or(|wanted| document["provision_state"] == wanted)
            && maintenance.is_none_or(|wanted| node.maintenance == wanted)
            && query.driver.as_deref().is_none_or(|wanted| document["driver"] == wanted);
        if !matches {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        last_uuid = Some(node.id.clone());
        page.push(if detail { Value::Object(document) } else { selected(&document, fields.as_deref(), &NODE_LIST_FIELDS)? });
    }
    let mut answer = json!({ "nodes": page });
    if more && let Some(last) = last_uuid {
        answer["next"] = json!(next_link(&caller.base_url, collection, raw_query, &last));
    }
    Ok(Json(answer))
}

/// What `baremetal node create` sends that Kiln takes; anything else is refused by name.
const CREATE_FIELDS: [&str; 8] = ["driver", "driver_info", "name", "properties", "extra", "instance_info", "owner", "boot_interface"];

/// Ironic's `boot_interface`, kept as Kiln keeps a node's: `boot_interface` in its
/// properties (`redfish-virtual-media` boots from virtual media, the others from the
/// network); `None` (absent or null) removes it.
fn set_boot_interface(properties: &mut Map<String, Value>, boot_interface: Option<&Value>) -> IronicResult<()> {
    match boot_interface {
        None | Some(Value::Null) => {
            properties.remove("boot_interface");
        }
        Some(Value::String(name)) => {
            name.parse::<kiln_types::node::BootInterface>().map_err(IronicError::invalid)?;
            properties.insert("boot_interface".to_owned(), Value::String(name.clone()));
        }
        Some(_) => return Err(IronicError::invalid("boot_interface must be a string")),
    }
    Ok(())
}

fn object_field(body: &Map<String, Value>, field: &str) -> IronicResult<Map<String, Value>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object.clone()),
        Some(_) => Err(IronicError::invalid(format!("{field} must be an object"))),
    }
}

fn check_sizes(state: &ApiState, fields: &IronicFields, properties: &Map<String, Value>) -> IronicResult<()> {
    for (name, value) in [
        ("properties", properties),
        ("extra", &fields.extra),
        ("instance_info", &fields.instance_info),
        ("driver_info", &fields.driver_info),
    ] {
        state.field_limits.check(name, value)?;
    }
    Ok(())
}

pub(super) async fn create(
    State(state): State<ApiState>,
    caller: IronicCaller,
    body: Result<JsonBody<Map<String, Value>>, crate::error::ApiError>,
) -> IronicResult<(StatusCode, Json<Value>)> {
    require_admin(&caller, "enrol nodes")?;
    let JsonBody(body) = body?;
    let unknown: Vec<&str> = body.keys().map(String::as_str).filter(|key| !CREATE_FIELDS.contains(key)).collect();
    if !unknown.is_empty() {
        return Err(IronicError::invalid(format!("Kiln does not take the node field(s) {}", unknown.join(", "))));
    }
    let driver = body.get("driver").and_then(Value::as_str).ok_or_else(|| IronicError::invalid("driver is required"))?;
    let info = split_driver_info(driver, &object_field(&body, "driver_info")?).map_err(driver_error)?;
    let fields = IronicFields {
        driver: driver.to_owned(),
        driver_info: info.kept,
        extra: object_field(&body, "extra")?,
        instance_info: object_field(&body, "instance_info")?,
    };
    let mut properties = object_field(&body, "properties")?;
    if body.contains_key("boot_interface") {
        set_boot_interface(&mut properties, body.get("boot_interface"))?;
    }
    check_sizes(&state, &fields, &properties)?;
    // Kiln names every node; Ironic's may be nameless, and then it is named for its id.
    let name = match body.get("name") {
        Some(Value::String(name)) => name.clone(),
        None | Some(Value::Null) => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        Some(_) => return Err(IronicError::invalid("name must be a string")),
    };
    let owner = body.get("owner").and_then(Value::as_str).map(str::to_owned);
    let input = NodeInput { name: Some(name), bmc: Some(info.bmc), properties: Some(properties), project: owner, ..Default::default() };
    let spec = NodeSpec::try_from(&input).map_err(|error| IronicError::invalid(error.to_string()))?;
    let node = state.store.create_ironic_node(&caller.context.user, &spec, &fields).await?;
    state.after_node_write().await;
    tracing::info!(node = %node.name, driver, actor = %caller.context.user, "node enrolled through the Ironic API");
    Ok((StatusCode::CREATED, Json(Value::Object(document_of(&state, &caller, &node).await?))))
}

/// The fields a patch may change; the rest are read-only here (Kiln's lifecycle, power and
/// allocation own them).
const PATCHABLE: [&str; 7] = ["name", "driver", "driver_info", "properties", "extra", "instance_info", "boot_interface"];

pub(super) async fn update(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    body: Result<JsonBody<Vec<PatchOperation>>, crate::error::ApiError>,
) -> IronicResult<Json<Value>> {
    let node = writable(&state, &caller, &key)?;
    let JsonBody(operations) = body?;
    for operation in &operations {
        let field = operation.path().trim_start_matches('/').split('/').next().unwrap_or_default();
        if !PATCHABLE.contains(&field) {
            return Err(IronicError::invalid(format!(
                "'{}' cannot be patched here: Kiln patches {}",
                operation.path(),
                PATCHABLE.join(", ")
            )));
        }
    }
    let before = Value::Object(document_of(&state, &caller, &node).await?);
    let after = apply(&before, &operations).map_err(|error| IronicError::invalid(error.to_string()))?;
    let object = |field: &str| -> IronicResult<Map<String, Value>> {
        match after.get(field) {
            None => Ok(Map::new()),
            Some(Value::Object(object)) => Ok(object.clone()),
            Some(_) => Err(IronicError::invalid(format!("{field} must be an object"))),
        }
    };
    let name =
        after.get("name").and_then(Value::as_str).ok_or_else(|| IronicError::invalid("name: a Kiln node always has a name; replace it"))?;
    let driver = after.get("driver").and_then(Value::as_str).ok_or_else(|| IronicError::invalid("driver must be a string"))?;
    let identity_changed =
        after["name"] != before["name"] || after["driver"] != before["driver"] || after["driver_info"] != before["driver_info"];
    if identity_changed {
        // The physical inventory (names, BMCs and their credentials) is the operators', as in
        // Kiln's own API: a tenant pointing a BMC elsewhere would be handed its password.
        require_admin(&caller, "change a node's name, driver or driver_info")?;
    }
    let mut info = split_driver_info(driver, &object("driver_info")?).map_err(driver_error)?;
    // The BMC's MAC is not Ironic's to set; a password key left out clears the password, and
    // the mask sent back keeps it.
    info.bmc.mac = node.bmc.as_ref().and_then(|bmc| bmc.mac).map(|mac| mac.to_string());
    info.bmc.password.get_or_insert_with(String::new);
    let fields = IronicFields {
        driver: driver.to_owned(),
        driver_info: info.kept,
        extra: object("extra")?,
        instance_info: object("instance_info")?,
    };
    let mut properties = object("properties")?;
    if after.get("boot_interface") != before.get("boot_interface") {
        // `baremetal node set --boot-interface`, or `--reset-boot-interface` (a removal).
        let chosen = after.get("boot_interface").filter(|value| value.as_str() != Some(DEFAULT_BOOT_INTERFACE));
        set_boot_interface(&mut properties, chosen)?;
    }
    check_sizes(&state, &fields, &properties)?;
    let mut change = NodeChange::default();
    if after["name"] != before["name"] {
        change.name = Some(kiln_types::validate::node_name("name", name).map_err(|error| IronicError::invalid(error.to_string()))?);
    }
    if Some(&properties) != before.get("properties").and_then(Value::as_object) {
        change.properties = Some(properties);
    }
    if identity_changed {
        change.bmc = Some(validate_bmc(&info.bmc).map_err(|error| IronicError::invalid(error.to_string()))?);
    }
    let updated = state.store.update_ironic_node(&caller.context.user, &node.id, &caller.context.write_scope(), &change, &fields).await?;
    state.after_node_write().await;
    Ok(Json(Value::Object(document_of(&state, &caller, &updated).await?)))
}

pub(super) async fn delete(State(state): State<ApiState>, caller: IronicCaller, Path(key): Path<String>) -> IronicResult<StatusCode> {
    let node = visible(&state, &caller, &key)?;
    require_admin(&caller, "delete nodes")?;
    state.store.delete_node(&caller.context.user, &node.id, &caller.context.write_scope()).await?;
    state.after_node_write().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct PowerTarget {
    target: String,
}

pub(super) async fn set_power(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    body: Result<JsonBody<PowerTarget>, crate::error::ApiError>,
) -> IronicResult<StatusCode> {
    let node = writable(&state, &caller, &key)?;
    let JsonBody(body) = body?;
    let action = match body.target.as_str() {
        "power on" => PowerAction::On,
        // Ironic's power off cuts the power; its soft power off asks the system.
        "power off" => PowerAction::ForceOff,
        "soft power off" => PowerAction::Off,
        "rebooting" => PowerAction::Cycle,
        "soft rebooting" => {
            return Err(IronicError::invalid(format!("Kiln does not reboot softly: 'soft power off', then 'power on' node {key}.")));
        }
        other => return Err(IronicError::invalid(format!("The requested action \"{other}\" can not be performed on node {key}."))),
    };
    let request = kiln_bmc::PowerRequest { action };
    let _answered =
        crate::power::set_power(State(state.clone()), Caller(caller.context.clone()), Path(node.id.clone()), JsonBody(request)).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
pub(super) struct ProvisionTarget {
    target: String,
    #[serde(default)]
    clean_steps: Option<Value>,
    #[serde(default)]
    configdrive: Option<Value>,
}

pub(super) async fn set_provision(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    body: Result<JsonBody<ProvisionTarget>, crate::error::ApiError>,
) -> IronicResult<StatusCode> {
    let node = writable(&state, &caller, &key)?;
    let JsonBody(body) = body?;
    let verb =
        provision_verb(&body.target, body.clean_steps.as_ref(), caller.version).map_err(|error| IronicError::invalid(error.to_string()))?;
    if body.configdrive.as_ref().is_some_and(|drive| !drive.is_null()) {
        return Err(IronicError::invalid("configdrive is not taken: Kiln serves the node's cloud-init data itself (kiln cloud-init)"));
    }
    // A node that names its own deploy kernel and ramdisk boots its agent from them: they are
    // fetched (or found cached) before any operation that boots the agent.
    let boots_agent = matches!(verb, ProvisionVerb::Inspect | ProvisionVerb::Clean(_) | ProvisionVerb::Undeploy | ProvisionVerb::Deploy);
    let ironic = state.store.ironic_fields(&node.id).await?;
    let fetches = (boots_agent && kiln_ironic::images::deploy_ramdisk_urls(&ironic.driver_info).is_some())
        || (verb == ProvisionVerb::Deploy
            && ironic.instance_info.get("image_source").and_then(Value::as_str).is_some_and(kiln_ironic::images::is_url));
    if fetches {
        // Checked before fetching, so that a busy node costs no download; the request
        // checks again when it is recorded.
        let status = state.store.provision_status(&node.id, &ProjectScope::All).await?;
        let allowed = match verb {
            ProvisionVerb::Deploy => Intent::DEPLOYABLE_FROM,
            ProvisionVerb::Inspect => Intent::Inspect.allowed_from(),
            ProvisionVerb::Clean(mode) => Intent::Clean { mode }.allowed_from(),
            _ => Intent::Undeploy.allowed_from(),
        };
        if status.pending.is_some() || !allowed.contains(&status.provision_state) {
            let state_name = kiln_ironic::states::provision_state(status.provision_state, caller.version).unwrap_or("busy");
            return Err(IronicError::new(
                StatusCode::CONFLICT,
                format!(
                    "The requested action \"{}\" can not be performed on node {} while it is in state \"{state_name}\".",
                    body.target, node.name
                ),
            ));
        }
    }
    if boots_agent
        && let Some((kernel_url, ramdisk_url)) = kiln_ironic::images::deploy_ramdisk_urls(&ironic.driver_info)
        && let images::Prepared::Failed(reason) =
            images::prepare_deploy_ramdisk(&state, &caller.context, &node, kernel_url, ramdisk_url).await?
    {
        if verb == ProvisionVerb::Deploy {
            return fail_deploy(&state, &caller, &node, reason).await;
        }
        return Err(IronicError::new(StatusCode::BAD_GATEWAY, format!("Node {}: {reason}", node.name)));
    }
    let intent = match verb {
        ProvisionVerb::Manage => Intent::Manage,
        ProvisionVerb::Provide => Intent::Provide,
        ProvisionVerb::Inspect => Intent::Inspect,
        ProvisionVerb::Clean(mode) => Intent::Clean { mode },
        ProvisionVerb::Undeploy => Intent::Undeploy,
        ProvisionVerb::Abort => Intent::Abort,
        ProvisionVerb::Deploy => return deploy(&state, &caller, &node, &ironic).await,
    };
    let _recorded = crate::provision::request(&state, &Caller(caller.context.clone()), &node.id, intent).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Records a deploy that failed before reaching the machine: the lifecycle moves the node to
/// `deploy failed` with `reason`, as clients waiting on the state expect.
async fn fail_deploy(state: &ApiState, caller: &IronicCaller, node: &Node, reason: String) -> IronicResult<StatusCode> {
    tracing::info!(node = %node.name, %reason, "deploy failed before reaching the machine");
    let _recorded = crate::provision::request(state, &Caller(caller.context.clone()), &node.id, Intent::FailDeploy { reason }).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `active`: the image is the node's `instance_info.image_source`, a Kiln image
/// (`NAME[:VERSION]`) or a URL with a checksum (fetched first: `images`); the root disk is
/// the node's `properties.root_device`.
async fn deploy(state: &ApiState, caller: &IronicCaller, node: &Node, ironic: &IronicFields) -> IronicResult<StatusCode> {
    let source = ironic.instance_info.get("image_source").and_then(Value::as_str).ok_or_else(|| {
        IronicError::invalid(format!("Node {} has no instance_info.image_source: set it to a Kiln image or a URL", node.name))
    })?;
    let image = if kiln_ironic::images::is_url(source) {
        match images::prepare_instance_image(state, &caller.context, node, &ironic.instance_info, source).await? {
            images::Prepared::Ready(reference) => reference,
            images::Prepared::Failed(reason) => return fail_deploy(state, caller, node, reason).await,
        }
    } else {
        source.to_owned()
    };
    let hints = node.properties.get("root_device").and_then(Value::as_object);
    let hint = |key: &str| hints.and_then(|hints| hints.get(key)).and_then(Value::as_str).map(str::to_owned);
    let root_device_hints = RootDeviceHints {
        name: hint("name"),
        serial: hint("serial"),
        model: hint("model"),
        size_gib: hints.and_then(|hints| hints.get("size")).and_then(Value::as_u64),
    };
    let request = DeployRequest {
        image,
        mode: kiln_types::provision::DeployMode::Disk,
        root_device_hints,
        wait_for_callback: false,
        start_at: None,
        end_at: None,
    };
    let _recorded =
        crate::provision::deploy(State(state.clone()), Caller(caller.context.clone()), Path(node.id.clone()), JsonBody(request)).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn set_maintenance(state: &ApiState, caller: &IronicCaller, key: &str, on: bool) -> IronicResult<StatusCode> {
    let node = writable(state, caller, key)?;
    let change = NodeChange { maintenance: Some(on), ..Default::default() };
    state.store.update_node(&caller.context.user, &node.id, &caller.context.write_scope(), &change).await?;
    state.after_node_write().await;
    Ok(StatusCode::ACCEPTED)
}

pub(super) async fn maintenance_on(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
) -> IronicResult<StatusCode> {
    set_maintenance(&state, &caller, &key, true).await
}

pub(super) async fn maintenance_off(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
) -> IronicResult<StatusCode> {
    set_maintenance(&state, &caller, &key, false).await
}

/// `baremetal node validate`: whether each interface has what it needs.
pub(super) async fn validate(State(state): State<ApiState>, caller: IronicCaller, Path(key): Path<String>) -> IronicResult<Json<Value>> {
    let node = visible(&state, &caller, &key)?;
    let ironic = state.store.ironic_fields(&node.id).await?;
    let result = |missing: Option<String>| match missing {
        None => json!({ "result": true, "reason": null }),
        Some(reason) => json!({ "result": false, "reason": reason }),
    };
    let bmc = match node.bmc.as_ref() {
        Some(bmc) if bmc.driver == kiln_types::BmcDriver::None => Some("manual-management: power is by hand".to_owned()),
        Some(bmc) if bmc.address.is_none() => Some("the BMC has no address (ipmi_address, redfish_address)".to_owned()),
        Some(_) => None,
        None => Some("no BMC (driver_info)".to_owned()),
    };
    let image = match ironic.instance_info.get("image_source") {
        Some(Value::String(_)) => None,
        _ => Some("instance_info.image_source is not set".to_owned()),
    };
    Ok(Json(json!({
        "boot": result(None),
        "console": result(Some("Kiln keeps no console for this API yet".to_owned())),
        "deploy": result(image),
        "inspect": result(None),
        "management": result(bmc.clone()),
        "network": result(None),
        "power": result(bmc),
        "raid": result(Some("not supported".to_owned())),
        "rescue": result(Some("not supported".to_owned())),
        "storage": result(None),
    })))
}
