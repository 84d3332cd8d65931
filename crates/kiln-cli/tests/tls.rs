//! TLS on the API listener, through the real binary: Kiln's own CA made on first start (its
//! key 0600), the CLI trusting it through `KILN_CA` and refusing the server without it, plain
//! HTTP answered with a clear refusal, and a certificate replaced on disk served after SIGHUP
//! while a download on a connection made before it completes.

mod support;

use std::path::Path;
use std::process::Command;

use support::{KILN, ServerProcess, token};

fn config_file(directory: &Path, tls: &str) -> std::path::PathBuf {
    let path = directory.join("kiln.toml");
    // Machines boot from a plain-HTTP listener of their own: [tls] asks for one.
    std::fs::write(&path, format!("[boot]\nlisten = \"127.0.0.1:0\"\n\n[tls]\n{tls}\n")).unwrap();
    path
}

fn cli(server: &ServerProcess, token: &str, ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(KILN);
    command.args(args).env("KILN_URL", &server.url).env("KILN_TOKEN", token).env_remove("KILN_CA");
    if let Some(ca) = ca {
        command.env("KILN_CA", ca);
    }
    command.output().unwrap()
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl").args(["-sS", "--max-time", "60"]).args(args).output().unwrap();
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn kilns_own_ca_serves_the_cli_over_https_and_plain_http_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let config = config_file(directory.path(), "names = ['kiln.example.internal']");
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let ca = data.join("tls/ca.crt");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join("tls/ca.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    let token = token(&data);

    let listed = cli(&server, &token, Some(&ca), &["node", "list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let untrusted = cli(&server, &token, None, &["node", "list"]);
    assert!(!untrusted.status.success(), "a server whose CA the CLI was not given is refused");
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("cannot reach"), "{}", String::from_utf8_lossy(&untrusted.stderr));

    let plain = server.url.replacen("https://", "http://", 1);
    let (_, answer) = curl(&["-i", &format!("{plain}/healthz")]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("speaks HTTPS only: use an https:// URL"), "{answer}");
    // The certificate names what [tls] names, and the CA chains it.
    let port = server.url.rsplit(':').next().unwrap();
    let resolve = format!("kiln.example.internal:{port}:127.0.0.1");
    let (ok, answer) =
        curl(&["--cacert", ca.to_str().unwrap(), "--resolve", &resolve, &format!("https://kiln.example.internal:{port}/healthz")]);
    assert!(ok, "{answer}");

    sslyze_finds_tls_1_2_and_1_3_only_with_strong_suites(&server.url);

    // After a restart: the same CA, so clients keep trusting the server.
    let ca_before = std::fs::read(&ca).unwrap();
    drop(server);
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    let listed = cli(&server, &token, Some(&ca), &["node", "list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
}

/// A self-signed certificate for 127.0.0.1 named `name`, with its key, by openssl.
fn self_signed(directory: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    openssl_self_signed(directory, name, &["subjectAltName=IP:127.0.0.1", "basicConstraints=critical,CA:FALSE"])
}

/// `directory/NAME.crt` and its key `NAME.key`: a self-signed P-256 certificate with subject
/// `CN=NAME` and `extensions`, made by openssl.
fn openssl_self_signed(directory: &Path, name: &str, extensions: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (directory.join(format!("{name}.crt")), directory.join(format!("{name}.key")));
    let mut command = Command::new("openssl");
    command.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj"]);
    command.arg(format!("/CN={name}"));
    for extension in extensions {
        command.args(["-addext", extension]);
    }
    let status = command.arg("-keyout").arg(&key).arg("-out").arg(&cert).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    (cert, key)
}

#[test]
fn a_certificate_replaced_on_disk_is_served_after_sighup_while_an_old_download_completes() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let (first_cert, first_key) = self_signed(directory.path(), "kiln-first");
    let (second_cert, second_key) = self_signed(directory.path(), "kiln-second");
    let (cert, key) = (directory.path().join("tls.crt"), directory.path().join("tls.key"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let config = config_file(directory.path(), &format!("cert_file = '{}'\nkey_file = '{}'", cert.display(), key.display()));
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let token = token(&data);

    // An image large enough that a slow download spans the reload.
    let disk = directory.path().join("disk.raw");
    let bytes: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&disk, &bytes).unwrap();
    for args in [vec!["image", "create", "big"], vec!["image", "upload", "big", &format!("disk={}", disk.display())]] {
        let output = cli(&server, &token, Some(&first_cert), &args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let downloaded = directory.path().join("downloaded.raw");
    let url = format!("{}/v1/images/big/versions/1/disk", server.url);
    let authorization = format!("Authorization: Bearer {token}");
    let mut download = Command::new("curl")
        .args(["-sS", "--fail", "--limit-rate", "8M", "--cacert", first_cert.to_str().unwrap(), "-H", &authorization, "-o"])
        .arg(&downloaded)
        .arg(&url)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));

    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    let status = Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !server.log().contains("certificate was reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload after SIGHUP:\n{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let healthz = format!("{}/healthz", server.url);
    let (ok, answer) = curl(&["--cacert", second_cert.to_str().unwrap(), &healthz]);
    assert!(ok, "new connections get the new certificate: {answer}");
    let (ok, _) = curl(&["--cacert", first_cert.to_str().unwrap(), &healthz]);
    assert!(!ok, "and not the old one");
    assert!(download.try_wait().unwrap().is_none(), "the download was still running across the reload");
    let finished = download.wait().unwrap();
    assert!(finished.success(), "the download on the old connection completed");
    assert!(std::fs::read(&downloaded).unwrap() == bytes, "with every byte");
}

/// sslyze (PyPI, `scripts/install-deps`) scans every protocol version: only TLS 1.2 and 1.3
/// accept a handshake, and every suite accepted is forward-secret AEAD.
fn sslyze_finds_tls_1_2_and_1_3_only_with_strong_suites(url: &str) {
    let sslyze = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kiln-tools/sslyze-venv/bin/sslyze");
    if !sslyze.exists() {
        assert!(std::env::var_os("KILN_REQUIRE_LAB").is_none_or(|value| value != "1"), "sslyze is not installed (scripts/install-deps)");
        eprintln!("skipped: sslyze is not installed (scripts/install-deps)");
        return;
    }
    let target = url.trim_start_matches("https://");
    let report = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(&sslyze)
        .args(["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--mozilla_config=disable", "--quiet"])
        .arg(format!("--json_out={}", report.path().display()))
        .arg(target)
        .output()
        .unwrap();
    assert!(output.status.success(), "sslyze: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    let scan = &report["server_scan_results"][0]["scan_result"];
    let accepted = |protocol: &str| -> Vec<String> {
        let suites = scan[protocol]["result"]["accepted_cipher_suites"].as_array().unwrap_or_else(|| panic!("no {protocol} in {report}"));
        suites.iter().map(|suite| suite["cipher_suite"]["name"].as_str().unwrap().to_owned()).collect()
    };
    for protocol in ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"] {
        assert_eq!(accepted(protocol), Vec::<String>::new(), "{protocol} is refused");
    }
    let tls_1_2 = accepted("tls_1_2_cipher_suites");
    assert!(!tls_1_2.is_empty());
    for suite in &tls_1_2 {
        let strong = suite.contains("ECDHE") && (suite.contains("GCM") || suite.contains("CHACHA20"));
        assert!(strong, "a weak TLS 1.2 suite is accepted: {suite} (all: {tls_1_2:?})");
    }
    assert!(!accepted("tls_1_3_cipher_suites").is_empty(), "TLS 1.3 is spoken");
    eprintln!("sslyze: TLS 1.2 suites {tls_1_2:?}; nothing below TLS 1.2");
}

/// A site's CA, made by openssl, given to two servers as replicas are: each issues its own
/// certificate from it, and a client holding only the site's CA trusts both. A CA with its
/// key missing stops the server with a message naming both files.
#[test]
fn a_site_ca_given_to_two_replicas_issues_certificates_clients_of_either_trust() {
    let directory = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) =
        openssl_self_signed(directory.path(), "site-ca", &["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]);
    let tls = format!("ca_cert_file = '{}'\nca_key_file = '{}'", ca_cert.display(), ca_key.display());
    let config = config_file(directory.path(), &tls);
    let ca_as_given = std::fs::read(&ca_cert).unwrap();
    for name in ["one", "two"] {
        let data = directory.path().join(name);
        let replica = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
        let (ok, answer) = curl(&["--cacert", ca_cert.to_str().unwrap(), &format!("{}/healthz", replica.url)]);
        assert!(ok, "{name} is trusted through the site's CA: {answer}");
        let listed = cli(&replica, &token(&data), Some(&ca_cert), &["node", "list"]);
        assert!(listed.status.success(), "{name}: {}", String::from_utf8_lossy(&listed.stderr));
        assert!(!data.join("tls/ca.key").exists(), "{name} made no CA of its own");
    }
    assert_eq!(std::fs::read(&ca_cert).unwrap(), ca_as_given, "the site's CA is left as given");

    // Half a CA: the certificate without its key.
    std::fs::remove_file(&ca_key).unwrap();
    let mut server = Command::new(KILN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--data-dir"])
        .arg(directory.path().join("three"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = server.kill();
            panic!("the server started with half a CA");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = server.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("half there") && stderr.contains("site-ca.key"), "{stderr}");
}
