//! `/v1/images`: images, their versions and tags, clones, artifact downloads, and store
//! maintenance (garbage collection, verification).
//!
//! Who sees an image: its project's members, everyone if it is public, the named projects if
//! it is shared, and administrators. To anyone else it does not exist (404, as for nodes).

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_auth::AuthContext;
use kiln_db::{ImageChange, NewImage};
use kiln_image_store::{BlobId, BlobStore};
use kiln_types::image::{
    Artifact, ArtifactKind, CloneInput, GcReport, Image, ImageInput, ImageUpdate, ImageVersion, TagInput, VerifyReport, VersionRef,
};
use kiln_types::scoped_name::NameReference;
use kiln_types::validate;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;

type ErrorBody = kiln_types::api::ErrorBody;

/// What the image handlers need besides the database.
pub struct ImageSettings {
    pub blobs: BlobStore,
    /// `file://` imports must resolve to a path under one of these.
    pub import_allowed_dirs: Vec<PathBuf>,
    /// How long an unused blob is kept before garbage collection may remove it, so that a
    /// version being created can still claim it.
    pub gc_grace: Duration,
    /// Uploads older than this are abandoned and garbage collection removes them.
    pub upload_expiry: Duration,
    /// What http(s) imports may reach; `http` holds to it on every request and redirect.
    pub egress: std::sync::Arc<kiln_image_store::egress::EgressPolicy>,
    pub http: reqwest::Client,
    pub(crate) uploads: crate::uploads::UploadTable,
}

impl ImageSettings {
    pub fn new(blobs: BlobStore, import_allowed_dirs: Vec<PathBuf>, egress: kiln_image_store::egress::EgressPolicy) -> Self {
        let egress = std::sync::Arc::new(egress);
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).read_timeout(Duration::from_secs(120));
        let http =
            kiln_image_store::egress::import_client(std::sync::Arc::clone(&egress), builder).expect("the HTTP client's settings are valid");
        ImageSettings {
            blobs,
            import_allowed_dirs,
            egress,
            gc_grace: Duration::from_secs(3600),
            upload_expiry: Duration::from_secs(24 * 3600),
            http,
            uploads: Default::default(),
        }
    }
}

/// The image if the caller may see it; otherwise the same 404 as for an absent image (the
/// store decides, by the caller's read scope).
/// `reference` is `NAME` or `PROJECT/NAME` (see [`kiln_db::Store::get_image`]).
pub(crate) async fn visible_image(state: &ApiState, caller: &AuthContext, reference: &str) -> ApiResult<Image> {
    let reference = NameReference::parse("image", reference)?;
    Ok(state.store.get_image(&reference, &caller.read_scope()).await?)
}

/// The image if the caller may change it: 404 if it may not see it, 403 if it may only see it.
pub(crate) async fn writable_image(state: &ApiState, caller: &AuthContext, reference: &str) -> ApiResult<Image> {
    let image = visible_image(state, caller, reference).await?;
    if caller.can_write(image.project.as_deref()) {
        Ok(image)
    } else if image.project.is_some() && caller.can_read(image.project.as_deref()) {
        Err(ApiError::forbidden(format!("you may read image '{}' but not change it", image.scoped_name())))
    } else {
        Err(ApiError::forbidden(format!("image '{}' belongs to another project; you may use it but not change it", image.scoped_name())))
    }
}

/// The project a new resource goes into: the one named, or the caller's only project.
pub(crate) fn target_project(caller: &AuthContext, named: Option<&str>) -> ApiResult<Option<String>> {
    match named {
        Some(project) => {
            let project = validate::name("project", project)?;
            if caller.can_write(Some(&project)) {
                Ok(Some(project))
            } else if caller.can_read(Some(&project)) {
                Err(ApiError::forbidden(format!("you are a reader of project '{project}', not a member")))
            } else {
                Err(ApiError::not_found("project", &project))
            }
        }
        None if caller.admin => Ok(None),
        None => {
            let writable: Vec<&String> =
                caller.memberships.iter().filter(|(_, role)| **role == kiln_types::api::ProjectRole::Member).map(|(p, _)| p).collect();
            match writable.as_slice() {
                [only] => Ok(Some((*only).clone())),
                [] => Err(ApiError::forbidden("you are a member of no project")),
                _ => Err(ApiError::invalid("project: you belong to several projects; name one")),
            }
        }
    }
}

