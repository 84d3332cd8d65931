//! The reconciler: claims nodes that are due (a request, an agent's result, a deadline),
//! asks [`plan`](crate::plan::plan) for the next step, carries out its actions on the BMC
//! and records the transition, holding a lease in the database so that exactly one replica
//! acts on a node at a time. Every step is idempotent: a replica that takes over an expired
//! lease looks at the recorded state and carries on from there.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kiln_bmc::{Bmc, BmcError, BootDevice, PowerAction, PowerState};
use kiln_db::{Inventory, ProvisionWork, Store};
use kiln_types::node::Node;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use kiln_types::provision::Transition;

use crate::plan::{Action, Decision, LifecycleSettings, failed, plan};

/// What carries out the network-disk actions: the server's network-disk service. A
/// reconciler without one fails network-mode deploys with the reason.
pub trait NetworkDisks: Send + Sync {
    /// Gives `node` a fresh clone of its deploy target's disk artifact (replacing any).
    fn prepare<'a>(&'a self, node: &'a Node, target: &'a kiln_types::provision::DeployTarget) -> BoxFuture<'a, Result<(), String>>;
    /// Removes `node`'s clone, if it has one.
    fn remove<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), String>>;
    /// Stores `node`'s clone's changes as a new version of `image` (the node is off).
    fn snapshot<'a>(
        &'a self,
        node: &'a Node,
        target: &'a kiln_types::provision::DeployTarget,
        image: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// What makes virtual-media nodes' boot media: the server's boot-media service. A reconciler
/// without one fails a virtual-media node's boots with the reason.
pub trait BootMedia: Send + Sync {
    /// Makes the medium of what `node` boots now (replacing any it had) and serves it; the
    /// URL its BMC fetches it from.
    fn prepare<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<String, String>>;
    /// Makes `node`'s cloud-init seed (NoCloud's `cidata`, with its static network
    /// configuration) for the system on its disk, and serves it; its URL, or `None` when the
    /// node has no static address to give.
    fn prepare_seed<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Removes `node`'s medium, if it has one: its URL serves nothing from then on.
    fn remove<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), String>>;
}

/// What the reconciler hands work to besides the BMC; each is optional, and a step that
/// needs a missing one fails with the reason.
#[derive(Clone, Default)]
pub struct Services {
    pub network_disks: Option<Arc<dyn NetworkDisks>>,
    pub boot_media: Option<Arc<dyn BootMedia>>,
}

/// How the reconciler runs.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub lifecycle: LifecycleSettings,
    /// How long a claim lasts; a replica that dies holding one is replaced after this.
    pub lease: Duration,
    /// How often the database is asked for due nodes when nothing wakes the reconciler.
    pub poll_interval: Duration,
    /// Nodes worked on at once (BMC calls are the slow part).
    pub workers: usize,
    /// One BMC call's limit.
    pub bmc_timeout: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            lifecycle: LifecycleSettings::default(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            workers: 64,
            bmc_timeout: Duration::from_secs(10),
        }
    }
}

/// A running reconciler. [`ReconcilerHandle::shutdown`] drains it; dropping the handle
/// stops it at once.
pub struct ReconcilerHandle {
    task: Option<JoinHandle<()>>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Wakes the reconciler at once (a request or an agent's result was just recorded).
    pub wake: Arc<Notify>,
    /// This replica's name in leases.
    pub owner: String,
}

impl ReconcilerHandle {
    /// Stops claiming nodes and lets the steps in flight finish; a step still running after
    /// `deadline` is cut off, and its node's lease hands it to a replica (or to this one
    /// after a restart) when it expires. Steps are idempotent, so a cut-off one is redone.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stopping.send(true);
        self.wake.notify_one();
        let Some(mut task) = self.task.take() else { return };
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(owner = %self.owner, deadline_seconds = deadline.as_secs(), "reconciler: steps still running after the drain deadline; left to their leases");
            task.abort();
        }
    }
}

