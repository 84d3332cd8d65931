//! The gateway in front of a real qemu-nbd on loopback: a node's export name from its own
//! address reaches its clone (reads see the base, writes land in the clone only); a guessed
//! name, or the right name from another address, is refused before any disk is touched.
//! (The authority here is a table; the server's, from the inventory and DHCP leases, is
//! proven in the lab test `kiln-cli/tests/netdisk.rs`.)

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;

use kiln_netdisk::{BaseSpec, ExportAuthority, ExportRefusal, NetworkDisks};
use sha2::Digest as _;

struct Table;

impl ExportAuthority for Table {
    fn authorize<'a>(
        &'a self,
        export: &'a str,
        peer: std::net::SocketAddr,
    ) -> futures::future::BoxFuture<'a, Result<String, ExportRefusal>> {
        Box::pin(async move {
            match export {
                "secret-of-node-a" if peer.ip().is_loopback() => Ok("node-a".to_owned()),
                // Node B's address is not loopback: a loopback peer using it is someone else.
                "secret-of-node-b" => Err(ExportRefusal::NotThisPeer { node_id: "node-b".to_owned() }),
                _ => Err(ExportRefusal::Unknown),
            }
        })
    }
}

fn qemu_nbd_installed() -> bool {
    std::process::Command::new("qemu-nbd").arg("--version").output().is_ok_and(|output| output.status.success())
}

/// One NBD request (simple replies); returns the reply's error and data.
fn request(stream: &mut TcpStream, kind: u16, offset: u64, length: u32, data: &[u8], cookie: u64) -> (u32, Vec<u8>) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x2560_9513_u32.to_be_bytes());
    bytes.extend_from_slice(&0u16.to_be_bytes());
    bytes.extend_from_slice(&kind.to_be_bytes());
    bytes.extend_from_slice(&cookie.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(data);
    stream.write_all(&bytes).unwrap();
    let mut reply = [0u8; 16];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_be_bytes(reply[..4].try_into().unwrap()), 0x6744_6698, "a simple reply");
    assert_eq!(u64::from_be_bytes(reply[8..].try_into().unwrap()), cookie);
    let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
    let mut read = vec![0u8; if kind == 0 && error == 0 { length as usize } else { 0 }];
    stream.read_exact(&mut read).unwrap();
    (error, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_only_its_own_clone() {
    if !qemu_nbd_installed() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "qemu-nbd is needed (qemu-utils)");
        eprintln!("skipping: qemu-nbd is not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // The base: 4 MiB with a pattern, stored as a local blob.
    let base: Vec<u8> = (0..4u32 << 20).map(|index| (index % 251) as u8).collect();
    let sha256 = hex::encode(sha2::Sha256::digest(&base));
    let blobs = kiln_image_store::BlobStore::local(&work.path().join("blobs")).unwrap();
    let blob_path = blobs.local_path(&kiln_image_store::BlobId::parse(&sha256).unwrap()).unwrap();
    std::fs::create_dir_all(blob_path.parent().unwrap()).unwrap();
    std::fs::write(&blob_path, &base).unwrap();
    let disks = Arc::new(NetworkDisks::local(&work.path().join("netdisk"), blobs).unwrap());
    let spec = BaseSpec { sha256: sha256.clone(), format: kiln_types::image::ImageFormat::Raw, compression: None, layer: None };
    disks.prepare("node-a", &spec).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = kiln_netdisk::gateway::start(listener, disks.clone(), Arc::new(Table)).unwrap();
    let address = gateway.local_addr;

    let outcome = tokio::task::spawn_blocking(move || {
        // A guessed name and another node's name are refused with the protocol's errors.
        for (name, expected) in [("guess", "no such export"), ("secret-of-node-b", "this export is not this machine's")] {
            let mut stream = TcpStream::connect(address).unwrap();
            let error = kiln_nbd::negotiate_as_client(&mut stream, name).unwrap_err();
            assert!(error.to_string().contains(expected), "{name}: {error}");
        }
        let mut stream = TcpStream::connect(address).unwrap();
        let export = kiln_nbd::negotiate_as_client(&mut stream, "secret-of-node-a").unwrap();
        assert_eq!(export.size, 4 << 20);
        let (error, read) = request(&mut stream, 0, 8192, 4096, &[], 1);
        assert_eq!((error, &read[..]), (0, &base[8192..8192 + 4096]), "reads see the base");
        let (error, _) = request(&mut stream, 1, 8192, 4096, &[0xee; 4096], 2);
        assert_eq!(error, 0);
        assert_eq!(request(&mut stream, 3, 0, 0, &[], 3).0, 0, "flushed");
        let (_, read) = request(&mut stream, 0, 8192, 4096, &[], 4);
        assert!(read.iter().all(|&byte| byte == 0xee), "the node reads what it wrote");
    })
    .await;
    outcome.unwrap();
    let stored = std::fs::read(&blob_path).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&stored)), sha256, "the base is untouched");
    assert!(disks.stored_bytes("node-a").unwrap() < 1 << 20, "the clone holds the written cluster and metadata only");
    disks.remove("node-a").await.unwrap();
    assert!(disks.stored_bytes("node-a").is_none());
    gateway.shutdown().await;
    disks.shutdown().await;
}
