//! Ironic's `instance_info.image_source` given as a URL, as the Ironic seed writes it: the
//! image is fetched into a Kiln image of the node's project (`ironic-` and a digest of the
//! URL), verified against the checksum the node carries, converted from qcow2 to raw where it
//! is one, and deployed from there.
//!
//! The cached copy follows Ironic's rule, not Kiln's own import's: it is kept only while the
//! source's `Last-Modified` (a file's modification time) is unchanged, asked with a
//! conditional request; a source that sends no `Last-Modified` is fetched every time, and an
//! `ETag` alone keeps nothing. A checksum other than the one the copy was verified against
//! fetches it again, so a changed checksum is always checked against the bytes.
//!
//! The fetch runs while the deploy request waits, so that its outcome is the request's: a
//! URL that cannot be fetched, or bytes without the checksum, end the deploy in
//! `deploy failed` with the reason in `last_error`, recorded by the lifecycle like any other
//! deploy failure (`Intent::FailDeploy`).

use kiln_auth::AuthContext;
use kiln_db::{NewArtifact, NewImage, NewVersion};
use kiln_image_store::fetch::{Fetch, FetchError, Source, Validators};
use kiln_image_store::{Checksum, Digests, SpoolFile};
use kiln_types::image::{ArtifactKind, ImageFormat, VersionRef, Visibility};
use kiln_types::node::Node;
use kiln_types::scoped_name::{NameReference, ScopedName};
use serde_json::{Map, Value};
use sha2::Digest as _;

use super::{IronicError, IronicResult};
use crate::ApiState;
use crate::error::ApiError;
use crate::uploads::{fetch_error, spool_error, store_spooled};

/// What deploying a node's `image_source` comes to.
pub(super) enum Prepared {
    /// The image to deploy, as `KEY:VERSION`.
    Image(String),
    /// The deploy fails before reaching the machine, for this reason.
    Failed(String),
}

/// Whether `image_source` names an image by URL rather than a Kiln image.
pub(super) fn is_url(image_source: &str) -> bool {
    image_source.contains("://")
}

/// The checksum the node's `instance_info` gives: `image_os_hash_algo` and
/// `image_os_hash_value`, else `image_checksum` (MD5 when bare, as Ironic reads it; a digest
/// of another length, or `ALGORITHM:HEX`, names its algorithm; a URL names a checksum file).
async fn expected_checksum(
    state: &ApiState,
    caller: &AuthContext,
    instance_info: &Map<String, Value>,
    url: &str,
) -> IronicResult<Option<Checksum>> {
    let text = |key: &str| instance_info.get(key).and_then(Value::as_str).map(str::trim).filter(|text| !text.is_empty());
    let parse = |field: &str, text: &str| {
        text.parse::<Checksum>().map_err(|message| IronicError::invalid(format!("instance_info.{field}: {message}")))
    };
    match (text("image_os_hash_algo"), text("image_os_hash_value")) {
        (Some(algorithm), Some(value)) => return parse("image_os_hash_value", &format!("{algorithm}:{value}")).map(Some),
        (None, None) => {}
        _ => return Err(IronicError::invalid("instance_info.image_os_hash_algo and image_os_hash_value go together")),
    }
    let Some(checksum) = text("image_checksum") else { return Ok(None) };
    if is_url(checksum) {
        let settings = &state.images;
        let name = url.rsplit('/').next().unwrap_or_default();
        let found =
            kiln_image_store::fetch::fetch_checksum(&settings.http, checksum, &settings.import_allowed_dirs, &settings.egress, name)
                .await
                .map_err(|error| IronicError::from(fetch_error(error, caller)))?;
        return Ok(Some(found));
    }
    parse("image_checksum", checksum).map(Some)
}

/// The cache image's name for `url`: stable, and the same in every project.
fn cache_name(url: &str) -> String {
    let digest = sha2::Sha256::digest(url.as_bytes());
    format!("ironic-{}", &hex::encode(digest)[..16])
}

/// Where a source's digest is kept on the artifact made from it: the stored bytes may be a
/// conversion, so the source's own digest is recorded beside theirs.
fn source_digest_key(checksum: &Checksum) -> String {
    format!("source-{}", checksum.algorithm.as_str())
}