/// The name of an image a user makes. Names starting `ironic-` are the Ironic API's caches
/// (`kiln_ironic::images`), which the server finds by name: no one else may take one.
fn user_image_name(text: &str) -> ApiResult<String> {
    let name = validate::name("name", text)?;
    if name.starts_with(kiln_ironic::images::RESERVED_PREFIX) {
        return Err(ApiError::invalid(format!(
            "name: image names starting '{}' are kept for the Ironic API's fetched images",
            kiln_ironic::images::RESERVED_PREFIX
        )));
    }
    Ok(name)
}

fn optional_label(field: &str, value: Option<&str>) -> ApiResult<Option<String>> {
    value.filter(|text| !text.is_empty()).map(|text| validate::single_line(field, text, 128)).transpose().map_err(Into::into)
}

pub(crate) fn version_ref(text: &str) -> ApiResult<VersionRef> {
    Ok(VersionRef::parse("version", text)?)
}

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<Image>)))]
pub async fn list_images(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(state.store.list_images(&caller.read_scope()).await?))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImageInput,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_image(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(input): JsonBody<ImageInput>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let spec = NewImage {
        name: user_image_name(&input.name)?,
        project: target_project(&caller, input.project.as_deref())?,
        visibility: input.visibility,
        shared_with: input.shared_with.iter().map(|project| validate::name("shared_with", project)).collect::<Result<_, _>>()?,
        description: validate::single_line("description", &input.description, 1024)?,
        os: optional_label("os", input.os.as_deref())?,
        arch: optional_label("arch", input.arch.as_deref())?,
    };
    Ok((StatusCode::CREATED, Json(state.store.create_image(&caller.user, &spec).await?)))
}

#[utoipa::path(get, path = "/v1/images/{image}", tag = "images", params(("image" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn get_image(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Image>> {
    Ok(Json(visible_image(&state, &caller, &name).await?))
}

#[utoipa::path(patch, path = "/v1/images/{image}", tag = "images", params(("image" = String, Path)), request_body = ImageUpdate,
    responses((status = 200, body = Image), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_image(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<ImageUpdate>,
) -> ApiResult<Json<Image>> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    let change = ImageChange {
        visibility: input.visibility,
        shared_with: input
            .shared_with
            .map(|projects| projects.iter().map(|project| validate::name("shared_with", project)).collect::<Result<_, _>>())
            .transpose()?,
        description: input.description.map(|text| validate::single_line("description", &text, 1024)).transpose()?,
        os: input.os.map(|text| optional_label("os", Some(&text))).transpose()?,
        arch: input.arch.map(|text| optional_label("arch", Some(&text))).transpose()?,
    };
    Ok(Json(state.store.update_image(&caller.user, &image, &change).await?))
}

#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images", params(("image" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_image(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    state.store.delete_image(&caller.user, &image).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/images/{image}/versions", tag = "images", params(("image" = String, Path)),
    responses((status = 200, body = Vec<ImageVersion>), (status = 404, body = ErrorBody)))]
pub async fn list_versions(State(state): State<ApiState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Vec<ImageVersion>>> {
    let image = visible_image(&state, &caller, &name).await?.scoped_name();
    Ok(Json(state.store.list_versions(&image).await?))
}

#[utoipa::path(get, path = "/v1/images/{image}/versions/{version}", tag = "images",
    params(("image" = String, Path), ("version" = String, Path, description = "A number or a tag")),
    responses((status = 200, body = ImageVersion), (status = 404, body = ErrorBody)))]
pub async fn get_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ImageVersion>> {
    let image = visible_image(&state, &caller, &name).await?.scoped_name();
    Ok(Json(state.store.get_version(&image, &version_ref(&version)?).await?))
}

