//! The lifecycle as a pure function: from a node, its provisioning record and the time, the
//! next step (what to do to the machine, and the state to record). No IO here, so every
//! path through the lifecycle is a table-driven test.

use std::time::Duration;

use kiln_types::ProvisionState;
use kiln_types::node::{BootInterface, Node};
use kiln_types::provision::{CleanMode, DeployMode, Intent, Operation, ProvisionRecord, ProvisionStep, TokenChange, Transition};

/// How long each waiting state may last.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// From powering a node on to the agent's first heartbeat.
    pub agent_boot_timeout: Duration,
    /// The longest silence from an agent that has called in.
    pub heartbeat_timeout: Duration,
    /// From the end of a deploy to the deployed system's callback, when one is awaited.
    pub callback_timeout: Duration,
    /// What undeploying erases.
    pub undeploy_clean_mode: CleanMode,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            agent_boot_timeout: Duration::from_secs(600),
            heartbeat_timeout: Duration::from_secs(120),
            callback_timeout: Duration::from_secs(900),
            undeploy_clean_mode: CleanMode::Fast,
        }
    }
}

/// What the reconciler does to the machine before recording a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Next boot from the network, then power on (or reset, if on): the agent or the live
    /// image boots.
    BootFromNetwork,
    /// Next boots from the local disk, where the BMC can say so (the boot script also hands
    /// over to the disk, so this is best effort).
    BootFromDisk,
    /// Power off, best effort: a node that failed should not keep running the ramdisk.
    PowerOff,
    /// Give the node a fresh copy-on-write clone of its deploy target's disk (network mode),
    /// replacing any it had.
    PrepareNetworkDisk,
    /// Remove the node's network disk, freeing its space (the image is untouched).
    RemoveNetworkDisk,
    /// Store the node's network disk's changes as a new image version (the snapshot
    /// request's image); the node is off.
    SnapshotNetworkDisk,
    /// A virtual-media node's [`Action::BootFromNetwork`]: make the boot medium of what the
    /// node boots now (the agent or its image, with its static network configuration),
    /// have the BMC insert it, boot from it once, then power on (or reset).
    BootFromVirtualMedia,
    /// Have the BMC eject the node's boot medium and remove the medium's file, best effort:
    /// nothing is to boot from it any more.
    EjectVirtualMedia,
    /// A virtual-media node's return to its disk after its agent (told to power off, so
    /// that it does not boot its medium again): once the node is off, its cloud-init seed
    /// in the drive when it has a static address, the next boot from disk where the BMC can
    /// say so, and power on.
    PowerOnFromDisk,
}

impl Action {
    /// Whether the step fails when this action does.
    pub fn required(self) -> bool {
        matches!(
            self,
            Action::BootFromNetwork
                | Action::BootFromVirtualMedia
                | Action::PrepareNetworkDisk
                | Action::RemoveNetworkDisk
                | Action::SnapshotNetworkDisk
        )
    }
}

/// The reconciler's next move for one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Carry out `actions` in order, then record `transition`; if a required action fails,
    /// record the operation's failure with the reason instead.
    Step { actions: Vec<Action>, transition: Box<Transition> },
    /// Nothing to do before this time (milliseconds since the epoch).
    Postpone(i64),
    /// Nothing to do until something is recorded for the node.
    Idle,
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// A transition that stays where the record is, changing nothing; callers set what moves.
fn stay(node: &Node, record: &ProvisionRecord, reason: impl Into<String>) -> Transition {
    Transition {
        state: node.provision_state,
        step: record.step,
        target: record.target.clone(),
        operation: record.operation.clone(),
        token: TokenChange::Keep,
        new_command: false,
        deadline: record.deadline,
        due_at: None,
        last_error: None,
        consume_intent: false,
        consume_result: false,
        keep_lease: false,
        inventory: None,
        reason: reason.into(),
    }
}

fn to(node: &Node, record: &ProvisionRecord, state: ProvisionState, step: Option<ProvisionStep>, reason: impl Into<String>) -> Transition {
    Transition { state, step, deadline: None, ..stay(node, record, reason) }
}

/// The failure state of the operation a node is in.
pub fn failure_state(state: ProvisionState) -> ProvisionState {
    use ProvisionState::*;
    match state {
        Deploying | WaitAgent | DeployFailed => DeployFailed,
        // A failed capture leaves the disk as it was: the node goes back to running it.
        Capturing | Active => Active,
        Inspecting | InspectFailed => InspectFailed,
        _ => CleanFailed,
    }
}

