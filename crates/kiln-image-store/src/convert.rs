//! Converting a qcow2 image into a zstd-compressed raw image with `qemu-img`, for images
//! given by URL (the Ironic API's `image_source`): Kiln's agent streams an image onto a disk
//! as it downloads, which a qcow2 (clusters in any order, a header at the end of a chain of
//! tables) does not allow.
//!
//! The qcow2 has been inspected before it gets here ([`crate::inspect`]): one with a backing
//! file or an external data file is refused there, so `qemu-img` reads nothing but the file
//! it is given, and it is told the format (`-f qcow2`) rather than left to guess it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Digests, SpoolFile};

/// How hard the raw image is compressed: zstd's default, which keeps up with a disk.
const ZSTD_LEVEL: i32 = 3;
/// What is read from the raw image at a time.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("starting qemu-img (Debian's qemu-utils)")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img could not convert {path} to raw ({status}): {stderr}")]
    QemuImg { path: String, status: std::process::ExitStatus, stderr: String },
    #[error("reading the converted image {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("compressing the converted image")]
    Compress {
        #[source]
        source: std::io::Error,
    },
    #[error("writing the converted image to the spool")]
    Spool {
        #[source]
        source: std::io::Error,
    },
}

/// Removes a scratch file however the conversion ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Converts `qcow2` to raw in `scratch` (a sparse file, removed afterwards), then compresses
/// it into `output`, whose digests and leading bytes are returned. Blocking: run it off the
/// async runtime.
pub fn qcow2_to_raw_zstd(qcow2: &Path, scratch: &Path, mut output: SpoolFile) -> Result<(Digests, Vec<u8>), ConvertError> {
    let scratch = Scratch(scratch.to_owned());
    let converted = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(qcow2)
        .arg(&scratch.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ConvertError::Spawn { source })?;
    if !converted.status.success() {
        return Err(ConvertError::QemuImg {
            path: qcow2.display().to_string(),
            status: converted.status,
            stderr: String::from_utf8_lossy(&converted.stderr).trim().to_owned(),
        });
    }
    let read_error = |source| ConvertError::Read { path: scratch.0.display().to_string(), source };
    let raw = std::fs::File::open(&scratch.0).map_err(read_error)?;
    let mut compressed = zstd::stream::read::Encoder::new(raw, ZSTD_LEVEL).map_err(|source| ConvertError::Compress { source })?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match compressed.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ConvertError::Compress { source }),
        };
        output.append(&buffer[..n]).map_err(|source| ConvertError::Spool { source })?;
    }
    output.finish().map_err(|source| ConvertError::Spool { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real qcow2 from `qemu-img`, converted back: the raw bytes come out whole.
    #[test]
    fn a_qcow2_comes_back_as_its_raw_bytes_compressed() {
        let directory = tempfile::tempdir().unwrap();
        let raw = directory.path().join("disk.raw");
        let mut bytes = vec![0u8; 4 << 20];
        for (index, byte) in bytes.iter_mut().enumerate().take(1 << 20) {
            *byte = (index % 251) as u8;
        }
        std::fs::write(&raw, &bytes).unwrap();
        let qcow2 = directory.path().join("disk.qcow2");
        let made = Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status();
        let Ok(status) = made else {
            eprintln!("skipping: qemu-img is missing");
            return;
        };
        assert!(status.success());
        let spool = SpoolFile::create(&directory.path().join("out.part"), None).unwrap();
        let (digests, head) = qcow2_to_raw_zstd(&qcow2, &directory.path().join("scratch.raw"), spool).unwrap();
        assert!(!directory.path().join("scratch.raw").exists(), "the scratch file is removed");
        let inspection = crate::inspect(&head, digests.bytes).unwrap();
        assert_eq!(
            (inspection.format, inspection.compression),
            (kiln_types::image::ImageFormat::Raw, Some(kiln_types::image::Compression::Zstd))
        );
        let stored = std::fs::read(directory.path().join("out.part")).unwrap();
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), bytes);
    }

    #[test]
    fn a_file_that_is_not_qcow2_is_refused_by_name() {
        let directory = tempfile::tempdir().unwrap();
        let not_qcow2 = directory.path().join("text.qcow2");
        std::fs::write(&not_qcow2, b"hello").unwrap();
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipping: qemu-img is missing");
            return;
        }
        let spool = SpoolFile::create(&directory.path().join("out.part"), None).unwrap();
        let error = qcow2_to_raw_zstd(&not_qcow2, &directory.path().join("scratch.raw"), spool).unwrap_err();
        assert!(matches!(error, ConvertError::QemuImg { .. }), "{error}");
        assert!(error.to_string().contains("text.qcow2"), "{error}");
    }
}
