//! Image definitions in OpenCHAMI's image-builder format (`options`, `repos`,
//! `package_groups`, `packages`, `cmds`, `copyfiles`), read into serde wire types and then
//! checked into an [`ImageDefinition`] whose every field is known good.
//!
//! Kiln adds a few optional keys, all ignored by nothing in the original format: `suite` and
//! `components` on a repository (what `debootstrap` and apt need), `outputs`, `publish_kiln`
//! and `kernel_args` (for disk images) in `options`, and `elements` (diskimage-builder's).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What can be wrong with a definition; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("the definition is not valid YAML for an image")]
    Syntax(#[source] serde_yaml::Error),
    #[error("options.{field}: {message}")]
    Option { field: &'static str, message: String },
    #[error("repos[{index}]: {message}")]
    Repo { index: usize, message: String },
    #[error("cmds[{index}]: {message}")]
    Command { index: usize, message: String },
    #[error("copyfiles[{index}]: {message}")]
    CopyFile { index: usize, message: String },
    #[error("packages: {message}")]
    Packages { message: String },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionWire {
    pub options: OptionsWire,
    #[serde(default)]
    pub repos: Vec<RepoWire>,
    #[serde(default)]
    pub package_groups: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub remove_packages: Vec<String>,
    #[serde(default)]
    pub cmds: Vec<CommandWire>,
    #[serde(default)]
    pub copyfiles: Vec<CopyFileWire>,
    /// Kiln: diskimage-builder elements whose hooks run after the commands.
    #[serde(default)]
    pub elements: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsWire {
    pub name: Option<String>,
    pub layer_type: Option<String>,
    pub parent: Option<String>,
    pub pkg_manager: Option<String>,
    #[serde(default)]
    pub publish_tags: Option<OneOrMany>,
    pub publish_registry: Option<String>,
    #[serde(default)]
    pub registry_opts_push: Vec<String>,
    #[serde(default)]
    pub registry_opts_pull: Vec<String>,
    pub publish_s3: Option<String>,
    pub s3_prefix: Option<String>,
    pub s3_bucket: Option<String>,
    pub publish_local: Option<bool>,
    /// Kiln: store the result as a new version of this Kiln image.
    pub publish_kiln: Option<String>,
    /// Kiln: which artifacts to make [default: from the publish settings].
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Kiln: extra kernel arguments for the boot configuration of disk images.
    pub kernel_args: Option<String>,
    /// Kiln: disk images boot UEFI through Debian's signed shim and GRUB, so that they boot
    /// under Secure Boot (the image's kernel must be a signed one, as Debian's are).
    pub secure_boot: Option<bool>,
}

/// `publish_tags: '9'` and `publish_tags: ['rocky9']` both appear in the tutorial.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoWire {
    pub alias: String,
    pub url: String,
    pub gpg: Option<String>,
    /// Kiln, for apt: the suite (`bookworm`), which a scratch build bootstraps.
    pub suite: Option<String>,
    /// Kiln, for apt: the archive components [default: main].
    #[serde(default)]
    pub components: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandWire {
    pub cmd: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyFileWire {
    pub src: String,
    pub dest: String,
}

/// A checked definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageDefinition {
    pub name: String,
    pub layer_type: LayerType,
    pub parent: Parent,
    pub package_manager: PackageManager,
    pub tags: Vec<String>,
    pub repos: Vec<Repo>,
    pub package_groups: Vec<String>,
    pub packages: Vec<String>,
    pub remove_packages: Vec<String>,
    pub commands: Vec<String>,
    pub copy_files: Vec<(String, String)>,
    /// diskimage-builder elements (found along `ELEMENTS_PATH`) run after the commands.
    pub elements: Vec<String>,
    pub outputs: BTreeSet<Output>,
    pub publish: Publish,
    /// Extra kernel arguments in a disk image's boot configuration.
    pub kernel_args: String,
    /// A disk image's UEFI boot goes through signed shim and GRUB.
    pub secure_boot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerType {
    Base,
    Ansible,
}

/// Where the layer starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Parent {
    /// An empty root: bootstrapped by the package manager.
    Scratch,
    /// An OCI image: `host[:port]/path/name:tag`.
    Registry { reference: String, pull_options: Vec<String> },
    /// A version of a Kiln image: `kiln:IMAGE[:VERSION]`.
    Kiln { image: String, version: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageManager {
    Apt,
    Dnf,
    Zypper,
}

impl PackageManager {
    /// As `pkg_manager` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
            PackageManager::Zypper => "zypper",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repo {
    pub alias: String,
    pub url: String,
    pub gpg: Option<String>,
    pub suite: Option<String>,
    pub components: Vec<String>,
}

/// What a build makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// A zstd SquashFS of the root, with its kernel and initramfs beside it.
    Squashfs,
    /// A GPT disk with an EFI system partition and an ext4 root, raw.
    DiskRaw,
    /// The same disk as qcow2.
    DiskQcow2,
    /// An OCI image of the layer.
    Oci,
}

impl Output {
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Squashfs => "squashfs",
            Output::DiskRaw => "disk-raw",
            Output::DiskQcow2 => "disk-qcow2",
            Output::Oci => "oci",
        }
    }
}

/// Where results go; none of it changes what the layer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Publish {
    pub registry: Option<String>,
    pub push_options: Vec<String>,
    pub s3: Option<S3Target>,
    pub kiln_image: Option<String>,
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
}

/// Reads a definition from YAML text and checks it.
pub fn parse_definition(text: &str) -> Result<ImageDefinition, DefinitionError> {
    let wire: DefinitionWire = serde_yaml::from_str(text).map_err(DefinitionError::Syntax)?;
    ImageDefinition::try_from(wire)
}

fn option(field: &'static str, message: impl Into<String>) -> DefinitionError {
    DefinitionError::Option { field, message: message.into() }
}

/// Names, tags and aliases: what registries and Kiln accept, and safe in paths.
fn is_plain_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !text.starts_with(['.', '-'])
}

fn parse_parent(text: Option<&str>, pull_options: &[String]) -> Result<Parent, DefinitionError> {
    let text = text.map(str::trim).unwrap_or("scratch");
    if text == "scratch" {
        return Ok(Parent::Scratch);
    }
    if let Some(rest) = text.strip_prefix("kiln:") {
        let (image, version) = match rest.split_once(':') {
            Some((image, version)) => (image, Some(version.to_owned())),
            None => (rest, None),
        };
        if !is_plain_name(image) || version.as_deref().is_some_and(|v| !is_plain_name(v)) {
            return Err(option("parent", format!("'{text}' is not kiln:IMAGE or kiln:IMAGE:VERSION")));
        }
        return Ok(Parent::Kiln { image: image.to_owned(), version });
    }
    // host[:port]/path/name[:tag]: at least one slash, a last component with a name.
    let last = text.rsplit('/').next().unwrap_or_default();
    let name = last.split_once(':').map_or(last, |(name, _)| name);
    if !text.contains('/') || name.is_empty() || text.contains(char::is_whitespace) {
        return Err(option(
            "parent",
            format!("'{text}' is not 'scratch', a registry reference (host/path/name:tag) or kiln:IMAGE[:VERSION]"),
        ));
    }
    Ok(Parent::Registry { reference: text.to_owned(), pull_options: pull_options.to_vec() })
}

impl TryFrom<DefinitionWire> for ImageDefinition {
    type Error = DefinitionError;

    fn try_from(wire: DefinitionWire) -> Result<Self, Self::Error> {
        let mut options = wire.options;
        let name = options.name.take().ok_or_else(|| option("name", "is required"))?;
        if !is_plain_name(&name) {
            return Err(option("name", format!("'{name}' must be letters, digits, '-', '_' and '.'")));
        }
        let layer_type = match options.layer_type.as_deref().unwrap_or("base") {
            "base" => LayerType::Base,
            "ansible" => LayerType::Ansible,
            other => return Err(option("layer_type", format!("'{other}' is not base or ansible"))),
        };
        if layer_type == LayerType::Ansible {
            return Err(option("layer_type", "ansible layers are not supported by Kiln; use cmds"));
        }
        let package_manager = match options.pkg_manager.as_deref() {
            Some("apt") => PackageManager::Apt,
            Some("dnf") => PackageManager::Dnf,
            Some("zypper") => PackageManager::Zypper,
            Some(other) => return Err(option("pkg_manager", format!("'{other}' is not apt, dnf or zypper"))),
            None => return Err(option("pkg_manager", "is required (apt, dnf or zypper)")),
        };
        let parent = parse_parent(options.parent.as_deref(), &options.registry_opts_pull)?;
        let tags = match options.publish_tags.take() {
            None => vec!["latest".to_owned()],
            Some(OneOrMany::One(tag)) => vec![tag],
            Some(OneOrMany::Many(tags)) => tags,
        };
        if tags.is_empty() {
            return Err(option("publish_tags", "names no tag"));
        }
        if let Some(tag) = tags.iter().find(|tag| !is_plain_name(tag)) {
            return Err(option("publish_tags", format!("'{tag}' must be letters, digits, '-', '_' and '.'")));
        }
        let repos = check_repos(wire.repos)?;
        if package_manager == PackageManager::Apt {
            if let Some(index) = repos.iter().position(|repo| repo.suite.is_none()) {
                return Err(DefinitionError::Repo { index, message: "an apt repository needs a suite (e.g. suite: bookworm)".into() });
            }
            if !wire.package_groups.is_empty() {
                return Err(DefinitionError::Packages {
                    message: "apt has no package groups; list the packages (or tasks) instead".into(),
                });
            }
        }
        if parent == Parent::Scratch && repos.is_empty() {
            return Err(DefinitionError::Option {
                field: "parent",
                message: "a scratch layer is bootstrapped from its first repository, and there is none".into(),
            });
        }
        for list in [&wire.packages, &wire.remove_packages, &wire.package_groups] {
            if let Some(bad) = list.iter().find(|package| package.trim().is_empty() || package.starts_with('-')) {
                return Err(DefinitionError::Packages { message: format!("'{bad}' is not a package name") });
            }
        }
        let commands = check_commands(wire.cmds)?;
        let copy_files = check_copy_files(wire.copyfiles)?;
        let publish = check_publish(&mut options)?;
        let outputs = check_outputs(&options.outputs, &publish)?;
        Ok(ImageDefinition {
            name,
            layer_type,
            parent,
            package_manager,
            tags,
            repos,
            package_groups: wire.package_groups,
            packages: wire.packages,
            remove_packages: wire.remove_packages,
            commands,
            copy_files,
            elements: wire.elements,
            outputs,
            publish,
            kernel_args: options.kernel_args.unwrap_or_default(),
            secure_boot: options.secure_boot.unwrap_or(false),
        })
    }
}

/// Each repository's alias and URL, with `main` as the default component.
fn check_repos(wires: Vec<RepoWire>) -> Result<Vec<Repo>, DefinitionError> {
    let mut repos = Vec::new();
    for (index, repo) in wires.into_iter().enumerate() {
        if !is_plain_name(&repo.alias) {
            return Err(DefinitionError::Repo {
                index,
                message: format!("alias '{}' must be letters, digits, '-', '_' and '.'", repo.alias),
            });
        }
        if !(repo.url.starts_with("http://") || repo.url.starts_with("https://") || repo.url.starts_with("file://")) {
            return Err(DefinitionError::Repo { index, message: format!("url '{}' must be http(s):// or file://", repo.url) });
        }
        let components = if repo.components.is_empty() { vec!["main".to_owned()] } else { repo.components };
        repos.push(Repo { alias: repo.alias, url: repo.url, gpg: repo.gpg, suite: repo.suite, components });
    }
    Ok(repos)
}

/// The `cmds`, none empty.
fn check_commands(wires: Vec<CommandWire>) -> Result<Vec<String>, DefinitionError> {
    let mut commands = Vec::new();
    for (index, command) in wires.into_iter().enumerate() {
        if command.cmd.trim().is_empty() {
            return Err(DefinitionError::Command { index, message: "is empty".into() });
        }
        commands.push(command.cmd);
    }
    Ok(commands)
}

/// The `copyfiles`, each to an absolute path inside the image.
fn check_copy_files(wires: Vec<CopyFileWire>) -> Result<Vec<(String, String)>, DefinitionError> {
    let mut copy_files = Vec::new();
    for (index, copy) in wires.into_iter().enumerate() {
        if !copy.dest.starts_with('/') || copy.dest.split('/').any(|part| part == "..") {
            return Err(DefinitionError::CopyFile {
                index,
                message: format!("dest '{}' must be an absolute path inside the image", copy.dest),
            });
        }
        copy_files.push((copy.src, copy.dest));
    }
    Ok(copy_files)
}

/// Where the layer is published: a registry, S3 (with its bucket), Kiln, this machine.
fn check_publish(options: &mut OptionsWire) -> Result<Publish, DefinitionError> {
    let s3 = match (options.publish_s3.take(), options.s3_bucket.take()) {
        (Some(endpoint), Some(bucket)) => Some(S3Target { endpoint, bucket, prefix: options.s3_prefix.take().unwrap_or_default() }),
        (Some(_), None) => return Err(option("s3_bucket", "is required with publish_s3")),
        (None, Some(_)) => return Err(option("publish_s3", "is required with s3_bucket")),
        (None, None) => None,
    };
    Ok(Publish {
        registry: options.publish_registry.take(),
        push_options: std::mem::take(&mut options.registry_opts_push),
        s3,
        kiln_image: options.publish_kiln.take(),
        local: options.publish_local.unwrap_or(false),
    })
}

/// The outputs asked for, or those the publishing targets imply (as OpenCHAMI's builder
/// does), refusing a layer that goes nowhere.
fn check_outputs(outputs_wire: &[String], publish: &Publish) -> Result<BTreeSet<Output>, DefinitionError> {
    let mut outputs = BTreeSet::new();
    for output in outputs_wire {
        outputs.insert(match output.as_str() {
            "squashfs" => Output::Squashfs,
            "disk-raw" => Output::DiskRaw,
            "disk-qcow2" => Output::DiskQcow2,
            "oci" => Output::Oci,
            other => return Err(option("outputs", format!("'{other}' is not squashfs, disk-raw, disk-qcow2 or oci"))),
        });
    }
    if outputs.is_empty() {
        // As OpenCHAMI's builder does: a registry gets the layer, S3 (and Kiln) the
        // bootable SquashFS triple.
        if publish.registry.is_some() {
            outputs.insert(Output::Oci);
        }
        if publish.s3.is_some() || publish.kiln_image.is_some() || publish.local {
            outputs.insert(Output::Squashfs);
        }
    }
    if outputs.contains(&Output::Oci) && publish.registry.is_none() {
        return Err(option("publish_registry", "is required for the oci output"));
    }
    if outputs.is_empty() {
        return Err(option("publish_registry", "the layer goes nowhere: set publish_registry, publish_s3, publish_kiln or outputs"));
    }
    Ok(outputs)
}
