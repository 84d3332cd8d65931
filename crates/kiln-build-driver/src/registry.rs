//! Pushing a built layer to an OCI registry and pulling a parent from one (the distribution
//! API: blobs by digest, manifests by tag), anonymously, with every blob checked against its
//! digest before it is used.

use std::path::{Path, PathBuf};

use kiln_image_build::oci::{self, ImageReference, Manifest};
use reqwest::StatusCode;
use sha2::Digest as _;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A registry operation that failed, with the URL it was sent to.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{operation}: could not reach the registry at {url}")]
    Unreachable {
        operation: &'static str,
        url: String,
        #[source]
        error: reqwest::Error,
    },
    #[error("{operation}: the registry at {url} asks to log in; Kiln talks to registries anonymously")]
    LoginRequired { operation: &'static str, url: String },
    #[error("{operation}: {url} answered {status}: {body}")]
    Refused { operation: &'static str, url: String, status: StatusCode, body: String },
    #[error("starting a blob upload: {url} answered without a usable Location")]
    NoUploadLocation { url: String },
    #[error("{reference} is not in the registry (build and push it first)")]
    NotFound { reference: String },
    #[error("{reference}: not an image manifest (an index?)")]
    NotAManifest {
        reference: String,
        #[source]
        error: serde_json::Error,
    },
    #[error("{reference}: layer digest '{digest}' is not sha256")]
    UnsupportedDigest { reference: String, digest: String },
    #[error("{reference}: layer {digest} arrived with digest sha256:{got}; discarded")]
    LayerDigestMismatch { reference: String, digest: String, got: String },
    #[error("{operation} {}", path.display())]
    File {
        operation: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

fn unreachable(operation: &'static str, url: &str) -> impl FnOnce(reqwest::Error) -> RegistryError + use<> {
    let url = url.to_owned();
    move |error| RegistryError::Unreachable { operation, url, error }
}

fn file(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + use<> {
    let path = path.to_owned();
    move |error| RegistryError::File { operation, path, error }
}

/// The error for an answer that is not the one asked for.
async fn refused(operation: &'static str, url: &str, response: reqwest::Response) -> RegistryError {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return RegistryError::LoginRequired { operation, url: url.to_owned() };
    }
    let body = response.text().await.unwrap_or_default().trim().to_owned();
    RegistryError::Refused { operation, url: url.to_owned(), status, body }
}

/// Pushes the tar layer `layer` (its digest and size known) as a one-layer image under
/// `reference`; returns the manifest's digest.
pub async fn push(reference: &ImageReference, options: &[String], layer: &Path, digest: &str, size: u64) -> Result<String, RegistryError> {
    let http = reqwest::Client::new();
    let base = reference.base_url(options);
    let (config, manifest) = oci::one_layer_image(digest, size, std::env::consts::ARCH.replace("x86_64", "amd64").as_str());
    let layer_file = tokio::fs::File::open(layer).await.map_err(file("opening", layer))?;
    push_blob(&http, &base, digest, reqwest::Body::from(layer_file), size).await?;
    let config_digest = oci::digest_of(&config);
    push_blob(&http, &base, &config_digest, reqwest::Body::from(config.clone()), config.len() as u64).await?;
    let url = format!("{base}/manifests/{}", reference.reference);
    let response = http
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, oci::MANIFEST_MEDIA_TYPE)
        .body(manifest.clone())
        .send()
        .await
        .map_err(unreachable("pushing the manifest", &url))?;
    if !response.status().is_success() {
        return Err(refused("pushing the manifest", &url, response).await);
    }
    Ok(oci::digest_of(&manifest))
}

async fn push_blob(http: &reqwest::Client, base: &str, digest: &str, body: reqwest::Body, size: u64) -> Result<(), RegistryError> {
    let url = format!("{base}/blobs/{digest}");
    let head = http.head(&url).send().await.map_err(unreachable("looking for a blob", &url))?;
    if head.status() == StatusCode::OK {
        return Ok(());
    }
    let start = format!("{base}/blobs/uploads/");
    let response = http.post(&start).send().await.map_err(unreachable("starting a blob upload", &start))?;
    if response.status() != StatusCode::ACCEPTED {
        return Err(refused("starting a blob upload", &start, response).await);
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|location| response.url().join(location).ok())
        .ok_or_else(|| RegistryError::NoUploadLocation { url: start.clone() })?;
    let separator = if location.query().is_some() { '&' } else { '?' };
    let put = format!("{location}{separator}digest={digest}");
    let response = http
        .put(&put)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .map_err(unreachable("uploading a blob", &put))?;
    if response.status() != StatusCode::CREATED {
        return Err(refused("uploading a blob", &put, response).await);
    }
    Ok(())
}

/// Reads `reference`'s manifest; its digest names the image's content.
pub async fn resolve(reference: &ImageReference, options: &[String]) -> Result<(String, Manifest), RegistryError> {
    let http = reqwest::Client::new();
    let url = format!("{}/manifests/{}", reference.base_url(options), reference.reference);
    let operation = "reading the manifest";
    let response = http.get(&url).header(reqwest::header::ACCEPT, ACCEPT_MANIFESTS).send().await.map_err(unreachable(operation, &url))?;
    if response.status() == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound { reference: reference.to_string() });
    }
    if !response.status().is_success() {
        return Err(refused(operation, &url, response).await);
    }
    let bytes = response.bytes().await.map_err(unreachable(operation, &url))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|error| RegistryError::NotAManifest { reference: reference.to_string(), error })?;
    Ok((oci::digest_of(&bytes), manifest))
}

