//! The lab driver: a QEMU machine of the test lab, power-controlled through its QMP socket
//! (the BMC address is the socket's path). "Off" is a stopped machine, reset so that "on"
//! boots it from the start, as a real machine's firmware would.
//!
//! Virtual media, for machines the lab starts with a CD drive (QEMU device
//! [`CD_DEVICE`], first in their boot order): as a BMC does, the driver fetches the image
//! from its URL, here into a file beside the QMP socket, and puts it in the drive
//! (`blockdev-change-medium`); the URL is kept beside it, for the drive's status.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::{BmcError, BmcTarget, BootDevice, BootMode, PowerAction, PowerState, SystemFacts, VirtualDrive};

/// The QEMU device id of a lab machine's CD drive.
pub const CD_DEVICE: &str = "kiln-cd";

/// The largest image the lab BMC fetches: boot media are tens of MiB.
const MAX_MEDIUM_BYTES: u64 = 1 << 30;

/// Where a lab machine offers its serial line: a QEMU socket beside its QMP socket
/// (`…/qmp-X.sock` → `…/serial-X.sock`), which one client at a time reads and types into.
pub fn serial_socket(qmp_socket: &Path) -> Option<PathBuf> {
    let name = qmp_socket.file_name()?.to_str()?;
    Some(qmp_socket.with_file_name(format!("serial-{}", name.strip_prefix("qmp-")?)))
}

/// The serial socket of the lab machine whose BMC address (its QMP socket) is `address`.
pub fn serial_socket_of_address(address: &str) -> Option<PathBuf> {
    let socket = Path::new(address.trim_start_matches("qmp://").trim_start_matches("unix:"));
    if socket.is_absolute() { serial_socket(socket) } else { None }
}

#[derive(Debug, Clone)]
pub struct Lab {
    target: BmcTarget,
    socket: PathBuf,
}

/// One QMP session: greeting read and capabilities negotiated.
struct Session {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Lab {
    pub fn new(target: BmcTarget) -> Result<Lab, BmcError> {
        let socket = PathBuf::from(target.address.trim_start_matches("qmp://").trim_start_matches("unix:"));
        if !socket.is_absolute() {
            return Err(BmcError::NotConfigured { reason: format!("'{}' is not the absolute path of a QMP socket", target.address) });
        }
        Ok(Lab { target, socket })
    }

    fn unreachable(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BmcError {
        BmcError::Unreachable { address: self.target.address.clone(), source: source.into() }
    }

    async fn session(&self) -> Result<Session, BmcError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|error| self.unreachable(error))?;
        let (read, writer) = stream.into_split();
        let mut session = Session { reader: BufReader::new(read), writer };
        self.read_reply(&mut session, "greeting").await?;
        self.execute_in(&mut session, "qmp_capabilities", json!({})).await?;
        Ok(session)
    }

