//! The image store as a user drives it: `kiln serve` and `kiln image …` processes, real HTTP
//! servers to import from, a real S3 server, a full disk, broken connections and races.

mod support;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{KILN, ServerProcess, kiln, ok, token};

/// `kiln serve` with its data in `directory/data`; returns the data directory, the server
/// and the administrator's token.
fn start_in(directory: &Path, args: &[&str], environment: &[(&str, &str)]) -> (PathBuf, ServerProcess, String) {
    let data_dir = directory.join("data");
    let server = ServerProcess::start_with_env(&data_dir, args, environment);
    let token = token(&data_dir);
    (data_dir, server, token)
}

/// `kiln` with a file's contents or paths relative to `directory`.
fn kiln_in(server: &ServerProcess, token: &str, directory: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("KILN_URL", &server.url)
        .env("KILN_TOKEN", token)
        .env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .current_dir(directory)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "expected a failure, got: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).unwrap()
}

/// Writes `length` bytes of varied content (seeded so that files differ) without holding
/// them in memory.
fn write_file(path: &Path, length: u64, seed: u64) {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < length {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let take = (length - written).min(block.len() as u64) as usize;
        file.write_all(&block[..take]).unwrap();
        written += take as u64;
    }
    file.flush().unwrap();
}

fn files_equal(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut buffer_a, mut buffer_b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut buffer_a).unwrap();
        if n == 0 {
            return b.read(&mut buffer_b).unwrap() == 0;
        }
        b.read_exact(&mut buffer_b[..n]).unwrap();
        if buffer_a[..n] != buffer_b[..n] {
            return false;
        }
    }
}

/// Bytes in the files under `directory`.
fn directory_bytes(directory: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(directory) else { return 0 };
    entries
        .map_while(Result::ok)
        .map(|entry| {
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() { directory_bytes(&entry.path()) } else { metadata.len() }
        })
        .sum()
}

fn file_count(directory: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(directory) else { return 0 };
    entries.map_while(Result::ok).map(|entry| if entry.metadata().unwrap().is_dir() { file_count(&entry.path()) } else { 1 }).sum()
}

/// The peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|line| line.strip_prefix("VmHWM:")).and_then(|value| value.trim().trim_end_matches(" kB").parse().ok()).unwrap()
}

#[test]
fn a_2_gib_image_goes_up_and_comes_back_with_flat_server_memory() {
    let directory = tempfile::tempdir().unwrap();
    let (data_dir, server, token) = start_in(directory.path(), &[], &[]);
    let source = directory.path().join("big.img");
    write_file(&source, 2 << 30, 7);
    ok(kiln(&server, &token, &["image", "create", "big"], None));
    let started = Instant::now();
    let version = json(kiln_in(&server, &token, directory.path(), &["image", "upload", "big", "big.img", "-F", "json"]));
    let upload_time = started.elapsed();
    assert_eq!(version["artifacts"][0]["size"], 2u64 << 30);
    let started = Instant::now();
    ok(kiln_in(&server, &token, directory.path(), &["image", "download", "big:1", "-o", "back.img"]));
    let download_time = started.elapsed();
    assert!(files_equal(&source, &directory.path().join("back.img")), "the download differs from the upload");
    let peak = peak_rss_kib(server.child.id());
    eprintln!("2 GiB: upload {upload_time:?}, download {download_time:?}, server peak RSS {} MiB", peak / 1024);
    assert!(peak < 100 * 1024, "server peak memory {} MiB is over 100 MiB", peak / 1024);
    assert_eq!(file_count(&data_dir.join("blobs/spool")), 0, "no spool file is left");
}

