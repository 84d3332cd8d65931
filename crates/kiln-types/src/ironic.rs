//! What Kiln keeps of a node for its Ironic-compatible API beyond its own fields: Ironic's
//! driver name, the `driver_info` keys Kiln's BMC does not hold, `extra` and
//! `instance_info`. Stored beside the node and written in the node's own transactions.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IronicFields {
    /// Ironic's driver (hardware type): `ipmi`, `redfish`, `manual-management`, `kiln-lab`.
    /// Empty: the node was made by Kiln's own API, and its BMC names the driver.
    #[serde(default)]
    pub driver: String,
    /// `driver_info` keys other than the BMC's (`deploy_kernel`, `deploy_ramdisk`, …).
    #[serde(default)]
    pub driver_info: Map<String, Value>,
    #[serde(default)]
    pub extra: Map<String, Value>,
    #[serde(default)]
    pub instance_info: Map<String, Value>,
}
