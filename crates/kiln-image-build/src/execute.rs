//! Carrying out a [`BuildPlan`]: the layer is built in a scratch directory next to the cache
//! and moved into the cache whole under its key, so a layer in the cache is always complete
//! and an unchanged layer is never built twice. Chroot mounts are held by [`ChrootMounts`]
//! and gone when a step fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use std::collections::BTreeMap;

use crate::chroot::{ChrootMounts, MountError};
use crate::definition::Output;
use crate::elements::{BreakPoints, Element, HookPlan};
use crate::hooks::{HookError, run_hooks};
use crate::plan::{BuildPlan, DOWNLOADS, ROOT, Step};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("step {number} ({step}) failed: {message}")]
    StepFailed { number: usize, step: String, message: String },
    #[error("step {number} ({step}) could not start")]
    StepStart {
        number: usize,
        step: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("the parent {parent} is needed but was not provided")]
    NoParent { parent: String },
    #[error("the plan runs elements but none were loaded")]
    ElementsNotLoaded,
    #[error("a disk image needs a kernel and its initramfs under /boot: add linux-image-amd64 (or the distribution's kernel) to packages")]
    DiskNeedsKernel,
    #[error("--offline: {what} is not in the build cache; build once with the network first")]
    NotInCache { what: String },
    #[error("{tool} failed: {message}")]
    ToolFailed { tool: &'static str, message: String },
}

pub(crate) fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_owned();
    move |error| BuildError::Io { operation, path, error }
}

/// Where layers are cached and where the build may write.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Layers by key: `<cache>/layers/<key>/` holds `root/`.
    pub cache_dir: PathBuf,
    /// The directory `copyfiles` sources are relative to (the definition's).
    pub definition_dir: PathBuf,
    /// The elements a `RunElements` step runs.
    pub elements: Option<ElementRun>,
}

/// diskimage-builder elements, loaded and ordered, with what their hooks get.
#[derive(Debug, Clone)]
pub struct ElementRun {
    pub loaded: BTreeMap<String, Element>,
    pub hooks: Vec<HookPlan>,
    /// `DIB_*` variables from the host (see [`crate::elements::hook_environment`]).
    pub environment: BTreeMap<String, String>,
    pub breaks: BreakPoints,
}

/// At a `break=` point: a shell in the root when there is a terminal to type in (the
/// build goes on when it exits), else a stop with the root's path to look at.
fn break_into_shell(point: &str, root: &Path, log: &mut dyn Write) -> bool {
    let _ = writeln!(log, "kiln: break {point}: the root is {}", root.display());
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return false;
    }
    eprintln!("kiln: break {point}: a shell in {}; exit it to go on", root.display());
    let shell = if root.join("bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    Command::new("chroot").arg(root).arg(shell).status().is_ok_and(|status| status.success())
}

/// The unpacked root of the layer a build starts from when its parent is not scratch (its
/// digest is in the plan's key).
#[derive(Debug, Clone)]
pub struct ParentRoot {
    pub root: PathBuf,
}

/// A layer in the cache.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub key: String,
    pub root: PathBuf,
    /// Whether it came from the cache rather than being built now.
    pub reused: bool,
    pub seconds: f64,
}

