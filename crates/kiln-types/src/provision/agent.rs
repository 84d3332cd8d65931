//! The protocol between the server and `kiln-agent` on the node: heartbeats, the commands
//! the server answers them with, results, what inspection finds, and how the agent chooses
//! the disk it writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{CleanMode, Progress, RootDeviceHints};
use crate::image::{Compression, ImageFormat};

/// The agent protocol: what the agent sends on every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// The command the agent is carrying out, if any.
    pub running: Option<u64>,
    pub progress: Option<Progress>,
}

/// An artifact for the agent to fetch: where, how big, how to check and unpack it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentArtifact {
    /// Relative to the server URL the agent was booted with.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub format: ImageFormat,
    pub compression: Option<Compression>,
    /// Where the artifact's [`BlockMap`] is, for a raw uncompressed artifact: the agent then
    /// fetches and writes only the chunks that hold data, several at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_path: Option<String>,
}

/// Which chunks of a raw artifact hold data, with the SHA-256 of each (what bmaptool's bmap
/// is to an image). The server makes it from the stored blob after checking the blob's own
/// SHA-256, so an agent that checks every chunk it writes against the map has checked the
/// image. Chunks not listed are all zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BlockMap {
    /// The artifact's SHA-256, which the map was made from.
    pub sha256: String,
    pub size: u64,
    pub chunk_size: u64,
    /// The chunks with a non-zero byte, in order.
    pub chunks: Vec<MappedChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MappedChunk {
    /// The chunk's number: it starts at `index * chunk_size`.
    pub index: u64,
    pub sha256: String,
}

impl BlockMap {
    /// The chunk size maps are made with: small enough to skip the gaps between a
    /// filesystem's metadata groups, large enough to keep the map small (4 KiB of JSON per
    /// 64 MiB of data).
    pub const CHUNK_SIZE: u64 = 1 << 20;

    /// The byte range of chunk `index` (the last one may be short).
    pub fn chunk_range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// The bytes of data the map lists.
    pub fn data_bytes(&self) -> u64 {
        self.chunks.iter().map(|chunk| self.chunk_range(chunk.index).end - self.chunk_range(chunk.index).start).sum()
    }

    /// Runs of consecutive data chunks, as (first chunk's position in `chunks`, count), none
    /// longer than `longest` chunks: the pieces fetched with one range request each.
    pub fn runs(&self, longest: usize) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (position, chunk) in self.chunks.iter().enumerate() {
            match runs.last_mut() {
                Some((first, count)) if *count < longest && self.chunks[*first + *count - 1].index + 1 == chunk.index => *count += 1,
                _ => runs.push((position, 1)),
            }
        }
        runs
    }

    /// Checks the map is whole and about the artifact it claims to be.
    pub fn check(&self, sha256: &str, size: u64) -> Result<(), String> {
        if self.sha256 != sha256 || self.size != size {
            return Err(format!("the map is of {} ({} bytes), not of {sha256} ({size} bytes)", self.sha256, self.size));
        }
        if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(4096) {
            return Err(format!("chunk size {} is not a positive multiple of 4096", self.chunk_size));
        }
        let count = size.div_ceil(self.chunk_size);
        let mut previous: Option<u64> = None;
        for chunk in &self.chunks {
            if chunk.index >= count || previous.is_some_and(|p| p >= chunk.index) {
                return Err(format!("chunk {} is out of order or past the end ({count} chunks)", chunk.index));
            }
            previous = Some(chunk.index);
        }
        Ok(())
    }
}

/// What the server tells an agent to do; the answer to every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AgentCommand {
    /// Nothing to do now; heartbeat again after this long.
    Wait {
        seconds: u32,
    },
    Inspect {
        id: u64,
        then: Then,
    },
    Deploy {
        id: u64,
        artifact: AgentArtifact,
        root_device_hints: RootDeviceHints,
        then: Then,
    },
    Clean {
        id: u64,
        mode: CleanMode,
        then: Then,
    },
    /// Read the root device and send it, zstd-compressed, with PUT to `upload_path` on the
    /// server's API address.
    Capture {
        id: u64,
        upload_path: String,
        root_device_hints: RootDeviceHints,
        then: Then,
    },
    /// The operation is over (or was never the agent's): power off.
    PowerOff,
}

/// What the agent does once the server has accepted a command's successful result: the
/// server decides it with the command, so the agent needs no further round trip (and no
/// token, which the result ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Then {
    Reboot,
    PowerOff,
}

