//! The agent's commands: deploy an image to a disk, clean a disk, wipe a half-written one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kiln_types::image::ImageFormat;
use kiln_types::provision::{AgentArtifact, BlockMap, CleanMode, DiskInfo, RootDeviceHints, choose_root_device};

use crate::client::Server;
use crate::io::{
    CountingReader, HashingReader, ProgressCounter, RangeSource, ReadAhead, ResumingDownload, SparseWriter, ZeroBlocks, copy_large,
    decompressor, preallocate_data_chunks, write_mapped, zero_range,
};

/// Where the agent writes: the machine's disks, or (for simulations and tests) one file.
#[derive(Debug, Clone)]
pub(crate) enum Disks {
    Machine,
    File(PathBuf),
}

impl Disks {
    /// The disk the hints choose, as a path and its description.
    pub(crate) fn root_device(&self, hints: &RootDeviceHints) -> anyhow::Result<(PathBuf, DiskInfo)> {
        match self {
            Disks::File(path) => {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                Ok((path.clone(), DiskInfo { name: "file".into(), size_bytes: size, ..Default::default() }))
            }
            Disks::Machine => {
                let disks = crate::inspect::disks(Path::new("/"));
                let disk = choose_root_device(&disks, hints).with_context(|| {
                    let names: Vec<String> = disks.iter().map(|d| format!("{} ({} bytes)", d.name, d.size_bytes)).collect();
                    format!("no disk matches {hints}; disks: {}", names.join(", "))
                })?;
                Ok((PathBuf::from("/dev").join(&disk.name), disk.clone()))
            }
        }
    }
}

/// Bytes the server sends from an offset on, with `If-Range` so a changed artifact is never
/// spliced into a half-read one.
struct HttpRange {
    server: Server,
    path: String,
    etag: String,
}

impl RangeSource for HttpRange {
    fn open(&mut self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>> {
        let to_io = |error: anyhow::Error| io::Error::other(format!("{error:#}"));
        let offset = range.start;
        let last = range.end.saturating_sub(1);
        let headers = [("Range", format!("bytes={offset}-{last}")), ("If-Range", self.etag.clone())];
        let response = self.server.request("GET", &self.path, &headers, b"").map_err(to_io)?;
        let resumed_at = response
            .header("content-range")
            .and_then(|range| range.strip_prefix("bytes "))
            .and_then(|range| range.split('-').next())
            .and_then(|start| start.parse::<u64>().ok());
        match (response.status, resumed_at) {
            (206, Some(start)) if start == offset => Ok(Box::new(response)),
            (200, _) if offset == 0 => Ok(Box::new(response)),
            (status, _) => Err(io::Error::other(format!("asked for bytes from {offset}, the server answered {status}"))),
        }
    }
}

/// How a deploy went, for the result and the log.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub device: PathBuf,
    pub image_bytes: u64,
    pub written_bytes: u64,
}

/// Streams the artifact onto the chosen disk: download (resuming), hash, decompress, write
/// (skipping zero blocks), check the hash after draining the stream, flush. On any failure
/// the disk's partition tables are wiped, so a half-written disk never boots.
pub(crate) fn deploy(
    server: &Server,
    disks: &Disks,
    artifact: &AgentArtifact,
    hints: &RootDeviceHints,
    downloaded: Arc<ProgressCounter>,
    written: Arc<ProgressCounter>,
) -> anyhow::Result<Deployed> {
    if artifact.format == ImageFormat::Qcow2 {
        bail!("the image is qcow2, which the agent does not convert; store a raw image (qemu-img convert -O raw) and deploy that");
    }
    let (device, disk) = disks.root_device(hints)?;
    eprintln!("kiln-agent: writing {} bytes ({}) to {}", artifact.size, artifact.format, device.display());
    let result = write_image(server, disks, &device, artifact, downloaded, written);
    if let Err(error) = &result {
        eprintln!("kiln-agent: deploy failed ({error:#}); wiping {}", device.display());
        if let Err(wipe_error) = wipe_signatures(&device, disk.size_bytes) {
            eprintln!("kiln-agent: wiping {} failed too: {wipe_error:#}", device.display());
        }
    }
    result
}

