//! What the node agent is told on each heartbeat: a pure function of the node's state and
//! provisioning record (and, for a deploy, the artifact to write).

use kiln_types::ProvisionState;
use kiln_types::node::BootInterface;
use kiln_types::provision::{AgentArtifact, AgentCommand, ProvisionRecord, Then};

/// How often an agent with nothing to do asks again.
pub const IDLE_HEARTBEAT_SECONDS: u32 = 5;

/// The command for an agent on a node in `state`. `artifact` is the deploy's disk image,
/// resolved by the caller. An agent whose command has a result recorded is told to wait: the
/// reconciler decides what comes next, and the token ends with the operation.
/// `capture_path` is where a capture uploads to. An agent that booted from virtual media
/// powers off where another reboots: its medium must be ejected before the node boots
/// again, and the reconciler then powers it on from its disk.
pub fn agent_command(
    state: ProvisionState,
    record: &ProvisionRecord,
    artifact: Option<AgentArtifact>,
    capture_path: &str,
    boot_interface: BootInterface,
) -> AgentCommand {
    let wait = AgentCommand::Wait { seconds: IDLE_HEARTBEAT_SECONDS };
    let reboot = match boot_interface {
        BootInterface::Pxe => Then::Reboot,
        BootInterface::VirtualMedia => Then::PowerOff,
    };
    if record.step != Some(kiln_types::provision::ProvisionStep::Agent) || record.agent_result.is_some() {
        return wait;
    }
    let id = record.command_id;
    match state {
        ProvisionState::WaitAgent => match (artifact, &record.target) {
            (Some(artifact), Some(target)) => {
                AgentCommand::Deploy { id, artifact, root_device_hints: target.root_device_hints.clone(), then: reboot }
            }
            _ => wait,
        },
        ProvisionState::Inspecting => AgentCommand::Inspect { id, then: Then::PowerOff },
        ProvisionState::Cleaning => AgentCommand::Clean { id, mode: record.operation.clean_mode, then: Then::PowerOff },
        ProvisionState::Capturing => AgentCommand::Capture {
            id,
            upload_path: capture_path.to_owned(),
            root_device_hints: record.target.as_ref().map(|target| target.root_device_hints.clone()).unwrap_or_default(),
            then: reboot,
        },
        _ => wait,
    }
}
