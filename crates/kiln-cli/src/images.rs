//! `kiln image …`: images and their versions, uploads and downloads with progress bars,
//! imports, clones, tags, and store maintenance.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use kiln_client::{Client, encode};
use kiln_types::image::{
    ArtifactInput, ArtifactKind, CloneInput, GcReport, Image, ImageFormat, ImageInput, ImageVersion, ImportInput, ImportResult, TagInput,
    VerifyReport, VersionInput, Visibility,
};

use crate::output::{OutputFormat, Tabular, or_dash, print, print_one, print_rows, table};
use crate::transfer::{human_bytes, progress_bar, upload_one};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// List the images you can see.
    List,
    /// Show an image.
    Show { name: String },
    /// Create an empty image; add versions with `upload` or `import`.
    Create(CreateArgs),
    /// Delete an image (NAME) or one version of it (NAME:VERSION).
    Delete { target: String },
    /// Upload files as a new version: KIND=FILE for each artifact (root, disk, kernel, initrd),
    /// or one FILE with --kind.
    Upload(UploadArgs),
    /// Download an artifact of a version (NAME[:VERSION]).
    Download(DownloadArgs),
    /// Import an artifact from a URL into a new version; a checksum is required.
    Import(ImportArgs),
    /// Make a new image from SRC[:VERSION], sharing its blobs.
    Clone(CloneArgs),
    /// Point TAG at NAME:VERSION.
    Tag { target: String, tag: String },
    /// Remove TAG from NAME.
    Untag { name: String, tag: String },
    /// Make a new version of NAME[:VERSION] with the kernel and initramfs found in its
    /// SquashFS root image (as diskimage-builder's disk-image-get-kernel).
    GetKernel { target: String },
    /// List an image's versions.
    Versions { name: String },
    /// Remove blobs no version uses and abandoned uploads (administrators).
    Gc,
    /// Re-hash every blob and report corruption (administrators); fails if any is bad.
    Verify,
    /// Build an image from a definition (OpenCHAMI image-builder YAML) on this machine
    /// (root), reusing cached layers, and publish it to Kiln and/or an OCI registry.
    Build(crate::image_build::BuildArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    name: String,
    #[command(flatten)]
    fields: ImageFields,
}

/// What an image is created with: by `image create`, and by `upload` and `import` when the
/// image does not exist yet.
#[derive(Debug, clap::Args)]
pub(crate) struct ImageFields {
    /// The owning project (needed by members of several projects).
    #[arg(long)]
    project: Option<String>,
    #[arg(long, value_parser = parse_visibility, default_value = "private")]
    visibility: Visibility,
    /// A project to share with (visibility shared); repeat for more.
    #[arg(long = "share")]
    shared_with: Vec<String>,
    #[arg(long, default_value = "")]
    description: String,
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    arch: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UploadArgs {
    /// The image; created (with the flags `image create` takes) if it does not exist.
    name: String,
    #[command(flatten)]
    fields: ImageFields,
    /// KIND=FILE pairs, or one FILE (see --kind).
    #[arg(required = true)]
    files: Vec<String>,
    /// The kind of a lone FILE.
    #[arg(long, value_parser = parse_kind, default_value = "disk")]
    kind: ArtifactKind,
    /// The format of a lone FILE (as Glance's --disk-format); refused if the bytes differ.
    #[arg(long = "disk-format", value_parser = parse_format)]
    disk_format: Option<ImageFormat>,
    /// ALGORITHM:HEX the (lone) file must match, checked by the server.
    #[arg(long)]
    checksum: Option<String>,
    /// Carry the other artifacts over from this version (number or tag).
    #[arg(long)]
    base: Option<String>,
    /// The version number to create (refused if it exists) [default: the next one].
    #[arg(long = "number")]
    number: Option<i64>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DownloadArgs {
    /// NAME or NAME:VERSION (a number or a tag).
    target: String,
    /// Which artifact [default: the version's only one, else disk, else root].
    #[arg(long, value_parser = parse_kind)]
    artifact: Option<ArtifactKind>,
    /// Where to write [default: NAME-VERSION.KIND in the current directory]; - for stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The image; created (with the flags `image create` takes) if it does not exist.
    name: String,
    #[command(flatten)]
    fields: ImageFields,
    #[arg(long)]
    url: String,
    /// ALGORITHM:HEX (sha256, sha512, md5, …).
    #[arg(long, required_unless_present = "checksum_url")]
    checksum: Option<String>,
    /// A checksum file that lists the URL's file (as sha256sum writes).
    #[arg(long)]
    checksum_url: Option<String>,
    #[arg(long, value_parser = parse_kind, default_value = "disk")]
    kind: ArtifactKind,
    /// The format the bytes must have (raw, qcow2, squashfs, iso, kernel, initramfs).
    #[arg(long = "disk-format", value_parser = parse_format)]
    disk_format: Option<ImageFormat>,
    #[arg(long)]
    base: Option<String>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CloneArgs {
    /// SRC or SRC:VERSION.
    source: String,
    new_name: String,
    #[arg(long)]
    project: Option<String>,
    #[arg(long, value_parser = parse_visibility, default_value = "private")]
    visibility: Visibility,
}

fn parse_visibility(text: &str) -> Result<Visibility, String> {
    Visibility::parse(text).ok_or_else(|| format!("'{text}' is not private, public or shared"))
}

fn parse_kind(text: &str) -> Result<ArtifactKind, String> {
    ArtifactKind::parse(text).ok_or_else(|| format!("'{text}' is not root, disk, kernel or initrd"))
}

fn parse_format(text: &str) -> Result<ImageFormat, String> {
    ImageFormat::parse(text).ok_or_else(|| format!("'{text}' is not raw, qcow2, squashfs, iso, kernel or initramfs"))
}

/// NAME or NAME:VERSION.
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (target, None),
    }
}

impl Tabular for Image {
    fn headers() -> &'static [&'static str] {
        &["name", "project", "visibility", "latest", "tags", "os", "arch", "description"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            or_dash(&self.project),
            self.visibility.as_str().to_owned(),
            or_dash(&self.latest_version),
            self.tags
                .iter()
                .filter(|(tag, _)| *tag != "latest")
                .map(|(tag, version)| format!("{tag}={version}"))
                .collect::<Vec<_>>()
                .join(","),
            or_dash(&self.os),
            or_dash(&self.arch),
            self.description.clone(),
        ]
    }
}