fn write_image(
    server: &Server,
    disks: &Disks,
    device: &Path,
    artifact: &AgentArtifact,
    downloaded: Arc<ProgressCounter>,
    written: Arc<ProgressCounter>,
) -> anyhow::Result<Deployed> {
    let (file, zeros) = match disks {
        // A file starts empty: skipped blocks read as zeros.
        Disks::File(path) => (OpenOptions::new().write(true).create(true).truncate(true).open(path)?, ZeroBlocks::Skip),
        Disks::Machine => {
            (OpenOptions::new().write(true).open(device).with_context(|| format!("opening {}", device.display()))?, ZeroBlocks::ZeroOut)
        }
    };
    if let Some(map_path) = &artifact.map_path {
        match fetch_block_map(server, map_path, artifact) {
            Ok(map) => return write_by_map(server, file, zeros, device, artifact, &map, downloaded, written),
            Err(error) => eprintln!("kiln-agent: no block map ({error:#}); streaming the whole image"),
        }
    }
    let source = HttpRange { server: server.clone(), path: artifact.path.clone(), etag: format!("\"{}\"", artifact.sha256) };
    let download = ResumingDownload::new(source, artifact.size, 10, Duration::from_secs(6 * 3600));
    let hashing = HashingReader::new(CountingReader { inner: download, counter: downloaded });
    // Download and hash on one core, decompress and write on the other.
    let mut ahead = ReadAhead::spawn(hashing, 1 << 20, 16);
    let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(device).ok();
    let mut writer = SparseWriter::new(file, zeros, written).with_direct(direct);
    let copied = {
        let mut unpacked = decompressor(&mut ahead, artifact.compression).context("starting the decompressor")?;
        copy_large(&mut unpacked, &mut writer)
    };
    // A download error reaches the decompressor as a read error: either way, stop here
    // (dropping the read-ahead ends its thread) rather than drain the rest.
    copied.context("streaming the image onto the disk")?;
    let hashing = ahead.finish().context("downloading the image")?;
    let written_bytes = writer.written;
    let (digest, bytes) = hashing.finish().context("reading the rest of the image")?;
    if bytes != artifact.size {
        bail!("received {bytes} bytes, expected {}", artifact.size);
    }
    if digest != artifact.sha256 {
        bail!("checksum mismatch: the image's SHA-256 is {digest}, expected {}", artifact.sha256);
    }
    let image_bytes = writer.finish().context("flushing the disk")?;
    Ok(Deployed { device: device.to_owned(), image_bytes, written_bytes })
}

fn fetch_block_map(server: &Server, path: &str, artifact: &AgentArtifact) -> anyhow::Result<BlockMap> {
    let mut response = server.request("GET", path, &[], b"")?;
    let body = response.text()?;
    if response.status != 200 {
        bail!("the server answered {}: {body}", response.status);
    }
    let map: BlockMap = serde_json::from_str(&body).context("reading the block map")?;
    map.check(&artifact.sha256, artifact.size).map_err(anyhow::Error::msg)?;
    Ok(map)
}

/// Writes a raw image from its block map: only the chunks holding data are fetched (several
/// streams at a time, each chunk checked against its SHA-256); on a machine's disk the gaps
/// are zeroed, on a fresh file they are left as holes.
#[allow(clippy::too_many_arguments)]
fn write_by_map(
    server: &Server,
    file: File,
    zeros: ZeroBlocks,
    device: &Path,
    artifact: &AgentArtifact,
    map: &BlockMap,
    downloaded: Arc<ProgressCounter>,
    written: Arc<ProgressCounter>,
) -> anyhow::Result<Deployed> {
    eprintln!("kiln-agent: block map: {} of {} bytes hold data", map.data_bytes(), map.size);
    if zeros == ZeroBlocks::ZeroOut {
        let mut covered = 0;
        for chunk in map.chunks.iter().map(|chunk| map.chunk_range(chunk.index)).chain(std::iter::once(map.size..map.size)) {
            if chunk.start > covered {
                zero_range(&file, covered, chunk.start - covered).with_context(|| format!("zeroing {}", device.display()))?;
            }
            covered = chunk.end;
        }
    }
    // The zero chunks are done: progress counts from there.
    let gaps = map.size - map.data_bytes();
    downloaded.bytes.store(gaps, std::sync::atomic::Ordering::Relaxed);
    written.bytes.store(gaps, std::sync::atomic::Ordering::Relaxed);
    if zeros == ZeroBlocks::Skip && file.metadata()?.file_type().is_file() {
        preallocate_data_chunks(&file, map).with_context(|| format!("preparing {}", device.display()))?;
    }
    let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(device).ok();
    let etag = format!("\"{}\"", artifact.sha256);
    let open_source = || HttpRange { server: server.clone(), path: artifact.path.clone(), etag: etag.clone() };
    let deadline = std::time::Instant::now() + Duration::from_secs(6 * 3600);
    // Two per core: while some wait on the disk, the others hash (measured: BENCHMARKS.md).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let written_bytes = write_mapped(&open_source, map, &file, direct.as_ref(), workers, 10, deadline, &downloaded)
        .context("writing the image's data chunks")?;
    written.bytes.store(map.size, std::sync::atomic::Ordering::Relaxed);
    file.sync_all().context("flushing the disk")?;
    Ok(Deployed { device: device.to_owned(), image_bytes: map.size, written_bytes })
}