/// Ends the node's operation in its failure state with `reason`; the agent token dies.
pub fn failed(node: &Node, record: &ProvisionRecord, reason: impl Into<String>) -> Transition {
    let reason = reason.into();
    Transition {
        token: TokenChange::Clear,
        last_error: Some(reason.clone()),
        // An abort that came while the operation failed by itself has nothing left to stop;
        // kept, it would be dropped later with an error that hides this one.
        consume_intent: record.intent == Some(Intent::Abort),
        consume_result: true,
        ..to(node, record, failure_state(node.provision_state), None, reason)
    }
}

/// Starts an operation that boots the agent (or a live image): a `powering` step that the
/// same replica carries out at once, holding the lease.
fn start(node: &Node, record: &ProvisionRecord, state: ProvisionState, now: i64, agent: bool, reason: String) -> Transition {
    Transition {
        token: if agent { TokenChange::Mint } else { TokenChange::Clear },
        new_command: agent,
        due_at: Some(now),
        keep_lease: true,
        consume_intent: true,
        consume_result: true,
        ..to(node, record, state, Some(ProvisionStep::Powering), reason)
    }
}

/// The next step for `node`. `interrupted` names the replica whose lease expired while it
/// held the node: a `powering` step it was carrying out may or may not have happened, so
/// the operation fails with the reason rather than guessing.
pub fn plan(node: &Node, record: &ProvisionRecord, now: i64, interrupted: Option<&str>, settings: &LifecycleSettings) -> Decision {
    let decision = match plan_step(node, record, now, interrupted, settings) {
        // A node that becomes active with a reservation end is due again at that end.
        Decision::Step { actions, mut transition } if transition.state == ProvisionState::Active && transition.due_at.is_none() => {
            transition.due_at = transition.target.as_ref().and_then(|target| target.end_millis());
            Decision::Step { actions, transition }
        }
        decision => decision,
    };
    through_boot_interface(node, record, decision)
}

/// The decision for how `node` boots. The lifecycle is the same for every boot interface;
/// a virtual-media node boots from a medium where another boots from the network, and its
/// medium is ejected once nothing is to boot from it: before the node boots its disk, and
/// when the operation ends, unless the node goes on running an image from the medium (a
/// live or network-mode deploy, whose reboots boot the medium again).
fn through_boot_interface(node: &Node, record: &ProvisionRecord, decision: Decision) -> Decision {
    if node.boot_interface() != BootInterface::VirtualMedia {
        return decision;
    }
    let Decision::Step { mut actions, transition } = decision else { return decision };
    let on_disk_target = transition.target.as_ref().is_none_or(|target| target.mode == DeployMode::Disk);
    // The node goes back to its disk from its agent: a deploy or capture that ended (the
    // agent powers off rather than reboot), or a capture that failed (which boots the disk
    // again, where the network would be told to hand over to it).
    let back_to_disk = on_disk_target
        && record.step == Some(ProvisionStep::Agent)
        && matches!(node.provision_state, ProvisionState::WaitAgent | ProvisionState::Capturing)
        && matches!(
            (transition.state, transition.step),
            (ProvisionState::Active, _) | (ProvisionState::WaitAgent, Some(ProvisionStep::WaitCallback))
        );
    if back_to_disk {
        actions.retain(|action| !matches!(action, Action::BootFromNetwork | Action::BootFromDisk));
        actions.extend([Action::EjectVirtualMedia, Action::PowerOnFromDisk]);
        return Decision::Step { actions, transition };
    }
    for action in &mut actions {
        if *action == Action::BootFromNetwork {
            *action = Action::BootFromVirtualMedia;
        }
    }
    let boots_medium = actions.contains(&Action::BootFromVirtualMedia);
    let runs_from_medium = transition.target.as_ref().is_some_and(|target| target.mode != DeployMode::Disk)
        && matches!(transition.state, ProvisionState::Deploying | ProvisionState::WaitAgent | ProvisionState::Active);
    let operation_over = transition.token == TokenChange::Clear && !runs_from_medium;
    if !boots_medium && (operation_over || actions.contains(&Action::BootFromDisk)) {
        let before_disk = actions.iter().position(|action| *action == Action::BootFromDisk).unwrap_or(actions.len());
        actions.insert(before_disk, Action::EjectVirtualMedia);
    }
    Decision::Step { actions, transition }
}

