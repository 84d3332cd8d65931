//! The cloud-init metadata service through `kiln serve` and the `kiln` CLI: the tutorial's
//! files, nodes reading only their own data (over real sockets from each node's own
//! address), tenancy, and Debian's stock cloud-init configuring an isolated root from Kiln.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;

use support::{KILN, ServerProcess, kiln, ok, token};

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "expected a failure, got: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).unwrap()
}

fn start(directory: &Path, args: &[&str]) -> (ServerProcess, String) {
    let data_dir = directory.join("data");
    let server = ServerProcess::start(&data_dir, args);
    let token = token(&data_dir);
    (server, token)
}

/// A GET sent from `source` (a loopback address such as 127.0.0.21, so the server sees a
/// node's address) with extra headers. Returns the status and the body.
fn get_from(source: Ipv4Addr, server: &ServerProcess, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let address: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_tutorial_cloud_init_files_load_unchanged() {
    let directory = tempfile::tempdir().unwrap();
    let (server, admin) = start(directory.path(), &[]);
    ok(kiln(&server, &admin, &["discover", "static", "-f", "yaml", "-d", "@examples/nodes.yaml"], None));
    ok(kiln(&server, &admin, &["cloud-init", "defaults", "set", "-f", "yaml", "-d", "@examples/ci-defaults.yaml"], None));
    let defaults = ok(kiln(&server, &admin, &["cloud-init", "defaults", "get", "-F", "json-pretty"], None));
    expect_test::expect![[r#"
        {
          "base-url": "http://172.16.0.254:8081/cloud-init",
          "cluster-name": "demo",
          "nid-length": 3,
          "public-keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOYl8uT1q9ZxKilnTutorialKeyOnlyForTests1 root@head"
          ],
          "short-name": "nid"
        }
    "#]]
    .assert_eq(&defaults);

    ok(kiln(&server, &admin, &["cloud-init", "group", "set", "-f", "yaml", "-d", "@examples/ci-group-compute.yaml"], None));
    let config = ok(kiln(&server, &admin, &["cloud-init", "group", "get", "config", "compute"], None));
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(support::workspace_root().join("examples/ci-group-compute.yaml")).unwrap()).unwrap();
    assert_eq!(config, file[0]["file"]["content"].as_str().unwrap(), "the file comes back as written");

    let rendered = ok(kiln(&server, &admin, &["cloud-init", "group", "render", "compute", "x1000c0s0b0n0"], None));
    assert!(
        rendered
            .contains("ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOYl8uT1q9ZxKilnTutorialKeyOnlyForTests1 root@head']"),
        "{rendered}"
    );
    assert!(rendered.starts_with("#cloud-config\n"), "the template line is gone, as on the node: {rendered}");

    ok(kiln(&server, &admin, &["cloud-init", "node", "set", "-d", r#"[{"id":"x1000c0s0b0n0","local-hostname":"compute1"}]"#], None));
    let meta_data = ok(kiln(&server, &admin, &["cloud-init", "node", "get", "meta-data", "x1000c0s0b0n0", "-F", "yaml"], None));
    let instance_id = meta_data.lines().find_map(|line| line.strip_prefix("  instance-id: ")).unwrap().to_owned();
    assert!(instance_id.starts_with("i-") && instance_id.len() == 10, "{instance_id}");
    expect_test::expect![[r#"
        - cluster-name: demo
          hostname: nid001
          instance-id: INSTANCE
          instance_data:
            v1:
              instance_id: INSTANCE
              local_ipv4: 172.16.0.1
              public_keys:
              - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOYl8uT1q9ZxKilnTutorialKeyOnlyForTests1 root@head
              vendor_data:
                cloud_init_base_url: http://172.16.0.254:8081/cloud-init
                cluster_name: demo
                groups:
                  compute:
                    Description: compute config
                version: '1.0'
          local-hostname: compute1
    "#]]
    .assert_eq(&meta_data.replace(&instance_id, "INSTANCE"));
    let again = ok(kiln(&server, &admin, &["cloud-init", "node", "get", "meta-data", "x1000c0s0b0n0", "-F", "yaml"], None));
    assert_eq!(again, meta_data, "the instance-id is stable");

    let vendor_data = ok(kiln(&server, &admin, &["cloud-init", "node", "get", "vendor-data", "x1000c0s0b0n0"], None));
    assert_eq!(vendor_data, "#include\nhttp://172.16.0.254:8081/cloud-init/compute.yaml\n");

    // Bad input names what is wrong and changes nothing.
    let error = failed(kiln(&server, &admin, &["cloud-init", "defaults", "set", "-d", "nid-length: 0"], None));
    assert!(error.contains("nid-length: 0 is not between 1 and 10"), "{error}");
    let error = failed(kiln(
        &server,
        &admin,
        &[
            "cloud-init",
            "group",
            "set",
            "-d",
            "- name: ok\n  file: {content: \"#cloud-config\\n\"}\n- name: bad\n  file: {content: \"users: []\"}\n",
        ],
        None,
    ));
    assert!(error.contains("[1].file.content: starts with 'users: []'"), "{error}");
    let error = failed(kiln(&server, &admin, &["cloud-init", "group", "get", "ok"], None));
    assert!(error.contains("not found"), "a refused list sets none of its groups: {error}");
    let error = failed(kiln(&server, &admin, &["cloud-init", "node", "set", "-d", r#"[{"id":"nosuchnode","local-hostname":"x"}]"#], None));
    assert!(error.contains("node 'nosuchnode' not found"), "{error}");
    let still = ok(kiln(&server, &admin, &["cloud-init", "defaults", "get", "-F", "json-pretty"], None));
    assert_eq!(still, defaults);
}

struct TestNode {
    name: String,
    address: Ipv4Addr,
    token: String,
    /// Strings that appear only in this node's documents, never in a request.
    markers: Vec<String>,
}

/// Every node asks for every other node's data, by path, by query, with a forged
/// `X-Forwarded-For`, with the other's name as a token, for the other's group: every attempt
/// is refused and no answer holds a byte of the other node's data.
#[test]
fn nodes_read_only_their_own_data() {
    const NODES: u8 = 8;
    let directory = tempfile::tempdir().unwrap();
    let (server, admin) = start(directory.path(), &[]);
    ok(kiln(&server, &admin, &["cloud-init", "defaults", "set", "-d", "{cluster-name: iso, nid-length: 3, short-name: nid}"], None));
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let name = format!("cinode{index}");
        let address = Ipv4Addr::new(127, 0, 0, 40 + index);
        let node = serde_json::json!({
            "name": name, "nid": 500 + u32::from(index), "xname": format!("x9000c0s{index}b0n0"), "groups": ["compute", format!("only-{name}")],
            "interfaces": [{"mac_addr": format!("52:54:00:c1:00:{index:02x}"), "ip_addrs": [{"name": "m", "ip_addr": address.to_string()}]}],
        });
        ok(kiln(&server, &admin, &["node", "create", "-f", "json", "-d", &node.to_string()], None));
        let group = format!("- name: only-{name}\n  file:\n    content: \"#cloud-config\\n# group-marker-{index}\\n\"\n");
        ok(kiln(&server, &admin, &["cloud-init", "group", "set", "-d", &group], None));
        let data = serde_json::json!([{ "id": name, "local-hostname": format!("private-host-{index}"), "secret-data": {"munge": format!("s3cr3t-{index}")} }]);
        ok(kiln(&server, &admin, &["cloud-init", "node", "set", "-f", "json", "-d", &data.to_string()], None));
        let minted = json(kiln(&server, &admin, &["cloud-init", "node", "token", &name, "-F", "json"], None));
        let token = minted["token"].as_str().unwrap().to_owned();
        let meta = json(kiln(&server, &admin, &["cloud-init", "node", "get", "meta-data", &name, "-F", "json"], None));
        let instance_id = meta[0]["instance-id"].as_str().unwrap().to_owned();
        let markers = vec![
            format!("private-host-{index}"),
            format!("s3cr3t-{index}"),
            format!("group-marker-{index}"),
            format!("nid{}", 500 + index as u32),
            instance_id,
        ];
        nodes.push(TestNode { name, address, token, markers });
    }
    ok(kiln(
        &server,
        &admin,
        &["cloud-init", "group", "set", "-d", "- name: compute\n  file: {content: \"#cloud-config\\n{}\\n\"}\n"],
        None,
    ));

    for node in &nodes {
        // Its own documents, from its own address, without secrets; with its token, with them.
        let (status, body) = get_from(node.address, &server, "/cloud-init/meta-data", &[]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&node.markers[0]) && !body.contains(&node.markers[1]), "{body}");
        let own_group = format!("/cloud-init/only-{}.yaml", node.name);
        assert!(get_from(node.address, &server, &own_group, &[]).1.contains(&node.markers[2]));
        let (status, body) = get_from(node.address, &server, &format!("/cloud-init-secure/{}/meta-data", node.token), &[]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&node.markers[1]), "secrets come with the token: {body}");
        let bearer = format!("Bearer {}", node.token);
        let (status, body) = get_from(node.address, &server, "/cloud-init-secure/meta-data", &[("Authorization", &bearer)]);
        assert!(status == 200 && body.contains(&node.markers[1]), "{status} {body}");
    }

    let mut attempts = 0;
    for node in &nodes {
        for other in nodes.iter().filter(|other| other.name != node.name) {
            let xname = format!("x9000c0s{}b0n0", other.name.trim_start_matches("cinode"));
            let other_ip = other.address.to_string();
            let bearer_name = format!("Bearer {}", other.name);
            let own_bearer = format!("Bearer {}", node.token);
            let chain = format!("{other_ip}, {}", node.address);
            let paths: Vec<(String, Vec<(&str, &str)>)> = vec![
                (format!("/cloud-init/{}/meta-data", other.name), vec![]),
                (format!("/cloud-init/{xname}/meta-data"), vec![]),
                (format!("/cloud-init/{other_ip}/user-data"), vec![]),
                (format!("/cloud-init/meta-data?id={}", other.name), vec![]),
                (format!("/cloud-init/meta-data?xname={xname}"), vec![]),
                (format!("/cloud-init/vendor-data?ip={other_ip}"), vec![]),
                ("/cloud-init/meta-data".to_owned(), vec![("X-Forwarded-For", other_ip.as_str())]),
                ("/cloud-init/meta-data".to_owned(), vec![("X-Forwarded-For", chain.as_str())]),
                (format!("/cloud-init/only-{}.yaml", other.name), vec![]),
                (format!("/cloud-init/only-{}.yaml", other.name), vec![("X-Forwarded-For", other_ip.as_str())]),
                (format!("/cloud-init/admin/impersonation/{}/meta-data", other.name), vec![]),
                (format!("/cloud-init/admin/impersonation/{}/meta-data", other.name), vec![("Authorization", own_bearer.as_str())]),
                (format!("/cloud-init-secure/{}/meta-data", other.name), vec![]),
                (format!("/cloud-init-secure/{}x/meta-data", &node.token[..node.token.len() - 1]), vec![]),
                ("/cloud-init-secure/meta-data".to_owned(), vec![("Authorization", bearer_name.as_str())]),
                (format!("/v1/cloud-init/nodes/{}/meta-data", other.name), vec![]),
                (format!("/v1/cloud-init/nodes/{}/meta-data", other.name), vec![("Authorization", own_bearer.as_str())]),
                (format!("/v1/cloud-init/groups/compute/render/{}", other.name), vec![]),
            ];
            for (path, headers) in paths {
                let (status, body) = get_from(node.address, &server, &path, &headers);
                attempts += 1;
                assert!((400..500).contains(&status), "{} asking for {path} {headers:?} got {status}: {body}", node.name);
                for marker in &other.markers {
                    assert!(!body.contains(marker.as_str()), "{} got {}'s {marker} from {path}: {body}", node.name, other.name);
                }
            }
        }
    }
    eprintln!("{attempts} attempts to read another node's data, all refused");
    // Secrets are sealed at rest: no database file holds one in clear.
    for entry in std::fs::read_dir(directory.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("kiln.db") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(7).any(|window| window == b"s3cr3t-"), "{} holds a secret in clear", path.display());
        }
    }
    assert_eq!(attempts, usize::from(NODES) * usize::from(NODES - 1) * 18);
    let (status, _) = get_from(Ipv4Addr::new(127, 0, 0, 99), &server, "/cloud-init/meta-data", &[]);
    assert_eq!(status, 404, "an address no node holds gets nothing");
}

#[test]
fn trusted_proxies_and_impersonation_are_opt_in() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("kiln.toml");
    std::fs::write(&config, "[cloud_init]\ntrusted_proxies = [\"127.0.0.1\"]\nimpersonation = true\n").unwrap();
    let (server, admin) = start(directory.path(), &["--config", config.to_str().unwrap()]);
    for (index, name) in ["alpha-node", "beta-node"].iter().enumerate() {
        let node = serde_json::json!({
            "name": name, "nid": index + 1,
            "interfaces": [{"mac_addr": format!("52:54:00:c2:00:{index:02x}"), "ip_addrs": [{"name": "m", "ip_addr": format!("127.0.0.{}", 60 + index)}]}],
        });
        ok(kiln(&server, &admin, &["node", "create", "-f", "json", "-d", &node.to_string()], None));
    }
    let proxy = Ipv4Addr::LOCALHOST;
    let (status, body) = get_from(proxy, &server, "/cloud-init/meta-data", &[("X-Forwarded-For", "127.0.0.61")]);
    assert_eq!(status, 200, "a trusted proxy speaks for the node: {body}");
    assert!(body.contains("local_ipv4: 127.0.0.61"), "{body}");
    // The right-most address that is not a trusted proxy is the client: what a client put
    // in front of the proxy's own entry does not count.
    let (_, body) = get_from(proxy, &server, "/cloud-init/meta-data", &[("X-Forwarded-For", "127.0.0.61, 127.0.0.60")]);
    assert!(body.contains("local_ipv4: 127.0.0.60"), "{body}");
    let (status, _) = get_from(Ipv4Addr::new(127, 0, 0, 60), &server, "/cloud-init/meta-data", &[("X-Forwarded-For", "127.0.0.61")]);
    assert_eq!(status, 403, "a node is not a trusted proxy");
    // Served documents follow changes at once (they are rendered once per change, not per request).
    ok(kiln(&server, &admin, &["cloud-init", "node", "set", "-d", "[{id: beta-node, local-hostname: renamed-beta}]"], None));
    let (_, body) = get_from(proxy, &server, "/cloud-init/meta-data", &[("X-Forwarded-For", "127.0.0.61")]);
    assert!(body.contains("local-hostname: renamed-beta"), "{body}");

    let bearer = format!("Bearer {admin}");
    let (status, body) = get_from(proxy, &server, "/cloud-init/admin/impersonation/beta-node/meta-data", &[("Authorization", &bearer)]);
    assert!(status == 200 && body.contains("local_ipv4: 127.0.0.61"), "{status} {body}");
    ok(kiln(&server, &admin, &["user", "create", "carol"], None));
    let carol = json(kiln(&server, &admin, &["token", "create", "--user", "carol", "-F", "json"], None));
    let bearer = format!("Bearer {}", carol["secret"].as_str().unwrap());
    let (status, _) = get_from(proxy, &server, "/cloud-init/admin/impersonation/beta-node/meta-data", &[("Authorization", &bearer)]);
    assert_eq!(status, 403, "impersonation is for administrators");
    drop(server);

    // Without the settings: no proxies, no impersonation.
    let directory = tempfile::tempdir().unwrap();
    let (server, admin) = start(directory.path(), &[]);
    let bearer = format!("Bearer {admin}");
    let (status, body) = get_from(proxy, &server, "/cloud-init/admin/impersonation/beta-node/meta-data", &[("Authorization", &bearer)]);
    assert!(status == 403 && body.contains("impersonation is disabled"), "{status} {body}");
    let (status, _) = get_from(proxy, &server, "/cloud-init/meta-data", &[("X-Forwarded-For", "127.0.0.61")]);
    assert_eq!(status, 403);
}

#[test]
fn project_members_manage_cloud_init_for_their_own_nodes_and_groups() {
    let directory = tempfile::tempdir().unwrap();
    let (server, admin) = start(directory.path(), &[]);
    let mut tokens = Vec::new();
    for (project, user, node) in [("alpha", "alice", "a-node"), ("beta", "bob", "b-node")] {
        ok(kiln(&server, &admin, &["project", "create", project], None));
        ok(kiln(&server, &admin, &["user", "create", user], None));
        ok(kiln(&server, &admin, &["project", "add-member", project, user], None));
        ok(kiln(&server, &admin, &["node", "create", "-d", &format!("{{name: {node}}}")], None));
        ok(kiln(&server, &admin, &["node", "allocate", "--project", project, node], None));
        let created = json(kiln(&server, &admin, &["token", "create", "--user", user, "-F", "json"], None));
        tokens.push(created["secret"].as_str().unwrap().to_owned());
    }
    let (alice, bob) = (&tokens[0], &tokens[1]);
    ok(kiln(&server, alice, &["cloud-init", "node", "set", "-d", "[{id: a-node, local-hostname: alpha1}]"], None));
    ok(kiln(
        &server,
        alice,
        &["cloud-init", "group", "set", "--project", "alpha", "-d", "[{name: alpha-compute, file: {content: \"#cloud-config\\n{}\\n\"}}]"],
        None,
    ));
    ok(kiln(&server, alice, &["node", "update", "a-node", "-d", "{groups: [alpha-compute]}"], None));
    let vendor_data = ok(kiln(&server, alice, &["cloud-init", "node", "get", "vendor-data", "a-node"], None));
    assert!(vendor_data.ends_with("/cloud-init/alpha-compute.yaml\n"), "{vendor_data}");

    for args in [
        &["cloud-init", "node", "set", "-d", "[{id: a-node, local-hostname: stolen}]"][..],
        &["cloud-init", "node", "get", "meta-data", "a-node"],
        &["cloud-init", "node", "get", "data", "a-node"],
        &["cloud-init", "node", "token", "a-node"],
        &["cloud-init", "group", "get", "alpha-compute"],
        &["cloud-init", "group", "delete", "alpha-compute"],
        &["cloud-init", "group", "render", "alpha-compute", "a-node"],
    ] {
        let error = failed(kiln(&server, bob, args, None));
        assert!(error.contains("not found"), "bob {args:?}: {error}");
    }
    // Setting a config by a name only another project has answers as for a name nowhere.
    let set = |name: &str| {
        let data = format!("[{{name: {name}, file: {{content: \"#cloud-config\\n{{}}\\n\"}}}}]");
        failed(kiln(&server, bob, &["cloud-init", "group", "set", "-d", &data], None)).replace(name, "NAME")
    };
    assert_eq!(set("alpha-compute"), set("nowhere-group"));
    let error = failed(kiln(&server, bob, &["cloud-init", "defaults", "set", "-d", "{cluster-name: mine}"], None));
    assert!(error.contains("administrator"), "{error}");
    let error = failed(kiln(&server, bob, &["cloud-init", "group", "set", "-d", "[{name: global-group}]"], None));
    assert!(error.contains("only administrators create groups without a project"), "{error}");
    let listed = json(kiln(&server, bob, &["cloud-init", "group", "list", "-F", "json"], None));
    assert_eq!(listed, serde_json::json!([]));
    let meta = json(kiln(&server, alice, &["cloud-init", "node", "get", "meta-data", "a-node", "-F", "json"], None));
    assert_eq!(meta[0]["local-hostname"], "alpha1", "bob changed nothing");
}

/// Debian's stock cloud-init, with the NoCloud datasource pointed at Kiln, configures an
/// isolated root: the group's templated cloud-config puts the cluster's SSH key into root's
/// authorized_keys, and the hostname is the node's. The node is a second host on the lab
/// segment, so the server knows it by its own address.
#[test]
fn stock_cloud_init_applies_the_group_config() {
    if let Err(reason) = kiln_lab::available() {
        if std::env::var("KILN_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("KILN_REQUIRE_LAB=1 but the lab cannot run: {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    if !Path::new("/usr/bin/cloud-init").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but cloud-init is not installed");
        eprintln!("skipping: cloud-init is not installed (apt-get install cloud-init)");
        return;
    }
    let mut lab = kiln_lab::Lab::create().unwrap();
    let kiln_binary = Path::new(KILN);
    lab.start_server(kiln_binary, "").unwrap();
    let node_namespace = lab.add_host().unwrap();
    let node = serde_json::json!([{
        "name": "node07", "nid": 7, "xname": "x1000c0s0b6n0", "group": "compute",
        "interfaces": [{"mac_addr": "52:54:00:be:ef:07", "ip_addrs": [{"name": "management", "ip_addr": "10.77.0.2"}]}],
    }]);
    lab.kiln(kiln_binary, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    // The tutorial's defaults, with the base URL this lab's server has.
    let defaults = std::fs::read_to_string(support::workspace_root().join("examples/ci-defaults.yaml"))
        .unwrap()
        .replace("http://172.16.0.254:8081", &lab.boot_url());
    lab.kiln(kiln_binary, &["cloud-init", "defaults", "set", "-f", "yaml", "-d", &defaults]).unwrap();
    let group = support::workspace_root().join("examples/ci-group-compute.yaml");
    lab.kiln(kiln_binary, &["cloud-init", "group", "set", "-f", "yaml", "-d", &format!("@{}", group.display())]).unwrap();

    let scratch = lab.directory.path().join("cloud-init-root");
    std::fs::create_dir_all(&scratch).unwrap();
    let script = support::workspace_root().join("crates/kiln-cli/tests/data/run-cloud-init.sh");
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &node_namespace, "unshare", "--mount", "--uts", "--propagation", "private"])
        .arg(&script)
        .arg(format!("{}/cloud-init/", lab.boot_url()))
        .arg(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cloud-init failed:\n{stdout}\n{}\n{}", String::from_utf8_lossy(&output.stderr), lab.server_log());
    eprintln!("{stdout}");
    assert!(stdout.contains("hostname: nid007\n"), "the hostname is the node's: {stdout}");
    assert!(stdout.contains("etc-hostname: nid007\n"), "{stdout}");
    let keys = stdout.split("authorized_keys:\n").nth(1).unwrap().split("network files:").next().unwrap();
    assert_eq!(
        keys.trim(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOYl8uT1q9ZxKilnTutorialKeyOnlyForTests1 root@head",
        "root's authorized_keys holds the cluster key, and only it"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(scratch.to_str().unwrap()), "nothing stays mounted");
}

/// A node with static addresses reads its `network-config` from its own address, and Debian's
/// stock cloud-init turns it into the system's network files (systemd-networkd's and
/// ifupdown's); a node without one is told it has none.
#[test]
fn stock_cloud_init_renders_a_nodes_static_network_configuration() {
    if std::process::Command::new("cloud-init").arg("--version").output().is_err() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but cloud-init is not installed");
        eprintln!("skipping: cloud-init is not installed (apt-get install cloud-init)");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let (server, admin) = start(directory.path(), &[]);
    let address = Ipv4Addr::new(127, 0, 0, 61);
    let node = serde_json::json!({
        "name": "static61",
        "interfaces": [{"mac_addr": "52:54:00:c1:00:61", "ip_addrs": [
            {"name": "provisioning", "ip_addr": address.to_string(), "prefix_length": 8, "gateway": "127.0.0.1", "dns_servers": ["127.0.0.53"]},
            {"name": "storage", "ip_addr": "10.78.0.61", "prefix_length": 24, "vlan": 100}
        ]}],
    });
    ok(kiln(&server, &admin, &["node", "create", "-f", "json", "-d", &node.to_string()], None));
    let (status, body) = get_from(address, &server, "/cloud-init/network-config", &[]);
    assert_eq!(status, 200, "{body}");
    let config = directory.path().join("network-config");
    std::fs::write(&config, &body).unwrap();
    for (renderer, file, expected) in [
        (
            "networkd",
            "etc/systemd/network/10-cloud-init-kiln0.network",
            &["MACAddress=52:54:00:c1:00:61", "Address=127.0.0.61/8", "Gateway=127.0.0.1", "DNS=127.0.0.53"][..],
        ),
        ("networkd", "etc/systemd/network/10-cloud-init-kiln0.100.network", &["Address=10.78.0.61/24"][..]),
        ("eni", "etc/network/interfaces.d/50-cloud-init", &["iface kiln0 inet static", "vlan-raw-device kiln0", "vlan_id 100"][..]),
    ] {
        let output_directory = directory.path().join(renderer);
        let output = std::process::Command::new("cloud-init")
            .args(["devel", "net-convert", "-k", "yaml", "-D", "debian", "-O", renderer, "-p"])
            .arg(&config)
            .arg("-d")
            .arg(&output_directory)
            .output()
            .unwrap();
        assert!(output.status.success(), "cloud-init refused:\n{body}\n{}", String::from_utf8_lossy(&output.stderr));
        let rendered = std::fs::read_to_string(output_directory.join(file)).unwrap_or_else(|error| panic!("{file}: {error}\n{body}"));
        for line in expected {
            assert!(rendered.contains(line), "{renderer} lacks {line}:\n{rendered}\nfrom:\n{body}");
        }
    }
    // Without a static address there is nothing to say; cloud-init keeps its DHCP default.
    let plain =
        serde_json::json!({"name": "plain62", "interfaces": [{"mac_addr": "52:54:00:c1:00:62", "ip_addrs": [{"ip_addr": "127.0.0.62"}]}]});
    ok(kiln(&server, &admin, &["node", "create", "-f", "json", "-d", &plain.to_string()], None));
    let (status, body) = get_from(Ipv4Addr::new(127, 0, 0, 62), &server, "/cloud-init/network-config", &[]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("static network configuration"), "{body}");
}