/// Fetches the layers of `manifest` into `blobs/` (kept: a layer shared by images is
/// downloaded once), each checked against its digest.
pub async fn pull_layers(
    reference: &ImageReference,
    options: &[String],
    manifest: &Manifest,
    blobs: &Path,
) -> Result<Vec<PathBuf>, RegistryError> {
    let http = reqwest::Client::new();
    std::fs::create_dir_all(blobs).map_err(file("creating", blobs))?;
    let mut files = Vec::new();
    for layer in &manifest.layers {
        let Some(hex) = layer.digest.strip_prefix("sha256:").filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            return Err(RegistryError::UnsupportedDigest { reference: reference.to_string(), digest: layer.digest.clone() });
        };
        let blob = blobs.join(hex);
        if !blob.exists() {
            let url = format!("{}/blobs/{}", reference.base_url(options), layer.digest);
            fetch_blob(&http, reference, &url, &layer.digest, &blob).await?;
        }
        files.push(blob);
    }
    Ok(files)
}

/// Downloads one blob to `<blob>.partial`, checks it, and renames it to `blob`.
async fn fetch_blob(http: &reqwest::Client, reference: &ImageReference, url: &str, digest: &str, blob: &Path) -> Result<(), RegistryError> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let operation = "fetching a layer";
    let response = http.get(url).send().await.map_err(unreachable(operation, url))?;
    if !response.status().is_success() {
        return Err(refused(operation, url, response).await);
    }
    let partial = blob.with_extension("partial");
    let mut out = tokio::fs::File::create(&partial).await.map_err(file("creating", &partial))?;
    let mut hasher = sha2::Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreachable(operation, url))?;
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(file("writing", &partial))?;
    }
    out.flush().await.map_err(file("writing", &partial))?;
    let got = hex::encode(hasher.finalize());
    if Some(got.as_str()) != digest.strip_prefix("sha256:") {
        let _ = std::fs::remove_file(&partial);
        return Err(RegistryError::LayerDigestMismatch { reference: reference.to_string(), digest: digest.to_owned(), got });
    }
    std::fs::rename(&partial, blob).map_err(file("renaming", &partial))
}