fn plan_step(node: &Node, record: &ProvisionRecord, now: i64, interrupted: Option<&str>, settings: &LifecycleSettings) -> Decision {
    use ProvisionState::*;
    if node.maintenance {
        // Paused, deadlines included; looked at again in case maintenance ends.
        return Decision::Postpone(now + 5_000);
    }
    let step = record.step;
    if let (Some(previous), Some(ProvisionStep::Powering)) = (interrupted, step) {
        let reason = format!("interrupted: the server replica {previous} stopped while powering the node for {}", node.provision_state);
        return Decision::Step { actions: vec![], transition: Box::new(failed(node, record, reason)) };
    }
    // An abort ends a waiting operation as its deadline would; during a `powering` step it
    // waits for the step to finish (the lease holder is at the BMC).
    if record.intent == Some(Intent::Abort)
        && step != Some(ProvisionStep::Powering)
        && Intent::Abort.allowed_from().contains(&node.provision_state)
    {
        let operation = match node.provision_state {
            ProvisionState::WaitAgent => "deploy",
            ProvisionState::Inspecting => "inspection",
            ProvisionState::Capturing => "capture",
            _ => "cleaning",
        };
        let transition = Transition { consume_intent: true, ..failed(node, record, format!("{operation} aborted on request")) };
        return Decision::Step { actions: vec![after_failure(node)], transition: Box::new(transition) };
    }
    match node.provision_state {
        Deploying | Inspecting | Undeploying | Cleaning | Capturing if step == Some(ProvisionStep::Powering) => {
            let waiting = |state| Transition {
                deadline: Some(now + millis(settings.agent_boot_timeout)),
                due_at: Some(now + millis(settings.agent_boot_timeout)),
                ..to(node, record, state, Some(ProvisionStep::Agent), "node powered on to boot the agent")
            };
            let transition = match node.provision_state {
                Deploying if record.target.as_ref().is_some_and(|target| target.mode != DeployMode::Disk) => {
                    live_booted(node, record, now, settings)
                }
                Deploying => waiting(WaitAgent),
                Inspecting => waiting(Inspecting),
                Capturing => waiting(Capturing),
                _ => waiting(Cleaning),
            };
            let network_disk =
                node.provision_state == Deploying && record.target.as_ref().is_some_and(|target| target.mode == DeployMode::Network);
            let actions = match network_disk {
                true => vec![Action::PrepareNetworkDisk, Action::BootFromNetwork],
                false => vec![Action::BootFromNetwork],
            };
            Decision::Step { actions, transition: Box::new(transition) }
        }
        WaitAgent | Inspecting | Cleaning | Capturing if step == Some(ProvisionStep::Agent) => agent_waiting(node, record, now, settings),
        WaitAgent if step == Some(ProvisionStep::WaitCallback) => {
            if record.callback_at.is_some() {
                let transition = Transition { consume_result: true, ..to(node, record, Active, None, "the deployed system called back") };
                Decision::Step { actions: vec![], transition: Box::new(transition) }
            } else {
                deadline_or(node, record, now, || {
                    format!("the deployed system did not call back within {} s", settings.callback_timeout.as_secs())
                })
            }
        }
        // A waiting state with a step this version does not know: fail rather than hang.
        Deploying | WaitAgent | Inspecting | Undeploying | Cleaning | Capturing => {
            let reason = format!("no known step '{}' in {}", step.map_or("none", ProvisionStep::as_str), node.provision_state);
            Decision::Step { actions: vec![], transition: Box::new(failed(node, record, reason)) }
        }
        _ => match &record.intent {
            Some(Intent::Deploy(target)) if target.start_millis() > now => Decision::Postpone(target.start_millis()),
            Some(intent) => take_intent(node, record, intent, now, settings),
            None => match record.target.as_ref().and_then(|target| target.end_millis()) {
                // The reservation is over: undeploy, as if asked.
                Some(end) if node.provision_state == Active && end <= now => take_intent(node, record, &Intent::Undeploy, now, settings),
                Some(end) if node.provision_state == Active => Decision::Postpone(end),
                _ => Decision::Idle,
            },
        },
    }
}

