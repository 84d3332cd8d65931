//! What the API says about BMCs: power states and actions, boot devices, system facts,
//! fault kinds and Redfish discovery's input and report. The drivers are `kiln-bmc`'s.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::MacAddress;

word_enum! {
    /// A node's power, as its BMC reports it.
    pub enum PowerState {
        On = "on",
        Off = "off",
        PoweringOn = "powering-on",
        PoweringOff = "powering-off",
        Unknown = "unknown",
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
    /// The CD or DVD drive, where virtual media appears.
    Cd,
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

word_enum! {
    /// How a BMC failed, for the power-state sync: a node whose BMC keeps failing goes into
    /// maintenance with this recorded.
    pub enum FaultKind {
        /// Nothing answered, or not in time.
        Unreachable = "unreachable",
        /// The BMC refused the credentials.
        Authentication = "authentication",
        /// Something answered, but not as a BMC should (not Redfish, malformed, 5xx).
        Protocol = "protocol",
        /// The BMC understood and refused the request.
        Refused = "refused",
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

/// What `PUT /v1/nodes/{node}/virtual-media` takes: the image the BMC fetches and shows
/// the node as a CD.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VirtualMediaRequest {
    /// An `http://` or `https://` URL the BMC can reach, without credentials in it.
    pub image: String,
    /// Also make the next boot, only that one, from the CD [default: false].
    #[serde(default)]
    pub boot_once: bool,
}

/// A node's virtual CD drive, as its BMC reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VirtualMediaStatus {
    pub node: String,
    /// The BMC's own name for the drive (Redfish `VirtualMedia` member id, such as `Cd`).
    pub device: String,
    /// What the drive takes (`CD`, `DVD`, `USBStick`, ...).
    pub media_types: Vec<String>,
    /// The image's URL while one is inserted.
    pub image: Option<String>,
    pub inserted: bool,
}

/// What `POST /v1/discover/redfish` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RedfishDiscoveryInput {
    /// `HOST`, `HOST:PORT` or `HOST:FIRST-LAST`.
    pub targets: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Accept any TLS certificate (recorded on the nodes found).
    #[serde(default)]
    pub insecure: bool,
    /// `https` or `http` [default: https]
    pub scheme: Option<String>,
    /// Targets scanned at once [default: 32]
    pub concurrency: Option<usize>,
    /// Seconds one target may take to answer [default: 5]
    pub timeout_seconds: Option<u64>,
}

/// A target that answered, but not usefully.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DiscoveryFailure {
    pub target: String,
    pub fault: FaultKind,
    pub error: String,
}

/// What a Redfish discovery found and did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RedfishDiscoveryReport {
    pub targets: usize,
    /// Targets where nothing listened.
    pub absent: usize,
    pub services: usize,
    pub systems: usize,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub failures: Vec<DiscoveryFailure>,
}

/// Where Kiln's per-operation boot media are served: a medium's name there is its only
/// secret (the medium can carry an agent token).
pub const BOOT_MEDIA_PATH: &str = "/boot/media/";

/// `url` as logs and API answers show it: a Kiln boot medium's secret name replaced by
/// `<secret>`; any other URL as it is.
pub fn redacted_medium_url(url: &str) -> std::borrow::Cow<'_, str> {
    match url.find(BOOT_MEDIA_PATH) {
        Some(at) => format!("{}<secret>", &url[..at + BOOT_MEDIA_PATH.len()]).into(),
        None => url.into(),
    }
}

#[cfg(test)]
mod medium_url_tests {
    #[test]
    fn a_boot_medium_s_name_is_never_shown() {
        assert_eq!(
            super::redacted_medium_url("http://10.77.0.1:8081/boot/media/n1.kiln_abc.iso"),
            "http://10.77.0.1:8081/boot/media/<secret>"
        );
        assert_eq!(super::redacted_medium_url("/boot/media/n1.kiln_abc.iso"), "/boot/media/<secret>");
        assert_eq!(super::redacted_medium_url("http://site/rescue.iso"), "http://site/rescue.iso");
    }
}
