//! `kiln image build -c image.yaml`: an image definition (OpenCHAMI's image-builder format)
//! built on this machine into a cached layer and its outputs, then published to Kiln's image
//! store and/or an OCI registry. The parent is resolved to a digest first, so the plan, and
//! with it the layer's cache key, is known before anything is built.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kiln_client::{Client, encode};
use kiln_image_build::definition::PackageManager;
use kiln_image_build::definition::{ImageDefinition, Output, Parent, parse_definition};
use kiln_image_build::execute::{BuildSettings, ElementRun, ParentRoot, build_layer, make_squashfs};
use kiln_image_build::oci::ImageReference;
use kiln_image_build::plan::{Downloads, bootstrap_tarball, plan_build};
use kiln_types::image::{ArtifactKind, Image, ImageInput, ImageVersion, Visibility};
use serde::{Deserialize, Serialize};

use crate::output::{OutputFormat, print};
use crate::registry;

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The image definition (OpenCHAMI image-builder YAML).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// Print the plan (with the layer's cache key) and stop.
    #[arg(long)]
    plan: bool,
    /// Layers, parents, outputs and logs [default: /var/cache/kiln/build].
    #[arg(long, default_value = "/var/cache/kiln/build")]
    cache: PathBuf,
    /// Use the network for nothing: the parent, debootstrap's packages, apt's lists and every
    /// package come from the cache that earlier builds filled (apt only).
    #[arg(long)]
    offline: bool,
    /// Show every command's output, not only a line per step.
    #[arg(short, long)]
    verbose: bool,
    /// Where the definition's `elements` are found, `:`-separated.
    #[arg(long, env = "ELEMENTS_PATH")]
    elements_path: Option<String>,
    /// Stop at element hook phases: before-PHASE, after-PHASE, after-error (comma-separated;
    /// diskimage-builder's `break=`). With a terminal, a shell in the root; exit it to go on.
    #[arg(long = "break", env = "break")]
    break_points: Option<String>,
}

/// What a build made, as printed and as kept beside the outputs for the next build of the
/// same layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BuildResult {
    name: String,
    layer: String,
    reused: bool,
    seconds: f64,
    squashfs: Option<SquashfsFiles>,
    /// The whole-disk image (raw, or qcow2 when only that was asked for).
    disk: Option<PathBuf>,
    /// `sha256:…` and size of the layer's tar, for a registry.
    layer_tar: Option<(String, u64)>,
    pushed: Vec<(String, String)>,
    published: Option<String>,
    /// The objects put in S3 (`publish_s3`), as URLs.
    #[serde(default)]
    s3: Vec<String>,
    log: PathBuf,
    /// What the disk image's boot configuration was made with (not part of the layer).
    #[serde(default)]
    kernel_args: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SquashfsFiles {
    root: PathBuf,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
}

/// The build's log: everything into the file, and to the terminal either everything
/// (`--verbose`) or the `kiln:` progress lines.
struct BuildLog {
    file: std::fs::File,
    verbose: bool,
    line: Vec<u8>,
}

