//! diskimage-builder elements: directories named after the element, holding hook phase
//! directories (`root.d`, `install.d`, …) of executable scripts, `environment.d` snippets,
//! and `element-deps` / `element-provides` lists. Elements are looked up along an
//! `ELEMENTS_PATH` (the first directory that has one wins), their dependencies expanded
//! transitively, and the hooks of every element in the build merged per phase and run in
//! the lexical order of their file names, as diskimage-builder does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The hook phases, in the order a build runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Phase {
    /// Create or adapt the initial root filesystem. Outside the chroot.
    Root,
    /// Pull in data from the host for later hooks. Outside the chroot.
    ExtraData,
    /// Before packages are installed (repositories). In the chroot.
    PreInstall,
    /// Packages and image-specific work. In the chroot.
    Install,
    /// After installation (clean caches, disable services). In the chroot.
    PostInstall,
    /// Customise the block device (partitions). Outside the chroot.
    BlockDevice,
    /// Final tuning inside the finished filesystem (bootloader). In the chroot.
    Finalise,
    /// Clean up the root filesystem content. Outside the chroot.
    Cleanup,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::BlockDevice,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The hook point's name, as in `break=before-install`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Root => "root",
            Phase::ExtraData => "extra-data",
            Phase::PreInstall => "pre-install",
            Phase::Install => "install",
            Phase::PostInstall => "post-install",
            Phase::BlockDevice => "block-device",
            Phase::Finalise => "finalise",
            Phase::Cleanup => "cleanup",
        }
    }

    /// The directory an element keeps this phase's hooks in.
    pub fn directory(self) -> String {
        format!("{}.d", self.name())
    }

    /// Whether the hooks run inside the image's chroot.
    pub fn in_chroot(self) -> bool {
        matches!(self, Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise)
    }
}

/// One element as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub path: PathBuf,
    pub deps: Vec<String>,
    pub provides: Vec<String>,
    /// Executable hook scripts per phase, by file name.
    pub hooks: BTreeMap<Phase, Vec<String>>,
    /// `environment.d` snippets, by file name.
    pub environment: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    #[error("element '{name}' is not in ELEMENTS_PATH ({searched})")]
    NotFound { name: String, searched: String },
    #[error("reading element '{name}' at {}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("element '{name}': {message}")]
    Invalid { name: String, message: String },
    #[error("'{provided}' is provided by both '{first}' and '{second}'")]
    ProvidedTwice { provided: String, first: String, second: String },
    #[error("{phase}.d hook '{hook}' is in both '{first}' and '{second}': rename one, only one can run")]
    HookClash { phase: &'static str, hook: String, first: String, second: String },
    #[error("'{text}' is not a break point (before-HOOK, after-HOOK or after-error, HOOK one of {hooks})")]
    BadBreak { text: String, hooks: String },
}

fn read_list(path: &Path) -> Result<Vec<String>, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

fn read_scripts(directory: &Path, executable_only: bool) -> Result<Vec<String>, std::io::Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let metadata = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // run-parts skips hidden files and editor leftovers; so do we.
        if !metadata.is_file() || name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        if executable_only && metadata.permissions().mode() & 0o111 == 0 {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn read_element(name: &str, path: &Path) -> Result<Element, ElementError> {
    let read_error = |source: std::io::Error| ElementError::Read { name: name.to_owned(), path: path.to_owned(), source };
    let mut hooks = BTreeMap::new();
    for phase in Phase::ALL {
        let scripts = read_scripts(&path.join(phase.directory()), true).map_err(read_error)?;
        if !scripts.is_empty() {
            hooks.insert(phase, scripts);
        }
    }
    Ok(Element {
        name: name.to_owned(),
        path: path.to_owned(),
        deps: read_list(&path.join("element-deps")).map_err(read_error)?,
        provides: read_list(&path.join("element-provides")).map_err(read_error)?,
        environment: read_scripts(&path.join("environment.d"), false).map_err(read_error)?,
        hooks,
    })
}

/// Finds `requested` and everything they depend on along `elements_path` (the first
/// directory holding an element wins), reading each once. A dependency that names no
/// directory must be provided (`element-provides`) by one of the elements found, as an
/// operating-system element provides `operating-system`.
pub fn load_elements(elements_path: &[PathBuf], requested: &[String]) -> Result<BTreeMap<String, Element>, ElementError> {
    let searched = elements_path.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(":");
    let mut loaded = BTreeMap::new();
    let mut virtual_names = BTreeSet::new();
    let mut queue: Vec<String> = requested.to_vec();
    while let Some(name) = queue.pop() {
        if loaded.contains_key(&name) || virtual_names.contains(&name) {
            continue;
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(ElementError::Invalid { name, message: "is not an element name".to_owned() });
        }
        match elements_path.iter().map(|directory| directory.join(&name)).find(|path| path.is_dir()) {
            Some(path) => {
                let element = read_element(&name, &path)?;
                queue.extend(element.deps.iter().cloned());
                loaded.insert(name, element);
            }
            None if requested.contains(&name) => return Err(ElementError::NotFound { name, searched }),
            None => {
                virtual_names.insert(name);
            }
        }
    }
    for name in virtual_names {
        if !loaded.values().any(|element: &Element| element.provides.contains(&name)) {
            return Err(ElementError::NotFound { name, searched });
        }
    }
    Ok(loaded)
}

/// The elements of a build: the requested ones and their dependencies, transitively, in
/// name order (diskimage-builder's hooks run by script name, not element order). A
/// dependency on a name another element provides is satisfied by that element.
pub fn resolve(loaded: &BTreeMap<String, Element>, requested: &[String]) -> Result<Vec<String>, ElementError> {
    let mut providers: BTreeMap<&str, &str> = BTreeMap::new();
    for element in loaded.values() {
        for provided in &element.provides {
            if let Some(first) = providers.insert(provided, &element.name) {
                return Err(ElementError::ProvidedTwice {
                    provided: provided.clone(),
                    first: first.to_owned(),
                    second: element.name.clone(),
                });
            }
        }
    }
    let mut chosen = BTreeSet::new();
    let mut queue: Vec<&str> = requested.iter().map(String::as_str).collect();
    while let Some(name) = queue.pop() {
        if !chosen.insert(name.to_owned()) {
            continue;
        }
        if let Some(element) = loaded.get(name) {
            queue.extend(element.deps.iter().map(|dep| providers.get(dep.as_str()).copied().unwrap_or(dep.as_str())));
        }
    }
    // A provided name stands for its provider, not for an element of its own.
    Ok(chosen.into_iter().filter(|name| loaded.contains_key(name)).collect())
}

/// One hook to run: which element's script, in which phase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HookPlan {
    pub phase: Phase,
    pub element: String,
    pub script: String,
    pub in_chroot: bool,
}

