//! Image format inspection from an artifact's first bytes: what it is, whether it is
//! compressed, how large it says it is, and whether it is safe to hand to a node.
//!
//! A pure function of the bytes, so it is tested with data, not files. The rule it enforces
//! is Ironic's: the format is what the magic numbers say, never only what the uploader
//! declares, and a qcow2 image that points at another file (a backing file or an external
//! data file) is refused, because following it reads files of the host that converts it.

use std::io::Read as _;

use kiln_types::image::{ArtifactKind, Compression, ImageFormat};

/// How many leading bytes inspection looks at (enough for an ISO 9660 volume descriptor).
pub const INSPECT_BYTES: usize = 64 * 1024;

/// What the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    pub format: ImageFormat,
    pub compression: Option<Compression>,
    /// The size the image presents (a disk's capacity, a filesystem's length), when known.
    pub virtual_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectionError {
    #[error("qcow2 images with a backing file are refused (backing file '{name}')")]
    BackingFile { name: String },
    #[error("qcow2 images with an external data file are refused")]
    ExternalDataFile,
    #[error("declared format {declared} but the bytes are {detected}")]
    DeclaredFormatDiffers { declared: ImageFormat, detected: ImageFormat },
    #[error("a {kind} artifact cannot be {detected}")]
    WrongFormatForKind { kind: ArtifactKind, detected: ImageFormat },
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn compression_of(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Compression::Xz)
    } else {
        None
    }
}

/// The first bytes of the decompressed stream, as many as the head yields. A head cut in the
/// middle of the stream ends the output early; that is expected, not an error.
fn decompressed_head(head: &[u8], compression: Compression) -> Vec<u8> {
    let mut output = Vec::with_capacity(INSPECT_BYTES);
    let mut buffer = [0u8; 8192];
    let mut reader: Box<dyn std::io::Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(head)),
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(head) {
            Ok(decoder) => Box::new(decoder),
            Err(_) => return output,
        },
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(head)),
    };
    while output.len() < INSPECT_BYTES {
        match reader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => output.extend_from_slice(&buffer[..n.min(INSPECT_BYTES - output.len())]),
        }
    }
    output
}

/// Inspects an uncompressed head. `size` is the whole artifact's length when known.
fn inspect_plain(head: &[u8], size: Option<u64>) -> Result<(ImageFormat, Option<u64>), InspectionError> {
    if head.starts_with(b"QFI\xfb") {
        let backing_offset = be_u64(head, 8).unwrap_or(0);
        if backing_offset != 0 {
            let length = be_u32(head, 16).unwrap_or(0) as usize;
            let name = usize::try_from(backing_offset)
                .ok()
                .and_then(|start| head.get(start..start.checked_add(length.min(1023))?))
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .unwrap_or_else(|| "(beyond the inspected bytes)".to_owned());
            return Err(InspectionError::BackingFile { name });
        }
        // Version 3 headers carry feature bits; bit 2 of the incompatible features is the
        // external data file.
        if be_u32(head, 4).unwrap_or(0) >= 3 && be_u64(head, 72).unwrap_or(0) & (1 << 2) != 0 {
            return Err(InspectionError::ExternalDataFile);
        }
        return Ok((ImageFormat::Qcow2, be_u64(head, 24)));
    }
    if head.starts_with(b"hsqs") {
        return Ok((ImageFormat::Squashfs, le_u64(head, 40)));
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        let blocks = le_u32(head, 0x8050).map(u64::from);
        let block_size = le_u16(head, 0x8080).map(u64::from);
        return Ok((ImageFormat::Iso, blocks.zip(block_size).map(|(blocks, block_size)| blocks * block_size)));
    }
    if head.get(0x202..0x206) == Some(b"HdrS") || head.get(0x38..0x3c) == Some(b"ARMd") || head.get(4..8) == Some(b"zimg") {
        return Ok((ImageFormat::Kernel, size));
    }
    if head.starts_with(b"070701") || head.starts_with(b"070702") {
        return Ok((ImageFormat::Initramfs, size));
    }
    Ok((ImageFormat::Raw, size))
}

/// What `head` (the first [`INSPECT_BYTES`] of an artifact, or all of it if shorter) is.
/// `size` is the artifact's stored length.
pub fn inspect(head: &[u8], size: u64) -> Result<Inspection, InspectionError> {
    match compression_of(head) {
        None => {
            let (format, virtual_size) = inspect_plain(head, Some(size))?;
            Ok(Inspection { format, compression: None, virtual_size })
        }
        Some(compression) => {
            let inner = decompressed_head(head, compression);
            let (format, virtual_size) = inspect_plain(&inner, None)?;
            // A compressed cpio is what initramfs images usually are; anything else that is
            // compressed and unrecognised is a compressed raw image.
            Ok(Inspection { format, compression: Some(compression), virtual_size })
        }
    }
}

impl Inspection {
    /// Checks the detected format against what the uploader declared and what the artifact
    /// is for.
    pub fn check(&self, kind: ArtifactKind, declared: Option<ImageFormat>) -> Result<(), InspectionError> {
        if let Some(declared) = declared
            && declared != self.format
        {
            // An unrecognised kernel or initrd (another architecture's kernel, an initrd
            // compressed with lz4) reads as raw; the declaration is believed for those.
            let believable = self.format == ImageFormat::Raw && matches!(declared, ImageFormat::Kernel | ImageFormat::Initramfs);
            if !believable {
                return Err(InspectionError::DeclaredFormatDiffers { declared, detected: self.format });
            }
        }
        let allowed: &[ImageFormat] = match kind {
            ArtifactKind::Kernel => &[ImageFormat::Kernel, ImageFormat::Raw],
            ArtifactKind::Initrd => &[ImageFormat::Initramfs, ImageFormat::Raw],
            ArtifactKind::Root => &[ImageFormat::Squashfs, ImageFormat::Raw, ImageFormat::Qcow2, ImageFormat::Initramfs],
            ArtifactKind::Disk => &[ImageFormat::Raw, ImageFormat::Qcow2, ImageFormat::Iso],
            ArtifactKind::Log => &[ImageFormat::Raw],
            ArtifactKind::Layer => &[ImageFormat::Qcow2],
        };
        if allowed.contains(&self.format) { Ok(()) } else { Err(InspectionError::WrongFormatForKind { kind, detected: self.format }) }
    }

    /// The format to record: the declaration where inspection could only say "raw".
    pub fn recorded_format(&self, declared: Option<ImageFormat>) -> ImageFormat {
        match declared {
            Some(declared) if self.format == ImageFormat::Raw => declared,
            _ => self.format,
        }
    }
}

#[cfg(test)]
mod tests;
