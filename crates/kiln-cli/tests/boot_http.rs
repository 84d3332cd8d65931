//! The boot listener through `kiln serve`, over raw sockets: files whole, in ranges and
//! conditionally on one keep-alive connection, pipelining, confinement, the router behind
//! it (boot scripts, cloud-init, public images), hostile requests, and proof that file bytes
//! go out with sendfile(2).

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{ServerProcess, kiln, ok, token};

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn start_with_boot_listener(directory: &Path) -> (ServerProcess, String, String) {
    let config = directory.join("kiln.toml");
    std::fs::write(&config, "[boot]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let data_dir = directory.join("data");
    let server = ServerProcess::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let boot_url = server.boot_url.clone().expect("the server announced its boot listener");
    (server, token(&data_dir), boot_url)
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// Reads one answer from a keep-alive connection: by Content-Length, chunked, or to EOF.
fn read_answer(reader: &mut BufReader<TcpStream>, head_only: bool) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut answer = Answer { status, headers, body: Vec::new() };
    if head_only || status == 304 || status == 204 {
        return answer;
    }
    if let Some(length) = answer.header("content-length").map(|text| text.parse::<usize>().unwrap()) {
        answer.body.resize(length, 0);
        reader.read_exact(&mut answer.body).unwrap();
    } else if answer.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            answer.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut answer.body).unwrap();
    }
    answer
}

fn connect(url: &str) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n{extra}\r\n")
}

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 7 % 251) as u8).collect()
}

