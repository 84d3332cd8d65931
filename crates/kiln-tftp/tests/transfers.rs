//! Real transfers over loopback: curl as the client, and hand-made hostile requests.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use kiln_tftp::{TftpConfig, start};

fn payload(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 % 251) as u8).collect()
}

async fn server() -> (kiln_tftp::TftpHandle, tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("undionly.kpxe"), payload(100_000)).unwrap();
    std::fs::write(root.path().join("exact.bin"), payload(1024)).unwrap();
    std::fs::write(outside.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
    let mut config = TftpConfig::new("127.0.0.1:0".parse().unwrap(), root.path().to_owned());
    config.generated = HashMap::from([("kiln.ipxe".to_owned(), b"#!ipxe\nchain http://x/\n".to_vec())]);
    (start(config).await.unwrap(), root, outside)
}

fn curl(address: SocketAddr, file: &str, extra: &[&str]) -> Option<Vec<u8>> {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(extra)
        .arg(format!("tftp://{address}/{file}"))
        .output()
        .expect("curl is installed");
    output.status.success().then_some(output.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_files_with_every_block_size() {
    let (handle, _root, _outside) = server().await;
    let address = handle.local_addr();
    let expected = payload(100_000);
    let results = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for blksize in ["512", "1468", "8", "65464"] {
            results.push((blksize, curl(address, "undionly.kpxe", &["--tftp-blksize", blksize])));
        }
        results.push(("no options", curl(address, "undionly.kpxe", &["--tftp-no-options"])));
        results.push(("exact multiple", curl(address, "exact.bin", &["--tftp-blksize", "512"])));
        results.push(("generated", curl(address, "kiln.ipxe", &[])));
        results
    })
    .await
    .unwrap();
    for (name, result) in &results[..5] {
        assert_eq!(result.as_deref(), Some(&expected[..]), "blksize {name}");
    }
    assert_eq!(results[5].1.as_deref(), Some(&payload(1024)[..]));
    assert_eq!(results[6].1.as_deref(), Some(&b"#!ipxe\nchain http://x/\n"[..]));
}

/// Sends a raw request and returns the first answer's opcode and error message, if any.
fn raw_request(address: SocketAddr, bytes: &[u8]) -> Option<(u16, String)> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    socket.send_to(bytes, address).unwrap();
    let mut buffer = [0u8; 2048];
    let (length, _) = socket.recv_from(&mut buffer).ok()?;
    let opcode = u16::from_be_bytes([buffer[0], buffer[1]]);
    let message = String::from_utf8_lossy(&buffer[4..length]).trim_end_matches('\0').to_owned();
    Some((opcode, message))
}

fn rrq(name: &[u8], options: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = vec![0, 1];
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(b"\0octet\0");
    for (key, value) in options {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_leave_the_root_and_the_server_keeps_serving() {
    let (handle, _root, outside) = server().await;
    let address = handle.local_addr();
    let outside_path = outside.path().join("secret").display().to_string();
    tokio::task::spawn_blocking(move || {
        let escapes: Vec<Vec<u8>> = vec![
            rrq(b"../secret", &[]),
            rrq(b"a/../../secret", &[]),
            rrq(outside_path.as_bytes(), &[]),
            rrq(b"escape", &[]),
            rrq(b"..\\..\\etc\\passwd", &[]),
            rrq(b"/etc/passwd", &[]),
        ];
        for request in escapes {
            let answer = raw_request(address, &request).expect("an error answer");
            assert_eq!(answer.0, 5, "refused with an ERROR packet: {answer:?}");
            assert!(!answer.1.contains("outside"), "no byte of an outside file is sent");
        }
        // NUL inside the name splits the request into other fields: malformed or not found.
        let nul = raw_request(address, &rrq(b"undionly.kpxe\0../secret", &[]));
        assert!(nul.is_none_or(|(opcode, _)| opcode == 5));
        // Garbage, truncated packets, writes and odd options.
        for junk in [&b""[..], b"\x00", b"\x00\x01", b"\x00\x01abc", b"\xff\xff\xff\xff", b"\x00\x04\x00\x01", b"\x00\x05\x00\x00x\x00"] {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.send_to(junk, address).unwrap();
        }
        assert_eq!(raw_request(address, b"\x00\x02file\x00octet\x00").map(|a| a.0), Some(5), "writes are refused");
        for (name, value) in [("blksize", "0"), ("blksize", "7"), ("blksize", "garbage"), ("windowsize", "100000"), ("timeout", "0")] {
            let answer = raw_request(address, &rrq(b"undionly.kpxe", &[(name, value)])).expect("an answer");
            assert!(answer.0 == 3 || answer.0 == 6, "{name}={value}: data or OACK, got {answer:?}");
        }
        // A duplicate-ACK storm on a live transfer does not multiply the data sent.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        client.send_to(&rrq(b"undionly.kpxe", &[]), address).unwrap();
        let mut buffer = [0u8; 2048];
        let (_, transfer) = client.recv_from(&mut buffer).unwrap();
        for _ in 0..1000 {
            client.send_to(&[0, 4, 0, 0], transfer).unwrap();
        }
        let mut duplicates = 0;
        while client.recv_from(&mut buffer).is_ok() {
            duplicates += 1;
        }
        assert!(duplicates <= 6, "a storm of stale ACKs caused {duplicates} resends");
        // And after all that, a normal client is served.
        assert_eq!(curl(address, "undionly.kpxe", &["--tftp-blksize", "1468"]).map(|d| d.len()), Some(100_000));
    })
    .await
    .unwrap();
}

/// Answers for the client that asks: its own address in `whoami`, a file outside the root
/// by name, nothing for anything else.
struct PerClient {
    outside: std::path::PathBuf,
}

impl kiln_tftp::DynamicFiles for PerClient {
    fn open<'a>(
        &'a self,
        path: &'a str,
        client: std::net::IpAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<kiln_tftp::DynamicFile>> + Send + 'a>> {
        Box::pin(async move {
            match path {
                "whoami" => Some(kiln_tftp::DynamicFile::Bytes(client.to_string().into_bytes())),
                "loader.efi" => std::fs::File::open(self.outside.join("secret")).ok().map(kiln_tftp::DynamicFile::File),
                _ => None,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_files_come_before_the_root_and_know_the_client() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("undionly.kpxe"), payload(3000)).unwrap();
    std::fs::write(outside.path().join("secret"), payload(70_000)).unwrap();
    let mut config = TftpConfig::new("127.0.0.1:0".parse().unwrap(), root.path().to_owned());
    config.dynamic = Some(std::sync::Arc::new(PerClient { outside: outside.path().to_owned() }));
    let handle = start(config).await.unwrap();
    let address = handle.local_addr();
    let results = tokio::task::spawn_blocking(move || {
        [
            curl(address, "whoami", &[]),
            curl(address, "loader.efi", &["--tftp-blksize", "1024"]),
            curl(address, "undionly.kpxe", &[]),
            curl(address, "absent", &[]),
        ]
    })
    .await
    .unwrap();
    assert_eq!(results[0].as_deref(), Some(&b"127.0.0.1"[..]));
    assert_eq!(results[1].as_deref(), Some(&payload(70_000)[..]), "a file outside the root, by name");
    assert_eq!(results[2].as_deref(), Some(&payload(3000)[..]), "the root still serves what the dynamic files do not");
    assert_eq!(results[3], None);
}
