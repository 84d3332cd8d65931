//! A build as a plan: the ordered steps that turn a checked [`ImageDefinition`] and its
//! parent into a layer and its outputs, and the layer's cache key. A pure function of its
//! inputs; running the steps is the executor's job.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::Digest as _;

use crate::definition::{ImageDefinition, Output, PackageManager, Parent, Repo};

/// Where the layer's root is while it is built; the executor substitutes its directory.
pub const ROOT: &str = "$ROOT";
/// The build cache's directory of downloads; the executor substitutes it. Downloads are kept
/// there across builds, never in a layer: `packages/` (the .deb files debootstrap and apt
/// fetch), `bootstrap/` (debootstrap's package lists and .debs per suite, as tarballs) and
/// `apt-lists/` (apt's package lists, by the digest of the sources they came from).
pub const DOWNLOADS: &str = "$DOWNLOADS";

/// Where a build's downloads come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downloads {
    /// The network; what is fetched is kept in the build cache for later offline builds.
    Fetch,
    /// The build cache only (`--offline`): what is not there fails the build, by name.
    CacheOnly,
}

/// One step of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Runs a program on the host (outside the chroot).
    Host {
        what: String,
        argv: Vec<String>,
    },
    /// Unpacks the parent layer (its digest is part of the cache key) into the root.
    UnpackParent {
        parent: Parent,
    },
    /// Binds `/proc`, `/sys` and `/dev` into the root, and the build cache's package
    /// downloads onto the package manager's cache directory; the executor always undoes it.
    BindMounts {
        package_cache: Option<String>,
    },
    /// Writes a file into the root.
    WriteFile {
        path: String,
        content: String,
    },
    /// Copies a file from the definition's directory into the root.
    CopyIn {
        source: String,
        destination: String,
    },
    /// Runs a shell command inside the root.
    Chroot {
        what: String,
        command: String,
    },
    UnbindMounts,
    /// apt's package lists: fetched (`apt-get update` in the root) and a copy kept in
    /// `$DOWNLOADS/apt-lists` under the digest of the root's sources, or, offline, that copy
    /// put back.
    AptLists {
        from_cache: bool,
    },
    /// Runs the hooks of diskimage-builder elements, phase by phase (their digests are in
    /// the cache key); the hook runner binds and unbinds what in-chroot phases need.
    RunElements {
        elements: Vec<String>,
    },
    /// Makes an output from the finished root.
    Make {
        output: Output,
    },
    /// Publishes the outputs.
    Publish {
        to: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Host { what, argv } => write!(f, "{what}: {}", argv.join(" ")),
            Step::UnpackParent { parent } => match parent {
                Parent::Scratch => write!(f, "start from an empty root"),
                Parent::Registry { reference, pull_options } if pull_options.is_empty() => write!(f, "unpack {reference}"),
                Parent::Registry { reference, pull_options } => write!(f, "unpack {reference} ({})", pull_options.join(" ")),
                Parent::Kiln { image, version } => write!(f, "unpack kiln:{image}:{}", version.as_deref().unwrap_or("latest")),
            },
            Step::BindMounts { package_cache: None } => write!(f, "bind /proc, /sys and /dev into {ROOT}"),
            Step::BindMounts { package_cache: Some(directory) } => {
                write!(f, "bind /proc, /sys and /dev into {ROOT}, and {DOWNLOADS}/packages onto {ROOT}{directory}")
            }
            Step::WriteFile { path, content } => write!(f, "write {ROOT}{path}: {}", content.trim_end().replace('\n', "\\n")),
            Step::CopyIn { source, destination } => write!(f, "copy {source} to {ROOT}{destination}"),
            Step::Chroot { what, command } => write!(f, "{what}, in {ROOT}: {command}"),
            Step::UnbindMounts => write!(f, "unbind /proc, /sys and /dev"),
            Step::AptLists { from_cache: false } => {
                write!(f, "refresh the package lists, in {ROOT}: apt-get update; keep them in {DOWNLOADS}/apt-lists")
            }
            Step::AptLists { from_cache: true } => write!(f, "the package lists of these sources, from {DOWNLOADS}/apt-lists"),
            Step::RunElements { elements } => write!(f, "run the hooks of elements {}", elements.join(", ")),
            Step::Make { output } => write!(f, "make {}", output.as_str()),
            Step::Publish { to } => write!(f, "publish to {to}"),
        }
    }
}