/// A directory served by Python's http.server, which sends Last-Modified and answers
/// If-Modified-Since with 304, as ordinary web servers do. It logs each request.
struct HttpServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl HttpServer {
    fn start(root: &Path, log: &Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "python3 -m http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer { child, url: format!("http://127.0.0.1:{port}"), log: log.to_owned() }
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn imports_verify_checksums_and_skip_unchanged_sources() {
    let directory = tempfile::tempdir().unwrap();
    let web_root = directory.path().join("www");
    std::fs::create_dir(&web_root).unwrap();
    let allowed = directory.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let config = directory.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("[images]\nimport_allowed_dirs = [\"{}\"]\nimport_allowed_networks = [\"127.0.0.0/8\"]\n", allowed.display()),
    )
    .unwrap();
    let (data_dir, server, token) = start_in(directory.path(), &["--config", config.to_str().unwrap()], &[]);
    let web = HttpServer::start(&web_root, &directory.path().join("http.log"));
    let image = web_root.join("disk.qcow2");
    assert!(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&image).arg("64M").status().unwrap().success());
    let sha = support::sha256_of(&image);
    // No `image create` first: import makes the image (the README's example as written).
    let url = format!("{}/disk.qcow2", web.url);

    // No checksum: refused before anything is fetched.
    let refused = failed(kiln(&server, &token, &["image", "import", "fedora", "--url", &url], None));
    assert!(refused.contains("--checksum"), "{refused}");

    // A wrong checksum: refused, and nothing is left behind.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let message = failed(kiln(&server, &token, &["image", "import", "fedora", "--url", &url, "--checksum", &wrong], None));
    assert!(message.contains("checksum mismatch") && message.contains(&sha), "{message}");
    assert_eq!(file_count(&data_dir.join("blobs")), 0, "a refused import leaves no bytes");
    let missing = failed(kiln(&server, &token, &["image", "show", "fedora"], None));
    assert!(missing.contains("not found"), "a refused import leaves no new image behind: {missing}");

    // The right checksum: a version, with its source and format recorded.
    let imported = json(kiln(
        &server,
        &token,
        &["image", "import", "fedora", "--url", &url, "--checksum", &format!("sha256:{sha}"), "-F", "json"],
        None,
    ));
    assert_eq!(imported["unchanged"], false);
    assert!(ok(kiln(&server, &token, &["image", "show", "fedora"], None)).contains("fedora"), "the import created the image");
    let artifact = &imported["version"]["artifacts"][0];
    assert_eq!((artifact["format"].as_str(), artifact["virtual_size"].as_u64()), (Some("qcow2"), Some(64 << 20)));
    assert_eq!(artifact["source_url"], url);
    let gets_before = web.requests().matches("GET /disk.qcow2").count();

    // Again, unchanged at the source: a conditional request, answered 304; nothing fetched.
    let again = json(kiln(
        &server,
        &token,
        &["image", "import", "fedora", "--url", &url, "--checksum", &format!("sha256:{sha}"), "-F", "json"],
        None,
    ));
    assert_eq!((again["unchanged"].as_bool(), again["version"]["version"].as_i64()), (Some(true), Some(1)));
    let log = web.requests();
    assert_eq!(log.matches("GET /disk.qcow2").count(), gets_before + 1);
    assert!(log.lines().last().unwrap().contains("\" 304 "), "the second fetch was not conditional: {log}");

    // A checksum file, as distributions publish them; and an MD5 instead of SHA-256.
    std::fs::write(web_root.join("other.img"), vec![1u8; 4096]).unwrap();
    let other_md5 = String::from_utf8(Command::new("md5sum").arg(web_root.join("other.img")).output().unwrap().stdout).unwrap();
    std::fs::write(web_root.join("MD5SUMS"), other_md5.replace(&web_root.join("other.img").display().to_string(), "other.img")).unwrap();
    let by_file = json(kiln(
        &server,
        &token,
        &[
            "image",
            "import",
            "fedora",
            "--url",
            &format!("{}/other.img", web.url),
            "--checksum-url",
            &format!("{}/MD5SUMS", web.url),
            "-F",
            "json",
        ],
        None,
    ));
    assert_eq!(by_file["version"]["version"], 2);
    assert!(by_file["version"]["artifacts"][0]["checksums"]["md5"].is_string());

