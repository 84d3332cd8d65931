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

#[derive(Debug, thiserror::Error)]
pub enum MediumError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running grub-mkrescue (apt-get install grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)")]
    Start {
        #[source]
        source: std::io::Error,
    },
    #[error("grub-mkrescue failed: {message}")]
    Tool { message: String },
}

/// Writes the medium of `contents` to `output`, whole or not at all: it is made beside
/// `output` and renamed into place.
pub fn build_boot_medium(contents: MediumContents<'_>, output: &Path) -> Result<(), MediumError> {
    let work = tempfile::tempdir().map_err(|source| MediumError::Write { path: std::env::temp_dir(), source })?;
    let tree = work.path().join("tree");
    let write = |path: &Path, bytes: &[u8]| -> Result<(), MediumError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| MediumError::Write { path: parent.to_owned(), source })?;
        }
        std::fs::write(path, bytes).map_err(|source| MediumError::Write { path: path.to_owned(), source })
    };
    let copy = |from: &Path, to: &Path| -> Result<(), MediumError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| MediumError::Write { path: parent.to_owned(), source })?;
        }
        std::fs::copy(from, to).map(|_| ()).map_err(|source| MediumError::Read { path: from.to_owned(), source })
    };
    let [initrd_path, archive_path] = kiln_boot::MEDIUM_INITRD_PATHS;
    let on_medium = |path: &str| tree.join(path.trim_start_matches('/'));
    copy(contents.kernel, &on_medium(kiln_boot::MEDIUM_KERNEL_PATH))?;
    copy(contents.initrd, &on_medium(initrd_path))?;
    write(&on_medium(archive_path), contents.boot_archive)?;
    write(&tree.join("boot/grub/grub.cfg"), contents.grub_config.as_bytes())?;
    let partial = output.with_extension("partial");
    let result = Command::new("grub-mkrescue")
        // No translations, fonts or themes: a medium that boots one kernel at once needs none,
        // and they are most of its size otherwise.
        .args(["--locales=", "--fonts=", "--themes=", "-o"])
        .arg(&partial)
        .arg(&tree)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MediumError::Start { source })
        .and_then(|output| {
            if output.status.success() {
                Ok(())
            } else {
                Err(MediumError::Tool { message: String::from_utf8_lossy(&output.stderr).trim().to_owned() })
            }
        })
        .and_then(|()| std::fs::rename(&partial, output).map_err(|source| MediumError::Write { path: output.to_owned(), source }));
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
