//! The deploy pipeline as small `Read`/`Write` adapters, each testable on its own and each a
//! place to inject faults: a download that resumes with a range after a cut connection, a
//! reader that hashes what passes, the decompressors, and a writer that writes in large
//! pieces and skips all-zero blocks.
//!
//! Why one file over 600 lines: the adapters are one chain whose buffer sizes, alignment
//! (O_DIRECT) and error kinds depend on each other; the tests are in `io/tests.rs`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_types::image::Compression;
use kiln_types::provision::BlockMap;
use sha2::{Digest as _, Sha256};

/// Where a resumable download gets its bytes: a stream of the bytes in `range`.
pub(crate) trait RangeSource {
    fn open(&mut self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>>;
}

/// A download of a range of bytes that, when its stream fails or ends early, opens a new
/// one at the byte where it stopped: at most `max_retries` times in a row without progress,
/// and never past `deadline`.
pub(crate) struct ResumingDownload<S: RangeSource> {
    source: S,
    /// Where the download ends (exclusive).
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
    /// The whole of an artifact of `size` bytes.
    pub(crate) fn new(source: S, size: u64, max_retries: u32, total_time: Duration) -> Self {
        Self::of_range(source, 0..size, max_retries, Instant::now() + total_time)
    }

    /// The bytes in `range`.
    pub(crate) fn of_range(source: S, range: Range<u64>, max_retries: u32, deadline: Instant) -> Self {
        ResumingDownload {
            source,
            size: range.end,
            position: range.start,
            current: None,
            failures_in_a_row: 0,
            max_retries,
            deadline,
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
                match self.source.open(self.position..self.size) {
                    Ok(stream) => {
                        if self.failures_in_a_row > 0 {
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
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Reads what is left to the end (so the hash covers everything the server sent, even
    /// bytes after a compressed stream's end), then gives the hex digest.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The decompressor for `compression`, reading from `inner`.
pub(crate) fn decompressor<'a, R: Read + 'a>(inner: R, compression: Option<Compression>) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        None => Box::new(inner),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Some(Compression::Zstd) => Box::new(zstd::stream::read::Decoder::new(inner)?),
        Some(Compression::Xz) => Box::new(liblzma::read::XzDecoder::new_multi_decoder(inner)),
    })
}

/// What a [`SparseWriter`] does with a run of all-zero blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroBlocks {
    /// Leave them: the target reads as zeros already (a new file, a discarded disk).
    Skip,
    /// Ask the disk to zero them (BLKZEROOUT; cheap where the disk supports write-zeroes),
    /// falling back to writing zeros.
    ZeroOut,
}

/// Counts bytes written, for progress reports read from another thread.
#[derive(Debug, Default)]
pub(crate) struct ProgressCounter {
    pub bytes: AtomicU64,
}

/// Reads ahead on a thread of its own, so that the stages before it (download, hashing)
/// run while the stages after it (decompression, writing) do: two cores, two halves of
/// the pipeline. `finish` hands the inner reader back once everything it read was taken.
pub(crate) struct ReadAhead<R> {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
    thread: Option<std::thread::JoinHandle<R>>,
}

impl<R: Read + Send + 'static> ReadAhead<R> {
    pub(crate) fn spawn(mut inner: R, chunk: usize, depth: usize) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel(depth);
        let thread = std::thread::spawn(move || {
            loop {
                let mut buffer = vec![0u8; chunk];
                let mut filled = 0;
                // Fill whole chunks: fewer, larger hand-overs.
                let outcome = loop {
                    match inner.read(&mut buffer[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(read) => {
                            filled += read;
                            if filled == buffer.len() {
                                break Ok(false);
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => break Err(error),
                    }
                };
                buffer.truncate(filled);
                match outcome {
                    Ok(ended) => {
                        if !buffer.is_empty() && sender.send(Ok(buffer)).is_err() {
                            return inner;
                        }
                        if ended {
                            return inner;
                        }
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error));
                        return inner;
                    }
                }
            }
        });
        ReadAhead { receiver, current: Vec::new(), position: 0, thread: Some(thread) }
    }

    /// Discards what was read ahead and not taken (it was hashed all the same), and gives
    /// back the inner reader; an error the thread met is returned.
    pub(crate) fn finish(mut self) -> io::Result<R> {
        for chunk in self.receiver.iter() {
            chunk?;
        }
        self.thread.take().expect("finished once").join().map_err(|_| io::Error::other("the read-ahead thread panicked"))
    }
}

impl<R> Read for ReadAhead<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.position == self.current.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.position = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let taken = buffer.len().min(self.current.len() - self.position);
        buffer[..taken].copy_from_slice(&self.current[self.position..self.position + taken]);
        self.position += taken;
        Ok(taken)
    }
}

/// `io::copy` with a buffer large enough that a stage is called once per MiB, not per 8 KiB.
pub(crate) fn copy_large(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..read])?;
        total += read as u64;
    }
}