    /// The next line that is not an asynchronous event.
    async fn read_reply(&self, session: &mut Session, operation: &'static str) -> Result<Value, BmcError> {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(self.target.timeout, session.reader.read_line(&mut line))
                .await
                .map_err(|_| BmcError::Timeout { address: self.target.address.clone(), timeout: self.target.timeout })?
                .map_err(|error| self.unreachable(error))?;
            if read == 0 {
                return Err(self.unreachable("QEMU closed the QMP socket"));
            }
            let value: Value = serde_json::from_str(&line).map_err(|error| BmcError::Malformed {
                address: self.target.address.clone(),
                operation,
                message: error.to_string(),
            })?;
            if value.get("event").is_none() {
                return Ok(value);
            }
        }
    }

    async fn execute_in(&self, session: &mut Session, command: &'static str, arguments: Value) -> Result<Value, BmcError> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|map| !map.is_empty()) {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        session.writer.write_all(text.as_bytes()).await.map_err(|error| self.unreachable(error))?;
        let reply = self.read_reply(session, command).await?;
        if let Some(error) = reply.get("error") {
            let message = error.get("desc").and_then(Value::as_str).unwrap_or("error").to_owned();
            return Err(BmcError::Failed { address: self.target.address.clone(), operation: command, message });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    async fn run(&self, commands: &[&'static str]) -> Result<Value, BmcError> {
        let mut session = self.session().await?;
        let mut last = Value::Null;
        for command in commands {
            last = self.execute_in(&mut session, command, json!({})).await?;
        }
        Ok(last)
    }

    async fn status(&self) -> Result<String, BmcError> {
        let status = self.run(&["query-status"]).await?;
        Ok(status.get("status").and_then(Value::as_str).unwrap_or_default().to_owned())
    }

    pub async fn power_state(&self) -> Result<PowerState, BmcError> {
        Ok(match self.status().await?.as_str() {
            "running" => PowerState::On,
            "paused" | "prelaunch" | "shutdown" | "guest-panicked" | "internal-error" => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let commands: &[&'static str] = match action {
            // From "shutdown" (the guest powered off), a reset is needed before running again.
            PowerAction::On if self.status().await? == "shutdown" => &["system_reset", "cont"],
            PowerAction::On => &["cont"],
            PowerAction::Off => &["system_powerdown"],
            PowerAction::ForceOff => &["stop", "system_reset"],
            PowerAction::Reset => &["system_reset"],
            PowerAction::Cycle => &["stop", "system_reset", "cont"],
        };
        self.run(commands).await?;
        tracing::info!(address = %self.target.address, ?action, "lab machine power action");
        Ok(())
    }

    /// Lab machines have no boot override: they boot from their CD drive while it holds a
    /// medium (it is first in their boot order), else from the network. So "the network" is
    /// an empty drive, and "the CD, once" a medium in it until it is ejected.
    pub async fn set_boot_device(&self, device: BootDevice, _once: bool, _mode: Option<BootMode>) -> Result<(), BmcError> {
        match device {
            BootDevice::Pxe => match self.cd_drive().await? {
                Some(drive) if drive.get("inserted").is_some() => self.eject_medium().await,
                _ => Ok(()),
            },
            BootDevice::Cd if self.cd_drive().await?.is_some() => Ok(()),
            BootDevice::Cd => Err(self.lacks_virtual_media("booting from CD")),
            BootDevice::Disk => {
                Err(BmcError::Unsupported { address: self.target.address.clone(), operation: "booting a lab machine from disk" })
            }
        }
    }

    fn lacks_virtual_media(&self, operation: &'static str) -> BmcError {
        BmcError::Lacks {
            address: self.target.address.clone(),
            operation,
            missing: format!("the lab machine has no CD drive (QEMU device '{CD_DEVICE}')"),
        }
    }

    /// Where the fetched medium and its URL are kept: beside the QMP socket.
    fn medium_files(&self) -> (PathBuf, PathBuf) {
        let stem = self.socket.file_stem().and_then(|stem| stem.to_str()).unwrap_or("machine");
        let stem = stem.strip_prefix("qmp-").unwrap_or(stem);
        (self.socket.with_file_name(format!("medium-{stem}.iso")), self.socket.with_file_name(format!("medium-{stem}.url")))
    }

    /// The CD drive's entry in `query-block`, if the machine has one.
    async fn cd_drive(&self) -> Result<Option<Value>, BmcError> {
        let blocks = self.run(&["query-block"]).await?;
        Ok(blocks.as_array().into_iter().flatten().find(|block| block.get("qdev").and_then(Value::as_str) == Some(CD_DEVICE)).cloned())
    }

    pub async fn virtual_media(&self) -> Result<VirtualDrive, BmcError> {
        let drive = self.cd_drive().await?.ok_or_else(|| self.lacks_virtual_media("reading virtual media"))?;
        let inserted = drive.get("inserted").is_some();
        let image = if inserted { std::fs::read_to_string(self.medium_files().1).ok() } else { None };
        Ok(VirtualDrive { device: CD_DEVICE.to_owned(), media_types: vec!["CD".to_owned()], image, inserted })
    }

    pub async fn insert_virtual_media(&self, image: &str) -> Result<VirtualDrive, BmcError> {
        let current = self.virtual_media().await.map_err(|error| match error {
            BmcError::Lacks { .. } => self.lacks_virtual_media("inserting virtual media"),
            other => other,
        })?;
        let inserted = VirtualDrive { image: Some(image.to_owned()), inserted: true, ..current.clone() };
        if current.inserted && current.image.as_deref() == Some(image) {
            return Ok(inserted);
        }
        let (medium, url_file) = self.medium_files();
        self.fetch(image, &medium).await?;
        let mut session = self.session().await?;
        // `force`: a guest that has the CD mounted has locked its tray.
        let arguments = json!({
            "id": CD_DEVICE, "filename": medium.display().to_string(), "format": "raw", "read-only-mode": "read-only", "force": true,
        });
        self.execute_in(&mut session, "blockdev-change-medium", arguments).await?;
        std::fs::write(&url_file, image).map_err(|source| self.medium_store(&url_file, source))?;
        let image = kiln_types::bmc::redacted_medium_url(image);
        tracing::info!(address = %self.target.address, %image, "lab machine: medium inserted");
        Ok(inserted)
    }

    pub async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        if self.cd_drive().await?.is_none() {
            return Err(self.lacks_virtual_media("ejecting virtual media"));
        }
        self.eject_medium().await
    }

    /// Empties the drive the caller knows is there, and forgets the fetched medium.
    async fn eject_medium(&self) -> Result<(), BmcError> {
        let mut session = self.session().await?;
        self.execute_in(&mut session, "eject", json!({ "id": CD_DEVICE, "force": true })).await?;
        let (medium, url_file) = self.medium_files();
        let _ = std::fs::remove_file(medium);
        let _ = std::fs::remove_file(url_file);
        Ok(())
    }

    fn medium_store(&self, path: &Path, source: std::io::Error) -> BmcError {
        BmcError::MediumStore { address: self.target.address.clone(), path: path.to_owned(), source }
    }

    /// Fetches `url` into `path` as a BMC would. The lab BMC runs in the server's process, so
    /// it does not fetch from where a BMC could not reach and the server could (loopback,
    /// link-local, unspecified, multicast addresses), follows no redirect and uses no proxy.
    /// The bytes go to a temporary file beside `path`, renamed into place when whole and
    /// removed otherwise (also when the request is dropped).
    async fn fetch(&self, url: &str, path: &Path) -> Result<(), BmcError> {
        let refused = |reason: String| BmcError::ImageRefused { address: self.target.address.clone(), url: url.to_owned(), reason };
        let fetch_error = |source: Box<dyn std::error::Error + Send + Sync>| BmcError::ImageFetch {
            address: self.target.address.clone(),
            url: url.to_owned(),
            source,
        };
        let parsed = reqwest::Url::parse(url).map_err(|error| refused(format!("not a URL ({error})")))?;
        let host = parsed.host_str().ok_or_else(|| refused("the URL names no host".to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addresses: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|error| fetch_error(Box::new(error)))?.collect();
        if let Some(address) = addresses.iter().find(|address| !fetchable(address.ip())) {
            return Err(refused(format!("{host} is {}, where the lab BMC does not fetch from", address.ip())));
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .resolve_to_addrs(host, &addresses)
            .build()
            .map_err(|error| fetch_error(Box::new(error)))?;
        let mut response = client.get(url).send().await.map_err(|error| fetch_error(Box::new(error)))?;
        if !response.status().is_success() {
            return Err(BmcError::ImageUnavailable {
                address: self.target.address.clone(),
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let directory = path.parent().unwrap_or(Path::new("."));
        let partial = tempfile::NamedTempFile::new_in(directory).map_err(|source| self.medium_store(directory, source))?;
        let std_file = partial.as_file().try_clone().map_err(|source| self.medium_store(partial.path(), source))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|error| fetch_error(Box::new(error)))? {
            written += chunk.len() as u64;
            if written > MAX_MEDIUM_BYTES {
                return Err(refused(format!("the image is larger than {MAX_MEDIUM_BYTES} bytes")));
            }
            file.write_all(&chunk).await.map_err(|source| self.medium_store(partial.path(), source))?;
        }
        file.sync_all().await.map_err(|source| self.medium_store(partial.path(), source))?;
        partial.persist(path).map_err(|error| self.medium_store(path, error.error))?;
        Ok(())
    }

    pub async fn facts(&self) -> Result<SystemFacts, BmcError> {
        Ok(SystemFacts {
            manufacturer: Some("QEMU".to_owned()),
            model: Some("Kiln lab machine".to_owned()),
            power_state: Some(self.power_state().await?),
            ..SystemFacts::default()
        })
    }
}

/// Whether the lab BMC fetches images from `address`: not from this host's own loopback,
/// link-local or unspecified addresses, nor multicast, which a BMC on its own network would
/// not reach as the server does.
fn fetchable(address: std::net::IpAddr) -> bool {
    match address {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast())
        }
        std::net::IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped().map(std::net::IpAddr::V4);
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()) && mapped.is_none_or(fetchable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_bmc_fetches_only_from_where_a_bmc_could() {
        for address in ["10.77.0.1", "192.168.1.5", "2001:db8::1", "fd00::1"] {
            assert!(fetchable(address.parse().unwrap()), "{address}");
        }
        for address in ["127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(!fetchable(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn the_serial_socket_sits_beside_the_qmp_socket() {
        assert_eq!(serial_socket_of_address("/run/lab/qmp-525400aa0001.sock"), Some(PathBuf::from("/run/lab/serial-525400aa0001.sock")));
        assert_eq!(serial_socket_of_address("unix:/run/lab/qmp-x.sock"), Some(PathBuf::from("/run/lab/serial-x.sock")));
        assert_eq!(serial_socket_of_address("relative/qmp-x.sock"), None);
        assert_eq!(serial_socket_of_address("/run/lab/monitor.sock"), None);
    }
}
