//! Publishing what a build made where the definition says: a push per tag to an OCI
//! registry, the SquashFS triple to S3 where OpenCHAMI's builder puts it, and a new
//! version of a Kiln image, unless its latest version already holds the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_image_build::definition::ImageDefinition;
use kiln_image_build::oci::ImageReference;
use kiln_types::image::{ArtifactKind, ImageInput, ImageVersion, Visibility};

use crate::catalog::ImageCatalog;
use crate::error::DriverError;
use crate::outputs::{BuildResult, SquashfsFiles};
use crate::registry;

/// The S3 credentials, as OpenCHAMI's builder takes them from the environment
/// (`S3_ACCESS`, `S3_SECRET`; and `S3_REGION`, default us-east-1), checked before anything
/// runs; `None` when the definition publishes nothing to S3.
pub fn s3_settings(
    definition: &ImageDefinition,
    environment: &BTreeMap<String, String>,
) -> Result<Option<kiln_image_store::S3Settings>, DriverError> {
    let Some(target) = &definition.publish.s3 else { return Ok(None) };
    let variable = |name: &str| environment.get(name).filter(|value| !value.is_empty()).cloned();
    let (Some(access_key_id), Some(secret_access_key)) = (variable("S3_ACCESS"), variable("S3_SECRET")) else {
        return Err(DriverError::NoS3Credentials);
    };
    Ok(Some(kiln_image_store::S3Settings {
        endpoint: target.endpoint.trim_end_matches('/').to_owned(),
        bucket: target.bucket.clone(),
        region: variable("S3_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        access_key_id,
        secret_access_key,
        prefix: String::new(),
    }))
}

/// The keys OpenCHAMI's builder gives the triple: the root at `<prefix><name>-<tag>`, the
/// kernel and initramfs under `efi-images/<prefix>`.
pub fn s3_objects(definition: &ImageDefinition, files: &SquashfsFiles) -> Vec<(String, PathBuf)> {
    let prefix = definition.publish.s3.as_ref().map(|target| target.prefix.as_str()).unwrap_or_default();
    let tag = definition.tags.first().map_or("latest", String::as_str);
    let mut objects = vec![(format!("{prefix}{}-{tag}", definition.name), files.root.clone())];
    for file in files.kernel.iter().chain(&files.initrd) {
        let name = file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        objects.push((format!("efi-images/{prefix}{name}"), file.clone()));
    }
    objects
}

/// What publishing to a Kiln image does, decided from its latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KilnPublication {
    /// The latest version already holds this content: nothing is uploaded.
    Unchanged {
        version: i64,
    },
    NewVersion,
}

/// A new version unless the latest holds the same first artifact (the one that names the
/// content: the root, or the disk when there is no root).
pub fn decide_kiln_publication(latest: Option<&ImageVersion>, first_kind: ArtifactKind, first_sha256: &str) -> KilnPublication {
    match latest {
        Some(latest) if latest.artifact(first_kind).is_some_and(|artifact| artifact.sha256 == first_sha256) => {
            KilnPublication::Unchanged { version: latest.version }
        }
        _ => KilnPublication::NewVersion,
    }
}

/// The artifacts a Kiln version gets from a build, the one naming the content first and the
/// build's log last, so what made a version can be read where it is used.
pub fn kiln_artifacts(result: &BuildResult) -> Vec<(ArtifactKind, PathBuf)> {
    let mut artifacts = Vec::new();
    if let Some(files) = &result.squashfs {
        artifacts.push((ArtifactKind::Root, files.root.clone()));
        artifacts.extend(files.kernel.clone().map(|kernel| (ArtifactKind::Kernel, kernel)));
        artifacts.extend(files.initrd.clone().map(|initrd| (ArtifactKind::Initrd, initrd)));
    }
    if let Some(disk) = &result.disk {
        artifacts.push((ArtifactKind::Disk, disk.clone()));
    }
    artifacts.push((ArtifactKind::Log, result.log.clone()));
    artifacts
}