const MIB: u64 = 1 << 20;

/// Erases what makes a disk bootable or recognisable: the first and last MiB (MBR, GPT and
/// its backup, most filesystem and RAID signatures) and the first MiB of each partition.
pub(crate) fn wipe_signatures(device: &Path, size: u64) -> anyhow::Result<()> {
    let file = OpenOptions::new().write(true).open(device).with_context(|| format!("opening {}", device.display()))?;
    let size = if size == 0 { file.metadata()?.len() } else { size };
    let zeros = vec![0u8; MIB as usize];
    let mut offsets = vec![0, size.saturating_sub(MIB)];
    offsets.extend(partition_starts(device));
    for offset in offsets {
        let length = MIB.min(size.saturating_sub(offset)) as usize;
        file.write_all_at(&zeros[..length], offset).with_context(|| format!("zeroing {} at {offset}", device.display()))?;
    }
    file.sync_all()?;
    reread_partitions(&file);
    Ok(())
}

fn partition_starts(device: &Path) -> Vec<u64> {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else { return vec![] };
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/block").join(name)) else { return vec![] };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(name))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("start")).ok())
        .filter_map(|start| start.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .collect()
}

const BLKRRPART: libc::c_ulong = 0x125f;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn reread_partitions(file: &File) {
    // SAFETY: BLKRRPART takes no argument; on a regular file it fails harmlessly.
    unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART, 0) };
}

/// Cleans a disk: `fast` wipes signatures; `full` discards every block where the disk can,
/// else zeroes it.
pub(crate) fn clean(disks: &Disks, mode: CleanMode, progress: Arc<ProgressCounter>) -> anyhow::Result<Vec<String>> {
    let targets: Vec<(PathBuf, u64)> = match disks {
        Disks::File(path) => vec![(path.clone(), std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))],
        Disks::Machine => crate::inspect::disks(Path::new("/"))
            .into_iter()
            .filter(|disk| !disk.removable && disk.size_bytes > 0)
            .map(|disk| (PathBuf::from("/dev").join(&disk.name), disk.size_bytes))
            .collect(),
    };
    let mut cleaned = Vec::new();
    for (device, size) in targets {
        match mode {
            CleanMode::Fast => wipe_signatures(&device, size)?,
            CleanMode::Full => erase_all(&device, size, &progress)?,
        }
        eprintln!("kiln-agent: cleaned {} ({mode:?})", device.display());
        cleaned.push(device.display().to_string());
    }
    Ok(cleaned)
}

fn erase_all(device: &Path, size: u64, progress: &ProgressCounter) -> anyhow::Result<()> {
    let file = OpenOptions::new().write(true).open(device).with_context(|| format!("opening {}", device.display()))?;
    let range = [0u64, size];
    for request in [BLKDISCARD, BLKZEROOUT] {
        // SAFETY: both ioctls read two u64s from the pointer, which outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), request, range.as_ptr()) } == 0 {
            progress.bytes.store(size, std::sync::atomic::Ordering::Relaxed);
            return wipe_signatures(device, size);
        }
    }
    let zeros = vec![0u8; 4 * MIB as usize];
    let mut offset = 0;
    while offset < size {
        let length = (zeros.len() as u64).min(size - offset) as usize;
        file.write_all_at(&zeros[..length], offset)?;
        offset += length as u64;
        progress.bytes.store(offset, std::sync::atomic::Ordering::Relaxed);
    }
    file.sync_all()?;
    Ok(())
}

/// Reads the root device the hints choose and sends it, zstd-compressed (runs of zeros
/// shrink to almost nothing), to the server, which stores it as a new image version.
pub(crate) fn capture(
    api: &Server,
    disks: &Disks,
    hints: &RootDeviceHints,
    upload_path: &str,
    read: Arc<ProgressCounter>,
) -> anyhow::Result<i64> {
    let (device, _) = disks.root_device(hints)?;
    let file = File::open(&device).with_context(|| format!("opening {}", device.display()))?;
    eprintln!("kiln-agent: capturing {}", device.display());
    let counted = CountingReader { inner: io::BufReader::with_capacity(4 << 20, file), counter: read };
    let mut compressed = zstd::stream::read::Encoder::new(counted, 3).context("starting the compressor")?;
    let version = api.put_stream(upload_path, &mut compressed).context("sending the disk")?;
    version["version"].as_i64().context("the server's answer names no version")
}