    // file:// only from the allowed directory, symbolic links resolved.
    std::fs::copy(&image, allowed.join("local.qcow2")).unwrap();
    std::os::unix::fs::symlink(&image, allowed.join("escape.qcow2")).unwrap();
    let local = format!("file://{}", allowed.join("local.qcow2").display());
    ok(kiln(&server, &token, &["image", "import", "fedora", "--url", &local, "--checksum", &sha], None));
    for refused in [format!("file://{}", image.display()), format!("file://{}", allowed.join("escape.qcow2").display())] {
        let message = failed(kiln(&server, &token, &["image", "import", "fedora", "--url", &refused, "--checksum", &sha], None));
        assert!(message.contains("not under a directory the server allows"), "{message}");
    }

    // A qcow2 with a backing file is refused whatever its checksum.
    let backed = web_root.join("backed.qcow2");
    assert!(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&backed)
            .status()
            .unwrap()
            .success()
    );
    let message = failed(kiln(
        &server,
        &token,
        &["image", "import", "fedora", "--url", &format!("{}/backed.qcow2", web.url), "--checksum", &support::sha256_of(&backed)],
        None,
    ));
    assert!(message.contains("backing file"), "{message}");
    assert_eq!(file_count(&data_dir.join("blobs/spool")), 0);
}

