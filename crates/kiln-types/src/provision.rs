//! Provisioning: what an operator asks of a node (deploy, undeploy, inspect, clean…), what
//! the reconciler keeps about the operation under way, and the protocol between the server
//! and `kiln-agent` on the node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ProvisionState;
use crate::image::{Compression, ImageFormat};

/// How a deployed node runs its image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// The image's disk artifact is written to a local disk, which the node then boots.
    #[default]
    Disk,
    /// Diskless: the node boots the image's kernel and initramfs with its root in RAM.
    Live,
}

impl DeployMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployMode::Disk => "disk",
            DeployMode::Live => "live",
        }
    }
}

/// Which disk to deploy to, as Ironic's root device hints: every hint given must match.
/// With none, the smallest disk of at least 1 GiB that is not removable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RootDeviceHints {
    /// The kernel's name (`vda`, `sda`, `nvme0n1`), with or without `/dev/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A substring of the model, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The disk's size in GiB, rounded down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<u64>,
}

impl RootDeviceHints {
    /// Parses `name=vda`, `serial=…`, `model=…`, `size=…` (GiB) as the CLI takes them.
    pub fn add_from_text(&mut self, text: &str) -> Result<(), String> {
        let (key, value) = text.split_once('=').ok_or_else(|| format!("root device hint '{text}': expected KEY=VALUE"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("root device hint '{key}' has no value"));
        }
        match key.trim() {
            "name" => self.name = Some(value.trim_start_matches("/dev/").to_owned()),
            "serial" => self.serial = Some(value.to_owned()),
            "model" => self.model = Some(value.to_owned()),
            "size" | "size_gib" => {
                self.size_gib = Some(value.parse().map_err(|_| format!("root device hint size '{value}': expected a number of GiB"))?)
            }
            other => return Err(format!("unknown root device hint '{other}' (name, serial, model, size)")),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self == &RootDeviceHints::default()
    }
}

impl std::fmt::Display for RootDeviceHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (key, value) in [("name", &self.name), ("serial", &self.serial), ("model", &self.model)] {
            if let Some(value) = value {
                parts.push(format!("{key}={value}"));
            }
        }
        if let Some(size) = self.size_gib {
            parts.push(format!("size={size}"));
        }
        match parts.is_empty() {
            true => f.write_str("no root device hints"),
            false => write!(f, "root device hints {}", parts.join(" ")),
        }
    }
}

/// How much of a disk cleaning erases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CleanMode {
    /// Partition tables and filesystem signatures: seconds.
    #[default]
    Fast,
    /// Every block: discarded where the disk supports it, else zeroed.
    Full,
}

/// A deploy request as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// `IMAGE` or `IMAGE:VERSION` (a number or a tag; default the highest version).
    pub image: String,
    #[serde(default)]
    pub mode: DeployMode,
    #[serde(default)]
    pub root_device_hints: RootDeviceHints,
    /// Become `active` only when the deployed system calls back (`/boot/v1/phone-home`),
    /// rather than once the image is written and the node told to reboot.
    #[serde(default)]
    pub wait_for_callback: bool,
    /// Start the deploy at this time rather than now (the request stays pending until then).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<jiff::Timestamp>,
    /// End of the reservation: the node is undeployed and cleaned at this time.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<jiff::Timestamp>,
}

/// What an operator asks for. Handlers record it; the reconciler carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Intent {
    /// enroll → manageable.
    Manage,
    /// manageable → available.
    Provide,
    Inspect,
    Deploy(DeployTarget),
    /// active or deploy-failed → cleaning → available.
    Undeploy,
    Clean {
        mode: CleanMode,
    },
    /// Read the node's disk into a new version of `image` (BAAS's image update, BMI's
    /// snapshot); the node then boots its disk again.
    Capture {
        /// The image's key: `PROJECT/NAME`, or `NAME` for an image without a project.
        image: String,
    },
    /// A deploy that failed before it reached the machine (its image could not be fetched,
    /// or did not have the checksum given): the node records `deploy failed` with `reason`,
    /// as a deploy that failed later would, so that clients waiting on the state see it.
    FailDeploy {
        reason: String,
    },
    /// Stop the operation waiting on the node's agent (deploy, inspect, clean, capture):
    /// it ends in its failure state, as a timeout would, and the machine is powered off
    /// (a capture's boots its disk again).
    Abort,
}

impl Intent {
    /// The states a deploy may start from.
    pub const DEPLOYABLE_FROM: &'static [ProvisionState] = &[ProvisionState::Available, ProvisionState::DeployFailed];