/// Passes bytes through, adding their count to a shared counter.
pub(crate) struct CountingReader<R> {
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
pub(crate) struct SparseWriter {
    file: File,
    /// The same file opened with O_DIRECT, for the aligned bulk of the writes: copying
    /// gigabytes through the page cache costs more than the disk (measured: BENCHMARKS.md).
    direct: Option<File>,
    zeros: ZeroBlocks,
    buffer: AlignedBuffer,
    filled: usize,
    offset: u64,
    block: usize,
    progress: Arc<ProgressCounter>,
    /// Bytes actually written (the rest were zero blocks).
    pub written: u64,
}

impl SparseWriter {
    pub(crate) const BUFFER: usize = 4 << 20;
    pub(crate) const BLOCK: usize = 64 << 10;

    pub(crate) fn new(file: File, zeros: ZeroBlocks, progress: Arc<ProgressCounter>) -> Self {
        SparseWriter {
            file,
            direct: None,
            zeros,
            buffer: AlignedBuffer::on_huge_pages(Self::BUFFER),
            filled: 0,
            offset: 0,
            block: Self::BLOCK,
            progress,
            written: 0,
        }
    }

    /// Writes aligned runs through `direct` (the same file, opened with O_DIRECT).
    pub(crate) fn with_direct(mut self, direct: Option<File>) -> Self {
        self.direct = direct;
        self
    }

    fn write_run(&mut self, data_start: usize, data_end: usize, at: u64) -> io::Result<()> {
        let data = &self.buffer.as_slice()[data_start..data_end];
        // Offset, length and memory all on a DIRECT_ALIGN boundary (a power of two).
        let aligned = (at | data.len() as u64 | data_start as u64) & (DIRECT_ALIGN as u64 - 1) == 0;
        if let (true, Some(direct)) = (aligned, &self.direct) {
            match direct.write_all_at(data, at) {
                Ok(()) => return Ok(()),
                // A filesystem without O_DIRECT (tmpfs): buffered writes from now on.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(error) => return Err(error),
            }
        }
        self.file.write_all_at(data, at)
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        let length = self.filled;
        let mut start = 0;
        while start < length {
            let data = &self.buffer.as_slice()[..length];
            let end = (start + self.block).min(length);
            let zero = is_zero(&data[start..end]);
            // Extend the run of blocks of the same kind.
            let mut run_end = end;
            while run_end < length {
                let next = (run_end + self.block).min(length);
                if is_zero(&data[run_end..next]) != zero {
                    break;
                }
                run_end = next;
            }
            let at = self.offset + start as u64;
            if !zero {
                self.write_run(start, run_end, at)?;
                self.written += (run_end - start) as u64;
            } else if self.zeros == ZeroBlocks::ZeroOut {
                zero_out(&self.file, at, (run_end - start) as u64, &self.buffer.as_slice()[start..run_end])?;
            }
            start = run_end;
        }
        self.offset += self.filled as u64;
        self.progress.bytes.store(self.offset, Ordering::Relaxed);
        self.filled = 0;
        Ok(())
    }