impl Write for BuildLog {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buffer)?;
        let mut stderr = std::io::stderr().lock();
        if self.verbose {
            stderr.write_all(buffer)?;
            return Ok(buffer.len());
        }
        for &byte in buffer {
            self.line.push(byte);
            if byte == b'\n' {
                if self.line.starts_with(b"kiln:") {
                    stderr.write_all(&self.line)?;
                }
                self.line.clear();
            }
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The S3 credentials, as OpenCHAMI's builder takes them (`S3_ACCESS`, `S3_SECRET`; and
/// `S3_REGION`, default us-east-1), checked before anything runs.
fn s3_settings(definition: &ImageDefinition) -> anyhow::Result<Option<kiln_image_store::S3Settings>> {
    let Some(target) = &definition.publish.s3 else { return Ok(None) };
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let (Some(access_key_id), Some(secret_access_key)) = (variable("S3_ACCESS"), variable("S3_SECRET")) else {
        bail!("publish_s3: set S3_ACCESS and S3_SECRET to the bucket's access key and secret");
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

/// Puts the SquashFS triple in the bucket where OpenCHAMI's builder puts it: the root at
/// `<prefix><name>-<tag>`, the kernel and initramfs under `efi-images/<prefix>`. Returns
/// the objects' URLs.
async fn publish_to_s3(
    settings: &kiln_image_store::S3Settings,
    definition: &ImageDefinition,
    files: &SquashfsFiles,
) -> anyhow::Result<Vec<String>> {
    let prefix = definition.publish.s3.as_ref().map(|target| target.prefix.as_str()).unwrap_or_default();
    let tag = definition.tags.first().map_or("latest", String::as_str);
    let mut objects = vec![(format!("{prefix}{}-{tag}", definition.name), files.root.clone())];
    for file in files.kernel.iter().chain(&files.initrd) {
        let name = file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        objects.push((format!("efi-images/{prefix}{name}"), file.clone()));
    }
    let mut urls = Vec::new();
    for (key, path) in objects {
        kiln_image_store::put_file_in_bucket(settings, &key, &path)
            .await
            .with_context(|| format!("publishing {} to s3://{}/{key}", path.display(), settings.bucket))?;
        let url = format!("{}/{}/{key}", settings.endpoint, settings.bucket);
        eprintln!("kiln: published {url}");
        urls.push(url);
    }
    Ok(urls)
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let (digest, _) = kiln_image_build::layers::file_digest(path)?;
    Ok(digest.trim_start_matches("sha256:").to_owned())
}

/// Where the last online build found a parent, for `--offline`.
fn reference_file(cache: &Path, parent: &str) -> PathBuf {
    use sha2::Digest as _;
    cache.join("refs").join(hex::encode(&sha2::Sha256::digest(parent.as_bytes())[..16]))
}

/// Resolves the parent to a content digest and, unless scratch, its unpacked root in the cache.
async fn resolve_parent(client: &Client, parent: &Parent, cache: &Path, offline: bool) -> anyhow::Result<(String, Option<ParentRoot>)> {
    let named = match parent {
        Parent::Scratch => return Ok(("scratch".to_owned(), None)),
        Parent::Kiln { image, version } => format!("kiln:{image}:{}", version.as_deref().unwrap_or("latest")),
        Parent::Registry { reference, .. } => reference.clone(),
    };
    let record = reference_file(cache, &named);
    if offline {
        let digest = std::fs::read_to_string(&record)
            .with_context(|| format!("--offline: {named} was never resolved by an online build on this cache"))?;
        let root = cache.join("parents").join(digest.trim_start_matches("sha256:")).join("root");
        if !root.is_dir() {
            bail!("--offline: {named} ({digest}) is not unpacked in the cache");
        }
        return Ok((digest, Some(ParentRoot { root })));
    }
    let digest = match parent {
        Parent::Scratch => unreachable!("returned above"),
        Parent::Kiln { image, version } => {
            let wanted = version.as_deref().unwrap_or("latest");
            let found: ImageVersion = client
                .get(&format!("/v1/images/{}/versions/{}", encode(image), encode(wanted)))
                .await
                .with_context(|| format!("finding the parent {named}"))?;
            let root = found.artifact(ArtifactKind::Root).with_context(|| format!("the parent {named} has no root artifact"))?;
            let directory = cache.join("parents").join(&root.sha256);
            if !directory.join("root").is_dir() {
                eprintln!("kiln: fetching the parent {image}:{} ({})", found.version, crate::images::human_bytes(root.size));
                std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
                let squashfs = directory.join("root.squashfs.partial");
                let mut file = tokio::fs::File::create(&squashfs).await.with_context(|| format!("creating {}", squashfs.display()))?;
                let path = format!("/v1/images/{}/versions/{}/root", encode(image), found.version);
                client.download_to(&path, 0, &mut file, &|_, _| {}).await.with_context(|| format!("downloading {named}"))?;
                drop(file);
                let got = sha256_file(&squashfs)?;
                if got != root.sha256 {
                    let _ = std::fs::remove_file(&squashfs);
                    bail!("the parent {named} arrived with sha256:{got}, not sha256:{}", root.sha256);
                }
                let target = directory.join("root");
                let unpacked = squashfs.clone();
                tokio::task::spawn_blocking(move || kiln_image_build::layers::unpack_squashfs(&unpacked, &target))
                    .await
                    .expect("unpacking does not panic")
                    .with_context(|| format!("unpacking {named}"))?;
                let _ = std::fs::remove_file(&squashfs);
            }
            format!("sha256:{}", root.sha256)
        }
        Parent::Registry { reference, pull_options } => {
            let parsed = ImageReference::parse(reference)?;
            let (digest, manifest) = registry::resolve(&parsed, pull_options).await?;
            let directory = cache.join("parents").join(digest.trim_start_matches("sha256:"));
            if !directory.join("root").is_dir() {
                eprintln!("kiln: pulling the parent {reference} ({digest})");
                let layers = registry::pull_layers(&parsed, pull_options, &manifest, &cache.join("blobs")).await?;
                std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
                let target = directory.join("root");
                tokio::task::spawn_blocking(move || kiln_image_build::layers::unpack_layers(&layers, &target))
                    .await
                    .expect("unpacking does not panic")
                    .with_context(|| format!("unpacking {reference}"))?;
            }
            digest
        }
    };
    std::fs::create_dir_all(record.parent().expect("refs/ has a parent")).context("creating the reference cache")?;
    std::fs::write(&record, &digest).with_context(|| format!("writing {}", record.display()))?;
    let root = cache.join("parents").join(digest.trim_start_matches("sha256:")).join("root");
    Ok((digest, Some(ParentRoot { root })))
}

/// Whether an uncached layer can be built without the network, said before anything runs.
fn check_offline(definition: &ImageDefinition, cache: &Path) -> anyhow::Result<()> {
    let installs = !definition.packages.is_empty() || !definition.package_groups.is_empty();
    match definition.package_manager {
        PackageManager::Apt => {}
        // They empty their caches after every transaction, so there is nothing to build from.
        PackageManager::Dnf | PackageManager::Zypper if installs => {
            bail!(
                "--offline: only apt builds keep their downloads; this layer installs packages with {}",
                definition.package_manager.as_str()
            )
        }
        PackageManager::Dnf | PackageManager::Zypper => {}
    }
    if let (Parent::Scratch, PackageManager::Apt, Some(repo)) = (&definition.parent, definition.package_manager, definition.repos.first()) {
        let tarball = cache.join("downloads").join(bootstrap_tarball(repo));
        if !tarball.is_file() {
            bail!(
                "--offline: what debootstrap installs for {} from {} was never fetched into this cache ({}); build once with the network first",
                repo.suite.as_deref().unwrap_or_default(),
                repo.url,
                tarball.display()
            );
        }
    }
    Ok(())
}

/// The definition's elements, loaded along the elements path, their hooks ordered, with the
/// digest of each (dependencies included) for the layer's key.
fn load_elements(definition: &ImageDefinition, args: &BuildArgs) -> anyhow::Result<(Option<ElementRun>, BTreeMap<String, String>)> {
    if definition.elements.is_empty() {
        return Ok((None, BTreeMap::new()));
    }
    let Some(elements_path) = args.elements_path.as_deref().filter(|path| !path.is_empty()) else {
        bail!("elements: {} named, but no ELEMENTS_PATH: pass --elements-path DIR[:DIR…]", definition.elements.join(", "));
    };
    let path: Vec<PathBuf> = elements_path.split(':').filter(|part| !part.is_empty()).map(PathBuf::from).collect();
    let loaded = kiln_image_build::load_elements(&path, &definition.elements).context("finding the elements")?;
    let resolved = kiln_image_build::resolve(&loaded, &definition.elements).context("resolving element dependencies")?;
    let hooks = kiln_image_build::plan_hooks(&loaded, &resolved).context("ordering element hooks")?;
    let mut digests = BTreeMap::new();
    for name in &resolved {
        digests.insert(name.clone(), kiln_image_build::elements::element_digest(&loaded[name])?);
    }
    let breaks = kiln_image_build::BreakPoints::parse(args.break_points.as_deref().unwrap_or_default()).context("--break")?;
    let environment =
        kiln_image_build::elements::hook_environment(std::env::vars().collect::<Vec<_>>().iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let loaded = loaded.into_iter().filter(|(name, _)| resolved.contains(name)).collect();
    Ok((Some(ElementRun { loaded, hooks, environment, breaks }), digests))
}

pub(crate) async fn build(client: &Client, format: OutputFormat, args: BuildArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let definition = parse_definition(&text).with_context(|| format!("{}", args.config.display()))?;
    let s3 = s3_settings(&definition)?;
    let definition_dir = args.config.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let copied = copied_digests(&definition, &definition_dir)?;
    // SAFETY: geteuid has no preconditions.
    if !args.plan && unsafe { libc::geteuid() } != 0 {
        bail!("building needs root (chroot and bind mounts); `--plan` shows the plan without it");
    }
    let (elements, element_digests) = load_elements(&definition, &args)?;
    let (parent_digest, parent_root) = resolve_parent(client, &definition.parent, &args.cache, args.offline).await?;
    let downloads = if args.offline { Downloads::CacheOnly } else { Downloads::Fetch };
    let plan = plan_build(&definition, &parent_digest, &copied, &element_digests, downloads);
    if args.plan {
        return print(format, &plan, || plan.to_string());
    }
    if args.offline && !args.cache.join("layers").join(&plan.layer_key).join("root").is_dir() {
        check_offline(&definition, &args.cache)?;
    }

    let outputs = args.cache.join("outputs").join(&plan.layer_key);
    std::fs::create_dir_all(&outputs).with_context(|| format!("creating {}", outputs.display()))?;
    let log_path = outputs.join("build.log");
    // Appended to: a later build that finds the layer cached adds its lines after the ones
    // of the build that made it.
    let log_file =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let mut log = BuildLog { file: log_file, verbose: args.verbose, line: Vec::new() };
    let _ = writeln!(log, "kiln: building {} (layer {}) from {}", definition.name, &plan.layer_key[..12], args.config.display());
    let settings = BuildSettings { cache_dir: args.cache.clone(), definition_dir, elements };
    let name = definition.name.clone();
    let wanted = definition.outputs.clone();
    let kernel_args = definition.kernel_args.clone();
    let previous: Option<BuildResult> =
        std::fs::read(outputs.join("result.json")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let (mut result, log) = tokio::task::spawn_blocking(move || -> anyhow::Result<(BuildResult, BuildLog)> {
        let built = build_layer(&plan, parent_root.as_ref(), &settings, &mut log)?;
        // Outputs of a layer taken from the cache were made with it; made again they would
        // only be the same bytes, unless what names them or boots them has changed.
        let previous = previous.filter(|previous| built.reused && previous.name == name && previous.kernel_args == kernel_args);
        let squashfs = squashfs_output(&built.root, &name, &wanted, previous.as_ref(), &outputs, &mut log)?;
        let disk = disk_output(&built.root, &name, &kernel_args, &wanted, previous.as_ref(), &outputs, &mut log)?;
        let layer_tar = layer_output(&built.root, &wanted, previous.as_ref(), &outputs, &mut log)?;
        let result = BuildResult {
            name,
            layer: built.key,
            reused: built.reused,
            seconds: built.seconds,
            squashfs,
            disk,
            layer_tar,
            pushed: Vec::new(),
            published: None,
            s3: Vec::new(),
            log: outputs.join("build.log"),
            kernel_args,
        };
        Ok((result, log))
    })
    .await
    .expect("the build does not panic")
    .with_context(|| format!("building {} (log: {})", definition.name, log_path.display()))?;
    let outputs_dir = args.cache.join("outputs").join(&result.layer);
    std::fs::write(outputs_dir.join("result.json"), serde_json::to_vec_pretty(&result)?).context("writing result.json")?;
    drop(log);

    publish(client, &definition, s3.as_ref(), &outputs_dir, &mut result).await?;
    print(format, &result, || describe(&result))
}

/// The SHA-256 of each file the definition copies in, by source path (part of the key).
fn copied_digests(definition: &ImageDefinition, definition_dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut copied = BTreeMap::new();
    for (source, _) in &definition.copy_files {
        let path = definition_dir.join(source);
        let digest =
            sha256_file(&path).with_context(|| format!("copyfiles: reading {source} (relative to {})", definition_dir.display()))?;
        copied.insert(source.clone(), digest);
    }
    Ok(copied)
}

/// The SquashFS triple, made unless the previous build's (of the same layer, name and
/// kernel arguments) is still there.
fn squashfs_output(
    root: &Path,
    name: &str,
    wanted: &BTreeSet<Output>,
    previous: Option<&BuildResult>,
    outputs: &Path,
    log: &mut BuildLog,
) -> anyhow::Result<Option<SquashfsFiles>> {
    Ok(match (wanted.contains(&Output::Squashfs), previous.and_then(|p| p.squashfs.clone())) {
        (false, _) => None,
        (true, Some(files)) if files.root.exists() => Some(files),
        (true, _) => {
            let _ = writeln!(log, "kiln: making the SquashFS root");
            let triple = make_squashfs(root, name, outputs, log)?;
            Some(SquashfsFiles { root: triple.root, kernel: triple.kernel, initrd: triple.initrd })
        }
    })
}

/// The disk image (raw, qcow2 or both), made unless the previous build's is still there.
fn disk_output(
    root: &Path,
    name: &str,
    kernel_args: &str,
    wanted: &BTreeSet<Output>,
    previous: Option<&BuildResult>,
    outputs: &Path,
    log: &mut BuildLog,
) -> anyhow::Result<Option<PathBuf>> {
    let wants_disk = wanted.contains(&Output::DiskRaw) || wanted.contains(&Output::DiskQcow2);
    Ok(match (wants_disk, previous.and_then(|p| p.disk.clone())) {
        (false, _) => None,
        (true, Some(disk)) if disk.exists() => Some(disk),
        (true, _) => {
            let _ = writeln!(log, "kiln: making the disk image");
            let raw = kiln_image_build::disk::make_disk(root, name, outputs, kernel_args, log)?;
            if wanted.contains(&Output::DiskQcow2) {
                let qcow2 = kiln_image_build::disk::convert_to_qcow2(&raw, log)?;
                if !wanted.contains(&Output::DiskRaw) {
                    std::fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
                    Some(qcow2)
                } else {
                    Some(raw)
                }
            } else {
                Some(raw)
            }
        }
    })
}

/// The layer as an OCI tar for the registry, packed unless the previous build's is there.
fn layer_output(
    root: &Path,
    wanted: &BTreeSet<Output>,
    previous: Option<&BuildResult>,
    outputs: &Path,
    log: &mut BuildLog,
) -> anyhow::Result<Option<(String, u64)>> {
    Ok(match (wanted.contains(&Output::Oci), previous.and_then(|p| p.layer_tar.clone())) {
        (false, _) => None,
        (true, Some(tar)) if outputs.join("layer.tar").exists() => Some(tar),
        (true, _) => {
            let _ = writeln!(log, "kiln: packing the layer for the registry");
            Some(kiln_image_build::layers::pack_layer(root, &outputs.join("layer.tar"))?)
        }
    })
}

/// Publishes what the build made where the definition says: a push per tag to the
/// registry, the SquashFS triple to S3, a version of a Kiln image.
async fn publish(
    client: &Client,
    definition: &ImageDefinition,
    s3: Option<&kiln_image_store::S3Settings>,
    outputs_dir: &Path,
    result: &mut BuildResult,
) -> anyhow::Result<()> {
    if let (Some(registry), Some((digest, size))) = (&definition.publish.registry, &result.layer_tar) {
        let tags = if definition.tags.is_empty() { vec!["latest".to_owned()] } else { definition.tags.clone() };
        for tag in tags {
            let reference = ImageReference::parse(&format!("{registry}/{}:{tag}", definition.name))?;
            let manifest = registry::push(&reference, &definition.publish.push_options, &outputs_dir.join("layer.tar"), digest, *size)
                .await
                .with_context(|| format!("pushing {reference}"))?;
            eprintln!("kiln: pushed {reference} ({manifest})");
            result.pushed.push((reference.to_string(), manifest));
        }
    }
    if let (Some(settings), Some(files)) = (s3, &result.squashfs) {
        result.s3 = publish_to_s3(settings, definition, files).await?;
    }
    if let Some(image) = &definition.publish.kiln_image {
        let mut artifacts = Vec::new();
        if let Some(files) = &result.squashfs {
            artifacts.push((ArtifactKind::Root, files.root.clone()));
            artifacts.extend(files.kernel.clone().map(|kernel| (ArtifactKind::Kernel, kernel)));
            artifacts.extend(files.initrd.clone().map(|initrd| (ArtifactKind::Initrd, initrd)));
        }
        if let Some(disk) = &result.disk {
            artifacts.push((ArtifactKind::Disk, disk.clone()));
        }
        // The log goes with the version, so what made it can be read where it is used.
        artifacts.push((ArtifactKind::Log, result.log.clone()));
        result.published = Some(publish_to_kiln(client, image, &artifacts, &result.layer).await?);
    }
    Ok(())
}

/// The build's result as the terminal shows it.
fn describe(result: &BuildResult) -> String {
    let mut text = format!(
        "{} layer {} {} in {:.1} s\n",
        result.name,
        &result.layer[..12],
        if result.reused { "reused from the cache" } else { "built" },
        result.seconds
    );
    if let Some(files) = &result.squashfs {
        text.push_str(&format!("squashfs  {}\n", files.root.display()));
        if let Some(kernel) = &files.kernel {
            text.push_str(&format!("kernel    {}\n", kernel.display()));
        }
        if let Some(initrd) = &files.initrd {
            text.push_str(&format!("initrd    {}\n", initrd.display()));
        }
    }
    if let Some(disk) = &result.disk {
        text.push_str(&format!("disk      {}\n", disk.display()));
    }
    for (reference, digest) in &result.pushed {
        text.push_str(&format!("pushed    {reference} ({digest})\n"));
    }
    for url in &result.s3 {
        text.push_str(&format!("s3        {url}\n"));
    }
    if let Some(published) = &result.published {
        text.push_str(&format!("published {published}\n"));
    }
    text.push_str(&format!("log       {}\n", result.log.display()));
    text
}

/// Adds the artifacts (the first one names the content) as a new version of `image`
/// (created if absent), unless its latest version already holds the same first artifact.
async fn publish_to_kiln(client: &Client, image: &str, artifacts: &[(ArtifactKind, PathBuf)], layer: &str) -> anyhow::Result<String> {
    let Some((first_kind, first_path)) = artifacts.first().filter(|(kind, _)| *kind != ArtifactKind::Log) else {
        bail!("publish_kiln: the build made nothing to publish (outputs: squashfs, disk-raw or disk-qcow2)")
    };
    match client.get::<Image>(&format!("/v1/images/{}", encode(image))).await {
        Ok(_) => {}
        Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
            let input = ImageInput {
                name: image.to_owned(),
                project: None,
                visibility: Visibility::Private,
                shared_with: Vec::new(),
                description: "built by kiln image build".to_owned(),
                os: None,
                arch: Some(std::env::consts::ARCH.to_owned()),
            };
            client.post::<_, Image>("/v1/images", &input).await.with_context(|| format!("creating the image {image}"))?;
        }
        Err(error) => return Err(error).with_context(|| format!("finding the image {image}")),
    }
    let first_sha = sha256_file(first_path)?;
    if let Ok(latest) = client.get::<ImageVersion>(&format!("/v1/images/{}/versions/latest", encode(image))).await
        && latest.artifact(*first_kind).is_some_and(|artifact| artifact.sha256 == first_sha)
    {
        eprintln!("kiln: {image}:{} already holds this {first_kind}; nothing published", latest.version);
        return Ok(format!("{image}:{} (unchanged)", latest.version));
    }
    let note = format!("kiln image build: layer {layer}");
    let version =
        crate::images::upload_artifacts(client, image, artifacts, &note).await.with_context(|| format!("publishing to {image}"))?;
    Ok(format!("{image}:{}", version.version))
}
