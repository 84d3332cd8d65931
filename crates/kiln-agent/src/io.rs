//! The deploy pipeline as small `Read`/`Write` adapters, each testable on its own and each a
//! place to inject faults: a download that resumes with a range after a cut connection, a
//! reader that hashes what passes, the decompressors, and a writer that writes in large
//! pieces and skips all-zero blocks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_types::image::Compression;
use sha2::{Digest as _, Sha256};

/// Where a resumable download gets its bytes: a stream starting at `offset`.
pub trait RangeSource {
    fn open(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>>;
}

/// A download of `size` bytes that, when its stream fails or ends early, opens a new one at
/// the byte where it stopped: at most `max_retries` times in a row without progress, and
/// never past `deadline`.
pub struct ResumingDownload<S: RangeSource> {
    source: S,
    size: u64,
    position: u64,
    current: Option<Box<dyn Read + Send>>,
    failures_in_a_row: u32,
    max_retries: u32,
    deadline: Instant,
    /// How many times the download resumed (for the report).
    pub resumed: u32,
}

impl<S: RangeSource> ResumingDownload<S> {
    pub fn new(source: S, size: u64, max_retries: u32, total_time: Duration) -> Self {
        ResumingDownload {
            source,
            size,
            position: 0,
            current: None,
            failures_in_a_row: 0,
            max_retries,
            deadline: Instant::now() + total_time,
            resumed: 0,
        }
    }

    fn failed(&mut self, error: io::Error) -> io::Result<()> {
        self.current = None;
        self.failures_in_a_row += 1;
        if self.failures_in_a_row > self.max_retries {
            return Err(io::Error::new(
                error.kind(),
                format!("download failed {} times at byte {}: {error}", self.failures_in_a_row, self.position),
            ));
        }
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("download took longer than allowed; stopped at byte {}: {error}", self.position),
            ));
        }
        eprintln!("kiln-agent: download interrupted at byte {} ({error}); resuming", self.position);
        std::thread::sleep(Duration::from_millis(200 * u64::from(self.failures_in_a_row.min(10))));
        Ok(())
    }
}

impl<S: RangeSource> Read for ResumingDownload<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.position >= self.size || buffer.is_empty() {
                return Ok(0);
            }
            if self.current.is_none() {
                match self.source.open(self.position) {
                    Ok(stream) => {
                        if self.position > 0 {
                            self.resumed += 1;
                        }
                        self.current = Some(stream);
                    }
                    Err(error) => {
                        self.failed(error)?;
                        continue;
                    }
                }
            }
            let wanted = buffer.len().min((self.size - self.position).min(usize::MAX as u64) as usize);
            match self.current.as_mut().expect("opened above").read(&mut buffer[..wanted]) {
                Ok(0) => self.failed(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended early"))?,
                Ok(read) => {
                    self.position += read as u64;
                    self.failures_in_a_row = 0;
                    return Ok(read);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => self.failed(error)?,
            }
        }
    }
}

/// Passes bytes through, hashing them with SHA-256 and counting them.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Reads what is left to the end (so the hash covers everything the server sent, even
    /// bytes after a compressed stream's end), then gives the hex digest.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex(&self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The decompressor for `compression`, reading from `inner`.
pub fn decompressor<'a, R: Read + 'a>(inner: R, compression: Option<Compression>) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        None => Box::new(inner),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Some(Compression::Zstd) => Box::new(zstd::stream::read::Decoder::new(inner)?),
        Some(Compression::Xz) => Box::new(liblzma::read::XzDecoder::new_multi_decoder(inner)),
    })
}

/// What a [`SparseWriter`] does with a run of all-zero blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroBlocks {
    /// Leave them: the target reads as zeros already (a new file, a discarded disk).
    Skip,
    /// Ask the disk to zero them (BLKZEROOUT; cheap where the disk supports write-zeroes),
    /// falling back to writing zeros.
    ZeroOut,
}

/// Counts bytes written, for progress reports read from another thread.
#[derive(Debug, Default)]
pub struct ProgressCounter {
    pub bytes: AtomicU64,
}

/// Passes bytes through, adding their count to a shared counter.
pub struct CountingReader<R> {
    pub inner: R,
    pub counter: Arc<ProgressCounter>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.counter.bytes.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

/// Writes a stream to a file or disk at increasing offsets in pieces of `buffer` size,
/// writing only the blocks that hold a non-zero byte; runs of zero blocks are skipped or
/// zeroed as `zeros` says.
pub struct SparseWriter {
    file: File,
    zeros: ZeroBlocks,
    buffer: Vec<u8>,
    filled: usize,
    offset: u64,
    block: usize,
    progress: Arc<ProgressCounter>,
    /// Bytes actually written (the rest were zero blocks).
    pub written: u64,
}

impl SparseWriter {
    pub const BUFFER: usize = 4 << 20;
    pub const BLOCK: usize = 64 << 10;

