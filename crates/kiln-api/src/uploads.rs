//! Getting bytes in: resumable uploads (`/v1/uploads`), new versions made from them, and
//! imports from URLs.
//!
//! Bytes go to a spool file first, hashed on the way; only a finished, verified, inspected
//! spool file moves into the blob store, and only then does a version name it. A failure at
//! any step leaves earlier versions as they were and no version half made.
//!
//! Why one file over 600 lines: uploads, versions and imports share the spool-to-blob path
//! and its error mapping, which is the invariant above.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use kiln_db::{NewArtifact, NewVersion};
use kiln_image_store::fetch::{Fetch, FetchError, Source, Validators};
use kiln_image_store::pump::{PumpError, pump_into_spool};
use kiln_image_store::{BlobError, BlobId, Checksum, Digests, MultiHasher, SpoolFile, error_chain, inspect};
use kiln_types::image::{
    Artifact, ArtifactKind, ImageFormat, ImageVersion, ImportInput, ImportResult, Upload, UploadInput, VersionInput, VersionRef,
};
use kiln_types::validate;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;
use crate::images::{target_project, version_ref, writable_image};

type ErrorBody = kiln_types::api::ErrorBody;

/// How long a failed upload's remaining body is read and thrown away.
const DRAIN_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(30);

/// The header that carries an upload's offset, as in the tus protocol.
pub(crate) const UPLOAD_OFFSET: &str = "upload-offset";

enum UploadSlot {
    /// A request is appending to or finishing this upload.
    Busy,
    /// Hash state of the bytes in the spool file, so the next request need not re-read them.
    Idle(Box<(MultiHasher, Vec<u8>)>),
}

/// Uploads this replica is working on. Another replica (or a restart) finds no entry and
/// hashes the spool file again.
#[derive(Default)]
pub(crate) struct UploadTable {
    slots: Mutex<HashMap<String, UploadSlot>>,
}

/// Holds an upload's slot busy until dropped (or put back with its hash state).
struct UploadClaim<'t> {
    table: &'t UploadTable,
    id: String,
    state: Option<(MultiHasher, Vec<u8>)>,
}

impl UploadTable {
    fn claim(&self, id: &str) -> ApiResult<UploadClaim<'_>> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cached = match slots.insert(id.to_owned(), UploadSlot::Busy) {
            Some(UploadSlot::Busy) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::UploadBusy,
                    format!("upload {id} is being written by another request"),
                ));
            }
            Some(UploadSlot::Idle(state)) => Some(*state),
            None => None,
        };
        Ok(UploadClaim { table: self, id: id.to_owned(), state: cached })
    }
}

impl UploadClaim<'_> {
    /// Releases the slot, keeping hash state for the next request.
    fn release_with(mut self, hasher: MultiHasher, head: Vec<u8>) {
        self.state = Some((hasher, head));
    }
}

impl Drop for UploadClaim<'_> {
    fn drop(&mut self) {
        let mut slots = self.table.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.state.take() {
            Some(state) => slots.insert(self.id.clone(), UploadSlot::Idle(Box::new(state))),
            None => slots.remove(&self.id),
        };
    }
}

pub(crate) fn blob_error(error: BlobError) -> ApiError {
    if error.is_storage_full() {
        return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, ErrorCode::StorageFull, format!("{}: no space left", error_chain(&error)));
    }
    match error {
        BlobError::NotFound { id } => {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("blob {id} is missing from the store"))
        }
        BlobError::Damaged { .. } => {
            tracing::error!(error = %error, "a stored blob is damaged");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::BlobDamaged, format!("{error}: upload the image again"))
        }
        other => {
            // The cause chain names the object store's endpoint and its replies: the log
            // gets it, the client the operation that failed.
            tracing::error!(error = %error_chain(&other), "blob store failure");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BlobStore,
                format!("the blob store failed: {other} (details in the server log)"),
            )
        }
    }
}

pub(crate) fn spool_error(operation: &str, error: &std::io::Error) -> ApiError {
    if matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::StorageFull,
            format!("{operation}: no space left on the server"),
        );
    }
    tracing::error!(%error, operation, "spool failure");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, format!("{operation}: {error}"))
}

fn parse_checksum(field: &str, text: &str) -> ApiResult<Checksum> {
    text.parse::<Checksum>().map_err(|message| ApiError::invalid(format!("{field}: {message}")))
}

