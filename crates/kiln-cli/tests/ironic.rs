//! Kiln's Ironic-compatible API driven by OpenStack's own clients from PyPI, unmodified:
//! the Ironic seed's enrolment commands with python-ironicclient's `baremetal`, power
//! through a Redfish BMC (sushy-tools), openstacksdk moving a node through its states, and
//! raw requests for Ironic's error shape, microversions and tenancy.
//!
//! The clients live in a virtualenv that `scripts/install-deps` makes
//! (`~/.cache/kiln-tools/ironic-venv`); without it these tests are skipped, unless
//! `KILN_REQUIRE_IRONIC=1` (CI), which makes that a failure.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{ServerProcess, ironic_clients as clients, kiln, ok, token};

struct Site {
    server: ServerProcess,
    admin: String,
    bin: PathBuf,
    _directory: tempfile::TempDir,
}

impl Site {
    fn start() -> Option<Site> {
        Site::start_with_env(&[])
    }

    fn start_with_env(environment: &[(&str, &str)]) -> Option<Site> {
        Site::start_with_config(environment, "")
    }

    /// A site whose server reads `config` (TOML) as its configuration file.
    fn start_with_config(environment: &[(&str, &str)], config: &str) -> Option<Site> {
        let bin = clients()?;
        let directory = tempfile::tempdir().unwrap();
        let data_dir = directory.path().join("data");
        let config_path = directory.path().join("kiln.toml");
        std::fs::write(&config_path, config).unwrap();
        let server = ServerProcess::start_with_env(&data_dir, &["--config", config_path.to_str().unwrap()], environment);
        let admin = token(&data_dir);
        Some(Site { server, admin, bin, _directory: directory })
    }

    fn endpoint(&self) -> String {
        format!("{}/ironic", self.server.url)
    }

    /// `baremetal ARGS` with `token`, as keystoneauth's `admin_token` plugin sends it.
    fn baremetal_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join("baremetal"))
            .args(["--os-auth-type", "admin_token", "--os-token", token, "--os-endpoint", &self.endpoint()])
            .args(args)
            .env("OS_CLOUD", "")
            .output()
            .unwrap()
    }

    fn baremetal(&self, args: &[&str]) -> String {
        let output = self.baremetal_as(&self.admin, args);
        assert!(
            output.status.success(),
            "baremetal {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn baremetal_fails_as(&self, token: &str, args: &[&str]) -> String {
        let output = self.baremetal_as(token, args);
        assert!(!output.status.success(), "baremetal {args:?} should fail: {}", String::from_utf8_lossy(&output.stdout));
        String::from_utf8_lossy(&output.stderr).trim().to_owned()
    }

    fn show(&self, node: &str) -> serde_json::Value {
        serde_json::from_str(&self.baremetal(&["node", "show", node, "-f", "json"])).unwrap()
    }

    fn kiln(&self, args: &[&str]) -> String {
        ok(kiln(&self.server, &self.admin, args, None))
    }
}

