//! The Redfish driver: the service root, the first computer system, its Reset action, its
//! `Boot` override (with `If-Match` when the BMC gives an ETag), its Ethernet interfaces
//! and its virtual CD drive (`VirtualMedia`, under the system or under its manager).
//!
//! Requests time out; connection failures and 5xx are retried a few times with backoff.
//! Timeouts are not (a BMC silent for the whole timeout is not about to answer, and the
//! caller should hear so in one timeout, not three), nor are 401 and 403, so a wrong
//! password does not lock the account.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::{BmcError, BmcTarget, BootDevice, BootMode, PowerAction, PowerState, SystemFacts, VirtualDrive};

/// Attempts per request when the connection fails or the BMC answers 5xx.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// A Redfish BMC. Cheap to clone; clones share the discovered system path.
#[derive(Debug, Clone)]
pub struct Redfish {
    target: BmcTarget,
    base: String,
    http: reqwest::Client,
    system: Arc<OnceCell<String>>,
}

/// `https://host` for a bare host or `host:port` (Redfish is HTTPS by default), the URL
/// itself when it has a scheme; never with credentials in it.
pub fn base_url(address: &str) -> Result<String, BmcError> {
    Ok(split_address(address)?.0)
}

/// The service's base URL, and the system's path when the address names one
/// (`https://bmc/redfish/v1/Systems/2`: one service, several systems, one node each).
fn split_address(address: &str) -> Result<(String, Option<String>), BmcError> {
    let address = address.trim().trim_end_matches('/');
    let url =
        if address.starts_with("http://") || address.starts_with("https://") { address.to_owned() } else { format!("https://{address}") };
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], Some(&rest[slash..])),
        None => (rest, None),
    };
    let bad = || BmcError::NotConfigured {
        reason: format!("'{address}' is not a BMC address (host, host:port, http(s)://host:port or its URL of a system)"),
    };
    if authority.is_empty() || authority.contains('@') || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    let system = match path {
        None => None,
        Some(path) if path.starts_with("/redfish/v1/Systems/") && path.len() > "/redfish/v1/Systems/".len() => Some(path.to_owned()),
        Some(_) => return Err(bad()),
    };
    Ok((format!("{scheme}://{authority}"), system))
}

fn power_state(text: Option<&str>) -> PowerState {
    match text {
        Some("On") => PowerState::On,
        Some("Off") => PowerState::Off,
        Some("PoweringOn") => PowerState::PoweringOn,
        Some("PoweringOff") => PowerState::PoweringOff,
        _ => PowerState::Unknown,
    }
}

/// The Redfish `ResetType` for an action, among those the system allows (when it says).
pub fn reset_type(action: PowerAction, allowed: &[String]) -> Option<&'static str> {
    let allows = |value: &str| allowed.is_empty() || allowed.iter().any(|candidate| candidate == value);
    let preferences: &[&'static str] = match action {
        PowerAction::On => &["On", "ForceOn"],
        PowerAction::Off => &["GracefulShutdown"],
        PowerAction::ForceOff => &["ForceOff"],
        PowerAction::Reset => &["ForceRestart", "GracefulRestart"],
        PowerAction::Cycle => &["PowerCycle", "ForceRestart"],
    };
    preferences.iter().copied().find(|value| allows(value))
}