/// A live or network-mode node powered on to boot its image: active, or waiting for the
/// booted system's callback.
fn live_booted(node: &Node, record: &ProvisionRecord, now: i64, settings: &LifecycleSettings) -> Transition {
    let wait = record.target.as_ref().is_some_and(|target| target.wait_for_callback);
    let reason = match record.target.as_ref().map(|target| target.mode) {
        Some(DeployMode::Network) => "node powered on to boot from its network disk",
        _ => "node powered on to boot its live image",
    };
    if wait {
        Transition {
            deadline: Some(now + millis(settings.callback_timeout)),
            due_at: Some(now + millis(settings.callback_timeout)),
            ..to(node, record, ProvisionState::WaitAgent, Some(ProvisionStep::WaitCallback), reason)
        }
    } else {
        to(node, record, ProvisionState::Active, None, reason)
    }
}

fn take_intent(node: &Node, record: &ProvisionRecord, intent: &Intent, now: i64, settings: &LifecycleSettings) -> Decision {
    use ProvisionState::*;
    let state = node.provision_state;
    if !intent.allowed_from().contains(&state) {
        // The state moved between the request and now (another request, a failure).
        let reason = format!("'{}' request dropped: the node is {state} now", intent.name());
        let transition = Transition { consume_intent: true, last_error: Some(reason.clone()), ..stay(node, record, reason) };
        return Decision::Step { actions: vec![], transition: Box::new(transition) };
    }
    let return_to = if state == Manageable { Manageable } else { Available };
    let transition = match intent {
        Intent::Manage => Transition { consume_intent: true, ..to(node, record, Manageable, None, "managed") },
        Intent::Provide => Transition { consume_intent: true, ..to(node, record, Available, None, "provided") },
        Intent::Inspect => {
            let inspect_return = if state == Available { Available } else { Manageable };
            Transition {
                operation: Operation { clean_mode: CleanMode::Fast, return_to: Some(inspect_return), capture_image: None },
                ..start(node, record, Inspecting, now, true, "inspection requested".into())
            }
        }
        Intent::Deploy(target) => Transition {
            target: Some(target.clone()),
            ..start(
                node,
                record,
                Deploying,
                now,
                target.mode == DeployMode::Disk,
                format!("deploy of {}:{} requested", target.image, target.version),
            )
        },
        // A network-mode node has no disk of its own to clean: its clone is removed.
        Intent::Undeploy if record.target.as_ref().is_some_and(|target| target.mode == DeployMode::Network) => {
            let transition = Transition {
                consume_intent: true,
                consume_result: true,
                token: TokenChange::Clear,
                target: None,
                ..to(node, record, Available, None, "undeployed: the node's network disk is removed")
            };
            return Decision::Step { actions: vec![Action::PowerOff, Action::RemoveNetworkDisk], transition: Box::new(transition) };
        }
        Intent::Undeploy => Transition {
            operation: Operation { clean_mode: settings.undeploy_clean_mode, return_to: Some(Available), capture_image: None },
            ..start(node, record, Undeploying, now, true, "undeploy requested".into())
        },
        Intent::Snapshot { image } => {
            if !record.target.as_ref().is_some_and(|target| target.mode == DeployMode::Network) {
                let reason = "'snapshot' request dropped: the node does not run from a network disk".to_owned();
                let transition = Transition { consume_intent: true, last_error: Some(reason.clone()), ..stay(node, record, reason) };
                return Decision::Step { actions: vec![], transition: Box::new(transition) };
            }
            // Off first: the snapshot holds every write the node made, and nothing half-made.
            let transition = Transition {
                consume_intent: true,
                ..stay(node, record, format!("snapshot into {image} taken; the node boots its network disk again"))
            };
            return Decision::Step {
                actions: vec![Action::PowerOff, Action::SnapshotNetworkDisk, Action::BootFromNetwork],
                transition: Box::new(transition),
            };
        }
        Intent::Capture { image } => Transition {
            operation: Operation { clean_mode: CleanMode::Fast, return_to: Some(Active), capture_image: Some(image.clone()) },
            ..start(node, record, Capturing, now, true, format!("capture into {image} requested"))
        },
        // Taken before the waiting states' own steps (`plan_step`); from any other state it
        // is dropped above, as every request the state does not allow.
        Intent::Abort => Transition { consume_intent: true, ..stay(node, record, "nothing to abort") },
        Intent::FailDeploy { reason } => Transition {
            consume_intent: true,
            consume_result: true,
            token: TokenChange::Clear,
            last_error: Some(reason.clone()),
            ..to(node, record, DeployFailed, None, format!("deploy failed before reaching the machine: {reason}"))
        },
        Intent::Clean { mode } => Transition {
            operation: Operation { clean_mode: *mode, return_to: Some(return_to), capture_image: None },
            ..start(
                node,
                record,
                Cleaning,
                now,
                true,
                format!("{} cleaning requested", if *mode == CleanMode::Full { "full" } else { "fast" }),
            )
        },
    };
    // A node leaving network mode (a deploy in another mode after a failed network deploy)
    // gives its clone up first.
    let leaves_network_disk = matches!(intent, Intent::Deploy(target) if target.mode != DeployMode::Network)
        && record.target.as_ref().is_some_and(|target| target.mode == DeployMode::Network);
    let actions = if leaves_network_disk { vec![Action::RemoveNetworkDisk] } else { vec![] };
    Decision::Step { actions, transition: Box::new(transition) }
}

