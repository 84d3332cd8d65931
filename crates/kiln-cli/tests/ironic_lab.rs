//! The Ironic seed end to end in the lab, with OpenStack's own clients from PyPI: a QEMU
//! machine behind a real IPMI BMC (OpenIPMI's `ipmi_sim`, whose chassis control powers the
//! machine through QEMU's QMP) is enrolled with `baremetal node create --driver ipmi` and
//! `baremetal port create`, deployed with `baremetal node deploy` from a qcow2 given by HTTP
//! URL and MD5 checksum, boots its disk, and is undeployed back to `available`; then the same
//! deploy is driven from an openstacksdk script, which finds the image cached (a conditional
//! request answered 304), and a wrong checksum ends in `deploy failed`.
//!
//! Needs what the lab needs (`kiln-lab`), `ipmi_sim` and `ipmitool`, a built `kiln-agent`,
//! and the clients' virtualenv (`scripts/install-deps`).

mod support;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kiln_lab::{Firmware, Lab};
use kiln_test_utils::ipmi::{IpmiOptions, TestIpmi, lab_machine_chassis};
use support::{agent_binary, ironic_clients};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Python's HTTP server inside the lab's namespace, logging every request as
/// `METHOD PATH STATUS conditional=BOOL`; killed when dropped.
struct ImageServer {
    child: std::process::Child,
    url: String,
    log: PathBuf,
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
    def log_request(self, code="-", size="-"):
        with open(log, "a") as out:
            out.write(f"{self.command} {self.path} {int(code)} conditional={str('If-Modified-Since' in self.headers).lower()}\n")
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl ImageServer {
    fn start(lab: &Lab, root: &Path) -> ImageServer {
        let log = lab.directory.path().join("www.log");
        std::fs::write(&log, "").unwrap();
        let mut child = lab
            .command("python3")
            .args(["-c", IMAGE_SERVER])
            .arg(root)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut port = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
        ImageServer { child, url: format!("http://127.0.0.1:{}", port.trim()), log }
    }

    fn requests(&self, path: &str) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap();
        log.lines().filter_map(|line| line.strip_prefix(&format!("GET /{path} "))).map(str::to_owned).collect()
    }
}

/// The clients, run inside the lab's namespace against its server with the admin token.
struct Clients<'a> {
    lab: &'a Lab,
    bin: PathBuf,
    token: String,
}

impl Clients<'_> {
    fn endpoint(&self) -> String {
        format!("{}/ironic", self.lab.server_url())
    }

    fn baremetal_output(&self, args: &[&str]) -> Output {
        self.lab
            .command(self.bin.join("baremetal"))
            .args(["--os-auth-type", "admin_token", "--os-token", &self.token, "--os-endpoint", &self.endpoint()])
            .args(args)
            .env("OS_CLOUD", "")
            .output()
            .unwrap()
    }

    fn baremetal(&self, args: &[&str]) -> String {
        let output = self.baremetal_output(args);
        assert!(
            output.status.success(),
            "baremetal {args:?}: {}{}\nserver:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.lab.server_log(), 60)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn show(&self, node: &str) -> serde_json::Value {
        json(&self.baremetal(&["node", "show", node, "-f", "json"]))
    }

    fn python(&self, script: &str, args: &[&str]) -> String {
        let output = self.lab.command(self.bin.join("python")).args(["-c", script]).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "openstacksdk script: {stdout}{}\nserver:\n{}",
            String::from_utf8_lossy(&output.stderr),
            tail(&self.lab.server_log(), 60)
        );
        stdout
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Drives the deploy as openstacksdk's users write it: enrol, port, manage, provide, deploy
/// and wait, then undeploy and wait.
const SDK_DEPLOY: &str = r#"
import sys, openstack
token, endpoint, ipmi_port, mac, url, md5 = sys.argv[1:7]
conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": endpoint},
                                       baremetal_endpoint_override=endpoint, baremetal_api_version="1")
node = conn.baremetal.create_node(driver="ipmi", name="sdk-node",
    driver_info={"ipmi_address": "127.0.0.1", "ipmi_port": ipmi_port, "ipmi_username": "admin", "ipmi_password": "lab-ipmi"},
    instance_info={"image_source": url, "image_checksum": md5})
conn.baremetal.create_port(address=mac, node_uuid=node.id)
node = conn.baremetal.set_node_provision_state(node, "manage", wait=True, timeout=120)
node = conn.baremetal.set_node_provision_state(node, "provide", wait=True, timeout=120)
conn.baremetal.set_node_provision_state(node, "active")
node = conn.baremetal.wait_for_nodes_provision_state([node], "active", timeout=900)[0]
print("deployed", node.provision_state)
"#;

const SDK_UNDEPLOY: &str = r#"
import sys, openstack
token, endpoint = sys.argv[1:3]
conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": endpoint},
                                       baremetal_endpoint_override=endpoint, baremetal_api_version="1")
node = conn.baremetal.set_node_provision_state("sdk-node", "deleted")
node = conn.baremetal.wait_for_nodes_provision_state([node], "available", timeout=900)[0]
print("undeployed", node.provision_state)
"#;

