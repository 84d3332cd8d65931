//! What Ironic's clients give by URL, fetched into Kiln images: a node's
//! `instance_info.image_source` (with the checksum the node carries) into a private image of
//! the node's project, verified, converted from qcow2 to raw where it is one, and deployed
//! from there; its `driver_info.deploy_kernel` and `deploy_ramdisk` into a public image
//! without a project, which its agent then boots instead of the site's deploy ramdisk.
//! The images' names come from the URLs (`kiln_ironic::images`).
//!
//! A cached copy follows Ironic's rule, not Kiln's own import's: it is kept only while the
//! source's `Last-Modified` (a file's modification time) is unchanged, asked with a
//! conditional request; a source that sends no `Last-Modified` is fetched every time, and an
//! `ETag` alone keeps nothing. A checksum other than the one the copy was verified against
//! fetches it again, so a changed checksum is always checked against the bytes.
//!
//! The fetch runs while the provision request waits, so that its outcome is the request's:
//! an image that cannot be fetched, or bytes without the checksum, end a deploy in
//! `deploy failed` with the reason in `last_error`, recorded by the lifecycle like any other
//! deploy failure (`Intent::FailDeploy`).

use kiln_auth::AuthContext;
use kiln_db::{NewArtifact, NewImage, NewVersion};
use kiln_image_store::fetch::{Fetch, FetchError, Source, Validators};
use kiln_image_store::{Checksum, Digests, SpoolFile};
use kiln_ironic::images::{deploy_ramdisk_image_name, instance_image_name};
use kiln_types::image::{ArtifactKind, ImageFormat, VersionRef, Visibility};
use kiln_types::node::Node;
use kiln_types::scoped_name::ScopedName;
use serde_json::{Map, Value};

use super::{IronicError, IronicResult};
use crate::ApiState;
use crate::error::ApiError;
use crate::uploads::{fetch_error, spool_error, store_spooled};

/// What fetching comes to when the request itself was sound.
pub(super) enum Prepared<T> {
    Ready(T),
    /// The operation fails before reaching the machine, for this reason.
    Failed(String),
}

/// A checksum the fetched bytes must have, and whether the caller may be told it: one read
/// from a checksum file is what the server fetched, which only administrators are shown.
struct Expected {
    checksum: Checksum,
    from_checksum_file: bool,
}

/// The checksum the node's `instance_info` gives: `image_os_hash_algo` and
/// `image_os_hash_value`, else `image_checksum` (MD5 when bare, as Ironic reads it; a digest
/// of another length, or `ALGORITHM:HEX`, names its algorithm; a URL names a checksum file,
/// which is fetched: a checksum file that cannot be read fails the operation like the image
/// itself would).
async fn expected_checksum(
    state: &ApiState,
    caller: &AuthContext,
    instance_info: &Map<String, Value>,
    source: &Source,
) -> IronicResult<Prepared<Option<Expected>>> {
    let text = |key: &str| instance_info.get(key).and_then(Value::as_str).map(str::trim).filter(|text| !text.is_empty());
    let given = |field: &str, text: &str| match text.parse::<Checksum>() {
        Ok(checksum) => Ok(Prepared::Ready(Some(Expected { checksum, from_checksum_file: false }))),
        Err(message) => Err(IronicError::invalid(format!("instance_info.{field}: {message}"))),
    };
    match (text("image_os_hash_algo"), text("image_os_hash_value")) {
        (Some(algorithm), Some(value)) => return given("image_os_hash_value", &format!("{algorithm}:{value}")),
        (None, None) => {}
        _ => return Err(IronicError::invalid("instance_info.image_os_hash_algo and image_os_hash_value go together")),
    }
    let Some(checksum) = text("image_checksum") else { return Ok(Prepared::Ready(None)) };
    if !kiln_ironic::images::is_url(checksum) {
        return given("image_checksum", checksum);
    }
    let settings = &state.images;
    let found = kiln_image_store::fetch::fetch_checksum(
        &settings.http,
        checksum,
        &settings.import_allowed_dirs,
        &settings.egress,
        &source.file_name(),
    )
    .await;
    match found {
        Ok(checksum) => Ok(Prepared::Ready(Some(Expected { checksum, from_checksum_file: true }))),
        Err(error @ (FetchError::UnsupportedUrl { .. } | FetchError::FileNotAllowed { .. })) => {
            Err(IronicError::invalid(format!("instance_info.image_checksum: {error}")))
        }
        Err(error) => Ok(Prepared::Failed(format!("image_checksum: {}", fetch_error(error, caller).message))),
    }
}

/// Where a source's digest is kept on the artifact made from it: the stored bytes may be a
/// conversion, so the source's own digest is recorded beside theirs.
fn source_digest_key(checksum: &Checksum) -> String {
    format!("source-{}", checksum.algorithm.as_str())
}

