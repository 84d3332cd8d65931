//! What a build can fail at, one variant per operation, each keeping its cause.

use std::path::PathBuf;

use kiln_image_build::execute::BuildError;
use kiln_image_build::oci::ReferenceError;
use kiln_types::image::ArtifactKind;

use crate::catalog::CatalogError;
use crate::registry::RegistryError;

/// The larger causes (the layer's build, S3, a registry) are boxed: they are large, and rare.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("reading {}", path.display())]
    ReadDefinition {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}", path.display())]
    ParseDefinition {
        path: PathBuf,
        #[source]
        error: kiln_image_build::definition::DefinitionError,
    },
    #[error("publish_s3: set S3_ACCESS and S3_SECRET to the bucket's access key and secret")]
    NoS3Credentials,
    #[error("copyfiles: reading {source_file} (relative to {})", directory.display())]
    ReadCopiedFile {
        source_file: String,
        directory: PathBuf,
        #[source]
        error: Box<BuildError>,
    },
    #[error("building needs root (chroot and bind mounts); `--plan` shows the plan without it")]
    NotRoot,
    #[error("elements: {names} named, but no ELEMENTS_PATH: pass --elements-path DIR[:DIR…]")]
    NoElementsPath { names: String },
    #[error("{operation}")]
    Elements {
        operation: &'static str,
        #[source]
        error: kiln_image_build::ElementError,
    },
    #[error("--offline: {parent} was never resolved by an online build on this cache")]
    OfflineParentUnknown { parent: String },
    #[error("--offline: {parent} ({digest}) is not unpacked in the cache")]
    OfflineParentNotUnpacked { parent: String, digest: String },
    #[error("--offline: only apt builds keep their downloads; this layer installs packages with {package_manager}")]
    OfflineNeedsApt { package_manager: &'static str },
    #[error(
        "--offline: what debootstrap installs for {suite} from {url} was never fetched into this cache ({}); build once with the network first",
        tarball.display()
    )]
    OfflineNoBootstrap { suite: String, url: String, tarball: PathBuf },
    #[error("finding the parent {parent}")]
    FindParent {
        parent: String,
        #[source]
        error: CatalogError,
    },
    #[error("the parent {parent} is not in Kiln (no such image or version)")]
    ParentNotFound { parent: String },
    #[error("the parent {parent} has no root artifact")]
    ParentWithoutRoot { parent: String },
    #[error("downloading the parent {parent}")]
    DownloadParent {
        parent: String,
        #[source]
        error: CatalogError,
    },
    #[error("the parent {parent} arrived with sha256:{got}, not sha256:{expected}")]
    ParentDigestMismatch { parent: String, got: String, expected: String },
    #[error("unpacking the parent {parent}")]
    UnpackParent {
        parent: String,
        #[source]
        error: Box<BuildError>,
    },
    #[error("{reference}")]
    Reference {
        reference: String,
        #[source]
        error: ReferenceError,
    },
    #[error("the parent {reference}")]
    PullParent {
        reference: String,
        #[source]
        error: Box<RegistryError>,
    },
    #[error("{operation} {}", path.display())]
    Cache {
        operation: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("building {name} (log: {})", log.display())]
    Build {
        name: String,
        log: PathBuf,
        #[source]
        error: Box<BuildError>,
    },
    #[error("pushing {reference}")]
    Push {
        reference: String,
        #[source]
        error: Box<RegistryError>,
    },
    #[error("publishing {} to s3://{bucket}/{key}", path.display())]
    PublishS3 {
        path: PathBuf,
        bucket: String,
        key: String,
        #[source]
        error: Box<kiln_image_store::BlobError>,
    },
    #[error("publish_kiln: the build made nothing to publish (outputs: squashfs, disk-raw or disk-qcow2)")]
    NothingToPublish,
    #[error("reading the {kind} to publish, {}", path.display())]
    ReadOutput {
        kind: ArtifactKind,
        path: PathBuf,
        #[source]
        error: Box<BuildError>,
    },
    #[error("creating the image {image}")]
    CreateImage {
        image: String,
        #[source]
        error: CatalogError,
    },
    #[error("finding the latest version of {image}")]
    FindLatest {
        image: String,
        #[source]
        error: CatalogError,
    },
    #[error("publishing to {image}")]
    AddVersion {
        image: String,
        #[source]
        error: CatalogError,
    },
}

/// A closure for `map_err` that names what was done to which cache path.
pub(crate) fn cache(operation: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DriverError + use<> {
    let path = path.to_owned();
    move |error| DriverError::Cache { operation, path, error }
}
