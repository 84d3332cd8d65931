//! Tests of `io`.

use super::*;

/// Serves `data`, cutting every stream after `cut` bytes.
struct Flaky {
    data: Vec<u8>,
    cut: usize,
    opens: Vec<u64>,
}

impl RangeSource for Flaky {
    fn open(&mut self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>> {
        self.opens.push(range.start);
        let start = range.start as usize;
        let end = (start + self.cut).min(range.end as usize);
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

/// Serves a shared image, cutting every stream after `cut` bytes.
struct SharedFlaky {
    data: Arc<Vec<u8>>,
    cut: usize,
}

impl RangeSource for SharedFlaky {
    fn open(&mut self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>> {
        let start = range.start as usize;
        let end = (start + self.cut).min(range.end as usize);
        Ok(Box::new(io::Cursor::new(self.data[start..end].to_vec())))
    }
}

fn map_of(image: &[u8], chunk_size: usize) -> BlockMap {
    let chunks = image
        .chunks(chunk_size)
        .enumerate()
        .filter(|(_, chunk)| chunk.iter().any(|&byte| byte != 0))
        .map(|(index, chunk)| kiln_types::provision::MappedChunk { index: index as u64, sha256: hex(&Sha256::digest(chunk)) })
        .collect();
    BlockMap { sha256: String::new(), size: image.len() as u64, chunk_size: chunk_size as u64, chunks }
}

#[test]
fn mapped_writes_fetch_only_data_resume_after_cuts_and_check_every_chunk() {
    let chunk = 64 << 10;
    let mut image = vec![0u8; 40 * chunk - 1000];
    for index in [0usize, 1, 2, 10, 39] {
        let end = ((index + 1) * chunk).min(image.len());
        image[index * chunk..end].iter_mut().enumerate().for_each(|(i, byte)| *byte = (i % 249) as u8 + 1);
    }
    let map = map_of(&image, chunk);
    assert_eq!(map.chunks.len(), 5);
    let data = Arc::new(image.clone());
    let open = || SharedFlaky { data: data.clone(), cut: 50_000 };
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("disk");
    let file = File::create(&path).unwrap();
    let progress = ProgressCounter::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = write_mapped(&open, &map, &file, None, 2, 3, deadline, &progress).unwrap();
    file.set_len(image.len() as u64).unwrap();
    assert_eq!(written, map.data_bytes());
    assert_eq!(progress.bytes.load(Ordering::Relaxed), map.data_bytes());
    assert_eq!(std::fs::read(&path).unwrap(), image);

    // A chunk whose bytes differ from the map's digest is refused, whichever worker has it.
    let mut wrong = map.clone();
    wrong.chunks[3].sha256 = "0".repeat(64);
    let error = write_mapped(&open, &wrong, &file, None, 2, 3, deadline, &progress).unwrap_err();
    assert!(error.to_string().contains("checksum mismatch in chunk 10"), "{error}");

    // A disk that refuses writes: the writer's error is the one reported, and the fetch
    // workers stop rather than wait for it.
    let read_only = File::open(&path).unwrap();
    let error = write_mapped(&open, &map, &read_only, None, 2, 3, deadline, &progress).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
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
    let file = File::create(&path).unwrap();
    // With O_DIRECT where the filesystem has it: aligned runs go that way, the tail not.
    use std::os::unix::fs::OpenOptionsExt as _;
    let direct = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).ok();
    let mut writer = SparseWriter::new(file, ZeroBlocks::Skip, progress.clone()).with_direct(direct);
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
fn preallocation_sets_the_length_and_allocates_only_the_data_chunks() {
    use std::os::unix::fs::MetadataExt as _;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("disk");
    let chunk = 1 << 20;
    let mut image = vec![0u8; 8 * chunk + 4096];
    image[..2 * chunk].fill(1);
    image[5 * chunk] = 2;
    image[8 * chunk + 1] = 3;
    let map = map_of(&image, chunk);
    let file = File::create(&path).unwrap();
    preallocate_data_chunks(&file, &map).unwrap();
    let metadata = file.metadata().unwrap();
    assert_eq!(metadata.len(), image.len() as u64);
    // Chunks 0, 1, 5 and the short last one; a filesystem may round up by a block.
    let allocated = metadata.blocks() * 512;
    assert!((map.data_bytes()..map.data_bytes() + 64 * 1024).contains(&allocated), "{allocated} bytes allocated");
    // Still zeros until written.
    assert!(std::fs::read(&path).unwrap().iter().all(|&byte| byte == 0));
}

#[test]
fn read_ahead_passes_everything_and_returns_its_reader() {
    let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
    let mut ahead = ReadAhead::spawn(HashingReader::new(io::Cursor::new(data.clone())), 1 << 20, 2);
    let mut first = vec![0u8; 1000];
    ahead.read_exact(&mut first).unwrap();
    let (digest, bytes) = ahead.finish().unwrap().finish().unwrap();
    assert_eq!(bytes, data.len() as u64, "bytes not taken were still hashed");
    assert_eq!(first, data[..1000]);
    let mut expected = HashingReader::new(io::Cursor::new(data));
    io::copy(&mut expected, &mut io::sink()).unwrap();
    assert_eq!(digest, expected.finish().unwrap().0);
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
