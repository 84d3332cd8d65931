//! The `kiln` binary as a user runs it: a real `kiln serve` process and the CLI against it,
//! including what happens when the server is killed or asked to stop mid-request.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{KILN, ServerProcess, kiln, ok, token, workspace_root};

#[test]
fn discovery_through_the_cli_is_idempotent() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let metadata = std::fs::metadata(data_dir.join("admin-token")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777, 0o600);
    let token = token(&data_dir);

    let created = ok(kiln(&server, &token, &["discover", "static", "-f", "yaml", "-d", "@examples/nodes.yaml"], None));
    assert_eq!(created.matches("created").count(), 5, "{created}");
    let listed: serde_json::Value = serde_json::from_str(&ok(kiln(&server, &token, &["node", "list", "-F", "json"], None))).unwrap();
    let nodes = listed.as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(node["xname"], format!("x1000c0s0b{index}n0"));
        assert_eq!(node["nid"], index + 1);
        assert_eq!(node["interfaces"][0]["mac_addr"], format!("52:54:00:be:ef:{:02}", index + 1));
        assert_eq!(node["groups"], serde_json::json!(["compute"]));
    }
    let again = ok(kiln(
        &server,
        &token,
        &["discover", "static", "-f", "yaml", "-d", "-"],
        Some(&std::fs::read_to_string(workspace_root().join("examples/nodes.yaml")).unwrap()),
    ));
    assert_eq!(again.matches("unchanged").count(), 5, "{again}");
    let relisted: serde_json::Value = serde_json::from_str(&ok(kiln(&server, &token, &["node", "list", "-F", "json"], None))).unwrap();
    assert_eq!(relisted, listed);
    let yaml = ok(kiln(&server, &token, &["node", "show", "x1000c0s0b3n0", "-F", "yaml"], None));
    assert!(yaml.contains("name: nid004"), "{yaml}");

    // A malformed file: one clear line, a failing exit status, nothing written.
    let broken = kiln(&server, &token, &["discover", "static", "-f", "yaml", "-d", "- name: [nid009\n"], None);
    assert!(!broken.status.success());
    let message = String::from_utf8(broken.stderr).unwrap();
    assert!(message.starts_with("error: the -d argument is not valid YAML"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    let bad_xname = kiln(&server, &token, &["discover", "static", "-f", "json", "-d", r#"[{"xname": "x1000c0s0b9"}]"#], None);
    let message = String::from_utf8(bad_xname.stderr).unwrap();
    assert!(message.starts_with("error: entry 1 (x1000c0s0b9): xname: 'x1000c0s0b9' is not a node xname"), "{message}");
    assert_eq!(ok(kiln(&server, &token, &["node", "list", "-F", "json"], None)), serde_json::to_string(&listed).unwrap() + "\n");
}

#[test]
fn the_tutorial_example_loads_as_written() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let token = token(&data_dir);
    ok(kiln(&server, &token, &["discover", "static", "-f", "yaml", "-d", "@examples/tutorial-node.yaml"], None));
    let node: serde_json::Value =
        serde_json::from_str(&ok(kiln(&server, &token, &["node", "show", "node01", "-F", "json"], None))).unwrap();
    assert_eq!(node["xname"], "x1000c1s7b0n0");
    assert_eq!(node["bmc"]["mac"], "de:ca:fc:0f:ee:ee");
    assert_eq!(node["bmc"]["address"], "172.16.0.101");
    assert_eq!(node["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(node["interfaces"][2]["ip_addrs"][0], serde_json::json!({ "name": "HSN", "ip_addr": "192.168.0.1" }));
}

#[test]
fn a_bmc_password_never_reaches_output_or_logs() {
    const PASSWORD: &str = "Hunter2-Never-Shown";
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let token = token(&data_dir);
    let document = format!(r#"{{"name": "n1", "bmc": {{"address": "127.0.0.1:8000", "username": "root", "password": "{PASSWORD}"}}}}"#);
    let mut outputs = vec![ok(kiln(&server, &token, &["node", "create", "-f", "json", "-d", &document], None))];
    for format in ["table", "json", "yaml"] {
        outputs.push(ok(kiln(&server, &token, &["node", "show", "n1", "-F", format], None)));
        outputs.push(ok(kiln(&server, &token, &["node", "list", "-F", format], None)));
        outputs.push(ok(kiln(&server, &token, &["events", "-F", format], None)));
    }
    let all = outputs.join("\n");
    assert!(all.contains("******"), "{all}");
    assert!(!all.contains(PASSWORD), "the password reached CLI output");
    let database = std::fs::read(data_dir.join("kiln.db")).unwrap();
    let wal = std::fs::read(data_dir.join("kiln.db-wal")).unwrap_or_default();
    for bytes in [&database, &wal] {
        assert!(!bytes.windows(PASSWORD.len()).any(|window| window == PASSWORD.as_bytes()), "the password is stored in plain text");
    }
    drop(server_stop(server));
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap();
    assert!(log.contains("node created"), "the log was captured: {log}");
    assert!(!log.contains(PASSWORD), "the password reached the log");
}

fn server_stop(mut server: ServerProcess) -> String {
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let _ = server.child.wait();
    server.log()
}

fn big_discovery(count: usize) -> String {
    let nodes: Vec<_> = (0..count)
        .map(|n| {
            serde_json::json!({
                "name": format!("big{n:05}"), "nid": n + 1, "xname": format!("x{}c0s{}b0n0", 3000 + n / 64, n % 64),
                "group": "compute",
                "interfaces": [{ "mac_addr": format!("52:54:01:{:02x}:{:02x}:{:02x}", n >> 16, (n >> 8) & 0xff, n & 0xff),
                                 "ip_addrs": [{ "name": "management", "ip_addr": format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff) }] }]
            })
        })
        .collect();
    serde_json::to_string(&nodes).unwrap()
}

fn count_nodes(server: &ServerProcess, token: &str) -> usize {
    let listed: serde_json::Value = serde_json::from_str(&ok(kiln(server, token, &["node", "list", "-F", "json"], None))).unwrap();
    listed.as_array().unwrap().len()
}

/// The import is one transaction: a server killed while applying it keeps all of it or none.
/// The kill is timed from the server's own "applying static discovery" log line, so it lands
/// after the request was parsed and validated, inside (or just after) the transaction.
#[test]
fn sigkill_mid_import_keeps_all_or_nothing() {
    const COUNT: usize = 3000;
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let document = big_discovery(COUNT);
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 20, 100, 300] {
        let mut server = ServerProcess::start(&data_dir, &[]);
        let token = token(&data_dir);
        let before = count_nodes(&server, &token);
        let applying_before = server.log().matches("applying static discovery").count();
        let url = server.url.clone();
        let body = document.clone();
        let token_for_request = token.clone();
        let request = std::thread::spawn(move || {
            Command::new(KILN)
                .args(["discover", "static", "-f", "json", "-d", "-"])
                .env("KILN_URL", url)
                .env("KILN_TOKEN", token_for_request)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    child.stdin.take().unwrap().write_all(body.as_bytes())?;
                    child.wait()
                })
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.log().matches("applying static discovery").count() == applying_before {
            assert!(Instant::now() < deadline, "the import never reached the store");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill();
        let _ = request.join();
        let server = ServerProcess::start(&data_dir, &[]);
        let after = count_nodes(&server, &token);
        assert!(after == before || after == COUNT, "after a SIGKILL {delay_ms} ms into the import: {after} nodes (before: {before})");
        outcomes.push((delay_ms, before, after));
        drop(server);
        if after == COUNT {
            break;
        }
    }
    eprintln!("SIGKILL outcomes (ms after the import began, nodes before, nodes after): {outcomes:?}");
    assert_eq!(outcomes[0].2, 0, "a kill at the start of the transaction keeps none of it: {outcomes:?}");
}

/// SIGTERM lets the request in flight finish, then the server exits cleanly.
#[test]
fn sigterm_finishes_in_flight_requests() {
    const COUNT: usize = 2000;
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let token = token(&data_dir);
    let url = server.url.clone();
    let document = big_discovery(COUNT);
    let request = std::thread::spawn(move || {
        let started = Instant::now();
        let mut child = Command::new(KILN)
            .args(["discover", "static", "-f", "json", "-d", "-"])
            .env("KILN_URL", url)
            .env("KILN_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(document.as_bytes()).unwrap();
        }
        (child.wait_with_output().unwrap(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
    let mut server = server;
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    let (output, elapsed) = request.join().unwrap();
    assert!(status.success(), "the server exits cleanly on SIGTERM: {status:?}\n{}", server.log());
    assert!(output.status.success(), "the in-flight import completed ({elapsed:?}): {}", String::from_utf8_lossy(&output.stderr));
    assert!(server.log().contains("SIGTERM: finishing in-flight requests"));
    let server = ServerProcess::start(&data_dir, &[]);
    assert_eq!(count_nodes(&server, &self::token(&data_dir)), COUNT);
}

#[test]
fn config_check_prints_the_validated_configuration_or_the_error() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("kiln.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:9999\"\ndatabase_url = \"postgres://kiln:pw@db/kiln\"\n").unwrap();
    let output = Command::new(KILN).args(["config", "check", "--config"]).arg(&config).env_remove("KILN_LISTEN").output().unwrap();
    let text = ok(output);
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("postgres://kiln:******@db/kiln"), "passwords in URLs are not printed: {text}");
    let output =
        Command::new(KILN).args(["config", "check", "--config"]).arg(&config).env("KILN_LISTEN", "127.0.0.1:7777").output().unwrap();
    assert!(ok(output).contains("127.0.0.1:7777"), "the environment overrides the file");
    let output = Command::new(KILN).args(["config", "check", "--config"]).arg(&config).args(["--listen", "nowhere"]).output().unwrap();
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8(output.stderr).unwrap().trim_end(),
        "error: invalid configuration: listen: 'nowhere' is not an address:port such as 127.0.0.1:8080"
    );
}

#[test]
fn the_tutorial_boot_yaml_loads_unchanged_and_boot_scripts_follow_it() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let token = token(&data_dir);
    ok(kiln(&server, &token, &["discover", "static", "-f", "yaml", "-d", "@examples/nodes.yaml"], None));
    ok(kiln(&server, &token, &["boot", "params", "set", "-f", "yaml", "-d", "@examples/boot.yaml"], None));
    let shown: serde_json::Value = serde_yaml_value(&ok(kiln(&server, &token, &["boot", "params", "get", "-F", "yaml"], None)));
    let file: serde_json::Value = serde_yaml_value(&std::fs::read_to_string(workspace_root().join("examples/boot.yaml")).unwrap());
    assert_eq!(shown[0], file, "get shows the file as it was loaded");
    // add refuses to replace; set replaces.
    let again = kiln(&server, &token, &["boot", "params", "add", "-f", "yaml", "-d", "@examples/boot.yaml"], None);
    assert!(String::from_utf8(again.stderr).unwrap().contains("already has boot parameters (use set to replace them)"));
    // Script injection is refused at the API, naming the field.
    let injected = kiln(
        &server,
        &token,
        &["boot", "params", "set", "-f", "json", "-d", r#"{"kernel": "http://x/k", "params": "quiet\nshell", "hosts": ["Default"]}"#],
        None,
    );
    assert_eq!(
        String::from_utf8(injected.stderr).unwrap().trim(),
        "error: params: contains a line break or another control character [400 invalid_input]"
    );
    // The boot script of a node follows the parameters.
    let script = Command::new("curl").args(["-sf", &format!("{}/boot/v1/bootscript?mac=52:54:00:be:ef:03", server.url)]).output().unwrap();
    let script = String::from_utf8(script.stdout).unwrap();
    assert!(script.starts_with("#!ipxe\necho Kiln: booting nid003 (52:54:00:be:ef:03)\nkernel --name kernel http://172.16.0.254:9000/boot-images/efi-images/compute/debug/vmlinuz-5.14.0-570.21.1.el9_6.x86_64 initrd=initrd nomodeset"), "{script}");
    ok(kiln(&server, &token, &["boot", "params", "delete", "-f", "yaml", "-d", "macs: ['52:54:00:be:ef:03']"], None));
    let script = Command::new("curl").args(["-sf", &format!("{}/boot/v1/bootscript?mac=52:54:00:be:ef:03", server.url)]).output().unwrap();
    assert!(String::from_utf8(script.stdout).unwrap().contains("no boot parameters for node nid003"));
    let bad_mac = Command::new("curl").args(["-s", &format!("{}/boot/v1/bootscript?mac=zz", server.url)]).output().unwrap();
    assert!(String::from_utf8(bad_mac.stdout).unwrap().contains("invalid_input"));
}

fn serde_yaml_value(text: &str) -> serde_json::Value {
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(text).unwrap()).unwrap()
}