impl Drop for ReconcilerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts the reconciler for this replica. `wake` is shared with the API handlers.
pub fn start(
    store: Store,
    inventory: Arc<Inventory>,
    settings: ReconcilerSettings,
    wake: Arc<Notify>,
    services: Services,
) -> ReconcilerHandle {
    let owner = format!("{}-{}", hostname(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let reconciler = Arc::new(Reconciler {
        store,
        inventory,
        settings,
        owner: owner.clone(),
        wake: wake.clone(),
        in_flight: Default::default(),
        services,
    });
    let (stopping, stop_requested) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(reconciler.run(stop_requested));
    ReconcilerHandle { task: Some(task), stopping, wake, owner }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_owned()).unwrap_or_else(|_| "kiln".to_owned())
}

struct Reconciler {
    store: Store,
    inventory: Arc<Inventory>,
    settings: ReconcilerSettings,
    owner: String,
    wake: Arc<Notify>,
    /// Nodes a task of this replica is working on: a claim renews their lease but must not
    /// start a second task on them.
    in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    services: Services,
}

impl Reconciler {
    /// Claims due nodes and works on each in a task of its own until `stopping`, then waits
    /// for those tasks (the handle's deadline cuts them off by aborting this one).
    async fn run(self: Arc<Self>, mut stopping: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, "reconciler started");
        let workers = Arc::new(Semaphore::new(self.settings.workers.max(1)));
        let lease_millis = self.settings.lease.as_millis() as i64;
        let mut steps = tokio::task::JoinSet::new();
        while !*stopping.borrow() {
            let free = workers.available_permits() as u32;
            if free > 0 {
                match self.store.claim_provisioning(&self.owner, lease_millis, free).await {
                    Ok(claimed) => {
                        for work in claimed {
                            if !self.in_flight.lock().expect("not poisoned").insert(work.node.id.clone()) {
                                continue;
                            }
                            let permit = workers.clone().acquire_owned().await.expect("the semaphore is never closed");
                            let reconciler = self.clone();
                            steps.spawn(async move {
                                let node_id = work.node.id.clone();
                                if let Some(work) = reconciler.still_held(work).await {
                                    reconciler.reconcile(work).await;
                                }
                                reconciler.in_flight.lock().expect("not poisoned").remove(&node_id);
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(error = %error, "reconciler: reading due nodes failed"),
                }
            }
            while steps.try_join_next().is_some() {}
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stopping.changed() => {}
            }
        }
        tracing::info!(owner = %self.owner, in_flight = steps.len(), "reconciler stopping; finishing the steps in flight");
        while steps.join_next().await.is_some() {}
    }

    /// The claimed work as it stands now that no other task of this replica is on the node,
    /// or `None` when the lease went meanwhile. The claim may have been read while a task
    /// that has since finished was still working on the node: planning from that read would
    /// carry out its step a second time (a clone made again under a booted node, a reset
    /// of a booting one) before the store refused to record it.
    async fn still_held(&self, claimed: ProvisionWork) -> Option<ProvisionWork> {
        match self.store.held_provisioning(&self.owner, &claimed.node.id).await {
            Ok(Some(current)) => Some(ProvisionWork { taken_over_from: claimed.taken_over_from, ..current }),
            Ok(None) => {
                tracing::debug!(node = %claimed.node.name, "claim dropped: the lease went while another step finished");
                None
            }
            Err(error) => {
                tracing::warn!(node = %claimed.node.name, %error, "re-reading a claimed node failed; retried when the lease expires");
                None
            }
        }
    }

    /// Works on one claimed node until it waits for something outside this replica.
    async fn reconcile(&self, work: ProvisionWork) {
        let ProvisionWork { node, record, taken_over_from } = &work;
        let now = kiln_now();
        let decision = plan(node, record, now, taken_over_from.as_deref(), &self.settings.lifecycle);
        let (actions, mut transition) = match decision {
            Decision::Idle => return self.release(&work, None).await,
            Decision::Postpone(until) => return self.release(&work, Some(until)).await,
            Decision::Step { actions, transition } => (actions, *transition),
        };
        for action in actions {
            let outcome = match action {
                Action::PrepareNetworkDisk | Action::RemoveNetworkDisk | Action::SnapshotNetworkDisk => {
                    self.network_disk(node, record, action).await
                }
                _ => self.carry_out(node, action).await,
            };
            if let Err(error) = outcome {
                if action.required() {
                    // A request the step was taking up is taken up by its failure too: it is
                    // not retried by itself (a failing snapshot or clone removal would loop).
                    let failure = failed(node, record, format!("{}: {error}", action_name(action)));
                    transition = Transition { consume_intent: transition.consume_intent || failure.consume_intent, ..failure };
                    // A node whose snapshot failed boots its disk again, as after a failed capture.
                    let boot = match node.boot_interface() {
                        kiln_types::node::BootInterface::Pxe => Action::BootFromNetwork,
                        kiln_types::node::BootInterface::VirtualMedia => Action::BootFromVirtualMedia,
                    };
                    if action == Action::SnapshotNetworkDisk
                        && let Err(error) = self.carry_out(node, boot).await
                    {
                        tracing::warn!(node = %node.name, %error, "booting the node again after its failed snapshot failed");
                    }
                    break;
                }
                tracing::info!(node = %node.name, action = action_name(action), %error, "best-effort BMC action failed");
            }
        }
        match self.store.apply_transition(&self.owner, &work, &transition).await {
            Ok(Some(_)) => {
                if transition.last_error.is_some() {
                    tracing::warn!(node = %node.name, from = %node.provision_state, to = %transition.state, reason = %transition.reason, "provisioning failed");
                } else {
                    tracing::info!(node = %node.name, from = %node.provision_state, to = %transition.state, step = ?transition.step, reason = %transition.reason, "provisioning step");
                }
                if let Err(error) = self.inventory.refresh().await {
                    tracing::warn!(%error, "refreshing the inventory after a provisioning step failed");
                }
                if transition.keep_lease {
                    self.wake.notify_one();
                }
            }
            Ok(None) => tracing::info!(node = %node.name, "step not recorded: the lease was lost or the node moved on meanwhile"),
            Err(error) => tracing::warn!(node = %node.name, %error, "recording a provisioning step failed; retried when the lease expires"),
        }
    }

    async fn release(&self, work: &ProvisionWork, due_at: Option<i64>) {
        if let Err(error) = self.store.release_provisioning(&self.owner, work, due_at).await {
            tracing::warn!(node = %work.node.name, %error, "releasing a node's lease failed");
        }
    }

    async fn network_disk(&self, node: &Node, record: &kiln_types::provision::ProvisionRecord, action: Action) -> Result<(), String> {
        let Some(disks) = self.services.network_disks.as_ref() else {
            return Err("this server has no network-disk service ([netdisk] in the configuration)".to_owned());
        };
        let target = record.target.as_ref().ok_or_else(|| "the node has no deploy target".to_owned());
        match action {
            Action::PrepareNetworkDisk => disks.prepare(node, target?).await,
            Action::SnapshotNetworkDisk => match &record.intent {
                Some(kiln_types::provision::Intent::Snapshot { image }) => disks.snapshot(node, target?, image).await,
                _ => Err("no snapshot was asked for".to_owned()),
            },
            _ => disks.remove(node).await,
        }
    }

    async fn carry_out(&self, node: &Node, action: Action) -> Result<(), String> {
        let outcome = self.at_the_bmc(node, action).await;
        match action {
            // The file goes whatever the BMC said: its URL must die with the operation.
            Action::EjectVirtualMedia => outcome.and(self.remove_medium(node).await),
            // Nor is a medium left served after a boot from it failed.
            Action::BootFromVirtualMedia if outcome.is_err() => {
                if let Err(error) = self.at_the_bmc(node, Action::EjectVirtualMedia).await {
                    tracing::info!(node = %node.name, %error, "ejecting the medium of a failed boot failed");
                }
                if let Err(error) = self.remove_medium(node).await {
                    tracing::warn!(node = %node.name, %error, "removing the medium of a failed boot failed");
                }
                outcome
            }
            _ => outcome,
        }
    }

    async fn at_the_bmc(&self, node: &Node, action: Action) -> Result<(), String> {
        if node.bmc.is_none() {
            return match action {
                Action::BootFromNetwork => {
                    tracing::info!(node = %node.name, "node has no BMC: waiting for it to boot from the network by itself");
                    Ok(())
                }
                Action::BootFromVirtualMedia => Err("the node has no BMC to insert its boot medium".to_owned()),
                _ => Ok(()),
            };
        }
        // The medium is made before the BMC is called: making it is the slow part, and the
        // BMC's time limit is for the BMC.
        let medium_url = match action {
            Action::BootFromVirtualMedia => {
                let Some(media) = self.services.boot_media.as_ref() else {
                    return Err("this server makes no boot media (it has no boot listener to serve them)".to_owned());
                };
                Some(media.prepare(node).await.map_err(|error| format!("making the boot medium: {error}"))?)
            }
            _ => None,
        };
        let seed_url = match (action, self.services.boot_media.as_ref()) {
            (Action::PowerOnFromDisk, Some(media)) => match media.prepare_seed(node).await {
                Ok(url) => url,
                // The disk boots without it; a system that needs it says so on its console.
                Err(error) => {
                    tracing::warn!(node = %node.name, %error, "making the node's cloud-init seed failed; its disk boots without one");
                    None
                }
            },
            _ => None,
        };
        let password = self
            .store
            .bmc_password(&node.id)
            .await
            .map_err(|error| format!("reading the BMC password: {}", kiln_types::error_chain(&error)))?;
        let bmc = Bmc::for_node(node, password, self.settings.bmc_timeout).map_err(|error| kiln_types::error_chain(&error))?;
        let limit = self.settings.bmc_timeout * 3;
        let power_on_or_reset = async |bmc: &Bmc| match bmc.power_state().await? {
            PowerState::Off | PowerState::PoweringOff => bmc.power(PowerAction::On).await,
            _ => bmc.power(PowerAction::Reset).await,
        };
        let call = async {
            match action {
                Action::BootFromNetwork => {
                    bmc.set_boot_device(BootDevice::Pxe, true, None).await?;
                    power_on_or_reset(&bmc).await
                }
                Action::BootFromDisk => match bmc.set_boot_device(BootDevice::Disk, false, None).await {
                    Err(BmcError::Unsupported { .. }) => Ok(()),
                    other => other,
                },
                Action::BootFromVirtualMedia => {
                    let url = medium_url.as_deref().expect("made above");
                    bmc.insert_virtual_media(url).await?;
                    tracing::info!(node = %node.name, "boot medium inserted through the BMC");
                    bmc.set_boot_device(BootDevice::Cd, true, None).await?;
                    power_on_or_reset(&bmc).await
                }
                Action::PowerOnFromDisk => {
                    // The agent powers the node off once it has reported; a node still on
                    // after that (an agent that hung) is reset instead.
                    let patience = std::time::Instant::now() + self.settings.bmc_timeout * 2;
                    while std::time::Instant::now() < patience && !matches!(bmc.power_state().await?, PowerState::Off) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    // The deployed system's cloud-init finds its network configuration on
                    // the seed in the drive, before it brings the network up.
                    if let Some(url) = &seed_url {
                        bmc.insert_virtual_media(url).await?;
                        tracing::info!(node = %node.name, "cloud-init seed inserted through the BMC");
                    }
                    match bmc.set_boot_device(BootDevice::Disk, false, None).await {
                        Err(BmcError::Unsupported { .. }) | Ok(()) => {}
                        Err(error) => return Err(error),
                    }
                    power_on_or_reset(&bmc).await
                }
                Action::EjectVirtualMedia => bmc.eject_virtual_media().await,
                Action::PowerOff => bmc.power(PowerAction::ForceOff).await,
                Action::PrepareNetworkDisk | Action::RemoveNetworkDisk | Action::SnapshotNetworkDisk => Ok(()),
            }
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(|error| kiln_types::error_chain(&error)),
            Err(_) => Err(format!("the BMC did not answer within {} s", limit.as_secs())),
        }
    }

    async fn remove_medium(&self, node: &Node) -> Result<(), String> {
        match self.services.boot_media.as_ref() {
            Some(media) => media.remove(node).await.map_err(|error| format!("removing the boot medium: {error}")),
            None => Ok(()),
        }
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::BootFromNetwork => "booting the node from the network",
        Action::BootFromDisk => "setting the boot device to disk",
        Action::PowerOff => "powering the node off",
        Action::PrepareNetworkDisk => "preparing the node's network disk",
        Action::RemoveNetworkDisk => "removing the node's network disk",
        Action::SnapshotNetworkDisk => "taking a snapshot of the node's network disk",
        Action::BootFromVirtualMedia => "booting the node from its boot medium",
        Action::EjectVirtualMedia => "ejecting the node's boot medium",
        Action::PowerOnFromDisk => "powering the node on from its disk",
    }
}

fn kiln_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
