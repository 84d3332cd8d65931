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

    /// Lab machines boot from the network, or first from their CD drive while it holds a
    /// medium: there is nothing else to choose.
    pub async fn set_boot_device(&self, device: BootDevice, _once: bool, _mode: Option<BootMode>) -> Result<(), BmcError> {
        match device {
            BootDevice::Pxe => Ok(()),
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

    pub async fn insert_virtual_media(&self, image: &str) -> Result<(), BmcError> {
        const OPERATION: &str = "inserting virtual media";
        if self.cd_drive().await?.is_none() {
            return Err(self.lacks_virtual_media(OPERATION));
        }
        let (medium, url_file) = self.medium_files();
        self.fetch(image, &medium).await?;
        let mut session = self.session().await?;
        let arguments =
            json!({ "id": CD_DEVICE, "filename": medium.display().to_string(), "format": "raw", "read-only-mode": "read-only" });
        self.execute_in(&mut session, "blockdev-change-medium", arguments).await?;
        std::fs::write(&url_file, image).map_err(|error| self.failed(OPERATION, &error))?;
        tracing::info!(address = %self.target.address, image, "lab machine: medium inserted");
        Ok(())
    }

    pub async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        if self.cd_drive().await?.is_none() {
            return Err(self.lacks_virtual_media("ejecting virtual media"));
        }
        let mut session = self.session().await?;
        self.execute_in(&mut session, "eject", json!({ "id": CD_DEVICE, "force": true })).await?;
        let (medium, url_file) = self.medium_files();
        let _ = std::fs::remove_file(medium);
        let _ = std::fs::remove_file(url_file);
        Ok(())
    }

    fn failed(&self, operation: &'static str, error: &dyn std::fmt::Display) -> BmcError {
        BmcError::Failed { address: self.target.address.clone(), operation, message: error.to_string() }
    }

    /// Fetches `url` into `path` as a BMC would, refusing what is not a success or is too
    /// large; a partial file is never left under `path`.
    async fn fetch(&self, url: &str, path: &Path) -> Result<(), BmcError> {
        const OPERATION: &str = "fetching the virtual media image";
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|error| self.failed(OPERATION, &error))?;
        let mut response = client.get(url).send().await.map_err(|error| self.failed(OPERATION, &error))?;
        if !response.status().is_success() {
            return Err(BmcError::Refused {
                address: self.target.address.clone(),
                operation: OPERATION,
                status: response.status().as_u16(),
                message: format!("{url} answered {}", response.status()),
            });
        }
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(|error| self.failed(OPERATION, &error))?;
        let mut written = 0u64;
        let copied: Result<(), BmcError> = async {
            while let Some(chunk) = response.chunk().await.map_err(|error| self.failed(OPERATION, &error))? {
                written += chunk.len() as u64;
                if written > MAX_MEDIUM_BYTES {
                    return Err(self.failed(OPERATION, &format!("{url} is larger than {MAX_MEDIUM_BYTES} bytes")));
                }
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(|error| self.failed(OPERATION, &error))?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|error| self.failed(OPERATION, &error))?;
            tokio::fs::rename(&partial, path).await.map_err(|error| self.failed(OPERATION, &error))
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        copied
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_socket_sits_beside_the_qmp_socket() {
        assert_eq!(serial_socket_of_address("/run/lab/qmp-525400aa0001.sock"), Some(PathBuf::from("/run/lab/serial-525400aa0001.sock")));
        assert_eq!(serial_socket_of_address("unix:/run/lab/qmp-x.sock"), Some(PathBuf::from("/run/lab/serial-x.sock")));
        assert_eq!(serial_socket_of_address("relative/qmp-x.sock"), None);
        assert_eq!(serial_socket_of_address("/run/lab/monitor.sock"), None);
    }
}
