//! The image build driver behind `kiln image build -c image.yaml`: an image definition
//! (OpenCHAMI's image-builder format) read, its parent resolved to a digest ([`parent`]) so
//! that the plan and its layer key are known before anything runs, the layer built or found
//! in the cache (`kiln-image-build`), its outputs made or reused ([`outputs`]), and the
//! result published to Kiln, S3 and an OCI registry ([`publish`], [`registry`]). Kiln's
//! API is behind [`ImageCatalog`], which the CLI implements, so every decision here is
//! testable without a server or root.

pub mod catalog;
pub mod error;
pub mod outputs;
pub mod parent;
pub mod publish;
pub mod registry;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_image_build::definition::{ImageDefinition, PackageManager, Parent, parse_definition};
use kiln_image_build::execute::{BuildSettings, ElementRun, build_layer};
use kiln_image_build::plan::{BuildPlan, Downloads, bootstrap_tarball, plan_build};

pub use catalog::{CatalogError, ImageCatalog};
pub use error::DriverError;
pub use outputs::{BuildLog, BuildResult, SquashfsFiles};

use crate::error::cache;
use crate::outputs::{OutputContext, reusable_previous};
use crate::parent::{ResolvedParent, resolve_parent};

/// One build, as the command line asks for it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The image definition's file; `copyfiles` sources are relative to its directory.
    pub definition: PathBuf,
    /// Layers, parents, outputs and logs.
    pub cache: PathBuf,
    /// Use the network for nothing: everything comes from what earlier builds cached.
    pub offline: bool,
    /// Every command's output to the terminal, not only the `kiln:` lines.
    pub verbose: bool,
    /// Where the definition's `elements` are found, `:`-separated.
    pub elements_path: Option<String>,
    /// diskimage-builder's `break=` points.
    pub break_points: Option<String>,
    /// The environment: `S3_*` credentials, and the `DIB_*` variables hooks see.
    pub environment: BTreeMap<String, String>,
}

/// What is known once the definition is read and the parent resolved: enough to plan.
struct Prepared {
    definition: ImageDefinition,
    definition_dir: PathBuf,
    s3: Option<kiln_image_store::S3Settings>,
    elements: Option<ElementRun>,
    parent: ResolvedParent,
    plan: BuildPlan,
}

/// The plan `request` would run, with its layer key; resolves the parent (fetching it into
/// the cache if need be) but builds nothing and needs no root.
pub async fn plan(
    catalog: &impl ImageCatalog,
    request: &BuildRequest,
    terminal: &mut (dyn Write + Send),
) -> Result<BuildPlan, DriverError> {
    Ok(prepare(catalog, request, false, terminal).await?.plan)
}

/// Builds `request` (as root), reusing the cached layer and outputs where they stand, and
/// publishes the result. `terminal` gets the progress lines (and with `verbose`, everything).
pub async fn build(
    catalog: &impl ImageCatalog,
    request: &BuildRequest,
    mut terminal: Box<dyn Write + Send>,
) -> Result<BuildResult, DriverError> {
    let prepared = prepare(catalog, request, true, &mut terminal).await?;
    let layer_cached = request.cache.join("layers").join(&prepared.plan.layer_key).join("root").is_dir();
    if request.offline && !layer_cached {
        check_offline(&prepared.definition, &request.cache)?;
    }
    let outputs_dir = request.cache.join("outputs").join(&prepared.plan.layer_key);
    std::fs::create_dir_all(&outputs_dir).map_err(cache("creating", &outputs_dir))?;
    let log_path = outputs_dir.join("build.log");
    // Appended to: a later build that finds the layer cached adds its lines after the ones
    // of the build that made it.
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(cache("opening", &log_path))?;
    let mut log = BuildLog::new(log_file, terminal, request.verbose);
    let _ = writeln!(
        log,
        "kiln: building {} (layer {}) from {}",
        prepared.definition.name,
        &prepared.plan.layer_key[..12],
        request.definition.display()
    );
    let previous: Option<BuildResult> =
        std::fs::read(outputs_dir.join("result.json")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let name = prepared.definition.name.clone();
    let (definition, s3) = (prepared.definition.clone(), prepared.s3.clone());
    let (cache_dir, directory) = (request.cache.clone(), outputs_dir.clone());
    let (mut result, log) = tokio::task::spawn_blocking(move || build_blocking(prepared, previous, cache_dir, &directory, log))
        .await
        .expect("the build does not panic")
        .map_err(|error| DriverError::Build { name, log: log_path, error: Box::new(error) })?;
    let result_path = outputs_dir.join("result.json");
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result).expect("plain data serialises"))
        .map_err(cache("writing", &result_path))?;
    let mut terminal = log.into_terminal();
    publish::publish(catalog, &definition, s3.as_ref(), &outputs_dir, &mut result, &mut terminal).await?;
    Ok(result)
}