#[test]
fn versions_share_blobs_and_clones_copy_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let (data_dir, server, token) = start_in(directory.path(), &[], &[]);
    let work = directory.path();
    write_file(&work.join("root-1.img"), 48 << 20, 1);
    write_file(&work.join("root-2.img"), 48 << 20, 2);
    std::fs::write(work.join("vmlinuz"), {
        let mut kernel = vec![0u8; 1 << 20];
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        kernel
    })
    .unwrap();
    std::fs::write(work.join("initrd.img"), b"070701".repeat(1000)).unwrap();
    ok(kiln(&server, &token, &["image", "create", "compute", "--visibility", "public"], None));
    let first = json(kiln_in(
        &server,
        &token,
        work,
        &["image", "upload", "compute", "root=root-1.img", "kernel=vmlinuz", "initrd=initrd.img", "--tag", "stable", "-F", "json"],
    ));
    let kinds: Vec<&str> = first["artifacts"].as_array().unwrap().iter().map(|a| a["format"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["raw", "kernel", "initramfs"]);
    let blobs = data_dir.join("blobs/sha256");
    let after_first = directory_bytes(&blobs);
    // Version 2 replaces the root and keeps the kernel and initrd.
    let second = json(kiln_in(&server, &token, work, &["image", "upload", "compute", "root=root-2.img", "--base", "1", "-F", "json"]));
    assert_eq!(second["version"], 2);
    assert_eq!(second["artifacts"][1]["sha256"], first["artifacts"][1]["sha256"]);
    assert_eq!(directory_bytes(&blobs) - after_first, 48 << 20, "only the new root is stored");
    assert_eq!(file_count(&blobs), 4);

    // A clone is rows, not bytes.
    let before_clone = directory_bytes(&blobs);
    let started = Instant::now();
    let clone = json(kiln(&server, &token, &["image", "clone", "compute:stable", "compute-copy", "-F", "json"], None));
    let elapsed = started.elapsed();
    assert_eq!((clone["latest_version"].as_i64(), directory_bytes(&blobs)), (Some(1), before_clone));
    assert!(elapsed < Duration::from_secs(5), "cloning took {elapsed:?}");
    let cloned = json(kiln(&server, &token, &["image", "versions", "compute-copy", "-F", "json"], None));
    assert_eq!(cloned[0]["artifacts"], first["artifacts"]);

    // Booting machines fetch artifacts by stable URL, in ranges, revalidating by ETag.
    let kernel_sha = first["artifacts"][1]["sha256"].as_str().unwrap();
    let head = curl(&["-sI", &format!("{}/boot/images/compute/stable/kernel", server.url)]);
    assert!(head.contains(&format!("etag: \"{kernel_sha}\"")) && head.contains("accept-ranges: bytes"), "{head}");
    assert!(head.contains("last-modified: ") && head.contains(" GMT"), "{head}");
    let partial = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "-r",
        "514-517",
        &format!("{}/boot/images/compute/1/kernel", server.url),
    ]);
    assert_eq!(partial, "206 4");
    let revalidated = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("If-None-Match: \"{kernel_sha}\""),
        &format!("{}/boot/images/compute/latest/kernel", server.url),
    ]);
    assert_eq!(revalidated, "304");
    let beyond = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-r",
        "9999999999-",
        &format!("{}/boot/images/compute/1/kernel", server.url),
    ]);
    assert_eq!(beyond, "416");

    // Deleting versions frees what only they used, after gc; the rest stays.
    ok(kiln(&server, &token, &["image", "delete", "compute"], None));
    ok(kiln(&server, &token, &["image", "delete", "compute-copy:1"], None));
    let report = json(kiln(&server, &token, &["image", "gc", "-F", "json"], None));
    assert_eq!(report["blobs_removed"], 0, "the grace period protects blobs just released");
    let verify = json(kiln(&server, &token, &["image", "verify", "-F", "json"], None));
    assert_eq!(verify["blobs_checked"], 4);
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl").args(args).output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn gc_reclaims_unused_blobs_and_verify_finds_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("kiln.toml");
    std::fs::write(&config, "[images]\ngc_grace_seconds = 0\n").unwrap();
    let (data_dir, server, token) = start_in(directory.path(), &["--config", config.to_str().unwrap()], &[]);
    let work = directory.path();
    write_file(&work.join("a.img"), 3 << 20, 1);
    write_file(&work.join("b.img"), 3 << 20, 2);
    ok(kiln(&server, &token, &["image", "create", "img"], None));
    ok(kiln_in(&server, &token, work, &["image", "upload", "img", "a.img"]));
    let second = json(kiln_in(&server, &token, work, &["image", "upload", "img", "b.img", "-F", "json"]));
    ok(kiln(&server, &token, &["image", "delete", "img:1"], None));
    std::thread::sleep(Duration::from_millis(20));
    let report = json(kiln(&server, &token, &["image", "gc", "-F", "json"], None));
    assert_eq!((report["blobs_removed"].as_u64(), report["bytes_freed"].as_u64()), (Some(1), Some(3 << 20)));
    ok(kiln(&server, &token, &["image", "verify"], None));
    // Flip one byte of the remaining blob: verify names it and fails.
    let sha = second["artifacts"][0]["sha256"].as_str().unwrap();
    let blob = data_dir.join("blobs/sha256").join(&sha[..2]).join(sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let output = kiln(&server, &token, &["image", "verify"], None);
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stdout).unwrap().contains(&format!("CORRUPT {sha}")));
}

/// Sends a PATCH whose body stops halfway, then closes the connection.
fn broken_patch(server: &ServerProcess, token: &str, upload: &str, offset: u64, body: &[u8], declared: usize) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let head = format!(
        "PATCH /v1/uploads/{upload} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
}

