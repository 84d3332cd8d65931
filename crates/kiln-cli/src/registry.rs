//! Pushing a built layer to an OCI registry and pulling a parent from one (the distribution
//! API: blobs by digest, manifests by tag), anonymously, with every blob checked against its
//! digest before it is used.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kiln_image_build::oci::{self, ImageReference, Manifest};
use reqwest::StatusCode;
use sha2::Digest as _;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn refuse(status: StatusCode, what: &str, url: &str, body: &str) -> anyhow::Error {
    if status == StatusCode::UNAUTHORIZED {
        return anyhow::anyhow!("{what}: the registry at {url} asks to log in; Kiln talks to registries anonymously");
    }
    anyhow::anyhow!("{what}: {url} answered {status}: {}", body.trim())
}

/// Pushes the tar layer `layer` (its digest and size known) as a one-layer image under
/// `reference`; returns the manifest's digest.
pub(crate) async fn push(reference: &ImageReference, options: &[String], layer: &Path, digest: &str, size: u64) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let base = reference.base_url(options);
    let (config, manifest) = oci::one_layer_image(digest, size, std::env::consts::ARCH.replace("x86_64", "amd64").as_str());
    push_blob(&http, &base, digest, reqwest::Body::from(tokio::fs::File::open(layer).await?), size).await?;
    let config_digest = oci::digest_of(&config);
    push_blob(&http, &base, &config_digest, reqwest::Body::from(config.clone()), config.len() as u64).await?;
    let url = format!("{base}/manifests/{}", reference.reference);
    let response = http
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, oci::MANIFEST_MEDIA_TYPE)
        .body(manifest.clone())
        .send()
        .await
        .with_context(|| format!("pushing the manifest to {url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(refuse(status, "pushing the manifest", &url, &response.text().await.unwrap_or_default()));
    }
    Ok(oci::digest_of(&manifest))
}

async fn push_blob(http: &reqwest::Client, base: &str, digest: &str, body: reqwest::Body, size: u64) -> anyhow::Result<()> {
    let url = format!("{base}/blobs/{digest}");
    let head = http.head(&url).send().await.with_context(|| format!("reaching the registry at {url}"))?;
    if head.status() == StatusCode::OK {
        return Ok(());
    }
    let start = format!("{base}/blobs/uploads/");
    let response = http.post(&start).send().await.with_context(|| format!("starting an upload at {start}"))?;
    if response.status() != StatusCode::ACCEPTED {
        let status = response.status();
        return Err(refuse(status, "starting a blob upload", &start, &response.text().await.unwrap_or_default()));
    }
    let location = response.headers().get(reqwest::header::LOCATION).and_then(|value| value.to_str().ok()).context("no Location")?;
    let location = response.url().join(location).context("the registry's upload location")?;
    let separator = if location.query().is_some() { '&' } else { '?' };
    let put = format!("{location}{separator}digest={digest}");
    let response = http
        .put(&put)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .with_context(|| format!("uploading blob {digest}"))?;
    if response.status() != StatusCode::CREATED {
        let status = response.status();
        return Err(refuse(status, "uploading a blob", &put, &response.text().await.unwrap_or_default()));
    }
    Ok(())
}

/// Reads `reference`'s manifest; its digest names the image's content.
pub(crate) async fn resolve(reference: &ImageReference, options: &[String]) -> anyhow::Result<(String, Manifest)> {
    let http = reqwest::Client::new();
    let url = format!("{}/manifests/{}", reference.base_url(options), reference.reference);
    let response = http
        .get(&url)
        .header(reqwest::header::ACCEPT, ACCEPT_MANIFESTS)
        .send()
        .await
        .with_context(|| format!("reaching the registry for {reference}"))?;
    if !response.status().is_success() {
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            bail!("{reference} is not in the registry (build and push it first)");
        }
        return Err(refuse(status, "reading the manifest", &url, &response.text().await.unwrap_or_default()));
    }
    let bytes = response.bytes().await.with_context(|| format!("reading the manifest of {reference}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).with_context(|| format!("{reference}: not an image manifest (an index?)"))?;
    Ok((oci::digest_of(&bytes), manifest))
}

/// Fetches the layers of `manifest` into `blobs/` (kept: a layer shared by images is
/// downloaded once), each checked against its digest.
pub(crate) async fn pull_layers(
    reference: &ImageReference,
    options: &[String],
    manifest: &Manifest,
    blobs: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let http = reqwest::Client::new();
    std::fs::create_dir_all(blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let mut files = Vec::new();
    for layer in &manifest.layers {
        let Some(hex) = layer.digest.strip_prefix("sha256:").filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            bail!("{reference}: layer digest '{}' is not sha256", layer.digest);
        };
        let file = blobs.join(hex);
        if file.exists() {
            files.push(file);
            continue;
        }
        let url = format!("{}/blobs/{}", reference.base_url(options), layer.digest);
        let response = http.get(&url).send().await.with_context(|| format!("fetching {url}"))?;
        if !response.status().is_success() {
            let status = response.status();
            return Err(refuse(status, "fetching a layer", &url, &response.text().await.unwrap_or_default()));
        }
        let partial = blobs.join(format!("{hex}.partial"));
        let mut out = tokio::fs::File::create(&partial).await.with_context(|| format!("creating {}", partial.display()))?;
        let mut hasher = sha2::Sha256::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("fetching {url}"))?;
            hasher.update(&chunk);
            out.write_all(&chunk).await.with_context(|| format!("writing {}", partial.display()))?;
        }
        out.flush().await?;
        let got = hex::encode(hasher.finalize());
        if got != hex {
            let _ = std::fs::remove_file(&partial);
            bail!("{reference}: layer {} arrived with digest sha256:{got}; discarded", layer.digest);
        }
        std::fs::rename(&partial, &file).with_context(|| format!("renaming {}", partial.display()))?;
        files.push(file);
    }
    Ok(files)
}
