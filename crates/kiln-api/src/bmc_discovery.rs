//! `POST /v1/discover/redfish`: scan for Redfish services and enrol or update a node for each
//! computer system found, with its NIC MACs and its BMC record, in one store transaction.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use kiln_bmc::discovery::{DiscoveryFailure, FoundSystem, RedfishDiscoveryInput, RedfishDiscoveryReport, ScanOutcome, ScanSettings};
use kiln_db::InventoryView;
use kiln_types::node::{BmcSpec, InterfaceSpec, Node, NodeSpec};
use kiln_types::{BmcDriver, MacAddress};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

/// The node a found system already is: one holding one of its MACs, or the same BMC.
fn existing_node<'a>(view: &'a InventoryView, system: &FoundSystem) -> Option<&'a Node> {
    let by_mac = system.facts.macs.iter().find_map(|mac| view.by_mac(mac));
    by_mac.or_else(|| view.by_bmc_address(&system.address)).map(|node| node.as_ref())
}

/// The spec that records `system`: the existing node with its addresses kept and any new
/// MAC added, or a new node named after the BMC.
fn spec_for(existing: Option<&Node>, system: &FoundSystem, name: String, input: &RedfishDiscoveryInput) -> NodeSpec {
    let bmc = BmcSpec {
        driver: BmcDriver::Redfish,
        address: Some(system.address.clone()),
        mac: existing.and_then(|node| node.bmc.as_ref()).and_then(|bmc| bmc.mac),
        username: input.username.clone(),
        password: input.password.clone(),
        insecure: input.insecure,
    };
    let mut interfaces: Vec<InterfaceSpec> = existing
        .map(|node| {
            node.interfaces
                .iter()
                .map(|interface| InterfaceSpec { mac: interface.mac_addr, ip_addrs: interface.ip_addrs.clone() })
                .collect()
        })
        .unwrap_or_default();
    for mac in &system.facts.macs {
        if !interfaces.iter().any(|interface| interface.mac == *mac) {
            interfaces.push(InterfaceSpec { mac: *mac, ip_addrs: Vec::new() });
        }
    }
    NodeSpec {
        name: existing.map_or(name, |node| node.name.clone()),
        xname: existing.and_then(|node| node.xname.as_deref()).and_then(|xname| xname.parse().ok()),
        nid: existing.and_then(|node| node.nid),
        role: existing.and_then(|node| node.role.clone()),
        groups: Vec::new(),
        interfaces,
        bmc: Some(bmc),
        properties: existing.map(|node| node.properties.clone()).unwrap_or_default(),
        project: existing.and_then(|node| node.project.clone()),
    }
}

/// Scans the targets and enrols what it finds. Administrators only: it adds to the
/// inventory, and it hands the credentials to every BMC it reaches.
#[utoipa::path(post, path = "/v1/discover/redfish", tag = "nodes", request_body = RedfishDiscoveryInput,
    responses((status = 200, body = RedfishDiscoveryReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn discover_redfish(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<RedfishDiscoveryInput>,
) -> ApiResult<Json<RedfishDiscoveryReport>> {
    caller.require_admin()?;
    let targets =
        kiln_bmc::discovery::expand_targets(&input.targets).map_err(|message| ApiError::invalid(format!("targets: {message}")))?;
    if targets.is_empty() {
        return Err(ApiError::invalid("targets: name at least one HOST, HOST:PORT or HOST:FIRST-LAST"));
    }
    let scheme = input.scheme.clone().unwrap_or_else(|| "https".to_owned());
    if scheme != "https" && scheme != "http" {
        return Err(ApiError::invalid(format!("scheme: '{scheme}' is neither https nor http")));
    }
    let settings = ScanSettings {
        scheme,
        username: input.username.clone(),
        password: input.password.clone(),
        insecure: input.insecure,
        timeout: Duration::from_secs(input.timeout_seconds.unwrap_or(5).clamp(1, 60)),
        concurrency: input.concurrency.unwrap_or(32),
    };
    let mut report = RedfishDiscoveryReport { targets: targets.len(), ..Default::default() };
    tracing::info!(actor = %caller.user, targets = targets.len(), "Redfish discovery started");
    let outcomes = kiln_bmc::discovery::scan(targets, settings).await;

    let view = state.inventory.view();
    let mut specs = Vec::new();
    let mut claimed: HashMap<MacAddress, String> = HashMap::new();
    for outcome in outcomes {
        match outcome {
            ScanOutcome::Absent(_) => report.absent += 1,
            ScanOutcome::Failed(target, error) => report.failures.push(DiscoveryFailure {
                target: target.to_string(),
                fault: error.fault(),
                error: kiln_types::error_chain(&error),
            }),
            ScanOutcome::Found(systems) => {
                report.services += 1;
                let count = systems.len();
                for system in systems {
                    report.systems += 1;
                    // Two systems claiming one MAC would make two nodes fight over it.
                    if let Some(mac) = system.facts.macs.iter().find(|mac| claimed.contains_key(mac)) {
                        let other = &claimed[mac];
                        report.failures.push(DiscoveryFailure {
                            target: system.target.to_string(),
                            fault: kiln_bmc::FaultKind::Protocol,
                            error: format!("{} reports MAC {mac}, which {other} reported too; not enrolled", system.system),
                        });
                        continue;
                    }
                    for mac in &system.facts.macs {
                        claimed.insert(*mac, system.target.to_string());
                    }
                    let name = kiln_bmc::discovery::node_name(&system, count);
                    specs.push(spec_for(existing_node(&view, &system), &system, name, &input));
                }
            }
        }
    }
    if !specs.is_empty() {
        let summary = state.store.discover(&caller.user, &specs).await?;
        state.after_node_write().await;
        (report.created, report.updated, report.unchanged) = (summary.created, summary.updated, summary.unchanged);
    }
    tracing::info!(actor = %caller.user, services = report.services, systems = report.systems, created = report.created.len(),
        updated = report.updated.len(), failures = report.failures.len(), "Redfish discovery done");
    Ok(Json(report))
}