#[test]
fn files_go_whole_in_ranges_and_conditionally_on_one_connection() {
    let directory = tempfile::tempdir().unwrap();
    let (_server, _admin, boot) = start_with_boot_listener(directory.path());
    let files = directory.path().join("data/boot-files");
    std::fs::create_dir_all(&files).unwrap();
    let content = pattern(3 << 20);
    std::fs::write(files.join("vmlinuz"), &content).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", files.join("escape")).unwrap();
    std::fs::write(directory.path().join("outside"), b"secret").unwrap();

    let (mut stream, mut reader) = connect(&boot);
    stream.write_all(get("/boot/files/vmlinuz", "").as_bytes()).unwrap();
    let whole = read_answer(&mut reader, false);
    assert_eq!(whole.status, 200);
    assert!(whole.body == content, "the file comes back byte for byte");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.header("etag").unwrap().to_owned();
    let last_modified = whole.header("last-modified").unwrap().to_owned();

    stream.write_all(b"HEAD /boot/files/vmlinuz HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
    let head = read_answer(&mut reader, true);
    assert_eq!((head.status, head.header("content-length")), (200, Some("3145728")));

    let cases: &[(&str, u16, Option<&[u8]>)] = &[
        ("Range: bytes=100-199\r\n", 206, Some(&content[100..200])),
        ("Range: bytes=-10\r\n", 206, Some(&content[content.len() - 10..])),
        ("Range: bytes=3145000-\r\n", 206, Some(&content[3145000..])),
        ("Range: bytes=99999999-\r\n", 416, None),
        (&format!("If-None-Match: {etag}\r\n"), 304, None),
        (&format!("If-Modified-Since: {last_modified}\r\n"), 304, None),
        ("Range: bytes=0-9\r\nIf-Range: \"stale\"\r\n", 200, Some(&content[..])),
        (&format!("Range: bytes=0-9\r\nIf-Range: {etag}\r\n"), 206, Some(&content[..10])),
    ];
    for (headers, status, body) in cases {
        stream.write_all(get("/boot/files/vmlinuz", headers).as_bytes()).unwrap();
        let answer = read_answer(&mut reader, false);
        assert_eq!(answer.status, *status, "{headers}");
        if let Some(body) = body {
            assert!(answer.body == *body, "{headers}: {} bytes", answer.body.len());
        }
        if *status == 416 {
            assert_eq!(answer.header("content-range"), Some("bytes */3145728"));
        }
    }
    let range = {
        stream.write_all(get("/boot/files/vmlinuz", "Range: bytes=100-199\r\n").as_bytes()).unwrap();
        read_answer(&mut reader, false)
    };
    assert_eq!(range.header("content-range"), Some("bytes 100-199/3145728"));

    // Nothing outside the directory, however it is named.
    for path in [
        "/boot/files/escape",
        "/boot/files/../outside",
        "/boot/files/%2e%2e/outside",
        "/boot/files/..%2foutside",
        "/boot/files/",
        "/boot/filesvmlinuz",
        "/boot/files/vmlinuz/",
        "/boot/files//etc/passwd",
    ] {
        stream.write_all(get(path, "").as_bytes()).unwrap();
        let answer = read_answer(&mut reader, false);
        assert_eq!(answer.status, 404, "{path}: {}", String::from_utf8_lossy(&answer.body));
        assert!(!String::from_utf8_lossy(&answer.body).contains("root:"), "{path}");
    }

    // HEAD of something absent: the headers of the 404, no body to misread as the next answer.
    stream.write_all(b"HEAD /boot/files/absent HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut reader, true).status, 404);
    stream.write_all(b"HEAD /boot/files/vmlinuz HTTP/1.1\r\nRange: bytes=99999999-\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut reader, true).status, 416);

    // Pipelined: two requests in one write, two answers in order.
    let two = get("/boot/files/vmlinuz", "Range: bytes=0-3\r\n") + &get("/boot/files/vmlinuz", "Range: bytes=4-7\r\n");
    stream.write_all(two.as_bytes()).unwrap();
    assert!(read_answer(&mut reader, false).body == content[0..4]);
    assert!(read_answer(&mut reader, false).body == content[4..8]);

    // HTTP/1.0 without keep-alive: one answer, then the server closes.
    let (mut stream, mut reader) = connect(&boot);
    stream.write_all(b"GET /boot/files/vmlinuz HTTP/1.0\r\nRange: bytes=0-1\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut reader, false).status, 206);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "closed after the answer");
}

#[test]
fn the_router_behind_it_serves_scripts_cloud_init_and_public_images() {
    let directory = tempfile::tempdir().unwrap();
    let (server, admin, boot) = start_with_boot_listener(directory.path());
    let node = serde_json::json!([{
        "name": "n1", "nid": 1, "group": "compute",
        "interfaces": [{"mac_addr": "52:54:00:aa:00:01", "ip_addrs": [{"name": "m", "ip_addr": "127.0.0.1"}]}],
    }]);
    ok(kiln(&server, &admin, &["discover", "static", "-f", "json", "-d", &node.to_string()], None));
    let params = "kernel: '{{ server.url }}/boot/files/vmlinuz'\nparams: 'console=ttyS0 ds=nocloud-net;s={{ server.url }}/cloud-init/'\nmacs: ['52:54:00:aa:00:01']\n";
    ok(kiln(&server, &admin, &["boot", "params", "set", "-f", "yaml", "-d", params], None));

    let (mut stream, mut reader) = connect(&boot);
    stream.write_all(get("/boot/v1/bootscript?mac=52:54:00:aa:00:01", "").as_bytes()).unwrap();
    let script = read_answer(&mut reader, false);
    let text = String::from_utf8(script.body).unwrap();
    assert_eq!(script.status, 200);
    assert!(text.contains(&format!("kernel {boot}/boot/files/vmlinuz")), "scripts point machines at the boot listener: {text}");
    assert!(text.contains(&format!("s={boot}/cloud-init/")), "{text}");

    // Cloud-init on the same connection: the node is known by its address.
    stream.write_all(get("/cloud-init/meta-data", "").as_bytes()).unwrap();
    let meta = read_answer(&mut reader, false);
    assert_eq!(meta.status, 200, "{}", String::from_utf8_lossy(&meta.body));
    assert!(String::from_utf8_lossy(&meta.body).contains("local_ipv4: 127.0.0.1"));
    stream.write_all(get("/cloud-init/meta-data?id=other", "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut reader, false).status, 400);
    // The operators' API is not on this port.
    stream.write_all(get("/v1/nodes", &format!("Authorization: Bearer {admin}\r\n")).as_bytes()).unwrap();
    assert_eq!(read_answer(&mut reader, false).status, 404);

    // A public image's artifact comes from the blob file; a private one is not served.
    let kernel = directory.path().join("vmlinuz");
    std::fs::write(&kernel, pattern(1 << 20)).unwrap();
    for (name, visibility) in [("pub-image", "public"), ("private-image", "private")] {
        ok(kiln(&server, &admin, &["image", "create", name, "--visibility", visibility], None));
        ok(kiln(&server, &admin, &["image", "upload", name, &format!("kernel={}", kernel.display())], None));
    }
    let version = json(kiln(&server, &admin, &["image", "versions", "pub-image", "-F", "json"], None));
    let sha = version[0]["artifacts"][0]["sha256"].as_str().unwrap().to_owned();
    stream.write_all(get("/boot/images/pub-image/latest/kernel", "").as_bytes()).unwrap();
    let image = read_answer(&mut reader, false);
    assert_eq!(image.status, 200);
    assert!(image.body == pattern(1 << 20));
    assert_eq!(image.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(image.header("cache-control"), Some("public, max-age=31536000, immutable"));
    stream.write_all(get("/boot/images/pub-image/1/kernel", &format!("If-None-Match: \"{sha}\"\r\n")).as_bytes()).unwrap();
    assert_eq!(read_answer(&mut reader, false).status, 304);
    stream.write_all(get("/boot/images/private-image/1/kernel", "").as_bytes()).unwrap();
    let private = read_answer(&mut reader, false);
    assert_eq!(private.status, 404, "{}", String::from_utf8_lossy(&private.body));
}

#[test]
fn hostile_requests_get_an_error_and_the_listener_keeps_serving() {
    let directory = tempfile::tempdir().unwrap();
    let (_server, _admin, boot) = start_with_boot_listener(directory.path());
    std::fs::create_dir_all(directory.path().join("data/boot-files")).unwrap();
    std::fs::write(directory.path().join("data/boot-files/initrd.img"), b"initrd").unwrap();
    let huge_header = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(20_000));
    let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", (0..200).map(|n| format!("X-{n}: y\r\n")).collect::<String>());
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), 400),
        (b"GET http://elsewhere/boot/files/initrd.img HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /boot/files/initrd.img HTTP/9.9\r\n\r\n".to_vec(), 400),
        (b"GET /boot/files/initrd.img HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
        (huge_header.into_bytes(), 431),
        (many_headers.into_bytes(), 431),
        (b"POST /boot/v1/phone-home HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 501),
        (b"POST /boot/v1/phone-home HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(), 413),
        (b"POST /boot/v1/phone-home HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(), 400),
        (b"DELETE /boot/files/initrd.img HTTP/1.1\r\n\r\n".to_vec(), 405),
    ];
    for (request, status) in cases {
        let (mut stream, mut reader) = connect(&boot);
        stream.write_all(&request).unwrap();
        let answer = read_answer(&mut reader, false);
        assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(&request[..request.len().min(60)]));
    }
    // Connections that send half a request and go away, or nothing at all.
    for _ in 0..50 {
        let (mut stream, _) = connect(&boot);
        stream.write_all(b"GET /boot/files/initrd.img HTTP/1.1\r\nHost:").unwrap();
    }
    let (mut stream, mut reader) = connect(&boot);
    stream.write_all(get("/boot/files/initrd.img", "").as_bytes()).unwrap();
    let answer = read_answer(&mut reader, false);
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"initrd"[..]), "still serving");
}

/// The bytes of a file leave through sendfile(2), not through reads and writes of this
/// process: traced with strace while a 16 MiB file is fetched.
#[test]
fn file_bytes_leave_through_sendfile() {
    let strace = Path::new("/usr/bin/strace");
    if !strace.exists() || !cfg!(target_os = "linux") || unsafe_geteuid() != 0 {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but strace (as root) is missing");
        eprintln!("skipping: needs strace and root");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let (server, _admin, boot) = start_with_boot_listener(directory.path());
    let files = directory.path().join("data/boot-files");
    std::fs::create_dir_all(&files).unwrap();
    let size = 16 << 20;
    std::fs::write(files.join("rootfs.squashfs"), pattern(size)).unwrap();
    let trace = directory.path().join("trace");
    let mut tracer = std::process::Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=sendfile,write,writev,sendto,sendmsg", "-o"])
        .arg(&trace)
        .args(["-p", &server.child.id().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // strace prints nothing when attached; give it a moment, then check it is still there.
    std::thread::sleep(Duration::from_millis(800));
    assert!(tracer.try_wait().unwrap().is_none(), "strace attached");
    let (mut stream, mut reader) = connect(&boot);
    stream.write_all(get("/boot/files/rootfs.squashfs", "").as_bytes()).unwrap();
    let answer = read_answer(&mut reader, false);
    assert_eq!((answer.status, answer.body.len()), (200, size));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending SIGINT to the strace child this test started; strace detaches on it.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let _ = tracer.wait();
    let text = std::fs::read_to_string(&trace).unwrap();
    let returned = |call: &str| -> usize {
        text.lines()
            .filter(|line| line.contains(&format!(" {call}(")) || line.contains(&format!("<... {call} resumed>")))
            .filter_map(|line| line.rsplit("= ").next().and_then(|value| value.trim().parse::<usize>().ok()))
            .sum()
    };
    let by_sendfile = returned("sendfile");
    let by_writes = returned("write") + returned("writev") + returned("sendto") + returned("sendmsg");
    assert!(by_sendfile >= size, "sendfile sent {by_sendfile} of {size} bytes:\n{text}");
    assert!(by_writes < 64 * 1024, "only heads are written: {by_writes} bytes");
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