/// The cache image for `url` in the node's project, made on first use.
async fn cache_image(state: &ApiState, caller: &AuthContext, node: &Node, url: &str) -> IronicResult<ScopedName> {
    let identity = ScopedName::new(node.project.as_deref(), &cache_name(url));
    let reference = NameReference::parse("image", &identity.key()).map_err(|error| IronicError::invalid(error.to_string()))?;
    match state.store.get_image(&reference, &caller.read_scope()).await {
        Ok(image) => return Ok(image.scoped_name()),
        Err(kiln_db::StoreError::NotFound { .. }) => {}
        Err(error) => return Err(ApiError::from(error).into()),
    }
    let description: String = format!("fetched for the Ironic API from {url}").chars().take(1000).collect();
    let spec = NewImage {
        name: identity.name.clone(),
        project: identity.project.clone(),
        visibility: Visibility::Private,
        shared_with: Vec::new(),
        description,
        os: None,
        arch: None,
    };
    match state.store.create_image(&caller.user, &spec).await {
        Ok(image) => Ok(image.scoped_name()),
        // Another deploy of the same URL made it first.
        Err(kiln_db::StoreError::Conflict { .. }) => Ok(identity),
        Err(error) => Err(ApiError::from(error).into()),
    }
}

/// Removes a spool file however the fetch ends.
struct SpoolGuard(std::path::PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), %error, "removing a spool file failed");
        }
    }
}

/// Fetches `url` for `node` (or finds it cached) and answers what to deploy.
pub(super) async fn prepare(
    state: &ApiState,
    caller: &AuthContext,
    node: &Node,
    instance_info: &Map<String, Value>,
    url: &str,
) -> IronicResult<Prepared> {
    let settings = &state.images;
    let source = match Source::parse(url, &settings.import_allowed_dirs, &settings.egress) {
        Ok(source) => source,
        Err(error @ (FetchError::UnsupportedUrl { .. } | FetchError::FileNotAllowed { .. })) => {
            return Err(IronicError::invalid(format!("instance_info.image_source: {error}")));
        }
        Err(error) => return Ok(Prepared::Failed(fetch_error(error, caller).message)),
    };
    let expected = match expected_checksum(state, caller, instance_info, url).await? {
        Some(expected) => Some(expected),
        None if matches!(source, Source::Http(_)) => {
            return Err(IronicError::invalid(format!(
                "Node {} has an HTTP(S) image_source and no checksum: set instance_info.image_checksum (or image_os_hash_algo and image_os_hash_value)",
                node.name
            )));
        }
        None => None,
    };
    let image = cache_image(state, caller, node, url).await?;
    let previous = state.store.last_import(&image, ArtifactKind::Disk).await?.filter(|previous| previous.url == url);
    // The copy may be kept only if it was verified against this very checksum and its
    // source said when it last changed.
    let mut cached = None;
    if let Some(previous) = &previous
        && let Some(modified) = &previous.modified
    {
        let version = state.store.get_version(&image, &VersionRef::Number(previous.version)).await?;
        let verified = version.artifact(ArtifactKind::Disk).is_some_and(|artifact| match &expected {
            Some(expected) => artifact.checksums.get(&source_digest_key(expected)) == Some(&expected.hex),
            None => true,
        });
        if verified {
            cached = Some((previous.version, Validators { etag: None, last_modified: Some(modified.clone()) }));
        }
    }
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let spool_path = SpoolFile::path_in(settings.blobs.spool_dir(), &format!("ironic-{unique}"));
    let create_path = spool_path.clone();
    let algorithm = expected.as_ref().map(|expected| expected.algorithm);
    let spool = tokio::task::spawn_blocking(move || SpoolFile::create(&create_path, algorithm))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("starting the image fetch", &error))?;
    let _spool_guard = SpoolGuard(spool_path.clone());
    let fetched = kiln_image_store::fetch::fetch(&settings.http, &source, spool, cached.as_ref().map(|(_, validators)| validators)).await;
    let (digests, head, validators) = match fetched {
        Ok(Fetch::NotModified) => {
            let (version, _) = cached.expect("a not-modified answer comes only to a conditional fetch");
            tracing::info!(node = %node.name, %url, image = %image, version, "image_source unchanged since it was cached; nothing fetched");
            return Ok(Prepared::Image(format!("{}:{version}", image.key())));
        }
        Ok(Fetch::Fetched { digests, head, validators }) => (digests, head, validators),
        Err(error) => return Ok(Prepared::Failed(fetch_error(error, caller).message)),
    };
    if let Some(expected) = &expected
        && let Err(mismatch) = digests.verify(expected)
    {
        // The digest the server computed is what the URL answered: logged, not told.
        tracing::warn!(node = %node.name, %url, %mismatch, "image_source failed its checksum");
        return Ok(Prepared::Failed(format!(
            "Image failed to verify against checksum: {url} does not have the checksum {expected} given in instance_info"
        )));
    }
    let inspection = match kiln_image_store::inspect(&head, digests.bytes) {
        Ok(inspection) => inspection,
        Err(error) => return Ok(Prepared::Failed(format!("image_source {url} is not a usable disk image: {error}"))),
    };
    let (stored_path, digests, head, _converted_guard) = if inspection.format == ImageFormat::Qcow2 {
        if inspection.compression.is_some() {
            return Ok(Prepared::Failed(format!("image_source {url} is a compressed qcow2: serve it uncompressed, or as a raw image")));
        }
        match convert(state, &spool_path, &unique).await? {
            Ok((path, converted, converted_head)) => (path.clone(), converted, converted_head, Some(SpoolGuard(path))),
            Err(reason) => return Ok(Prepared::Failed(format!("image_source {url}: {reason}"))),
        }
    } else {
        (spool_path.clone(), digests, head, None)
    };
    let mut artifact = match store_spooled(state, &stored_path, digests, &head, ArtifactKind::Disk, None, None).await {
        Ok(artifact) => artifact,
        Err(error) if error.status.is_client_error() => return Ok(Prepared::Failed(format!("image_source {url}: {}", error.message))),
        Err(error) => return Err(error.into()),
    };
    artifact.source_url = Some(url.to_owned());
    if let Some(expected) = &expected {
        artifact.checksums.insert(source_digest_key(expected), expected.hex.clone());
    }
    // An ETag alone keeps no copy (Ironic's rule), so only Last-Modified is recorded.
    let new_artifact = NewArtifact { artifact, source_etag: None, source_modified: validators.last_modified };
    let spec = NewVersion {
        version: None,
        base: None,
        artifacts: vec![new_artifact],
        tags: Vec::new(),
        note: format!("fetched from {url} for node {}", node.name).chars().take(1000).collect(),
    };
    let version = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(node = %node.name, %url, image = %image, version = version.version, format = %inspection.format, "image_source fetched for the Ironic API");
    Ok(Prepared::Image(format!("{}:{}", image.key(), version.version)))
}

