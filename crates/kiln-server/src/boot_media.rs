//! Boot media for virtual-media nodes: for each boot, a small ISO holding the kernel and
//! initramfs the node is to boot (the deploy ramdisk with its agent's token, or a live
//! image) and a boot entry whose command line carries the node's static network
//! configuration, so that no DHCP is needed. The ISO is served by the boot listener under an
//! unguessable name for the node's BMC to fetch, and removed when the operation ends (the
//! reconciler's eject) or when the next boot replaces it. A node going back to its disk gets
//! a cloud-init seed in the drive instead (NoCloud's `cidata`: its documents and its static
//! network configuration), which its system reads before it brings the network up.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use kiln_api::ApiState;
use kiln_boot::{BootPlan, KernelBoot};
use kiln_types::node::Node;
use kiln_types::static_network::StaticNetwork;
use tokio::io::AsyncWriteExt as _;

/// Why a medium was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootMediumError {
    /// The API's error carries no cause, only its message.
    #[error("planning what node {node} boots: {message}")]
    Plan { node: String, message: String },
    #[error("node {node} has nothing to boot now ({why})")]
    NothingToBoot { node: String, why: &'static str },
    #[error("{url} is not an artifact of a public image in the store, so it cannot go on a medium")]
    NotAnArtifact { url: String },
    #[error("reading {url} from the image store")]
    Read {
        url: String,
        /// Boxed: the store's error is large, and this one travels through every medium step.
        #[source]
        source: Box<kiln_image_store::BlobError>,
    },
    #[error("copying {url} from the image store to {path}")]
    Copy {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the media directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing the media directory {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the medium {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the ISO")]
    Build(#[source] kiln_image_build::medium::MediumError),
}

/// Makes, serves and removes boot media in the boot listener's media directory.
pub(crate) struct BootMedia {
    state: ApiState,
}

impl BootMedia {
    pub(crate) fn new(state: ApiState) -> Arc<BootMedia> {
        Arc::new(BootMedia { state })
    }

    fn directory(&self) -> &Path {
        &self.state.boot.media_dir
    }

    /// The media directory, made (owner only) if it is not there yet.
    fn made_directory(&self) -> Result<PathBuf, BootMediumError> {
        let directory = self.directory().to_owned();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)
            .map_err(|source| BootMediumError::Directory { path: directory.clone(), source })?;
        Ok(directory)
    }

    /// Makes `node`'s medium for what it boots now and returns its URL; its older media go.
    async fn prepare(&self, node: &Node) -> Result<String, BootMediumError> {
        let plan = kiln_api::boot::boot_medium_plan(&self.state, node)
            .await
            .map_err(|error| BootMediumError::Plan { node: node.name.clone(), message: error.message })?;
        let nothing = |why| BootMediumError::NothingToBoot { node: node.name.clone(), why };
        let boot = match plan {
            Some(BootPlan::Kernel(boot)) => boot,
            Some(BootPlan::LocalDisk) => return Err(nothing("it boots its own disk")),
            Some(BootPlan::AskAgain) => return Err(nothing("its image, its deploy ramdisk or its token is not ready")),
            None => return Err(nothing("it is in no operation")),
        };
        let (Some(kernel_url), Some(initrd_url)) = (boot.kernel.clone(), boot.initrd.clone()) else {
            return Err(nothing("its boot parameters name no kernel and initramfs"));
        };
        let boot = KernelBoot { command_line: medium_command_line(&boot.command_line, StaticNetwork::of_node(node).as_ref()), ..boot };
        let directory = self.made_directory()?;
        let work = tempfile::tempdir_in(&directory).map_err(|source| BootMediumError::Directory { path: directory.clone(), source })?;
        let kernel = work.path().join("kernel");
        let initrd = work.path().join("initrd");
        self.copy_artifact(&kernel_url, &kernel).await?;
        self.copy_artifact(&initrd_url, &initrd).await?;
        let grub_config = kiln_boot::medium_grub_config(&boot, &node.name);
        let archive = kiln_boot::medium::newc_archive(&[]).expect("an empty archive fits");
        // The name is the medium's only secret (it can carry an agent token): 256 random bits.
        let url = self
            .publish(node, move |output| {
                let contents = kiln_image_build::medium::MediumContents {
                    kernel: &kernel,
                    initrd: &initrd,
                    boot_archive: &archive,
                    grub_config: &grub_config,
                };
                kiln_image_build::medium::build_boot_medium(contents, output)
            })
            .await?;
        tracing::info!(node = %node.name, purpose = ?boot.purpose, "boot medium made");
        Ok(url)
    }

    /// Builds a medium of `node` under a new name in the media directory (256 random bits:
    /// a medium can carry an agent token), removes the node's other media, and returns the
    /// URL the boot listener serves it at.
    async fn publish(
        &self,
        node: &Node,
        build: impl FnOnce(&Path) -> Result<(), kiln_image_build::medium::MediumError> + Send + 'static,
    ) -> Result<String, BootMediumError> {
        let name = format!("{}.{}.iso", node.id, kiln_auth::mint_token());
        let output = self.made_directory()?.join(&name);
        tokio::task::spawn_blocking(move || build(&output))
            .await
            .expect("building a medium does not panic")
            .map_err(BootMediumError::Build)?;
        self.remove_except(node, Some(&name)).await?;
        Ok(format!("{}{}/{name}", self.state.boot.public_url, kiln_api::routes::BOOT_MEDIA_PREFIX))
    }

    /// Makes `node`'s cloud-init seed, replacing its other media; its URL, or `None` when
    /// the node has no static address.
    async fn prepare_seed(&self, node: &Node) -> Result<Option<String>, BootMediumError> {
        let Some(documents) = kiln_api::cloud_init::seed_documents(&self.state, node) else {
            tracing::debug!(node = %node.name, "the node has no static address: no cloud-init seed");
            return Ok(None);
        };
        let url = self
            .publish(node, move |output| {
                let files: Vec<(&str, &[u8])> = documents.iter().map(|(name, text)| (*name, text.as_bytes())).collect();
                kiln_image_build::medium::build_seed_medium(&files, output)
            })
            .await?;
        tracing::info!(node = %node.name, "cloud-init seed made");
        Ok(Some(url))
    }

    /// Copies the artifact behind `url` out of the image store (local or S3) to `path`.
    async fn copy_artifact(&self, url: &str, path: &Path) -> Result<(), BootMediumError> {
        let (blob, _) = kiln_api::images::boot_artifact_blob(&self.state, url)
            .await
            .ok_or_else(|| BootMediumError::NotAnArtifact { url: url.to_owned() })?;
        let fetch_error = |source| BootMediumError::Copy { url: url.to_owned(), path: path.to_owned(), source };
        let read = self
            .state
            .images
            .blobs
            .read(&blob, None)
            .await
            .map_err(|source| BootMediumError::Read { url: url.to_owned(), source: Box::new(source) })?;
        let mut file = tokio::fs::File::create(path).await.map_err(fetch_error)?;
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(fetch_error)?).await.map_err(fetch_error)?;
        }
        file.flush().await.map_err(fetch_error)
    }

    /// Removes `node`'s media but `keep`.
    async fn remove_except(&self, node: &Node, keep: Option<&str>) -> Result<(), BootMediumError> {
        let prefix = format!("{}.", node.id);
        let mut entries = match tokio::fs::read_dir(self.directory()).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(BootMediumError::List { path: self.directory().to_owned(), source }),
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".iso") && Some(name.as_str()) != keep {
                tokio::fs::remove_file(entry.path()).await.map_err(|source| BootMediumError::Remove { path: entry.path(), source })?;
                tracing::info!(node = %node.name, "boot medium removed");
            }
        }
        Ok(())
    }
}

