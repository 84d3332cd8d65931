//! The server's network-disk service: the clones (`kiln-netdisk`), the reconciler's hook that
//! makes and removes them, and the gateway's authority, which lets a node reach its own
//! clone only, from an address Kiln gave it.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use kiln_db::{Inventory, Store};
use kiln_netdisk::{BaseSpec, ExportAuthority, ExportRefusal, NetworkDisks};
use kiln_types::node::Node;
use kiln_types::provision::DeployTarget;

/// The running service: clones and the gateway in front of them.
pub(crate) struct NetworkDiskService {
    pub(crate) disks: Arc<NetworkDisks>,
    pub(crate) gateway: kiln_netdisk::GatewayHandle,
}

impl NetworkDiskService {
    pub(crate) fn reconciler_hook(&self, store: &Store) -> Arc<dyn kiln_lifecycle::NetworkDisks> {
        Arc::new(ReconcilerHook { disks: self.disks.clone(), store: store.clone() })
    }

    /// Stops accepting nodes, then stops the export processes.
    pub(crate) async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.disks.shutdown().await;
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the reconciler calls to prepare and remove clones.
pub(crate) struct ReconcilerHook {
    pub(crate) disks: Arc<NetworkDisks>,
    pub(crate) store: Store,
}

impl ReconcilerHook {
    async fn prepare_clone(&self, node: &Node, target: &DeployTarget) -> Result<(), String> {
        use kiln_types::image::{ArtifactKind, VersionRef};
        let image = kiln_types::scoped_name::ScopedName::from_key(&target.image);
        let version = self
            .store
            .get_version(&image, &VersionRef::Number(target.version))
            .await
            .map_err(|error| format!("reading {}:{}: {}", target.image, target.version, kiln_types::error_chain(&error)))?;
        let disk =
            version.artifact(ArtifactKind::Disk).ok_or_else(|| format!("{}:{} has no disk artifact", target.image, target.version))?;
        let base = BaseSpec { sha256: disk.sha256.clone(), format: disk.format, compression: disk.compression };
        self.disks.prepare(&node.id, &base).await.map_err(|error| kiln_types::error_chain(&error))?;
        // The new export name revokes the old one: a node still running the old clone
        // cannot reconnect to the new one.
        self.store
            .record_network_disk(&node.id, &target.image, target.version, &disk.sha256)
            .await
            .map_err(|error| format!("recording the network disk: {}", kiln_types::error_chain(&error)))?;
        tracing::info!(node = %node.name, image = %target.image, version = target.version, base = %disk.sha256, "network disk ready");
        Ok(())
    }

    async fn remove_clone(&self, node: &Node) -> Result<(), String> {
        // The record first: from here on no connection is granted to the clone.
        self.store
            .remove_network_disk(&node.id)
            .await
            .map_err(|error| format!("forgetting the network disk: {}", kiln_types::error_chain(&error)))?;
        self.disks.remove(&node.id).await.map_err(|error| kiln_types::error_chain(&error))
    }
}

impl kiln_lifecycle::NetworkDisks for ReconcilerHook {
    fn prepare<'a>(&'a self, node: &'a Node, target: &'a DeployTarget) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.prepare_clone(node, target))
    }

    fn remove<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.remove_clone(node))
    }
}

/// The gateway's rule: the export name is a clone's, and the peer is one of that node's
/// reserved addresses or the address Kiln's DHCP leased to one of its MACs (the rule boot
/// scripts with secrets follow).
pub(crate) struct Authority {
    pub(crate) store: Store,
    pub(crate) inventory: Arc<Inventory>,
    pub(crate) leases: Option<Arc<dyn kiln_types::lease::LeaseLookup>>,
}

impl Authority {
    async fn decide(&self, export: &str, peer: IpAddr) -> Result<String, ExportRefusal> {
        let record = self
            .store
            .network_disk_by_export(export)
            .await
            .map_err(|error| ExportRefusal::Unavailable { reason: kiln_types::error_chain(&error) })?
            .ok_or(ExportRefusal::Unknown)?;
        let view = self.inventory.view();
        let Some(node) = view.get(&record.node_id) else { return Err(ExportRefusal::Unknown) };
        let peer = peer.to_canonical();
        let reserved = node
            .interfaces
            .iter()
            .flat_map(|interface| interface.ip_addrs.iter())
            .any(|entry| entry.ip_addr.parse::<IpAddr>().is_ok_and(|address| address == peer));
        let leased = node.interfaces.iter().map(|interface| interface.mac_addr).any(|mac| {
            self.leases.as_ref().and_then(|leases| leases.leased_address(mac)).is_some_and(|address| IpAddr::V4(address) == peer)
        });
        if reserved || leased { Ok(record.node_id) } else { Err(ExportRefusal::NotThisPeer { node_id: record.node_id }) }
    }
}

impl ExportAuthority for Authority {
    fn authorize<'a>(&'a self, export: &'a str, peer: IpAddr) -> BoxFuture<'a, Result<String, ExportRefusal>> {
        Box::pin(self.decide(export, peer))
    }
}