impl Redfish {
    pub fn new(target: BmcTarget) -> Result<Redfish, BmcError> {
        let (base, system) = split_address(&target.address)?;
        let http = reqwest::Client::builder()
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(5)))
            .danger_accept_invalid_certs(target.insecure)
            .build()
            .map_err(|error| BmcError::NotConfigured { reason: format!("building an HTTP client: {error}") })?;
        Ok(Redfish { target, base, http, system: Arc::new(OnceCell::new_with(system)) })
    }

    pub fn address(&self) -> &str {
        &self.target.address
    }

    fn unreachable(&self, error: reqwest::Error) -> BmcError {
        if error.is_timeout() {
            return BmcError::Timeout { address: self.target.address.clone(), timeout: self.target.timeout };
        }
        BmcError::Unreachable { address: self.target.address.clone(), source: Box::new(error) }
    }

    /// One request, retried on no answer and on 5xx. Returns the status, the ETag and the
    /// body (JSON, or `Null` when empty).
    async fn request(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(StatusCode, Option<String>, Value), BmcError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), &url).header("Accept", "application/json");
            if let Some(username) = &self.target.username {
                request = request.basic_auth(username, self.target.password.as_deref());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(etag) = if_match {
                request = request.header("If-Match", etag);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let etag = response.headers().get("etag").and_then(|value| value.to_str().ok()).map(str::to_owned);
                    let bytes = response.bytes().await.map_err(|error| self.unreachable(error));
                    match bytes {
                        Ok(bytes) => Ok((status, etag, bytes)),
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(self.unreachable(error)),
            };
            let retryable = match &outcome {
                Err(BmcError::Timeout { .. }) => false,
                Err(_) => true,
                Ok((status, _, _)) => status.is_server_error(),
            };
            if retryable && attempt < ATTEMPTS {
                tracing::debug!(address = %self.target.address, operation, attempt, "BMC request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
                continue;
            }
            let (status, etag, bytes) = outcome?;
            let address = self.target.address.clone();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(BmcError::Authentication { address, status: status.as_u16() });
            }
            let value: Value = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(value) => value,
                    Err(_) if status.is_success() => {
                        return Err(BmcError::Malformed { address, operation, message: "the body is not JSON".to_owned() });
                    }
                    Err(_) => Value::Null,
                }
            };
            if !status.is_success() {
                let message = value
                    .pointer("/error/@Message.ExtendedInfo/0/Message")
                    .or_else(|| value.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
                return Err(BmcError::Refused { address, operation, status: status.as_u16(), message });
            }
            return Ok((status, etag, value));
        }
    }

    async fn get(&self, operation: &'static str, path: &str) -> Result<(Option<String>, Value), BmcError> {
        let (_, etag, value) = self.request(operation, Method::GET, path, None, None).await?;
        Ok((etag, value))
    }

    /// The service root, checked to be Redfish.
    pub async fn service_root(&self) -> Result<Value, BmcError> {
        let not_redfish = |message: &str| BmcError::NotRedfish { address: self.target.address.clone(), message: message.to_owned() };
        let (_, root) = match self.get("reading the service root", "/redfish/v1/").await {
            Ok(root) => root,
            Err(BmcError::Refused { status: 404, .. }) => return Err(not_redfish("/redfish/v1/ does not exist")),
            Err(BmcError::Malformed { .. }) => return Err(not_redfish("/redfish/v1/ is not JSON")),
            Err(error) => return Err(error),
        };
        let is_root = root.get("RedfishVersion").is_some()
            || root.get("@odata.type").and_then(Value::as_str).is_some_and(|kind| kind.contains("ServiceRoot"));
        if !is_root {
            return Err(not_redfish("/redfish/v1/ is not a Redfish service root"));
        }
        Ok(root)
    }

    /// The paths of every computer system the service manages.
    pub async fn systems(&self) -> Result<Vec<String>, BmcError> {
        let root = self.service_root().await?;
        let collection = root.pointer("/Systems/@odata.id").and_then(Value::as_str).unwrap_or("/redfish/v1/Systems").to_owned();
        let (_, systems) = self.get("listing systems", &collection).await?;
        let members = systems.get("Members").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(members.iter().filter_map(|member| member.get("@odata.id").and_then(Value::as_str).map(str::to_owned)).collect())
    }

    /// The system this node is: the first one the service lists.
    async fn system(&self) -> Result<&str, BmcError> {
        self.system
            .get_or_try_init(|| async {
                self.systems().await?.into_iter().next().ok_or_else(|| BmcError::Malformed {
                    address: self.target.address.clone(),
                    operation: "listing systems",
                    message: "the service has no computer system".to_owned(),
                })
            })
            .await
            .map(String::as_str)
    }

    /// Works on one given system rather than the first (discovery walks them all).
    pub fn for_system(&self, path: &str) -> Redfish {
        let system = Arc::new(OnceCell::new_with(Some(path.to_owned())));
        Redfish { system, ..self.clone() }
    }

    pub async fn power_state(&self) -> Result<PowerState, BmcError> {
        let path = self.system().await?.to_owned();
        let (_, system) = self.get("reading the power state", &path).await?;
        Ok(power_state(system.get("PowerState").and_then(Value::as_str)))
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let path = self.system().await?.to_owned();
        let (_, system) = self.get("reading the system", &path).await?;
        let reset = system.pointer("/Actions/#ComputerSystem.Reset").cloned().unwrap_or(Value::Null);
        let target =
            reset.get("target").and_then(Value::as_str).map_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"), str::to_owned);
        let allowed: Vec<String> = reset
            .get("ResetType@Redfish.AllowableValues")
            .and_then(Value::as_array)
            .map(|values| values.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let reset_type = reset_type(action, &allowed)
            .ok_or_else(|| BmcError::Unsupported { address: self.target.address.clone(), operation: "this power action" })?;
        self.request("resetting the system", Method::POST, &target, Some(&json!({ "ResetType": reset_type })), None).await?;
        tracing::info!(address = %self.target.address, reset_type, "power action sent");
        Ok(())
    }

    pub async fn set_boot_device(&self, device: BootDevice, once: bool, mode: Option<BootMode>) -> Result<(), BmcError> {
        let path = self.system().await?.to_owned();
        // Some BMCs refuse a PATCH without the resource's current ETag.
        let (etag, system) = self.get("reading the system", &path).await?;
        let etag = etag.or_else(|| system.get("@odata.etag").and_then(Value::as_str).map(str::to_owned));
        let target = match device {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
            BootDevice::Cd => "Cd",
        };
        let allowed = strings(system.pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues"));
        // Some BMCs (Supermicro's) show virtual media to the system as a USB CD only.
        let target = if target == "Cd"
            && !allowed.is_empty()
            && !allowed.iter().any(|value| value == "Cd")
            && allowed.iter().any(|value| value == "UsbCd")
        {
            "UsbCd"
        } else {
            target
        };
        if !allowed.is_empty() && !allowed.iter().any(|value| value == target) {
            return Err(BmcError::Lacks {
                address: self.target.address.clone(),
                operation: "setting the boot device",
                missing: format!("the system cannot boot from {target}; it allows {}", allowed.join(", ")),
            });
        }
        let mut boot = json!({
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": if once { "Once" } else { "Continuous" },
        });
        if let Some(mode) = mode {
            boot["BootSourceOverrideMode"] = json!(match mode {
                BootMode::Bios => "Legacy",
                BootMode::Uefi => "UEFI",
            });
        }
        self.request("setting the boot device", Method::PATCH, &path, Some(&json!({ "Boot": boot })), etag.as_deref()).await?;
        Ok(())
    }

    /// The boot override as the BMC reports it: target and whether it is once or always.
    pub async fn boot_override(&self) -> Result<(Option<String>, Option<String>), BmcError> {
        let path = self.system().await?.to_owned();
        let (_, system) = self.get("reading the system", &path).await?;
        let text = |pointer: &str| system.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        Ok((text("/Boot/BootSourceOverrideTarget"), text("/Boot/BootSourceOverrideEnabled")))
    }

    /// The system's virtual CD drive: the first `VirtualMedia` member that takes a CD or a
    /// DVD, looked for under the system (Redfish 1.11 and later) and then under the managers
    /// that manage it (older BMCs). Its path, ETag and document.
    async fn virtual_cd(&self, operation: &'static str) -> Result<(String, Option<String>, Value), BmcError> {
        let path = self.system().await?.to_owned();
        let (_, system) = self.get("reading the system", &path).await?;
        let mut collections: Vec<String> =
            system.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str).map(str::to_owned).into_iter().collect();
        let mut manager_errors = Vec::new();
        for manager in system.pointer("/Links/ManagedBy").and_then(Value::as_array).into_iter().flatten() {
            let Some(manager) = manager.get("@odata.id").and_then(Value::as_str) else { continue };
            // A BMC that cannot show its manager may still have media under the system; if
            // it has none there, the manager's error is what the caller is told.
            let manager = match self.get("reading the system's manager", manager).await {
                Ok((_, manager)) => manager,
                Err(error) => {
                    manager_errors.push(error.to_string());
                    continue;
                }
            };
            if let Some(collection) = manager.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str)
                && !collections.iter().any(|known| known == collection)
            {
                collections.push(collection.to_owned());
            }
        }
        let mut other_media = Vec::new();
        for collection in &collections {
            let members = match self.get("listing virtual media", collection).await {
                Ok((_, listing)) => listing.get("Members").and_then(Value::as_array).cloned().unwrap_or_default(),
                Err(BmcError::Refused { status: 404 | 405 | 501, .. }) => continue,
                Err(error) => return Err(error),
            };
            for member in &members {
                let Some(member) = member.get("@odata.id").and_then(Value::as_str) else { continue };
                let (etag, drive) = self.get("reading a virtual media device", member).await?;
                let media_types = strings(drive.get("MediaTypes"));
                if media_types.iter().any(|kind| kind.eq_ignore_ascii_case("CD") || kind.eq_ignore_ascii_case("DVD")) {
                    let etag = etag.or_else(|| drive.get("@odata.etag").and_then(Value::as_str).map(str::to_owned));
                    return Ok((member.to_owned(), etag, drive));
                }
                other_media.extend(media_types);
            }
        }
        let missing = if collections.is_empty() && !manager_errors.is_empty() {
            format!("the system has no VirtualMedia and its manager could not be read ({})", manager_errors.join("; "))
        } else if collections.is_empty() {
            "neither the system nor its manager has VirtualMedia".to_owned()
        } else if other_media.is_empty() {
            "its VirtualMedia collection has no device".to_owned()
        } else {
            format!("no VirtualMedia device takes a CD or DVD (they take {})", other_media.join(", "))
        };
        Err(BmcError::Lacks { address: self.target.address.clone(), operation, missing })
    }

    pub async fn virtual_media(&self) -> Result<VirtualDrive, BmcError> {
        let (path, _, drive) = self.virtual_cd("reading virtual media").await?;
        Ok(drive_of(&path, &drive))
    }

    pub async fn insert_virtual_media(&self, image: &str) -> Result<VirtualDrive, BmcError> {
        const OPERATION: &str = "inserting virtual media";
        let (path, etag, drive) = self.virtual_cd(OPERATION).await?;
        let current = drive_of(&path, &drive);
        let inserted = VirtualDrive { image: Some(image.to_owned()), inserted: true, ..current.clone() };
        if current.inserted && current.image.as_deref() == Some(image) {
            return Ok(inserted);
        }
        // Most BMCs refuse to insert into an occupied drive.
        if current.inserted || current.image.is_some() {
            self.eject(&path, etag.as_deref(), &drive).await?;
        }
        match drive.pointer("/Actions/#VirtualMedia.InsertMedia/target").and_then(Value::as_str) {
            Some(action) => self.insert_by_action(action, image).await?,
            // Before the actions (Redfish 1.0 to 1.5), the resource itself was patched; a
            // fresh ETag, since an eject above may have changed it.
            None => {
                let (etag, fresh) = self.get("reading a virtual media device", &path).await?;
                let etag = etag.or_else(|| fresh.get("@odata.etag").and_then(Value::as_str).map(str::to_owned));
                let body = json!({ "Image": image, "Inserted": true, "WriteProtected": true });
                match self.request(OPERATION, Method::PATCH, &path, Some(&body), etag.as_deref()).await {
                    Err(BmcError::Refused { status: 405 | 501, .. }) => {
                        return Err(BmcError::Lacks {
                            address: self.target.address.clone(),
                            operation: OPERATION,
                            missing: format!("the drive {path} has no InsertMedia action and does not take a PATCH of its Image"),
                        });
                    }
                    other => other?,
                };
            }
        };
        let image = kiln_types::bmc::redacted_medium_url(image);
        tracing::info!(address = %self.target.address, device = %current.device, %image, "virtual media inserted");
        Ok(inserted)
    }

    /// `InsertMedia` with the image alone: `Inserted` and `WriteProtected` default to true,
    /// and some BMCs (Supermicro's) refuse them when sent. Others want the transfer protocol
    /// named, and then the transfer method; each is added only when the BMC's refusal asks
    /// for it, as the Redfish clients of Ironic (sushy) do.
    async fn insert_by_action(&self, action: &str, image: &str) -> Result<(), BmcError> {
        const OPERATION: &str = "inserting virtual media";
        let mut body = json!({ "Image": image });
        for _ in 0..3 {
            match self.request(OPERATION, Method::POST, action, Some(&body), None).await {
                Ok(_) => return Ok(()),
                Err(BmcError::Refused { status: 400, message, .. })
                    if message.contains("TransferProtocolType") && body.get("TransferProtocolType").is_none() =>
                {
                    let protocol = if image.starts_with("https://") { "HTTPS" } else { "HTTP" };
                    body["TransferProtocolType"] = json!(protocol);
                }
                Err(BmcError::Refused { status: 400, message, .. })
                    if message.contains("TransferMethod") && body.get("TransferMethod").is_none() =>
                {
                    body["TransferMethod"] = json!("Stream");
                }
                Err(error) => return Err(error),
            }
        }
        self.request(OPERATION, Method::POST, action, Some(&body), None).await.map(|_| ())
    }

    pub async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        let (path, etag, drive) = self.virtual_cd("ejecting virtual media").await?;
        let current = drive_of(&path, &drive);
        if !current.inserted && current.image.is_none() {
            return Ok(());
        }
        self.eject(&path, etag.as_deref(), &drive).await?;
        tracing::info!(address = %self.target.address, device = %current.device, "virtual media ejected");
        Ok(())
    }

    async fn eject(&self, path: &str, etag: Option<&str>, drive: &Value) -> Result<(), BmcError> {
        const OPERATION: &str = "ejecting virtual media";
        match drive.pointer("/Actions/#VirtualMedia.EjectMedia/target").and_then(Value::as_str) {
            Some(action) => self.request(OPERATION, Method::POST, action, Some(&json!({})), None).await?,
            None => {
                let body = json!({ "Image": null, "Inserted": false });
                self.request(OPERATION, Method::PATCH, path, Some(&body), etag).await?
            }
        };
        Ok(())
    }

    pub async fn facts(&self) -> Result<SystemFacts, BmcError> {
        let path = self.system().await?.to_owned();
        let (_, system) = self.get("reading the system", &path).await?;
        let text = |key: &str| system.get(key).and_then(Value::as_str).filter(|text| !text.is_empty()).map(str::to_owned);
        let mut facts = SystemFacts {
            manufacturer: text("Manufacturer"),
            model: text("Model"),
            serial_number: text("SerialNumber"),
            uuid: text("UUID"),
            processors: system.pointer("/ProcessorSummary/Count").and_then(Value::as_u64).map(|count| count as u32),
            memory_gib: system.pointer("/MemorySummary/TotalSystemMemoryGiB").and_then(Value::as_f64),
            power_state: Some(power_state(system.get("PowerState").and_then(Value::as_str))),
            macs: Vec::new(),
        };
        if let Some(interfaces) = system.pointer("/EthernetInterfaces/@odata.id").and_then(Value::as_str) {
            let (_, collection) = self.get("listing Ethernet interfaces", interfaces).await?;
            for member in collection.get("Members").and_then(Value::as_array).into_iter().flatten() {
                let Some(member) = member.get("@odata.id").and_then(Value::as_str) else { continue };
                let (_, interface) = self.get("reading an Ethernet interface", member).await?;
                let mac = interface.get("MACAddress").or_else(|| interface.get("PermanentMACAddress")).and_then(Value::as_str);
                if let Some(mac) = mac.and_then(|text| text.parse().ok())
                    && !facts.macs.contains(&mac)
                {
                    facts.macs.push(mac);
                }
            }
        }
        Ok(facts)
    }
}