impl AgentCommand {
    pub fn id(&self) -> Option<u64> {
        match self {
            AgentCommand::Inspect { id, .. }
            | AgentCommand::Deploy { id, .. }
            | AgentCommand::Clean { id, .. }
            | AgentCommand::Capture { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// How a command ended, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentResult {
    pub id: u64,
    /// `None` on success; the reason otherwise.
    pub error: Option<String>,
    /// Inspection's findings.
    pub inventory: Option<HardwareInventory>,
    /// The disk a deploy wrote.
    pub root_device: Option<String>,
}

/// What inspection finds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HardwareInventory {
    pub cpu_count: u32,
    pub cpu_model: Option<String>,
    pub cpu_arch: String,
    pub memory_bytes: u64,
    pub disks: Vec<DiskInfo>,
    pub interfaces: Vec<NicInfo>,
    /// DMI: `sys_vendor`, `product_name`, `product_serial`, `product_uuid`, `bios_version`…
    pub dmi: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: bool,
    pub removable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NicInfo {
    pub name: String,
    pub mac: String,
    pub speed_mbps: Option<u32>,
    pub carrier: bool,
}

/// Chooses the disk the hints name among `disks`: every given hint must match. Without
/// hints, the smallest non-removable disk of at least 1 GiB (Ironic's rule: skip the small
/// flash modules some servers carry), or the largest non-removable one if none is that big.
pub fn choose_root_device<'a>(disks: &'a [DiskInfo], hints: &RootDeviceHints) -> Option<&'a DiskInfo> {
    const GIB: u64 = 1 << 30;
    let matches = |disk: &&DiskInfo| {
        hints.name.as_deref().is_none_or(|name| disk.name == name.trim_start_matches("/dev/"))
            && hints.serial.as_deref().is_none_or(|serial| disk.serial.as_deref() == Some(serial))
            && hints
                .model
                .as_deref()
                .is_none_or(|model| disk.model.as_deref().is_some_and(|m| m.to_lowercase().contains(&model.to_lowercase())))
            && hints.size_gib.is_none_or(|size| disk.size_bytes / GIB == size)
    };
    let mut candidates: Vec<&DiskInfo> = disks.iter().filter(matches).collect();
    candidates.sort_by_key(|disk| (disk.size_bytes, disk.name.clone()));
    if !hints.is_empty() {
        return candidates.into_iter().next();
    }
    candidates.retain(|disk| !disk.removable && disk.size_bytes > 0);
    candidates.iter().find(|disk| disk.size_bytes >= GIB).or(candidates.last()).copied()
}

/// What an agent's boot token is exchanged for: the session token it uses from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentSession {
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64, serial: &str, model: &str) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            size_bytes: gib << 30,
            model: Some(model.into()),
            serial: Some(serial.into()),
            rotational: false,
            removable: false,
        }
    }

    #[test]
    fn root_device_hints_choose_as_ironic_does() {
        let disks = vec![disk("sda", 500, "S1", "Samsung SSD"), disk("sdb", 100, "S2", "WDC"), disk("sdc", 0, "S3", "USB stick")];
        let pick = |hints: &RootDeviceHints| choose_root_device(&disks, hints).map(|d| d.name.as_str());
        assert_eq!(pick(&RootDeviceHints::default()), Some("sdb"), "smallest of at least 1 GiB");
        let mut hints = RootDeviceHints::default();
        hints.add_from_text("model=samsung").unwrap();
        assert_eq!(pick(&hints), Some("sda"));
        hints.add_from_text("serial=S2").unwrap();
        assert_eq!(pick(&hints), None, "every hint must match");
        let mut hints = RootDeviceHints::default();
        hints.add_from_text("name=/dev/sdc").unwrap();
        assert_eq!(pick(&hints), Some("sdc"), "a named disk is taken whatever its size");
        let mut hints = RootDeviceHints::default();
        hints.add_from_text("size=500").unwrap();
        assert_eq!(pick(&hints), Some("sda"));
        assert!(hints.add_from_text("colour=red").unwrap_err().contains("unknown root device hint 'colour'"));
        assert_eq!(hints.to_string(), "root device hints size=500");
        let small = vec![disk("vda", 0, "S1", "virtio"), disk("vdb", 0, "S2", "virtio")];
        let small: Vec<DiskInfo> = small.into_iter().enumerate().map(|(i, d)| DiskInfo { size_bytes: (i as u64 + 1) << 27, ..d }).collect();
        assert_eq!(
            choose_root_device(&small, &RootDeviceHints::default()).map(|d| d.name.as_str()),
            Some("vdb"),
            "none of 1 GiB: the largest"
        );
        assert!(hints.add_from_text("size=big").unwrap_err().contains("GiB"));
    }
}