/// Converts the spooled qcow2 into a compressed raw image in a second spool file: the path,
/// digests and head of that, or why it could not be converted.
async fn convert(
    state: &ApiState,
    qcow2: &std::path::Path,
    unique: &str,
) -> IronicResult<Result<(std::path::PathBuf, Digests, Vec<u8>), String>> {
    let spool_dir = state.images.blobs.spool_dir();
    let output_path = SpoolFile::path_in(spool_dir, &format!("ironic-raw-{unique}"));
    let scratch = SpoolFile::path_in(spool_dir, &format!("ironic-scratch-{unique}"));
    let (qcow2, create_path) = (qcow2.to_owned(), output_path.clone());
    let converted = tokio::task::spawn_blocking(move || {
        let output = SpoolFile::create(&create_path, None).map_err(|source| kiln_image_store::convert::ConvertError::Spool { source })?;
        kiln_image_store::convert::qcow2_to_raw_zstd(&qcow2, &scratch, output)
    })
    .await
    .expect("no panic");
    match converted {
        Ok((digests, head)) => Ok(Ok((output_path, digests, head))),
        Err(kiln_image_store::convert::ConvertError::Spool { source }) => {
            let _ = tokio::fs::remove_file(&output_path).await;
            Err(spool_error("converting the image to raw", &source).into())
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&output_path).await;
            tracing::warn!(error = %kiln_image_store::error_chain(&error), "converting an image_source from qcow2 failed");
            Ok(Err(format!("converting it from qcow2 to raw failed: {error}")))
        }
    }
}