/// Every hook of the build's elements, in run order: by phase, then by script name across
/// elements. Two elements with a script of the same name in one phase are refused:
/// diskimage-builder would let one silently overwrite the other.
pub fn plan_hooks(loaded: &BTreeMap<String, Element>, elements: &[String]) -> Result<Vec<HookPlan>, ElementError> {
    let mut plan = Vec::new();
    for phase in Phase::ALL {
        let mut by_script: BTreeMap<&str, &str> = BTreeMap::new();
        for name in elements {
            let Some(element) = loaded.get(name) else { continue };
            for script in element.hooks.get(&phase).into_iter().flatten() {
                if let Some(first) = by_script.insert(script, &element.name) {
                    return Err(ElementError::HookClash {
                        phase: phase.name(),
                        hook: script.clone(),
                        first: first.to_owned(),
                        second: element.name.clone(),
                    });
                }
            }
        }
        plan.extend(by_script.into_iter().map(|(script, element)| HookPlan {
            phase,
            element: element.to_owned(),
            script: script.to_owned(),
            in_chroot: phase.in_chroot(),
        }));
    }
    Ok(plan)
}

/// Where a build stops for debugging: `break=before-install,after-error`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakPoints {
    pub before: BTreeSet<Phase>,
    pub after: BTreeSet<Phase>,
    pub after_error: bool,
}

impl BreakPoints {
    pub fn parse(text: &str) -> Result<BreakPoints, ElementError> {
        let mut points = BreakPoints::default();
        let hooks = || Phase::ALL.map(Phase::name).join(", ");
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            if part == "after-error" {
                points.after_error = true;
                continue;
            }
            let (when, hook) = part.split_once('-').ok_or_else(|| ElementError::BadBreak { text: part.to_owned(), hooks: hooks() })?;
            let phase = Phase::ALL
                .into_iter()
                .find(|phase| phase.name() == hook)
                .ok_or_else(|| ElementError::BadBreak { text: part.to_owned(), hooks: hooks() })?;
            match when {
                "before" => points.before.insert(phase),
                "after" => points.after.insert(phase),
                _ => return Err(ElementError::BadBreak { text: part.to_owned(), hooks: hooks() }),
            };
        }
        Ok(points)
    }
}

/// The SHA-256 of everything in an element's directory (names, modes and bytes, in name
/// order): a changed hook is a changed layer.
pub fn element_digest(element: &Element) -> Result<String, ElementError> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let read_error = |path: &Path, source: std::io::Error| ElementError::Read { name: element.name.clone(), path: path.to_owned(), source };
    let mut hasher = sha2::Sha256::new();
    let mut pending = vec![element.path.clone()];
    let mut files = Vec::new();
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).map_err(|error| read_error(&directory, error))? {
            let path = entry.map_err(|error| read_error(&directory, error))?.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|error| read_error(&path, error))?;
        let mode = std::fs::metadata(&path).map_err(|error| read_error(&path, error))?.permissions().mode();
        let relative = path.strip_prefix(&element.path).unwrap_or(&path);
        hasher.update(format!("{}\0{mode:o}\0{}\0", relative.display(), bytes.len()).as_bytes());
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The environment hooks get: only `DIB_*` variables (and `ELEMENTS_PATH`) from the host,
/// as diskimage-builder sanitises it, plus what the build sets.
pub fn hook_environment<'a>(host: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    host.into_iter()
        .filter(|(name, _)| name.starts_with("DIB_") || *name == "ELEMENTS_PATH")
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests;