/// Builds the plan's layer, or finds it in the cache. Progress lines go to `log`, with the
/// output of every command.
pub fn build_layer(
    plan: &BuildPlan,
    parent: Option<&ParentRoot>,
    settings: &BuildSettings,
    log: &mut (dyn Write + Send),
) -> Result<BuiltLayer, BuildError> {
    let started = Instant::now();
    let layers = settings.cache_dir.join("layers");
    let done = layers.join(&plan.layer_key);
    if done.join("root").is_dir() {
        let _ = writeln!(log, "kiln: layer {} is cached: nothing to build", &plan.layer_key[..12]);
        return Ok(BuiltLayer {
            key: plan.layer_key.clone(),
            root: done.join("root"),
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let partial = layers.join(format!("{}.partial", plan.layer_key));
    if partial.exists() {
        // What an interrupted build left: never half-used.
        std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
    }
    let root = partial.join("root");
    std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
    // On a thread of its own in a mount namespace of its own: see `private_mount_namespace`.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(error) = crate::chroot::private_mount_namespace() {
                    let _ = writeln!(log, "kiln: no private mount namespace ({error}): mounts are made in the host's");
                }
                run_layer_steps(plan, parent, settings, &root, &mut *log)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &done).map_err(io("moving the layer into the cache at", &done))?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = writeln!(log, "kiln: layer {} built in {seconds:.1} s", &plan.layer_key[..12]);
    Ok(BuiltLayer { key: plan.layer_key.clone(), root: done.join("root"), reused: false, seconds })
}

fn substitute(text: &str, root: &Path, downloads: &Path) -> String {
    text.replace(ROOT, &root.display().to_string()).replace(DOWNLOADS, &downloads.display().to_string())
}

/// Runs `command` with its output into `log`. Its exit status and the last lines of its errors
/// when it fails; an I/O error when it could not start.
fn run_into_log(command: &mut Command, log: &mut dyn Write) -> std::io::Result<Result<(), String>> {
    const TAIL_LINES: usize = 5;
    let output = command.stdin(Stdio::null()).output()?;
    let _ = log.write_all(&output.stdout);
    let _ = log.write_all(&output.stderr);
    if output.status.success() {
        return Ok(Ok(()));
    }
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().collect();
    Ok(Err(format!("{}: {}", output.status, lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | "))))
}

/// Runs a plan step's command (see [`run_into_log`]).
fn run_logged(number: usize, step: &Step, command: &mut Command, log: &mut dyn Write) -> Result<(), BuildError> {
    run_into_log(command, log)
        .map_err(|error| BuildError::StepStart { number, step: step.to_string(), error })?
        .map_err(|message| BuildError::StepFailed { number, step: step.to_string(), message })
}

fn run_layer_steps(
    plan: &BuildPlan,
    parent: Option<&ParentRoot>,
    settings: &BuildSettings,
    root: &Path,
    log: &mut dyn Write,
) -> Result<(), BuildError> {
    let mut mounts: Option<ChrootMounts> = None;
    let downloads = settings.cache_dir.join("downloads");
    // One directory of .deb files serves debootstrap and apt alike.
    let packages = downloads.join("packages");
    for directory in [packages.join("partial"), downloads.join("bootstrap"), downloads.join("apt-lists")] {
        std::fs::create_dir_all(&directory).map_err(io("creating", &directory))?;
    }
    for (index, step) in plan.layer.iter().enumerate() {
        let number = index + 1;
        let _ = writeln!(log, "kiln: [{number}/{}] {step}", plan.layer.len());
        match step {
            Step::Host { argv, .. } => {
                let argv: Vec<String> = argv.iter().map(|arg| substitute(arg, root, &downloads)).collect();
                run_logged(number, step, Command::new(&argv[0]).args(&argv[1..]), log)?;
            }
            Step::UnpackParent { parent: crate::definition::Parent::Scratch } => {}
            Step::UnpackParent { .. } => {
                let parent = parent.ok_or_else(|| BuildError::NoParent { parent: step.to_string() })?;
                // Copies share blocks where the filesystem can (reflinks); hard links would let
                // the child's package manager change the parent layer.
                let mut command = Command::new("cp");
                command.args(["-a", "--reflink=auto"]).arg(format!("{}/.", parent.root.display())).arg(root);
                run_logged(number, step, &mut command, log)?;
            }
            Step::BindMounts { package_cache } => {
                // The chroot resolves names as the host does.
                let resolv = root.join("etc/resolv.conf");
                if std::fs::symlink_metadata(&resolv).is_ok() {
                    std::fs::remove_file(&resolv).map_err(io("replacing", &resolv))?;
                }
                std::fs::create_dir_all(root.join("etc")).map_err(io("creating", &root.join("etc")))?;
                std::fs::copy("/etc/resolv.conf", &resolv).map_err(io("writing", &resolv))?;
                let mut bound = ChrootMounts::bind(root)?;
                if let Some(directory) = package_cache {
                    bound.bind_directory(&packages, &root.join(directory.trim_start_matches('/')))?;
                }
                mounts = Some(bound);
            }
            Step::WriteFile { path, content } => {
                let target = root.join(path.trim_start_matches('/'));
                if let Some(directory) = target.parent() {
                    std::fs::create_dir_all(directory).map_err(io("creating", directory))?;
                }
                std::fs::write(&target, content).map_err(io("writing", &target))?;
            }
            Step::CopyIn { source, destination } => {
                let from = settings.definition_dir.join(source);
                let target = root.join(destination.trim_start_matches('/'));
                if let Some(directory) = target.parent() {
                    std::fs::create_dir_all(directory).map_err(io("creating", directory))?;
                }
                std::fs::copy(&from, &target).map_err(io("copying", &from))?;
            }
            Step::Chroot { command, .. } => run_logged(number, step, &mut in_chroot(root, command), log)?,
            Step::AptLists { from_cache } => {
                let sources = sources_digest(root)?;
                let kept_lists = downloads.join("apt-lists");
                let root_lists = root.join("var/lib/apt/lists");
                if *from_cache {
                    restore_lists(&kept_lists, &sources, &root_lists)?;
                } else {
                    run_logged(number, step, &mut in_chroot(root, "apt-get update"), log)?;
                    keep_lists(&root_lists, &kept_lists, &sources)?;
                }
            }
            Step::UnbindMounts => mounts = None,
            Step::RunElements { .. } => {
                let run = settings.elements.as_ref().ok_or(BuildError::ElementsNotLoaded)?;
                let mut note = Vec::new();
                let result = run_hooks(
                    &run.hooks,
                    &run.loaded,
                    root,
                    &run.environment,
                    &run.breaks,
                    &mut |point, root| break_into_shell(point, root, &mut note),
                    log,
                );
                let _ = log.write_all(&note);
                result?;
            }
            Step::Make { .. } | Step::Publish { .. } => {}
        }
    }
    drop(mounts);
    Ok(())
}

/// A shell command run inside the root, with a plain environment rather than the host's.
fn in_chroot(root: &Path, command: &str) -> Command {
    let mut chroot = Command::new("chroot");
    chroot
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .arg(root)
        .args(["/bin/sh", "-c", command]);
    chroot
}

/// SHA-256 of the root's apt sources (`/etc/apt/sources.list` and `sources.list.d/`, by name
/// and content): the lists `apt-get update` fetches are a function of them.
fn sources_digest(root: &Path) -> Result<String, BuildError> {
    use sha2::Digest as _;
    let etc_apt = root.join("etc/apt");
    let mut files = vec![etc_apt.join("sources.list")];
    let listed = etc_apt.join("sources.list.d");
    if let Ok(entries) = std::fs::read_dir(&listed) {
        files.extend(entries.flatten().map(|entry| entry.path()));
    }
    files.sort();
    let mut hasher = sha2::Sha256::new();
    for file in files.iter().filter(|file| file.is_file()) {
        let content = std::fs::read(file).map_err(io("reading", file))?;
        hasher.update(file.strip_prefix(root).unwrap_or(file).to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(&content);
        hasher.update([0]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies apt's list files (not its lock, not `partial/`) from one directory to another.
/// Keeps a copy of apt's lists in `kept_lists/<sources>`, replacing the one there.
///
/// The copy is made aside, then swapped in under the set's lock held exclusively, while
/// [`restore_lists`] holds it shared: builds sharing a cache never read half a set, nor a
/// mix of two.
fn keep_lists(root_lists: &Path, kept_lists: &Path, sources: &str) -> Result<(), BuildError> {
    let kept = kept_lists.join(sources);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    let fresh = kept_lists.join(format!("{sources}.partial-{}-{stamp}", std::process::id()));
    copy_lists(root_lists, &fresh)?;
    let _lock = lock_lists(kept_lists, sources, libc::LOCK_EX)?;
    let _ = std::fs::remove_dir_all(&kept);
    std::fs::rename(&fresh, &kept).map_err(io("keeping the package lists at", &kept))
}

/// Puts the lists [`keep_lists`] kept for these sources into a root (an offline build).
fn restore_lists(kept_lists: &Path, sources: &str, root_lists: &Path) -> Result<(), BuildError> {
    let kept = kept_lists.join(sources);
    let _lock = lock_lists(kept_lists, sources, libc::LOCK_SH)?;
    if !kept.is_dir() {
        return Err(BuildError::NotInCache {
            what: format!("apt's package lists for these sources ({})", &sources[..12.min(sources.len())]),
        });
    }
    copy_lists(&kept, root_lists)
}

/// The lock of one set of kept lists, held until the returned file is dropped.
fn lock_lists(kept_lists: &Path, sources: &str, operation: libc::c_int) -> Result<std::fs::File, BuildError> {
    use std::os::fd::AsRawFd as _;
    let path = kept_lists.join(format!("{sources}.lock"));
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("opening", &path))?;
    // SAFETY: flock takes a descriptor, open for the call, and a flag.
    while unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(io("locking", &path)(error));
        }
    }
    Ok(file)
}

fn copy_lists(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))?.flatten() {
        let path = entry.path();
        if entry.file_name() == "lock" || !path.is_file() {
            continue;
        }
        std::fs::copy(&path, to.join(entry.file_name())).map_err(io("copying", &path))?;
    }
    Ok(())
}

/// The OpenCHAMI triple: `<name>.squashfs` (zstd), and the newest kernel and its initramfs
/// from the root's `/boot`, written to `output_dir`. A root without a kernel (a container-like
/// base) gives the SquashFS alone: nodes boot it live with the deploy ramdisk's kernel.
#[derive(Debug, Clone)]
pub struct SquashfsTriple {
    pub root: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// Makes the SquashFS triple of a built layer (mksquashfs, zstd, 1 MiB blocks, all cores).
pub fn make_squashfs(layer_root: &Path, name: &str, output_dir: &Path, log: &mut dyn Write) -> Result<SquashfsTriple, BuildError> {
    std::fs::create_dir_all(output_dir).map_err(io("creating", output_dir))?;
    let image = output_dir.join(format!("{name}.squashfs"));
    let _ = std::fs::remove_file(&image);
    let step = Step::Make { output: Output::Squashfs };
    let mut command = Command::new("mksquashfs");
    command.arg(layer_root).arg(&image).args(["-comp", "zstd", "-b", "1M", "-noappend", "-quiet", "-no-progress"]);
    // The same tree always packs to the same bytes, so a rebuilt parent keeps its digest and
    // its children their cache keys. /boot stays in: a child built on this root needs it.
    command.args(["-mkfs-time", "0"]);
    run_logged(1, &step, &mut command, log)?;
    let Some((boot_kernel, boot_initrd)) = newest_kernel(layer_root) else {
        let _ = writeln!(log, "kiln: no kernel under /boot: the SquashFS root alone");
        return Ok(SquashfsTriple { root: image, kernel: None, initrd: None });
    };
    let copy_out = |source: &Path| -> Result<PathBuf, BuildError> {
        let target = output_dir.join(source.file_name().unwrap_or_default());
        std::fs::copy(source, &target).map_err(io("copying", source))?;
        Ok(target)
    };
    let kernel = copy_out(&boot_kernel)?;
    let initrd = boot_initrd.as_deref().map(copy_out).transpose()?;
    Ok(SquashfsTriple { root: image, kernel: Some(kernel), initrd })
}

/// The newest `vmlinuz-*` under the root's `/boot` (by version: `6.10` after `6.9`), and
/// its initramfs if there is one.
pub(crate) fn newest_kernel(root: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let boot = root.join("boot");
    let version = std::fs::read_dir(&boot)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_owned))
        .max_by_key(|version| kiln_types::image::kernel_version_key(version))?;
    let initrd = kiln_types::image::initramfs_names(&version).into_iter().map(|name| boot.join(name)).find(|path| path.exists());
    Some((boot.join(format!("vmlinuz-{version}")), initrd))
}

/// Runs a tool, its output into `log`; a failure carries the last lines of its errors.
pub(crate) fn run_tool(tool: &'static str, command: &mut Command, log: &mut dyn Write) -> Result<(), BuildError> {
    run_into_log(command, log)
        .map_err(|error| BuildError::Io { operation: "running", path: PathBuf::from(tool), error })?
        .map_err(|message| BuildError::ToolFailed { tool, message })
}

#[cfg(test)]
mod tests {
    use super::{copy_lists, keep_lists, newest_kernel, restore_lists, sources_digest};

    #[test]
    fn the_newest_kernel_is_the_highest_version_with_its_own_initramfs() {
        let root = tempfile::tempdir().unwrap();
        let boot = root.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        for name in ["vmlinuz-6.9.0-1-amd64", "initrd.img-6.9.0-1-amd64", "vmlinuz-6.10.0-1-amd64", "initramfs-6.10.0-1-amd64.img"] {
            std::fs::write(boot.join(name), name).unwrap();
        }
        let (kernel, initrd) = newest_kernel(root.path()).unwrap();
        assert_eq!(kernel, boot.join("vmlinuz-6.10.0-1-amd64"), "6.10 after 6.9");
        assert_eq!(initrd, Some(boot.join("initramfs-6.10.0-1-amd64.img")));
        std::fs::write(boot.join("vmlinuz-6.11.0-1-amd64"), "").unwrap();
        assert_eq!(newest_kernel(root.path()).unwrap().1, None, "no initramfs of its own: none, not another's");
    }

    #[test]
    fn apt_lists_are_kept_by_the_digest_of_the_sources_they_came_from() {
        let root = tempfile::tempdir().unwrap();
        let etc_apt = root.path().join("etc/apt");
        std::fs::create_dir_all(etc_apt.join("sources.list.d")).unwrap();
        std::fs::write(etc_apt.join("sources.list"), "deb http://deb.debian.org/debian bookworm main\n").unwrap();
        let debian = sources_digest(root.path()).unwrap();
        assert_eq!(debian, sources_digest(root.path()).unwrap());
        std::fs::write(etc_apt.join("sources.list.d/extra.list"), "deb http://deb.debian.org/debian-security bookworm-security main\n")
            .unwrap();
        let with_security = sources_digest(root.path()).unwrap();
        assert_ne!(debian, with_security, "another repository, other lists");
        std::fs::rename(etc_apt.join("sources.list.d/extra.list"), etc_apt.join("sources.list.d/other.list")).unwrap();
        assert_ne!(with_security, sources_digest(root.path()).unwrap(), "file names count: apt reads them in order");

        // The lists, not apt's lock or its half-fetched files.
        let lists = root.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(lists.join("partial")).unwrap();
        std::fs::write(lists.join("deb.debian.org_debian_dists_bookworm_InRelease"), "release").unwrap();
        std::fs::write(lists.join("lock"), "").unwrap();
        std::fs::write(lists.join("partial/half"), "half").unwrap();
        let kept = root.path().join("kept");
        copy_lists(&lists, &kept).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&kept).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["deb.debian.org_debian_dists_bookworm_InRelease"]);
    }

    #[test]
    fn builds_sharing_a_cache_never_restore_half_a_set_of_lists_or_a_mix() {
        let cache = tempfile::tempdir().unwrap();
        let kept_lists = cache.path().join("apt-lists");
        std::fs::create_dir_all(&kept_lists).unwrap();
        let names = ["a_InRelease", "a_main_binary-amd64_Packages", "b_InRelease", "b_main_binary-amd64_Packages"];
        let generation = |number: usize| {
            let lists = cache.path().join(format!("root-{number}"));
            std::fs::create_dir_all(&lists).unwrap();
            for name in names {
                std::fs::write(lists.join(name), number.to_string().repeat(4096)).unwrap();
            }
            lists
        };
        keep_lists(&generation(0), &kept_lists, "sources").unwrap();
        std::thread::scope(|scope| {
            // One build refreshes the lists again and again...
            scope.spawn(|| {
                for number in 1..=40 {
                    keep_lists(&generation(number), &kept_lists, "sources").unwrap();
                }
            });
            // ...while another, offline, restores them: always a whole set, of one generation.
            for attempt in 0..40 {
                let restored = cache.path().join(format!("restored-{attempt}"));
                restore_lists(&kept_lists, "sources", &restored).unwrap();
                let contents: Vec<String> = names.iter().map(|name| std::fs::read_to_string(restored.join(name)).unwrap()).collect();
                assert!(contents.iter().all(|content| *content == contents[0]), "attempt {attempt} mixed two sets");
            }
        });
        let error = restore_lists(&kept_lists, "other-sources", &cache.path().join("none")).unwrap_err();
        assert!(error.to_string().contains("apt's package lists for these sources"), "{error}");
    }
}