/// A build: the layer's cache key and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildPlan {
    /// SHA-256 of the parent's digest and everything in the definition that changes what
    /// the layer holds (not where it is published): an unchanged key means an unchanged
    /// layer, which is never rebuilt.
    pub layer_key: String,
    /// Steps that make the layer (skipped when the key is cached).
    pub layer: Vec<Step>,
    /// Steps that make and publish the outputs from the layer.
    pub outputs: Vec<Step>,
}

impl fmt::Display for BuildPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "layer {}", self.layer_key)?;
        for (number, step) in self.layer.iter().chain(&self.outputs).enumerate() {
            writeln!(f, "{:>3}. {step}", number + 1)?;
        }
        Ok(())
    }
}

/// What makes up a layer, for its key.
#[derive(Serialize)]
struct LayerContent<'a> {
    parent_digest: &'a str,
    package_manager: PackageManager,
    repos: &'a [Repo],
    package_groups: &'a [String],
    packages: &'a [String],
    remove_packages: &'a [String],
    commands: &'a [String],
    /// Destination, and the SHA-256 of the source's bytes.
    copy_files: Vec<(&'a str, &'a str)>,
    /// Each element the build uses (dependencies included), with the digest of its files.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    elements: &'a BTreeMap<String, String>,
}

/// Plans the build of `definition` on a parent whose content digest is `parent_digest`
/// (`scratch` for none), with the SHA-256 of each file it copies in, by source path, and the
/// digest of each element it uses (see [`crate::elements::element_digest`]), by name. Where
/// the downloads come from changes the steps, never the key: a layer built offline is the
/// layer an online build would make from the same packages.
pub fn plan_build(
    definition: &ImageDefinition,
    parent_digest: &str,
    copied: &BTreeMap<String, String>,
    elements: &BTreeMap<String, String>,
    downloads: Downloads,
) -> BuildPlan {
    let layer_key = layer_key(definition, parent_digest, copied, elements);
    let offline = downloads == Downloads::CacheOnly;
    let mut layer = Vec::new();
    match (&definition.parent, definition.package_manager, definition.repos.first()) {
        (Parent::Scratch, PackageManager::Apt, Some(repo)) => layer.extend(debootstrap_steps(repo, offline)),
        (parent, ..) => layer.push(Step::UnpackParent { parent: parent.clone() }),
    }
    layer.extend(package_steps(definition, offline));
    for (source, destination) in &definition.copy_files {
        layer.push(Step::CopyIn { source: source.clone(), destination: destination.clone() });
    }
    for (number, command) in definition.commands.iter().enumerate() {
        layer.push(Step::Chroot { what: format!("cmds[{number}]"), command: command.clone() });
    }
    let mounted = definition.elements.is_empty();
    if !mounted {
        // The hook runner holds its own mounts.
        layer.push(Step::UnbindMounts);
        layer.push(Step::RunElements { elements: definition.elements.clone() });
    }
    layer.extend(definition.package_manager.cleanup_steps(mounted));
    BuildPlan { layer_key, layer, outputs: output_steps(definition) }
}

/// The layer's cache key: a digest of everything that goes into the layer's bytes.
fn layer_key(
    definition: &ImageDefinition,
    parent_digest: &str,
    copied: &BTreeMap<String, String>,
    elements: &BTreeMap<String, String>,
) -> String {
    let content = LayerContent {
        parent_digest,
        package_manager: definition.package_manager,
        repos: &definition.repos,
        package_groups: &definition.package_groups,
        packages: &definition.packages,
        remove_packages: &definition.remove_packages,
        commands: &definition.commands,
        copy_files: definition
            .copy_files
            .iter()
            .map(|(source, destination)| (destination.as_str(), copied.get(source).map_or("missing", String::as_str)))
            .collect(),
        elements,
    };
    let mut hasher = sha2::Sha256::new();
    // Version 2: layers no longer keep debootstrap's .debs.
    hasher.update(b"kiln-layer/2\n");
    hasher.update(serde_json::to_vec(&content).expect("plain data serialises"));
    hex::encode(hasher.finalize())
}

