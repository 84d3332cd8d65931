//! cloud-init's network configuration (version 2) of a node's static addresses: NoCloud's
//! `network-config` document, which cloud-init applies before it brings the network up when
//! it finds it locally (a seed directory or a config drive).
//!
//! Interfaces are matched by MAC and named `kiln0`, `kiln1`, … in inventory order (the
//! first is the one boot media configure: `kiln_types::static_network`); a tagged address
//! goes on `kiln<N>.<vlan>`. One default route per address family, from the first address
//! that names a gateway. Routes are written `to: 0.0.0.0/0` (`::/0`), which cloud-init
//! understands in every release, where `to: default` needs 23.1 or later.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kiln_types::node::Node;
use serde_json::{Map, Value, json};

/// The node's network configuration as YAML, or `None` when no interface has a static
/// address (cloud-init then does what it does by default: DHCP on the first interface).
pub fn network_config(node: &Node) -> Option<String> {
    let mut ethernets = Map::new();
    let mut vlans = Map::new();
    let mut routed_families = BTreeSet::new();
    let static_interfaces = node.interfaces.iter().filter(|interface| interface.ip_addrs.iter().any(|entry| entry.prefix_length.is_some()));
    for (index, interface) in static_interfaces.enumerate() {
        let name = format!("kiln{index}");
        let mut physical = json!({ "match": { "macaddress": interface.mac_addr.to_string() }, "set-name": name });
        for entry in interface.ip_addrs.iter() {
            let Some(prefix_length) = entry.prefix_length else { continue };
            let device = match entry.vlan {
                Some(vlan) => vlans.entry(format!("{name}.{vlan}")).or_insert_with(|| json!({ "id": vlan, "link": name })),
                None => &mut physical,
            };
            let device = device.as_object_mut().expect("devices are mappings");
            push(device, "addresses", json!(format!("{}/{prefix_length}", entry.ip_addr)));
            if let Some(gateway) = entry.gateway.as_deref().and_then(|gateway| gateway.parse::<IpAddr>().ok())
                && routed_families.insert(gateway.is_ipv4())
            {
                let everywhere = if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                push(device, "routes", json!({ "to": everywhere, "via": gateway.to_string() }));
            }
            for server in &entry.dns_servers {
                let nameservers = device.entry("nameservers").or_insert_with(|| json!({ "addresses": [] }));
                let addresses = nameservers["addresses"].as_array_mut().expect("made as a list");
                if !addresses.iter().any(|known| known.as_str() == Some(server)) {
                    addresses.push(json!(server));
                }
            }
        }
        ethernets.insert(name, physical);
    }
    if ethernets.is_empty() {
        return None;
    }
    let mut network = Map::new();
    network.insert("version".into(), json!(2));
    network.insert("ethernets".into(), Value::Object(ethernets));
    if !vlans.is_empty() {
        network.insert("vlans".into(), Value::Object(vlans));
    }
    let document = json!({ "network": network });
    Some(serde_yaml::to_string(&document).expect("JSON values always serialize to YAML"))
}

fn push(device: &mut Map<String, Value>, key: &str, value: Value) {
    device.entry(key).or_insert_with(|| json!([])).as_array_mut().expect("made as a list").push(value);
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn node(interfaces: Value) -> Node {
        serde_json::from_value(json!({
            "id": "n1", "name": "nid041", "xname": null, "nid": 41, "role": null, "groups": [], "interfaces": interfaces,
            "bmc": null, "properties": {}, "project": null, "provision_state": "active", "maintenance": false,
            "created_at": "2026-12-07T00:00:00Z", "updated_at": "2026-12-07T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn static_addresses_become_a_version_2_configuration() {
        let node = node(json!([
            {"mac_addr": "52:54:00:be:ef:40", "ip_addrs": [{"name": "bmc-net", "ip_addr": "172.16.0.41"}]},
            {"mac_addr": "52:54:00:be:ef:41", "ip_addrs": [
                {"name": "provisioning", "ip_addr": "10.77.0.41", "prefix_length": 24, "gateway": "10.77.0.1", "dns_servers": ["10.77.0.1"]},
                {"name": "v6", "ip_addr": "fd00:77::41", "prefix_length": 64, "gateway": "fd00:77::1"},
                {"name": "storage", "ip_addr": "10.78.0.41", "prefix_length": 24, "gateway": "10.78.0.1", "vlan": 100, "dns_servers": ["10.77.0.1"]}
            ]},
        ]));
        expect![[r#"
            network:
              version: 2
              ethernets:
                kiln0:
                  match:
                    macaddress: 52:54:00:be:ef:41
                  set-name: kiln0
                  addresses:
                  - 10.77.0.41/24
                  - fd00:77::41/64
                  routes:
                  - to: 0.0.0.0/0
                    via: 10.77.0.1
                  - to: ::/0
                    via: fd00:77::1
                  nameservers:
                    addresses:
                    - 10.77.0.1
              vlans:
                kiln0.100:
                  id: 100
                  link: kiln0
                  addresses:
                  - 10.78.0.41/24
                  nameservers:
                    addresses:
                    - 10.77.0.1
        "#]]
        .assert_eq(&network_config(&node).unwrap());
    }

    #[test]
    fn a_node_without_static_addresses_has_none() {
        assert_eq!(network_config(&node(json!([{"mac_addr": "52:54:00:be:ef:41", "ip_addrs": [{"ip_addr": "10.77.0.41"}]}]))), None);
    }
}
