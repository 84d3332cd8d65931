//! Kiln's BMC drivers: what Kiln asks of a node's management controller (power, the next
//! boot device, system facts), one driver per protocol behind one [`Bmc`] type.
//!
//! Errors say which BMC failed and how, in words an operator can act on, and sort faults
//! into kinds ([`FaultKind`]) so the power-state sync can tell "wrong password" from "not
//! answering". Credentials never appear in an error, a log line or a `Debug` output.

pub mod discovery;
pub mod ipmi;
pub mod lab;
pub mod redfish;

use std::time::Duration;

use kiln_types::MacAddress;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use ipmi::Ipmi;
pub use lab::Lab;
pub use redfish::Redfish;

/// A node's power, as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Unknown,
}

impl PowerState {
    /// The name the API and the event log use.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::PoweringOn => "powering-on",
            PowerState::PoweringOff => "powering-off",
            PowerState::Unknown => "unknown",
        }
    }
}

/// What to do to a node's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    /// Ask the operating system to shut down (ACPI).
    Off,
    /// Cut the power.
    ForceOff,
    /// Restart at once, without shutting down.
    Reset,
    /// Off, then on.
    Cycle,
}

/// The device a node boots from next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
}

/// Firmware mode for the next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    Uefi,
}

/// What the BMC knows about its system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemFacts {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub macs: Vec<MacAddress>,
    pub processors: Option<u32>,
    pub memory_gib: Option<f64>,
    pub power_state: Option<PowerState>,
}

/// How a BMC failed, for the power-state sync: a node whose BMC keeps failing goes into
/// maintenance with this recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Nothing answered, or not in time.
    Unreachable,
    /// The BMC refused the credentials.
    Authentication,
    /// Something answered, but not as a BMC should (not Redfish, malformed, 5xx).
    Protocol,
    /// The BMC understood and refused the request.
    Refused,
}

impl FaultKind {
    /// The name the API and the power readings use.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Unreachable => "unreachable",
            FaultKind::Authentication => "authentication",
            FaultKind::Protocol => "protocol",
            FaultKind::Refused => "refused",
        }
    }
}

/// The API's answer about a node's power.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerStatus {
    pub node: String,
    pub power_state: PowerState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerRequest {
    pub action: PowerAction,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BootDeviceRequest {
    pub device: BootDevice,
    /// Only for the next boot [default: false: every boot].
    #[serde(default)]
    pub once: bool,
    pub mode: Option<BootMode>,
}

/// Why a BMC operation failed. Never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("BMC {address}: cannot connect: {message}")]
    Unreachable { address: String, message: String },
    #[error("BMC {address}: no answer within {} s", timeout.as_secs())]
    Timeout { address: String, timeout: Duration },
    #[error("BMC {address}: the username or password was refused (HTTP {status})")]
    Authentication { address: String, status: u16 },
    #[error("BMC {address}: not a Redfish service: {message}")]
    NotRedfish { address: String, message: String },
    #[error("BMC {address}: {operation}: HTTP {status}: {message}")]
    Refused { address: String, operation: &'static str, status: u16, message: String },
    /// A refusal outside HTTP (IPMI completion codes, tool errors).
    #[error("BMC {address}: {operation}: {message}")]
    Failed { address: String, operation: &'static str, message: String },
    #[error("BMC {address}: {operation}: the answer is malformed: {message}")]
    Malformed { address: String, operation: &'static str, message: String },
    #[error("BMC {address}: {operation} is not supported by this BMC")]
    Unsupported { address: String, operation: &'static str },
    #[error("node has no usable BMC: {reason}")]
    NotConfigured { reason: String },
}

impl BmcError {
    pub fn fault(&self) -> FaultKind {
        match self {
            BmcError::Unreachable { .. } | BmcError::Timeout { .. } => FaultKind::Unreachable,
            BmcError::Authentication { .. } => FaultKind::Authentication,
            BmcError::NotRedfish { .. } | BmcError::Malformed { .. } => FaultKind::Protocol,
            BmcError::Refused { status, .. } if *status >= 500 => FaultKind::Protocol,
            BmcError::Refused { .. } | BmcError::Failed { .. } | BmcError::Unsupported { .. } | BmcError::NotConfigured { .. } => {
                FaultKind::Refused
            }
        }
    }
}

/// How to reach a BMC. The password is kept out of `Debug`.
#[derive(Clone)]
pub struct BmcTarget {
    /// `host`, `host:port`, or an `http(s)://` URL.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Accept any TLS certificate (a per-node opt-out; verification is on by default).
    pub insecure: bool,
    /// How long one request may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for BmcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcTarget")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| kiln_types::SECRET_MASK))
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl BmcTarget {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// A node's BMC, whichever protocol it speaks.
#[derive(Debug, Clone)]
pub enum Bmc {
    Redfish(Redfish),
    Ipmi(Ipmi),
    Lab(Lab),
}

impl Bmc {
    /// The driver for `driver` at `target`.
    pub fn connect(driver: kiln_types::BmcDriver, target: BmcTarget) -> Result<Bmc, BmcError> {
        match driver {
            kiln_types::BmcDriver::Redfish => Ok(Bmc::Redfish(Redfish::new(target)?)),
            kiln_types::BmcDriver::Ipmi => Ok(Bmc::Ipmi(Ipmi::new(target)?)),
            kiln_types::BmcDriver::Lab => Ok(Bmc::Lab(Lab::new(target)?)),
            other => Err(BmcError::NotConfigured { reason: format!("the {} driver is not available yet", other.as_str()) }),
        }
    }

    /// The driver for a node's BMC record; the caller opens the password (the store holds
    /// it sealed). Fails, naming the node, when the record or its address is missing.
    pub fn for_node(node: &kiln_types::node::Node, password: Option<String>, timeout: Duration) -> Result<Bmc, BmcError> {
        let bmc = node.bmc.as_ref().ok_or_else(|| BmcError::NotConfigured { reason: format!("node '{}' has no BMC record", node.name) })?;
        let address =
            bmc.address.clone().ok_or_else(|| BmcError::NotConfigured { reason: format!("node '{}' has no BMC address", node.name) })?;
        Bmc::connect(bmc.driver, BmcTarget { address, username: bmc.username.clone(), password, insecure: bmc.insecure, timeout })
    }

    pub async fn power_state(&self) -> Result<PowerState, BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.power_state().await,
            Bmc::Ipmi(ipmi) => ipmi.power_state().await,
            Bmc::Lab(lab) => lab.power_state().await,
        }
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.power(action).await,
            Bmc::Ipmi(ipmi) => ipmi.power(action).await,
            Bmc::Lab(lab) => lab.power(action).await,
        }
    }

    pub async fn set_boot_device(&self, device: BootDevice, once: bool, mode: Option<BootMode>) -> Result<(), BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.set_boot_device(device, once, mode).await,
            Bmc::Ipmi(ipmi) => ipmi.set_boot_device(device, once, mode).await,
            Bmc::Lab(lab) => lab.set_boot_device(device, once, mode).await,
        }
    }

    pub async fn facts(&self) -> Result<SystemFacts, BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.facts().await,
            Bmc::Ipmi(ipmi) => ipmi.facts().await,
            Bmc::Lab(lab) => lab.facts().await,
        }
    }
}
