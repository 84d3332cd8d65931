//! Nodes: what the API accepts (wire input), what the store keeps (validated spec) and shows.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::{self, InvalidField};
use crate::{MacAddress, Xname};

mod address;

/// Where a node is in its life. Only the reconciler moves a node between these; API
/// handlers record intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionState {
    /// Seen at its first PXE boot and added automatically; not yet claimed by an operator.
    Discovered,
    Enroll,
    Manageable,
    Inspecting,
    InspectFailed,
    Available,
    Deploying,
    WaitAgent,
    Active,
    DeployFailed,
    Undeploying,
    Cleaning,
    CleanFailed,
    /// Booted into the agent, which uploads the disk as a new image version.
    Capturing,
}

impl ProvisionState {
    pub const ALL: [ProvisionState; 14] = [
        Self::Discovered,
        Self::Enroll,
        Self::Manageable,
        Self::Inspecting,
        Self::InspectFailed,
        Self::Available,
        Self::Deploying,
        Self::WaitAgent,
        Self::Active,
        Self::DeployFailed,
        Self::Undeploying,
        Self::Cleaning,
        Self::CleanFailed,
        Self::Capturing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Enroll => "enroll",
            Self::Manageable => "manageable",
            Self::Inspecting => "inspecting",
            Self::InspectFailed => "inspect-failed",
            Self::Available => "available",
            Self::Deploying => "deploying",
            Self::WaitAgent => "wait-agent",
            Self::Active => "active",
            Self::DeployFailed => "deploy-failed",
            Self::Undeploying => "undeploying",
            Self::Cleaning => "cleaning",
            Self::CleanFailed => "clean-failed",
            Self::Capturing => "capturing",
        }
    }

    /// A state an operation ended in by failing.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::InspectFailed | Self::DeployFailed | Self::CleanFailed)
    }

    /// A state an operation passes through, rather than one a node rests in.
    pub fn is_transitional(self) -> bool {
        matches!(self, Self::Inspecting | Self::Deploying | Self::WaitAgent | Self::Undeploying | Self::Cleaning | Self::Capturing)
    }
}

impl FromStr for ProvisionState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| format!("'{text}' is not a provision state"))
    }
}

impl std::fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How Kiln talks to a node's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    Redfish,
    Ipmi,
    /// The test lab's QEMU machines.
    Lab,
    /// No power control (the node is powered by hand).
    None,
}

impl BmcDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redfish => "redfish",
            Self::Ipmi => "ipmi",
            Self::Lab => "lab",
            Self::None => "none",
        }
    }
}

impl FromStr for BmcDriver {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "redfish" => Ok(Self::Redfish),
            "ipmi" => Ok(Self::Ipmi),
            "lab" => Ok(Self::Lab),
            "none" => Ok(Self::None),
            _ => Err(format!("'{text}' is not a BMC driver (redfish, ipmi, lab or none)")),
        }
    }
}

/// One named address on an interface, as in OpenCHAMI's `ip_addrs`. An address with a
/// `prefix_length` is also the node's static configuration for booting without DHCP (virtual
/// media): the deploy ramdisk, a live image and cloud-init's network configuration set it
/// themselves. OpenCHAMI's entries, without these fields, are accepted as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpAddrEntry {
    #[serde(default)]
    pub name: String,
    pub ip_addr: String,
    /// The subnet's prefix length (24 for a /24): what makes the address a static one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<u8>,
    /// The default route's next hop, inside the address's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    /// The 802.1Q VLAN the address lives on, tagged by the node (1 to 4094).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

impl IpAddrEntry {
    /// A plain named address, with no static configuration.
    pub fn named(name: impl Into<String>, ip_addr: impl Into<String>) -> IpAddrEntry {
        IpAddrEntry { name: name.into(), ip_addr: ip_addr.into(), ..IpAddrEntry::default() }
    }
}

/// A network interface as the API accepts and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceInput {
    pub mac_addr: String,
    #[serde(default)]
    pub ip_addrs: Vec<IpAddrEntry>,
}

/// BMC settings as the API accepts them. The password is write-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcInput {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Skip TLS certificate verification for this BMC (self-signed BMC certificates).
    #[serde(default)]
    pub insecure: Option<bool>,
}

/// A node to create, or the full replacement of one (`PUT`-like discovery updates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    /// Unique name; defaults to the xname when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub xname: Option<String>,
    #[serde(default)]
    pub nid: Option<u32>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceInput>,
    #[serde(default)]
    pub bmc: Option<BmcInput>,
    /// Free-form facts: cpu_count, memory_mib, disks, ...
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// Owning project; only admins may set it.
    #[serde(default)]
    pub project: Option<String>,
}

