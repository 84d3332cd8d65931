//! Walks nodes through the lifecycle with the planner alone, applying each transition as the
//! store would, and prints every decision: the snapshot is the lifecycle's specification.

use expect_test::{Expect, expect};
use kiln_types::provision::{AgentResult, DeployTarget, HardwareInventory, RootDeviceHints};

use super::*;

const S: i64 = 1000;

struct Sim {
    node: Node,
    record: ProvisionRecord,
    now: i64,
    settings: LifecycleSettings,
    log: Vec<String>,
}

impl Sim {
    fn new(state: ProvisionState) -> Sim {
        let node: Node = serde_json::from_value(serde_json::json!({
            "id": "n1", "name": "node1", "xname": null, "nid": null, "role": null, "groups": [], "interfaces": [],
            "bmc": null, "properties": {}, "project": null, "provision_state": state.as_str(), "maintenance": false,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        Sim { node, record: ProvisionRecord::default(), now: 1_000_000, settings: LifecycleSettings::default(), log: Vec::new() }
    }

    /// The node boots from virtual media rather than the network.
    fn virtual_media(mut self) -> Sim {
        self.node.properties.insert("boot_interface".into(), "virtual-media".into());
        self
    }

    fn request(&mut self, intent: Intent) -> &mut Self {
        self.log.push(format!("request {}", intent.name()));
        self.record.intent = Some(intent);
        self
    }

    fn after(&mut self, seconds: i64) -> &mut Self {
        self.now += seconds * S;
        self
    }

    fn agent_heartbeat(&mut self) -> &mut Self {
        self.record.agent_seen_at = Some(self.now);
        self
    }

    fn agent_result(&mut self, error: Option<&str>) -> &mut Self {
        self.log.push(format!("agent result: {}", error.unwrap_or("ok")));
        let inventory = (self.node.provision_state == ProvisionState::Inspecting).then(|| HardwareInventory {
            cpu_count: 2,
            cpu_arch: "x86_64".into(),
            ..Default::default()
        });
        self.record.agent_result =
            Some(AgentResult { id: self.record.command_id, error: error.map(str::to_owned), inventory, root_device: None });
        self
    }

    fn callback(&mut self) -> &mut Self {
        self.log.push("callback".into());
        self.record.callback_at = Some(self.now);
        self
    }

    /// Plans once, as the replica `interrupted` names would find the node after a takeover.
    fn step_with(&mut self, interrupted: Option<&str>) -> &mut Self {
        let decision = plan(&self.node, &self.record, self.now, interrupted, &self.settings);
        let line = match decision {
            Decision::Idle => "idle".to_owned(),
            Decision::Postpone(until) => format!("wait {} s", (until - self.now) / S),
            Decision::Step { actions, transition } => {
                let line = format!(
                    "{:?} -> {}{}{}{}{}{}",
                    actions,
                    transition.state,
                    transition.step.map(|step| format!("/{step}")).unwrap_or_default(),
                    match transition.token {
                        TokenChange::Keep => "",
                        TokenChange::Mint => " +token",
                        TokenChange::Clear => " -token",
                    },
                    transition.deadline.map(|deadline| format!(" deadline {} s", (deadline - self.now) / S)).unwrap_or_default(),
                    transition.last_error.as_deref().map(|error| format!(" error: {error}")).unwrap_or_default(),
                    match (transition.state, transition.due_at) {
                        (ProvisionState::Active, Some(due)) => format!(" due in {} s", (due - self.now) / S),
                        _ => String::new(),
                    },
                );
                self.apply(*transition);
                line
            }
        };
        self.log.push(format!("  {line}"));
        self
    }

    fn step(&mut self) -> &mut Self {
        self.step_with(None)
    }

    fn apply(&mut self, t: Transition) {
        let record = &mut self.record;
        if t.consume_intent {
            record.intent = None;
        }
        if t.consume_result {
            record.agent_result = None;
            record.callback_at = None;
        }
        if t.state != self.node.provision_state {
            record.agent_seen_at = None;
            record.state_entered_at = self.now;
        }
        record.step = t.step;
        record.target = t.target;
        record.operation = t.operation;
        record.deadline = t.deadline;
        record.last_error = t.last_error;
        if t.new_command {
            record.command_id += 1;
        }
        match t.token {
            TokenChange::Keep => {}
            TokenChange::Mint => record.has_agent_token = true,
            TokenChange::Clear => record.has_agent_token = false,
        }
        record.due_at = t.due_at;
        if let Some(inventory) = t.inventory {
            self.node.properties.insert("cpus".into(), inventory.cpu_count.into());
        }
        self.node.provision_state = t.state;
    }

    fn check(&self, expected: Expect) {
        expected.assert_eq(&(self.log.join("\n") + "\n"));
    }
}

fn deploy(mode: DeployMode, wait_for_callback: bool) -> Intent {
    Intent::Deploy(DeployTarget {
        image: "debian".into(),
        version: 3,
        mode,
        root_device_hints: RootDeviceHints::default(),
        wait_for_callback,
        start_at: None,
        end_at: None,
    })
}

#[test]
fn disk_deploy_with_callback_then_undeploy() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.step().request(deploy(DeployMode::Disk, true)).step().step().after(30).step().agent_heartbeat().after(119).step();
    sim.agent_result(None).step().after(60).step().callback().step();
    sim.request(Intent::Undeploy).step().step().agent_heartbeat().agent_result(None).step();
    sim.check(expect![[r#"
          idle
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
          wait 570 s
          wait 1 s
        agent result: ok
          [BootFromDisk] -> wait-agent/wait-callback -token deadline 900 s
          wait 840 s
        callback
          [] -> active
        request undeploy
          [] -> undeploying/powering +token
          [BootFromNetwork] -> cleaning/agent deadline 600 s
        agent result: ok
          [] -> available -token
    "#]]);
}

#[test]
fn live_deploy_needs_no_agent() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(deploy(DeployMode::Live, false)).step().step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering -token
          [BootFromNetwork] -> active
    "#]]);
}

#[test]
fn network_deploy_clones_before_booting_and_undeploy_removes_the_clone() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(deploy(DeployMode::Network, true)).step().step();
    sim.after(40).callback().step();
    sim.request(Intent::Undeploy).step().step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering -token
          [PrepareNetworkDisk, BootFromNetwork] -> wait-agent/wait-callback deadline 900 s
        callback
          [] -> active
        request undeploy
          [PowerOff, RemoveNetworkDisk] -> available -token
          idle
    "#]]);
}

#[test]
fn a_node_leaving_network_mode_gives_its_clone_up() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(deploy(DeployMode::Network, true)).step().step();
    sim.after(901).step();
    sim.request(deploy(DeployMode::Disk, false)).step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering -token
          [PrepareNetworkDisk, BootFromNetwork] -> wait-agent/wait-callback deadline 900 s
          [PowerOff] -> deploy-failed -token error: the deployed system did not call back within 900 s
        request deploy
          [RemoveNetworkDisk] -> deploying/powering +token
    "#]]);
}

#[test]
fn failures_end_in_the_operation_s_failure_state() {
    // The agent never calls in.
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(deploy(DeployMode::Disk, false)).step().step().after(601).step();
    // It calls in, then falls silent (the machine lost power mid-write); redeployable.
    sim.request(deploy(DeployMode::Disk, false)).step().step().after(10).agent_heartbeat().after(121).step();
    sim.request(deploy(DeployMode::Disk, false)).step().step().agent_result(Some("sha256 mismatch")).step();
    // The deployed system never calls back.
    sim.request(deploy(DeployMode::Disk, true)).step().step().agent_result(None).step().after(901).step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
          [PowerOff] -> deploy-failed -token error: no agent called in within 600 s of powering the node on
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
          [PowerOff] -> deploy-failed -token error: the agent stopped heartbeating (121 s without a word)
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
        agent result: sha256 mismatch
          [] -> deploy-failed -token error: agent: sha256 mismatch
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
        agent result: ok
          [BootFromDisk] -> wait-agent/wait-callback -token deadline 900 s
          [PowerOff] -> deploy-failed -token error: the deployed system did not call back within 900 s
    "#]]);
}

#[test]
fn a_takeover_fails_interrupted_power_steps_and_carries_on_waiting_ones() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(deploy(DeployMode::Disk, false)).step().step_with(Some("replica-a"));
    sim.request(deploy(DeployMode::Disk, false)).step().step().after(5).agent_heartbeat().step_with(Some("replica-a"));
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
          [] -> deploy-failed -token error: interrupted: the server replica replica-a stopped while powering the node for deploying
        request deploy
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
          wait 120 s
    "#]]);
}

#[test]
fn enrol_inspect_clean_and_refused_requests() {
    let mut sim = Sim::new(ProvisionState::Enroll);
    sim.request(Intent::Manage).step().request(Intent::Inspect).step().step().agent_result(None).step();
    sim.request(Intent::Provide).step().request(Intent::Clean { mode: CleanMode::Full }).step().step().agent_result(None).step();
    // A request the state no longer allows (recorded, then the node moved on) is dropped.
    sim.request(Intent::Provide).step();
    sim.node.maintenance = true;
    sim.request(deploy(DeployMode::Disk, false)).step();
    assert_eq!(sim.node.properties.get("cpus"), Some(&serde_json::json!(2)));
    sim.check(expect![[r#"
        request manage
          [] -> manageable
        request inspect
          [] -> inspecting/powering +token
          [BootFromNetwork] -> inspecting/agent deadline 600 s
        agent result: ok
          [] -> manageable -token
        request provide
          [] -> available
        request clean
          [] -> cleaning/powering +token
          [BootFromNetwork] -> cleaning/agent deadline 600 s
        agent result: ok
          [] -> available -token
        request provide
          [] -> available error: 'provide' request dropped: the node is available now
        request deploy
          wait 5 s
    "#]]);
}

#[test]
fn a_reservation_starts_and_ends_on_schedule() {
    let mut sim = Sim::new(ProvisionState::Available);
    let at = |seconds: i64| Some(jiff::Timestamp::from_millisecond(sim_now() + seconds * S).unwrap());
    let Intent::Deploy(mut target) = deploy(DeployMode::Disk, false) else { unreachable!() };
    target.start_at = at(60);
    target.end_at = at(3600);
    sim.request(Intent::Deploy(target)).step().after(59).step().after(1).step().step().agent_result(None).step();
    sim.after(1000).step().after(3000).step().step().agent_result(None).step();
    sim.check(expect![[r#"
        request deploy
          wait 60 s
          wait 1 s
          [] -> deploying/powering +token
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
        agent result: ok
          [BootFromDisk] -> active -token due in 3540 s
          wait 2540 s
          [] -> undeploying/powering +token
          [BootFromNetwork] -> cleaning/agent deadline 600 s
        agent result: ok
          [] -> available -token
    "#]]);
}

/// The simulation's clock at its start (see `Sim::new`).
fn sim_now() -> i64 {
    1_000_000
}

#[test]
fn a_failed_capture_leaves_the_node_running_its_disk() {
    let mut sim = Sim::new(ProvisionState::Active);
    sim.request(Intent::Capture { image: "golden".into() }).step().step().agent_result(Some("disk read error")).step();
    sim.request(Intent::Capture { image: "golden".into() }).step().step().after(601).step();
    sim.request(Intent::Capture { image: "golden".into() }).step().step().agent_result(None).step();
    sim.check(expect![[r#"
        request capture
          [] -> capturing/powering +token
          [BootFromNetwork] -> capturing/agent deadline 600 s
        agent result: disk read error
          [BootFromNetwork] -> active -token error: agent: disk read error
        request capture
          [] -> capturing/powering +token
          [BootFromNetwork] -> capturing/agent deadline 600 s
          [BootFromNetwork] -> active -token error: no agent called in within 600 s of powering the node on
        request capture
          [] -> capturing/powering +token
          [BootFromNetwork] -> capturing/agent deadline 600 s
        agent result: ok
          [] -> active -token
    "#]]);
}

#[test]
fn a_deploy_that_fails_before_the_machine_ends_in_deploy_failed_and_can_be_undeployed() {
    let mut sim = Sim::new(ProvisionState::Available);
    sim.request(Intent::FailDeploy { reason: "image checksum mismatch".into() }).step();
    // A second failure from deploy failed is recorded too; an undeploy cleans the node back.
    sim.request(Intent::FailDeploy { reason: "could not fetch the image".into() }).step();
    sim.request(Intent::Undeploy).step().step().agent_result(None).step();
    sim.check(expect![[r#"
        request fail-deploy
          [] -> deploy-failed -token error: image checksum mismatch
        request fail-deploy
          [] -> deploy-failed -token error: could not fetch the image
        request undeploy
          [] -> undeploying/powering +token
          [BootFromNetwork] -> cleaning/agent deadline 600 s
        agent result: ok
          [] -> available -token
    "#]]);
}

#[test]
fn an_abort_ends_a_waiting_operation_in_its_failure_state() {
    let mut sim = Sim::new(ProvisionState::Available);
    // A deploy waiting for its agent; the abort waits out the powering step first.
    sim.request(deploy(DeployMode::Disk, false)).step();
    sim.request(Intent::Abort).step().request(Intent::Abort).step();
    // A clean from manageable, aborted while the agent works.
    sim.node.provision_state = ProvisionState::Manageable;
    sim.request(Intent::Clean { mode: CleanMode::Full }).step().step().agent_heartbeat().request(Intent::Abort).step();
    // A capture aborted: the node boots its disk again.
    sim.node.provision_state = ProvisionState::Active;
    sim.request(Intent::Capture { image: "golden".into() }).step().step().request(Intent::Abort).step();
    // Nothing to abort.
    sim.request(Intent::Abort).step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
        request abort
          [BootFromNetwork] -> wait-agent/agent deadline 600 s
        request abort
          [PowerOff] -> deploy-failed -token error: deploy aborted on request
        request clean
          [] -> cleaning/powering +token
          [BootFromNetwork] -> cleaning/agent deadline 600 s
        request abort
          [PowerOff] -> clean-failed -token error: cleaning aborted on request
        request capture
          [] -> capturing/powering +token
          [BootFromNetwork] -> capturing/agent deadline 600 s
        request abort
          [BootFromNetwork] -> active -token error: capture aborted on request
        request abort
          [] -> active error: 'abort' request dropped: the node is active now
    "#]]);
}

#[test]
fn an_abort_pending_when_the_operation_fails_by_itself_is_taken_up_by_the_failure() {
    let mut sim = Sim::new(ProvisionState::Available);
    // The replica powering the node died with an abort pending: the failure ends the deploy
    // and takes the abort up, so no later "request dropped" hides the reason.
    sim.request(deploy(DeployMode::Disk, false)).step();
    sim.request(Intent::Abort).step_with(Some("replica-a"));
    sim.step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
        request abort
          [] -> deploy-failed -token error: interrupted: the server replica replica-a stopped while powering the node for deploying
          idle
    "#]]);
}

#[test]
fn a_virtual_media_node_boots_from_its_medium_and_ejects_it_when_done() {
    let mut sim = Sim::new(ProvisionState::Available).virtual_media();
    sim.request(deploy(DeployMode::Disk, true)).step().step().agent_heartbeat();
    sim.agent_result(None).step().after(60).callback().step();
    sim.request(Intent::Undeploy).step().step().agent_heartbeat().agent_result(None).step();
    sim.request(deploy(DeployMode::Live, false)).step().step();
    sim.request(Intent::Undeploy).step().step().after(601).step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
          [BootFromVirtualMedia] -> wait-agent/agent deadline 600 s
        agent result: ok
          [EjectVirtualMedia, PowerOnFromDisk] -> wait-agent/wait-callback -token deadline 900 s
        callback
          [] -> active
        request undeploy
          [] -> undeploying/powering +token
          [BootFromVirtualMedia] -> cleaning/agent deadline 600 s
        agent result: ok
          [EjectVirtualMedia] -> available -token
        request deploy
          [] -> deploying/powering -token
          [BootFromVirtualMedia] -> active
        request undeploy
          [] -> undeploying/powering +token
          [BootFromVirtualMedia] -> cleaning/agent deadline 600 s
          [PowerOff, EjectVirtualMedia] -> clean-failed -token error: no agent called in within 600 s of powering the node on
    "#]]);
}

#[test]
fn a_virtual_media_node_s_agent_powers_off_and_the_node_boots_its_disk_after_the_eject() {
    let mut sim = Sim::new(ProvisionState::Available).virtual_media();
    sim.request(deploy(DeployMode::Disk, false)).step().step().agent_heartbeat().agent_result(None).step();
    sim.request(Intent::Capture { image: "golden".into() }).step().step().agent_heartbeat().agent_result(Some("disk read error")).step();
    sim.request(Intent::Capture { image: "golden".into() }).step().step().agent_heartbeat().agent_result(None).step();
    sim.check(expect![[r#"
        request deploy
          [] -> deploying/powering +token
          [BootFromVirtualMedia] -> wait-agent/agent deadline 600 s
        agent result: ok
          [EjectVirtualMedia, PowerOnFromDisk] -> active -token
        request capture
          [] -> capturing/powering +token
          [BootFromVirtualMedia] -> capturing/agent deadline 600 s
        agent result: disk read error
          [EjectVirtualMedia, PowerOnFromDisk] -> active -token error: agent: disk read error
        request capture
          [] -> capturing/powering +token
          [BootFromVirtualMedia] -> capturing/agent deadline 600 s
        agent result: ok
          [EjectVirtualMedia, PowerOnFromDisk] -> active -token
    "#]]);
}
