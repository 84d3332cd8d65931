//! Images, their immutable versions and tags, the reference counts of the blobs they use, and
//! uploads in progress.
//!
//! The bytes are not here: the blob store has them under their SHA-256. This module decides
//! which blobs are in use. A blob row is written ("touched") before its bytes are stored and
//! is only forgotten when no artifact refers to it and it has not been touched for a while,
//! so garbage collection never removes bytes that a version is about to claim.
//!
//! Why one file over 600 lines: the blob reference rule above spans images, versions,
//! artifacts, tags, uploads and collection; split by table, it would be in six places.

use std::collections::BTreeMap;

use kiln_auth::ProjectScope;
use kiln_types::image::{Artifact, ArtifactKind, Compression, Image, ImageFormat, ImageVersion, Upload, VersionRef, Visibility};
use kiln_types::scoped_name::{NameReference, ScopedName};
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::{Store, StoreError};

/// A validated new image.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub project: Option<String>,
    pub visibility: Visibility,
    pub shared_with: Vec<String>,
    pub description: String,
    pub os: Option<String>,
    pub arch: Option<String>,
}

/// A validated change to an image's settable fields.
#[derive(Debug, Clone, Default)]
pub struct ImageChange {
    pub visibility: Option<Visibility>,
    pub shared_with: Option<Vec<String>>,
    pub description: Option<String>,
    pub os: Option<Option<String>>,
    pub arch: Option<Option<String>>,
}

/// An artifact about to be recorded, with where it came from.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub artifact: Artifact,
    pub source_etag: Option<String>,
    pub source_modified: Option<String>,
}

/// A validated new version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version: Option<i64>,
    pub base: Option<VersionRef>,
    pub artifacts: Vec<NewArtifact>,
    pub tags: Vec<String>,
    pub note: String,
}

/// What an earlier import of a URL recorded, to decide whether to fetch it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSource {
    pub version: i64,
    pub url: String,
    pub etag: Option<String>,
    pub modified: Option<String>,
}

/// A blob that garbage collection may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedBlob {
    pub sha256: String,
    pub size: u64,
}

struct ImageRow {
    id: String,
    image: Image,
}

/// Who sees an image: readers of its project, everyone for a public one, readers of a
/// project it is shared with.
fn image_visible(image: &Image, scope: &ProjectScope) -> bool {
    let in_scope = |project: Option<&str>| crate::nodes_visible(scope, project);
    in_scope(image.project.as_deref())
        || image.visibility == Visibility::Public
        || (image.visibility == Visibility::Shared && image.shared_with.iter().any(|project| in_scope(Some(project))))
}

const IMAGE_COLUMNS: &str = "id, name, project, visibility, description, os, arch, created_at, updated_at";

async fn image_row(connection: &mut AnyConnection, image: &ScopedName) -> Result<ImageRow, StoreError> {
    let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE name = $1 AND COALESCE(project, '') = $2");
    let row = sqlx::query(&sql)
        .bind(&image.name)
        .bind(image.project.as_deref().unwrap_or_default())
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("reading an image"))?
        .ok_or_else(|| StoreError::not_found("image", image.key()))?;
    complete_image(connection, &row).await
}

/// The image `reference` names for a reader with `scope`, among the images it sees (any
/// other is exactly like a missing one, and never makes a reference ambiguous):
/// `PROJECT/NAME` names that project's image. A bare `NAME` names, in this order, the
/// reader's own projects' image of that name, the image of that name without a project,
/// then the one public or shared image of that name; two candidates at the same step are
/// ambiguous, and the answer names them so the caller can say which.
async fn resolve_image(connection: &mut AnyConnection, reference: &NameReference, scope: &ProjectScope) -> Result<ImageRow, StoreError> {
    let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE name = $1 ORDER BY COALESCE(project, '')");
    let rows = sqlx::query(&sql).bind(&reference.name).fetch_all(&mut *connection).await.map_err(StoreError::query("reading an image"))?;
    let mut visible_images = Vec::new();
    for row in &rows {
        let candidate = complete_image(connection, row).await?;
        if image_visible(&candidate.image, scope) {
            visible_images.push(candidate);
        }
    }
    crate::resolve::pick_named("image", reference, visible_images, scope, |candidate: &ImageRow| candidate.image.scoped_name())?
        .ok_or_else(|| StoreError::not_found("image", reference.to_string()))
}