    pub fn name(&self) -> &'static str {
        match self {
            Intent::Manage => "manage",
            Intent::Provide => "provide",
            Intent::Inspect => "inspect",
            Intent::Deploy(_) => "deploy",
            Intent::Undeploy => "undeploy",
            Intent::Clean { .. } => "clean",
            Intent::Capture { .. } => "capture",
            Intent::FailDeploy { .. } => "fail-deploy",
            Intent::Abort => "abort",
        }
    }

    /// The states a node must be in for this request to be taken; anything else is a
    /// conflict, answered at once.
    pub fn allowed_from(&self) -> &'static [ProvisionState] {
        use ProvisionState::*;
        match self {
            Intent::Manage => &[Enroll, Discovered, InspectFailed, CleanFailed],
            Intent::Provide => &[Manageable],
            Intent::Inspect => &[Manageable, Available, InspectFailed],
            Intent::Deploy(_) | Intent::FailDeploy { .. } => Intent::DEPLOYABLE_FROM,
            Intent::Undeploy => &[Active, DeployFailed],
            Intent::Clean { .. } => &[Manageable, Available, CleanFailed],
            Intent::Capture { .. } => &[Active],
            Intent::Abort => &[WaitAgent, Inspecting, Cleaning, Capturing],
        }
    }
}

/// The image a deploy writes or boots, resolved when the request is taken so that a tag
/// moving later does not change a deploy under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployTarget {
    /// The image's key: `PROJECT/NAME`, or `NAME` for an image without a project.
    pub image: String,
    pub version: i64,
    pub mode: DeployMode,
    #[serde(default)]
    pub root_device_hints: RootDeviceHints,
    #[serde(default)]
    pub wait_for_callback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<jiff::Timestamp>,
}

impl DeployTarget {
    /// When the deploy may start, in milliseconds since the epoch (0: at once).
    pub fn start_millis(&self) -> i64 {
        self.start_at.map_or(0, |at| at.as_millisecond())
    }

    /// When the reservation ends, in milliseconds since the epoch.
    pub fn end_millis(&self) -> Option<i64> {
        self.end_at.map(|at| at.as_millisecond())
    }
}

/// What the agent reports while it works.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// What it is doing: `downloading`, `writing`, `flushing`, `erasing`, `inspecting`.
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// Bytes per second over the last interval.
    pub rate: Option<u64>,
}

word_enum! {
    /// Where a node is inside its provisioning state: what the lifecycle waits for next.
    pub enum ProvisionStep {
        /// A step the reconciler carries out while holding the lease; nothing waits in it.
        Powering = "powering",
        /// Waiting for the agent: its first heartbeat, then its result.
        Agent = "agent",
        /// Waiting for the deployed system to call back.
        WaitCallback = "wait-callback",
    }
}

/// A node's provisioning as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProvisionStatus {
    pub node: String,
    pub provision_state: ProvisionState,
    pub maintenance: bool,
    /// What the state waits for next (`powering`, `agent`, `wait-callback`).
    pub step: Option<ProvisionStep>,
    /// A request recorded and not yet taken up by the reconciler.
    pub pending: Option<Intent>,
    /// The deploy under way, or the last one.
    pub target: Option<DeployTarget>,
    pub progress: Option<Progress>,
    /// Why the node is in a failure state.
    pub last_error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub state_entered_at: Option<jiff::Timestamp>,
    /// When the current waiting state times out.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub agent_seen_at: Option<jiff::Timestamp>,
    /// The server replica carrying out the node's operation.
    pub owner: Option<String>,
}

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

/// How the operation under way ends: what cleaning erases and which state it returns to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    #[serde(default)]
    pub clean_mode: CleanMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<ProvisionState>,
    /// The key of the image a capture adds a version to (`PROJECT/NAME`, or `NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_image: Option<String>,
}

/// What the store keeps of a node's provisioning: the reconciler's input. Times are
/// milliseconds since the epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProvisionRecord {
    pub intent: Option<Intent>,
    pub target: Option<DeployTarget>,
    pub operation: Operation,
    pub step: Option<ProvisionStep>,
    /// Bumped for every command handed to an agent, so a result names what it answers.
    pub command_id: u64,
    pub has_agent_token: bool,
    pub agent_seen_at: Option<i64>,
    pub progress: Option<Progress>,
    pub agent_result: Option<AgentResult>,
    pub callback_at: Option<i64>,
    pub last_error: Option<String>,
    pub state_entered_at: i64,
    pub deadline: Option<i64>,
    pub due_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<i64>,
}

/// What happens to the agent token in a transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenChange {
    #[default]
    Keep,
    /// A new token: an agent is about to boot.
    Mint,
    /// The agent's work is over; its token is no longer accepted.
    Clear,
}

/// One step of the reconciler, as the store applies it in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: ProvisionState,
    pub step: Option<ProvisionStep>,
    pub target: Option<DeployTarget>,
    pub operation: Operation,
    pub token: TokenChange,
    /// Hand the agent a new command (bumps `command_id`).
    pub new_command: bool,
    pub deadline: Option<i64>,
    pub due_at: Option<i64>,
    pub last_error: Option<String>,
    pub consume_intent: bool,
    pub consume_result: bool,
    /// Hold the lease after this step: the same replica carries on at once.
    pub keep_lease: bool,
    /// Inspection's findings, merged into the node's properties.
    pub inventory: Option<HardwareInventory>,
    /// Why, for the event log and the server's log.
    pub reason: String,
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

/// What an agent's boot token is exchanged for: the session token it uses from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentSession {
    pub token: String,
}
