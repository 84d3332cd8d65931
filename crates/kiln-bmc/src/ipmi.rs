//! The IPMI driver: IPMI 2.0 RMCP+ (lanplus) through `ipmitool`, the tool every site already
//! trusts with its BMCs. The password goes through the environment (`-E`), never the
//! command line, where any user could read it in the process list.

use std::process::Stdio;
use std::time::Duration;

use crate::{BmcError, BmcTarget, BootDevice, BootMode, PowerAction, PowerState, SystemFacts};

/// The IPMI LAN port.
const DEFAULT_PORT: u16 = 623;

#[derive(Debug, Clone)]
pub struct Ipmi {
    target: BmcTarget,
    host: String,
    port: u16,
}

/// `host`, `host:port`, `[v6]:port`, or the same after `ipmi://`.
fn host_and_port(address: &str) -> Result<(String, u16), BmcError> {
    let address = address.trim().trim_start_matches("ipmi://").trim_end_matches('/');
    let bad = || BmcError::NotConfigured { reason: format!("'{address}' is not an IPMI address (host or host:port)") };
    if address.is_empty() || address.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once(']').ok_or_else(bad)?;
        let port = match port.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None => DEFAULT_PORT,
        };
        return Ok((host.to_owned(), port));
    }
    match address.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host.to_owned(), port.parse().map_err(|_| bad())?)),
        Some(_) => Ok((address.to_owned(), DEFAULT_PORT)),
        None => Ok((address.to_owned(), DEFAULT_PORT)),
    }
}

