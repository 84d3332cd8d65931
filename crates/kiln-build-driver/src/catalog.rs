//! The four things the driver asks of Kiln's image store, behind a trait: the `kiln` CLI
//! implements it over the REST API, and the unit tests over a map in memory, so the
//! driver's decisions (is the parent cached, is this version already published) are tested
//! without a server or root.

use std::future::Future;
use std::path::{Path, PathBuf};

use kiln_types::image::{ArtifactKind, ImageInput, ImageVersion};

/// What an implementation failed with, kept whole so the driver's error can name it as its
/// source.
pub type CatalogError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Kiln's image store as the build driver sees it.
pub trait ImageCatalog: Sync {
    /// The version `wanted` (a number, a tag or `latest`) of `image`; `None` when the image
    /// or the version does not exist for the caller.
    fn find_version(&self, image: &str, wanted: &str) -> impl Future<Output = Result<Option<ImageVersion>, CatalogError>> + Send;

    /// Writes the `kind` artifact of `image`'s `version` to the file `destination`.
    fn download_artifact(
        &self,
        image: &str,
        version: i64,
        kind: ArtifactKind,
        destination: &Path,
    ) -> impl Future<Output = Result<(), CatalogError>> + Send;

    /// Creates the image `input` names unless it exists; returns whether it did.
    fn create_image_if_missing(&self, input: &ImageInput) -> impl Future<Output = Result<bool, CatalogError>> + Send;

    /// Uploads `artifacts` as a new version of `image`, with `note`.
    fn add_version(
        &self,
        image: &str,
        artifacts: &[(ArtifactKind, PathBuf)],
        note: &str,
    ) -> impl Future<Output = Result<ImageVersion, CatalogError>> + Send;
}