fn versions_table(versions: &[ImageVersion]) -> String {
    let mut rows = Vec::new();
    for version in versions {
        for artifact in &version.artifacts {
            let format = match artifact.compression {
                Some(compression) => format!("{}+{}", artifact.format, compression.as_str()),
                None => artifact.format.to_string(),
            };
            rows.push(vec![
                version.version.to_string(),
                version.tags.join(","),
                artifact.kind.to_string(),
                format,
                human_bytes(artifact.size),
                artifact.virtual_size.map(human_bytes).unwrap_or_else(|| "-".to_owned()),
                artifact.sha256[..16].to_owned(),
            ]);
        }
    }
    table(&["version", "tags", "artifact", "format", "size", "virtual", "sha256"], rows)
}

async fn upload(client: &Client, format: OutputFormat, args: UploadArgs) -> anyhow::Result<()> {
    let mut files: Vec<(ArtifactKind, PathBuf)> = Vec::new();
    for item in &args.files {
        match item.split_once('=').and_then(|(kind, file)| Some((ArtifactKind::parse(kind)?, file))) {
            Some((kind, file)) => files.push((kind, PathBuf::from(file))),
            None if args.files.len() == 1 => files.push((args.kind, PathBuf::from(item))),
            None => bail!("'{item}': with several files, name each one's kind: root=FILE, disk=FILE, kernel=FILE, initrd=FILE"),
        }
    }
    if files.len() > 1 && (args.disk_format.is_some() || args.checksum.is_some()) {
        bail!("--disk-format and --checksum apply to a lone file; upload several files without them");
    }
    let created = ensure_image(client, &args.name, &args.fields).await?;
    let name = args.name.clone();
    let outcome = upload_version(client, &files, args).await;
    let version = keep_if_done(client, &name, created, outcome).await?;
    print(format, &version, || versions_table(std::slice::from_ref(&version)))
}

/// Uploads `files` and makes them a version of the image `args` names.
async fn upload_version(client: &Client, files: &[(ArtifactKind, PathBuf)], args: UploadArgs) -> anyhow::Result<ImageVersion> {
    let mut artifacts = Vec::new();
    for (kind, path) in files {
        artifacts.push(ArtifactInput {
            kind: *kind,
            upload: upload_one(client, &args.name, path, *kind, args.checksum.as_deref()).await?,
            format: args.disk_format,
        });
    }
    let input = VersionInput { version: args.number, base: args.base, artifacts, tags: args.tags, note: args.note };
    Ok(client.post(&format!("/v1/images/{}/versions", encode(&args.name)), &input).await?)
}

