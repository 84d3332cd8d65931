//! Layers as files: a built root packed into a reproducible tar for an OCI registry, and a
//! parent (OCI tar layers or a Kiln SquashFS root) unpacked into the cache a child starts
//! from. Each result appears under its final name only when whole.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use crate::execute::{BuildError, io};

/// Layers are packed and unpacked without a build log: failures carry the tool's errors.
fn run_tool(tool: &'static str, command: &mut Command) -> Result<(), BuildError> {
    crate::execute::run_tool(tool, command, &mut std::io::sink())
}

/// `sha256:<hex>` and size of a file.
pub fn file_digest(path: &Path) -> Result<(String, u64), BuildError> {
    let mut file = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(io("reading", path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Packs `root` into the tar `output` (names sorted, numeric owners, extended attributes,
/// no access or change times), so the same tree always gives the same bytes and digest.
pub fn pack_layer(root: &Path, output: &Path) -> Result<(String, u64), BuildError> {
    let partial = output.with_extension("tar.partial");
    let mut command = Command::new("tar");
    command
        .args(["--sort=name", "--format=posix", "--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(&partial)
        .arg(".");
    if let Err(error) = run_tool("tar", &mut command) {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, output).map_err(io("renaming", &partial))?;
    file_digest(output)
}

/// Unpacks tar layers, in order, into `directory` (which must not exist yet): a whiteout
/// `.wh.NAME` in a later layer removes NAME as OCI says. Opaque directories
/// (`.wh..wh..opq`) are refused rather than half-honoured.
pub fn unpack_layers(layers: &[PathBuf], directory: &Path) -> Result<(), BuildError> {
    let partial = partial_of(directory);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
    let result = (|| {
        for layer in layers {
            let mut command = Command::new("tar");
            command.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]).arg(layer).arg("-C").arg(&partial);
            run_tool("tar", &mut command)?;
            apply_whiteouts(&partial)?;
        }
        Ok(())
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, directory).map_err(io("renaming", &partial))
}

fn apply_whiteouts(directory: &Path) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(directory).map_err(io("reading", directory))? {
        let entry = entry.map_err(io("reading", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == ".wh..wh..opq" {
            return Err(BuildError::ToolFailed {
                tool: "tar",
                message: format!("{} is an opaque-directory whiteout, which Kiln does not apply", path.display()),
            });
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = directory.join(hidden);
            if let Ok(metadata) = std::fs::symlink_metadata(&target) {
                if metadata.is_dir() {
                    std::fs::remove_dir_all(&target).map_err(io("removing", &target))?;
                } else {
                    std::fs::remove_file(&target).map_err(io("removing", &target))?;
                }
            }
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
        } else if entry.file_type().map_err(io("reading", &path))?.is_dir() {
            apply_whiteouts(&path)?;
        }
    }
    Ok(())
}

/// Unpacks a SquashFS root into `directory` (which must not exist yet).
pub fn unpack_squashfs(image: &Path, directory: &Path) -> Result<(), BuildError> {
    let partial = partial_of(directory);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
    }
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let mut command = Command::new("unsquashfs");
    command.args(["-no-progress", "-quiet", "-d"]).arg(&partial).arg(image);
    if let Err(error) = run_tool("unsquashfs", &mut command) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, directory).map_err(io("renaming", &partial))
}

fn partial_of(directory: &Path) -> PathBuf {
    let mut name = directory.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    directory.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_packs_to_the_same_digest_twice_and_unpacks_with_whiteouts() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("root");
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("etc/a"), "a").unwrap();
        std::fs::write(root.join("etc/sub/b"), "b").unwrap();
        let first = pack_layer(&root, &directory.path().join("one.tar")).unwrap();
        let second = pack_layer(&root, &directory.path().join("two.tar")).unwrap();
        assert_eq!(first, second);

        // A second layer that removes etc/a and adds etc/c.
        let upper = directory.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/.wh.a"), "").unwrap();
        std::fs::write(upper.join("etc/c"), "c").unwrap();
        pack_layer(&upper, &directory.path().join("upper.tar")).unwrap();
        let unpacked = directory.path().join("unpacked");
        unpack_layers(&[directory.path().join("one.tar"), directory.path().join("upper.tar")], &unpacked).unwrap();
        assert!(!unpacked.join("etc/a").exists() && !unpacked.join("etc/.wh.a").exists());
        assert_eq!(std::fs::read_to_string(unpacked.join("etc/sub/b")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(unpacked.join("etc/c")).unwrap(), "c");
        assert!(!directory.path().join("unpacked.partial").exists());
    }

    #[test]
    fn a_broken_layer_leaves_nothing() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("broken.tar"), "not a tar").unwrap();
        let unpacked = directory.path().join("unpacked");
        let error = unpack_layers(&[directory.path().join("broken.tar")], &unpacked).unwrap_err();
        assert!(error.to_string().contains("tar"), "{error}");
        assert!(!unpacked.exists() && !directory.path().join("unpacked.partial").exists());
    }
}