/// The medium's command line: the plan's, with the node's static configuration in place of
/// any `ip=` the plan has (a live image's `ip=dhcp`).
fn medium_command_line(plan: &str, network: Option<&StaticNetwork>) -> String {
    let Some(network) = network else { return plan.to_owned() };
    let words = plan.split_whitespace().filter(|word| !word.starts_with("ip=")).map(str::to_owned);
    words.chain(network.kernel_arguments()).collect::<Vec<_>>().join(" ")
}

impl kiln_lifecycle::BootMedia for BootMedia {
    fn prepare<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { BootMedia::prepare(self, node).await.map_err(|error| kiln_types::error_chain(&error)) })
    }

    fn prepare_seed<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { BootMedia::prepare_seed(self, node).await.map_err(|error| kiln_types::error_chain(&error)) })
    }

    fn remove<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.remove_except(node, None).await.map_err(|error| kiln_types::error_chain(&error)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_configuration_replaces_the_plans_dhcp() {
        let network = StaticNetwork {
            mac: "52:54:00:be:ef:41".parse().unwrap(),
            address: "10.77.0.41".parse().unwrap(),
            prefix_length: 24,
            gateway: None,
            dns_servers: vec![],
            vlan: None,
            hostname: "nid041".to_owned(),
        };
        let plan = "console=ttyS0 root=live:http://x/root ip=dhcp rd.live.overlay.overlayfs=1";
        assert_eq!(
            medium_command_line(plan, Some(&network)),
            "console=ttyS0 root=live:http://x/root rd.live.overlay.overlayfs=1 ifname=kiln0:52:54:00:be:ef:41 ip=10.77.0.41:::255.255.255.0:nid041:kiln0:none"
        );
        assert_eq!(medium_command_line(plan, None), plan);
    }
}