async fn download(client: &Client, args: DownloadArgs) -> anyhow::Result<()> {
    let (name, version) = split_target(&args.target);
    let version: ImageVersion =
        client.get(&format!("/v1/images/{}/versions/{}", encode(name), encode(version.unwrap_or("latest")))).await?;
    let artifact = match args.artifact {
        Some(kind) => version.artifact(kind).with_context(|| format!("{name}:{} has no {kind} artifact", version.version))?,
        None => match version.artifacts.as_slice() {
            [only] => only,
            _ => version
                .artifact(ArtifactKind::Disk)
                .or(version.artifact(ArtifactKind::Root))
                .with_context(|| format!("{name}:{} has several artifacts; choose one with --artifact", version.version))?,
        },
    };
    let path = format!("/v1/images/{}/versions/{}/{}", encode(name), version.version, artifact.kind);
    let output = args.output.unwrap_or_else(|| PathBuf::from(format!("{name}-{}.{}", version.version, artifact.kind)));
    if output == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        client.download_to(&path, 0, &mut stdout, &|_, _| {}).await?;
        return Ok(());
    }
    // Into NAME.part first: a broken download resumes from there, and the file only appears
    // under its name when complete and verified.
    let partial = PathBuf::from(format!("{}.part", output.display()));
    let from = std::fs::metadata(&partial).map(|metadata| metadata.len()).unwrap_or(0).min(artifact.size);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .with_context(|| format!("opening {}", partial.display()))?;
    let bar = progress_bar(artifact.size, &format!("{name}:{} {}", version.version, artifact.kind));
    if from < artifact.size {
        client.download_to(&path, from, &mut file, &|written, _| bar.set_position(written)).await?;
    }
    bar.finish();
    drop(file);
    let digest = sha256_of(&partial).await?;
    if digest != artifact.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!("the download does not match its checksum (expected sha256:{}, got sha256:{digest}); removed it", artifact.sha256);
    }
    std::fs::rename(&partial, &output).with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    eprintln!("{} ({}, sha256:{})", output.display(), human_bytes(artifact.size), artifact.sha256);
    Ok(())
}

async fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        use std::io::Read as _;
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .expect("hashing does not panic")
}

pub(crate) async fn image(client: &Client, format: OutputFormat, command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::List => {
            let images: Vec<Image> = client.get("/v1/images").await?;
            print_rows(format, &images)
        }
        ImageCommand::Show { name } => {
            let image: Image = client.get(&format!("/v1/images/{}", encode(&name))).await?;
            print_one(format, &image)
        }
        ImageCommand::Create(args) => {
            let image: Image = client.post("/v1/images", &args.fields.input(args.name)).await?;
            print_one(format, &image)
        }
        ImageCommand::Delete { target } => {
            let path = match split_target(&target) {
                (name, None) => format!("/v1/images/{}", encode(name)),
                (name, Some(version)) => format!("/v1/images/{}/versions/{}", encode(name), encode(version)),
            };
            client.delete::<serde_json::Value>(&path).await?;
            Ok(())
        }
        ImageCommand::Upload(args) => upload(client, format, args).await,
        ImageCommand::Build(args) => crate::image_build::build(client, format, args).await,
        ImageCommand::Download(args) => download(client, args).await,
        ImageCommand::Import(args) => import(client, format, args).await,
        ImageCommand::Clone(args) => {
            let (source, version) = split_target(&args.source);
            let input = CloneInput {
                name: args.new_name,
                version: version.map(str::to_owned),
                project: args.project,
                visibility: args.visibility,
                description: None,
            };
            let image: Image = client.post(&format!("/v1/images/{}/clone", encode(source)), &input).await?;
            print_one(format, &image)
        }
        ImageCommand::Tag { target, tag } => {
            let (name, Some(version)) = split_target(&target) else { bail!("'{target}': name the version to tag as NAME:VERSION") };
            let image: Image = client
                .put(&format!("/v1/images/{}/tags/{}", encode(name), encode(&tag)), &TagInput { version: version.to_owned() })
                .await?;
            print_one(format, &image)
        }
        ImageCommand::Untag { name, tag } => {
            let image: Image = client.delete(&format!("/v1/images/{}/tags/{}", encode(&name), encode(&tag))).await?;
            print_one(format, &image)
        }
        ImageCommand::GetKernel { target } => {
            let (name, version) = split_target(&target);
            let path = format!("/v1/images/{}/versions/{}/get-kernel", encode(name), encode(version.unwrap_or("latest")));
            let version: ImageVersion = client.post(&path, &serde_json::json!({})).await?;
            print(format, &version, || versions_table(std::slice::from_ref(&version)))
        }
        ImageCommand::Versions { name } => {
            let versions: Vec<ImageVersion> = client.get(&format!("/v1/images/{}/versions", encode(&name))).await?;
            print(format, &versions, || versions_table(&versions))
        }
        ImageCommand::Gc => collect_garbage(client, format).await,
        ImageCommand::Verify => verify(client, format).await,
    }
}

