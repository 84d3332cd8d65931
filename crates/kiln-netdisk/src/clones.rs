//! Where clones live: the [`CloneBackend`] interface, and [`LocalClones`], qcow2 overlays in
//! a local directory. (The scale-out backend is Ceph RBD, as BMI's: `rbd clone` of a
//! protected snapshot per node; see ARCHITECTURE.md.)

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use kiln_image_store::{BlobId, BlobStore};
use kiln_types::image::{Compression, ImageFormat};

use crate::NetdiskError;

/// The version's disk artifact a clone is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSpec {
    /// The blob as stored.
    pub sha256: String,
    pub format: ImageFormat,
    pub compression: Option<Compression>,
    /// The version's layer over that disk (a snapshot's changes), if it has one.
    pub layer: Option<String>,
}

/// A store of per-node clones.
pub trait CloneBackend: Send + Sync {
    fn describe(&self) -> String;
    /// Makes `node_id` a fresh clone of `base`, replacing any it had.
    fn create_clone<'a>(&'a self, node_id: &'a str, base: &'a BaseSpec) -> BoxFuture<'a, Result<(), NetdiskError>>;
    /// Removes `node_id`'s clone; removing none is not an error.
    fn remove_clone<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<(), NetdiskError>>;
    /// What an export process opens for `node_id` (a qcow2 file), if it has a clone.
    fn clone_file(&self, node_id: &str) -> Option<PathBuf>;
    /// The bytes the clone takes on its own.
    fn stored_bytes(&self, node_id: &str) -> Option<u64>;
    /// Writes what `node_id` changed over the root of `base` (its layer's changes too) as a
    /// standalone qcow2 layer file in `directory`, and returns it. The clone must not be in
    /// use (its export stopped).
    fn snapshot_layer<'a>(
        &'a self,
        node_id: &'a str,
        base: &'a BaseSpec,
        directory: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, NetdiskError>>;
}