pub(crate) async fn remove_spool(state: &ApiState, id: &str) {
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), id);
    if let Err(error) = tokio::fs::remove_file(&path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "removing a spool file failed");
    }
}

async fn spool_length(state: &ApiState, id: &str) -> ApiResult<u64> {
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), id);
    match tokio::fs::metadata(&path).await {
        Ok(metadata) => Ok(metadata.len()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(spool_error("reading the upload", &error)),
    }
}

/// The upload if the caller may write to it; 404 otherwise.
async fn writable_upload(state: &ApiState, caller: &kiln_auth::AuthContext, id: &str) -> ApiResult<Upload> {
    let mut upload = match state.store.get_upload(id).await {
        Ok(upload) if caller.can_write(upload.project.as_deref()) => upload,
        Ok(_) => return Err(ApiError::not_found("upload", id)),
        Err(error) => return Err(error.into()),
    };
    upload.offset = spool_length(state, id).await?;
    Ok(upload)
}

#[utoipa::path(post, path = "/v1/uploads", tag = "images", request_body = UploadInput,
    responses((status = 201, body = Upload), (status = 400, body = ErrorBody)))]
pub(crate) async fn create_upload(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<UploadInput>,
) -> ApiResult<(StatusCode, Json<Upload>)> {
    let project = match &input.image {
        Some(image) => writable_image(&state, &caller, image).await?.project,
        None => target_project(&caller, input.project.as_deref())?,
    };
    let checksum = input.checksum.as_deref().map(|text| parse_checksum("checksum", text)).transpose()?;
    let upload = state.store.create_upload(&caller.user, project.as_deref(), checksum.as_ref().map(|c| c.to_string()).as_deref()).await?;
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), &upload.id);
    let algorithm = checksum.map(|checksum| checksum.algorithm);
    let created = tokio::task::spawn_blocking(move || SpoolFile::create(&path, algorithm).map(drop)).await.expect("no panic");
    if let Err(error) = created {
        state.store.delete_upload(&upload.id).await?;
        return Err(spool_error("creating the upload", &error));
    }
    Ok((StatusCode::CREATED, Json(upload)))
}

#[utoipa::path(get, path = "/v1/uploads/{id}", tag = "images", params(("id" = String, Path)),
    responses((status = 200, body = Upload), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_upload(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let upload = writable_upload(&state, &caller, &id).await?;
    let offset = upload.offset;
    let mut response = Json(upload).into_response();
    response.headers_mut().insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    Ok(response)
}

#[utoipa::path(delete, path = "/v1/uploads/{id}", tag = "images", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_upload(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    writable_upload(&state, &caller, &id).await?;
    let _claim = state.images.uploads.claim(&id)?;
    if state.store.delete_upload(&id).await? {
        remove_spool(&state, &id).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Appends the request body at `Upload-Offset`, which must be where the upload stands. If
/// the body breaks off, what arrived is kept: ask for the offset and go on from there.
#[utoipa::path(patch, path = "/v1/uploads/{id}", tag = "images", params(("id" = String, Path),
        ("Upload-Offset" = u64, Header, description = "Where this body starts; must equal the upload's offset")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses((status = 200, body = Upload), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn append_upload(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut upload = writable_upload(&state, &caller, &id).await?;
    let offset: u64 = headers
        .get(UPLOAD_OFFSET)
        .ok_or_else(|| ApiError::invalid("the Upload-Offset header is required (where this body starts)"))?
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| ApiError::invalid("Upload-Offset: not a number of bytes"))?;
    let claim = state.images.uploads.claim(&id)?;
    let current = spool_length(&state, &id).await?;
    if offset != current {
        let mut response = ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::OffsetMismatch,
            format!("the upload has {current} bytes; send the body from offset {current}, not {offset}"),
        )
        .into_response();
        response.headers_mut().insert(UPLOAD_OFFSET, HeaderValue::from(current));
        return Ok(response);
    }
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), &id);
    let algorithm = upload.checksum.as_deref().and_then(|text| text.parse::<Checksum>().ok()).map(|checksum| checksum.algorithm);
    let mut claim = claim;
    let cached = claim.state.take();
    let spool = tokio::task::spawn_blocking(move || SpoolFile::resume(&path, algorithm, cached))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("opening the upload", &error))?;
    let mut body = body.into_data_stream();
    let (spool, pumped) = pump_into_spool(spool, &mut body).await;
    if matches!(pumped, Err(PumpError::Spool(_))) {
        // Read the rest of the body (for a while) so that the client, still sending, gets to
        // read this answer instead of a connection reset.
        let _ = tokio::time::timeout(DRAIN_AFTER_FAILURE, async { while body.next().await.is_some() {} }).await;
    }
    upload.offset = spool.offset();
    match spool.suspend() {
        Ok((hasher, head)) => claim.release_with(hasher, head),
        Err(error) => {
            drop(claim);
            return Err(spool_error("writing the upload", &error));
        }
    }
    match pumped {
        Ok(()) => {}
        Err(PumpError::Spool(error)) => return Err(spool_error("writing the upload", &error)),
        Err(error @ PumpError::Source(_)) => {
            let message = error_chain(&error);
            tracing::info!(upload = %id, offset = upload.offset, %message, "upload body broke off; it can resume");
            if let Some(idle) = crate::body::went_idle(&error) {
                return Err(idle);
            }
            return Err(ApiError::invalid(format!("the request body broke off at offset {}: {message}", upload.offset)));
        }
    }
    let offset = upload.offset;
    let mut response = Json(upload).into_response();
    response.headers_mut().insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    Ok(response)
}