#[utoipa::path(delete, path = "/v1/images/{image}/versions/{version}", tag = "images",
    params(("image" = String, Path), ("version" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    state.store.delete_version(&caller.user, &image, &version_ref(&version)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/images/{image}/tags/{tag}", tag = "images", params(("image" = String, Path), ("tag" = String, Path)),
    request_body = TagInput, responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn set_tag(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, tag)): Path<(String, String)>,
    JsonBody(input): JsonBody<TagInput>,
) -> ApiResult<Json<Image>> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    let tag = validate::name("tag", &tag)?;
    if tag.parse::<i64>().is_ok() {
        return Err(ApiError::invalid(format!("tag: '{tag}' is a number, which would read as a version")));
    }
    Ok(Json(state.store.set_tag(&caller.user, &image, &tag, &version_ref(&input.version)?).await?))
}

#[utoipa::path(delete, path = "/v1/images/{image}/tags/{tag}", tag = "images", params(("image" = String, Path), ("tag" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn delete_tag(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, tag)): Path<(String, String)>,
) -> ApiResult<Json<Image>> {
    let image = writable_image(&state, &caller, &name).await?.scoped_name();
    Ok(Json(state.store.delete_tag(&caller.user, &image, &tag).await?))
}

#[utoipa::path(post, path = "/v1/images/{image}/clone", tag = "images", params(("image" = String, Path)), request_body = CloneInput,
    responses((status = 201, body = Image), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clone_image(
    State(state): State<ApiState>,
    caller: Caller,
    Path(source): Path<String>,
    JsonBody(input): JsonBody<CloneInput>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let original = visible_image(&state, &caller, &source).await?;
    let reference = match &input.version {
        Some(text) => version_ref(text)?,
        None => VersionRef::Tag("latest".to_owned()),
    };
    let spec = NewImage {
        name: user_image_name(&input.name)?,
        project: target_project(&caller, input.project.as_deref())?,
        visibility: input.visibility,
        shared_with: Vec::new(),
        description: match &input.description {
            Some(text) => validate::single_line("description", text, 1024)?,
            None => original.description.clone(),
        },
        os: original.os.clone(),
        arch: original.arch.clone(),
    };
    Ok((StatusCode::CREATED, Json(state.store.clone_image(&caller.user, &original.scoped_name(), &reference, &spec).await?)))
}

/// `GET` (and `HEAD`) of one artifact's bytes, with `Range`, `ETag` and `If-None-Match`.
#[utoipa::path(get, path = "/v1/images/{image}/versions/{version}/{artifact}", tag = "images",
    params(("image" = String, Path), ("version" = String, Path), ("artifact" = String, Path, description = "root, disk, kernel or initrd")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 206), (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody)))]
pub async fn download_artifact(
    State(state): State<ApiState>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    Path((name, version, kind)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let image = visible_image(&state, &caller, &name).await?.scoped_name();
    let version = state.store.get_version(&image, &version_ref(&version)?).await?;
    let artifact = artifact_of(&version, &kind)?;
    serve_artifact(&state, &version, artifact, &method, &headers).await
}

pub(crate) fn artifact_of<'v>(version: &'v ImageVersion, kind: &str) -> ApiResult<&'v Artifact> {
    let kind = ArtifactKind::parse(kind)
        .ok_or_else(|| ApiError::invalid(format!("artifact: '{kind}' is not one of root, disk, kernel, initrd")))?;
    version.artifact(kind).ok_or_else(|| ApiError::not_found("artifact", &format!("{}:{}/{kind}", version.image, version.version)))
}

/// One byte range of a representation of `size` bytes, from a `Range` header. `None`: serve
/// the whole (no header, or one this server does not split, such as several ranges).
fn requested_range(headers: &HeaderMap, size: u64, etag: &str) -> Result<Option<Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|value| value.to_str().ok()) else { return Ok(None) };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|value| value.to_str().ok())
        && if_range != etag
    {
        return Ok(None);
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().map_err(|_| ())?;
        if suffix == 0 {
            return Err(());
        }
        size.saturating_sub(suffix)..size
    } else {
        let start: u64 = first.parse().map_err(|_| ())?;
        let end = if last.is_empty() { size } else { last.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(size) };
        if start >= size || end <= start {
            return Err(());
        }
        start..end
    };
    Ok(Some(range))
}

