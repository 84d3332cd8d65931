//! The lab driver: a QEMU machine of the test lab, power-controlled through its QMP socket
//! (the BMC address is the socket's path). "Off" is a stopped machine, reset so that "on"
//! boots it from the start, as a real machine's firmware would.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::{BmcError, BmcTarget, BootDevice, BootMode, PowerAction, PowerState, SystemFacts};

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

    /// Lab machines boot from the network, always: there is nothing else to choose.
    pub async fn set_boot_device(&self, device: BootDevice, _once: bool, _mode: Option<BootMode>) -> Result<(), BmcError> {
        match device {
            BootDevice::Pxe => Ok(()),
            BootDevice::Disk => {
                Err(BmcError::Unsupported { address: self.target.address.clone(), operation: "booting a lab machine from disk" })
            }
            BootDevice::Cd => {
                Err(BmcError::Unsupported { address: self.target.address.clone(), operation: "booting a lab machine from CD" })
            }
        }
    }

    /// Lab machines have no CD drive yet.
    pub(crate) fn lacks_virtual_media(&self, operation: &'static str) -> BmcError {
        BmcError::Lacks { address: self.target.address.clone(), operation, missing: "the lab machine has no CD drive".to_owned() }
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