/// Checks what a spool file holds and moves it into the blob store as an artifact.
pub(crate) async fn store_spooled(
    state: &ApiState,
    spool_path: &std::path::Path,
    digests: Digests,
    head: &[u8],
    kind: ArtifactKind,
    declared: Option<ImageFormat>,
    expected: Option<&Checksum>,
) -> ApiResult<Artifact> {
    let refuse = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidImage, message);
    if let Some(expected) = expected {
        digests.verify(expected).map_err(refuse)?;
    }
    let inspection = inspect(head, digests.bytes).map_err(|error| refuse(format!("{kind}: {error}")))?;
    inspection.check(kind, declared).map_err(|error| refuse(format!("{kind}: {error}")))?;
    let id = BlobId::parse(&digests.sha256).map_err(blob_error)?;
    // Recorded before the bytes are stored: garbage collection spares touched blobs.
    state.store.touch_blob(&digests.sha256, digests.bytes).await?;
    state.images.blobs.commit(&id, spool_path).await.map_err(blob_error)?;
    Ok(Artifact {
        kind,
        sha256: digests.sha256,
        format: inspection.recorded_format(declared),
        compression: inspection.compression,
        size: digests.bytes,
        virtual_size: inspection.virtual_size,
        checksums: digests.all,
        source_url: None,
    })
}

/// Finishes an upload into an artifact. The upload is used up whatever the outcome: a
/// refused upload leaves no bytes behind.
async fn finish_upload(
    state: &ApiState,
    caller: &kiln_auth::AuthContext,
    id: &str,
    kind: ArtifactKind,
    declared: Option<ImageFormat>,
) -> ApiResult<Artifact> {
    let upload = writable_upload(state, caller, id).await?;
    let mut claim = state.images.uploads.claim(id)?;
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), id);
    let expected = upload.checksum.as_deref().map(|text| parse_checksum("checksum", text)).transpose()?;
    let algorithm = expected.as_ref().map(|checksum| checksum.algorithm);
    let cached = claim.state.take();
    let resume_path = path.clone();
    let finished = tokio::task::spawn_blocking(move || SpoolFile::resume(&resume_path, algorithm, cached).and_then(SpoolFile::finish))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("reading the upload", &error))?;
    if !state.store.delete_upload(id).await? {
        return Err(ApiError::not_found("upload", id));
    }
    let (digests, head) = finished;
    let result = store_spooled(state, &path, digests, &head, kind, declared, expected.as_ref()).await;
    if result.is_err() {
        remove_spool(state, id).await;
    }
    drop(claim);
    result
}

