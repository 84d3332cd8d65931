//! Uploads and downloads of image artifacts with progress bars on the terminal, shared by
//! `kiln image upload` and the build driver's publishing (`kiln image build`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kiln_client::{Client, encode};
use kiln_types::image::{ArtifactInput, ArtifactKind, ImageVersion, VersionInput};

/// `1.5 GiB`: sizes as people read them.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A byte-counting bar on stderr, labelled with what moves.
pub(crate) fn progress_bar(total: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Uploads one file with a progress bar; returns the upload's id.
pub(crate) async fn upload_one(
    client: &Client,
    image: &str,
    path: &Path,
    kind: ArtifactKind,
    checksum: Option<&str>,
) -> anyhow::Result<String> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let bar = progress_bar(size, &format!("{kind} {}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let upload = client
        .upload_file(path, image, checksum, &|offset| bar.set_position(offset))
        .await
        .with_context(|| format!("uploading {}", path.display()))?;
    bar.finish();
    Ok(upload)
}

/// Uploads files as the artifacts of a new version of `image`.
pub(crate) async fn upload_artifacts(
    client: &Client,
    image: &str,
    files: &[(ArtifactKind, PathBuf)],
    note: &str,
) -> anyhow::Result<ImageVersion> {
    let mut artifacts = Vec::new();
    for (kind, path) in files {
        artifacts.push(ArtifactInput { kind: *kind, upload: upload_one(client, image, path, *kind, None).await?, format: None });
    }
    let input = VersionInput { version: None, base: None, artifacts, tags: Vec::new(), note: note.to_owned() };
    Ok(client.post(&format!("/v1/images/{}/versions", encode(image)), &input).await?)
}