async fn complete_image(connection: &mut AnyConnection, row: &sqlx::any::AnyRow) -> Result<ImageRow, StoreError> {
    let read = || StoreError::query("reading an image");
    let id: String = row.try_get("id").map_err(read())?;
    let visibility_text: String = row.try_get("visibility").map_err(read())?;
    let shared_with = sqlx::query("SELECT project FROM image_shares WHERE image_id = $1 ORDER BY project")
        .bind(&id)
        .fetch_all(&mut *connection)
        .await
        .map_err(read())?
        .iter()
        .map(|row| row.try_get::<String, _>("project"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read())?;
    let latest_version: Option<i64> = sqlx::query("SELECT MAX(version) AS latest FROM image_versions WHERE image_id = $1")
        .bind(&id)
        .fetch_one(&mut *connection)
        .await
        .and_then(|row| row.try_get("latest"))
        .map_err(read())?;
    let mut tags = BTreeMap::new();
    for row in
        sqlx::query("SELECT tag, version FROM image_tags WHERE image_id = $1").bind(&id).fetch_all(&mut *connection).await.map_err(read())?
    {
        tags.insert(row.try_get::<String, _>("tag").map_err(read())?, row.try_get::<i64, _>("version").map_err(read())?);
    }
    if let Some(latest) = latest_version {
        tags.entry("latest".to_owned()).or_insert(latest);
    }
    let image = Image {
        name: row.try_get("name").map_err(read())?,
        project: row.try_get("project").map_err(read())?,
        visibility: Visibility::parse(&visibility_text)
            .ok_or_else(|| StoreError::Corrupt { message: format!("image visibility '{visibility_text}'") })?,
        shared_with,
        description: row.try_get("description").map_err(read())?,
        os: row.try_get("os").map_err(read())?,
        arch: row.try_get("arch").map_err(read())?,
        latest_version,
        tags,
        created_at: crate::timestamp(row.try_get("created_at").map_err(read())?),
        updated_at: crate::timestamp(row.try_get("updated_at").map_err(read())?),
    };
    Ok(ImageRow { id, image })
}

async fn resolve_version(connection: &mut AnyConnection, image: &ImageRow, reference: &VersionRef) -> Result<i64, StoreError> {
    let missing = || StoreError::not_found("version", format!("{}:{reference}", image.image.name));
    match reference {
        VersionRef::Number(number) => {
            let exists = sqlx::query("SELECT 1 AS found FROM image_versions WHERE image_id = $1 AND version = $2")
                .bind(&image.id)
                .bind(*number)
                .fetch_optional(&mut *connection)
                .await
                .map_err(StoreError::query("looking up a version"))?
                .is_some();
            if exists { Ok(*number) } else { Err(missing()) }
        }
        VersionRef::Tag(tag) => image.image.tags.get(tag).copied().ok_or_else(missing),
    }
}

async fn load_version(connection: &mut AnyConnection, image: &ImageRow, version: i64) -> Result<ImageVersion, StoreError> {
    let read = || StoreError::query("reading a version");
    let row = sqlx::query("SELECT created_at, created_by, note FROM image_versions WHERE image_id = $1 AND version = $2")
        .bind(&image.id)
        .bind(version)
        .fetch_optional(&mut *connection)
        .await
        .map_err(read())?
        .ok_or_else(|| StoreError::not_found("version", format!("{}:{version}", image.image.name)))?;
    let artifact_rows = sqlx::query(
        "SELECT kind, sha256, format, compression, size, virtual_size, checksums, source_url \
         FROM image_artifacts WHERE image_id = $1 AND version = $2",
    )
    .bind(&image.id)
    .bind(version)
    .fetch_all(&mut *connection)
    .await
    .map_err(read())?;
    let mut artifacts = Vec::with_capacity(artifact_rows.len());
    for row in &artifact_rows {
        artifacts.push(artifact_from_row(row)?);
    }
    artifacts.sort_by_key(|artifact| artifact.kind);
    Ok(ImageVersion {
        image: image.image.name.clone(),
        version,
        tags: image.image.tags.iter().filter(|(_, tagged)| **tagged == version).map(|(tag, _)| tag.clone()).collect(),
        note: row.try_get("note").map_err(read())?,
        created_by: row.try_get("created_by").map_err(read())?,
        created_at: crate::timestamp(row.try_get("created_at").map_err(read())?),
        artifacts,
    })
}

fn artifact_from_row(row: &sqlx::any::AnyRow) -> Result<Artifact, StoreError> {
    let read = || StoreError::query("reading an artifact");
    let corrupt = |what: &str, value: &str| StoreError::Corrupt { message: format!("artifact {what} '{value}'") };
    let kind: String = row.try_get("kind").map_err(read())?;
    let format: String = row.try_get("format").map_err(read())?;
    let compression: Option<String> = row.try_get("compression").map_err(read())?;
    let checksums: String = row.try_get("checksums").map_err(read())?;
    Ok(Artifact {
        kind: ArtifactKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        sha256: row.try_get("sha256").map_err(read())?,
        format: ImageFormat::parse(&format).ok_or_else(|| corrupt("format", &format))?,
        compression: compression.as_deref().map(|text| Compression::parse(text).ok_or_else(|| corrupt("compression", text))).transpose()?,
        size: row.try_get::<i64, _>("size").map_err(read())? as u64,
        virtual_size: row.try_get::<Option<i64>, _>("virtual_size").map_err(read())?.map(|size| size as u64),
        checksums: serde_json::from_str(&checksums).map_err(|_| corrupt("checksums", &checksums))?,
        source_url: row.try_get("source_url").map_err(read())?,
    })
}

async fn insert_artifact(
    connection: &mut AnyConnection,
    image_id: &str,
    version: i64,
    artifact: &Artifact,
    source_etag: Option<&str>,
    source_modified: Option<&str>,
) -> Result<(), StoreError> {
    let claimed = sqlx::query("UPDATE blobs SET refcount = refcount + 1 WHERE sha256 = $1")
        .bind(&artifact.sha256)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("claiming a blob"))?
        .rows_affected();
    if claimed == 0 {
        return Err(StoreError::Invalid { message: format!("blob {} is not in the store (was it collected?)", artifact.sha256) });
    }
    sqlx::query(
        "INSERT INTO image_artifacts (image_id, version, kind, sha256, format, compression, size, virtual_size, checksums, \
         source_url, source_etag, source_modified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(image_id)
    .bind(version)
    .bind(artifact.kind.as_str())
    .bind(&artifact.sha256)
    .bind(artifact.format.as_str())
    .bind(artifact.compression.map(|compression| compression.as_str()))
    .bind(artifact.size as i64)
    .bind(artifact.virtual_size.map(|size| size as i64))
    .bind(serde_json::to_string(&artifact.checksums).expect("a string map serialises"))
    .bind(artifact.source_url.as_deref())
    .bind(source_etag)
    .bind(source_modified)
    .execute(&mut *connection)
    .await
    .map_err(StoreError::query("recording an artifact"))?;
    Ok(())
}

/// Drops the artifacts of the given versions (all when `version` is None), releasing their
/// blobs.
async fn release_artifacts(connection: &mut AnyConnection, image_id: &str, version: Option<i64>) -> Result<(), StoreError> {
    let only_version = if version.is_some() { " AND version = $2" } else { "" };
    let select = format!("SELECT sha256 FROM image_artifacts WHERE image_id = $1{only_version}");
    let mut query = sqlx::query(&select).bind(image_id);
    if let Some(version) = version {
        query = query.bind(version);
    }
    let rows = query.fetch_all(&mut *connection).await.map_err(StoreError::query("listing artifacts"))?;
    for row in rows {
        let sha256: String = row.try_get("sha256").map_err(StoreError::query("listing artifacts"))?;
        sqlx::query("UPDATE blobs SET refcount = refcount - 1, touched_at = $2 WHERE sha256 = $1")
            .bind(&sha256)
            .bind(crate::now_millis())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("releasing a blob"))?;
    }
    let delete = format!("DELETE FROM image_artifacts WHERE image_id = $1{only_version}");
    let mut query = sqlx::query(&delete).bind(image_id);
    if let Some(version) = version {
        query = query.bind(version);
    }
    query.execute(&mut *connection).await.map_err(StoreError::query("deleting artifacts"))?;
    Ok(())
}