#[test]
fn the_seed_s_deploy_by_url_through_baremetal_and_openstacksdk_on_an_ipmi_lab_machine() {
    let Some(bin) = ironic_clients() else { return };
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "[images]\nimport_allowed_networks = [\"127.0.0.1/32\"]\n").unwrap();
    let work = lab.directory.path().to_owned();

    // The image: a BIOS-bootable disk whose system calls the server back, served as a qcow2.
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    let callback_initrd = work.join("callback-initrd.img");
    kiln_lab::build_callback_initrd(&callback_initrd).unwrap();
    let raw = work.join("lab-os.raw");
    let append = format!("console=ttyS0,115200 panic=-1 kiln.server={}", lab.boot_url());
    kiln_lab::build_bootable_disk(&raw, 48, &kernel, &callback_initrd, &append).unwrap();
    let www = work.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let qcow2 = www.join("lab-os.qcow2");
    let made = Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(made.success());
    let md5 = String::from_utf8(Command::new("md5sum").arg(&qcow2).output().unwrap().stdout).unwrap();
    let md5 = md5.split_whitespace().next().unwrap().to_owned();
    let images = ImageServer::start(&lab, &www);
    let url = format!("{}/lab-os.qcow2", images.url);

    // The deploy ramdisk Kiln boots its agent with (no deploy_kernel/deploy_ramdisk given).
    let agent = agent_binary();
    let built = lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string(), "-F", "json"]).unwrap();
    assert_eq!(json(&built)["image"], "kiln-deploy-ramdisk");

    // The machine, powered off, with an empty disk; its BMC is ipmi_sim in the namespace.
    let disk = work.join("node-disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(128 << 20).unwrap();
    let mac = "52:54:00:be:ef:41";
    let machine = lab.add_machine_with_disk(mac, Firmware::Bios, &disk).unwrap();
    let (console, qmp) = (machine.console.clone(), machine.qmp.clone().unwrap());
    let options = IpmiOptions { namespace: Some(lab.namespace.clone()), chassis_script: Some(lab_machine_chassis(&qmp)) };
    let Some(bmc) = TestIpmi::start_with("admin", "lab-ipmi", options) else { return };
    let ipmi_port = bmc.address.rsplit(':').next().unwrap().to_owned();
    let token = std::fs::read_to_string(work.join("data/admin-token")).unwrap().trim().to_owned();
    let clients = Clients { lab: &lab, bin, token };
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();

    // Enrolment as the seed writes it.
    let created = json(&clients.baremetal(&[
        "node",
        "create",
        "--driver",
        "ipmi",
        "--name",
        "seed-node",
        "--driver-info",
        "ipmi_address=127.0.0.1",
        "--driver-info",
        &format!("ipmi_port={ipmi_port}"),
        "--driver-info",
        "ipmi_username=admin",
        "--driver-info",
        "ipmi_password=lab-ipmi",
        "-f",
        "json",
    ]));
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    assert_eq!(clients.show(&uuid)["driver_info"]["ipmi_password"], "******");
    clients.baremetal(&["port", "create", mac, "--node", &uuid]);

    // manageable -> available -> active, the image by HTTP URL and MD5.
    clients.baremetal(&["node", "manage", "seed-node", "--wait", "120"]);
    clients.baremetal(&["node", "provide", "seed-node", "--wait", "120"]);
    assert_eq!(clients.show("seed-node")["provision_state"], "available");
    clients.baremetal(&["node", "set", "seed-node", "--instance-info", &format!("image_source={url}")]);
    clients.baremetal(&["node", "set", "seed-node", "--instance-info", &format!("image_checksum={md5}")]);
    let started = std::time::Instant::now();
    clients.baremetal(&["node", "deploy", "seed-node", "--wait", "900"]);
    eprintln!("baremetal node deploy to active: {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(clients.show("seed-node")["provision_state"], "active");
    assert_eq!(images.requests("lab-os.qcow2"), ["200 conditional=false"]);
    let written = std::fs::read(&disk).unwrap();
    let expected = std::fs::read(&raw).unwrap();
    assert!(written[..expected.len()] == expected[..], "the disk holds the qcow2's raw image");
    // It boots its disk: the deployed system calls the server back.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !console_text().contains("KILN-LAB-PHONED-HOME") {
        assert!(std::time::Instant::now() < deadline, "the deployed system never booted:\n{}", tail(&console_text(), 40));
        std::thread::sleep(Duration::from_millis(500));
    }
    let ipmi_log = std::fs::read_to_string(bmc.directory().join("state/boot")).unwrap_or_default();
    assert!(!ipmi_log.is_empty(), "Kiln set the boot device through IPMI");

    // Undeploy cleans the disk back to available.
    clients.baremetal(&["node", "undeploy", "seed-node", "--wait", "900"]);
    assert_eq!(clients.show("seed-node")["provision_state"], "available");
    let cleaned = std::fs::read(&disk).unwrap();
    assert!(cleaned[..1 << 20].iter().all(|&byte| byte == 0), "the disk is wiped");
    clients.baremetal(&["node", "delete", "seed-node"]);

    // The same deploy from openstacksdk: the unchanged image is not fetched again.
    let said = clients.python(SDK_DEPLOY, &[&clients.token, &clients.endpoint(), &ipmi_port, mac, &url, &md5]);
    assert!(said.contains("deployed active"), "{said}");
    assert_eq!(images.requests("lab-os.qcow2"), ["200 conditional=false", "304 conditional=true"]);
    let written = std::fs::read(&disk).unwrap();
    assert!(written[..expected.len()] == expected[..], "the second deploy wrote the cached image");
    let said = clients.python(SDK_UNDEPLOY, &[&clients.token, &clients.endpoint()]);
    assert!(said.contains("undeployed available"), "{said}");

    // A wrong checksum ends in deploy failed, with a last_error naming it.
    clients.baremetal(&["node", "set", "sdk-node", "--instance-info", &format!("image_checksum={}", "0".repeat(32))]);
    let output = clients.baremetal_output(&["node", "deploy", "sdk-node", "--wait", "120"]);
    assert!(!output.status.success(), "the deploy fails");
    let failed = clients.show("sdk-node");
    assert_eq!(failed["provision_state"], "deploy failed");
    assert!(failed["last_error"].as_str().unwrap().contains("checksum"), "{failed}");
    drop(bmc);
}