    /// Writes what is buffered and flushes it to stable storage; returns the bytes taken in.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
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
        let room = Self::BUFFER - self.filled;
        let taken = room.min(data.len());
        self.buffer.as_mut_slice()[self.filled..self.filled + taken].copy_from_slice(&data[..taken]);
        self.filled += taken;
        if self.filled == Self::BUFFER {
            self.flush_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What O_DIRECT asks of buffers, offsets and lengths (the largest logical block in use).
const DIRECT_ALIGN: usize = 4096;

/// A byte buffer whose start is aligned for O_DIRECT (and to a huge page).
struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
    length: usize,
}

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

impl AlignedBuffer {
    /// A buffer of a megabyte or more, on huge pages where the kernel grants them.
    ///
    /// Why: an O_DIRECT write pins every page of its buffer and unpins it when done; on
    /// 4 KiB pages that was a tenth of the agent's CPU in `perf` (`gup_fast_fallback`,
    /// `__bio_release_pages`), which a core hashing chunks needs. The buffer's start is
    /// aligned to a huge page and its span advised as huge. The span is whole huge pages: a
    /// 1 MiB chunk's buffer takes 2 MiB (32 MiB for a deploy's buffers on two cores).
    fn on_huge_pages(length: usize) -> Self {
        let span = length.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let storage = vec![0u8; span + HUGE_PAGE];
        let start = storage.as_ptr().align_offset(HUGE_PAGE);
        // SAFETY: the range lies inside `storage` (start < HUGE_PAGE, start + span <= its
        // length), which stays allocated at the same place while the buffer lives; the
        // advice changes how it is backed, never its contents. Refused advice (no THP in the
        // kernel) leaves ordinary pages, which work the same.
        unsafe {
            libc::madvise(storage.as_ptr().add(start).cast_mut().cast(), span, libc::MADV_HUGEPAGE);
        }
        AlignedBuffer { storage, start, length }
    }

    fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.length]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.length]
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

/// Zeroes `length` bytes of a disk at `offset`: BLKZEROOUT where the device has it, else
/// writes of zeros.
pub(crate) fn zero_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
    const PIECE: u64 = 4 << 20;
    let zeros = vec![0u8; PIECE.min(length) as usize];
    let mut done = 0;
    while done < length {
        let piece = PIECE.min(length - done);
        zero_out(file, offset + done, piece, &zeros[..piece as usize])?;
        done += piece;
    }
    Ok(())
}

/// Makes an image file ready for [`write_mapped`]: sets its length to the image's and
/// allocates the blocks of the map's data chunks, leaving the gaps as holes.
///
/// Why: ext4 and XFS take a file's inode lock exclusively for an O_DIRECT write that
/// allocates blocks or extends the file, and hold it until the write completes, so the
/// parallel writers of a fresh file would take turns. Writes into allocated blocks are
/// overwrites, which run side by side under a shared lock (measured: BENCHMARKS.md). A
/// filesystem without `fallocate` is written as before; a full one fails here, before any
/// download.
pub(crate) fn preallocate_data_chunks(file: &File, map: &BlockMap) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    file.set_len(map.size)?;
    for (first, count) in map.runs(usize::MAX) {
        let start = map.chunk_range(map.chunks[first].index).start;
        let end = map.chunk_range(map.chunks[first + count - 1].index).end;
        let (Ok(offset), Ok(length)) = (libc::off_t::try_from(start), libc::off_t::try_from(end - start)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bytes {start}-{end} are beyond what a file can hold")));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
        // writing for the whole call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, length) } != 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(()),
                _ => Err(io::Error::new(error.kind(), format!("allocating bytes {start}-{}: {error}", end - 1))),
            };
        }
    }
    Ok(())
}

/// The most chunks fetched with one range request: long enough for streaming, short enough
/// that the workers share a dense image evenly.
const RUN_CHUNKS: usize = 16;

/// Chunks a fetch worker may have verified and queued while its writer is busy: the worker
/// hashes the next ones while the disk takes these.
const QUEUED_WRITES: usize = 2;

/// A chunk that passed its check, on its way to the disk.
struct VerifiedChunk {
    buffer: AlignedBuffer,
    length: usize,
    offset: u64,
}