fn http_json(server: &ServerProcess, token: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let output = Command::new("curl")
        .args(["-s", "-X", method, "-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/json"])
        .args(if body.is_empty() { vec![] } else { vec!["-d", body] })
        .arg(format!("{}{path}", server.url))
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn a_broken_upload_resumes_and_a_race_for_one_version_has_one_winner() {
    let directory = tempfile::tempdir().unwrap();
    let (_, server, token) = start_in(directory.path(), &[], &[]);
    let work = directory.path();
    write_file(&work.join("disk.img"), 8 << 20, 5);
    let bytes = std::fs::read(work.join("disk.img")).unwrap();
    ok(kiln(&server, &token, &["image", "create", "resumed"], None));

    // The client goes away after 3 MiB of a declared 8 MiB.
    let upload = http_json(&server, &token, "POST", "/v1/uploads", "{}");
    let id = upload["id"].as_str().unwrap();
    broken_patch(&server, &token, id, 0, &bytes[..3 << 20], bytes.len());
    let state = http_json(&server, &token, "GET", &format!("/v1/uploads/{id}"), "");
    let offset = state["offset"].as_u64().unwrap();
    assert!(offset > 0 && offset <= 3 << 20, "kept {offset} bytes");
    // A PATCH at the wrong offset is refused with the right one.
    let wrong = Command::new("curl")
        .args(["-s", "-X", "PATCH", "-H", &format!("Authorization: Bearer {token}"), "-H", "Upload-Offset: 0", "--data-binary", "x"])
        .arg(format!("{}/v1/uploads/{id}", server.url))
        .output()
        .unwrap();
    let wrong = String::from_utf8(wrong.stdout).unwrap();
    assert!(wrong.contains("offset_mismatch") && wrong.contains(&format!("from offset {offset}")), "{wrong}");
    // Resume from there; the version holds exactly the file.
    let rest_path = work.join("rest.bin");
    std::fs::write(&rest_path, &bytes[offset as usize..]).unwrap();
    let resumed = Command::new("curl")
        .args(["-s", "-X", "PATCH", "-H", &format!("Authorization: Bearer {token}"), "-H", &format!("Upload-Offset: {offset}")])
        .args(["--data-binary", &format!("@{}", rest_path.display())])
        .arg(format!("{}/v1/uploads/{id}", server.url))
        .output()
        .unwrap();
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(resumed["offset"], 8 << 20);
    let version = http_json(
        &server,
        &token,
        "POST",
        "/v1/images/resumed/versions",
        &format!("{{\"artifacts\":[{{\"kind\":\"disk\",\"upload\":\"{id}\"}}]}}"),
    );
    assert_eq!(version["artifacts"][0]["sha256"], support::sha256_of(&work.join("disk.img")), "{version}");

    // Two uploads race to create version 2: one wins, the other is told why.
    write_file(&work.join("x.img"), 4 << 20, 8);
    write_file(&work.join("y.img"), 4 << 20, 9);
    let racers: Vec<Child> = ["x.img", "y.img"]
        .iter()
        .map(|file| {
            Command::new(KILN)
                .args(["image", "upload", "resumed", file, "--number", "2"])
                .env("KILN_URL", &server.url)
                .env("KILN_TOKEN", &token)
                .current_dir(work)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<Output> = racers.into_iter().map(|child| child.wait_with_output().unwrap()).collect();
    let winners = outcomes.iter().filter(|output| output.status.success()).count();
    assert_eq!(winners, 1, "exactly one upload creates version 2");
    let loser = outcomes.iter().find(|output| !output.status.success()).unwrap();
    let message = String::from_utf8_lossy(&loser.stderr);
    assert!(message.contains("version resumed:2 already exists"), "{message}");
    let versions = json(kiln(&server, &token, &["image", "versions", "resumed", "-F", "json"], None));
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(versions[0]["artifacts"], version["artifacts"], "the earlier version is intact");
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().ok()?;
        if status.success() {
            Some(SmallDisk { path: path.to_owned() })
        } else {
            if std::env::var("KILN_REQUIRE_LAB").as_deref() == Ok("1") {
                panic!("mounting a tmpfs failed (KILN_REQUIRE_LAB=1)");
            }
            None
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_refuses_the_upload_and_keeps_earlier_versions() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let blob_dir = directory.path().join("small-disk");
    let Some(_disk) = SmallDisk::mount(&blob_dir, "24m") else {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let config = directory.path().join("kiln.toml");
    std::fs::write(&config, format!("[images]\nblob_dir = \"{}\"\n", blob_dir.display())).unwrap();
    let server = ServerProcess::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let token = token(&data_dir);
    let work = directory.path();
    write_file(&work.join("small.img"), 8 << 20, 1);
    write_file(&work.join("large.img"), 32 << 20, 2);
    ok(kiln(&server, &token, &["image", "create", "tight"], None));
    ok(kiln_in(&server, &token, work, &["image", "upload", "tight", "small.img"]));
    let message = failed(kiln_in(&server, &token, work, &["image", "upload", "tight", "large.img"]));
    assert!(message.contains("no space left"), "{message}");
    let versions = json(kiln(&server, &token, &["image", "versions", "tight", "-F", "json"], None));
    assert_eq!(versions.as_array().unwrap().len(), 1, "no version appears for the failed upload");
    ok(kiln_in(&server, &token, work, &["image", "download", "tight:1", "-o", "small-back.img"]));
    assert!(files_equal(&work.join("small.img"), &work.join("small-back.img")));
    assert!(server.child.id() > 0 && std::fs::metadata(format!("/proc/{}", server.child.id())).is_ok(), "the server is still up");
}

#[test]
fn tenants_see_their_images_and_public_ones_only() {
    let directory = tempfile::tempdir().unwrap();
    let (_, server, admin) = start_in(directory.path(), &[], &[]);
    let work = directory.path();
    let mut tokens = Vec::new();
    for (project, user) in [("alpha", "alice"), ("beta", "bob")] {
        ok(kiln(&server, &admin, &["project", "create", project], None));
        ok(kiln(&server, &admin, &["user", "create", user], None));
        ok(kiln(&server, &admin, &["project", "add-member", project, user], None));
        let created = json(kiln(&server, &admin, &["token", "create", "--user", user, "-F", "json"], None));
        tokens.push(created["secret"].as_str().unwrap().to_owned());
    }
    let (alice, bob) = (&tokens[0], &tokens[1]);
    write_file(&work.join("a.img"), 1 << 20, 3);
    ok(kiln(&server, alice, &["image", "create", "alpha-private"], None));
    ok(kiln_in(&server, alice, work, &["image", "upload", "alpha-private", "a.img"]));
    ok(kiln(&server, alice, &["image", "create", "alpha-public", "--visibility", "public"], None));
    ok(kiln_in(&server, alice, work, &["image", "upload", "alpha-public", "a.img"]));

    let seen = json(kiln(&server, bob, &["image", "list", "-F", "json"], None));
    let names: Vec<&str> = seen.as_array().unwrap().iter().map(|image| image["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha-public"]);
    for args in [
        &["image", "show", "alpha-private"][..],
        &["image", "versions", "alpha-private"],
        &["image", "download", "alpha-private:1", "-o", "stolen.img"],
        &["image", "clone", "alpha-private", "mine"],
        &["image", "delete", "alpha-private"],
    ] {
        let message = failed(kiln_in(&server, bob, work, args));
        assert!(message.contains("image 'alpha-private' not found"), "{args:?}: {message}");
    }
    assert!(!work.join("stolen.img").exists() && !work.join("stolen.img.part").exists());
    // A public image can be used (downloaded, cloned into one's project) but not changed.
    ok(kiln_in(&server, bob, work, &["image", "download", "alpha-public:1", "-o", "public.img"]));
    let clone = json(kiln(&server, bob, &["image", "clone", "alpha-public", "beta-copy", "-F", "json"], None));
    assert_eq!(clone["project"], "beta");
    let message = failed(kiln_in(&server, bob, work, &["image", "upload", "alpha-public", "a.img"]));
    assert!(message.contains("you may use it but not change it"), "{message}");
    let message = failed(kiln(&server, bob, &["image", "gc"], None));
    assert!(message.contains("administrator"), "{message}");
    // Machines booting see public images only.
    let private = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/boot/images/alpha-private/1/disk", server.url)]);
    let public = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/boot/images/alpha-public/1/disk", server.url)]);
    assert_eq!((private.as_str(), public.as_str()), ("404", "200"));
}

/// The environment that points `kiln serve` at the test's bucket through `endpoint`.
fn s3_environment(endpoint: &str) -> [(&str, &str); 5] {
    [
        ("KILN_S3_ENDPOINT", endpoint),
        ("KILN_S3_BUCKET", kiln_test_utils::s3::BUCKET),
        ("KILN_S3_REGION", kiln_test_utils::s3::REGION),
        ("KILN_S3_ACCESS_KEY_ID", kiln_test_utils::s3::ACCESS_KEY_ID),
        ("KILN_S3_SECRET_ACCESS_KEY", kiln_test_utils::s3::SECRET_ACCESS_KEY),
    ]
}

#[test]
fn the_server_stores_blobs_in_s3() {
    let Some(s3) = kiln_test_utils::s3::TestS3::start() else { return };
    let directory = tempfile::tempdir().unwrap();
    let environment = s3_environment(s3.endpoint.as_str());
    let (data_dir, server, token) = start_in(directory.path(), &[], &environment);
    let work = directory.path();
    write_file(&work.join("disk.img"), 40 << 20, 4);
    ok(kiln(&server, &token, &["image", "create", "in-s3", "--visibility", "public"], None));
    ok(kiln_in(&server, &token, work, &["image", "upload", "in-s3", "disk.img"]));
    assert!(!data_dir.join("blobs").exists(), "no local blob directory with S3");
    ok(kiln_in(&server, &token, work, &["image", "download", "in-s3", "-o", "back.img"]));
    assert!(files_equal(&work.join("disk.img"), &work.join("back.img")));
    let partial = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "-r",
        "100-199",
        &format!("{}/boot/images/in-s3/1/disk", server.url),
    ]);
    assert_eq!(partial, "206 100");
    ok(kiln(&server, &token, &["image", "verify"], None));
    assert!(!server.log().contains(kiln_test_utils::s3::SECRET_ACCESS_KEY), "the S3 secret never reaches the log");
}

#[test]
fn get_kernel_takes_the_kernel_and_initramfs_out_of_a_squashfs_root() {
    let directory = tempfile::tempdir().unwrap();
    let (_, server, token) = start_in(directory.path(), &[], &[]);
    let work = directory.path();
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let mut kernel = vec![7u8; 3 << 20];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(tree.join("boot/vmlinuz-6.1.0-9-amd64"), &kernel).unwrap();
    std::fs::write(tree.join("boot/vmlinuz-5.10.0-1-amd64"), b"an older kernel").unwrap();
    std::fs::write(tree.join("boot/initrd.img-6.1.0-9-amd64"), b"070701".repeat(50_000)).unwrap();
    std::fs::write(tree.join("boot/initrd.img-5.10.0-1-amd64"), b"070701").unwrap();
    std::fs::write(tree.join("etc/hostname"), b"node\n").unwrap();
    std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-9-amd64", tree.join("vmlinuz")).unwrap();
    let squashfs = work.join("root.squashfs");
    let status = Command::new("mksquashfs").arg(&tree).arg(&squashfs).args(["-quiet", "-noappend", "-comp", "xz"]).status().unwrap();
    assert!(status.success());
    ok(kiln(&server, &token, &["image", "create", "diskless"], None));
    ok(kiln_in(&server, &token, work, &["image", "upload", "diskless", "root.squashfs", "--kind", "root", "--disk-format", "squashfs"]));
    let version = json(kiln(&server, &token, &["image", "get-kernel", "diskless", "-F", "json"], None));
    assert_eq!(version["version"], 2);
    assert!(version["note"].as_str().unwrap().contains("/boot/vmlinuz-6.1.0-9-amd64"), "{version}");
    let kinds: Vec<(&str, &str)> =
        version["artifacts"].as_array().unwrap().iter().map(|a| (a["kind"].as_str().unwrap(), a["format"].as_str().unwrap())).collect();
    assert_eq!(kinds, [("root", "squashfs"), ("kernel", "kernel"), ("initrd", "initramfs")]);
    ok(kiln_in(&server, &token, work, &["image", "download", "diskless:2", "--artifact", "kernel", "-o", "vmlinuz.out"]));
    assert_eq!(std::fs::read(work.join("vmlinuz.out")).unwrap(), kernel);
    // A version without a SquashFS root cannot give a kernel, and says why.
    std::fs::write(work.join("plain.img"), vec![0u8; 4096]).unwrap();
    ok(kiln(&server, &token, &["image", "create", "plain"], None));
    ok(kiln_in(&server, &token, work, &["image", "upload", "plain", "plain.img", "--kind", "root"]));
    let message = failed(kiln(&server, &token, &["image", "get-kernel", "plain:1"], None));
    assert!(message.contains("only from an uncompressed SquashFS"), "{message}");
}

#[test]
fn s3_failing_mid_upload_leaves_no_version_and_no_spool() {
    let Some(s3) = kiln_test_utils::s3::TestS3::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Every multipart part upload fails: the bucket answers 500 mid-upload, every retry.
    let rule: kiln_test_utils::s3::FaultRule =
        std::sync::Arc::new(|method: &str, path: &str| method == "PUT" && path.contains("partNumber="));
    let proxy = runtime.block_on(kiln_test_utils::s3::FaultProxy::start(&s3.endpoint, rule));
    let directory = tempfile::tempdir().unwrap();
    let environment = s3_environment(proxy.endpoint.as_str());
    let (data_dir, server, token) = start_in(directory.path(), &[], &environment);
    let work = directory.path();
    write_file(&work.join("small.img"), 1 << 20, 1);
    write_file(&work.join("large.img"), 40 << 20, 2);
    ok(kiln(&server, &token, &["image", "create", "flaky"], None));
    // A small image goes up in one PUT, which the proxy lets through.
    ok(kiln_in(&server, &token, work, &["image", "upload", "flaky", "small.img"]));
    let message = failed(kiln_in(&server, &token, work, &["image", "upload", "flaky", "large.img"]));
    assert!(message.contains("the blob store failed") && message.contains("multipart upload"), "{message}");
    assert!(!message.contains(&proxy.endpoint), "the client is not told the store's address: {message}");
    assert!(proxy.failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let versions = json(kiln(&server, &token, &["image", "versions", "flaky", "-F", "json"], None));
    assert_eq!(versions.as_array().unwrap().len(), 1, "no version for the failed upload");
    assert_eq!(file_count(&data_dir.join("spool")), 0, "the spool file is removed");
    ok(kiln_in(&server, &token, work, &["image", "download", "flaky:1", "-o", "small-back.img"]));
    assert!(files_equal(&work.join("small.img"), &work.join("small-back.img")), "the earlier version is intact");
    drop(server);
    drop(proxy);
}

#[test]
fn boot_files_carry_etags_and_stay_inside_their_directory() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let files = directory.path().join("boot-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("vmlinuz"), vec![5u8; 10_000]).unwrap();
    std::fs::write(directory.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(directory.path().join("secret"), files.join("escape")).unwrap();
    let config = directory.path().join("kiln.toml");
    std::fs::write(&config, format!("[boot]\nfiles_dir = \"{}\"\n", files.display())).unwrap();
    let server = ServerProcess::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let url = format!("{}/boot/files/vmlinuz", server.url);
    let head = curl(&["-sI", &url]);
    let etag = head.lines().find_map(|line| line.strip_prefix("etag: ")).expect("an ETag").trim().to_owned();
    assert!(head.contains("last-modified: ") && head.contains("content-length: 10000"), "{head}");
    let revalidated = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(revalidated, "304");
    let partial = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-r", "100-199", &url]);
    assert_eq!(partial, "206 100");
    for escape in ["/boot/files/escape", "/boot/files/../secret", "/boot/files/%2e%2e/secret"] {
        let answer = curl(&["-s", "--path-as-is", "-w", " %{http_code}", &format!("{}{escape}", server.url)]);
        assert!(!answer.contains("outside"), "{escape} read a file outside the directory: {answer}");
    }
}
