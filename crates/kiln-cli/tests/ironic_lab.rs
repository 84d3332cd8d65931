//! The Ironic seed end to end in the lab, with OpenStack's own clients from PyPI: a QEMU
//! machine behind a real IPMI BMC (OpenIPMI's `ipmi_sim`, whose chassis control powers the
//! machine through QEMU's QMP) is enrolled with `baremetal node create --driver ipmi` and
//! `baremetal port create`, deployed with `baremetal node deploy` from a qcow2 given by HTTP
//! URL and MD5 checksum (its agent booting the deploy kernel and ramdisk the node names by
//! `file://` and HTTP URL, as the seed enrols it), boots its disk, and is undeployed back to
//! `available`; then the same
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
token, endpoint, ipmi_port, mac, url, md5, deploy_kernel, deploy_ramdisk = sys.argv[1:9]
conn = openstack.connection.Connection(auth_type="admin_token", auth={"token": token, "endpoint": endpoint},
                                       baremetal_endpoint_override=endpoint, baremetal_api_version="1")
node = conn.baremetal.create_node(driver="ipmi", name="sdk-node",
    driver_info={"ipmi_address": "127.0.0.1", "ipmi_port": ipmi_port, "ipmi_username": "admin", "ipmi_password": "lab-ipmi",
                 "deploy_kernel": deploy_kernel, "deploy_ramdisk": deploy_ramdisk},
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

/// The image: a BIOS-bootable disk whose system calls the server back, in `www` as the
/// qcow2 the seed's example is. Answers the raw disk's path and the qcow2's MD5.
fn build_served_image(lab: &Lab, www: &Path) -> (PathBuf, String) {
    let work = lab.directory.path();
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    let callback_initrd = work.join("callback-initrd.img");
    kiln_lab::build_callback_initrd(&callback_initrd).unwrap();
    let raw = work.join("lab-os.raw");
    let append = format!("console=ttyS0,115200 panic=-1 kiln.server={}", lab.boot_url());
    kiln_lab::build_bootable_disk(&raw, 48, &kernel, &callback_initrd, &append).unwrap();
    std::fs::create_dir_all(www).unwrap();
    let qcow2 = www.join("lab-os.qcow2");
    let made = Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(made.success());
    let md5 = String::from_utf8(Command::new("md5sum").arg(&qcow2).output().unwrap().stdout).unwrap();
    (raw, md5.split_whitespace().next().unwrap().to_owned())
}

/// The deploy kernel and ramdisk, a Kiln agent ramdisk, given as the seed gives them: the
/// kernel by file:// URL (under `ramdisk_dir`, which the server allows), the ramdisk by HTTP
/// from `www`. Answers the two `driver_info` settings. No site deploy ramdisk exists: the
/// machine can only boot these.
fn build_deploy_images(lab: &Lab, ramdisk_dir: &Path, www: &Path, www_url: &str) -> (String, String) {
    let agent = agent_binary();
    let arguments = ["--agent", &agent.display().to_string(), "--output", &ramdisk_dir.display().to_string(), "--no-upload"];
    lab.kiln(Path::new(KILN), &[&["build", "ramdisk"][..], &arguments].concat()).unwrap();
    std::fs::rename(ramdisk_dir.join("kiln-deploy.initramfs"), www.join("deploy.ramdisk")).unwrap();
    (
        format!("deploy_kernel=file://{}", ramdisk_dir.join("kiln-deploy.kernel").display()),
        format!("deploy_ramdisk={www_url}/deploy.ramdisk"),
    )
}

/// `baremetal node create --driver ipmi --driver-info …` as the seed writes it, for the lab
/// machine behind `ipmi_sim`; answers the node's UUID.
fn enrol_as_the_seed(clients: &Clients<'_>, ipmi_port: &str, deploy_kernel: &str, deploy_ramdisk: &str) -> String {
    let port = format!("ipmi_port={ipmi_port}");
    let mut args = vec!["node", "create", "--driver", "ipmi", "--name", "seed-node"];
    for info in ["ipmi_address=127.0.0.1", &port, "ipmi_username=admin", "ipmi_password=lab-ipmi", deploy_kernel, deploy_ramdisk] {
        args.extend(["--driver-info", info]);
    }
    args.extend(["-f", "json"]);
    let created = json(&clients.baremetal(&args));
    created["uuid"].as_str().unwrap().to_owned()
}

#[test]
fn the_seed_s_deploy_by_url_through_baremetal_and_openstacksdk_on_an_ipmi_lab_machine() {
    let Some(bin) = ironic_clients() else { return };
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    let work = lab.directory.path().to_owned();
    let ramdisk_dir = work.join("deploy-images");
    std::fs::create_dir_all(&ramdisk_dir).unwrap();
    let images_config =
        format!("[images]\nimport_allowed_networks = [\"127.0.0.1/32\"]\nimport_allowed_dirs = [\"{}\"]\n", ramdisk_dir.display());
    lab.start_server(kiln, &images_config).unwrap();

    let www = work.join("www");
    let (raw, md5) = build_served_image(&lab, &www);
    let images = ImageServer::start(&lab, &www);
    let url = format!("{}/lab-os.qcow2", images.url);
    let (deploy_kernel, deploy_ramdisk) = build_deploy_images(&lab, &ramdisk_dir, &www, &images.url);

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
    let uuid = enrol_as_the_seed(&clients, &ipmi_port, &deploy_kernel, &deploy_ramdisk);
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
    let log = lab.server_log();
    assert!(log.contains("/boot/images/ironic-ramdisk-"), "the agent booted the node's own deploy ramdisk:\n{}", tail(&log, 80));
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
    let sdk_args = [
        clients.token.as_str(),
        &clients.endpoint(),
        &ipmi_port,
        mac,
        &url,
        &md5,
        deploy_kernel.trim_start_matches("deploy_kernel="),
        deploy_ramdisk.trim_start_matches("deploy_ramdisk="),
    ];
    let said = clients.python(SDK_DEPLOY, &sdk_args);
    assert!(said.contains("deployed active"), "{said}");
    assert_eq!(images.requests("lab-os.qcow2"), ["200 conditional=false", "304 conditional=true"]);
    let ramdisk_fetches = images.requests("deploy.ramdisk");
    assert_eq!(ramdisk_fetches[0], "200 conditional=false", "{ramdisk_fetches:?}");
    assert!(
        ramdisk_fetches[1..].iter().all(|request| request == "304 conditional=true"),
        "the ramdisk is fetched once: {ramdisk_fetches:?}"
    );
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
