//! Taking the kernel and initramfs out of a SquashFS root image, as diskimage-builder's
//! `disk-image-get-kernel` does for its images: the newest `/boot/vmlinuz-<version>` (or what
//! `/vmlinuz` points at) and the initramfs of the same version.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use kiln_types::image::{initramfs_names, kernel_version_key};

use crate::SpoolFile;

#[derive(Debug, thiserror::Error)]
pub enum GetKernelError {
    #[error("opening the SquashFS image")]
    Open(#[source] std::io::Error),
    #[error("reading the SquashFS image")]
    Squashfs(#[source] backhand::BackhandError),
    #[error("reading {path} from the SquashFS image")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the root image has no kernel (looked for /vmlinuz and /boot/vmlinuz-*)")]
    NoKernel,
    #[error(
        "the root image has no initramfs for kernel {version} (looked for /boot/initrd.img-{version} and /boot/initramfs-{version}.img)"
    )]
    NoInitramfs { version: String },
    #[error("writing the extracted file")]
    Spool(#[source] std::io::Error),
}

/// Where the two files were found in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: String,
    pub initramfs: String,
}

/// Picks the kernel and initramfs among the image's paths. `links` maps symbolic links to
/// their targets (absolute or relative to the link's directory). A pure function.
pub fn choose_boot_files(files: &[String], links: &BTreeMap<String, String>) -> Result<BootFiles, GetKernelError> {
    let resolve = |path: &str| -> Option<String> {
        let target = links.get(path)?;
        let absolute =
            if target.starts_with('/') { PathBuf::from(target) } else { Path::new(path).parent().unwrap_or(Path::new("/")).join(target) };
        Some(absolute.to_string_lossy().into_owned())
    };
    let kernel = resolve("/vmlinuz").filter(|target| files.contains(target)).or_else(|| {
        files
            .iter()
            .filter(|path| path.starts_with("/boot/vmlinuz-") && !path.ends_with(".old"))
            .max_by_key(|path| kernel_version_key(path.trim_start_matches("/boot/vmlinuz-")))
            .cloned()
    });
    let kernel = kernel.ok_or(GetKernelError::NoKernel)?;
    let version = kernel.rsplit('/').next().unwrap_or_default().trim_start_matches("vmlinuz-").trim_start_matches("vmlinuz").to_owned();
    let linked = resolve("/initrd.img").filter(|_| kernel == resolve("/vmlinuz").unwrap_or_default());
    let named = initramfs_names(&version).map(|name| format!("/boot/{name}"));
    let initramfs = linked.into_iter().chain(named).find(|path| files.contains(path)).ok_or(GetKernelError::NoInitramfs { version })?;
    Ok(BootFiles { kernel, initramfs })
}

/// Reads the SquashFS image at `image` and copies its kernel and initramfs into the two spool
/// files, returning where they were found.
pub fn extract_boot_files(image: &Path, kernel: &mut SpoolFile, initramfs: &mut SpoolFile) -> Result<BootFiles, GetKernelError> {
    let file = std::fs::File::open(image).map_err(GetKernelError::Open)?;
    let filesystem = backhand::FilesystemReader::from_reader(std::io::BufReader::new(file)).map_err(GetKernelError::Squashfs)?;
    let mut files = Vec::new();
    let mut links = BTreeMap::new();
    for node in filesystem.files() {
        let path = node.fullpath.to_string_lossy().into_owned();
        match &node.inner {
            backhand::InnerNode::File(_) => files.push(path),
            backhand::InnerNode::Symlink(link) => {
                links.insert(path, link.link.to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
    let chosen = choose_boot_files(&files, &links)?;
    for (wanted, spool) in [(&chosen.kernel, kernel), (&chosen.initramfs, initramfs)] {
        let node = filesystem.files().find(|node| node.fullpath.to_string_lossy() == wanted.as_str()).expect("chosen among the files");
        let backhand::InnerNode::File(file) = &node.inner else { unreachable!("chosen among regular files") };
        let mut reader = filesystem.file(file).reader();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buffer).map_err(|source| GetKernelError::Read { path: wanted.clone(), source })?;
            if n == 0 {
                break;
            }
            spool.append(&buffer[..n]).map_err(GetKernelError::Spool)?;
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|path| path.to_string()).collect()
    }

    #[test]
    fn the_newest_kernel_and_its_own_initramfs() {
        let files = paths(&[
            "/boot/vmlinuz-6.1.0-9-amd64",
            "/boot/vmlinuz-6.10.0-1-amd64",
            "/boot/initrd.img-6.1.0-9-amd64",
            "/boot/initrd.img-6.10.0-1-amd64",
        ]);
        let chosen = choose_boot_files(&files, &BTreeMap::new()).unwrap();
        assert_eq!(chosen.kernel, "/boot/vmlinuz-6.10.0-1-amd64");
        assert_eq!(chosen.initramfs, "/boot/initrd.img-6.10.0-1-amd64");
    }

    #[test]
    fn the_vmlinuz_link_wins_and_rhel_names_work() {
        let files = paths(&[
            "/boot/vmlinuz-5.14.0-362.el9.x86_64",
            "/boot/vmlinuz-5.14.0-400.el9.x86_64",
            "/boot/initramfs-5.14.0-362.el9.x86_64.img",
        ]);
        let links = BTreeMap::from([("/vmlinuz".to_owned(), "boot/vmlinuz-5.14.0-362.el9.x86_64".to_owned())]);
        let chosen = choose_boot_files(&files, &links).unwrap();
        assert_eq!(chosen.initramfs, "/boot/initramfs-5.14.0-362.el9.x86_64.img");
        let error = choose_boot_files(&paths(&["/boot/vmlinuz-6.1"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the root image has no initramfs for kernel 6.1 (looked for /boot/initrd.img-6.1 and /boot/initramfs-6.1.img)"
        );
        assert!(matches!(choose_boot_files(&paths(&["/etc/hostname"]), &BTreeMap::new()), Err(GetKernelError::NoKernel)));
    }
}