/// The cache image `identity`, made on first use.
async fn cache_image(
    state: &ApiState,
    caller: &AuthContext,
    identity: ScopedName,
    visibility: Visibility,
    description: String,
) -> IronicResult<ScopedName> {
    // Looked up by its exact identity: the cache is the server's, named by the URL and the
    // node's project, and a bare name must never resolve to another project's image.
    match state.store.get_image_exact(&identity).await {
        Ok(image) => return Ok(image.scoped_name()),
        Err(kiln_db::StoreError::NotFound { .. }) => {}
        Err(error) => return Err(ApiError::from(error).into()),
    }
    let spec = NewImage {
        name: identity.name.clone(),
        project: identity.project.clone(),
        visibility,
        shared_with: Vec::new(),
        description: description.chars().take(1000).collect(),
        os: None,
        arch: None,
    };
    match state.store.create_image(&caller.user, &spec).await {
        Ok(image) => Ok(image.scoped_name()),
        // Another request for the same URL made it first.
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

/// One source to fetch into one artifact of a cache image.
struct ArtifactSource<'a> {
    image: &'a ScopedName,
    kind: ArtifactKind,
    url: &'a str,
    expected: Option<&'a Expected>,
}

/// What an artifact's fetch came to.
enum Fetched {
    /// The cached copy in this version still stands; nothing was read.
    Unchanged(i64),
    Stored(NewArtifact),
}

/// Parses `url` as a source Kiln may fetch: a refused URL is the request's fault (400).
fn source_of(state: &ApiState, caller: &AuthContext, field: &str, url: &str) -> IronicResult<Prepared<Source>> {
    let settings = &state.images;
    match Source::parse(url, &settings.import_allowed_dirs, &settings.egress) {
        Ok(source) => Ok(Prepared::Ready(source)),
        Err(error @ (FetchError::UnsupportedUrl { .. } | FetchError::FileNotAllowed { .. })) => {
            Err(IronicError::invalid(format!("{field}: {error}")))
        }
        Err(error) => Ok(Prepared::Failed(fetch_error(error, caller).message)),
    }
}

/// Fetches one artifact by Ironic's rule, or finds its cached copy standing.
async fn fetch_artifact(
    state: &ApiState,
    caller: &AuthContext,
    source: &Source,
    wanted: &ArtifactSource<'_>,
) -> IronicResult<Prepared<Fetched>> {
    let settings = &state.images;
    let url = wanted.url;
    let previous = state.store.last_import(wanted.image, wanted.kind).await?.filter(|previous| previous.url == url);
    // The copy may be kept only if it was verified against this very checksum and its
    // source said when it last changed.
    let mut cached = None;
    if let Some(previous) = &previous
        && let Some(modified) = &previous.modified
    {
        let version = state.store.get_version(wanted.image, &VersionRef::Number(previous.version)).await?;
        let verified = version.artifact(wanted.kind).is_some_and(|artifact| match wanted.expected {
            Some(Expected { checksum: expected, .. }) => artifact.checksums.get(&source_digest_key(expected)) == Some(&expected.hex),
            None => true,
        });
        if verified {
            cached = Some((previous.version, Validators { etag: None, last_modified: Some(modified.clone()) }));
        }
    }
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let spool_path = SpoolFile::path_in(settings.blobs.spool_dir(), &format!("ironic-{unique}"));
    let create_path = spool_path.clone();
    let algorithm = wanted.expected.map(|expected| expected.checksum.algorithm);
    let spool = tokio::task::spawn_blocking(move || SpoolFile::create(&create_path, algorithm))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("starting the image fetch", &error))?;
    let _spool_guard = SpoolGuard(spool_path.clone());
    let fetched = kiln_image_store::fetch::fetch(&settings.http, source, spool, cached.as_ref().map(|(_, validators)| validators)).await;
    let (digests, head, validators) = match fetched {
        Ok(Fetch::NotModified) => {
            let (version, _) = cached.expect("a not-modified answer comes only to a conditional fetch");
            tracing::info!(%url, image = %wanted.image, version, "source unchanged since it was cached; nothing fetched");
            return Ok(Prepared::Ready(Fetched::Unchanged(version)));
        }
        Ok(Fetch::Fetched { digests, head, validators }) => (digests, head, validators),
        Err(error) => return Ok(Prepared::Failed(fetch_error(error, caller).message)),
    };
    if let Some(expected) = wanted.expected
        && let Err(mismatch) = digests.verify(&expected.checksum)
    {
        // The digest the server computed is what the URL answered: logged, not told; nor is
        // a checksum the server read from a file, but to an administrator.
        tracing::warn!(%url, %mismatch, "a source failed its checksum");
        let reason = if expected.from_checksum_file && !caller.admin {
            format!("Image failed to verify against checksum: {url} does not have the checksum its checksum file lists")
        } else {
            format!(
                "Image failed to verify against checksum: {url} does not have the checksum {} given in instance_info",
                expected.checksum
            )
        };
        return Ok(Prepared::Failed(reason));
    }
    let inspection = match kiln_image_store::inspect(&head, digests.bytes) {
        Ok(inspection) => inspection,
        Err(error) => return Ok(Prepared::Failed(format!("{url} is not a usable {}: {error}", wanted.kind))),
    };
    let convert_it = wanted.kind == ArtifactKind::Disk && inspection.format == ImageFormat::Qcow2;
    let (stored_path, digests, head, _converted_guard) = if convert_it {
        if inspection.compression.is_some() {
            return Ok(Prepared::Failed(format!("{url} is a compressed qcow2: serve it uncompressed, or as a raw image")));
        }
        let limit = kiln_image_store::convert::MAX_VIRTUAL_BYTES;
        if let Some(virtual_size) = inspection.virtual_size.filter(|size| *size > limit) {
            return Ok(Prepared::Failed(format!(
                "{url} is a qcow2 of a {virtual_size}-byte disk, over the {limit} bytes Kiln converts to raw: serve a raw image"
            )));
        }
        match convert(state, &spool_path, &unique).await? {
            Ok((guard, converted, converted_head)) => (guard.0.clone(), converted, converted_head, Some(guard)),
            Err(reason) => return Ok(Prepared::Failed(format!("{url}: {reason}"))),
        }
    } else {
        (spool_path.clone(), digests, head, None)
    };
    let mut artifact = match store_spooled(state, &stored_path, digests, &head, wanted.kind, None, None).await {
        Ok(artifact) => artifact,
        Err(error) if error.status.is_client_error() => return Ok(Prepared::Failed(format!("{url}: {}", error.message))),
        Err(error) => return Err(error.into()),
    };
    artifact.source_url = Some(url.to_owned());
    if let Some(Expected { checksum: expected, .. }) = wanted.expected {
        artifact.checksums.insert(source_digest_key(expected), expected.hex.clone());
    }
    // An ETag alone keeps no copy (Ironic's rule), so only Last-Modified is recorded.
    Ok(Prepared::Ready(Fetched::Stored(NewArtifact { artifact, source_etag: None, source_modified: validators.last_modified })))
}