/// Fetches the data chunks of `map` and writes each at its offset, `workers` runs at a time
/// (so that hashing uses every core), checking each chunk's SHA-256 before writing it.
/// Each fetch worker hands its verified chunks to a writer thread of its own, so no core
/// that could hash waits for the disk. Each run resumes where it stopped after a cut
/// connection, as [`ResumingDownload`] does. Returns the bytes written; `progress` counts
/// the chunks' bytes as they land.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_mapped<S: RangeSource>(
    open_source: &(dyn Fn() -> S + Sync),
    map: &BlockMap,
    file: &File,
    direct: Option<&File>,
    workers: usize,
    max_retries: u32,
    deadline: Instant,
    progress: &ProgressCounter,
) -> io::Result<u64> {
    let runs = map.runs(RUN_CHUNKS);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let chunk_size = map.chunk_size as usize;
    let fetch = |to_writer: std::sync::mpsc::SyncSender<VerifiedChunk>, free: std::sync::mpsc::Receiver<AlignedBuffer>| -> io::Result<()> {
        loop {
            let run = next.fetch_add(1, Ordering::SeqCst);
            if run >= runs.len() || stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let (first, count) = runs[run];
            let chunks = &map.chunks[first..first + count];
            let start = map.chunk_range(chunks[0].index).start;
            let end = map.chunk_range(chunks[count - 1].index).end;
            let mut download = ResumingDownload::of_range(open_source(), start..end, max_retries, deadline);
            for chunk in chunks {
                // The writer is gone (it failed): its error is the one to report.
                let Ok(mut buffer) = free.recv() else { return Ok(()) };
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let range = map.chunk_range(chunk.index);
                let length = (range.end - range.start) as usize;
                let data = &mut buffer.as_mut_slice()[..length];
                download.read_exact(data)?;
                let digest = hex(&Sha256::digest(&*data));
                if digest != chunk.sha256 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "checksum mismatch in chunk {} (bytes {}-{}): its SHA-256 is {digest}, the block map says {}",
                            chunk.index,
                            range.start,
                            range.end - 1,
                            chunk.sha256
                        ),
                    ));
                }
                if to_writer.send(VerifiedChunk { buffer, length, offset: range.start }).is_err() {
                    return Ok(());
                }
            }
        }
    };
    let write = |queue: std::sync::mpsc::Receiver<VerifiedChunk>, free: std::sync::mpsc::Sender<AlignedBuffer>| -> io::Result<()> {
        let mut direct = direct;
        for chunk in queue {
            let data = &chunk.buffer.as_slice()[..chunk.length];
            let aligned = chunk.length.is_multiple_of(DIRECT_ALIGN);
            let wrote_directly = match direct {
                Some(handle) if aligned => match handle.write_all_at(data, chunk.offset) {
                    Ok(()) => true,
                    // A filesystem without O_DIRECT (tmpfs): buffered writes from now on.
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        direct = None;
                        false
                    }
                    Err(error) => return Err(error),
                },
                _ => false,
            };
            if !wrote_directly {
                file.write_all_at(data, chunk.offset)?;
            }
            written.fetch_add(chunk.length as u64, Ordering::Relaxed);
            progress.bytes.fetch_add(chunk.length as u64, Ordering::Relaxed);
            // The fetch worker may have stopped already; the buffer is then simply dropped.
            let _ = free.send(chunk.buffer);
        }
        Ok(())
    };
    let worker = || -> io::Result<()> {
        let (to_writer, queue) = std::sync::mpsc::sync_channel(QUEUED_WRITES);
        let (give_back, free) = std::sync::mpsc::channel();
        // One buffer being filled, the queued ones, and one being written.
        for _ in 0..QUEUED_WRITES + 2 {
            give_back.send(AlignedBuffer::on_huge_pages(chunk_size)).expect("the receiver is here");
        }
        let (fetched, wrote) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| write(queue, give_back));
            let fetched = fetch(to_writer, free);
            (fetched, writer.join().unwrap_or_else(|_| Err(io::Error::other("a disk writer panicked"))))
        });
        // A failed write is the cause when both failed: fetching stops because of it.
        wrote.and(fetched)
    };
    let outcome: Vec<io::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let result = worker();
                    if result.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    result
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap_or_else(|_| Err(io::Error::other("a download worker panicked")))).collect()
    });
    for result in outcome {
        result?;
    }
    Ok(written.into_inner())
}

#[cfg(test)]
mod tests;
