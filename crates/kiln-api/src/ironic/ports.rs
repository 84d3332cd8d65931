//! Ironic's ports over Kiln's: a port is one of a node's interfaces, named by its MAC.
//! `baremetal port create MAC --node UUID` adds the interface (a MAC belongs to one node, as
//! ever); deleting the port removes it. A port's UUID is derived from its node and MAC
//! (`kiln_ironic::documents::port_uuid`), so nothing more is stored.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use kiln_ironic::documents::{PORT_LIST_FIELDS, port_document, port_uuid, select};
use kiln_types::MacAddress;
use kiln_types::node::Node;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{IronicCaller, IronicError, IronicResult, visible};
use crate::ApiState;
use crate::extract::JsonBody;

/// The query of a port listing; a parameter Kiln does not take is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortQuery {
    node: Option<String>,
    node_uuid: Option<String>,
    address: Option<String>,
    fields: Option<String>,
    detail: Option<String>,
    limit: Option<usize>,
    marker: Option<String>,
}

type PortQueryResult = Result<Query<PortQuery>, axum::extract::rejection::QueryRejection>;

fn not_found(key: &str) -> IronicError {
    IronicError::new(StatusCode::NOT_FOUND, format!("Port {key} could not be found."))
}

/// Every port the caller sees: (node, MAC), by port UUID.
fn visible_ports(state: &ApiState, caller: &IronicCaller) -> Vec<(String, Arc<Node>, MacAddress)> {
    let view = state.inventory.view();
    let scope = caller.context.read_scope();
    let mut ports: Vec<(String, Arc<Node>, MacAddress)> = view
        .visible_nodes(&scope)
        .flat_map(|node| {
            node.interfaces.iter().map(move |interface| (port_uuid(&node.id, interface.mac_addr), node.clone(), interface.mac_addr))
        })
        .collect();
    ports.sort_by(|a, b| a.0.cmp(&b.0));
    ports
}

fn find_port(state: &ApiState, caller: &IronicCaller, key: &str) -> IronicResult<(Arc<Node>, MacAddress)> {
    visible_ports(state, caller)
        .into_iter()
        .find(|(uuid, _, _)| uuid == key)
        .map(|(_, node, mac)| (node, mac))
        .ok_or_else(|| not_found(key))
}

/// The ports the caller sees, by UUID, a page at a time, filtered.
fn listing(
    state: &ApiState,
    caller: &IronicCaller,
    query: &PortQuery,
    only_node: Option<&Node>,
    (collection, raw_query): (&str, Option<&str>),
) -> IronicResult<Json<Value>> {
    let detail = super::nodes::boolean("detail", query.detail.as_deref())?.unwrap_or(false) || collection.ends_with("detail");
    if detail && query.fields.is_some() {
        return Err(IronicError::invalid("Can not specify ?detail=True and fields in the same request."));
    }
    let limit = query.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(IronicError::invalid(format!("limit: {limit} is outside 1 to 1000")));
    }
    let node_filter = query.node.as_deref().or(query.node_uuid.as_deref());
    let wanted_node = node_filter.map(|key| visible(state, caller, key)).transpose()?;
    let fields: Option<Vec<&str>> = query.fields.as_deref().map(|fields| fields.split(',').map(str::trim).collect());
    let (mut page, mut last_uuid, mut more) = (Vec::new(), None, false);
    for (uuid, node, mac) in visible_ports(state, caller) {
        let node_matches = [wanted_node.as_deref(), only_node].into_iter().flatten().all(|wanted| wanted.id == node.id);
        let address_matches = query.address.as_deref().is_none_or(|address| address.eq_ignore_ascii_case(&mac.to_string()));
        if !node_matches || !address_matches || query.marker.as_deref().is_some_and(|marker| uuid.as_str() <= marker) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        let document = port_document(&node, mac, caller.version, &caller.base_url);
        page.push(match (&fields, detail) {
            (Some(fields), _) => Value::Object(select(&document, fields).map_err(|error| IronicError::invalid(error.to_string()))?),
            (None, true) => Value::Object(document),
            (None, false) => Value::Object(select(&document, &PORT_LIST_FIELDS).expect("the short fields are in every port")),
        });
        last_uuid = Some(uuid);
    }
    let mut answer = json!({ "ports": page });
    if more && let Some(last) = last_uuid {
        answer["next"] = json!(super::nodes::next_link(&caller.base_url, collection, raw_query, &last));
    }
    Ok(Json(answer))
}

