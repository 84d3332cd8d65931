//! The power-state sync: every interval, read each node's power state from its BMC with a
//! bounded number of workers, record what changed, and put a node whose BMC keeps failing
//! into maintenance (taking it out again once the BMC answers).
//!
//! Each read is bounded by the driver's timeout and an overall cap, and results are
//! recorded as they arrive, so a slow or dead BMC holds up one worker, never the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kiln_bmc::Bmc;
use kiln_db::{Inventory, PowerRead, Store};
use kiln_types::node::Node;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PowerSyncSettings {
    #[serde(rename = "interval_seconds", serialize_with = "seconds")]
    pub interval: Duration,
    pub workers: usize,
    /// Consecutive failures before a node goes into maintenance.
    pub fault_threshold: u32,
    /// How long one BMC request may take.
    #[serde(rename = "timeout_seconds", serialize_with = "seconds")]
    pub timeout: Duration,
}

/// Durations as whole seconds, as the configuration file writes them.
fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub checked: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

/// The nodes the sync can read: a BMC with a driver and an address.
fn syncable(node: &Node) -> bool {
    node.bmc
        .as_ref()
        .is_some_and(|bmc| matches!(bmc.driver, kiln_types::BmcDriver::Redfish | kiln_types::BmcDriver::Ipmi) && bmc.address.is_some())
}

async fn read_one(store: &Store, node: &Node, timeout: Duration) -> PowerRead {
    let failed = |fault: &str, message: String| PowerRead::Failed { fault: fault.to_owned(), message };
    let password = match store.bmc_password(&node.id).await {
        Ok(password) => password,
        Err(error) => return failed("refused", format!("reading the BMC password: {}", kiln_types::error_chain(&error))),
    };
    let bmc = match Bmc::for_node(node, password, timeout) {
        Ok(bmc) => bmc,
        Err(error) => return failed(error.fault().as_str(), kiln_types::error_chain(&error)),
    };
    // Connection retries with backoff fit well inside three timeouts.
    match tokio::time::timeout(timeout * 3, bmc.power_state()).await {
        Ok(Ok(state)) => PowerRead::State(state.as_str().to_owned()),
        Ok(Err(error)) => failed(error.fault().as_str(), kiln_types::error_chain(&error)),
        Err(_) => failed("unreachable", format!("no answer within {} s", (timeout * 3).as_secs())),
    }
}

/// One pass over every node with a BMC.
pub async fn sync_once(store: &Store, inventory: &Inventory, settings: &PowerSyncSettings) -> SyncReport {
    let started = Instant::now();
    let view = inventory.view();
    let nodes: Vec<Arc<Node>> = view.nodes().filter(|node| syncable(node)).cloned().collect();
    let mut report = SyncReport { checked: nodes.len(), ..Default::default() };
    let mut maintenance_changed = false;
    let mut reads = futures::stream::iter(nodes.into_iter().map(|node| async move {
        let read = read_one(store, &node, settings.timeout).await;
        (node, read)
    }))
    .buffer_unordered(settings.workers.max(1));
    while let Some((node, read)) = reads.next().await {
        if matches!(read, PowerRead::Failed { .. }) {
            report.failed += 1;
        }
        match store.record_power_read(&node.id, &read, settings.fault_threshold).await {
            Ok(reading) => maintenance_changed |= reading.maintenance_set != node.maintenance,
            Err(error) => tracing::warn!(node = %node.name, %error, "recording a power reading failed"),
        }
    }
    if maintenance_changed && let Err(error) = inventory.refresh().await {
        tracing::warn!(%error, "refreshing the inventory after the power sync failed");
    }
    report.elapsed = started.elapsed();
    tracing::info!(checked = report.checked, failed = report.failed, elapsed_ms = report.elapsed.as_millis() as u64, "power sync finished");
    report
}

/// Runs [`sync_once`] every interval until the task is aborted.
pub fn spawn(store: Store, inventory: Arc<Inventory>, settings: PowerSyncSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            sync_once(&store, &inventory, &settings).await;
        }
    })
}