/// The layer, then its outputs: the part of a build that runs commands.
fn build_blocking(
    prepared: Prepared,
    previous: Option<BuildResult>,
    cache_dir: PathBuf,
    outputs_dir: &Path,
    mut log: BuildLog,
) -> Result<(BuildResult, BuildLog), kiln_image_build::execute::BuildError> {
    let Prepared { definition, definition_dir, elements, parent, plan, .. } = prepared;
    let settings = BuildSettings { cache_dir, definition_dir, elements };
    let built = build_layer(&plan, parent.root.as_ref(), &settings, &mut log)?;
    let boot = kiln_image_build::disk::DiskBoot { kernel_args: &definition.kernel_args, secure_boot: definition.secure_boot };
    let previous = reusable_previous(previous, built.reused, &definition.name, &boot);
    let context = OutputContext {
        layer_root: &built.root,
        name: &definition.name,
        boot,
        wanted: &definition.outputs,
        previous: previous.as_ref(),
        directory: outputs_dir,
    };
    let result = BuildResult {
        squashfs: context.squashfs(&mut log)?,
        disk: context.disk(&mut log)?,
        layer_tar: context.layer_tar(&mut log)?,
        name: definition.name.clone(),
        layer: built.key,
        reused: built.reused,
        seconds: built.seconds,
        pushed: Vec::new(),
        published: None,
        s3: Vec::new(),
        log: outputs_dir.join("build.log"),
        kernel_args: definition.kernel_args.clone(),
        secure_boot: definition.secure_boot,
    };
    Ok((result, log))
}

/// Reads the definition, checks what can be checked before anything runs, resolves the
/// parent and plans.
async fn prepare(
    catalog: &impl ImageCatalog,
    request: &BuildRequest,
    building: bool,
    terminal: &mut (dyn Write + Send),
) -> Result<Prepared, DriverError> {
    let path = &request.definition;
    let text = std::fs::read_to_string(path).map_err(|error| DriverError::ReadDefinition { path: path.clone(), error })?;
    let definition = parse_definition(&text).map_err(|error| DriverError::ParseDefinition { path: path.clone(), error })?;
    let s3 = publish::s3_settings(&definition, &request.environment)?;
    let definition_dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let copied = copied_digests(&definition, &definition_dir)?;
    // SAFETY: geteuid has no preconditions.
    if building && unsafe { libc::geteuid() } != 0 {
        return Err(DriverError::NotRoot);
    }
    let (elements, element_digests) = load_elements(&definition, request)?;
    let parent = resolve_parent(catalog, &definition.parent, &request.cache, request.offline, terminal).await?;
    let downloads = if request.offline { Downloads::CacheOnly } else { Downloads::Fetch };
    let plan = plan_build(&definition, &parent.digest, &copied, &element_digests, downloads);
    Ok(Prepared { definition, definition_dir, s3, elements, parent, plan })
}

/// The SHA-256 of each file the definition copies in, by source path (part of the key).
fn copied_digests(definition: &ImageDefinition, definition_dir: &Path) -> Result<BTreeMap<String, String>, DriverError> {
    let mut copied = BTreeMap::new();
    for (source, _) in &definition.copy_files {
        let (digest, _) = kiln_image_build::layers::file_digest(&definition_dir.join(source)).map_err(|error| {
            DriverError::ReadCopiedFile { source_file: source.clone(), directory: definition_dir.to_owned(), error: Box::new(error) }
        })?;
        copied.insert(source.clone(), digest.trim_start_matches("sha256:").to_owned());
    }
    Ok(copied)
}

/// Whether an uncached layer can be built without the network, said before anything runs.
pub fn check_offline(definition: &ImageDefinition, cache_dir: &Path) -> Result<(), DriverError> {
    let installs = !definition.packages.is_empty() || !definition.package_groups.is_empty();
    // dnf and zypper empty their caches after every transaction: nothing to build from.
    if definition.package_manager != PackageManager::Apt && installs {
        return Err(DriverError::OfflineNeedsApt { package_manager: definition.package_manager.as_str() });
    }
    if let (Parent::Scratch, PackageManager::Apt, Some(repo)) = (&definition.parent, definition.package_manager, definition.repos.first()) {
        let tarball = cache_dir.join("downloads").join(bootstrap_tarball(repo));
        if !tarball.is_file() {
            return Err(DriverError::OfflineNoBootstrap { suite: repo.suite.clone().unwrap_or_default(), url: repo.url.clone(), tarball });
        }
    }
    Ok(())
}

/// The definition's elements, loaded along the elements path, their hooks ordered, with the
/// digest of each (dependencies included) for the layer's key.
fn load_elements(
    definition: &ImageDefinition,
    request: &BuildRequest,
) -> Result<(Option<ElementRun>, BTreeMap<String, String>), DriverError> {
    if definition.elements.is_empty() {
        return Ok((None, BTreeMap::new()));
    }
    let Some(elements_path) = request.elements_path.as_deref().filter(|path| !path.is_empty()) else {
        return Err(DriverError::NoElementsPath { names: definition.elements.join(", ") });
    };
    let failed = |operation| move |error| DriverError::Elements { operation, error };
    let path: Vec<PathBuf> = elements_path.split(':').filter(|part| !part.is_empty()).map(PathBuf::from).collect();
    let loaded = kiln_image_build::load_elements(&path, &definition.elements).map_err(failed("finding the elements"))?;
    let resolved = kiln_image_build::resolve(&loaded, &definition.elements).map_err(failed("resolving element dependencies"))?;
    let hooks = kiln_image_build::plan_hooks(&loaded, &resolved).map_err(failed("ordering element hooks"))?;
    let mut digests = BTreeMap::new();
    for name in &resolved {
        let digest = kiln_image_build::elements::element_digest(&loaded[name]).map_err(failed("reading the elements"))?;
        digests.insert(name.clone(), digest);
    }
    let breaks = kiln_image_build::BreakPoints::parse(request.break_points.as_deref().unwrap_or_default()).map_err(failed("--break"))?;
    let environment = kiln_image_build::elements::hook_environment(request.environment.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let loaded = loaded.into_iter().filter(|(name, _)| resolved.contains(name)).collect();
    Ok((Some(ElementRun { loaded, hooks, environment, breaks }), digests))
}

#[cfg(test)]
mod tests;
