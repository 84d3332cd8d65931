//! The node and port documents Ironic answers, made from Kiln's node.
//!
//! Fields appear from the microversion that introduced them, as Ironic answers them, so an
//! older client sees what it knows. A list without `detail` has Ironic's short form; `fields`
//! selects exactly the fields named.

use kiln_types::MacAddress;
use kiln_types::ironic::IronicFields;
use kiln_types::node::Node;
use kiln_types::provision::Intent;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::driver::{driver_info_document, driver_name};
use crate::states::{provision_state, target_provision_state};
use crate::version::Microversion;

/// What a node document is made from.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    pub node: &'a Node,
    pub ironic: &'a IronicFields,
    /// Why the node is in a failure state.
    pub last_error: Option<&'a str>,
    /// `power on`, `power off`, or unknown.
    pub power_state: Option<&'a str>,
    /// A request recorded and not yet taken up.
    pub pending: Option<&'a Intent>,
}

/// The fields of a short listing (`GET /v1/nodes` without `detail`).
pub const NODE_LIST_FIELDS: [&str; 7] = ["uuid", "instance_uuid", "maintenance", "power_state", "provision_state", "name", "links"];

/// The `boot_interface` a node shows when it has none of its own: Kiln boots nodes from
/// the network through iPXE.
pub const DEFAULT_BOOT_INTERFACE: &str = "ipxe";

/// Node fields and the microversion that introduced each (1: always there).
const NODE_FIELDS: [(&str, u32); 33] = [
    ("uuid", 1),
    ("name", 5),
    ("driver", 1),
    ("driver_info", 1),
    ("driver_internal_info", 3),
    ("properties", 1),
    ("extra", 1),
    ("instance_info", 1),
    ("instance_uuid", 1),
    ("chassis_uuid", 1),
    ("power_state", 1),
    ("target_power_state", 1),
    ("provision_state", 1),
    ("target_provision_state", 1),
    ("provision_updated_at", 1),
    ("maintenance", 1),
    ("maintenance_reason", 1),
    ("last_error", 1),
    ("reservation", 1),
    ("console_enabled", 1),
    ("created_at", 1),
    ("updated_at", 1),
    ("resource_class", 21),
    ("fault", 42),
    ("conductor_group", 46),
    ("protected", 48),
    ("owner", 50),
    ("retired", 61),
    ("lessee", 65),
    ("boot_interface", 31),
    ("links", 1),
    ("ports", 1),
    ("states", 1),
];

fn links(base_url: &str, collection: &str, id: &str) -> Value {
    json!([
        { "href": format!("{base_url}/v1/{collection}/{id}"), "rel": "self" },
        { "href": format!("{base_url}/{collection}/{id}"), "rel": "bookmark" },
    ])
}

