//! One suite for every blob store backend: a local directory, and a real S3 server (Garage).
//! Faults are injected into S3 by a proxy that answers chosen requests with 500.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use kiln_image_store::{BlobError, BlobId, BlobStore, S3Settings, SpoolFile};
use kiln_test_utils::s3::{ACCESS_KEY_ID, BUCKET, FaultProxy, REGION, SECRET_ACCESS_KEY, TestS3};

fn s3_settings(endpoint: &str, prefix: &str) -> S3Settings {
    S3Settings {
        endpoint: endpoint.to_owned(),
        bucket: BUCKET.to_owned(),
        region: REGION.to_owned(),
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: SECRET_ACCESS_KEY.to_owned(),
        prefix: prefix.to_owned(),
    }
}

/// Bytes that differ from one test to the next and one offset to the next.
fn content(length: usize, seed: u8) -> Vec<u8> {
    (0..length).map(|index| (index as u64).wrapping_mul(2654435761).wrapping_add(seed as u64) as u8 ^ (index >> 12) as u8).collect()
}

/// Spools `bytes` the way an upload does and returns the blob id and spool path.
fn spool(store: &BlobStore, name: &str, bytes: &[u8]) -> (BlobId, std::path::PathBuf) {
    let path = SpoolFile::path_in(store.spool_dir(), name);
    let mut spool = SpoolFile::create(&path, None).unwrap();
    spool.append(bytes).unwrap();
    let (digests, _) = spool.finish().unwrap();
    (BlobId::parse(&digests.sha256).unwrap(), path)
}

async fn read_all(store: &BlobStore, id: &BlobId, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut read = store.read(id, range).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = read.stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    bytes
}