/// Fetches a node's `image_source` URL (or finds it cached) and answers the image to deploy,
/// as `KEY:VERSION`.
pub(super) async fn prepare_instance_image(
    state: &ApiState,
    caller: &AuthContext,
    node: &Node,
    instance_info: &Map<String, Value>,
    url: &str,
) -> IronicResult<Prepared<String>> {
    let source = match source_of(state, caller, "instance_info.image_source", url)? {
        Prepared::Ready(source) => source,
        Prepared::Failed(reason) => return Ok(Prepared::Failed(reason)),
    };
    // A file needs no checksum from an administrator, who may read the allowed directories
    // anyway; anyone else names the bytes they want, so that a project member cannot copy
    // whatever file lies there into their project.
    let expected = match expected_checksum(state, caller, instance_info, &source).await? {
        Prepared::Ready(Some(expected)) => Some(expected),
        Prepared::Ready(None) if matches!(source, Source::File(_)) && caller.admin => None,
        Prepared::Ready(None) => {
            let kind = if matches!(source, Source::Http(_)) { "an HTTP(S)" } else { "a file" };
            return Err(IronicError::invalid(format!(
                "Node {} has {kind} image_source and no checksum: set instance_info.image_checksum (or image_os_hash_algo and image_os_hash_value)",
                node.name
            )));
        }
        Prepared::Failed(reason) => return Ok(Prepared::Failed(reason)),
    };
    let identity = ScopedName::new(node.project.as_deref(), &instance_image_name(url));
    let image = cache_image(state, caller, identity, Visibility::Private, format!("fetched for the Ironic API from {url}")).await?;
    let wanted = ArtifactSource { image: &image, kind: ArtifactKind::Disk, url, expected: expected.as_ref() };
    let artifact = match fetch_artifact(state, caller, &source, &wanted).await? {
        Prepared::Ready(Fetched::Unchanged(version)) => return Ok(Prepared::Ready(format!("{}:{version}", image.key()))),
        Prepared::Ready(Fetched::Stored(artifact)) => artifact,
        Prepared::Failed(reason) => return Ok(Prepared::Failed(format!("image_source: {reason}"))),
    };
    let spec = NewVersion {
        version: None,
        base: None,
        artifacts: vec![artifact],
        tags: Vec::new(),
        note: format!("fetched from {url} for node {}", node.name).chars().take(1000).collect(),
    };
    let version = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(node = %node.name, %url, image = %image, version = version.version, "image_source fetched for the Ironic API");
    Ok(Prepared::Ready(format!("{}:{}", image.key(), version.version)))
}