fn agent_waiting(node: &Node, record: &ProvisionRecord, now: i64, settings: &LifecycleSettings) -> Decision {
    use ProvisionState::*;
    if let Some(result) = &record.agent_result {
        if let Some(error) = &result.error {
            let transition = failed(node, record, format!("agent: {error}"));
            // A node whose capture failed boots its own disk again.
            let actions = if node.provision_state == Capturing { vec![Action::BootFromNetwork] } else { vec![] };
            return Decision::Step { actions, transition: Box::new(transition) };
        }
        let done =
            |state, reason: &str| Transition { token: TokenChange::Clear, consume_result: true, ..to(node, record, state, None, reason) };
        return match node.provision_state {
            WaitAgent => {
                let wait = record.target.as_ref().is_some_and(|target| target.wait_for_callback);
                let transition = if wait {
                    Transition {
                        step: Some(ProvisionStep::WaitCallback),
                        deadline: Some(now + millis(settings.callback_timeout)),
                        due_at: Some(now + millis(settings.callback_timeout)),
                        ..done(WaitAgent, "image written; the node reboots from its disk")
                    }
                } else {
                    done(Active, "image written; the node reboots from its disk")
                };
                Decision::Step { actions: vec![Action::BootFromDisk], transition: Box::new(transition) }
            }
            Capturing => {
                let transition = done(Active, "disk captured; the node boots it again");
                Decision::Step { actions: vec![], transition: Box::new(transition) }
            }
            Inspecting => {
                let transition = Transition {
                    inventory: result.inventory.clone(),
                    ..done(record.operation.return_to.unwrap_or(Manageable), "inspected")
                };
                Decision::Step { actions: vec![], transition: Box::new(transition) }
            }
            _ => {
                let transition = done(record.operation.return_to.unwrap_or(Available), "cleaned");
                Decision::Step { actions: vec![], transition: Box::new(transition) }
            }
        };
    }
    // An agent that keeps heartbeating keeps its operation alive past the boot deadline.
    if let Some(seen) = record.agent_seen_at {
        let silent_until = seen + millis(settings.heartbeat_timeout);
        if silent_until > now {
            return Decision::Postpone(silent_until);
        }
        let reason = format!("the agent stopped heartbeating ({} s without a word)", (now - seen) / 1000);
        return Decision::Step { actions: vec![after_failure(node)], transition: Box::new(failed(node, record, reason)) };
    }
    deadline_or(node, record, now, || {
        format!("no agent called in within {} s of powering the node on", settings.agent_boot_timeout.as_secs())
    })
}

/// Fails the operation when its deadline has passed; otherwise waits for it.
fn deadline_or(node: &Node, record: &ProvisionRecord, now: i64, reason: impl FnOnce() -> String) -> Decision {
    match record.deadline {
        Some(deadline) if deadline > now => Decision::Postpone(deadline),
        _ => Decision::Step { actions: vec![after_failure(node)], transition: Box::new(failed(node, record, reason())) },
    }
}

/// What to do to a machine whose operation timed out: power it off, unless it was being
/// captured, in which case its disk is intact and it boots it again.
fn after_failure(node: &Node) -> Action {
    match node.provision_state {
        ProvisionState::Capturing => Action::BootFromNetwork,
        _ => Action::PowerOff,
    }
}

#[cfg(test)]
mod tests;
