//! The server's network-disk service: the clones (`kiln-netdisk`), the reconciler's hook that
//! makes and removes them, and the gateway's authority, which lets a node reach its own
//! clone only, from an address Kiln gave it.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use kiln_db::{Inventory, Store};
use kiln_netdisk::{BaseSpec, ExportAuthority, ExportRefusal, NetworkDisks};
use kiln_types::image::{Artifact, ArtifactKind, VersionRef};
use kiln_types::node::Node;
use kiln_types::provision::DeployTarget;

/// The running service: clones and the gateway in front of them.
pub(crate) struct NetworkDiskService {
    pub(crate) disks: Arc<NetworkDisks>,
    pub(crate) blobs: kiln_image_store::BlobStore,
    pub(crate) gateway: kiln_netdisk::GatewayHandle,
}

impl NetworkDiskService {
    pub(crate) fn reconciler_hook(&self, store: &Store) -> Arc<dyn kiln_lifecycle::NetworkDisks> {
        Arc::new(ReconcilerHook { disks: self.disks.clone(), store: store.clone(), blobs: self.blobs.clone() })
    }

    /// Stops accepting nodes, then stops the export processes.
    pub(crate) async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.disks.shutdown().await;
    }
}

/// What the reconciler calls to prepare and remove clones.
pub(crate) struct ReconcilerHook {
    pub(crate) disks: Arc<NetworkDisks>,
    pub(crate) store: Store,
    pub(crate) blobs: kiln_image_store::BlobStore,
}

impl ReconcilerHook {
    /// The deploy target's disk artifact, and what clones of its version sit on.
    async fn base_of(&self, target: &DeployTarget) -> Result<(Artifact, BaseSpec), String> {
        let image = kiln_types::scoped_name::ScopedName::from_key(&target.image);
        let version = self
            .store
            .get_version(&image, &VersionRef::Number(target.version))
            .await
            .map_err(|error| format!("reading {}:{}: {}", target.image, target.version, kiln_types::error_chain(&error)))?;
        let disk = version
            .artifact(ArtifactKind::Disk)
            .ok_or_else(|| format!("{}:{} has no disk artifact", target.image, target.version))?
            .clone();
        let layer = version.artifact(ArtifactKind::Layer).map(|layer| layer.sha256.clone());
        let base = BaseSpec { sha256: disk.sha256.clone(), format: disk.format, compression: disk.compression, layer };
        Ok((disk, base))
    }

    async fn prepare_clone(&self, node: &Node, target: &DeployTarget) -> Result<(), String> {
        let (disk, base) = self.base_of(target).await?;
        // The old export name dies first: a node still running the old clone (a failed
        // deploy's, not powered off) cannot reach the new one, nor reopen the old.
        self.store
            .remove_network_disk(&node.id)
            .await
            .map_err(|error| format!("revoking the old network disk: {}", kiln_types::error_chain(&error)))?;
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

    /// The node's changes become a layer blob, and a new version of `image` is its target's
    /// disk (shared: no bytes added) with that layer over it.
    async fn take_snapshot(&self, node: &Node, target: &DeployTarget, image: &str) -> Result<(), String> {
        let (disk, base) = self.base_of(target).await?;
        let layer =
            self.disks.snapshot_layer(&node.id, &base, self.blobs.spool_dir()).await.map_err(|error| kiln_types::error_chain(&error))?;
        let path = layer.clone();
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            let size = std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
            Ok((hex::encode(hasher.finalize()), size))
        })
        .await
        .map_err(|error| format!("hashing the snapshot: {error}"))?;
        let (sha256, size) = match hashed {
            Ok(hashed) => hashed,
            Err(error) => {
                let _ = std::fs::remove_file(&layer);
                return Err(format!("hashing the snapshot {}: {error}", layer.display()));
            }
        };
        let id = kiln_image_store::BlobId::parse(&sha256).map_err(|error| kiln_types::error_chain(&error))?;
        // Recorded before the bytes are stored: garbage collection spares touched blobs.
        if let Err(error) = self.store.touch_blob(&sha256, size).await {
            let _ = std::fs::remove_file(&layer);
            return Err(format!("recording the snapshot's blob: {}", kiln_types::error_chain(&error)));
        }
        if let Err(error) = self.blobs.commit(&id, &layer).await {
            let _ = std::fs::remove_file(&layer);
            return Err(format!("storing the snapshot: {}", kiln_types::error_chain(&error)));
        }
        let layer_artifact = Artifact {
            kind: ArtifactKind::Layer,
            sha256: sha256.clone(),
            format: kiln_types::image::ImageFormat::Qcow2,
            compression: None,
            size,
            virtual_size: disk.virtual_size,
            checksums: [("sha256".to_owned(), sha256.clone())].into_iter().collect(),
            source_url: None,
        };
        let spec = kiln_db::NewVersion {
            version: None,
            base: None,
            artifacts: [disk, layer_artifact]
                .into_iter()
                .map(|artifact| kiln_db::NewArtifact { artifact, source_etag: None, source_modified: None })
                .collect(),
            tags: Vec::new(),
            note: format!("snapshot of node {} running {}:{}", node.name, target.image, target.version),
        };
        let identity = kiln_types::scoped_name::ScopedName::from_key(image);
        // A step that is run again (its replica died after recording the version) takes the
        // same layer from the same stopped clone: the version it made stands.
        let versions = self
            .store
            .list_versions(&identity)
            .await
            .map_err(|error| format!("listing the versions of {image}: {}", kiln_types::error_chain(&error)))?;
        let recorded = versions.iter().find(|version| version.artifact(ArtifactKind::Layer).is_some_and(|layer| layer.sha256 == sha256));
        if let Some(recorded) = recorded {
            tracing::info!(node = %node.name, image, version = recorded.version, layer = %sha256, "network disk snapshot already recorded");
            return Ok(());
        }
        let created = self
            .store
            .create_version("kiln", &identity, &spec)
            .await
            .map_err(|error| format!("recording the snapshot as a version of {image}: {}", kiln_types::error_chain(&error)))?;
        tracing::info!(node = %node.name, image, version = created.version, layer = %sha256, stored_bytes = size, "network disk snapshot stored");
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

    fn snapshot<'a>(&'a self, node: &'a Node, target: &'a DeployTarget, image: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.take_snapshot(node, target, image))
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
    async fn decide(&self, export: &str, peer: SocketAddr) -> Result<String, ExportRefusal> {
        let record = self
            .store
            .network_disk_by_export(export)
            .await
            .map_err(|error| ExportRefusal::Unavailable { reason: kiln_types::error_chain(&error) })?
            .ok_or(ExportRefusal::Unknown)?;
        let view = self.inventory.view();
        let Some(node) = view.get(&record.node_id) else { return Err(ExportRefusal::Unknown) };
        // Only root on the node binds a privileged port: a user who read the export name
        // from the node's /proc/cmdline cannot use it.
        if peer.port() >= 1024 {
            return Err(ExportRefusal::UnprivilegedPort { port: peer.port() });
        }
        let macs = node.interfaces.iter().map(|interface| interface.mac_addr);
        match kiln_api::boot::assigned_to(node, self.leases.as_deref(), macs, peer.ip()) {
            true => Ok(record.node_id),
            false => Err(ExportRefusal::NotThisPeer { node_id: record.node_id }),
        }
    }
}

impl ExportAuthority for Authority {
    fn authorize<'a>(&'a self, export: &'a str, peer: SocketAddr) -> BoxFuture<'a, Result<String, ExportRefusal>> {
        Box::pin(self.decide(export, peer))
    }
}