/// Fetches a node's `deploy_kernel` and `deploy_ramdisk` URLs (or finds them cached) into the
/// public image its agent boots (`kiln_ironic::images::deploy_ramdisk_image_name`). They are
/// the operators' (only administrators set `driver_info`), and no checksum comes with them,
/// as in Ironic. They must be a Kiln agent ramdisk (`kiln build ramdisk`): Ironic's own
/// agent does not speak Kiln's protocol.
pub(super) async fn prepare_deploy_ramdisk(
    state: &ApiState,
    caller: &AuthContext,
    node: &Node,
    kernel_url: &str,
    ramdisk_url: &str,
) -> IronicResult<Prepared<()>> {
    let identity = ScopedName::new(None, &deploy_ramdisk_image_name(kernel_url, ramdisk_url));
    let description = format!("deploy kernel {kernel_url} and ramdisk {ramdisk_url}, fetched for the Ironic API");
    let image = cache_image(state, caller, identity, Visibility::Public, description).await?;
    let mut stored = Vec::new();
    let mut standing = None;
    for (field, kind, url) in [("deploy_kernel", ArtifactKind::Kernel, kernel_url), ("deploy_ramdisk", ArtifactKind::Initrd, ramdisk_url)] {
        let source = match source_of(state, caller, &format!("driver_info.{field}"), url)? {
            Prepared::Ready(source) => source,
            Prepared::Failed(reason) => return Ok(Prepared::Failed(format!("driver_info.{field}: {reason}"))),
        };
        let wanted = ArtifactSource { image: &image, kind, url, expected: None };
        match fetch_artifact(state, caller, &source, &wanted).await? {
            Prepared::Ready(Fetched::Unchanged(version)) => standing = Some(standing.map_or(version, |other: i64| other.max(version))),
            Prepared::Ready(Fetched::Stored(artifact)) => stored.push(artifact),
            Prepared::Failed(reason) => return Ok(Prepared::Failed(format!("driver_info.{field}: {reason}"))),
        }
    }
    if stored.is_empty() {
        return Ok(Prepared::Ready(()));
    }
    // What did not change is carried over from the version that holds it.
    let spec = NewVersion {
        version: None,
        base: standing.map(VersionRef::Number),
        artifacts: stored,
        tags: Vec::new(),
        note: format!("deploy kernel and ramdisk fetched for node {}", node.name),
    };
    let version = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(node = %node.name, image = %image, version = version.version, "deploy kernel and ramdisk fetched for the Ironic API");
    Ok(Prepared::Ready(()))
}

/// Converts the spooled qcow2 into a compressed raw image in a second spool file: that
/// file (removed when its guard drops), its digests and head, or why it could not be
/// converted. If the request goes away first (its client hung up), the conversion is told
/// to stop and its files are removed by the blocking task itself.
async fn convert(state: &ApiState, qcow2: &std::path::Path, unique: &str) -> IronicResult<Result<(SpoolGuard, Digests, Vec<u8>), String>> {
    use kiln_image_store::convert::ConvertError;
    /// Tells the conversion to stop when the request's future is dropped before it ends.
    struct CancelOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let spool_dir = state.images.blobs.spool_dir();
    let output_path = SpoolFile::path_in(spool_dir, &format!("ironic-raw-{unique}"));
    let scratch = SpoolFile::path_in(spool_dir, &format!("ironic-scratch-{unique}"));
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(std::sync::Arc::clone(&cancelled));
    let qcow2 = qcow2.to_owned();
    // The guard travels with the result: dropped unread (the request gone), it removes the file.
    let converted = tokio::task::spawn_blocking(move || {
        let guard = SpoolGuard(output_path.clone());
        let output = SpoolFile::create(&output_path, None).map_err(|source| ConvertError::Spool { source })?;
        kiln_image_store::convert::qcow2_to_raw_zstd(&qcow2, &scratch, output, &cancelled).map(|(digests, head)| (guard, digests, head))
    })
    .await
    .expect("no panic");
    match converted {
        Ok(converted) => Ok(Ok(converted)),
        Err(ConvertError::Spool { source }) => Err(spool_error("converting the image to raw", &source).into()),
        Err(error) => {
            tracing::warn!(error = %kiln_image_store::error_chain(&error), "converting an image from qcow2 failed");
            Ok(Err(format!("converting it from qcow2 to raw failed: {error}")))
        }
    }
}
