//! Block maps of raw blobs: which chunks hold data and the SHA-256 of each, made in one pass
//! that also checks the blob's own SHA-256 (so a map is never made of damaged bytes).

use futures::StreamExt as _;
use kiln_types::provision::{BlockMap, MappedChunk};
use sha2::Digest as _;

use crate::{BlobError, BlobId, BlobStore};

/// Makes a [`BlockMap`] from bytes fed in order, in pieces of any size. No IO.
pub struct BlockMapper {
    chunk_size: usize,
    whole: sha2::Sha256,
    chunk: Vec<u8>,
    index: u64,
    size: u64,
    chunks: Vec<MappedChunk>,
}

impl BlockMapper {
    pub fn new(chunk_size: u64) -> Self {
        let chunk_size = chunk_size as usize;
        BlockMapper { chunk_size, whole: sha2::Sha256::new(), chunk: Vec::with_capacity(chunk_size), index: 0, size: 0, chunks: Vec::new() }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let taken = (self.chunk_size - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if self.chunk.len() == self.chunk_size {
                self.close_chunk();
            }
        }
    }

    fn close_chunk(&mut self) {
        if self.chunk.iter().any(|&byte| byte != 0) {
            self.chunks.push(MappedChunk { index: self.index, sha256: hex::encode(sha2::Sha256::digest(&self.chunk)) });
        }
        self.chunk.clear();
        self.index += 1;
    }

    /// The map, and the SHA-256 of everything fed.
    pub fn finish(mut self) -> BlockMap {
        if !self.chunk.is_empty() {
            self.close_chunk();
        }
        BlockMap { sha256: hex::encode(self.whole.finalize()), size: self.size, chunk_size: self.chunk_size as u64, chunks: self.chunks }
    }
}

/// How many bytes are hashed per trip to a blocking thread.
const BATCH_BYTES: usize = 8 << 20;

impl BlobStore {
    /// Reads blob `id` whole and maps it; fails if its bytes no longer have its SHA-256.
    pub async fn block_map(&self, id: &BlobId, chunk_size: u64) -> Result<BlockMap, BlobError> {
        let mut read = self.read(id, None).await?;
        let mut mapper = BlockMapper::new(chunk_size);
        let mut batch: Vec<bytes::Bytes> = Vec::new();
        let mut batched = 0;
        loop {
            let next = read.stream.next().await;
            let end = next.is_none();
            if let Some(piece) = next {
                let piece = piece.map_err(BlobError::io("reading blob", id.as_str()))?;
                batched += piece.len();
                batch.push(piece);
            }
            if batched >= BATCH_BYTES || (end && batched > 0) {
                let pieces = std::mem::take(&mut batch);
                batched = 0;
                // Hashing is CPU work: off the async threads, which serve boot files.
                mapper = tokio::task::spawn_blocking(move || {
                    for piece in &pieces {
                        mapper.feed(piece);
                    }
                    mapper
                })
                .await
                .expect("hashing does not panic");
            }
            if end {
                break;
            }
        }
        let map = mapper.finish();
        if map.sha256 != id.as_str() {
            return Err(BlobError::Damaged { id: id.to_string(), actual: map.sha256 });
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8], piece: usize) -> BlockMap {
        let mut mapper = BlockMapper::new(4096);
        for part in bytes.chunks(piece) {
            mapper.feed(part);
        }
        mapper.finish()
    }

    #[test]
    fn zero_chunks_are_left_out_and_the_last_chunk_may_be_short() {
        let mut bytes = vec![0u8; 4096 * 4 + 100];
        bytes[5000] = 1; // chunk 1
        bytes[4096 * 4 + 99] = 7; // the short chunk 4
        let map = map_of(&bytes, 777);
        assert_eq!(map.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(map.size, bytes.len() as u64);
        let indexes: Vec<u64> = map.chunks.iter().map(|chunk| chunk.index).collect();
        assert_eq!(indexes, [1, 4]);
        assert_eq!(map.chunks[0].sha256, hex::encode(sha2::Sha256::digest(&bytes[4096..8192])));
        assert_eq!(map.chunks[1].sha256, hex::encode(sha2::Sha256::digest(&bytes[4096 * 4..])));
        assert_eq!(map.chunk_range(4), 16384..16484);
        assert_eq!(map.data_bytes(), 4096 + 100);
        assert_eq!(map, map_of(&bytes, bytes.len()), "the same map whatever the pieces");
        map.check(&map.sha256, map.size).unwrap();
    }

    #[test]
    fn runs_join_consecutive_chunks_up_to_a_length() {
        let mut bytes = vec![1u8; 4096 * 10];
        bytes[4096 * 3..4096 * 4].fill(0);
        let map = map_of(&bytes, 4096);
        assert_eq!(map.runs(4), [(0, 3), (3, 4), (7, 2)]);
        assert_eq!(map.runs(100), [(0, 3), (3, 6)]);
    }

    #[test]
    fn a_map_that_is_not_of_the_artifact_is_refused() {
        let map = map_of(&[1u8; 10000], 4096);
        assert!(map.check("00", map.size).unwrap_err().contains("not of 00"));
        let mut shuffled = map.clone();
        shuffled.chunks.swap(0, 1);
        assert!(shuffled.check(&map.sha256, map.size).unwrap_err().contains("out of order"));
    }
}