async fn insert_image(connection: &mut AnyConnection, id: &str, spec: &NewImage, now: i64) -> Result<(), StoreError> {
    let identity = ScopedName::new(spec.project.as_deref(), &spec.name);
    match image_row(connection, &identity).await {
        Ok(_) => return Err(StoreError::conflict(format!("image '{identity}' already exists"))),
        Err(StoreError::NotFound { .. }) => {}
        Err(error) => return Err(error),
    }
    sqlx::query(&format!("INSERT INTO images ({IMAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"))
        .bind(id)
        .bind(&spec.name)
        .bind(spec.project.as_deref())
        .bind(spec.visibility.as_str())
        .bind(&spec.description)
        .bind(spec.os.as_deref())
        .bind(spec.arch.as_deref())
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("creating an image"))?;
    write_shares(connection, id, &spec.shared_with).await
}

async fn write_shares(connection: &mut AnyConnection, image_id: &str, projects: &[String]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM image_shares WHERE image_id = $1")
        .bind(image_id)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("clearing image shares"))?;
    for project in projects {
        if !crate::tenancy::project_exists(connection, project).await? {
            return Err(StoreError::Invalid { message: format!("shared_with: project '{project}' does not exist") });
        }
        sqlx::query("INSERT INTO image_shares (image_id, project) VALUES ($1, $2)")
            .bind(image_id)
            .bind(project)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("sharing an image"))?;
    }
    Ok(())
}