/// Streams a request body straight into a new version of `image` with one artifact of
/// `kind` (a node's captured disk): spooled and hashed as it arrives, inspected, stored whole.
pub(crate) async fn ingest_body_as_version(
    state: &ApiState,
    actor: &str,
    image: &kiln_types::scoped_name::ScopedName,
    kind: ArtifactKind,
    body: Body,
    note: String,
) -> ApiResult<kiln_types::image::ImageVersion> {
    let id = format!("capture-{}", uuid::Uuid::new_v4().simple());
    let path = SpoolFile::path_in(state.images.blobs.spool_dir(), &id);
    let create_path = path.clone();
    let spool = tokio::task::spawn_blocking(move || SpoolFile::create(&create_path, None))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("creating the capture's spool file", &error))?;
    let mut stream = body.into_data_stream();
    let (spool, pumped) = pump_into_spool(spool, &mut stream).await;
    let finished = match pumped {
        Ok(()) => tokio::task::spawn_blocking(move || spool.finish()).await.expect("no panic"),
        Err(error) => {
            drop(spool);
            remove_spool(state, &id).await;
            if let Some(idle) = crate::body::went_idle(&error) {
                return Err(idle);
            }
            return Err(ApiError::invalid(format!("the capture broke off: {}", error_chain(&error))));
        }
    };
    let (digests, head) = match finished {
        Ok(finished) => finished,
        Err(error) => {
            remove_spool(state, &id).await;
            return Err(spool_error("writing the capture", &error));
        }
    };
    let artifact = match store_spooled(state, &path, digests, &head, kind, None, None).await {
        Ok(artifact) => artifact,
        Err(error) => {
            remove_spool(state, &id).await;
            return Err(error);
        }
    };
    let spec = NewVersion {
        version: None,
        base: None,
        artifacts: vec![NewArtifact { artifact, source_etag: None, source_modified: None }],
        tags: Vec::new(),
        note,
    };
    Ok(state.store.create_version(actor, image, &spec).await?)
}

#[utoipa::path(post, path = "/v1/images/{image}/versions", tag = "images", params(("image" = String, Path)), request_body = VersionInput,
    responses((status = 201, body = ImageVersion), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<VersionInput>,
) -> ApiResult<(StatusCode, Json<ImageVersion>)> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    if let Some(version) = input.version
        && version < 1
    {
        return Err(ApiError::invalid("version: versions start at 1"));
    }
    let base = input.base.as_deref().map(version_ref).transpose()?;
    let tags = input.tags.iter().map(|tag| validate::name("tags", tag)).collect::<Result<Vec<_>, _>>()?;
    let note = validate::single_line("note", &input.note, 1024)?;
    let mut kinds = std::collections::BTreeSet::new();
    for artifact in &input.artifacts {
        if !kinds.insert(artifact.kind) {
            return Err(ApiError::invalid(format!("artifacts: {} is given twice", artifact.kind)));
        }
    }
    let mut artifacts = Vec::with_capacity(input.artifacts.len());
    for artifact in &input.artifacts {
        let stored = finish_upload(&state, &caller, &artifact.upload, artifact.kind, artifact.format).await?;
        artifacts.push(NewArtifact { artifact: stored, source_etag: None, source_modified: None });
    }
    let spec = NewVersion { version: input.version, base, artifacts, tags, note };
    let version = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(image = %name, version = version.version, user = %caller.user, "version created");
    Ok((StatusCode::CREATED, Json(version)))
}

/// The answer for a failed fetch. Administrators read why; anyone else reads only that it
/// failed, the same for a refused address, a closed port, an error status or a cut
/// download, so that imports cannot map what the server can reach (the detail is logged).
pub(crate) fn fetch_error(error: FetchError, caller: &kiln_auth::AuthContext) -> ApiError {
    match &error {
        FetchError::UnsupportedUrl { .. } | FetchError::FileNotAllowed { .. } => ApiError::invalid(format!("url: {error}")),
        FetchError::Download { source: PumpError::Spool(io), .. } => spool_error("importing", io),
        _ if caller.admin => ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::ImportFailed, error_chain(&error)),
        _ => {
            tracing::info!(error = %error_chain(&error), user = %caller.user, "an import could not fetch its source");
            let url = match &error {
                FetchError::Egress { url, .. }
                | FetchError::Request { url, .. }
                | FetchError::Status { url, .. }
                | FetchError::Download { url, .. }
                | FetchError::ChecksumNotListed { url, .. }
                | FetchError::ChecksumFile { url, .. } => url.clone(),
                _ => "the source".to_owned(),
            };
            ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::ImportFailed, format!("could not fetch {url}"))
        }
    }
}

/// An import's checksum mismatch, told to a non-administrator without the digest the
/// server computed: that digest is the content of whatever the URL answered.
fn redact_mismatch(error: ApiError, caller: &kiln_auth::AuthContext) -> ApiError {
    if caller.admin || !error.message.starts_with("checksum mismatch") {
        return error;
    }
    ApiError { message: "checksum mismatch: the fetched bytes do not have the checksum given".to_owned(), ..error }
}

