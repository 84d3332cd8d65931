//! Spool files: the bytes of an upload or import in progress, on local disk, hashed as they
//! are written so that finishing needs no second pass.
//!
//! The hasher only ever sees bytes that reached the file: a failed write is cut off the file
//! again, so the file and the hash state agree and the upload can resume at its length.

use std::io::{IoSlice, Read as _, Seek as _, Write as _};

use bytes::Bytes;
use std::path::{Path, PathBuf};

use crate::checksum::{DigestAlgorithm, Digests, MultiHasher};
use crate::format::INSPECT_BYTES;

/// How many leading bytes are kept for format inspection.
pub const SPOOL_HEAD_BYTES: usize = INSPECT_BYTES;
/// Writes are gathered to this size before they reach the file.
const SPOOL_WRITE_BYTES: usize = 1 << 20;
/// Writeback of the spool file is started every this many bytes.
const WRITEBACK_BYTES: u64 = 32 << 20;
/// Chunks gathered before a write, well under the kernel's limit of 1024 per `writev`.
const MAX_PENDING_CHUNKS: usize = 512;

/// A spool file open for appending.
pub struct SpoolFile {
    path: PathBuf,
    file: std::fs::File,
    hasher: MultiHasher,
    head: Vec<u8>,
    /// Chunks accepted and not yet written, kept as they came (no copy) and written with one
    /// vectored write.
    pending: Vec<Bytes>,
    pending_len: usize,
}

impl SpoolFile {
    pub fn path_in(spool_dir: &Path, upload_id: &str) -> PathBuf {
        spool_dir.join(format!("{upload_id}.part"))
    }

    /// Creates an empty spool file (failing if one exists).
    pub fn create(path: &Path, also: Option<DigestAlgorithm>) -> std::io::Result<SpoolFile> {
        let file = std::fs::OpenOptions::new().write(true).read(true).create_new(true).open(path)?;
        Ok(SpoolFile { path: path.to_owned(), file, hasher: MultiHasher::new(also), head: Vec::new(), pending: Vec::new(), pending_len: 0 })
    }

    /// Reopens a spool file to append to it. The hash state of an earlier request is reused
    /// when it covers exactly the file's bytes; otherwise (another replica, a restart) the
    /// file is hashed again from the start.
    pub fn resume(path: &Path, also: Option<DigestAlgorithm>, cached: Option<(MultiHasher, Vec<u8>)>) -> std::io::Result<SpoolFile> {
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let length = file.metadata()?.len();
        let (hasher, head) = match cached {
            Some((hasher, head)) if hasher.bytes() == length => (hasher, head),
            _ => {
                let mut hasher = MultiHasher::new(also);
                let mut head = Vec::new();
                let mut buffer = vec![0u8; SPOOL_WRITE_BYTES];
                loop {
                    let n = file.read(&mut buffer)?;
                    if n == 0 {
                        break;
                    }
                    if head.len() < SPOOL_HEAD_BYTES {
                        head.extend_from_slice(&buffer[..n.min(SPOOL_HEAD_BYTES - head.len())]);
                    }
                    hasher.update(&buffer[..n]);
                }
                (hasher, head)
            }
        };
        file.seek(std::io::SeekFrom::Start(length))?;
        Ok(SpoolFile { path: path.to_owned(), file, hasher, head, pending: Vec::new(), pending_len: 0 })
    }

    /// Bytes safely in the file.
    pub fn offset(&self) -> u64 {
        self.hasher.bytes()
    }

    /// Bytes accepted, including those not yet written.
    pub fn accepted(&self) -> u64 {
        self.hasher.bytes() + self.pending_len as u64
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.append_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Appends a chunk without copying it (a request body's chunks arrive as `Bytes`).
    pub fn append_bytes(&mut self, bytes: Bytes) -> std::io::Result<()> {
        if bytes.is_empty() {
            // An empty slice first in a vectored write would read as "wrote nothing".
            return Ok(());
        }
        self.pending_len += bytes.len();
        self.pending.push(bytes);
        if self.pending_len >= SPOOL_WRITE_BYTES || self.pending.len() >= MAX_PENDING_CHUNKS { self.flush() } else { Ok(()) }
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        let (mut chunk, mut within) = (0, 0);
        while chunk < self.pending.len() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.pending.len() - chunk);
            slices.push(IoSlice::new(&self.pending[chunk][within..]));
            slices.extend(self.pending[chunk + 1..].iter().take(MAX_PENDING_CHUNKS).map(|bytes| IoSlice::new(bytes)));
            let mut written = match self.file.write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            while written > 0 {
                let left = self.pending[chunk].len() - within;
                if written >= left {
                    written -= left;
                    chunk += 1;
                    within = 0;
                } else {
                    within += written;
                    written = 0;
                }
            }
        }
        Ok(())
    }

