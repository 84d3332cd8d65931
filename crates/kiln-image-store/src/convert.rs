//! Converting a qcow2 image into a zstd-compressed raw image with `qemu-img`, for images
//! given by URL (the Ironic API's `image_source`): Kiln's agent streams an image onto a disk
//! as it downloads, which a qcow2 (clusters in any order, a header at the end of a chain of
//! tables) does not allow.
//!
//! The qcow2 has been inspected before it gets here ([`crate::inspect`]): one with a backing
//! file or an external data file is refused there, so `qemu-img` reads nothing but the file
//! it is given, and it is told the format (`-f qcow2`) rather than left to guess it. Its
//! virtual size is checked against [`MAX_VIRTUAL_BYTES`] by the caller, since every byte
//! of it is read and compressed here; `qemu-img` runs with limits on its memory and CPU
//! time, and the whole conversion stops when the caller gives up on it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Digests, SpoolFile};

/// How hard the raw image is compressed: zstd's default, which keeps up with a disk.
const ZSTD_LEVEL: i32 = 3;
/// What is read from the raw image at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// The largest virtual disk converted: the raw image is read whole, holes included, so a
/// small qcow2 that claims an enormous disk would keep a core busy for days.
pub const MAX_VIRTUAL_BYTES: u64 = 2 << 40;
/// `qemu-img`'s address space: a qcow2's tables for a disk of [`MAX_VIRTUAL_BYTES`] fit
/// many times over (OpenStack caps `qemu-img info` at 1 GiB for the same reason: a crafted
/// image must not make it take the host's memory).
const QEMU_IMG_ADDRESS_SPACE_BYTES: u64 = 2 << 30;
/// `qemu-img`'s CPU time.
const QEMU_IMG_CPU_SECONDS: u64 = 3600;
/// How often a running `qemu-img` is checked for its end or the caller's.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("starting qemu-img (Debian's qemu-utils)")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img could not convert {path} to raw ({status}): {stderr}")]
    QemuImg { path: String, status: std::process::ExitStatus, stderr: String },
    #[error("waiting for qemu-img")]
    Wait {
        #[source]
        source: std::io::Error,
    },
    #[error("the conversion was given up: nobody waits for it any more")]
    Cancelled,
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
/// async runtime. Once `cancelled` is set, `qemu-img` is killed and the compression stops.
pub fn qcow2_to_raw_zstd(
    qcow2: &Path,
    scratch: &Path,
    mut output: SpoolFile,
    cancelled: &AtomicBool,
) -> Result<(Digests, Vec<u8>), ConvertError> {
    let scratch = Scratch(scratch.to_owned());
    run_qemu_img(qcow2, &scratch.0, cancelled)?;
    let read_error = |source| ConvertError::Read { path: scratch.0.display().to_string(), source };
    let raw = std::fs::File::open(&scratch.0).map_err(read_error)?;
    let mut compressed = zstd::stream::read::Encoder::new(raw, ZSTD_LEVEL).map_err(|source| ConvertError::Compress { source })?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        if cancelled.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
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

/// `qemu-img convert` under resource limits, killed if `cancelled` is set while it runs.
fn run_qemu_img(qcow2: &Path, raw: &Path, cancelled: &AtomicBool) -> Result<(), ConvertError> {
    let mut command = Command::new("qemu-img");
    command.args(["convert", "-q", "-f", "qcow2", "-O", "raw"]).arg(qcow2).arg(raw);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only setrlimit(2), which is async-signal-safe, runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            set_limit(libc::RLIMIT_AS, QEMU_IMG_ADDRESS_SPACE_BYTES)?;
            set_limit(libc::RLIMIT_CPU, QEMU_IMG_CPU_SECONDS)
        });
    }
    let mut child = command.spawn().map_err(|source| ConvertError::Spawn { source })?;
    // qemu-img's messages are short; read after it ends (a pipe holds far more than them).
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| ConvertError::Wait { source })? {
            break status;
        }
        if cancelled.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ConvertError::Cancelled);
        }
        std::thread::sleep(POLL);
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        return Err(ConvertError::QemuImg { path: qcow2.display().to_string(), status, stderr: stderr.trim().to_owned() });
    }
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    match unsafe { libc::setrlimit(resource, &limit) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
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
        let (digests, head) = qcow2_to_raw_zstd(&qcow2, &directory.path().join("scratch.raw"), spool, &AtomicBool::new(false)).unwrap();
        assert!(!directory.path().join("scratch.raw").exists(), "the scratch file is removed");
        let inspection = crate::inspect(&head, digests.bytes).unwrap();
        assert_eq!(
            (inspection.format, inspection.compression),
            (kiln_types::image::ImageFormat::Raw, Some(kiln_types::image::Compression::Zstd))
        );
        let stored = std::fs::read(directory.path().join("out.part")).unwrap();
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), bytes);
    }

    /// A conversion its caller gave up on stops, and leaves no scratch file.
    #[test]
    fn a_cancelled_conversion_stops_and_leaves_no_scratch() {
        let directory = tempfile::tempdir().unwrap();
        let qcow2 = directory.path().join("disk.qcow2");
        let Ok(status) = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&qcow2).arg("64M").status() else {
            eprintln!("skipping: qemu-img is missing");
            return;
        };
        assert!(status.success());
        let spool = SpoolFile::create(&directory.path().join("out.part"), None).unwrap();
        let error = qcow2_to_raw_zstd(&qcow2, &directory.path().join("scratch.raw"), spool, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(error, ConvertError::Cancelled), "{error}");
        assert!(!directory.path().join("scratch.raw").exists());
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
        let error = qcow2_to_raw_zstd(&not_qcow2, &directory.path().join("scratch.raw"), spool, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(error, ConvertError::QemuImg { .. }), "{error}");
        assert!(error.to_string().contains("text.qcow2"), "{error}");
    }
}