/// Imports one artifact from a URL into a new version, verifying the checksum while the
/// bytes stream in. A source unchanged since its last import is not fetched again.
#[utoipa::path(post, path = "/v1/images/{image}/import", tag = "images", params(("image" = String, Path)), request_body = ImportInput,
    responses((status = 201, body = ImportResult), (status = 200, body = ImportResult, description = "The source had not changed"),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn import_image(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<ImportInput>,
) -> ApiResult<(StatusCode, Json<ImportResult>)> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    let settings = &state.images;
    let source = Source::parse(&input.url, &settings.import_allowed_dirs, &settings.egress).map_err(|error| fetch_error(error, &caller))?;
    let expected = match (&input.checksum, &input.checksum_url) {
        (Some(text), None) => parse_checksum("checksum", text)?,
        (None, Some(url)) => kiln_image_store::fetch::fetch_checksum(
            &settings.http,
            url,
            &settings.import_allowed_dirs,
            &settings.egress,
            &source.file_name(),
        )
        .await
        .map_err(|error| fetch_error(error, &caller))?,
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either checksum or checksum_url, not both")),
        (None, None) => {
            return Err(ApiError::invalid("an import needs a checksum: checksum (ALGORITHM:HEX) or checksum_url (a checksum file)"));
        }
    };
    let base = input.base.as_deref().map(version_ref).transpose()?;
    let tags = input.tags.iter().map(|tag| validate::name("tags", tag)).collect::<Result<Vec<_>, _>>()?;
    let note = validate::single_line("note", &input.note, 1024)?;
    let previous = state.store.last_import(&image, input.kind).await?.filter(|previous| previous.url == input.url);
    let validators = previous.as_ref().map(|previous| Validators { etag: previous.etag.clone(), last_modified: previous.modified.clone() });
    let spool_id = format!("import-{}", uuid::Uuid::new_v4().simple());
    let spool_path = SpoolFile::path_in(settings.blobs.spool_dir(), &spool_id);
    let create_path = spool_path.clone();
    let algorithm = expected.algorithm;
    let spool = tokio::task::spawn_blocking(move || SpoolFile::create(&create_path, Some(algorithm)))
        .await
        .expect("no panic")
        .map_err(|error| spool_error("starting the import", &error))?;
    let fetched = kiln_image_store::fetch::fetch(&settings.http, &source, spool, validators.as_ref()).await;
    let result = match fetched {
        Ok(Fetch::NotModified) => {
            remove_spool(&state, &spool_id).await;
            let previous = previous.expect("not-modified answers only conditional fetches");
            let version = state.store.get_version(&image, &VersionRef::Number(previous.version)).await?;
            tracing::info!(image = %name, url = %input.url, version = previous.version, "import source unchanged; nothing fetched");
            return Ok((StatusCode::OK, Json(ImportResult { unchanged: true, version })));
        }
        Ok(Fetch::Fetched { digests, head, validators }) => {
            store_spooled(&state, &spool_path, digests, &head, input.kind, input.format, Some(&expected))
                .await
                .map(|mut artifact| {
                    artifact.source_url = Some(input.url.clone());
                    NewArtifact { artifact, source_etag: validators.etag, source_modified: validators.last_modified }
                })
                .map_err(|error| redact_mismatch(error, &caller))
        }
        Err(error) => Err(fetch_error(error, &caller)),
    };
    let artifact = match result {
        Ok(artifact) => artifact,
        Err(error) => {
            remove_spool(&state, &spool_id).await;
            return Err(error);
        }
    };
    let spec = NewVersion { version: None, base, artifacts: vec![artifact], tags, note };
    let version = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(image = %name, url = %input.url, version = version.version, "imported");
    Ok((StatusCode::CREATED, Json(ImportResult { unchanged: false, version })))
}

