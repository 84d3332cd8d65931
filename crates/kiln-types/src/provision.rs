//! Provisioning: what an operator asks of a node (deploy, undeploy, inspect, clean…) and
//! what the reconciler keeps about the operation under way; the agent protocol is in
//! `agent`, re-exported here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ProvisionState;

mod agent;
pub use agent::*;

/// How a deployed node runs its image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// The image's disk artifact is written to a local disk, which the node then boots.
    #[default]
    Disk,
    /// Diskless: the node boots the image's kernel and initramfs with its root in RAM.
    Live,
    /// Diskless, with a disk of its own: the node boots from a copy-on-write clone of the
    /// image's disk artifact, served by Kiln over NBD (BMI's network-mounted boot). The
    /// version's bytes are shared by every clone; a clone holds only what its node wrote.
    Network,
}

impl DeployMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployMode::Disk => "disk",
            DeployMode::Live => "live",
            DeployMode::Network => "network",
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
    /// Turn a network-mode node's clone into a new version of `image` (BMI's snapshot): the
    /// node is powered off, its changes become a layer over the version it runs, and it
    /// boots its clone again.
    Snapshot {
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
            Intent::Snapshot { .. } => "snapshot",
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
            Intent::Capture { .. } | Intent::Snapshot { .. } => &[Active],
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

/// Who holds a machine when: a deploy waiting for its start, or one under way or done that
/// has not been undeployed (`GET /v1/reservations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub node: String,
    /// The project holding the node (none: the operators').
    pub project: Option<String>,
    /// The image's key and version.
    pub image: String,
    pub version: i64,
    /// When the hold starts: the deploy's start, or when it was taken up.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<jiff::Timestamp>,
    /// When it ends (the node is undeployed then); none: until undeployed.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<jiff::Timestamp>,
    /// `true` while the deploy waits for its start.
    pub pending: bool,
    pub provision_state: ProvisionState,
}