    /// Writes what is pending. On failure the file is cut back to its last good length and
    /// the pending bytes are dropped.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.write_pending() {
            self.pending.clear();
            self.pending_len = 0;
            let good = self.hasher.bytes();
            if let Err(truncate_error) = self.file.set_len(good).and_then(|()| self.file.seek(std::io::SeekFrom::Start(good)).map(drop)) {
                tracing::warn!(path = %self.path.display(), error = %truncate_error, "cutting a failed spool write back failed");
            }
            return Err(error);
        }
        let before = self.hasher.bytes();
        let after = before + self.pending_len as u64;
        if before / WRITEBACK_BYTES != after / WRITEBACK_BYTES {
            self.start_writeback(after / WRITEBACK_BYTES * WRITEBACK_BYTES);
        }
        for bytes in self.pending.drain(..) {
            if self.head.len() < SPOOL_HEAD_BYTES {
                let take = bytes.len().min(SPOOL_HEAD_BYTES - self.head.len());
                self.head.extend_from_slice(&bytes[..take]);
            }
            self.hasher.update(&bytes);
        }
        self.pending_len = 0;
        Ok(())
    }

    /// Asks the kernel to start writing out the `WRITEBACK_BYTES` that end at `end`, without
    /// waiting: the fsync before the spool file becomes a blob then has little left to do,
    /// and dirty pages do not pile up during a large upload.
    fn start_writeback(&self, end: u64) {
        use std::os::fd::AsRawFd as _;
        let start = end.saturating_sub(WRITEBACK_BYTES);
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
        let result =
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), start as i64, WRITEBACK_BYTES as i64, libc::SYNC_FILE_RANGE_WRITE) };
        if result != 0 {
            tracing::debug!(path = %self.path.display(), error = %std::io::Error::last_os_error(), "starting writeback failed");
        }
    }

    /// Flushes and returns the hash state, to resume with later.
    pub fn suspend(mut self) -> std::io::Result<(MultiHasher, Vec<u8>)> {
        self.flush()?;
        Ok((self.hasher, self.head))
    }

    /// Flushes and returns the digests and leading bytes of everything written.
    pub fn finish(mut self) -> std::io::Result<(Digests, Vec<u8>)> {
        self.flush()?;
        Ok((self.hasher.finish(), self.head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_with_or_without_cached_state_hashes_the_same() {
        let directory = tempfile::tempdir().unwrap();
        let path = SpoolFile::path_in(directory.path(), "u1");
        let mut spool = SpoolFile::create(&path, Some(DigestAlgorithm::Md5)).unwrap();
        spool.append(&vec![7u8; 3 << 20]).unwrap();
        let cached = spool.suspend().unwrap();
        let mut with_cache = SpoolFile::resume(&path, Some(DigestAlgorithm::Md5), Some(cached)).unwrap();
        with_cache.append(b"tail").unwrap();
        let (expected, head) = with_cache.finish().unwrap();
        assert_eq!(head.len(), SPOOL_HEAD_BYTES);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(3 << 20).unwrap();
        let mut without_cache = SpoolFile::resume(&path, Some(DigestAlgorithm::Md5), None).unwrap();
        assert_eq!(without_cache.offset(), 3 << 20);
        without_cache.append(b"tail").unwrap();
        assert_eq!(without_cache.finish().unwrap().0, expected);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (3 << 20) + 4);
    }

    #[test]
    fn many_small_chunks_arrive_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let path = SpoolFile::path_in(directory.path(), "small");
        let mut spool = SpoolFile::create(&path, None).unwrap();
        let mut expected = Vec::new();
        for index in 0..5000u32 {
            let chunk: Vec<u8> = (0..(index % 13) as u8).map(|byte| byte ^ index as u8).collect();
            expected.extend_from_slice(&chunk);
            spool.append_bytes(Bytes::from(chunk)).unwrap();
        }
        let (digests, _) = spool.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(digests.bytes, expected.len() as u64);
    }

    #[test]
    fn a_failed_write_leaves_file_and_hash_in_step() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let Ok(file) = std::fs::OpenOptions::new().write(true).read(true).open("/dev/full") else { return };
        let mut spool = SpoolFile {
            path: "/dev/full".into(),
            file,
            hasher: MultiHasher::new(None),
            head: Vec::new(),
            pending: Vec::new(),
            pending_len: 0,
        };
        spool.append(b"abc").unwrap();
        let error = spool.flush().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(spool.offset(), 0);
        assert_eq!(spool.accepted(), 0);
    }
}