/// One raw request to the server: status, headers and body.
fn raw(site: &Site, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, serde_json::Value) {
    let mut stream = TcpStream::connect(site.server.url.trim_start_matches("http://")).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The message inside Ironic's error body.
fn fault(body: &serde_json::Value) -> String {
    let inner: serde_json::Value = serde_json::from_str(body["error_message"].as_str().expect("Ironic's error shape")).unwrap();
    inner["faultstring"].as_str().unwrap().to_owned()
}

#[test]
fn the_seed_s_enrolment_commands_run_as_written() {
    let Some(site) = Site::start() else { return };
    // As the seed writes it.
    let created = site.baremetal(&[
        "node",
        "create",
        "--driver",
        "ipmi",
        "--driver-info",
        "ipmi_address=ipmi.server.net",
        "--driver-info",
        "ipmi_username=user",
        "--driver-info",
        "ipmi_password=pass",
        "--driver-info",
        "deploy_kernel=file:///images/deploy.vmlinuz",
        "--driver-info",
        "deploy_ramdisk=http://my.server.net/images/deploy.ramdisk",
        "-f",
        "json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    assert_eq!(created["driver_info"]["ipmi_password"], "******");
    assert_eq!(created["driver_info"]["deploy_ramdisk"], "http://my.server.net/images/deploy.ramdisk");
    assert_eq!(created["provision_state"], "enroll");
    let shown = site.show(&uuid);
    assert_eq!(shown["driver_info"]["ipmi_password"], "******", "node show prints the password masked");
    assert!(!site.server.log().contains("ipmi_password\":\"pass"), "the password is in no log");

    // `baremetal port create $MAC --node $NODE_UUID`, as written: Kiln's node has the MAC.
    let port = site.baremetal(&["port", "create", "52:54:00:12:34:56", "--node", &uuid, "-f", "value", "-c", "uuid"]);
    assert!(site.baremetal(&["port", "list", "--node", &uuid, "-f", "value", "-c", "Address"]).contains("52:54:00:12:34:56"));
    let in_kiln = site.kiln(&["node", "show", &uuid, "-F", "json"]);
    let in_kiln: serde_json::Value = serde_json::from_str(&in_kiln).unwrap();
    assert_eq!(in_kiln["interfaces"][0]["mac_addr"], "52:54:00:12:34:56");
    assert_eq!(in_kiln["bmc"]["address"], "ipmi.server.net");
    assert_eq!(in_kiln["bmc"]["password"], "******", "sealed as every BMC password");

    // node set/unset, then the lifecycle, through the client.
    site.baremetal(&[
        "node",
        "set",
        &uuid,
        "--name",
        "seed-node",
        "--property",
        "cpus=4",
        "--extra",
        "rack=r1",
        "--instance-info",
        "image_source=debian",
    ]);
    site.baremetal(&["node", "unset", "seed-node", "--extra", "rack"]);
    let shown = site.show("seed-node");
    assert_eq!(
        (&shown["properties"]["cpus"], &shown["extra"], &shown["instance_info"]["image_source"]),
        (&serde_json::json!(4), &serde_json::json!({}), &serde_json::json!("debian"))
    );
    assert_eq!(shown["driver_info"]["ipmi_password"], "******", "a patch that does not touch the password keeps it");
    site.baremetal(&["node", "manage", "seed-node", "--wait", "60"]);
    site.baremetal(&["node", "provide", "seed-node", "--wait", "60"]);
    assert_eq!(site.show("seed-node")["provision_state"], "available");
    assert!(site.baremetal(&["node", "list", "--provision-state", "available", "-f", "value", "-c", "Name"]).contains("seed-node"));

    // Deploy a Kiln image named in instance_info. The seed's BMC does not exist here, so the
    // power step fails, and Ironic's last_error says why.
    let disk = site._directory.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    site.kiln(&["image", "upload", "seed-image", &format!("disk={}", disk.display())]);
    site.baremetal(&["node", "set", "seed-node", "--instance-info", "image_source=seed-image"]);
    // The seed's deploy kernel and ramdisk are fetched first: its file:// URL is outside the
    // directories this server allows, which the refusal names. Without them, Kiln's own
    // deploy ramdisk boots.
    let refused = site.baremetal_fails_as(&site.admin, &["node", "deploy", "seed-node"]);
    assert!(
        refused.contains("driver_info.deploy_kernel") && refused.contains("not under a directory") && refused.contains("HTTP 400"),
        "{refused}"
    );
    site.baremetal(&["node", "unset", "seed-node", "--driver-info", "deploy_kernel", "--driver-info", "deploy_ramdisk"]);
    site.baremetal(&["node", "deploy", "seed-node"]);
    let started = Instant::now();
    let failed = loop {
        let shown = site.show("seed-node");
        if shown["provision_state"] == "deploy failed" {
            break shown;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the deploy never failed: {shown}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(failed["last_error"].as_str().is_some_and(|error| error.contains("ipmi.server.net")), "{failed}");
    // An image by HTTP URL needs a checksum, as the seed says.
    site.baremetal(&["node", "set", "seed-node", "--instance-info", "image_source=http://mirror.example/i.qcow2"]);
    let refused = site.baremetal_fails_as(&site.admin, &["node", "deploy", "seed-node"]);
    assert!(refused.contains("no checksum") && refused.contains("image_checksum") && refused.contains("HTTP 400"), "{refused}");

    // Deleting the port takes the MAC off the node; deleting the node takes everything.
    site.baremetal(&["port", "delete", port.trim()]);
    assert!(!site.kiln(&["node", "show", "seed-node", "-F", "json"]).contains("52:54:00:12:34:56"));
    site.baremetal(&["node", "delete", "seed-node"]);
    assert!(site.baremetal_fails_as(&site.admin, &["node", "show", "seed-node"]).contains("Node seed-node could not be found."));
}

#[test]
fn power_reaches_a_redfish_bmc() {
    let Some(site) = Site::start() else { return };
    let Some(bmc) = kiln_test_utils::redfish::TestRedfish::start(None) else { return };
    let system = format!("/redfish/v1/Systems/{}", bmc.uuid);
    site.baremetal(&[
        "node",
        "create",
        "--driver",
        "redfish",
        "--name",
        "rf1",
        "--driver-info",
        &format!("redfish_address={}", bmc.url),
        "--driver-info",
        &format!("redfish_system_id={system}"),
        "--driver-info",
        "redfish_verify_ca=False",
    ]);
    for (verb, word) in [("on", "on"), ("off", "off")] {
        site.baremetal(&["node", "power", verb, "rf1"]);
        // The emulator applies power changes after a moment: Kiln's own API reads it live.
        let started = Instant::now();
        loop {
            let status = site.kiln(&["node", "power", "status", "rf1", "-F", "json"]);
            if status.contains(&format!("\"{word}\"")) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "power {verb} never arrived: {status}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let driver_info = &site.show("rf1")["driver_info"];
    assert_eq!(
        (&driver_info["redfish_system_id"], &driver_info["redfish_verify_ca"]),
        (&serde_json::json!(system), &serde_json::json!(false))
    );
}

/// openstacksdk's virtual media calls (microversion 1.89) against a Redfish BMC
/// (sushy-tools): attach has the emulator fetch the image from its URL into its CD drive,
/// detach empties it; a floppy, or an older microversion, is refused as Ironic would.
#[test]
fn openstacksdk_attaches_and_detaches_virtual_media() {
    let Some(site) = Site::start() else { return };
    let Some(bmc) = kiln_test_utils::redfish::TestRedfish::start(None) else { return };
    let files = kiln_test_utils::OneFileServer::start("/rescue.iso", b"CD001 stand-in");
    let script = r#"
import sys, openstack
token, endpoint, bmc, image = sys.argv[1:5]
conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": endpoint},
                                       baremetal_endpoint_override=endpoint, baremetal_api_version="1")
node = conn.baremetal.create_node(driver="redfish", name="vm-sdk", driver_info={"redfish_address": bmc})
conn.baremetal.attach_vmedia_to_node(node, device_type="cdrom", image_url=image)
print("attached")
try:
    conn.baremetal.attach_vmedia_to_node(node, device_type="floppy", image_url=image)
except openstack.exceptions.BadRequestException as error:
    print("floppy refused:", error)
try:
    conn.baremetal.detach_vmedia_from_node(node, device_types=["floppy"])
except openstack.exceptions.BadRequestException as error:
    print("floppy detach refused:", error)
conn.baremetal.detach_vmedia_from_node(node, device_types=["cdrom"])
print("detached")
"#;
    let output =
        Command::new(site.bin.join("python")).args(["-c", script, &site.admin, &site.endpoint(), &bmc.url, &files.url]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("attached") && stdout.contains("detached"), "{stdout}");
    assert!(stdout.contains("floppy refused:") && stdout.contains("device_type 'cdrom', not 'floppy'"), "{stdout}");
    assert!(stdout.contains("floppy detach refused:") && stdout.contains("device_types 'cdrom', not 'floppy'"), "{stdout}");
    assert_eq!(files.served(), 1, "the emulator fetched the image from its URL");
    let status: serde_json::Value = serde_json::from_str(&site.kiln(&["node", "virtual-media", "status", "vm-sdk", "-F", "json"])).unwrap();
    assert_eq!(status["inserted"], false, "{status}");

    // Before 1.89 the resource does not exist.
    let (status, _, body) = raw(
        &site,
        "POST",
        "/ironic/v1/nodes/vm-sdk/vmedia",
        &[("X-Auth-Token", site.admin.as_str()), ("X-OpenStack-Ironic-API-Version", "1.88"), ("Content-Type", "application/json")],
        &serde_json::json!({"device_type": "cdrom", "image_url": files.url}).to_string(),
    );
    assert_eq!(status, 404, "{body}");
    assert!(fault(&body).contains("microversion 1.89"), "{body}");
}

/// `--boot-interface redfish-virtual-media` makes a node boot from virtual media in Kiln's
/// lifecycle (its `boot_interface` property); `node set` changes it, `--reset-boot-interface`
/// returns it to network boot, and a boot interface Kiln has not is refused.
#[test]
fn the_boot_interface_chooses_virtual_media_or_the_network() {
    let Some(site) = Site::start() else { return };
    site.baremetal(&["node", "create", "--driver", "redfish", "--name", "vm-bi", "--boot-interface", "redfish-virtual-media"]);
    let shown = |site: &Site| -> (String, serde_json::Value) {
        let ironic: serde_json::Value =
            serde_json::from_str(&site.baremetal(&["node", "show", "vm-bi", "-f", "json", "-c", "boot_interface"])).unwrap();
        let kiln: serde_json::Value = serde_json::from_str(&site.kiln(&["node", "show", "vm-bi", "-F", "json"])).unwrap();
        (ironic["boot_interface"].as_str().unwrap().to_owned(), kiln["properties"]["boot_interface"].clone())
    };
    assert_eq!(shown(&site), ("redfish-virtual-media".to_owned(), serde_json::json!("redfish-virtual-media")));
    site.baremetal(&["node", "set", "vm-bi", "--boot-interface", "pxe"]);
    assert_eq!(shown(&site), ("pxe".to_owned(), serde_json::json!("pxe")));
    site.baremetal(&["node", "set", "vm-bi", "--reset-boot-interface"]);
    assert_eq!(shown(&site), ("ipxe".to_owned(), serde_json::Value::Null));
    let refused = site.baremetal_fails_as(&site.admin, &["node", "set", "vm-bi", "--boot-interface", "floppy"]);
    assert!(refused.contains("'floppy' is not a boot interface"), "{refused}");
    let refused = site.baremetal_fails_as(&site.admin, &["node", "create", "--driver", "redfish", "--boot-interface", "floppy"]);
    assert!(refused.contains("'floppy' is not a boot interface"), "{refused}");
}

#[test]
fn openstacksdk_enrols_a_node_and_moves_it_through_its_states() {
    let Some(site) = Site::start() else { return };
    let script = r#"
import sys, openstack
token, endpoint = sys.argv[1], sys.argv[2]
conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": endpoint},
                                       baremetal_endpoint_override=endpoint, baremetal_api_version="1")
node = conn.baremetal.create_node(driver="ipmi", name="sdk1", driver_info={"ipmi_address": "10.0.0.9", "ipmi_password": "pw"})
assert node.driver_info["ipmi_password"] == "******", node.driver_info
conn.baremetal.create_port(address="52:54:00:aa:bb:cc", node_uuid=node.id)
node = conn.baremetal.set_node_provision_state(node, "manage", wait=True, timeout=60)
node = conn.baremetal.set_node_provision_state(node, "provide", wait=True, timeout=60)
conn.baremetal.wait_for_nodes_provision_state([node], "available", timeout=60)
print("state", conn.baremetal.get_node("sdk1").provision_state)
print("ports", [port.address for port in conn.baremetal.ports(node_id=node.id)])
"#;
    let output = Command::new(site.bin.join("python")).args(["-c", script, &site.admin, &site.endpoint()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("state available") && stdout.contains("52:54:00:aa:bb:cc"), "{stdout}");
}

#[test]
fn tenancy_errors_and_microversions_are_ironic_s() {
    let Some(site) = Site::start() else { return };
    site.kiln(&["project", "create", "lab-a"]);
    site.kiln(&["user", "create", "alice"]);
    site.kiln(&["project", "add-member", "lab-a", "alice", "--role", "member"]);
    let alice: serde_json::Value =
        serde_json::from_str(&site.kiln(&["token", "create", "--user", "alice", "--name", "t", "-F", "json"])).unwrap();
    let alice = alice["secret"].as_str().unwrap().to_owned();
    site.baremetal(&["node", "create", "--driver", "ipmi", "--name", "theirs", "--owner", "lab-a"]);
    site.baremetal(&["node", "create", "--driver", "ipmi", "--name", "admins"]);

    // A member sees its project's nodes only; another's is exactly a missing one.
    let listed = String::from_utf8_lossy(&site.baremetal_as(&alice, &["node", "list", "-f", "value", "-c", "Name"]).stdout).into_owned();
    assert_eq!(listed.trim(), "theirs");
    assert_eq!(site.show("theirs")["owner"], "lab-a");
    let hidden = site.baremetal_fails_as(&alice, &["node", "show", "admins"]).replace("admins", "NAME");
    let missing = site.baremetal_fails_as(&alice, &["node", "show", "nowhere"]).replace("nowhere", "NAME");
    assert_eq!(hidden, missing);
    assert!(site.baremetal_fails_as(&alice, &["node", "create", "--driver", "ipmi"]).contains("Only administrators"));
    assert!(site.baremetal_as(&alice, &["node", "set", "theirs", "--extra", "mine=yes"]).status.success(), "a member changes its own node");
    // …but not its identity or BMC: pointing the BMC elsewhere would hand over its password.
    for change in [&["--driver-info", "ipmi_address=attacker.example"][..], &["--name", "renamed"], &["--driver", "redfish"]] {
        let refused = site.baremetal_fails_as(&alice, &[&["node", "set", "theirs"][..], change].concat());
        assert!(refused.contains("Only administrators") && refused.contains("HTTP 403"), "{change:?}: {refused}");
    }
    site.kiln(&["user", "create", "rita"]);
    site.kiln(&["project", "add-member", "lab-a", "rita", "--role", "reader"]);
    let rita: serde_json::Value =
        serde_json::from_str(&site.kiln(&["token", "create", "--user", "rita", "--name", "t", "-F", "json"])).unwrap();
    let rita = rita["secret"].as_str().unwrap().to_owned();
    assert_eq!(site.baremetal_as(&rita, &["node", "show", "theirs", "-f", "value", "-c", "name"]).status.code(), Some(0), "a reader reads");
    for change in [
        &["node", "set", "theirs", "--extra", "x=y"][..],
        &["node", "manage", "theirs"],
        &["node", "power", "on", "theirs"],
        &["node", "maintenance", "set", "theirs"],
    ] {
        assert!(site.baremetal_fails_as(&rita, change).contains("HTTP 403"), "a reader may not {change:?}");
    }
    // A name shaped like a node's id would stand in for that node: refused.
    let uuid_name =
        site.baremetal_fails_as(&site.admin, &["node", "create", "--driver", "ipmi", "--name", "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10"]);
    assert!(uuid_name.contains("looks like a node id"), "{uuid_name}");
    // Unsetting the password clears it; booleans as the client sends them; soft reboots are refused.
    site.baremetal(&["node", "set", "admins", "--driver-info", "ipmi_address=10.9.9.9", "--driver-info", "ipmi_password=pw"]);
    assert_eq!(site.show("admins")["driver_info"]["ipmi_password"], "******");
    site.baremetal(&["node", "unset", "admins", "--driver-info", "ipmi_password"]);
    assert!(site.show("admins")["driver_info"].get("ipmi_password").is_none(), "the password is gone");
    assert!(site.baremetal(&["node", "list", "--maintenance", "-f", "value", "-c", "Name"]).trim().is_empty());
    assert!(site.baremetal_fails_as(&site.admin, &["node", "reboot", "--soft", "admins"]).contains("soft power off"));

    let admin = site.admin.clone();
    let json = [("X-Auth-Token", admin.as_str()), ("Content-Type", "application/json")];
    // Malformed patches, unknown drivers and fields: Ironic's error shape, a 4xx naming it.
    let (status, _, body) = raw(&site, "PATCH", "/ironic/v1/nodes/theirs", &json, r#"{"op": "add"}"#);
    assert_eq!(status, 400);
    assert!(fault(&body).contains("invalid"), "{}", fault(&body));
    let (status, _, body) = raw(&site, "PATCH", "/ironic/v1/nodes/theirs", &json, r#"[{"op": "add", "path": "/uuid", "value": "x"}]"#);
    assert!(status == 400 && fault(&body).contains("/uuid"), "{status} {body}");
    let (status, _, body) = raw(&site, "POST", "/ironic/v1/nodes", &json, r#"{"driver": "idrac"}"#);
    assert!(status == 400 && fault(&body).contains("idrac"), "{status} {body}");
    let (status, _, body) = raw(&site, "POST", "/ironic/v1/nodes", &json, r#"{"driver": "ipmi", "driver_info": {"ipmi_kg_key": "x"}}"#);
    assert!(status == 400 && fault(&body).contains("ipmi_kg_key"), "{status} {body}");
    let (status, _, body) = raw(&site, "GET", "/ironic/v1/nodes?owner=lab-a", &json, "");
    assert!(status == 400 && fault(&body).contains("owner"), "an unknown filter is refused, not ignored: {status} {body}");
    let latest = [("X-Auth-Token", admin.as_str()), ("X-OpenStack-Ironic-API-Version", "latest")];
    let (status, _, body) = raw(&site, "GET", "/ironic/v1/nodes?limit=1&fields=name", &latest, "");
    let next = body["next"].as_str().unwrap_or_default();
    assert!(status == 200 && next.contains("fields=name") && next.contains("limit=1") && next.contains("marker="), "{body}");
    let path = next.split_once("/ironic").map(|(_, path)| format!("/ironic{path}")).unwrap();
    let (_, _, second) = raw(&site, "GET", &path, &latest, "");
    assert_ne!(second["nodes"][0]["name"], body["nodes"][0]["name"], "the next page goes on: {second}");
    // Microversions: the range is in every answer; outside it is 406, which clients negotiate from.
    let (status, head, _) =
        raw(&site, "GET", "/ironic/v1/nodes", &[("X-Auth-Token", &admin), ("X-OpenStack-Ironic-API-Version", "1.999")], "");
    assert_eq!(status, 406);
    assert!(
        head.contains("x-openstack-ironic-api-maximum-version: 1.115") && head.contains("x-openstack-ironic-api-minimum-version: 1.1"),
        "{head}"
    );
    let (status, head, body) =
        raw(&site, "GET", "/ironic/v1/nodes/theirs", &[("X-Auth-Token", &admin), ("X-OpenStack-Ironic-API-Version", "1.4")], "");
    assert!(status == 200 && head.contains("x-openstack-ironic-api-version: 1.4"), "{head}");
    assert!(body.get("name").is_none() && body.get("owner").is_none(), "1.4 knows neither name nor owner: {body}");
    // Without a token: 401, unless the site runs the API as a lab's noauth.
    let (status, _, body) = raw(&site, "GET", "/ironic/v1/nodes", &[], "");
    assert!(status == 401 && fault(&body).contains("Authentication"), "{status} {body}");
    let (status, _, discovery) = raw(&site, "GET", "/ironic/", &[], "");
    assert_eq!((status, discovery["default_version"]["version"].as_str()), (200, Some("1.115")));
}

/// An HTTP server for images, Python's own: files under `with/` carry `Last-Modified` (and
/// answer `If-Modified-Since` with 304), files under `bare/` carry none. Every request is
/// logged as `METHOD PATH STATUS conditional=BOOL`.
struct ImageServer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
    root: PathBuf,
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const IMAGE_SERVER: &str = r#"
import functools, http.server, sys
root, log = sys.argv[1], sys.argv[2]
class Handler(http.server.SimpleHTTPRequestHandler):
    def send_header(self, name, value):
        if name.lower() == "last-modified" and self.path.startswith("/bare/"):
            return
        super().send_header(name, value)
    def log_request(self, code="-", size="-"):
        with open(log, "a") as out:
            out.write(f"{self.command} {self.path} {int(code)} conditional={str('If-Modified-Since' in self.headers).lower()}\n")
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl ImageServer {
    fn start(directory: &std::path::Path) -> ImageServer {
        use std::io::BufRead as _;
        let root = directory.join("www");
        std::fs::create_dir_all(root.join("with")).unwrap();
        std::fs::create_dir_all(root.join("bare")).unwrap();
        let log = directory.join("www.log");
        std::fs::write(&log, "").unwrap();
        let mut child = Command::new("python3")
            .args(["-c", IMAGE_SERVER])
            .arg(&root)
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        ImageServer { child, port: line.trim().parse().unwrap(), log, root }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The requests for `path` so far, as `STATUS conditional=BOOL`.
    fn requests(&self, path: &str) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap();
        log.lines().filter_map(|line| line.strip_prefix(&format!("GET /{path} "))).map(str::to_owned).collect()
    }
}

fn md5_of(path: &std::path::Path) -> String {
    let output = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

impl Site {
    /// An available node with no BMC to reach (its deploys fail at the power step, after the
    /// image is fetched, which is what these tests look at).
    fn available_node(&self, name: &str, owner: Option<&str>) {
        let mut args = vec!["node", "create", "--driver", "manual-management", "--name", name];
        if let Some(owner) = owner {
            args.extend(["--owner", owner]);
        }
        self.baremetal(&args);
        self.baremetal(&["node", "manage", name, "--wait", "60"]);
        self.baremetal(&["node", "provide", name, "--wait", "60"]);
    }

    /// Waits until the node leaves `available` on its way, and answers its document.
    fn wait_for_state(&self, token: &str, node: &str, wanted: &[&str]) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let output = self.baremetal_as(token, &["node", "show", node, "-f", "json"]);
            let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            if wanted.iter().any(|state| shown["provision_state"] == *state) {
                return shown;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{node} never reached {wanted:?}: {shown}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn image_sources_by_url_follow_ironic_s_cache_rule_and_checksums() {
    let Some(site) = Site::start_with_env(&[("KILN_IMPORT_ALLOWED_NETWORKS", "127.0.0.1/32")]) else { return };
    let work = site._directory.path().to_owned();
    let images = ImageServer::start(&work);
    // The seed's example is a qcow2: a real one, made by qemu-img from a raw disk.
    let raw = work.join("disk.raw");
    let mut bytes = vec![0u8; 3 << 20];
    for (index, byte) in bytes.iter_mut().enumerate().take(1 << 20) {
        *byte = (index * 7 % 253) as u8;
    }
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = images.root.join("with/disk.qcow2");
    let made = Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(made.success());
    std::fs::copy(&raw, images.root.join("bare/disk.raw")).unwrap();
    let md5 = md5_of(&qcow2);
    let qcow2_url = images.url("with/disk.qcow2");
    let deploy = |node: &str, info: &[String]| {
        let mut args = vec!["node".to_owned(), "set".to_owned(), node.to_owned()];
        for pair in info {
            args.extend(["--instance-info".to_owned(), pair.clone()]);
        }
        site.baremetal(&args.iter().map(String::as_str).collect::<Vec<_>>());
        site.baremetal(&["node", "deploy", node]);
    };
    for node in ["url1", "url2", "url3", "url4", "url5", "url6", "url7"] {
        site.available_node(node, None);
    }

    // The first deploy fetches the qcow2, checks its MD5 and stores it converted to raw.
    deploy("url1", &[format!("image_source={qcow2_url}"), format!("image_checksum={md5}")]);
    assert_eq!(images.requests("with/disk.qcow2"), ["200 conditional=false"]);
    let listed: serde_json::Value = serde_json::from_str(&site.kiln(&["image", "list", "-F", "json"])).unwrap();
    let cache = listed.as_array().unwrap().iter().find(|image| image["name"].as_str().unwrap().starts_with("ironic-")).unwrap();
    let cache = cache["name"].as_str().unwrap().to_owned();
    let downloaded = work.join("cached.zst");
    site.kiln(&["image", "download", &format!("{cache}:1"), "-o", &downloaded.display().to_string()]);
    let unpacked = Command::new("zstd").args(["-d", "-c", "-q"]).arg(&downloaded).output().unwrap();
    assert!(unpacked.stdout == bytes, "the stored image is the qcow2's raw disk");
    let shown = site.wait_for_state(&site.admin, "url1", &["deploy failed", "wait call-back", "deploying"]);
    assert_eq!(shown["instance_info"]["image_source"], serde_json::json!(qcow2_url));

    // Unchanged: a conditional request, answered 304, and no new version.
    deploy("url2", &[format!("image_source={qcow2_url}"), format!("image_checksum={md5}")]);
    assert_eq!(images.requests("with/disk.qcow2"), ["200 conditional=false", "304 conditional=true"]);
    let versions = site.kiln(&["image", "versions", &cache, "-F", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&versions).unwrap().as_array().unwrap().len(), 1, "{versions}");

    // Touched: Last-Modified moves on, and it is fetched again.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&qcow2).unwrap().set_modified(later).unwrap();
    deploy("url3", &[format!("image_source={qcow2_url}"), format!("image_checksum={md5}")]);
    assert_eq!(images.requests("with/disk.qcow2").last().unwrap(), "200 conditional=true");

    // A wrong checksum is checked against the bytes (the copy was verified against another),
    // and the deploy ends in `deploy failed` with a last_error naming it.
    let wrong = "0".repeat(32);
    deploy("url4", &[format!("image_source={qcow2_url}"), format!("image_checksum={wrong}")]);
    assert_eq!(images.requests("with/disk.qcow2").last().unwrap(), "200 conditional=false");
    let failed = site.wait_for_state(&site.admin, "url4", &["deploy failed"]);
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("checksum") && error.contains(&wrong) && error.contains(&qcow2_url), "{error}");
    assert!(!error.contains(&md5), "the digest the server computed is not told: {error}");

    // A small qcow2 that claims a 4 TiB disk is refused before anything converts it (every
    // byte of the raw disk would be read and compressed).
    let huge = images.root.join("with/huge.qcow2");
    assert!(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&huge).arg("4T").status().unwrap().success());
    deploy("url7", &[format!("image_source={}", images.url("with/huge.qcow2")), format!("image_checksum={}", md5_of(&huge))]);
    let failed = site.wait_for_state(&site.admin, "url7", &["deploy failed"]);
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("4398046511104-byte disk") && error.contains("serve a raw image"), "{error}");

    // No Last-Modified: fetched every time, even unchanged; sha256 by Ironic's os_hash fields.
    let bare_url = images.url("bare/disk.raw");
    let sha256 = support::sha256_of(&raw);
    for node in ["url5", "url6"] {
        deploy(
            node,
            &[format!("image_source={bare_url}"), "image_os_hash_algo=sha256".to_owned(), format!("image_os_hash_value={sha256}")],
        );
    }
    assert_eq!(images.requests("bare/disk.raw"), ["200 conditional=false", "200 conditional=false"]);
}

#[test]
fn image_source_errors_are_told_to_the_node_s_owner_only() {
    let files = tempfile::tempdir().unwrap();
    let config = format!("[images]\nimport_allowed_dirs = [\"{}\"]\n", files.path().display());
    let Some(site) = Site::start_with_config(&[("KILN_IMPORT_ALLOWED_NETWORKS", "127.0.0.1/32")], &config) else { return };
    let work = site._directory.path().to_owned();
    let images = ImageServer::start(&work);
    std::fs::write(images.root.join("with/disk.raw"), vec![1u8; 1 << 20]).unwrap();
    let mut secrets = Vec::new();
    for (project, user) in [("lab-a", "alice"), ("lab-b", "bob")] {
        site.kiln(&["project", "create", project]);
        site.kiln(&["user", "create", user]);
        site.kiln(&["project", "add-member", project, user, "--role", "member"]);
        let token: serde_json::Value =
            serde_json::from_str(&site.kiln(&["token", "create", "--user", user, "--name", "t", "-F", "json"])).unwrap();
        secrets.push(token["secret"].as_str().unwrap().to_owned());
    }
    let (alice, bob) = (&secrets[0], &secrets[1]);
    site.available_node("alices", Some("lab-a"));
    let set = |token: &str, pairs: &[String]| {
        let mut args = vec!["node".to_owned(), "set".to_owned(), "alices".to_owned()];
        for pair in pairs {
            args.extend(["--instance-info".to_owned(), pair.clone()]);
        }
        let output = site.baremetal_as(token, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    // The owner deploys with a wrong checksum and reads why.
    set(alice, &[format!("image_source={}", images.url("with/disk.raw")), format!("image_checksum={}", "f".repeat(32))]);
    assert!(site.baremetal_as(alice, &["node", "deploy", "alices"]).status.success());
    let failed = site.wait_for_state(alice, "alices", &["deploy failed"]);
    assert!(failed["last_error"].as_str().unwrap().contains("checksum"), "{failed}");
    // The cached image is the owner's project's, private: the other project sees neither it
    // nor the node, exactly as missing ones.
    let theirs = site.baremetal_fails_as(bob, &["node", "show", "alices"]).replace("alices", "NAME");
    let missing = site.baremetal_fails_as(bob, &["node", "show", "nowhere"]).replace("nowhere", "NAME");
    assert_eq!(theirs, missing);
    let bobs_images = ok(kiln(&site.server, bob, &["image", "list", "-F", "json"], None));
    assert!(!bobs_images.contains("ironic-"), "{bobs_images}");

    // A source outside the allow-list (127.0.0.2 is loopback too, but not allowed): the
    // deploy fails, and a member reads only that the fetch failed, not why.
    site.available_node("alices2", Some("lab-a"));
    let refused_url = format!("http://127.0.0.2:{}/with/disk.raw", images.port);
    let instance_info = ["--instance-info", &format!("image_source={refused_url}"), "--instance-info", "image_checksum=sha256:{}"];
    let checksum = format!("image_checksum=sha256:{}", "a".repeat(64));
    let args = ["node", "set", "alices2", instance_info[0], instance_info[1], "--instance-info", &checksum];
    assert!(site.baremetal_as(alice, &args).status.success());
    assert!(site.baremetal_as(alice, &["node", "deploy", "alices2"]).status.success());
    let failed = site.wait_for_state(alice, "alices2", &["deploy failed"]);
    assert_eq!(failed["last_error"], serde_json::json!(format!("could not fetch {refused_url}")));
    assert!(images.requests("with/disk.raw").len() == 1, "nothing reached the refused address");

    // A member names the bytes of a file they deploy: without a checksum, no file under the
    // allowed directories is copied into their project.
    let secret_file = files.path().join("operators-only.raw");
    std::fs::write(&secret_file, vec![7u8; 1 << 20]).unwrap();
    site.available_node("alices3", Some("lab-a"));
    let file_url = format!("image_source=file://{}", secret_file.display());
    assert!(site.baremetal_as(alice, &["node", "set", "alices3", "--instance-info", &file_url]).status.success());
    let refused = site.baremetal_fails_as(alice, &["node", "deploy", "alices3"]);
    assert!(refused.contains("has a file image_source and no checksum"), "{refused}");
    assert_eq!(site.show("alices3")["provision_state"], serde_json::json!("available"), "nothing started");

    // A checksum file's contents are the server's reading: a member is not told them.
    let listed = "0".repeat(64);
    std::fs::write(files.path().join("SHA256SUMS"), format!("{listed}  operators-only.raw\n")).unwrap();
    let checksum_file = format!("image_checksum=file://{}", files.path().join("SHA256SUMS").display());
    assert!(site.baremetal_as(alice, &["node", "set", "alices3", "--instance-info", &checksum_file]).status.success());
    assert!(site.baremetal_as(alice, &["node", "deploy", "alices3"]).status.success());
    let failed = site.wait_for_state(alice, "alices3", &["deploy failed"]);
    let reason = failed["last_error"].as_str().unwrap();
    assert!(reason.contains("does not have the checksum its checksum file lists") && !reason.contains(&listed), "{reason}");

    // The Ironic API's cache names are the server's: no user takes one, so a bare name can
    // never resolve to a user's image in its place.
    let taken = kiln(&site.server, alice, &["image", "create", "ironic-0123456789abcdef"], None);
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("kept for the Ironic API"), "{}", String::from_utf8_lossy(&taken.stderr));
}

#[test]
fn http_basic_signs_kiln_users_in_with_their_passwords_and_holds_guessers_off() {
    let Some(site) = Site::start() else { return };
    site.kiln(&["project", "create", "lab-a"]);
    site.kiln(&["user", "create", "alice"]);
    site.kiln(&["project", "add-member", "lab-a", "alice", "--role", "member"]);
    site.baremetal(&["node", "create", "--driver", "ipmi", "--name", "theirs", "--owner", "lab-a"]);
    site.baremetal(&["node", "create", "--driver", "ipmi", "--name", "admins"]);
    let set_password = |token: &str, user: &str, password: &str| kiln(&site.server, token, &["user", "set-password", user], Some(password));
    let short = set_password(&site.admin, "alice", "short\n");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8 characters"), "{short:?}");
    assert!(set_password(&site.admin, "alice", "alice-first-pass\n").status.success());
    // A user changes their own password with a token of theirs, and nobody else's.
    let alice: serde_json::Value =
        serde_json::from_str(&site.kiln(&["token", "create", "--user", "alice", "--name", "t", "-F", "json"])).unwrap();
    let alice_token = alice["secret"].as_str().unwrap();
    assert!(set_password(alice_token, "alice", "alice-s3cret-pass\n").status.success());
    let others = set_password(alice_token, "admin", "taken-over-now\n");
    assert!(String::from_utf8_lossy(&others.stderr).contains("not found"), "{others:?}");

    // `baremetal` with keystoneauth's http_basic plugin, as Ironic standalone is used.
    let basic = |user: &str, password: &str, args: &[&str]| {
        Command::new(site.bin.join("baremetal"))
            .args(["--os-auth-type", "http_basic", "--os-username", user, "--os-password", password, "--os-endpoint", &site.endpoint()])
            .args(args)
            .env("OS_CLOUD", "")
            .output()
            .unwrap()
    };
    let listed = basic("alice", "alice-s3cret-pass", &["node", "list", "-f", "value", "-c", "Name"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "theirs", "a member sees its project's nodes only");
    let old = basic("alice", "alice-first-pass", &["node", "list"]);
    assert!(!old.status.success() && String::from_utf8_lossy(&old.stderr).contains("HTTP 401"), "the old password is gone");

    // Wrong passwords, unknown users and a locked account all read the same; after five
    // failures in a row even the right password waits.
    let header = |user: &str, password: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    let attempt = |user: &str, password: &str| {
        let authorization = header(user, password);
        let (status, _, body) = raw(&site, "GET", "/ironic/v1/nodes", &[("Authorization", authorization.as_str())], "");
        (status, if status == 200 { String::new() } else { fault(&body) })
    };
    let (status, unknown) = attempt("nobody", "whatever-it-is");
    assert_eq!(status, 401);
    for _ in 0..5 {
        assert_eq!(attempt("alice", "wrong-password"), (401, unknown.clone()));
    }
    assert_eq!(attempt("alice", "alice-s3cret-pass"), (401, unknown.clone()), "locked out for now, a remembered sign-in included");
    assert_eq!(attempt("admin", "no-password-set"), (401, unknown), "a user without a password cannot sign in with one");
    assert!(!site.server.log().contains("alice-s3cret-pass"), "no password is logged");
    // The administrator's reset clears the lock.
    assert!(set_password(&site.admin, "alice", "alice-third-pass\n").status.success());
    assert_eq!(attempt("alice", "alice-third-pass").0, 200);
    let (status, _, listed) = raw(&site, "GET", "/ironic/v1/nodes", &[("Authorization", header("alice", "alice-third-pass").as_str())], "");
    assert_eq!(status, 200, "a listing without a version header is answered at 1.1, without fields 1.1 lacks");
    assert!(listed["nodes"][0].get("name").is_none() && listed["nodes"][0]["uuid"].is_string(), "{listed}");

    // Guesses sent all at once are held to the same rule: each is counted before its
    // password is checked, so no more than five are ever checked.
    let checked = |log: &str| log.matches("a sign-in by password failed").count();
    let before = checked(&site.server.log());
    std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..12).map(|guess| scope.spawn(move || attempt("alice", &format!("guess-number-{guess}")).0)).collect();
        for guess in guesses {
            assert_eq!(guess.join().unwrap(), 401);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(checked(&site.server.log()) - before, 5, "five guesses checked, the rest refused unheard");
}

#[test]
fn abort_ends_a_deploy_waiting_on_its_agent_in_deploy_failed() {
    let Some(site) = Site::start() else { return };
    let Some(bmc) = kiln_test_utils::redfish::TestRedfish::start(None) else { return };
    let system = format!("/redfish/v1/Systems/{}", bmc.uuid);
    let disk = site._directory.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    site.kiln(&["image", "upload", "abort-image", &format!("disk={}", disk.display())]);
    let address = format!("redfish_address={}", bmc.url);
    let system_id = format!("redfish_system_id={system}");
    let driver_info = ["--driver-info", &address, "--driver-info", &system_id, "--driver-info", "redfish_verify_ca=False"];
    site.baremetal(&[&["node", "create", "--driver", "redfish", "--name", "ab1"][..], &driver_info].concat());
    site.baremetal(&["node", "manage", "ab1", "--wait", "60"]);
    site.baremetal(&["node", "provide", "ab1", "--wait", "60"]);
    // Nothing to abort yet: refused, as Ironic refuses it.
    assert!(site.baremetal_fails_as(&site.admin, &["node", "abort", "ab1"]).contains("HTTP 409"));
    site.baremetal(&["node", "set", "ab1", "--instance-info", "image_source=abort-image"]);
    site.baremetal(&["node", "deploy", "ab1"]);
    // The emulated machine powers on, and no agent will ever call: the deploy waits.
    site.wait_for_state(&site.admin, "ab1", &["wait call-back"]);
    site.baremetal(&["node", "abort", "ab1"]);
    let failed = site.wait_for_state(&site.admin, "ab1", &["deploy failed"]);
    assert!(failed["last_error"].as_str().unwrap().contains("aborted on request"), "{failed}");
    let listed = site.baremetal(&["node", "list", "--fields", "name", "last_error", "-f", "json"]);
    assert!(listed.contains("aborted on request"), "listings carry last_error: {listed}");
}