/// Runs `qemu-img` with `args`, naming `what` in the error.
async fn qemu_img(what: &str, args: &[&std::ffi::OsStr]) -> Result<(), NetdiskError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|source| NetdiskError::StartTool { command: format!("qemu-img {what} (install qemu-utils)"), source })?;
    if !output.status.success() {
        return Err(NetdiskError::Tool {
            command: format!("qemu-img {what}"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// qcow2 overlays under `root/clones`, on bases that are local blobs or their expansions
/// under `root/bases`.
pub struct LocalClones {
    root: PathBuf,
    blobs: BlobStore,
    /// One expansion per base at a time: nodes deploying one version at once wait for the
    /// first to finish, and then share its result.
    expanding: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A node id is a UUID; anything else never names a file.
fn file_safe(node_id: &str) -> bool {
    !node_id.is_empty() && node_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl LocalClones {
    pub fn new(root: &Path, blobs: BlobStore) -> Result<LocalClones, NetdiskError> {
        for directory in [root.join("clones"), root.join("bases")] {
            std::fs::create_dir_all(&directory).map_err(|source| NetdiskError::CreateDirectory { path: directory.clone(), source })?;
        }
        Ok(LocalClones { root: root.to_owned(), blobs, expanding: Default::default() })
    }

    fn clone_path(&self, node_id: &str) -> PathBuf {
        self.root.join("clones").join(format!("{node_id}.qcow2"))
    }

    /// The file that backs clones of `base`: the blob itself where it is a plain local file,
    /// else its expansion, made now if it is not there yet.
    async fn base_file(&self, base: &BaseSpec) -> Result<PathBuf, NetdiskError> {
        let id = BlobId::parse(&base.sha256)
            .map_err(|source| NetdiskError::ReadBlob { sha256: base.sha256.clone(), source: Box::new(source) })?;
        if base.compression.is_none()
            && let Some(path) = self.blobs.local_path(&id)
            && path.exists()
        {
            return Ok(path);
        }
        let expanded = self.root.join("bases").join(format!("{}.{}", base.sha256, base.format.as_str()));
        let lock = self.expanding.lock().await.entry(base.sha256.clone()).or_default().clone();
        let _expanding = lock.lock().await;
        if expanded.exists() {
            return Ok(expanded);
        }
        let started = std::time::Instant::now();
        let expand_error = |path: &Path| {
            let (sha256, path) = (base.sha256.clone(), path.to_owned());
            move |source| NetdiskError::ExpandBase { sha256, path, source }
        };
        // The stored bytes: the local blob, or a download of it.
        let download = self.root.join("bases").join(format!("{}.download", base.sha256));
        let stored = match self.blobs.local_path(&id) {
            Some(path) => path,
            None => {
                self.download(&id, &download).await?;
                download.clone()
            }
        };
        let partial = expanded.with_extension("partial");
        let (compression, from, to) = (base.compression, stored.clone(), partial.clone());
        let written = tokio::task::spawn_blocking(move || decompress(&from, &to, compression))
            .await
            .unwrap_or_else(|panic| Err(std::io::Error::other(format!("the expansion panicked: {panic}"))));
        let _ = std::fs::remove_file(&download);
        let renamed = written.and_then(|written| std::fs::rename(&partial, &expanded).map(|()| written));
        let written = match renamed {
            Ok(written) => written,
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                return Err(expand_error(&expanded)(error));
            }
        };
        tracing::info!(sha256 = %base.sha256, bytes = written, seconds = started.elapsed().as_secs_f64(), path = %expanded.display(), "network disk base expanded (once per version)");
        Ok(expanded)
    }
}

impl LocalClones {
    /// The file clones of `base` sit on: the root base, or the version's layer over it (a
    /// copy of the layer blob whose backing file is set to the root base here).
    async fn top_file(&self, base: &BaseSpec) -> Result<(PathBuf, &'static str), NetdiskError> {
        let root = self.base_file(base).await?;
        let Some(layer) = &base.layer else { return Ok((root, backing_format(base.format)?)) };
        let id = BlobId::parse(layer).map_err(|source| NetdiskError::ReadBlob { sha256: layer.clone(), source: Box::new(source) })?;
        let path = self.root.join("bases").join(format!("{id}.layer.qcow2"));
        let lock = self.expanding.lock().await.entry(layer.clone()).or_default().clone();
        let _expanding = lock.lock().await;
        if !path.exists() {
            let partial = path.with_extension("partial");
            self.download(&id, &partial).await?;
            qemu_img(
                "rebase",
                &[
                    "rebase".as_ref(),
                    "-u".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-F".as_ref(),
                    backing_format(base.format)?.as_ref(),
                    "-b".as_ref(),
                    root.as_os_str(),
                    partial.as_os_str(),
                ],
            )
            .await
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&partial);
            })?;
            if let Err(source) = std::fs::rename(&partial, &path) {
                let _ = std::fs::remove_file(&partial);
                return Err(NetdiskError::ExpandBase { sha256: layer.clone(), path: path.clone(), source });
            }
        }
        Ok((path, "qcow2"))
    }
}

impl LocalClones {
    /// Copies blob `id` to `to` and syncs it; nothing is left at `to` when that fails.
    async fn download(&self, id: &BlobId, to: &Path) -> Result<(), NetdiskError> {
        let read = self
            .blobs
            .read(id, None)
            .await
            .map_err(|source| NetdiskError::ReadBlob { sha256: id.to_string(), source: Box::new(source) })?;
        let copied = async {
            let mut file = tokio::fs::File::create(to).await?;
            let mut stream = read.stream;
            while let Some(chunk) = stream.next().await {
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
            }
            file.sync_all().await
        }
        .await;
        copied.map_err(|source| {
            let _ = std::fs::remove_file(to);
            NetdiskError::ExpandBase { sha256: id.to_string(), path: to.to_owned(), source }
        })
    }
}

/// Writes the decompressed bytes of `from` to `to`, sparse where they are zero, and syncs.
fn decompress(from: &Path, to: &Path, compression: Option<Compression>) -> std::io::Result<u64> {
    let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(from)?);
    let mut reader: Box<dyn std::io::Read> = match compression {
        None => Box::new(input),
        Some(Compression::Zstd) => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Some(Compression::Gzip) => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Some(Compression::Xz) => Box::new(liblzma::bufread::XzDecoder::new(input)),
    };
    let mut output = std::fs::File::create(to)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        // Zero blocks become holes: a disk image is mostly empty, and the base is read-only.
        for block in buffer[..read].chunks(64 << 10) {
            if block.iter().all(|&byte| byte == 0) {
                std::io::Seek::seek(&mut output, std::io::SeekFrom::Current(block.len() as i64))?;
            } else {
                output.write_all(block)?;
            }
        }
        total += read as u64;
    }
    output.set_len(total)?;
    output.sync_all()?;
    Ok(total)
}

