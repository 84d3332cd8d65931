//! Network disks (deploy mode `network`): each node boots from a copy-on-write clone of an
//! image version's disk artifact, served over NBD.
//!
//! - [`clones`]: where clones live. [`CloneBackend`] is the small interface a clone store
//!   implements; [`LocalClones`] keeps qcow2 overlays in a local directory, on a base that is
//!   the version's blob itself (raw or qcow2, uncompressed, in a local blob store) or its
//!   bytes expanded once per version (compressed, or in S3). N clones share the base; a
//!   clone holds only the clusters its node wrote.
//! - [`exports`]: one `qemu-nbd` per clone in use, on a Unix socket, started on demand and
//!   supervised by Kiln (it dies with Kiln, and comes back on the next connection after a
//!   restart).
//! - [`gateway`]: Kiln's NBD listener on the provisioning network. It negotiates with the
//!   node itself, asks an [`ExportAuthority`] whether the export name (a per-clone secret)
//!   is the node's and the peer the address Kiln gave that node, and only then connects the
//!   node to its clone's export process and copies bytes both ways.
//!
//! Why NBD and qemu-nbd: the node is Linux (the deploy ramdisk attaches the disk with the
//! kernel's NBD driver, so images need no initiator of their own); qemu-nbd serves qcow2
//! overlays, whose copy-on-write, flush and discard semantics are QEMU's, from userspace,
//! with no kernel module on the server; and Kiln's own gateway in front gives the
//! per-node binding that neither qemu-nbd nor nbd-server has. iSCSI (`tgt`) would let iPXE
//! `sanboot`, but its file store has no copy-on-write.

pub mod clones;
pub mod exports;
pub mod gateway;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use clones::{BaseSpec, CloneBackend, LocalClones};
pub use exports::Exports;
pub use gateway::{ExportAuthority, ExportRefusal, GatewayHandle};

/// What went wrong with a network disk.
#[derive(Debug, thiserror::Error)]
pub enum NetdiskError {
    #[error("creating {path}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading blob {sha256} from the image store")]
    ReadBlob {
        sha256: String,
        #[source]
        source: Box<kiln_image_store::BlobError>,
    },
    #[error("expanding blob {sha256} into {path}")]
    ExpandBase {
        sha256: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a {format} disk artifact cannot back a network disk (raw or qcow2 only)")]
    UnsupportedFormat { format: String },
    #[error("running {command}")]
    StartTool {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node_id} has no network disk")]
    NoClone { node_id: String },
    #[error("the export process of node {node_id} did not come up: {reason}")]
    ExportNotReady { node_id: String, reason: String },
    #[error("connecting to the export process of node {node_id}")]
    ConnectExport {
        node_id: String,
        #[source]
        source: kiln_nbd::NbdError,
    },
}

/// The network-disk service: clones and their export processes.
pub struct NetworkDisks {
    clones: Arc<dyn CloneBackend>,
    exports: Exports,
}

impl NetworkDisks {
    /// Clones and bases under `root` (created if missing), expanded from `blobs`.
    pub fn local(root: &Path, blobs: kiln_image_store::BlobStore) -> Result<NetworkDisks, NetdiskError> {
        let clones = Arc::new(LocalClones::new(root, blobs)?);
        let exports = Exports::new(root.join("run"), clones.clone())?;
        Ok(NetworkDisks { clones, exports })
    }

    pub fn describe(&self) -> String {
        self.clones.describe()
    }

    /// Gives `node_id` a fresh clone of `base` (its export, if running, is stopped first, so
    /// no node keeps writing to the clone being replaced).
    pub async fn prepare(&self, node_id: &str, base: &BaseSpec) -> Result<(), NetdiskError> {
        self.exports.fence(node_id).await;
        let prepared = self.clones.create_clone(node_id, base).await;
        self.exports.unfence(node_id);
        prepared
    }

    /// Removes `node_id`'s clone and stops its export; its space is freed, the base stays.
    pub async fn remove(&self, node_id: &str) -> Result<(), NetdiskError> {
        self.exports.fence(node_id).await;
        let removed = self.clones.remove_clone(node_id).await;
        self.exports.unfence(node_id);
        removed
    }

    /// Writes `node_id`'s changes over `base`'s root as a layer file in `directory` (the
    /// export is stopped first, so the clone is closed cleanly, and none starts meanwhile).
    pub async fn snapshot_layer(&self, node_id: &str, base: &BaseSpec, directory: &Path) -> Result<PathBuf, NetdiskError> {
        // Fenced throughout: a node still running (no BMC to power it off) waits, and the
        // layer is the clone as its export process left it.
        self.exports.fence(node_id).await;
        let layer = self.clones.snapshot_layer(node_id, base, directory).await;
        self.exports.unfence(node_id);
        layer
    }

    /// Bytes `node_id`'s clone takes on its own (what its node wrote, and qcow2's metadata).
    pub fn stored_bytes(&self, node_id: &str) -> Option<u64> {
        self.clones.stored_bytes(node_id)
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Stops every export process.
    pub async fn shutdown(&self) {
        self.exports.stop_all().await;
    }
}
