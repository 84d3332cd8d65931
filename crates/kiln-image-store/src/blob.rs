//! The content-addressed blob store: a local directory (the default) or an S3-compatible
//! bucket through the `object_store` crate.
//!
//! Blobs are named `sha256/<first two hex digits>/<all 64 digits>`. A blob appears whole or
//! not at all: locally it is fsynced and renamed into place from the same filesystem; in S3
//! a single PUT or a completed multipart upload is atomic.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::ObjectStore as _;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::BlobError;

/// Bytes read from a spool file per S3 part; also the size under which one PUT is used.
const S3_PART_BYTES: usize = 16 << 20;
/// Parts in flight at once during a multipart upload.
const S3_PARTS_IN_FLIGHT: usize = 4;
/// Read size when streaming a local blob out.
const LOCAL_READ_BYTES: usize = 1 << 20;

/// A blob's name: the lowercase hex SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    pub fn parse(text: &str) -> Result<BlobId, BlobError> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(BlobId(text.to_owned()))
        } else {
            Err(BlobError::InvalidId { text: text.chars().take(80).collect() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn relative_path(&self) -> String {
        format!("sha256/{}/{}", &self.0[..2], self.0)
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an S3-compatible bucket is and how to sign requests to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:3900`
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// A key prefix inside the bucket, so one bucket can hold several stores.
    pub prefix: String,
}

/// A blob the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub id: BlobId,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: i64,
}

/// An open read of (part of) a blob.
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The bytes of the requested range.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

enum Backend {
    Local { root: PathBuf },
    Object { store: Arc<dyn object_store::ObjectStore>, prefix: String, description: String },
}

/// A handle to the blob store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<Backend>,
    spool_dir: PathBuf,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("backend", &self.describe()).finish()
    }
}

fn sync_directory(path: &Path) -> Result<(), BlobError> {
    std::fs::File::open(path).and_then(|directory| directory.sync_all()).map_err(BlobError::io("syncing directory", path))
}

impl BlobStore {
    /// A store in a local directory. Uploads are spooled under it, so that moving a finished
    /// upload into the store is a rename on the same filesystem.
    pub fn local(root: &Path) -> Result<BlobStore, BlobError> {
        let spool_dir = root.join("spool");
        for directory in [root.join("sha256"), spool_dir.clone()] {
            std::fs::create_dir_all(&directory).map_err(BlobError::io("creating directory", &directory))?;
        }
        Ok(BlobStore { backend: Arc::new(Backend::Local { root: root.to_owned() }), spool_dir })
    }

    /// A store in an S3 bucket; uploads are spooled in `spool_dir` on local disk first.
    pub fn s3(settings: &S3Settings, spool_dir: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(spool_dir).map_err(BlobError::io("creating directory", spool_dir))?;
        let store = s3_object_store(settings)?;
        let prefix = settings.prefix.trim_matches('/').to_owned();
        let description = format!("s3 {}/{}/{}", settings.endpoint.trim_end_matches('/'), settings.bucket, prefix);
        Ok(BlobStore {
            backend: Arc::new(Backend::Object { store: Arc::new(store), prefix, description }),
            spool_dir: spool_dir.to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local { root } => format!("local {}", root.display()),
            Backend::Object { description, .. } => description.clone(),
        }
    }

    /// Where uploads in progress keep their bytes.
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// The file holding a blob, for a local store: the boot service sends it from there.
    pub fn local_path(&self, id: &BlobId) -> Option<PathBuf> {
        match &*self.backend {
            Backend::Local { root } => Some(root.join(id.relative_path())),
            Backend::Object { .. } => None,
        }
    }

    fn object_key(prefix: &str, id: &BlobId) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(id.relative_path())
        } else {
            object_store::path::Path::from(format!("{prefix}/{}", id.relative_path()))
        }
    }

    /// The blob's size, if the store has it.
    pub async fn size_of(&self, id: &BlobId) -> Result<Option<u64>, BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let path = root.join(id.relative_path());
                match tokio::fs::metadata(&path).await {
                    Ok(metadata) => Ok(Some(metadata.len())),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(BlobError::io("reading metadata of", path)(error)),
                }
            }
            Backend::Object { store, prefix, .. } => {
                let key = Self::object_key(prefix, id);
                match store.head(&key).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(source) => Err(BlobError::ObjectStore { operation: "looking up", key: key.to_string(), source }),
                }
            }
        }
    }

    /// Moves a verified spool file whose SHA-256 is `id` into the store. The spool file is
    /// gone afterwards, whether the blob was new or already present.
    pub async fn commit(&self, id: &BlobId, spool: &Path) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let target = root.join(id.relative_path());
                let spool = spool.to_owned();
                tokio::task::spawn_blocking(move || {
                    let directory = target.parent().expect("blob paths have a parent");
                    std::fs::create_dir_all(directory).map_err(BlobError::io("creating directory", directory))?;
                    if target.exists() {
                        // Same name, same bytes: the store already has them.
                        std::fs::remove_file(&spool).map_err(BlobError::io("removing spool file", &spool))?;
                        return Ok(());
                    }
                    std::fs::File::open(&spool).and_then(|file| file.sync_all()).map_err(BlobError::io("syncing spool file", &spool))?;
                    std::fs::rename(&spool, &target).map_err(BlobError::io("moving blob into place at", &target))?;
                    sync_directory(directory)
                })
                .await
                .expect("blob commit does not panic")
            }
            Backend::Object { store, prefix, .. } => {
                let key = Self::object_key(prefix, id);
                if self.size_of(id).await?.is_none() {
                    upload_file(store.as_ref(), &key, spool).await?;
                }
                tokio::fs::remove_file(spool).await.map_err(BlobError::io("removing spool file", spool))
            }
        }
    }

    /// Opens `range` of a blob (all of it if `None`). A range past the end is cut at the end.
    pub async fn read(&self, id: &BlobId, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let path = root.join(id.relative_path());
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        return Err(BlobError::NotFound { id: id.to_string() });
                    }
                    Err(error) => return Err(BlobError::io("opening blob", path)(error)),
                };
                let size = file.metadata().await.map_err(BlobError::io("reading metadata of", &path))?.len();
                let range = range.unwrap_or(0..size);
                let (start, end) = (range.start.min(size), range.end.min(size));
                file.seek(std::io::SeekFrom::Start(start)).await.map_err(BlobError::io("seeking in blob", &path))?;
                let reader = file.take(end - start);
                let stream = tokio_util::io::ReaderStream::with_capacity(reader, LOCAL_READ_BYTES);
                Ok(BlobRead { size, stream: stream.boxed() })
            }
            Backend::Object { store, prefix, .. } => {
                let key = Self::object_key(prefix, id);
                let options = object_store::GetOptions {
                    range: range.map(|range| object_store::GetRange::Bounded(range.start..range.end.max(range.start))),
                    ..Default::default()
                };
                let result = store.get_opts(&key, options).await.map_err(|source| match source {
                    object_store::Error::NotFound { .. } => BlobError::NotFound { id: id.to_string() },
                    source => BlobError::ObjectStore { operation: "reading", key: key.to_string(), source },
                })?;
                let size = result.meta.size;
                let stream = result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other));
                Ok(BlobRead { size, stream: stream.boxed() })
            }
        }
    }

    /// Removes a blob; removing one that is not there is not an error.
    pub async fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let path = root.join(id.relative_path());
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(error) => Err(BlobError::io("removing blob", path)(error)),
                }
            }
            Backend::Object { store, prefix, .. } => {
                let key = Self::object_key(prefix, id);
                match store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(BlobError::ObjectStore { operation: "deleting", key: key.to_string(), source }),
                }
            }
        }
    }

    /// Every blob the store holds (what garbage collection and verification walk).
    pub async fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let root = root.join("sha256");
                tokio::task::spawn_blocking(move || {
                    let mut blobs = Vec::new();
                    for fanout in std::fs::read_dir(&root).map_err(BlobError::io("listing", &root))? {
                        let fanout = fanout.map_err(BlobError::io("listing", &root))?.path();
                        let Ok(entries) = std::fs::read_dir(&fanout) else { continue };
                        for entry in entries {
                            let entry = entry.map_err(BlobError::io("listing", &fanout))?;
                            let Ok(id) = BlobId::parse(&entry.file_name().to_string_lossy()) else { continue };
                            let metadata = entry.metadata().map_err(BlobError::io("reading metadata of", entry.path()))?;
                            let modified = metadata
                                .modified()
                                .ok()
                                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |age| age.as_secs() as i64);
                            blobs.push(StoredBlob { id, size: metadata.len(), modified });
                        }
                    }
                    blobs.sort_by(|a, b| a.id.cmp(&b.id));
                    Ok(blobs)
                })
                .await
                .expect("listing does not panic")
            }
            Backend::Object { store, prefix, .. } => {
                let list_prefix =
                    object_store::path::Path::from(if prefix.is_empty() { "sha256".to_owned() } else { format!("{prefix}/sha256") });
                let mut listing = store.list(Some(&list_prefix));
                let mut blobs = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta =
                        meta.map_err(|source| BlobError::ObjectStore { operation: "listing", key: list_prefix.to_string(), source })?;
                    let Some(name) = meta.location.filename() else { continue };
                    let Ok(id) = BlobId::parse(name) else { continue };
                    blobs.push(StoredBlob { id, size: meta.size, modified: meta.last_modified.timestamp() });
                }
                blobs.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(blobs)
            }
        }
    }

    /// Reads a blob whole and returns the SHA-256 of what it holds now.
    pub async fn rehash(&self, id: &BlobId) -> Result<(String, u64), BlobError> {
        let mut read = self.read(id, None).await?;
        let mut hasher = sha2::Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = read.stream.next().await {
            let chunk = chunk.map_err(BlobError::io("reading blob", id.as_str()))?;
            bytes += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hex::encode(hasher.finalize()), bytes))
    }
}

/// The S3 bucket of `settings` as an object store (keys are not prefixed here).
fn s3_object_store(settings: &S3Settings) -> Result<object_store::aws::AmazonS3, BlobError> {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&settings.endpoint)
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key)
        .with_allow_http(settings.endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
        // A few quick retries ride out a restarting node; a server that keeps failing
        // is reported within seconds rather than minutes.
        .with_retry(object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(60),
            backoff: Default::default(),
        })
        .build()
        .map_err(|source| BlobError::Config { source })
}

/// Writes a local file to `key` in the bucket of `settings` (the image builder's
/// `publish_s3`): one PUT when small, a multipart upload otherwise.
pub async fn put_file_in_bucket(settings: &S3Settings, key: &str, path: &Path) -> Result<(), BlobError> {
    let store = s3_object_store(settings)?;
    upload_file(&store, &object_store::path::Path::from(key), path).await
}

/// The size of `key` in the bucket of `settings`, if it is there.
pub async fn object_size_in_bucket(settings: &S3Settings, key: &str) -> Result<Option<u64>, BlobError> {
    let store = s3_object_store(settings)?;
    match object_store::ObjectStore::head(&store, &object_store::path::Path::from(key)).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(BlobError::ObjectStore { operation: "reading the size of", key: key.to_owned(), source }),
    }
}

/// Uploads a local file to `key`: one PUT when small, a multipart upload otherwise, aborted
/// on failure so that no part lingers.
async fn upload_file(store: &dyn object_store::ObjectStore, key: &object_store::path::Path, path: &Path) -> Result<(), BlobError> {
    let object_error = |operation| move |source| BlobError::ObjectStore { operation, key: key.to_string(), source };
    let mut file = tokio::fs::File::open(path).await.map_err(BlobError::io("opening spool file", path))?;
    let size = file.metadata().await.map_err(BlobError::io("reading metadata of", path))?.len();
    if size <= S3_PART_BYTES as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(BlobError::io("reading spool file", path))?;
        store.put(key, bytes.into()).await.map_err(object_error("writing"))?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await.map_err(object_error("starting a multipart upload of"))?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
    let mut buffer = vec![0u8; S3_PART_BYTES];
    let result: Result<(), BlobError> = async {
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                let n = file.read(&mut buffer[filled..]).await.map_err(BlobError::io("reading spool file", path))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            writer.wait_for_capacity(S3_PARTS_IN_FLIGHT).await.map_err(object_error("uploading a part of"))?;
            writer.write(&buffer[..filled]);
        }
    }
    .await;
    match result {
        Ok(()) => {
            writer.finish().await.map_err(object_error("completing the multipart upload of"))?;
            Ok(())
        }
        Err(error) => {
            if let Err(abort_error) = writer.abort().await {
                tracing::warn!(%key, error = %abort_error, "aborting a failed multipart upload failed");
            }
            Err(error)
        }
    }
}