/// The strings of a JSON array (none when it is not one).
fn strings(value: Option<&Value>) -> Vec<String> {
    value.and_then(Value::as_array).map(|values| values.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
}

/// A `VirtualMedia` document as a [`VirtualDrive`]. An empty `Image` is no image: BMCs say
/// "" as often as null for an empty drive.
fn drive_of(path: &str, drive: &Value) -> VirtualDrive {
    let device = drive.get("Id").and_then(Value::as_str).map_or_else(|| path.rsplit('/').next().unwrap_or(path).to_owned(), str::to_owned);
    let image = drive.get("Image").and_then(Value::as_str).filter(|image| !image.is_empty()).map(str::to_owned);
    let inserted = drive.get("Inserted").and_then(Value::as_bool).unwrap_or(image.is_some());
    VirtualDrive { device, media_types: strings(drive.get("MediaTypes")), image, inserted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_https_urls_without_credentials() {
        assert_eq!(base_url("10.0.0.5").unwrap(), "https://10.0.0.5");
        assert_eq!(base_url("10.0.0.5:8443/").unwrap(), "https://10.0.0.5:8443");
        assert_eq!(base_url("http://127.0.0.1:8000").unwrap(), "http://127.0.0.1:8000");
        assert!(base_url("https://root:calvin@10.0.0.5").is_err(), "credentials belong in the BMC record, not the URL");
        assert!(base_url("").is_err());
        assert_eq!(
            split_address("http://127.0.0.1:8000/redfish/v1/Systems/abc").unwrap(),
            ("http://127.0.0.1:8000".to_owned(), Some("/redfish/v1/Systems/abc".to_owned()))
        );
        assert!(base_url("http://127.0.0.1:8000/somewhere").is_err());
    }

    #[test]
    fn reset_types_respect_what_the_system_allows() {
        let sushy: Vec<String> =
            ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"].map(String::from).to_vec();
        assert_eq!(reset_type(PowerAction::Cycle, &sushy), Some("ForceRestart"), "no PowerCycle: restart instead");
        assert_eq!(reset_type(PowerAction::Cycle, &[]), Some("PowerCycle"), "nothing said: the standard value");
        assert_eq!(reset_type(PowerAction::Off, &sushy), Some("GracefulShutdown"));
        assert_eq!(reset_type(PowerAction::Off, &["ForceOff".to_owned()]), None, "no silent hard power-off for a soft one");
        assert_eq!(reset_type(PowerAction::On, &["ForceOn".to_owned()]), Some("ForceOn"));
    }

    #[test]
    fn virtual_media_documents_read_the_same_whatever_the_bmc_says_for_empty() {
        let sushy_empty = json!({"Id": "Cd", "MediaTypes": ["CD", "DVD"], "Image": "", "Inserted": false});
        assert_eq!(
            drive_of("/redfish/v1/Systems/1/VirtualMedia/Cd", &sushy_empty),
            VirtualDrive { device: "Cd".into(), media_types: vec!["CD".into(), "DVD".into()], image: None, inserted: false }
        );
        let without_inserted = json!({"Image": "http://10.0.0.1/a.iso", "MediaTypes": ["DVD"]});
        let drive = drive_of("/redfish/v1/Managers/1/VirtualMedia/2", &without_inserted);
        assert_eq!((drive.device.as_str(), drive.inserted), ("2", true), "no Inserted: an image means inserted");
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let target = BmcTarget {
            address: "10.0.0.5".into(),
            username: Some("root".into()),
            password: Some("calvin".into()),
            insecure: false,
            timeout: BmcTarget::DEFAULT_TIMEOUT,
        };
        let text = format!("{:?}", Redfish::new(target).unwrap());
        assert!(!text.contains("calvin") && text.contains("******"), "{text}");
    }
}