impl ImageFields {
    fn input(&self, name: String) -> ImageInput {
        ImageInput {
            name,
            project: self.project.clone(),
            visibility: self.visibility,
            shared_with: self.shared_with.clone(),
            description: self.description.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
        }
    }
}

/// Creates `name` with `fields` unless it exists, so that `upload` and `import` work on a
/// new image as they are written in the README; returns whether it did.
async fn ensure_image(client: &Client, name: &str, fields: &ImageFields) -> anyhow::Result<bool> {
    match client.get::<Image>(&format!("/v1/images/{}", encode(name))).await {
        Ok(_) => Ok(false),
        Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
            match client.post::<_, Image>("/v1/images", &creation_input(name, fields)?).await {
                Ok(_) => Ok(true),
                // Another client created it meanwhile: use it.
                Err(error) if error.status() == Some(reqwest::StatusCode::CONFLICT) => Ok(false),
                Err(error) => Err(error).with_context(|| format!("creating image '{name}'")),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// What creates the image `reference` names: `PROJECT/NAME` makes NAME in PROJECT, which
/// `--project`, if given too, must agree with.
fn creation_input(reference: &str, fields: &ImageFields) -> anyhow::Result<ImageInput> {
    let Some((project, name)) = reference.split_once('/') else { return Ok(fields.input(reference.to_owned())) };
    let mut input = fields.input(name.to_owned());
    match &input.project {
        Some(given) if given != project => bail!("image '{reference}' is in project '{project}', but --project says '{given}'"),
        _ => input.project = Some(project.to_owned()),
    }
    Ok(input)
}

/// The outcome of adding a version to an image that `ensure_image` may have just created:
/// on failure a new, empty image is removed again, so a refused upload or import leaves
/// nothing behind.
async fn keep_if_done<T>(client: &Client, name: &str, created: bool, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    match (&outcome, created) {
        (Ok(_), true) => eprintln!("created image '{name}'"),
        (Err(_), true) => {
            // Only while it is still empty: a client that found it meanwhile may have added
            // a version, and that is not ours to remove.
            let versions: Result<Vec<ImageVersion>, _> = client.get(&format!("/v1/images/{}/versions", encode(name))).await;
            if versions.is_ok_and(|versions| versions.is_empty())
                && let Err(error) = client.delete::<serde_json::Value>(&format!("/v1/images/{}", encode(name))).await
            {
                eprintln!("warning: removing the new image '{name}' again failed: {error}");
            }
        }
        (_, false) => {}
    }
    outcome
}

/// `kiln image import`: a new version from a URL, the image created first if need be.
async fn import(client: &Client, format: OutputFormat, args: ImportArgs) -> anyhow::Result<()> {
    let created = ensure_image(client, &args.name, &args.fields).await?;
    let name = args.name.clone();
    let outcome = import_version(client, args).await;
    let result = keep_if_done(client, &name, created, outcome).await?;
    if result.unchanged {
        eprintln!("the source has not changed since version {}; nothing was downloaded", result.version.version);
    }
    print(format, &result, || versions_table(std::slice::from_ref(&result.version)))
}

async fn import_version(client: &Client, args: ImportArgs) -> anyhow::Result<ImportResult> {
    let input = ImportInput {
        url: args.url,
        checksum: args.checksum,
        checksum_url: args.checksum_url,
        kind: args.kind,
        format: args.disk_format,
        base: args.base,
        tags: args.tags,
        note: args.note,
    };
    Ok(client.post(&format!("/v1/images/{}/import", encode(&args.name)), &input).await?)
}

async fn collect_garbage(client: &Client, format: OutputFormat) -> anyhow::Result<()> {
    let report: GcReport = client.post("/v1/images/gc", &serde_json::json!({})).await?;
    print(format, &report, || {
        format!(
            "removed {} blobs ({}), {} abandoned uploads\n",
            report.blobs_removed,
            human_bytes(report.bytes_freed),
            report.uploads_removed
        )
    })
}

async fn verify(client: &Client, format: OutputFormat) -> anyhow::Result<()> {
    let report: VerifyReport = client.post("/v1/images/verify", &serde_json::json!({})).await?;
    print(format, &report, || {
        let mut text = format!("checked {} blobs ({})\n", report.blobs_checked, human_bytes(report.bytes_checked));
        for sha in &report.corrupt {
            text.push_str(&format!("CORRUPT {sha}\n"));
        }
        for sha in &report.missing {
            text.push_str(&format!("MISSING {sha}\n"));
        }
        text
    })?;
    if !report.corrupt.is_empty() || !report.missing.is_empty() {
        bail!("{} corrupt and {} missing blobs", report.corrupt.len(), report.missing.len());
    }
    Ok(())
}
