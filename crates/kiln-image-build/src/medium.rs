//! Boot media: an ISO 9660 image that boots by BIOS and by UEFI (El Torito, made by
//! `grub-mkrescue` from GRUB's i386-pc and x86_64-efi modules and `xorriso`) and holds a
//! kernel, its initramfs, an archive of files for one boot and the `grub.cfg` that boots
//! them (`kiln_boot::medium_grub_config`). A BMC inserts it as virtual media; nothing on it
//! comes from the network.
//!
//! GRUB rather than isolinux and a hand-made EFI image: one tool lays out both firmware
//! paths, and the configuration is the same GRUB language Kiln already writes and checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What goes on a medium.
#[derive(Debug, Clone, Copy)]
pub struct MediumContents<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// A `newc` archive loaded after `initrd` (`kiln_boot::medium::newc_archive`).
    pub boot_archive: &'a [u8],
    /// `kiln_boot::medium_grub_config`'s output.
    pub grub_config: &'a str,
}

/// GRUB's module directories `grub-mkrescue` lays out the two firmware paths from, and the
/// Debian package of each. Without one it would quietly make a medium for the other only.
const PLATFORMS: [(&str, &str); 2] = [("/usr/lib/grub/i386-pc", "grub-pc-bin"), ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin")];

#[derive(Debug, thiserror::Error)]
pub enum MediumError {
    #[error("no GRUB modules at {directory}, so the medium would not boot that way (apt-get install {package})")]
    NoPlatform { directory: &'static str, package: &'static str },
    #[error("making a working directory under {path}")]
    WorkDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copying {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running grub-mkrescue (apt-get install grub-common xorriso mtools)")]
    Start {
        #[source]
        source: std::io::Error,
    },
    #[error("grub-mkrescue failed ({status}): {message}")]
    Tool { status: std::process::ExitStatus, message: String },
    #[error("running xorriso (apt-get install xorriso)")]
    StartXorriso {
        #[source]
        source: std::io::Error,
    },
    #[error("xorriso failed ({status}): {message}")]
    Xorriso { status: std::process::ExitStatus, message: String },
}

/// The volume label cloud-init's NoCloud datasource looks for, on any block device (a CD
/// included), before it brings the network up.
pub const SEED_LABEL: &str = "cidata";

/// Writes a NoCloud seed to `output`, whole or not at all: an ISO 9660 filesystem labelled
/// [`SEED_LABEL`] holding `files` (`meta-data`, `user-data`, `network-config`, …) at its
/// root. It does not boot: firmware passes over it to the next device.
pub fn build_seed_medium(files: &[(&str, &[u8])], output: &Path) -> Result<(), MediumError> {
    let work = tempfile::tempdir().map_err(|source| MediumError::WorkDirectory { path: std::env::temp_dir(), source })?;
    for (name, contents) in files {
        let path = work.path().join(name);
        std::fs::write(&path, contents).map_err(|source| MediumError::Write { path: path.clone(), source })?;
    }
    // Rock Ridge and Joliet keep the names as they are (`meta-data`, not `META_DAT`).
    let mut xorriso = Command::new("xorriso");
    xorriso.args(["-as", "mkisofs", "-quiet", "-volid", SEED_LABEL, "-joliet", "-rock", "-o"]);
    write_whole(output, xorriso, work.path(), Tool::Xorriso)
}

/// The program that writes an ISO.
#[derive(Clone, Copy)]
enum Tool {
    GrubMkrescue,
    Xorriso,
}

/// Runs `command` with a temporary file beside `output` and then `tree` as its last
/// arguments, and renames that file into place once synced: `output` is whole or absent.
fn write_whole(output: &Path, mut command: Command, tree: &Path, tool: Tool) -> Result<(), MediumError> {
    let directory = output.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let partial = tempfile::Builder::new()
        .prefix(".medium-")
        .tempfile_in(directory)
        .map_err(|source| MediumError::Write { path: directory.to_owned(), source })?;
    let result = command.arg(partial.path()).arg(tree).stdin(Stdio::null()).output().map_err(|source| match tool {
        Tool::GrubMkrescue => MediumError::Start { source },
        Tool::Xorriso => MediumError::StartXorriso { source },
    })?;
    if !result.status.success() {
        let (status, message) = (result.status, String::from_utf8_lossy(&result.stderr).trim().to_owned());
        return Err(match tool {
            Tool::GrubMkrescue => MediumError::Tool { status, message },
            Tool::Xorriso => MediumError::Xorriso { status, message },
        });
    }
    partial.as_file().sync_all().map_err(|source| MediumError::Write { path: partial.path().to_owned(), source })?;
    partial.persist(output).map_err(|error| MediumError::Write { path: output.to_owned(), source: error.error })?;
    Ok(())
}

/// Writes the medium of `contents` to `output`, whole or not at all: it is made in a
/// temporary file beside `output`, synced, and renamed into place.
pub fn build_boot_medium(contents: MediumContents<'_>, output: &Path) -> Result<(), MediumError> {
    for (directory, package) in PLATFORMS {
        if !Path::new(directory).is_dir() {
            return Err(MediumError::NoPlatform { directory, package });
        }
    }
    let work = tempfile::tempdir().map_err(|source| MediumError::WorkDirectory { path: std::env::temp_dir(), source })?;
    let tree = work.path().join("tree");
    let make_parent = |path: &Path| -> Result<(), MediumError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|source| MediumError::Write { path: parent.to_owned(), source })
    };
    let write = |path: &Path, bytes: &[u8]| -> Result<(), MediumError> {
        make_parent(path)?;
        std::fs::write(path, bytes).map_err(|source| MediumError::Write { path: path.to_owned(), source })
    };
    let copy = |from: &Path, to: &Path| -> Result<(), MediumError> {
        make_parent(to)?;
        std::fs::copy(from, to).map(|_| ()).map_err(|source| MediumError::Copy { from: from.to_owned(), to: to.to_owned(), source })
    };
    let [initrd_path, archive_path] = kiln_boot::MEDIUM_INITRD_PATHS;
    let on_medium = |path: &str| tree.join(path.trim_start_matches('/'));
    copy(contents.kernel, &on_medium(kiln_boot::MEDIUM_KERNEL_PATH))?;
    copy(contents.initrd, &on_medium(initrd_path))?;
    write(&on_medium(archive_path), contents.boot_archive)?;
    write(&tree.join("boot/grub/grub.cfg"), contents.grub_config.as_bytes())?;
    let mut grub_mkrescue = Command::new("grub-mkrescue");
    // No translations, fonts or themes: a medium that boots one kernel at once needs none,
    // and they are most of its size otherwise.
    grub_mkrescue.args(["--locales=", "--fonts=", "--themes=", "-o"]);
    write_whole(output, grub_mkrescue, &tree, Tool::GrubMkrescue)
}