    pub fn new(file: File, zeros: ZeroBlocks, progress: Arc<ProgressCounter>) -> Self {
        SparseWriter { file, zeros, buffer: vec![0; Self::BUFFER], filled: 0, offset: 0, block: Self::BLOCK, progress, written: 0 }
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        let data = &self.buffer[..self.filled];
        let mut start = 0;
        while start < data.len() {
            let end = (start + self.block).min(data.len());
            let zero = is_zero(&data[start..end]);
            // Extend the run of blocks of the same kind.
            let mut run_end = end;
            while run_end < data.len() {
                let next = (run_end + self.block).min(data.len());
                if is_zero(&data[run_end..next]) != zero {
                    break;
                }
                run_end = next;
            }
            let at = self.offset + start as u64;
            if !zero {
                self.file.write_all_at(&data[start..run_end], at)?;
                self.written += (run_end - start) as u64;
            } else if self.zeros == ZeroBlocks::ZeroOut {
                zero_out(&self.file, at, (run_end - start) as u64, &data[start..run_end])?;
            }
            start = run_end;
        }
        self.offset += self.filled as u64;
        self.progress.bytes.store(self.offset, Ordering::Relaxed);
        self.filled = 0;
        Ok(())
    }

    /// Writes what is buffered and flushes it to stable storage; returns the bytes taken in.
    pub fn finish(mut self) -> io::Result<u64> {
        self.flush_buffer()?;
        // A regular file gets its full length even if it ends in skipped zeros.
        if self.file.metadata()?.file_type().is_file() && self.file.metadata()?.len() < self.offset {
            self.file.set_len(self.offset)?;
        }
        self.file.sync_all()?;
        Ok(self.offset)
    }
}

impl Write for SparseWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.buffer.len() - self.filled;
        let taken = room.min(data.len());
        self.buffer[self.filled..self.filled + taken].copy_from_slice(&data[..taken]);
        self.filled += taken;
        if self.filled == self.buffer.len() {
            self.flush_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_zero(block: &[u8]) -> bool {
    // Word-wise: the compiler vectorises this.
    let (head, words, tail) = unsafe { block.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

const BLKZEROOUT: libc::c_ulong = 0x127f;

fn zero_out(file: &File, offset: u64, length: u64, zeros: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let range = [offset, length];
    // SAFETY: BLKZEROOUT reads two u64s from the pointer, which outlives the call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    if result == 0 {
        return Ok(());
    }
    file.write_all_at(zeros, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `data`, cutting every stream after `cut` bytes.
    struct Flaky {
        data: Vec<u8>,
        cut: usize,
        opens: Vec<u64>,
    }

    impl RangeSource for Flaky {
        fn open(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
            self.opens.push(offset);
            let start = offset as usize;
            let end = (start + self.cut).min(self.data.len());
            Ok(Box::new(io::Cursor::new(self.data[start..end].to_vec())))
        }
    }

    #[test]
    fn a_cut_download_resumes_where_it_stopped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let source = Flaky { data: data.clone(), cut: 30_000, opens: vec![] };
        let mut download = ResumingDownload::new(source, data.len() as u64, 3, Duration::from_secs(60));
        let mut out = Vec::new();
        download.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(download.source.opens, vec![0, 30_000, 60_000, 90_000]);
        assert_eq!(download.resumed, 3);
    }

    #[test]
    fn a_download_that_makes_no_progress_gives_up() {
        let source = Flaky { data: vec![1; 10], cut: 0, opens: vec![] };
        let mut download = ResumingDownload::new(source, 10, 2, Duration::from_secs(60));
        let error = download.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("download failed 3 times at byte 0"), "{error}");
    }

    #[test]
    fn sparse_writes_skip_zero_blocks_and_keep_the_length() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk");
        let mut image = vec![0u8; 10 << 20];
        image[5] = 1;
        image[(6 << 20) + 3] = 7;
        image.truncate((10 << 20) - 512);
        let progress = Arc::new(ProgressCounter::default());
        let mut writer = SparseWriter::new(File::create(&path).unwrap(), ZeroBlocks::Skip, progress.clone());
        // Odd-sized writes, as a decompressor produces them.
        for chunk in image.chunks(100_003) {
            writer.write_all(chunk).unwrap();
        }
        let written = writer.written;
        assert_eq!(writer.finish().unwrap(), image.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), image);
        assert_eq!(written, 2 * SparseWriter::BLOCK as u64, "only the two blocks holding data");
        assert_eq!(progress.bytes.load(Ordering::Relaxed), image.len() as u64);
    }

    #[test]
    fn hashing_covers_trailing_bytes() {
        let mut reader = HashingReader::new(io::Cursor::new(b"abc".to_vec()));
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).unwrap();
        let (digest, bytes) = reader.finish().unwrap();
        assert_eq!(bytes, 3);
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