async fn write_tag(connection: &mut AnyConnection, image_id: &str, tag: &str, version: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM image_tags WHERE image_id = $1 AND tag = $2")
        .bind(image_id)
        .bind(tag)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("moving a tag"))?;
    sqlx::query("INSERT INTO image_tags (image_id, tag, version) VALUES ($1, $2, $3)")
        .bind(image_id)
        .bind(tag)
        .bind(version)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("tagging a version"))?;
    Ok(())
}

/// Records an event about an image (or one of its versions, as `target` `NAME:VERSION`).
async fn record_image_event(
    connection: &mut AnyConnection,
    actor: &str,
    action: &str,
    target: &str,
    project: Option<&str>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), StoreError> {
    record(connection, NewEvent { actor, action, target_kind: "image", target, project, before, after }).await
}

fn event_value<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

impl Store {
    pub async fn create_image(&self, actor: &str, spec: &NewImage) -> Result<Image, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if let Some(project) = &spec.project
            && !crate::tenancy::project_exists(connection, project).await?
        {
            return Err(StoreError::not_found("project", project));
        }
        insert_image(connection, &uuid::Uuid::new_v4().to_string(), spec, crate::now_millis()).await?;
        let image = image_row(connection, &ScopedName::new(spec.project.as_deref(), &spec.name)).await?.image;
        let target = image.scoped_name().key();
        record_image_event(connection, actor, "image.create", &target, spec.project.as_deref(), None, event_value(&image)).await?;
        transaction.commit().await?;
        Ok(image)
    }

    /// The image `reference` names as a reader with `scope` sees it: its projects' images,
    /// public ones and those shared with one of its projects (see [`resolve_image`] for how
    /// a bare name is resolved). Any other is exactly like a missing one.
    pub async fn get_image(&self, reference: &NameReference, scope: &ProjectScope) -> Result<Image, StoreError> {
        let mut connection = self.read().await?;
        Ok(resolve_image(&mut connection, reference, scope).await?.image)
    }

    /// The image with exactly this identity: `NAME` is the image without a project, never
    /// one of a project's. For the server's own images (the Ironic API's caches), which are
    /// named by what they hold and must not resolve to another project's image of the name.
    pub async fn get_image_exact(&self, identity: &ScopedName) -> Result<Image, StoreError> {
        let mut connection = self.read().await?;
        Ok(image_row(&mut connection, identity).await?.image)
    }

    /// A public image, as booting machines (who have no token) may fetch it. `PROJECT/NAME`
    /// names one exactly. A bare `NAME` names the image of that name without a project when
    /// there is one (the operators' own: no project can take its name from a boot path),
    /// else the only public image of that name; two are ambiguous, and name none. An image
    /// that is not public is served to no machine, whatever names it.
    pub async fn get_public_image(&self, reference: &NameReference) -> Result<Image, StoreError> {
        let mut connection = self.read().await?;
        let missing = || StoreError::not_found("image", reference.to_string());
        let image = match &reference.project {
            Some(project) => image_row(&mut connection, &ScopedName::new(Some(project), &reference.name)).await?.image,
            None => match image_row(&mut connection, &ScopedName::new(None, &reference.name)).await {
                Ok(row) => row.image,
                Err(StoreError::NotFound { .. }) => {
                    let public_only = ProjectScope::Projects(Vec::new());
                    resolve_image(&mut connection, reference, &public_only).await.map_err(|_| missing())?.image
                }
                Err(error) => return Err(error),
            },
        };
        if image.visibility == Visibility::Public { Ok(image) } else { Err(missing()) }
    }

    /// Every image a reader with `scope` sees (see [`Store::get_image`]), by name.
    pub async fn list_images(&self, scope: &ProjectScope) -> Result<Vec<Image>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query(&format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY name"))
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing images"))?;
        let mut images = Vec::with_capacity(rows.len());
        for row in &rows {
            let image = complete_image(&mut connection, row).await?.image;
            if image_visible(&image, scope) {
                images.push(image);
            }
        }
        Ok(images)
    }

    pub async fn update_image(&self, actor: &str, identity: &ScopedName, change: &ImageChange) -> Result<Image, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = image_row(connection, identity).await?;
        let old = &before.image;
        sqlx::query("UPDATE images SET visibility = $2, description = $3, os = $4, arch = $5, updated_at = $6 WHERE id = $1")
            .bind(&before.id)
            .bind(change.visibility.unwrap_or(old.visibility).as_str())
            .bind(change.description.as_deref().unwrap_or(&old.description))
            .bind(change.os.clone().unwrap_or_else(|| old.os.clone()))
            .bind(change.arch.clone().unwrap_or_else(|| old.arch.clone()))
            .bind(crate::now_millis())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("updating an image"))?;
        if let Some(projects) = &change.shared_with {
            write_shares(connection, &before.id, projects).await?;
        }
        let after = image_row(connection, identity).await?.image;
        record_image_event(
            connection,
            actor,
            "image.update",
            &identity.key(),
            old.project.as_deref(),
            event_value(old),
            event_value(&after),
        )
        .await?;
        transaction.commit().await?;
        Ok(after)
    }

    /// Deletes an image with all its versions; blobs no longer used become collectable.
    pub async fn delete_image(&self, actor: &str, identity: &ScopedName) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let image = image_row(connection, identity).await?;
        refuse_if_network_disks_use(connection, identity, None).await?;
        release_artifacts(connection, &image.id, None).await?;
        for statement in [
            "DELETE FROM image_tags WHERE image_id = $1",
            "DELETE FROM image_versions WHERE image_id = $1",
            "DELETE FROM image_shares WHERE image_id = $1",
            "DELETE FROM images WHERE id = $1",
        ] {
            sqlx::query(statement).bind(&image.id).execute(&mut *connection).await.map_err(StoreError::query("deleting an image"))?;
        }
        record_image_event(
            connection,
            actor,
            "image.delete",
            &identity.key(),
            image.image.project.as_deref(),
            event_value(&image.image),
            None,
        )
        .await?;
        transaction.commit().await
    }

    pub async fn list_versions(&self, identity: &ScopedName) -> Result<Vec<ImageVersion>, StoreError> {
        let mut connection = self.read().await?;
        let image = image_row(&mut connection, identity).await?;
        let numbers = sqlx::query("SELECT version FROM image_versions WHERE image_id = $1 ORDER BY version")
            .bind(&image.id)
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing versions"))?;
        let mut versions = Vec::with_capacity(numbers.len());
        for row in numbers {
            let number: i64 = row.try_get("version").map_err(StoreError::query("listing versions"))?;
            versions.push(load_version(&mut connection, &image, number).await?);
        }
        Ok(versions)
    }

    pub async fn get_version(&self, identity: &ScopedName, reference: &VersionRef) -> Result<ImageVersion, StoreError> {
        let mut connection = self.read().await?;
        let image = image_row(&mut connection, identity).await?;
        let number = resolve_version(&mut connection, &image, reference).await?;
        load_version(&mut connection, &image, number).await
    }

    /// Records a new immutable version. The number is `spec.version` if given (refused if it
    /// exists: of two writers racing for one number exactly one wins) or the next one.
    pub async fn create_version(&self, actor: &str, identity: &ScopedName, spec: &NewVersion) -> Result<ImageVersion, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let image = image_row(connection, identity).await?;
        let number = match spec.version {
            Some(number) => {
                if resolve_version(connection, &image, &VersionRef::Number(number)).await.is_ok() {
                    return Err(StoreError::conflict(format!("version {identity}:{number} already exists; versions are immutable")));
                }
                number
            }
            None => image.image.latest_version.unwrap_or(0) + 1,
        };
        let mut artifacts: BTreeMap<ArtifactKind, (Artifact, Option<String>, Option<String>)> = BTreeMap::new();
        if let Some(base) = &spec.base {
            let base_number = resolve_version(connection, &image, base).await?;
            let rows = sqlx::query(
                "SELECT kind, sha256, format, compression, size, virtual_size, checksums, source_url, source_etag, source_modified \
                 FROM image_artifacts WHERE image_id = $1 AND version = $2",
            )
            .bind(&image.id)
            .bind(base_number)
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("reading the base version"))?;
            for row in &rows {
                let artifact = artifact_from_row(row)?;
                let etag = row.try_get("source_etag").map_err(StoreError::query("reading the base version"))?;
                let modified = row.try_get("source_modified").map_err(StoreError::query("reading the base version"))?;
                artifacts.insert(artifact.kind, (artifact, etag, modified));
            }
        }
        for new in &spec.artifacts {
            artifacts.insert(new.artifact.kind, (new.artifact.clone(), new.source_etag.clone(), new.source_modified.clone()));
        }
        if artifacts.is_empty() {
            return Err(StoreError::Invalid { message: "a version needs at least one artifact".to_owned() });
        }
        sqlx::query("INSERT INTO image_versions (image_id, version, created_at, created_by, note) VALUES ($1, $2, $3, $4, $5)")
            .bind(&image.id)
            .bind(number)
            .bind(crate::now_millis())
            .bind(actor)
            .bind(&spec.note)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating a version"))?;
        for (artifact, etag, modified) in artifacts.values() {
            insert_artifact(connection, &image.id, number, artifact, etag.as_deref(), modified.as_deref()).await?;
        }
        for tag in &spec.tags {
            write_tag(connection, &image.id, tag, number).await?;
        }
        sqlx::query("UPDATE images SET updated_at = $2 WHERE id = $1")
            .bind(&image.id)
            .bind(crate::now_millis())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("updating an image"))?;
        let image = image_row(connection, identity).await?;
        let version = load_version(connection, &image, number).await?;
        let target = format!("{identity}:{number}");
        record_image_event(connection, actor, "image.version.create", &target, image.image.project.as_deref(), None, event_value(&version))
            .await?;
        transaction.commit().await?;
        Ok(version)
    }

    pub async fn delete_version(&self, actor: &str, identity: &ScopedName, reference: &VersionRef) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let image = image_row(connection, identity).await?;
        let number = resolve_version(connection, &image, reference).await?;
        let version = load_version(connection, &image, number).await?;
        refuse_if_network_disks_use(connection, identity, Some(number)).await?;
        release_artifacts(connection, &image.id, Some(number)).await?;
        for statement in [
            "DELETE FROM image_tags WHERE image_id = $1 AND version = $2",
            "DELETE FROM image_versions WHERE image_id = $1 AND version = $2",
        ] {
            sqlx::query(statement)
                .bind(&image.id)
                .bind(number)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("deleting a version"))?;
        }
        let target = format!("{identity}:{number}");
        record_image_event(connection, actor, "image.version.delete", &target, image.image.project.as_deref(), event_value(&version), None)
            .await?;
        transaction.commit().await
    }

    /// Points `tag` at a version (`latest` included: it then stops following the newest).
    pub async fn set_tag(&self, actor: &str, identity: &ScopedName, tag: &str, reference: &VersionRef) -> Result<Image, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let image = image_row(connection, identity).await?;
        let number = resolve_version(connection, &image, reference).await?;
        write_tag(connection, &image.id, tag, number).await?;
        let after = image_row(connection, identity).await?.image;
        record_image_event(
            connection,
            actor,
            "image.tag",
            &identity.key(),
            image.image.project.as_deref(),
            event_value(&image.image.tags),
            event_value(&after.tags),
        )
        .await?;
        transaction.commit().await?;
        Ok(after)
    }

    pub async fn delete_tag(&self, actor: &str, identity: &ScopedName, tag: &str) -> Result<Image, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let image = image_row(connection, identity).await?;
        let deleted = sqlx::query("DELETE FROM image_tags WHERE image_id = $1 AND tag = $2")
            .bind(&image.id)
            .bind(tag)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a tag"))?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::not_found("tag", format!("{identity}:{tag}")));
        }
        let after = image_row(connection, identity).await?.image;
        record_image_event(
            connection,
            actor,
            "image.untag",
            &identity.key(),
            image.image.project.as_deref(),
            event_value(&image.image.tags),
            event_value(&after.tags),
        )
        .await?;
        transaction.commit().await?;
        Ok(after)
    }

    /// A new image whose version 1 is `source`'s version `reference`: rows only, the blobs
    /// are shared, so it takes the same time whatever the image's size.
    pub async fn clone_image(
        &self,
        actor: &str,
        source: &ScopedName,
        reference: &VersionRef,
        spec: &NewImage,
    ) -> Result<Image, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let source_image = image_row(connection, source).await?;
        let number = resolve_version(connection, &source_image, reference).await?;
        let version = load_version(connection, &source_image, number).await?;
        if let Some(project) = &spec.project
            && !crate::tenancy::project_exists(connection, project).await?
        {
            return Err(StoreError::not_found("project", project));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = crate::now_millis();
        insert_image(connection, &id, spec, now).await?;
        let note = format!("cloned from {source}:{number}");
        sqlx::query("INSERT INTO image_versions (image_id, version, created_at, created_by, note) VALUES ($1, 1, $2, $3, $4)")
            .bind(&id)
            .bind(now)
            .bind(actor)
            .bind(&note)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating a version"))?;
        for artifact in &version.artifacts {
            insert_artifact(connection, &id, 1, artifact, None, None).await?;
        }
        let image = image_row(connection, &ScopedName::new(spec.project.as_deref(), &spec.name)).await?.image;
        record_image_event(
            connection,
            actor,
            "image.clone",
            &image.scoped_name().key(),
            spec.project.as_deref(),
            None,
            event_value(&image),
        )
        .await?;
        transaction.commit().await?;
        Ok(image)
    }

    /// What the newest version holding an imported `kind` artifact recorded about its source.
    pub async fn last_import(&self, identity: &ScopedName, kind: ArtifactKind) -> Result<Option<ImportSource>, StoreError> {
        let mut connection = self.read().await?;
        let image = image_row(&mut connection, identity).await?;
        let row = sqlx::query(
            "SELECT version, source_url, source_etag, source_modified FROM image_artifacts \
             WHERE image_id = $1 AND kind = $2 AND source_url IS NOT NULL ORDER BY version DESC LIMIT 1",
        )
        .bind(&image.id)
        .bind(kind.as_str())
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("reading the last import"))?;
        let read = || StoreError::query("reading the last import");
        row.map(|row| {
            Ok(ImportSource {
                version: row.try_get("version").map_err(read())?,
                url: row.try_get("source_url").map_err(read())?,
                etag: row.try_get("source_etag").map_err(read())?,
                modified: row.try_get("source_modified").map_err(read())?,
            })
        })
        .transpose()
    }

    /// Records that a blob's bytes are about to be stored (or are stored), so that garbage
    /// collection leaves it alone for its grace period.
    pub async fn touch_blob(&self, sha256: &str, size: u64) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let now = crate::now_millis();
        let updated = sqlx::query("UPDATE blobs SET touched_at = $2 WHERE sha256 = $1")
            .bind(sha256)
            .bind(now)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("touching a blob"))?
            .rows_affected();
        if updated == 0 {
            sqlx::query("INSERT INTO blobs (sha256, size, refcount, touched_at) VALUES ($1, $2, 0, $3)")
                .bind(sha256)
                .bind(size as i64)
                .bind(now)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("recording a blob"))?;
        }
        transaction.commit().await
    }

    /// Blobs no artifact uses and nobody touched since `touched_before` (ms since the epoch).
    pub async fn unused_blobs(&self, touched_before: i64) -> Result<Vec<UnusedBlob>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query("SELECT sha256, size FROM blobs WHERE refcount <= 0 AND touched_at < $1 ORDER BY sha256")
            .bind(touched_before)
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing unused blobs"))?;
        let read = || StoreError::query("listing unused blobs");
        rows.iter()
            .map(|row| {
                Ok(UnusedBlob {
                    sha256: row.try_get("sha256").map_err(read())?,
                    size: row.try_get::<i64, _>("size").map_err(read())? as u64,
                })
            })
            .collect()
    }

    /// Forgets a blob if it is still unused and untouched; true if it did (and the caller
    /// should now delete its bytes).
    pub async fn forget_blob(&self, sha256: &str, touched_before: i64) -> Result<bool, StoreError> {
        let mut transaction = self.write().await?;
        let deleted = sqlx::query("DELETE FROM blobs WHERE sha256 = $1 AND refcount <= 0 AND touched_at < $2")
            .bind(sha256)
            .bind(touched_before)
            .execute(transaction.connection())
            .await
            .map_err(StoreError::query("forgetting a blob"))?
            .rows_affected();
        transaction.commit().await?;
        Ok(deleted > 0)
    }

    /// Every blob the database knows, with its recorded size.
    pub async fn known_blobs(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut connection = self.read().await?;
        let rows =
            sqlx::query("SELECT sha256, size FROM blobs").fetch_all(&mut *connection).await.map_err(StoreError::query("listing blobs"))?;
        let read = || StoreError::query("listing blobs");
        rows.iter().map(|row| Ok((row.try_get("sha256").map_err(read())?, row.try_get::<i64, _>("size").map_err(read())? as u64))).collect()
    }

    pub async fn create_upload(&self, actor: &str, project: Option<&str>, checksum: Option<&str>) -> Result<Upload, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if let Some(project) = project
            && !crate::tenancy::project_exists(connection, project).await?
        {
            return Err(StoreError::not_found("project", project));
        }
        let upload = Upload {
            id: uuid::Uuid::new_v4().simple().to_string(),
            project: project.map(str::to_owned),
            offset: 0,
            checksum: checksum.map(str::to_owned),
            created_at: crate::now(),
        };
        sqlx::query("INSERT INTO uploads (id, project, created_by, checksum, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&upload.id)
            .bind(project)
            .bind(actor)
            .bind(checksum)
            .bind(upload.created_at.as_millisecond())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating an upload"))?;
        transaction.commit().await?;
        Ok(upload)
    }

    /// An upload's record; `offset` is left at 0 (the spool file knows the length).
    pub async fn get_upload(&self, id: &str) -> Result<Upload, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query("SELECT id, project, checksum, created_at FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading an upload"))?
            .ok_or_else(|| StoreError::not_found("upload", id))?;
        upload_from_row(&row)
    }

    /// Removes an upload's record; true if it existed. Only one caller of several racing to
    /// finish the same upload gets true.
    pub async fn delete_upload(&self, id: &str) -> Result<bool, StoreError> {
        let mut transaction = self.write().await?;
        let deleted = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(transaction.connection())
            .await
            .map_err(StoreError::query("deleting an upload"))?
            .rows_affected();
        transaction.commit().await?;
        Ok(deleted > 0)
    }

    /// Uploads started before `created_before` (ms since the epoch): abandoned.
    pub async fn stale_uploads(&self, created_before: i64) -> Result<Vec<Upload>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query("SELECT id, project, checksum, created_at FROM uploads WHERE created_at < $1")
            .bind(created_before)
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing stale uploads"))?;
        rows.iter().map(upload_from_row).collect()
    }
}