async fn suite(store: BlobStore) {
    // A small blob: stored whole, read whole and in ranges, listed, re-hashed.
    let small = content(5000, 1);
    let (small_id, small_spool) = spool(&store, "small", &small);
    assert_eq!(store.size_of(&small_id).await.unwrap(), None);
    store.commit(&small_id, &small_spool).await.unwrap();
    assert!(!small_spool.exists(), "committing uses up the spool file");
    assert_eq!(store.size_of(&small_id).await.unwrap(), Some(5000));
    assert_eq!(read_all(&store, &small_id, None).await, small);
    assert_eq!(read_all(&store, &small_id, Some(10..20)).await, &small[10..20]);
    assert_eq!(read_all(&store, &small_id, Some(4990..9000)).await, &small[4990..], "a range past the end is cut");
    assert_eq!(store.rehash(&small_id).await.unwrap(), (small_id.to_string(), 5000));

    // The same bytes again: nothing new is stored.
    let (again_id, again_spool) = spool(&store, "again", &small);
    assert_eq!(again_id, small_id);
    store.commit(&again_id, &again_spool).await.unwrap();
    assert!(!again_spool.exists());
    assert_eq!(store.list().await.unwrap().len(), 1);

    // A blob larger than one S3 part goes up in several.
    let large = content(40 << 20, 2);
    let (large_id, large_spool) = spool(&store, "large", &large);
    store.commit(&large_id, &large_spool).await.unwrap();
    assert_eq!(store.rehash(&large_id).await.unwrap(), (large_id.to_string(), large.len() as u64));
    let tail = (large.len() - 100) as u64..large.len() as u64;
    assert_eq!(read_all(&store, &large_id, Some(tail)).await, &large[large.len() - 100..]);
    let listed: Vec<(String, u64)> = store.list().await.unwrap().into_iter().map(|blob| (blob.id.to_string(), blob.size)).collect();
    let mut expected = vec![(small_id.to_string(), 5000), (large_id.to_string(), large.len() as u64)];
    expected.sort();
    assert_eq!(listed, expected);

    // Deleting: gone, reads say so, deleting again is fine.
    store.delete(&small_id).await.unwrap();
    assert_eq!(store.size_of(&small_id).await.unwrap(), None);
    assert!(matches!(store.read(&small_id, None).await, Err(BlobError::NotFound { .. })));
    store.delete(&small_id).await.unwrap();
    let unknown = BlobId::parse(&"0".repeat(64)).unwrap();
    assert!(matches!(store.read(&unknown, None).await, Err(BlobError::NotFound { .. })));
    assert!(matches!(BlobId::parse("../../etc/passwd"), Err(BlobError::InvalidId { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn local_directory() {
    let directory = tempfile::tempdir().unwrap();
    let store = BlobStore::local(directory.path()).unwrap();
    suite(store.clone()).await;
    // Nothing is left in the spool, and no temporary file is ever visible among blobs.
    assert_eq!(std::fs::read_dir(store.spool_dir()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_on_garage() {
    let Some(s3) = tokio::task::spawn_blocking(TestS3::start).await.unwrap() else { return };
    let spool_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::s3(&s3_settings(&s3.endpoint, "suite"), spool_dir.path()).unwrap();
    suite(store).await;
}

fn count_matching(
    counter: Arc<AtomicU64>,
    fail_from: u64,
    fail_until: u64,
    matches: fn(&str, &str) -> bool,
) -> kiln_test_utils::s3::FaultRule {
    Arc::new(move |method: &str, path: &str| {
        if !matches(method, path) {
            return false;
        }
        let seen = counter.fetch_add(1, Ordering::Relaxed);
        (fail_from..fail_until).contains(&seen)
    })
}

fn is_part_upload(method: &str, path: &str) -> bool {
    method == "PUT" && path.contains("partNumber=")
}

async fn assert_absent(store: &BlobStore, id: &BlobId, spool: &Path) {
    assert_eq!(store.size_of(id).await.unwrap(), None, "no partial object may be visible");
    assert!(store.list().await.unwrap().is_empty());
    assert!(spool.exists(), "a failed commit keeps the spool file for the caller to retry or remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_server_errors_mid_upload() {
    let Some(s3) = tokio::task::spawn_blocking(TestS3::start).await.unwrap() else { return };
    let spool_dir = tempfile::tempdir().unwrap();
    let large = content(40 << 20, 3);

    // One failed part: retried, and the upload completes.
    let proxy = FaultProxy::start(&s3.endpoint, count_matching(Arc::default(), 1, 2, is_part_upload)).await;
    let store = BlobStore::s3(&s3_settings(&proxy.endpoint, "transient"), spool_dir.path()).unwrap();
    let (id, path) = spool(&store, "transient", &large);
    store.commit(&id, &path).await.unwrap();
    assert_eq!(proxy.failed.load(Ordering::Relaxed), 1);
    assert_eq!(store.rehash(&id).await.unwrap().0, id.to_string());

    // The second part fails every time: a clear error, and no object at all.
    let proxy = FaultProxy::start(&s3.endpoint, count_matching(Arc::default(), 1, u64::MAX, is_part_upload)).await;
    let store = BlobStore::s3(&s3_settings(&proxy.endpoint, "persistent"), spool_dir.path()).unwrap();
    let (id, path) = spool(&store, "persistent", &large);
    let error = store.commit(&id, &path).await.unwrap_err();
    let message = format!("{error}");
    assert!(message.contains("uploading a part of") || message.contains("completing"), "{message}");
    assert_absent(&store, &id, &path).await;

    // Completing the multipart upload fails: still nothing visible.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        count_matching(Arc::default(), 0, u64::MAX, |method, path| method == "POST" && path.contains("uploadId=")),
    )
    .await;
    let store = BlobStore::s3(&s3_settings(&proxy.endpoint, "complete"), spool_dir.path()).unwrap();
    let (id, path) = spool(&store, "complete", &large);
    assert!(store.commit(&id, &path).await.is_err());
    assert_absent(&store, &id, &path).await;
}