/// Sends an artifact's blob. The ETag is the blob's SHA-256, which never changes for a name;
/// Last-Modified is when the (immutable) version was made.
pub(crate) async fn serve_artifact(
    state: &ApiState,
    version: &ImageVersion,
    artifact: &Artifact,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let etag = format!("\"{}\"", artifact.sha256);
    let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == etag || candidate.trim() == "*"));
    if matches_etag {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let size = artifact.size;
    let range = match requested_range(headers, size, &etag) {
        Ok(range) => range,
        Err(()) => {
            let mut response =
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeNotSatisfiable, format!("the artifact has {size} bytes"))
                    .into_response();
            response.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"));
            return Ok(response);
        }
    };
    let id = BlobId::parse(&artifact.sha256)
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, error.to_string()))?;
    let (status, length) = match &range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.end - range.start),
        None => (StatusCode::OK, size),
    };
    let mut response = if *method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let read = state.images.blobs.read(&id, range.clone()).await.map_err(crate::uploads::blob_error)?;
        Response::new(Body::from_stream(read.stream))
    };
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(header::ETAG, etag_value);
    // Versions are immutable: their artifacts last changed when the version was made.
    let last_modified = version.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = HeaderValue::from_str(&last_modified) {
        response_headers.insert(header::LAST_MODIFIED, value);
    }
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Some(range) = range {
        let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
        response_headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&content_range).expect("ascii"));
    }
    Ok(response)
}

/// `/boot/images/{image}/{version}/{artifact}`: what booting machines fetch. Without a token,
/// so only public images are served here (see [`kiln_db::Store::get_public_image`] for how
/// the image is named).
#[utoipa::path(get, path = "/boot/images/{image}/{version}/{artifact}", tag = "boot", security(()),
    params(("image" = String, Path, description = "A public image: PROJECT%2FNAME exactly, or NAME (the image without a project of that name, else the only public one)"),
        ("version" = String, Path, description = "Version number, or a tag"),
        ("artifact" = String, Path, description = "Artifact kind (root, disk, kernel, initrd)")),
    responses((status = 200, description = "The artifact's bytes (Range requests are honoured)"), (status = 206), (status = 404, body = ErrorBody)))]
pub async fn boot_artifact(
    State(state): State<ApiState>,
    method: Method,
    headers: HeaderMap,
    Path((name, version, kind)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let image = state.store.get_public_image(&NameReference::parse("image", &name)?).await?;
    let version = state.store.get_version(&image.scoped_name(), &version_ref(&version)?).await?;
    let artifact = artifact_of(&version, &kind)?;
    serve_artifact(&state, &version, artifact, &method, &headers).await
}

/// The blob behind a public image artifact's boot URL (`{boot URL}/boot/images/{image}/
/// {version}/{artifact}`, as boot plans hand them out), and its size; `None` for any other
/// URL or an artifact that is gone.
pub async fn boot_artifact_blob(state: &ApiState, url: &str) -> Option<(BlobId, u64)> {
    let rest = url.strip_prefix(&state.boot.public_url)?.strip_prefix(crate::routes::BOOT_IMAGES_PREFIX)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [name, version, kind] = parts[..] else { return None };
    let reference = NameReference::parse_path_segment("image", name).ok()?;
    let image = state.store.get_public_image(&reference).await.ok()?;
    let version = state.store.get_version(&image.scoped_name(), &version_ref(version).ok()?).await.ok()?;
    let artifact = artifact_of(&version, kind).ok()?;
    Some((BlobId::parse(&artifact.sha256).ok()?, artifact.size))
}

/// The boot listener's view of `/boot/images/{image}/{version}/{artifact}`: the artifact's
/// blob file, when the store is a local directory. Anything else (S3, a bad path, an error
/// to explain) is left to the router.
pub(crate) async fn resolve_boot_artifact(state: &ApiState, rest: &str) -> crate::boot_listener::Resolved {
    use crate::boot_listener::Resolved;
    let parts: Vec<&str> = rest.split('/').collect();
    let [name, version, kind] = parts[..] else { return Resolved::Route };
    let Ok(reference) = NameReference::parse_path_segment("image", name) else { return Resolved::Route };
    let Ok(image) = state.store.get_public_image(&reference).await else { return Resolved::Route };
    let Ok(reference) = version_ref(version) else { return Resolved::Route };
    let Ok(version) = state.store.get_version(&image.scoped_name(), &reference).await else { return Resolved::Route };
    let Ok(artifact) = artifact_of(&version, kind) else { return Resolved::Route };
    artifact_file(state, &version, artifact, "public, max-age=31536000, immutable")
}

/// An artifact's blob file for the boot listener to send, with the validators the router
/// gives too (so `If-Range` resumes work across both), when the store is a local directory;
/// otherwise the router answers.
pub(crate) fn artifact_file(
    state: &ApiState,
    version: &kiln_types::image::ImageVersion,
    artifact: &kiln_types::image::Artifact,
    cache_control: &'static str,
) -> crate::boot_listener::Resolved {
    use crate::boot_listener::{Resolved, StaticFile};
    let Ok(id) = BlobId::parse(&artifact.sha256) else { return Resolved::Route };
    let Some(path) = state.images.blobs.local_path(&id) else { return Resolved::Route };
    match std::fs::File::open(&path) {
        Ok(file) => Resolved::File(StaticFile {
            file,
            size: artifact.size,
            etag: format!("\"{}\"", artifact.sha256),
            last_modified: std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(version.created_at.as_millisecond().max(0) as u64),
            content_type: "application/octet-stream",
            cache_control: Some(cache_control),
        }),
        Err(_) => Resolved::Route,
    }
}

#[utoipa::path(post, path = "/v1/images/gc", tag = "images",
    responses((status = 200, body = GcReport), (status = 403, body = ErrorBody)))]