fn upload_from_row(row: &sqlx::any::AnyRow) -> Result<Upload, StoreError> {
    let read = || StoreError::query("reading an upload");
    Ok(Upload {
        id: row.try_get("id").map_err(read())?,
        project: row.try_get("project").map_err(read())?,
        offset: 0,
        checksum: row.try_get("checksum").map_err(read())?,
        created_at: crate::timestamp(row.try_get("created_at").map_err(read())?),
    })
}

/// A version that nodes' network disks are clones of stays until they are undeployed: its
/// blobs back their clones.
async fn refuse_if_network_disks_use(
    connection: &mut sqlx::AnyConnection,
    identity: &ScopedName,
    version: Option<i64>,
) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT version FROM network_disks WHERE image = $1")
        .bind(identity.key())
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("reading network disks"))?;
    let mut versions = std::collections::BTreeMap::<i64, usize>::new();
    for row in &rows {
        let used: i64 = row.try_get("version").map_err(StoreError::query("reading network disks"))?;
        if version.is_none_or(|version| version == used) {
            *versions.entry(used).or_default() += 1;
        }
    }
    if versions.is_empty() {
        return Ok(());
    }
    // Counted, not named: the nodes may be other projects'.
    let uses: Vec<String> = versions.iter().map(|(version, nodes)| format!("{nodes} of {identity}:{version}")).collect();
    Err(StoreError::conflict(format!("nodes' network disks are clones of it ({}): undeploy them first", uses.join(", "))))
}
