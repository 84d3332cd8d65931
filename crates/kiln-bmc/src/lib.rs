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

pub use ipmi::Ipmi;
pub use kiln_types::bmc::{
    BootDevice, BootDeviceRequest, BootMode, FaultKind, PowerAction, PowerRequest, PowerState, PowerStatus, SystemFacts,
};
pub use lab::Lab;
pub use redfish::Redfish;

/// Why a BMC operation failed. Never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("BMC {address}: cannot connect")]
    Unreachable {
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// The BMC works but has no part the operation needs, named in `missing`.
    #[error("BMC {address}: {operation}: {missing}")]
    Lacks { address: String, operation: &'static str, missing: String },
    #[error("node has no usable BMC: {reason}")]
    NotConfigured { reason: String },
    /// The image a BMC was to fetch for virtual media could not be had: its server, not the
    /// BMC, is at fault.
    #[error("BMC {address}: fetching the image {url}")]
    ImageFetch {
        address: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("BMC {address}: fetching the image {url}: its server answered HTTP {status}")]
    ImageUnavailable { address: String, url: String, status: u16 },
    #[error("BMC {address}: fetching the image {url}: {reason}")]
    ImageRefused { address: String, url: String, reason: String },
    #[error("BMC {address}: keeping the fetched image in {path}")]
    MediumStore {
        address: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BmcError {
    pub fn fault(&self) -> FaultKind {
        match self {
            BmcError::Unreachable { .. } | BmcError::Timeout { .. } => FaultKind::Unreachable,
            BmcError::Authentication { .. } => FaultKind::Authentication,
            BmcError::NotRedfish { .. } | BmcError::Malformed { .. } => FaultKind::Protocol,
            BmcError::Refused { status, .. } if *status >= 500 => FaultKind::Protocol,
            BmcError::Refused { .. }
            | BmcError::Failed { .. }
            | BmcError::Unsupported { .. }
            | BmcError::Lacks { .. }
            | BmcError::NotConfigured { .. }
            | BmcError::ImageFetch { .. }
            | BmcError::ImageUnavailable { .. }
            | BmcError::ImageRefused { .. }
            | BmcError::MediumStore { .. } => FaultKind::Refused,
        }
    }
}

/// A node's virtual CD drive, as the BMC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDrive {
    /// The BMC's name for the drive (the Redfish member's `Id`).
    pub device: String,
    pub media_types: Vec<String>,
    /// The image's URL while one is inserted.
    pub image: Option<String>,
    pub inserted: bool,
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

    /// The node's virtual CD drive and what is in it.
    pub async fn virtual_media(&self) -> Result<VirtualDrive, BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.virtual_media().await,
            Bmc::Ipmi(ipmi) => Err(ipmi.lacks_virtual_media("reading virtual media")),
            Bmc::Lab(lab) => lab.virtual_media().await,
        }
    }

    /// Has the BMC fetch `image` (an http(s) URL) and show it to the node as a CD, ejecting
    /// whatever else was in the drive. Inserting the image that is already in is a no-op.
    /// Returns the drive as the insert leaves it, so callers need not ask the BMC again.
    pub async fn insert_virtual_media(&self, image: &str) -> Result<VirtualDrive, BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.insert_virtual_media(image).await,
            Bmc::Ipmi(ipmi) => Err(ipmi.lacks_virtual_media("inserting virtual media")),
            Bmc::Lab(lab) => lab.insert_virtual_media(image).await,
        }
    }

    /// Empties the virtual CD drive; an empty drive is left as it is.
    pub async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        match self {
            Bmc::Redfish(redfish) => redfish.eject_virtual_media().await,
            Bmc::Ipmi(ipmi) => Err(ipmi.lacks_virtual_media("ejecting virtual media")),
            Bmc::Lab(lab) => lab.eject_virtual_media().await,
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