/// What ipmitool's error output means.
fn classify(address: &str, operation: &'static str, stderr: &str) -> BmcError {
    let address = address.to_owned();
    if stderr.contains("RAKP 2 HMAC is invalid") || stderr.contains("unauthorized name") || stderr.contains("Invalid user name") {
        // RMCP+ has no status code; 401 says the same thing in the HTTP drivers' terms.
        return BmcError::Authentication { address, status: 401 };
    }
    if stderr.contains("Get Auth Capabilities error") || stderr.contains("Error issuing Get Channel Authentication Capabilities") {
        return BmcError::Unreachable { address, source: "no answer to RMCP+ (UDP)".into() };
    }
    let message = stderr
        .lines()
        .filter(|line| !line.starts_with("Loading IANA") && !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    BmcError::Failed { address, operation, message }
}

impl Ipmi {
    pub fn new(target: BmcTarget) -> Result<Ipmi, BmcError> {
        let (host, port) = host_and_port(&target.address)?;
        Ok(Ipmi { target, host, port })
    }

    /// Runs ipmitool with cipher suite 17 (SHA-256), then 3 (SHA-1, what older BMCs have)
    /// if the BMC refuses 17. Naming the suite skips ipmitool's own discovery, which waits a
    /// whole timeout on BMCs that do not answer it.
    async fn run(&self, operation: &'static str, arguments: &[&str]) -> Result<String, BmcError> {
        match self.run_with_suite(operation, arguments, "17").await {
            Err(BmcError::Failed { message, .. }) if message.contains("algorithm") || message.contains("cipher suite") => {
                self.run_with_suite(operation, arguments, "3").await
            }
            other => other,
        }
    }

    async fn run_with_suite(&self, operation: &'static str, arguments: &[&str], suite: &str) -> Result<String, BmcError> {
        let seconds = self.target.timeout.as_secs().max(1);
        let mut command = tokio::process::Command::new("ipmitool");
        command.args(["-I", "lanplus", "-C", suite, "-v", "-H", &self.host, "-p", &self.port.to_string()]);
        command.args(["-R", "1", "-N", &seconds.to_string()]);
        if let Some(username) = &self.target.username {
            command.args(["-U", username]);
        }
        command.arg("-E").env("IPMI_PASSWORD", self.target.password.as_deref().unwrap_or_default());
        command.args(arguments).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = command.spawn().map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => {
                BmcError::NotConfigured { reason: "ipmitool is not installed (apt-get install ipmitool)".to_owned() }
            }
            _ => BmcError::NotConfigured { reason: format!("running ipmitool: {error}") },
        })?;
        // ipmitool retries on its own; the cap covers its whole exchange.
        let cap = self.target.timeout * 3 + Duration::from_secs(2);
        let output = tokio::time::timeout(cap, child.wait_with_output())
            .await
            .map_err(|_| BmcError::Timeout { address: self.target.address.clone(), timeout: cap })?
            .map_err(|error| BmcError::NotConfigured { reason: format!("running ipmitool: {error}") })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(classify(&self.target.address, operation, &String::from_utf8_lossy(&output.stderr)));
        }
        Ok(stdout)
    }

    pub async fn power_state(&self) -> Result<PowerState, BmcError> {
        let output = self.run("reading the power state", &["chassis", "power", "status"]).await?;
        Ok(match output.lines().find_map(|line| line.trim().strip_prefix("Chassis Power is ")) {
            Some("on") => PowerState::On,
            Some("off") => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::Off => "soft",
            PowerAction::ForceOff => "off",
            PowerAction::Reset => "reset",
            PowerAction::Cycle => "cycle",
        };
        self.run("sending a power action", &["chassis", "power", verb]).await?;
        tracing::info!(address = %self.target.address, verb, "IPMI power action sent");
        Ok(())
    }

    pub async fn set_boot_device(&self, device: BootDevice, once: bool, mode: Option<BootMode>) -> Result<(), BmcError> {
        let device = match device {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cd => "cdrom",
        };
        let mut options = Vec::new();
        if !once {
            options.push("persistent");
        }
        if mode == Some(BootMode::Uefi) {
            options.push("efiboot");
        }
        let options = format!("options={}", options.join(","));
        let mut arguments = vec!["chassis", "bootdev", device];
        if options != "options=" {
            arguments.push(&options);
        }
        self.run("setting the boot device", &arguments).await?;
        Ok(())
    }

    /// IPMI has no standard command for virtual media (vendors add their own, or none).
    pub(crate) fn lacks_virtual_media(&self, operation: &'static str) -> BmcError {
        BmcError::Lacks {
            address: self.target.address.clone(),
            operation,
            missing: "IPMI has no standard virtual media; give the node its BMC's Redfish address (driver redfish)".to_owned(),
        }
    }

    /// What `mc info` says: the maker and product of the BMC. IPMI has no standard way to
    /// list a system's NICs.
    pub async fn facts(&self) -> Result<SystemFacts, BmcError> {
        let output = self.run("reading the BMC's identity", &["mc", "info"]).await?;
        let field = |name: &str| {
            output.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned()).filter(|value| !value.is_empty())
            })
        };
        Ok(SystemFacts {
            manufacturer: field("Manufacturer Name"),
            model: field("Product Name"),
            power_state: self.power_state().await.ok(),
            ..SystemFacts::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_error_output_are_understood() {
        assert_eq!(host_and_port("10.0.0.5").unwrap(), ("10.0.0.5".to_owned(), 623));
        assert_eq!(host_and_port("ipmi://127.0.0.1:9001").unwrap(), ("127.0.0.1".to_owned(), 9001));
        assert_eq!(host_and_port("[fe80::1]:700").unwrap(), ("fe80::1".to_owned(), 700));
        assert!(host_and_port("root:pw@10.0.0.5").is_err());
        let auth = classify(
            "b",
            "x",
            "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n",
        );
        assert!(matches!(auth, BmcError::Authentication { .. }), "{auth}");
        let dead = classify("b", "x", "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\n");
        assert!(matches!(dead, BmcError::Unreachable { .. }), "{dead}");
        let other = classify("b", "setting the boot device", "Loading IANA PEN Registry...\nSet Boot Device failed\n");
        assert_eq!(other.to_string(), "BMC b: setting the boot device: Set Boot Device failed");
    }
}