pub async fn collect_garbage(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<GcReport>> {
    caller.require_admin()?;
    let settings = &state.images;
    let now = jiff::Timestamp::now().as_millisecond();
    let cutoff = now - settings.gc_grace.as_millis() as i64;
    let mut report = GcReport::default();
    for blob in state.store.unused_blobs(cutoff).await? {
        // Forget first, then delete: a version that claims the blob in between makes the
        // forget fail, and the bytes stay.
        if state.store.forget_blob(&blob.sha256, cutoff).await? {
            let id = BlobId::parse(&blob.sha256).map_err(crate::uploads::blob_error)?;
            settings.blobs.delete(&id).await.map_err(crate::uploads::blob_error)?;
            report.blobs_removed += 1;
            report.bytes_freed += blob.size;
        }
    }
    // Bytes with no row at all: left by a crash between storing and recording, or written by
    // a replica whose record was then collected.
    let known = state.store.known_blobs().await?;
    let cutoff_seconds = cutoff / 1000;
    for stored in settings.blobs.list().await.map_err(crate::uploads::blob_error)? {
        if !known.contains_key(stored.id.as_str()) && stored.modified < cutoff_seconds {
            settings.blobs.delete(&stored.id).await.map_err(crate::uploads::blob_error)?;
            report.blobs_removed += 1;
            report.bytes_freed += stored.size;
        }
    }
    let upload_cutoff = now - settings.upload_expiry.as_millis() as i64;
    for upload in state.store.stale_uploads(upload_cutoff).await? {
        if state.store.delete_upload(&upload.id).await? {
            crate::uploads::remove_spool(&state, &upload.id).await;
            report.uploads_removed += 1;
        }
    }
    tracing::info!(removed = report.blobs_removed, bytes = report.bytes_freed, uploads = report.uploads_removed, "garbage collected");
    Ok(Json(report))
}

#[utoipa::path(post, path = "/v1/images/verify", tag = "images",
    responses((status = 200, body = VerifyReport), (status = 403, body = ErrorBody)))]
pub async fn verify_blobs(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<VerifyReport>> {
    caller.require_admin()?;
    let mut report = VerifyReport::default();
    for (sha256, _) in state.store.known_blobs().await? {
        let id = BlobId::parse(&sha256).map_err(crate::uploads::blob_error)?;
        match state.images.blobs.rehash(&id).await {
            Ok((actual, bytes)) => {
                report.blobs_checked += 1;
                report.bytes_checked += bytes;
                if actual != sha256 {
                    tracing::error!(blob = %sha256, %actual, "blob is corrupt");
                    report.corrupt.push(sha256);
                }
            }
            Err(kiln_image_store::BlobError::NotFound { .. }) => {
                tracing::error!(blob = %sha256, "blob is missing");
                report.missing.push(sha256);
            }
            Err(error) => return Err(crate::uploads::blob_error(error)),
        }
    }
    Ok(Json(report))
}
