//! The parent a definition names, resolved to a content digest and unpacked once into the
//! cache (`parents/<digest>/root`), so that the plan and its layer key are known before
//! anything is built and a parent shared by many builds is fetched once. The digest each
//! name last resolved to is kept (`refs/`), which is all `--offline` has to go on.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_image_build::definition::Parent;
use kiln_image_build::execute::ParentRoot;
use kiln_image_build::oci::ImageReference;
use kiln_types::image::ArtifactKind;

use crate::catalog::ImageCatalog;
use crate::error::{DriverError, cache};
use crate::registry;

/// A resolved parent: its digest (`scratch` for none) and its unpacked root.
#[derive(Debug, Clone)]
pub struct ResolvedParent {
    pub digest: String,
    pub root: Option<ParentRoot>,
}

/// The name a parent is recorded under: `kiln:IMAGE:VERSION`, or the registry reference.
pub fn parent_name(parent: &Parent) -> Option<String> {
    match parent {
        Parent::Scratch => None,
        Parent::Kiln { image, version } => Some(format!("kiln:{image}:{}", version.as_deref().unwrap_or("latest"))),
        Parent::Registry { reference, .. } => Some(reference.clone()),
    }
}

/// Where the last online build recorded the digest `name` resolved to.
fn reference_file(cache_dir: &Path, name: &str) -> PathBuf {
    use sha2::Digest as _;
    cache_dir.join("refs").join(hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16]))
}

fn parent_directory(cache_dir: &Path, digest: &str) -> PathBuf {
    cache_dir.join("parents").join(digest.trim_start_matches("sha256:"))
}

/// Resolves `parent` and makes sure its root is unpacked in `cache_dir`. Offline, only what
/// an earlier online build recorded and unpacked is used. Progress lines go to `terminal`.
pub async fn resolve_parent(
    catalog: &impl ImageCatalog,
    parent: &Parent,
    cache_dir: &Path,
    offline: bool,
    terminal: &mut (dyn Write + Send),
) -> Result<ResolvedParent, DriverError> {
    let Some(name) = parent_name(parent) else {
        return Ok(ResolvedParent { digest: "scratch".to_owned(), root: None });
    };
    let record = reference_file(cache_dir, &name);
    let digest = if offline {
        let digest =
            std::fs::read_to_string(&record).map_err(|_| DriverError::OfflineParentUnknown { parent: name.clone() })?.trim().to_owned();
        if !parent_directory(cache_dir, &digest).join("root").is_dir() {
            return Err(DriverError::OfflineParentNotUnpacked { parent: name, digest });
        }
        digest
    } else {
        let digest = match parent {
            Parent::Scratch => unreachable!("scratch has no name"),
            Parent::Kiln { image, version } => {
                fetch_kiln_parent(catalog, &name, image, version.as_deref().unwrap_or("latest"), cache_dir, terminal).await?
            }
            Parent::Registry { reference, pull_options } => fetch_registry_parent(reference, pull_options, cache_dir, terminal).await?,
        };
        let refs = record.parent().expect("refs/ has a parent");
        std::fs::create_dir_all(refs).map_err(cache("creating", refs))?;
        std::fs::write(&record, &digest).map_err(cache("writing", &record))?;
        digest
    };
    let root = parent_directory(cache_dir, &digest).join("root");
    Ok(ResolvedParent { digest, root: Some(ParentRoot { root }) })
}

/// A Kiln image version's root artifact (a SquashFS), downloaded, checked and unpacked
/// unless its digest is unpacked already; returns `sha256:<digest>`.
async fn fetch_kiln_parent(
    catalog: &impl ImageCatalog,
    name: &str,
    image: &str,
    wanted: &str,
    cache_dir: &Path,
    terminal: &mut (dyn Write + Send),
) -> Result<String, DriverError> {
    let found = catalog
        .find_version(image, wanted)
        .await
        .map_err(|error| DriverError::FindParent { parent: name.to_owned(), error })?
        .ok_or_else(|| DriverError::ParentNotFound { parent: name.to_owned() })?;
    let root = found.artifact(ArtifactKind::Root).ok_or_else(|| DriverError::ParentWithoutRoot { parent: name.to_owned() })?;
    let directory = parent_directory(cache_dir, &root.sha256);
    if !directory.join("root").is_dir() {
        let mebibytes = root.size as f64 / f64::from(1 << 20);
        let _ = writeln!(terminal, "kiln: fetching the parent {image}:{} ({mebibytes:.1} MiB)", found.version);
        std::fs::create_dir_all(&directory).map_err(cache("creating", &directory))?;
        let squashfs = directory.join("root.squashfs.partial");
        catalog
            .download_artifact(image, found.version, ArtifactKind::Root, &squashfs)
            .await
            .map_err(|error| DriverError::DownloadParent { parent: name.to_owned(), error })?;
        let unpacked = unpack_checked_squashfs(name, &squashfs, &root.sha256, &directory.join("root")).await;
        let _ = std::fs::remove_file(&squashfs);
        unpacked?;
    }
    Ok(format!("sha256:{}", root.sha256))
}

/// Unpacks the downloaded SquashFS `squashfs` into `target` if it has the digest `expected`.
async fn unpack_checked_squashfs(name: &str, squashfs: &Path, expected: &str, target: &Path) -> Result<(), DriverError> {
    let (got, _) = kiln_image_build::layers::file_digest(squashfs)
        .map_err(|error| DriverError::UnpackParent { parent: name.to_owned(), error: Box::new(error) })?;
    let got = got.trim_start_matches("sha256:").to_owned();
    if got != expected {
        return Err(DriverError::ParentDigestMismatch { parent: name.to_owned(), got, expected: expected.to_owned() });
    }
    let (squashfs, target) = (squashfs.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || kiln_image_build::layers::unpack_squashfs(&squashfs, &target))
        .await
        .expect("unpacking does not panic")
        .map_err(|error| DriverError::UnpackParent { parent: name.to_owned(), error: Box::new(error) })
}

/// A registry image's layers, pulled and unpacked unless its manifest's digest is unpacked
/// already; returns the manifest's digest.
async fn fetch_registry_parent(
    reference: &str,
    pull_options: &[String],
    cache_dir: &Path,
    terminal: &mut (dyn Write + Send),
) -> Result<String, DriverError> {
    let parsed = ImageReference::parse(reference).map_err(|error| DriverError::Reference { reference: reference.to_owned(), error })?;
    let pull = |error| DriverError::PullParent { reference: reference.to_owned(), error: Box::new(error) };
    let (digest, manifest) = registry::resolve(&parsed, pull_options).await.map_err(pull)?;
    let directory = parent_directory(cache_dir, &digest);
    if !directory.join("root").is_dir() {
        let _ = writeln!(terminal, "kiln: pulling the parent {reference} ({digest})");
        let layers = registry::pull_layers(&parsed, pull_options, &manifest, &cache_dir.join("blobs")).await.map_err(pull)?;
        std::fs::create_dir_all(&directory).map_err(cache("creating", &directory))?;
        let target = directory.join("root");
        tokio::task::spawn_blocking(move || kiln_image_build::layers::unpack_layers(&layers, &target))
            .await
            .expect("unpacking does not panic")
            .map_err(|error| DriverError::UnpackParent { parent: reference.to_owned(), error: Box::new(error) })?;
    }
    Ok(digest)
}