pub(super) async fn list(
    State(state): State<ApiState>,
    caller: IronicCaller,
    query: PortQueryResult,
    RawQuery(raw): RawQuery,
) -> IronicResult<Json<Value>> {
    listing(&state, &caller, &super::nodes::parsed(query)?, None, ("ports", raw.as_deref()))
}

pub(super) async fn list_detail(
    State(state): State<ApiState>,
    caller: IronicCaller,
    query: PortQueryResult,
    RawQuery(raw): RawQuery,
) -> IronicResult<Json<Value>> {
    listing(&state, &caller, &super::nodes::parsed(query)?, None, ("ports/detail", raw.as_deref()))
}

pub(super) async fn of_node(
    State(state): State<ApiState>,
    caller: IronicCaller,
    Path(key): Path<String>,
    query: PortQueryResult,
    RawQuery(raw): RawQuery,
) -> IronicResult<Json<Value>> {
    let node = visible(&state, &caller, &key)?;
    let collection = format!("nodes/{}/ports", node.id);
    listing(&state, &caller, &super::nodes::parsed(query)?, Some(&node), (&collection, raw.as_deref()))
}

pub(super) async fn show(State(state): State<ApiState>, caller: IronicCaller, Path(key): Path<String>) -> IronicResult<Json<Value>> {
    let (node, mac) = find_port(&state, &caller, &key)?;
    Ok(Json(Value::Object(port_document(&node, mac, caller.version, &caller.base_url))))
}

/// Port fields Kiln takes only at their default, which `baremetal port create` may send.
fn check_defaults(body: &Map<String, Value>) -> IronicResult<()> {
    for (field, value) in body {
        let default = match field.as_str() {
            "address" | "node_uuid" => true,
            "pxe_enabled" => value == &json!(true),
            "extra" | "local_link_connection" => value.as_object().is_some_and(Map::is_empty),
            "physical_network" | "portgroup_uuid" | "name" => value.is_null(),
            "is_smartnic" => value == &json!(false),
            _ => false,
        };
        if !default {
            return Err(IronicError::invalid(format!("Kiln does not take the port field {field} = {value}")));
        }
    }
    Ok(())
}

pub(super) async fn create(
    State(state): State<ApiState>,
    caller: IronicCaller,
    body: Result<JsonBody<Map<String, Value>>, crate::error::ApiError>,
) -> IronicResult<(StatusCode, Json<Value>)> {
    let JsonBody(body) = body?;
    check_defaults(&body)?;
    let address = body.get("address").and_then(Value::as_str).ok_or_else(|| IronicError::invalid("address is required"))?;
    let mac: MacAddress = address.parse().map_err(|_| IronicError::invalid(format!("Expected a MAC address but received {address}.")))?;
    let node_key = body.get("node_uuid").and_then(Value::as_str).ok_or_else(|| IronicError::invalid("node_uuid is required"))?;
    let node = visible(&state, &caller, node_key)?;
    if !caller.context.admin {
        return Err(IronicError::new(StatusCode::FORBIDDEN, "Only administrators change a node's ports."));
    }
    let node = state.store.add_node_interface(&caller.context.user, &node.id, &caller.context.write_scope(), mac).await?;
    state.after_node_write().await;
    Ok((StatusCode::CREATED, Json(Value::Object(port_document(&node, mac, caller.version, &caller.base_url)))))
}

pub(super) async fn delete(State(state): State<ApiState>, caller: IronicCaller, Path(key): Path<String>) -> IronicResult<StatusCode> {
    let (node, mac) = find_port(&state, &caller, &key)?;
    if !caller.context.admin {
        return Err(IronicError::new(StatusCode::FORBIDDEN, "Only administrators change a node's ports."));
    }
    state.store.remove_node_interface(&caller.context.user, &node.id, &caller.context.write_scope(), mac).await?;
    state.after_node_write().await;
    Ok(StatusCode::NO_CONTENT)
}