fn timestamp(time: jiff::Timestamp) -> Value {
    Value::String(time.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

/// A node's whole document at `version`; `base_url` is where the Ironic API is served.
pub fn node_document(facts: NodeFacts<'_>, version: Microversion, base_url: &str) -> Map<String, Value> {
    let NodeFacts { node, ironic, last_error, power_state, pending } = facts;
    // The driver Ironic's client named, while the BMC is still of that kind (Kiln's own API
    // may have changed it since).
    let bmc_driver = node.bmc.as_ref().map_or(kiln_types::BmcDriver::None, |bmc| bmc.driver);
    let driver = match crate::driver::bmc_driver(&ironic.driver) {
        Ok(named) if named == bmc_driver => ironic.driver.clone(),
        _ => driver_name(node.bmc.as_ref()).to_owned(),
    };
    let value = |field: &str| -> Value {
        match field {
            "uuid" => json!(node.id),
            "name" => json!(node.name),
            "driver" => json!(driver),
            "driver_info" => Value::Object(driver_info_document(node.bmc.as_ref(), &ironic.driver_info)),
            "driver_internal_info" => json!({}),
            "properties" => Value::Object(node.properties.clone()),
            "extra" => Value::Object(ironic.extra.clone()),
            "instance_info" => Value::Object(ironic.instance_info.clone()),
            "power_state" => json!(power_state),
            "provision_state" => json!(provision_state(node.provision_state, version)),
            "target_provision_state" => json!(target_provision_state(node.provision_state, pending)),
            "maintenance" => json!(node.maintenance),
            "last_error" => json!(last_error),
            "console_enabled" | "protected" | "retired" => json!(false),
            "created_at" => timestamp(node.created_at),
            "updated_at" | "provision_updated_at" => timestamp(node.updated_at),
            "conductor_group" => json!(""),
            "owner" => json!(node.project),
            "boot_interface" => node.properties.get("boot_interface").cloned().unwrap_or_else(|| json!(DEFAULT_BOOT_INTERFACE)),
            "links" => links(base_url, "nodes", &node.id),
            "ports" => links(base_url, &format!("nodes/{}", node.id), "ports"),
            "states" => links(base_url, &format!("nodes/{}", node.id), "states"),
            _ => Value::Null,
        }
    };
    NODE_FIELDS.iter().filter(|(_, since)| version.at_least(*since)).map(|(field, _)| ((*field).to_owned(), value(field))).collect()
}

/// A field named in `fields` that the document does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Field(s) \"{fields}\" are not valid")]
pub struct UnknownFields {
    pub fields: String,
}

/// Exactly the fields named (`fields=uuid,name`), from a whole document.
pub fn select(document: &Map<String, Value>, fields: &[&str]) -> Result<Map<String, Value>, UnknownFields> {
    let unknown: Vec<&str> = fields.iter().copied().filter(|field| !document.contains_key(*field)).collect();
    if !unknown.is_empty() {
        return Err(UnknownFields { fields: unknown.join(", ") });
    }
    Ok(fields.iter().map(|field| ((*field).to_owned(), document[*field].clone())).collect())
}

/// The port of a node's interface. Kiln's interfaces are their MACs; the port's UUID is
/// derived from the node and the MAC, so it is stable without being stored, and a MAC
/// moved to another node is another port.
pub fn port_uuid(node_id: &str, mac: MacAddress) -> String {
    let digest = Sha256::digest(format!("kiln-ironic-port\0{node_id}\0{mac}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // An RFC 9562 version 8 (custom) UUID.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The fields of a short port listing.
pub const PORT_LIST_FIELDS: [&str; 3] = ["uuid", "address", "links"];

/// A port's whole document at `version`.
pub fn port_document(node: &Node, mac: MacAddress, version: Microversion, base_url: &str) -> Map<String, Value> {
    let uuid = port_uuid(&node.id, mac);
    let mut document = Map::new();
    let mut put = |field: &str, since: u32, value: Value| {
        if version.at_least(since) {
            document.insert(field.to_owned(), value);
        }
    };
    put("uuid", 1, json!(uuid));
    put("address", 1, json!(mac.to_string()));
    put("node_uuid", 1, json!(node.id));
    put("extra", 1, json!({}));
    put("local_link_connection", 19, json!({}));
    put("pxe_enabled", 19, json!(true));
    put("internal_info", 18, json!({}));
    put("physical_network", 34, Value::Null);
    put("portgroup_uuid", 24, Value::Null);
    put("is_smartnic", 53, json!(false));
    put("created_at", 1, timestamp(node.created_at));
    put("updated_at", 1, timestamp(node.updated_at));
    put("links", 1, links(base_url, "ports", &uuid));
    document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{MAX, Microversion};

    fn node() -> Node {
        serde_json::from_value(json!({
            "id": "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10", "name": "nid001", "xname": null, "nid": null, "role": null,
            "groups": [], "interfaces": [{ "mac_addr": "52:54:00:be:ef:01", "ip_addrs": [] }],
            "bmc": { "driver": "ipmi", "address": "10.0.0.9:6230", "mac": null, "username": "admin", "password": "******", "insecure": false },
            "properties": { "cpus": 4 }, "project": "lab-a", "provision_state": "wait-agent", "maintenance": false,
            "created_at": "2026-12-01T08:00:00Z", "updated_at": "2026-12-01T09:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_node_document_at_the_newest_version() {
        let node = node();
        let ironic = IronicFields {
            driver: "ipmi".into(),
            driver_info: serde_json::from_value(json!({ "deploy_kernel": "http://k" })).unwrap(),
            extra: serde_json::from_value(json!({ "rack": "r1" })).unwrap(),
            instance_info: serde_json::from_value(json!({ "image_source": "debian" })).unwrap(),
        };
        let facts = NodeFacts { node: &node, ironic: &ironic, last_error: None, power_state: Some("power on"), pending: None };
        let document = node_document(facts, MAX, "http://kiln/ironic");
        expect_test::expect![[r#"
            {
              "uuid": "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10",
              "name": "nid001",
              "driver": "ipmi",
              "driver_info": {
                "deploy_kernel": "http://k",
                "ipmi_address": "10.0.0.9",
                "ipmi_port": "6230",
                "ipmi_username": "admin",
                "ipmi_password": "******"
              },
              "driver_internal_info": {},
              "properties": {
                "cpus": 4
              },
              "extra": {
                "rack": "r1"
              },
              "instance_info": {
                "image_source": "debian"
              },
              "instance_uuid": null,
              "chassis_uuid": null,
              "power_state": "power on",
              "target_power_state": null,
              "provision_state": "wait call-back",
              "target_provision_state": "active",
              "provision_updated_at": "2026-12-01T09:00:00+00:00",
              "maintenance": false,
              "maintenance_reason": null,
              "last_error": null,
              "reservation": null,
              "console_enabled": false,
              "created_at": "2026-12-01T08:00:00+00:00",
              "updated_at": "2026-12-01T09:00:00+00:00",
              "resource_class": null,
              "fault": null,
              "conductor_group": "",
              "protected": false,
              "owner": "lab-a",
              "retired": false,
              "lessee": null,
              "boot_interface": "ipxe",
              "links": [
                {
                  "href": "http://kiln/ironic/v1/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10",
                  "rel": "self"
                },
                {
                  "href": "http://kiln/ironic/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10",
                  "rel": "bookmark"
                }
              ],
              "ports": [
                {
                  "href": "http://kiln/ironic/v1/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10/ports",
                  "rel": "self"
                },
                {
                  "href": "http://kiln/ironic/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10/ports",
                  "rel": "bookmark"
                }
              ],
              "states": [
                {
                  "href": "http://kiln/ironic/v1/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10/states",
                  "rel": "self"
                },
                {
                  "href": "http://kiln/ironic/nodes/0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10/states",
                  "rel": "bookmark"
                }
              ]
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&document).unwrap());
        let old = node_document(facts, Microversion(1), "http://kiln/ironic");
        assert!(!old.contains_key("name") && !old.contains_key("owner"), "fields appear from their version");
    }

    #[test]
    fn fields_select_exactly_and_unknown_ones_are_named() {
        let node = node();
        let ironic = IronicFields::default();
        let facts = NodeFacts { node: &node, ironic: &ironic, last_error: None, power_state: None, pending: None };
        let document = node_document(facts, MAX, "http://kiln/ironic");
        let selected = select(&document, &["uuid", "driver"]).unwrap();
        assert_eq!(Value::Object(selected), json!({ "uuid": node.id, "driver": "ipmi" }), "the driver comes from the BMC");
        assert_eq!(select(&document, &["uuid", "colour"]).unwrap_err().to_string(), "Field(s) \"colour\" are not valid");
    }

    #[test]
    fn a_port_s_uuid_is_stable_and_its_own() {
        let mac: MacAddress = "52:54:00:be:ef:01".parse().unwrap();
        let uuid = port_uuid("node-a", mac);
        assert_eq!(uuid, port_uuid("node-a", mac));
        assert_ne!(uuid, port_uuid("node-b", mac));
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "8"), "{uuid}");
        let document = port_document(&node(), mac, MAX, "http://kiln/ironic");
        assert_eq!(document["address"], "52:54:00:be:ef:01");
        assert_eq!(document["node_uuid"], "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10");
    }
}