/// A partial change to a node: absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub xname: Option<String>,
    #[serde(default)]
    pub nid: Option<u32>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub interfaces: Option<Vec<InterfaceInput>>,
    #[serde(default)]
    pub bmc: Option<BmcInput>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub maintenance: Option<bool>,
}

/// A validated interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub mac: MacAddress,
    /// Checked, and written canonically (`10.0.0.1`, `fd00::1`).
    pub ip_addrs: Vec<IpAddrEntry>,
}

/// Validated BMC settings. The password is plain text here; the store encrypts it.
#[derive(Clone, PartialEq, Eq)]
pub struct BmcSpec {
    pub driver: BmcDriver,
    pub address: Option<String>,
    pub mac: Option<MacAddress>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub insecure: bool,
}

impl std::fmt::Debug for BmcSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcSpec")
            .field("driver", &self.driver)
            .field("address", &self.address)
            .field("mac", &self.mac)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| crate::SECRET_MASK))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// A validated node, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub xname: Option<Xname>,
    pub nid: Option<u32>,
    pub role: Option<String>,
    pub groups: Vec<String>,
    pub interfaces: Vec<InterfaceSpec>,
    pub bmc: Option<BmcSpec>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub project: Option<String>,
}

pub fn validate_interfaces(inputs: &[InterfaceInput]) -> Result<Vec<InterfaceSpec>, InvalidField> {
    let mut seen = BTreeSet::new();
    inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let path = format!("interfaces[{index}]");
            let mac = validate::mac("mac_addr", &input.mac_addr).map_err(|e| e.within(&path))?;
            if !seen.insert(mac) {
                return Err(InvalidField::new(format!("{path}.mac_addr"), format!("MAC {mac} is listed twice")));
            }
            let ip_addrs = input
                .ip_addrs
                .iter()
                .enumerate()
                .map(|(ip_index, entry)| address::validate_address(&format!("{path}.ip_addrs[{ip_index}]"), entry))
                .collect::<Result<_, InvalidField>>()?;
            Ok(InterfaceSpec { mac, ip_addrs })
        })
        .collect()
}

pub fn validate_bmc(input: &BmcInput) -> Result<BmcSpec, InvalidField> {
    let driver = match &input.driver {
        Some(text) => text.parse().map_err(|message| InvalidField::new("bmc.driver", message))?,
        None if input.address.is_some() => BmcDriver::Redfish,
        None => BmcDriver::None,
    };
    let address = match &input.address {
        Some(text) => Some(validate::single_line("bmc.address", text, 255)?).filter(|a| !a.is_empty()),
        None => None,
    };
    let mac = input.mac.as_deref().map(|text| validate::mac("bmc.mac", text)).transpose()?;
    let username = input.username.as_deref().map(|text| validate::single_line("bmc.username", text, 128)).transpose()?;
    if let Some(password) = &input.password
        && password.len() > 256
    {
        return Err(InvalidField::new("bmc.password", "longer than 256 bytes"));
    }
    Ok(BmcSpec { driver, address, mac, username, password: input.password.clone(), insecure: input.insecure.unwrap_or(false) })
}

pub fn validate_groups(groups: &[String]) -> Result<Vec<String>, InvalidField> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (index, group) in groups.iter().enumerate() {
        // A group is named `NAME` (the node's project's, or else one without a project) or
        // `PROJECT/NAME`.
        let group = crate::scoped_name::NameReference::parse(&format!("groups[{index}]"), group)?.to_string();
        if seen.insert(group.clone()) {
            out.push(group);
        }
    }
    Ok(out)
}

impl TryFrom<&NodeInput> for NodeSpec {
    type Error = InvalidField;

    fn try_from(input: &NodeInput) -> Result<Self, Self::Error> {
        let xname = input.xname.as_deref().map(|text| validate::xname("xname", text)).transpose()?;
        let name = match (&input.name, &xname) {
            (Some(name), _) => validate::node_name("name", name)?,
            (None, Some(xname)) => xname.to_string(),
            (None, None) => return Err(InvalidField::new("name", "a node needs a name or an xname")),
        };
        let role = input.role.as_deref().map(|text| validate::single_line("role", text, 63)).transpose()?;
        let project = input.project.as_deref().map(|text| validate::name("project", text)).transpose()?;
        Ok(NodeSpec {
            name,
            xname,
            nid: input.nid,
            role,
            groups: validate_groups(&input.groups)?,
            interfaces: validate_interfaces(&input.interfaces)?,
            bmc: input.bmc.as_ref().map(validate_bmc).transpose()?,
            properties: validate_properties(input.properties.clone().unwrap_or_default())?,
            project,
        })
    }
}

