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

/// The name OCI gives an opaque-directory whiteout: the directory holding it shows only what
/// its own layer put there.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Unpacks tar layers, in order, into `directory` (which must not exist yet), applying OCI
/// whiteouts: `.wh.NAME` in a later layer removes NAME, and `.wh..wh..opq` in a directory
/// hides what the layers below put in it.
pub fn unpack_layers(layers: &[PathBuf], directory: &Path) -> Result<(), BuildError> {
    let partial = partial_of(directory);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io("removing", &partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
    let result = (|| {
        for layer in layers {
            // Opaque directories are emptied before the layer lands: afterwards, what it
            // brought could not be told from what was there.
            for opaque in opaque_directories(layer)? {
                empty_directory(&partial, &opaque)?;
            }
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

/// The directories a tar layer marks opaque, relative to the root.
fn opaque_directories(layer: &Path) -> Result<Vec<PathBuf>, BuildError> {
    use std::os::unix::ffi::OsStrExt as _;
    // Literal names, as bytes: tar's default quoting would change names it finds unusual.
    let output = Command::new("tar").args(["--quoting-style=literal", "-tf"]).arg(layer).output().map_err(|error| BuildError::Io {
        operation: "running",
        path: PathBuf::from("tar"),
        error,
    })?;
    if !output.status.success() {
        return Err(BuildError::ToolFailed { tool: "tar", message: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    Ok(output
        .stdout
        .split(|&byte| byte == b'\n')
        .filter_map(|member| member.strip_suffix(OPAQUE_WHITEOUT.as_bytes()))
        .map(|directory| PathBuf::from(std::ffi::OsStr::from_bytes(directory)))
        .collect())
}

/// Removes everything inside `root/relative`, if it is there. Every component must be a real
/// directory: a symbolic link in the path (perhaps absolute) could lead outside the root.
fn empty_directory(root: &Path, relative: &Path) -> Result<(), BuildError> {
    let mut directory = root.to_path_buf();
    // `./srv/data/` and `srv/data/` name the same directory.
    let components: Vec<_> = relative
        .components()
        .filter(|component| !matches!(component, std::path::Component::CurDir | std::path::Component::RootDir))
        .collect();
    for (position, component) in components.iter().enumerate() {
        let std::path::Component::Normal(name) = component else {
            return Err(BuildError::ToolFailed {
                tool: "tar",
                message: format!("the opaque whiteout in {} is outside the layer's root", relative.display()),
            });
        };
        directory.push(name);
        match std::fs::symlink_metadata(&directory) {
            Err(_) => return Ok(()),
            Ok(metadata) if metadata.is_dir() => {}
            // The layer makes a directory where the layers below had a link or a file: none
            // of what was there shows through.
            Ok(_) if position + 1 == components.len() => return std::fs::remove_file(&directory).map_err(io("removing", &directory)),
            Ok(_) => {
                return Err(BuildError::ToolFailed {
                    tool: "tar",
                    message: format!(
                        "the opaque whiteout in {} lies under {}, which the layers below made a link or a file",
                        relative.display(),
                        directory.strip_prefix(root).unwrap_or(&directory).display()
                    ),
                });
            }
        }
    }
    for entry in std::fs::read_dir(&directory).map_err(io("reading", &directory))? {
        remove_entry(&entry.map_err(io("reading", &directory))?.path())?;
    }
    Ok(())
}

/// Removes a file, a link (not what it points to) or a directory with all it holds; nothing
/// there is not an error.
fn remove_entry(path: &Path) -> Result<(), BuildError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path).map_err(io("removing", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io("removing", path)),
    }
}

fn apply_whiteouts(directory: &Path) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(directory).map_err(io("reading", directory))? {
        let entry = entry.map_err(io("reading", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == OPAQUE_WHITEOUT {
            // Applied before the layer was unpacked; only the marker is left.
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_entry(&directory.join(hidden))?;
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
    fn an_opaque_directory_keeps_only_what_its_own_layer_put_there() {
        let directory = tempfile::tempdir().unwrap();
        let lower = directory.path().join("lower");
        std::fs::create_dir_all(lower.join("srv/data/deep")).unwrap();
        std::fs::write(lower.join("srv/data/old"), "old").unwrap();
        std::fs::write(lower.join("srv/data/deep/older"), "older").unwrap();
        std::fs::write(lower.join("srv/kept"), "kept").unwrap();
        std::os::unix::fs::symlink("/etc", lower.join("srv/link")).unwrap();
        std::os::unix::fs::symlink("/etc", lower.join("srv/replaced")).unwrap();
        pack_layer(&lower, &directory.path().join("lower.tar")).unwrap();
        // As `RUN rm -rf /srv/data && mkdir /srv/data && echo new > /srv/data/new` makes it;
        // and an opaque directory no layer below had.
        let upper = directory.path().join("upper");
        std::fs::create_dir_all(upper.join("srv/data")).unwrap();
        std::fs::create_dir_all(upper.join("opt/fresh")).unwrap();
        std::fs::write(upper.join("srv/data/.wh..wh..opq"), "").unwrap();
        std::fs::write(upper.join("srv/data/new"), "new").unwrap();
        std::fs::write(upper.join("opt/fresh/.wh..wh..opq"), "").unwrap();
        std::fs::create_dir_all(upper.join("srv/replaced")).unwrap();
        std::fs::write(upper.join("srv/replaced/.wh..wh..opq"), "").unwrap();
        pack_layer(&upper, &directory.path().join("upper.tar")).unwrap();
        let unpacked = directory.path().join("unpacked");
        unpack_layers(&[directory.path().join("lower.tar"), directory.path().join("upper.tar")], &unpacked).unwrap();
        let names = |path: &Path| {
            let mut names: Vec<String> =
                std::fs::read_dir(path).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&unpacked.join("srv/data")), ["new"]);
        assert_eq!(names(&unpacked.join("srv")), ["data", "kept", "link", "replaced"]);
        assert!(std::fs::symlink_metadata(unpacked.join("srv/replaced")).unwrap().is_dir());
        assert!(names(&unpacked.join("srv/replaced")).is_empty(), "the link is gone, not followed");
        assert!(names(&unpacked.join("opt/fresh")).is_empty());

        // An opaque directory under a link the layers below made is refused, not followed.
        let through_link = directory.path().join("through-link");
        std::fs::create_dir_all(through_link.join("srv/link/ssh")).unwrap();
        std::fs::write(through_link.join("srv/link/ssh/.wh..wh..opq"), "").unwrap();
        pack_layer(&through_link, &directory.path().join("through-link.tar")).unwrap();
        let refused = directory.path().join("refused");
        let error = unpack_layers(&[directory.path().join("lower.tar"), directory.path().join("through-link.tar")], &refused).unwrap_err();
        assert!(error.to_string().contains("srv/link, which the layers below made a link or a file"), "{error}");
        assert!(!refused.exists() && !directory.path().join("refused.partial").exists());
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
