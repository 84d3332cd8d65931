//! Static discovery: OpenCHAMI's `nodes.yaml` format, validated as a whole before anything is
//! written, so one bad entry rejects the file with an error naming the entry and the field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::BmcDriver;
use crate::node::{BmcSpec, InterfaceInput, NodeSpec, validate_interfaces};
use crate::validate::{self, InvalidField};

/// One node in a static discovery file, exactly as `ochami discover static` reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryEntry {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub nid: Option<u32>,
    #[serde(default)]
    pub xname: Option<String>,
    #[serde(default)]
    pub bmc_mac: Option<String>,
    #[serde(default)]
    pub bmc_ip: Option<String>,
    /// One group, as in the tutorial.
    #[serde(default)]
    pub group: Option<String>,
    /// Several groups (a Kiln extension; merged with `group`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Defaults to `Compute`, as SMD does.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceInput>,
}

/// Why a discovery document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the document must be a list of nodes, or an object with a `nodes` list")]
    NotAList,
    #[error("the document lists no nodes")]
    Empty,
    #[error("entry {index} ({label})")]
    Entry {
        index: usize,
        label: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("entry {index} ({label}): {field}: {message}")]
    Field { index: usize, label: String, field: String, message: String },
}

fn label_of(value: &serde_json::Value) -> String {
    ["name", "xname"]
        .iter()
        .find_map(|key| value.get(*key).and_then(|v| v.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| "unnamed".to_owned())
}

/// Parses and validates a whole discovery document (already decoded from YAML or JSON).
/// Entries are numbered from 1 in errors, as a person counts them in the file.
pub fn parse_document(document: &serde_json::Value) -> Result<Vec<NodeSpec>, DiscoveryError> {
    let entries = match document {
        serde_json::Value::Array(entries) => entries,
        serde_json::Value::Object(map) => match map.get("nodes") {
            Some(serde_json::Value::Array(entries)) => entries,
            _ => return Err(DiscoveryError::NotAList),
        },
        _ => return Err(DiscoveryError::NotAList),
    };
    if entries.is_empty() {
        return Err(DiscoveryError::Empty);
    }
    let mut specs = Vec::with_capacity(entries.len());
    for (position, value) in entries.iter().enumerate() {
        let index = position + 1;
        let label = label_of(value);
        let entry: DiscoveryEntry =
            serde_json::from_value(value.clone()).map_err(|source| DiscoveryError::Entry { index, label: label.clone(), source })?;
        let spec = entry_to_spec(&entry).map_err(|error| DiscoveryError::Field {
            index,
            label: label.clone(),
            field: error.field,
            message: error.message,
        })?;
        specs.push(spec);
    }
    check_unique_within_document(&specs)?;
    Ok(specs)
}

fn entry_to_spec(entry: &DiscoveryEntry) -> Result<NodeSpec, InvalidField> {
    let xname = entry.xname.as_deref().map(|text| validate::xname("xname", text)).transpose()?;
    let name = match (&entry.name, &xname) {
        (Some(name), _) => validate::node_name("name", name)?,
        (None, Some(xname)) => xname.to_string(),
        (None, None) => return Err(InvalidField::new("name", "an entry needs a name or an xname")),
    };
    let bmc_mac = entry.bmc_mac.as_deref().map(|text| validate::mac("bmc_mac", text)).transpose()?;
    let bmc_ip = entry.bmc_ip.as_deref().map(|text| validate::ip("bmc_ip", text)).transpose()?;
    let mut groups: Vec<String> = entry.group.iter().chain(entry.groups.iter()).cloned().collect();
    groups.dedup();
    let groups = crate::node::validate_groups(&groups).map_err(|error| {
        if entry.group.is_some() && error.field == "groups[0]" { InvalidField::new("group", error.message) } else { error }
    })?;
    let role = match &entry.role {
        Some(role) => validate::single_line("role", role, 63)?,
        None => "Compute".to_owned(),
    };
    let bmc = (bmc_mac.is_some() || bmc_ip.is_some()).then(|| BmcSpec {
        driver: if bmc_ip.is_some() { BmcDriver::Redfish } else { BmcDriver::None },
        address: bmc_ip.map(|ip| ip.to_string()),
        mac: bmc_mac,
        username: None,
        password: None,
        insecure: false,
    });
    Ok(NodeSpec {
        name,
        xname,
        nid: entry.nid,
        role: Some(role),
        groups,
        interfaces: validate_interfaces(&entry.interfaces)?,
        bmc,
        properties: Default::default(),
        project: None,
    })
}

fn check_unique_within_document(specs: &[NodeSpec]) -> Result<(), DiscoveryError> {
    fn clash(index: usize, spec: &NodeSpec, field: &str, what: String, first: usize) -> DiscoveryError {
        DiscoveryError::Field {
            index,
            label: spec.name.clone(),
            field: field.to_owned(),
            message: format!("{what} is also used by entry {first}"),
        }
    }
    let mut names = HashMap::new();
    let mut xnames = HashMap::new();
    let mut nids = HashMap::new();
    let mut macs = HashMap::new();
    for (position, spec) in specs.iter().enumerate() {
        let index = position + 1;
        if let Some(first) = names.insert(spec.name.clone(), index) {
            return Err(clash(index, spec, "name", format!("name {}", spec.name), first));
        }
        if let Some(xname) = &spec.xname
            && let Some(first) = xnames.insert(xname.clone(), index)
        {
            return Err(clash(index, spec, "xname", format!("xname {xname}"), first));
        }
        if let Some(nid) = spec.nid
            && let Some(first) = nids.insert(nid, index)
        {
            return Err(clash(index, spec, "nid", format!("NID {nid}"), first));
        }
        for (interface_index, interface) in spec.interfaces.iter().enumerate() {
            if let Some(first) = macs.insert(interface.mac, index) {
                let field = format!("interfaces[{interface_index}].mac_addr");
                return Err(clash(index, spec, &field, format!("MAC {}", interface.mac), first));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn parse_yaml(text: &str) -> Result<Vec<NodeSpec>, DiscoveryError> {
        let value: serde_json::Value = serde_yaml::from_str(text).unwrap();
        parse_document(&value)
    }

    #[test]
    fn tutorial_example_parses() {
        let specs = parse_yaml(
            "- name: node01\n  nid: 1\n  xname: x1000c1s7b0n0\n  bmc_mac: de:ca:fc:0f:ee:ee\n  bmc_ip: 172.16.0.101\n  group: compute\n  interfaces:\n  - mac_addr: de:ad:be:ee:ee:f1\n    ip_addrs:\n    - name: internal\n      ip_addr: 172.16.0.1\n",
        )
        .unwrap();
        expect![[r#"
            [
                NodeSpec {
                    name: "node01",
                    xname: Some(
                        x1000c1s7b0n0,
                    ),
                    nid: Some(
                        1,
                    ),
                    role: Some(
                        "Compute",
                    ),
                    groups: [
                        "compute",
                    ],
                    interfaces: [
                        InterfaceSpec {
                            mac: de:ad:be:ee:ee:f1,
                            ip_addrs: [
                                IpAddrEntry {
                                    name: "internal",
                                    ip_addr: "172.16.0.1",
                                    prefix_length: None,
                                    gateway: None,
                                    dns_servers: [],
                                    vlan: None,
                                },
                            ],
                        },
                    ],
                    bmc: Some(
                        BmcSpec {
                            driver: Redfish,
                            address: Some(
                                "172.16.0.101",
                            ),
                            mac: Some(
                                de:ca:fc:0f:ee:ee,
                            ),
                            username: None,
                            password: None,
                            insecure: false,
                        },
                    ),
                    properties: {},
                    project: None,
                },
            ]
        "#]]
        .assert_debug_eq(&specs);
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let cases = [
            (
                "- xname: x1000c0s0b0n0\n- xname: x1000c0s0b1\n",
                expect![
                    "entry 2 (x1000c0s0b1): xname: 'x1000c0s0b1' is not a node xname (expected x<cabinet>c<chassis>s<slot>b<bmc>n<node>, e.g. x1000c0s0b0n0)"
                ],
            ),
            (
                "- name: a\n  interfaces:\n  - mac_addr: 52:54:00:zz:00:01\n",
                expect![
                    "entry 1 (a): interfaces[0].mac_addr: '52:54:00:zz:00:01' is not a MAC address (expected six hex pairs like 52:54:00:be:ef:01)"
                ],
            ),
            (
                "- name: a\n  interfaces:\n  - mac_addr: 52:54:00:00:00:01\n    ip_addrs:\n    - ip_addr: 10.1.1\n",
                expect!["entry 1 (a): interfaces[0].ip_addrs[0].ip_addr: '10.1.1' is not an IPv4 or IPv6 address"],
            ),
            (
                "- name: a\n  interfaces: [{mac_addr: '52:54:00:00:00:01'}]\n- name: b\n  interfaces: [{mac_addr: '52:54:00:00:00:01'}]\n",
                expect!["entry 2 (b): interfaces[0].mac_addr: MAC 52:54:00:00:00:01 is also used by entry 1"],
            ),
            ("- name: a\n  nid: 1\n- name: b\n  nid: 1\n", expect!["entry 2 (b): nid: NID 1 is also used by entry 1"]),
            ("- name: a\n  bmc_ip: 300.1.1.1\n", expect!["entry 1 (a): bmc_ip: '300.1.1.1' is not an IPv4 or IPv6 address"]),
            (
                "- name: a\n  colour: blue\n",
                expect![
                    "entry 1 (a): unknown field `colour`, expected one of `name`, `nid`, `xname`, `bmc_mac`, `bmc_ip`, `group`, `groups`, `role`, `interfaces`"
                ],
            ),
            ("- name: a\n  nid: -3\n", expect!["entry 1 (a): invalid value: integer `-3`, expected u32"]),
            ("- nid: 4\n", expect!["entry 1 (unnamed): name: an entry needs a name or an xname"]),
            ("name: a\n", expect!["the document must be a list of nodes, or an object with a `nodes` list"]),
            ("[]\n", expect!["the document lists no nodes"]),
        ];
        for (text, expected) in cases {
            expected.assert_eq(&crate::error_chain(&parse_yaml(text).unwrap_err()));
        }
    }
}