/// Makes a new version from `version` plus the kernel and initramfs found inside its SquashFS
/// root image (diskimage-builder's `disk-image-get-kernel`), so that it can be booted.
#[utoipa::path(post, path = "/v1/images/{image}/versions/{version}/get-kernel", tag = "images",
    params(("image" = String, Path), ("version" = String, Path)),
    responses((status = 201, body = ImageVersion), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn get_kernel(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<ImageVersion>)> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    let reference = version_ref(&version)?;
    let source = state.store.get_version(&image, &reference).await?;
    let root =
        source.artifact(ArtifactKind::Root).ok_or_else(|| ApiError::not_found("artifact", &format!("{name}:{}/root", source.version)))?;
    let refuse = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidImage, message);
    if root.format != ImageFormat::Squashfs || root.compression.is_some() {
        return Err(refuse(format!("the root image is {}; the kernel can be taken only from an uncompressed SquashFS", root.format)));
    }
    let spool_dir = state.images.blobs.spool_dir().to_owned();
    let id = BlobId::parse(&root.sha256).map_err(blob_error)?;
    let unique = uuid::Uuid::new_v4().simple().to_string();
    // The image must be a local file to be read at random: the blob itself when local,
    // otherwise a copy in the spool.
    let (image_path, copied) = match state.images.blobs.local_path(&id) {
        Some(path) => (path, false),
        None => {
            let path = SpoolFile::path_in(&spool_dir, &format!("root-{unique}"));
            let create_path = path.clone();
            let spool = tokio::task::spawn_blocking(move || SpoolFile::create(&create_path, None))
                .await
                .expect("no panic")
                .map_err(|error| spool_error("copying the root image", &error))?;
            let read = state.images.blobs.read(&id, None).await.map_err(blob_error)?;
            let mut stream = read.stream;
            let (spool, pumped) = pump_into_spool(spool, &mut stream).await;
            drop(spool);
            if let Err(error) = pumped {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::BlobStore,
                    format!("copying the root image: {}", error_chain(&error)),
                ));
            }
            (path, true)
        }
    };
    let kernel_path = SpoolFile::path_in(&spool_dir, &format!("kernel-{unique}"));
    let initrd_path = SpoolFile::path_in(&spool_dir, &format!("initrd-{unique}"));
    let (paths, extract_image) = ((kernel_path.clone(), initrd_path.clone()), image_path.clone());
    let extracted = tokio::task::spawn_blocking(move || {
        let mut kernel = SpoolFile::create(&paths.0, None).map_err(kiln_image_store::kernel::GetKernelError::Spool)?;
        let mut initrd = SpoolFile::create(&paths.1, None).map_err(kiln_image_store::kernel::GetKernelError::Spool)?;
        let found = kiln_image_store::kernel::extract_boot_files(&extract_image, &mut kernel, &mut initrd)?;
        let kernel = kernel.finish().map_err(kiln_image_store::kernel::GetKernelError::Spool)?;
        let initrd = initrd.finish().map_err(kiln_image_store::kernel::GetKernelError::Spool)?;
        Ok::<_, kiln_image_store::kernel::GetKernelError>((found, kernel, initrd))
    })
    .await
    .expect("no panic");
    if copied {
        let _ = tokio::fs::remove_file(&image_path).await;
    }
    let cleanup = || async {
        let _ = tokio::fs::remove_file(&kernel_path).await;
        let _ = tokio::fs::remove_file(&initrd_path).await;
    };
    let (found, (kernel_digests, kernel_head), (initrd_digests, initrd_head)) = match extracted {
        Ok(extracted) => extracted,
        Err(kiln_image_store::kernel::GetKernelError::Spool(error)) => {
            cleanup().await;
            return Err(spool_error("extracting the kernel", &error));
        }
        Err(error) => {
            cleanup().await;
            return Err(refuse(error_chain(&error)));
        }
    };
    let mut artifacts = Vec::with_capacity(2);
    for (path, digests, head, kind) in [
        (&kernel_path, kernel_digests, kernel_head, ArtifactKind::Kernel),
        (&initrd_path, initrd_digests, initrd_head, ArtifactKind::Initrd),
    ] {
        match store_spooled(&state, path, digests, &head, kind, None, None).await {
            Ok(artifact) => artifacts.push(NewArtifact { artifact, source_etag: None, source_modified: None }),
            Err(error) => {
                cleanup().await;
                return Err(error);
            }
        }
    }
    let note = format!("kernel {} and initramfs {} from the root of version {}", found.kernel, found.initramfs, source.version);
    let spec = NewVersion { version: None, base: Some(VersionRef::Number(source.version)), artifacts, tags: Vec::new(), note };
    let created = state.store.create_version(&caller.user, &image, &spec).await?;
    tracing::info!(image = %name, version = created.version, kernel = %found.kernel, initramfs = %found.initramfs, "kernel taken from the root image");
    Ok((StatusCode::CREATED, Json(created)))
}