/// Publishes `result`'s outputs everywhere `definition` asks, recording where in `result`.
pub(crate) async fn publish(
    catalog: &impl ImageCatalog,
    definition: &ImageDefinition,
    s3: Option<&kiln_image_store::S3Settings>,
    outputs_dir: &Path,
    result: &mut BuildResult,
    terminal: &mut (dyn Write + Send),
) -> Result<(), DriverError> {
    if let (Some(registry), Some((digest, size))) = (&definition.publish.registry, &result.layer_tar) {
        let tags = if definition.tags.is_empty() { vec!["latest".to_owned()] } else { definition.tags.clone() };
        for tag in tags {
            let reference = format!("{registry}/{}:{tag}", definition.name);
            let parsed =
                ImageReference::parse(&reference).map_err(|error| DriverError::Reference { reference: reference.clone(), error })?;
            let layer = outputs_dir.join("layer.tar");
            let manifest = registry::push(&parsed, &definition.publish.push_options, &layer, digest, *size)
                .await
                .map_err(|error| DriverError::Push { reference: reference.clone(), error: Box::new(error) })?;
            let _ = writeln!(terminal, "kiln: pushed {parsed} ({manifest})");
            result.pushed.push((parsed.to_string(), manifest));
        }
    }
    if let (Some(settings), Some(files)) = (s3, &result.squashfs) {
        for (key, path) in s3_objects(definition, files) {
            kiln_image_store::put_file_in_bucket(settings, &key, &path).await.map_err(|error| DriverError::PublishS3 {
                path: path.clone(),
                bucket: settings.bucket.clone(),
                key: key.clone(),
                error: Box::new(error),
            })?;
            let url = format!("{}/{}/{key}", settings.endpoint, settings.bucket);
            let _ = writeln!(terminal, "kiln: published {url}");
            result.s3.push(url);
        }
    }
    if let Some(image) = &definition.publish.kiln_image {
        let artifacts = kiln_artifacts(result);
        result.published = Some(publish_to_kiln(catalog, image, &artifacts, &result.layer, terminal).await?);
    }
    Ok(())
}

/// Adds `artifacts` as a new version of `image` (created if absent) unless its latest
/// version already holds the same first artifact; returns `IMAGE:VERSION`.
async fn publish_to_kiln(
    catalog: &impl ImageCatalog,
    image: &str,
    artifacts: &[(ArtifactKind, PathBuf)],
    layer: &str,
    terminal: &mut (dyn Write + Send),
) -> Result<String, DriverError> {
    let Some((first_kind, first_path)) = artifacts.first().filter(|(kind, _)| *kind != ArtifactKind::Log) else {
        return Err(DriverError::NothingToPublish);
    };
    let input = ImageInput {
        name: image.to_owned(),
        project: None,
        visibility: Visibility::Private,
        shared_with: Vec::new(),
        description: "built by kiln image build".to_owned(),
        os: None,
        arch: Some(std::env::consts::ARCH.to_owned()),
    };
    let created =
        catalog.create_image_if_missing(&input).await.map_err(|error| DriverError::CreateImage { image: image.to_owned(), error })?;
    let latest = if created {
        None
    } else {
        catalog.find_version(image, "latest").await.map_err(|error| DriverError::FindLatest { image: image.to_owned(), error })?
    };
    let (first_sha256, _) = kiln_image_build::layers::file_digest(first_path).map_err(|error| DriverError::ReadOutput {
        kind: *first_kind,
        path: first_path.clone(),
        error: Box::new(error),
    })?;
    match decide_kiln_publication(latest.as_ref(), *first_kind, first_sha256.trim_start_matches("sha256:")) {
        KilnPublication::Unchanged { version } => {
            let _ = writeln!(terminal, "kiln: {image}:{version} already holds this {first_kind}; nothing published");
            Ok(format!("{image}:{version} (unchanged)"))
        }
        KilnPublication::NewVersion => {
            let note = format!("kiln image build: layer {layer}");
            let version = catalog
                .add_version(image, artifacts, &note)
                .await
                .map_err(|error| DriverError::AddVersion { image: image.to_owned(), error })?;
            Ok(format!("{image}:{}", version.version))
        }
    }
}