/// The repositories, the package cache's mounts, and the package installs and removals.
fn package_steps(definition: &ImageDefinition, offline: bool) -> Vec<Step> {
    let manager = definition.package_manager;
    let apt = manager == PackageManager::Apt;
    let mut steps = Vec::new();
    // debootstrap has written the first repository into sources.list already.
    let bootstrapped = usize::from(apt && definition.parent == Parent::Scratch);
    // The sources first: apt's lists are kept under their digest.
    for repo in &definition.repos[bootstrapped.min(definition.repos.len())..] {
        let (path, content) = manager.repo_file(repo);
        steps.push(Step::WriteFile { path, content });
    }
    // apt keeps what it downloads; with the cache bound there, a rebuild fetches nothing
    // twice. dnf and zypper clean their caches themselves, so they get none.
    steps.push(Step::BindMounts { package_cache: manager.package_cache() });
    if apt && (!definition.packages.is_empty() || !definition.repos.is_empty()) {
        steps.push(Step::AptLists { from_cache: offline });
    }
    if let Some(command) = manager.install_groups(&definition.package_groups) {
        steps.push(Step::Chroot { what: "install package groups".into(), command });
    }
    if !definition.packages.is_empty() {
        steps.push(Step::Chroot { what: "install packages".into(), command: manager.install(&definition.packages, offline) });
    }
    if !definition.remove_packages.is_empty() {
        steps.push(Step::Chroot { what: "remove packages".into(), command: manager.remove(&definition.remove_packages) });
    }
    steps
}

/// The outputs to make, then a publish step per place the definition names.
fn output_steps(definition: &ImageDefinition) -> Vec<Step> {
    let mut outputs: Vec<Step> = definition.outputs.iter().map(|&output| Step::Make { output }).collect();
    let publish = &definition.publish;
    if let Some(registry) = &publish.registry {
        for tag in &definition.tags {
            outputs.push(Step::Publish { to: format!("{registry}/{}:{tag}", definition.name) });
        }
    }
    if let Some(s3) = &publish.s3 {
        outputs.push(Step::Publish { to: format!("{}/{}/{}{}", s3.endpoint.trim_end_matches('/'), s3.bucket, s3.prefix, definition.name) });
    }
    if let Some(image) = &publish.kiln_image {
        outputs.push(Step::Publish { to: format!("kiln:{image} (a new version)") });
    }
    outputs
}

/// debootstrap's own way to bootstrap without the network: the lists and .debs it needs,
/// fetched into a tarball (`--make-tarball`), installed from it (`--unpack-tarball`).
/// Online builds refresh the tarball; offline ones use it.
fn debootstrap_steps(repo: &Repo, offline: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let suite = repo.suite.clone().unwrap_or_default();
    let components = format!("--components={}", repo.components.join(","));
    let tarball = format!("{DOWNLOADS}/{}", bootstrap_tarball(repo));
    if !offline {
        steps.push(Step::Host {
            what: "fetch what debootstrap installs".into(),
            argv: vec![
                "debootstrap".into(),
                "--variant=minbase".into(),
                format!("--cache-dir={DOWNLOADS}/packages"),
                components.clone(),
                format!("--make-tarball={tarball}.partial"),
                suite.clone(),
                ROOT.into(),
                repo.url.clone(),
            ],
        });
        steps.push(Step::Host {
            what: "keep it for offline builds".into(),
            argv: vec!["mv".into(), format!("{tarball}.partial"), tarball.clone()],
        });
    }
    steps.push(Step::Host {
        what: "bootstrap".into(),
        argv: vec![
            "debootstrap".into(),
            "--variant=minbase".into(),
            components,
            format!("--unpack-tarball={tarball}"),
            suite,
            ROOT.into(),
            repo.url.clone(),
        ],
    });
    steps
}

/// The package manager's words for each step: its repository files, its package cache and
/// its install and remove commands.
impl PackageManager {
    /// The end of the layer: the mounts undone and the package caches dropped. `mounted`
    /// says whether the package cache's mounts are still up (element hooks hold their own).
    fn cleanup_steps(self, mounted: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        match self {
            // Unbound first: the archives and lists under the mounts are the cache's. What is
            // left in the layer's own (debootstrap's .debs, what hooks downloaded) goes.
            PackageManager::Apt => {
                if mounted {
                    steps.push(Step::UnbindMounts);
                }
                steps.push(Step::Chroot {
                    what: "drop the package caches".into(),
                    command: "rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb".into(),
                });
            }
            PackageManager::Dnf | PackageManager::Zypper => {
                if !mounted {
                    steps.push(Step::BindMounts { package_cache: None });
                }
                let clean = if self == PackageManager::Dnf { "dnf clean all" } else { "zypper clean --all" };
                steps.push(Step::Chroot { what: "drop the package caches".into(), command: clean.into() });
                steps.push(Step::UnbindMounts);
            }
        }
        steps
    }