fn backing_format(format: ImageFormat) -> Result<&'static str, NetdiskError> {
    match format {
        ImageFormat::Raw => Ok("raw"),
        ImageFormat::Qcow2 => Ok("qcow2"),
        other => Err(NetdiskError::UnsupportedFormat { format: other.as_str().to_owned() }),
    }
}

impl CloneBackend for LocalClones {
    fn describe(&self) -> String {
        format!("local qcow2 clones in {}", self.root.display())
    }

    fn create_clone<'a>(&'a self, node_id: &'a str, base: &'a BaseSpec) -> BoxFuture<'a, Result<(), NetdiskError>> {
        Box::pin(async move {
            if !file_safe(node_id) {
                return Err(NetdiskError::NoClone { node_id: node_id.to_owned() });
            }
            let (base_file, backing_format) = self.top_file(base).await?;
            let clone = self.clone_path(node_id);
            let partial = clone.with_extension("partial");
            let _ = std::fs::remove_file(&partial);
            let output = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
                .arg(&base_file)
                .arg(&partial)
                .output()
                .await
                .map_err(|source| NetdiskError::StartTool { command: "qemu-img create (install qemu-utils)".into(), source })?;
            if !output.status.success() {
                return Err(NetdiskError::Tool {
                    command: "qemu-img create".into(),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
            // Replaces the old clone in one step: a node never sees half of either.
            std::fs::rename(&partial, &clone).map_err(|source| NetdiskError::Remove { path: clone.clone(), source })?;
            tracing::info!(node = node_id, base = %base_file.display(), clone = %clone.display(), "network disk cloned");
            Ok(())
        })
    }

    fn remove_clone<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<(), NetdiskError>> {
        Box::pin(async move {
            if !file_safe(node_id) {
                return Ok(());
            }
            let clone = self.clone_path(node_id);
            match std::fs::remove_file(&clone) {
                Ok(()) => {
                    tracing::info!(node = node_id, clone = %clone.display(), "network disk removed");
                    Ok(())
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(NetdiskError::Remove { path: clone, source }),
            }
        })
    }

    fn clone_file(&self, node_id: &str) -> Option<PathBuf> {
        let path = self.clone_path(node_id);
        (file_safe(node_id) && path.exists()).then_some(path)
    }

    fn stored_bytes(&self, node_id: &str) -> Option<u64> {
        let metadata = std::fs::metadata(self.clone_file(node_id)?).ok()?;
        Some(metadata.blocks() * 512)
    }

    fn snapshot_layer<'a>(
        &'a self,
        node_id: &'a str,
        base: &'a BaseSpec,
        directory: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, NetdiskError>> {
        Box::pin(async move {
            let clone = self.clone_file(node_id).ok_or_else(|| NetdiskError::NoClone { node_id: node_id.to_owned() })?;
            let layer = directory.join(format!("snapshot-{node_id}.qcow2"));
            let copy_error = |source| NetdiskError::ExpandBase { sha256: node_id.to_owned(), path: layer.clone(), source };
            tokio::fs::copy(&clone, &layer).await.map_err(copy_error)?;
            let made = self.make_layer_standalone(&layer, base).await;
            if made.is_err() {
                let _ = std::fs::remove_file(&layer);
            }
            made.map(|()| layer)
        })
    }
}

impl LocalClones {
    /// Rebases a copy of a clone onto the root base (carrying a layer's changes in), then
    /// drops the backing file's name.
    async fn make_layer_standalone(&self, layer: &Path, base: &BaseSpec) -> Result<(), NetdiskError> {
        let root = self.base_file(base).await?;
        let format = backing_format(base.format)?;
        // Over the root: a clone of a layered version carries the layer's changes into the
        // new layer (qemu-img's safe rebase writes where the old chain and the root differ),
        // so versions are always one layer over their disk.
        if base.layer.is_some() {
            qemu_img(
                "rebase",
                &[
                    "rebase".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-F".as_ref(),
                    format.as_ref(),
                    "-b".as_ref(),
                    root.as_os_str(),
                    layer.as_os_str(),
                ],
            )
            .await?;
        }
        // Stored without this server's path: whoever uses it sets its backing file.
        qemu_img(
            "rebase",
            &["rebase".as_ref(), "-u".as_ref(), "-f".as_ref(), "qcow2".as_ref(), "-b".as_ref(), "".as_ref(), layer.as_os_str()],
        )
        .await?;
        Ok(())
    }
}