/// Properties are free-form, but the ones Kiln acts on must say something it understands.
fn validate_properties(
    properties: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, InvalidField> {
    if let Some(value) = properties.get("boot_interface") {
        let field = "properties.boot_interface";
        let text = value.as_str().ok_or_else(|| InvalidField::new(field, "must be a string (pxe or virtual-media)"))?;
        text.parse::<BootInterface>().map_err(|message| InvalidField::new(field, message))?;
    }
    Ok(properties)
}

/// A validated partial change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeChange {
    pub name: Option<String>,
    pub xname: Option<Xname>,
    pub nid: Option<u32>,
    pub role: Option<String>,
    pub groups: Option<Vec<String>>,
    pub interfaces: Option<Vec<InterfaceSpec>>,
    pub bmc: Option<BmcSpec>,
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    pub maintenance: Option<bool>,
}

impl TryFrom<&NodePatch> for NodeChange {
    type Error = InvalidField;

    fn try_from(patch: &NodePatch) -> Result<Self, Self::Error> {
        Ok(NodeChange {
            name: patch.name.as_deref().map(|text| validate::node_name("name", text)).transpose()?,
            xname: patch.xname.as_deref().map(|text| validate::xname("xname", text)).transpose()?,
            nid: patch.nid,
            role: patch.role.as_deref().map(|text| validate::single_line("role", text, 63)).transpose()?,
            groups: patch.groups.as_deref().map(validate_groups).transpose()?,
            interfaces: patch.interfaces.as_deref().map(validate_interfaces).transpose()?,
            bmc: patch.bmc.as_ref().map(validate_bmc).transpose()?,
            properties: patch.properties.clone().map(validate_properties).transpose()?,
            maintenance: patch.maintenance,
        })
    }
}

/// BMC settings as the API shows them: the password only as a mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BmcView {
    pub driver: BmcDriver,
    pub address: Option<String>,
    #[schema(value_type = Option<String>)]
    pub mac: Option<MacAddress>,
    pub username: Option<String>,
    /// `******` when a password is set, absent otherwise. Never the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InterfaceView {
    #[schema(value_type = String, example = "52:54:00:be:ef:01")]
    pub mac_addr: MacAddress,
    pub ip_addrs: Vec<IpAddrEntry>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub xname: Option<String>,
    pub nid: Option<u32>,
    pub role: Option<String>,
    pub groups: Vec<String>,
    pub interfaces: Vec<InterfaceView>,
    pub bmc: Option<BmcView>,
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub project: Option<String>,
    pub provision_state: ProvisionState,
    pub maintenance: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
}

/// How a node boots what Kiln gives it: from the network (DHCP, then PXE or HTTP boot), or
/// from a medium Kiln makes for the operation and its BMC inserts (no DHCP anywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BootInterface {
    Pxe,
    VirtualMedia,
}

impl BootInterface {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pxe => "pxe",
            Self::VirtualMedia => "virtual-media",
        }
    }
}

impl FromStr for BootInterface {
    type Err = String;

    /// Kiln's names, and Ironic's boot interfaces as its users write them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pxe" | "ipxe" | "http" | "http-ipxe" | "redfish-https" => Ok(Self::Pxe),
            "virtual-media" | "redfish-virtual-media" | "idrac-redfish-virtual-media" => Ok(Self::VirtualMedia),
            _ => Err(format!("'{text}' is not a boot interface (pxe or virtual-media)")),
        }
    }
}

impl Node {
    /// How the node boots: `boot_interface` in its properties (`pxe`, `virtual-media`, or
    /// Ironic's names for them), PXE when absent.
    pub fn boot_interface(&self) -> BootInterface {
        self.properties
            .get("boot_interface")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| text.parse().ok())
            .unwrap_or(BootInterface::Pxe)
    }

    /// Whether the node network boots under UEFI Secure Boot (through shim and signed GRUB
    /// rather than iPXE): `secure_boot: true` in its properties, or Ironic's spelling,
    /// `secure_boot:true` in its `capabilities` (a `key:value,...` string or an object).
    pub fn secure_boot(&self) -> bool {
        let truthy = |value: &serde_json::Value| match value {
            serde_json::Value::Bool(flag) => *flag,
            serde_json::Value::String(text) => text.eq_ignore_ascii_case("true"),
            _ => false,
        };
        if self.properties.get("secure_boot").is_some_and(truthy) {
            return true;
        }
        match self.properties.get("capabilities") {
            Some(serde_json::Value::String(capabilities)) => capabilities
                .split(',')
                .filter_map(|pair| pair.split_once(':'))
                .any(|(key, value)| key.trim() == "secure_boot" && value.trim().eq_ignore_ascii_case("true")),
            Some(serde_json::Value::Object(capabilities)) => capabilities.get("secure_boot").is_some_and(truthy),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