    /// Where a repository's definition goes in the root, and what it says.
    fn repo_file(self, repo: &Repo) -> (String, String) {
        let gpg = || repo.gpg.as_ref().map_or("gpgcheck=0\n".to_owned(), |key| format!("gpgcheck=1\ngpgkey={key}\n"));
        match self {
            PackageManager::Apt => (
                format!("/etc/apt/sources.list.d/{}.list", repo.alias),
                format!("deb {} {} {}\n", repo.url, repo.suite.as_deref().unwrap_or_default(), repo.components.join(" ")),
            ),
            PackageManager::Dnf => (
                format!("/etc/yum.repos.d/{}.repo", repo.alias),
                format!("[{alias}]\nname={alias}\nbaseurl={url}\nenabled=1\n{gpg}", alias = repo.alias, url = repo.url, gpg = gpg()),
            ),
            PackageManager::Zypper => (
                format!("/etc/zypp/repos.d/{}.repo", repo.alias),
                format!(
                    "[{alias}]\nname={alias}\nbaseurl={url}\nenabled=1\nautorefresh=1\n{gpg}",
                    alias = repo.alias,
                    url = repo.url,
                    gpg = gpg()
                ),
            ),
        }
    }

    /// apt keeps what it downloads; with the cache bound there, a rebuild fetches nothing
    /// twice. dnf and zypper clean their caches themselves, so they get none.
    fn package_cache(self) -> Option<String> {
        (self == PackageManager::Apt).then(|| "/var/cache/apt/archives".to_owned())
    }

    /// Installs package groups (patterns); `None` when there are none (apt has none: the
    /// definition's check refuses them).
    fn install_groups(self, groups: &[String]) -> Option<String> {
        if groups.is_empty() {
            return None;
        }
        match self {
            PackageManager::Dnf => Some(format!("dnf -y groupinstall {}", quoted(groups))),
            PackageManager::Zypper => Some(format!("zypper --non-interactive install -t pattern {}", quoted(groups))),
            PackageManager::Apt => None,
        }
    }

    /// Installs packages; offline, only from what the build cache holds.
    fn install(self, packages: &[String], offline: bool) -> String {
        let packages = quoted(packages);
        match self {
            // A package missing from the cache is an error naming its file, not a download
            // that waits for a network there is none of. `--print-uris` lists only what is
            // not in the archives already.
            PackageManager::Apt if offline => format!(
                "missing=$(apt-get install -qq --print-uris --no-install-recommends {packages} | cut -d' ' -f2 | tr '\\n' ' '); \
                 [ -z \"$missing\" ] || {{ echo \"not in the build cache: $missing\" >&2; exit 100; }}; \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-download {packages}"
            ),
            PackageManager::Apt => format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages}"),
            PackageManager::Dnf => format!("dnf -y install {packages}"),
            PackageManager::Zypper => format!("zypper --non-interactive install {packages}"),
        }
    }

    /// Removes packages.
    fn remove(self, packages: &[String]) -> String {
        let packages = quoted(packages);
        match self {
            PackageManager::Apt => format!("DEBIAN_FRONTEND=noninteractive apt-get purge -y {packages}"),
            PackageManager::Dnf => format!("dnf -y remove {packages}"),
            PackageManager::Zypper => format!("zypper --non-interactive remove {packages}"),
        }
    }
}

/// Names quoted for a shell, space-separated.
fn quoted(names: &[String]) -> String {
    names.iter().map(|name| shell_quote(name)).collect::<Vec<_>>().join(" ")
}

/// Where, under the build cache's downloads, debootstrap's lists and .debs for `repo` are
/// kept as a tarball (one per mirror, suite and components).
pub fn bootstrap_tarball(repo: &Repo) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(format!("minbase\n{}\n{}\n{}\n", repo.url, repo.suite.as_deref().unwrap_or_default(), repo.components.join(",")));
    let digest = hex::encode(hasher.finalize());
    format!("bootstrap/{}-{}.tgz", repo.suite.as_deref().unwrap_or_default(), &digest[..16])
}

/// Quotes a word for `sh` when it needs it.
fn shell_quote(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | ':' | '=' | '/')) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests;
