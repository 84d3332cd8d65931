//! Provisioning end to end in the lab: a QEMU machine with an empty disk, behind the lab BMC,
//! is deployed through `kiln node deploy` (PXE to the deploy ramdisk built by `kiln build
//! ramdisk`, kiln-agent writes and verifies the image, the machine boots its disk and the
//! deployed system calls back), captured into a new image version, undeployed (the disk
//! cleaned) and inspected, with the API listener on HTTPS (the agent's session over TLS).
//!
//! Needs what the lab needs plus SYSLINUX, mtools and dosfstools (`scripts/install-deps`),
//! and a built `kiln-agent` (`cargo build --release -p kiln-agent`; `scripts/test` does it).

mod support;

use std::path::Path;
use std::sync::Mutex;

use kiln_lab::{Firmware, Lab};
use support::agent_binary;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long each step of the node's last operation took, from its provisioning events.
fn phases(lab: &Lab, node: &str) -> String {
    let events = json(&lab.kiln(Path::new(KILN), &["events", "--kind", "node_provision", "--target", node, "-F", "json"]).unwrap());
    let mut marks: Vec<(jiff::Timestamp, String)> = Vec::new();
    for event in events.as_array().unwrap() {
        let at: jiff::Timestamp = event["at"].as_str().unwrap().parse().unwrap();
        let label = match (event["action"].as_str(), event["after"]["state"].as_str(), event["after"]["step"].as_str()) {
            (Some("node.provision.requested"), ..) => "requested".to_owned(),
            (_, Some(state), Some(step)) => format!("{state}/{step}"),
            (_, Some(state), None) => state.to_owned(),
            _ => continue,
        };
        marks.push((at, label));
    }
    let start = marks.iter().rposition(|(_, label)| label == "requested").unwrap_or(0);
    let marks = &marks[start..];
    marks
        .windows(2)
        .map(|pair| format!("{} {:.1} s", pair[1].1, (pair[1].0 - pair[0].0).total(jiff::Unit::Second).unwrap()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

#[test]
fn a_lab_machine_is_deployed_to_disk_captured_undeployed_and_inspected() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    // The API listener speaks HTTPS: the CLI trusts Kiln's CA, and the agent talks to it over
    // TLS (the certificate fetched from the boot listener and checked against the boot
    // script's digest) while images still come by the boot listener's sendfile path.
    let data = lab.start_server_with_tls(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();

    // The image: a BIOS-bootable disk whose system calls the server back.
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    let callback_initrd = work.join("callback-initrd.img");
    kiln_lab::build_callback_initrd(&callback_initrd).unwrap();
    let image = work.join("lab-os.raw");
    let append = format!("console=ttyS0,115200 panic=-1 kiln.server={}", lab.boot_url());
    kiln_lab::build_bootable_disk(&image, 48, &kernel, &callback_initrd, &append).unwrap();
    let compressed = work.join("lab-os.raw.zst");
    let status = std::process::Command::new("zstd").args(["-q", "-3", "-f"]).arg(&image).arg("-o").arg(&compressed).status().unwrap();
    assert!(status.success());
    lab.kiln(kiln, &["image", "create", "lab-os"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-os", &format!("disk={}", compressed.display())]).unwrap();

    // The deploy ramdisk, stored as the public image the server boots agents with.
    let agent = agent_binary();
    let built = lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string(), "-F", "json"]).unwrap();
    assert_eq!(json(&built)["image"], "kiln-deploy-ramdisk");

    // The machine: powered off behind the lab BMC, with an empty 128 MiB disk.
    let disk = work.join("node-disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(128 << 20).unwrap();
    let mac = "52:54:00:be:ef:31";
    let machine = lab.add_machine_with_disk(mac, Firmware::Bios, &disk).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    let node = serde_json::json!([{ "name": "node31", "interfaces": [{"mac_addr": mac}] }]);
    lab.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}});
    lab.kiln(kiln, &["node", "update", "node31", "-f", "json", "-d", &bmc.to_string()]).unwrap();
    lab.kiln(kiln, &["node", "manage", "node31", "--wait", "--timeout", "30"]).unwrap();
    lab.kiln(kiln, &["node", "provide", "node31", "--wait", "--timeout", "30"]).unwrap();

    // Deploy, waiting for the deployed system's callback.
    let started = std::time::Instant::now();
    let deployed = lab
        .kiln(kiln, &["node", "deploy", "node31", "--image", "lab-os", "--wait-for-callback", "--wait", "--timeout", "600", "-F", "json"])
        .unwrap_or_else(|error| {
            panic!(
                "deploy failed: {error}\nconsole:\n{}\nserver:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default(),
                lab.server_log()
            )
        });
    let deploy_seconds = started.elapsed().as_secs_f64();
    assert_eq!(json(&deployed)[0]["provision_state"], "active", "{deployed}");
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(console_text.contains("kiln-agent: command"), "the agent ran:\n{console_text}");
    assert!(console_text.contains("control https://10.77.0.1:"), "the agent's session went over HTTPS:\n{console_text}");
    assert!(console_text.contains("KILN-LAB-PHONED-HOME"), "the deployed system called back:\n{console_text}");
    // The server read the same serial line through the machine's serial socket.
    let through_kiln = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(250));
        lab.kiln(kiln, &["node", "console", "node31"]).unwrap_or_default().contains("KILN-LAB-PHONED-HOME")
    });
    assert!(through_kiln, "kiln node console shows the callback:\n{}", lab.server_log());
    let written = std::fs::read(&disk).unwrap();
    let expected = std::fs::read(&image).unwrap();
    assert!(written[..expected.len()] == expected[..], "the disk holds exactly the image");
    assert!(written[expected.len()..].iter().all(|&byte| byte == 0), "and nothing after it");
    let log = lab.server_log();
    let sent = log.lines().any(|line| line.contains("boot file sent") && line.contains("/agent/v1/nodes/") && line.contains("/artifact"));
    assert!(sent, "the image went to the agent through the boot listener's sendfile path:\n{log}");
    eprintln!("deploy to active: {deploy_seconds:.0} s; phases: {}", phases(&lab, "node31"));

    // Capture: the deployed disk becomes a new version of an image, byte for byte; the node
    // boots its disk again.
    lab.kiln(kiln, &["image", "create", "lab-captured"]).unwrap();
    lab.kiln(kiln, &["node", "capture", "node31", "--image", "lab-captured", "--wait", "--timeout", "600"])
        .unwrap_or_else(|error| panic!("capture failed: {error}\nconsole:\n{}", std::fs::read_to_string(&console).unwrap_or_default()));
    let captured = work.join("captured.zst");
    lab.kiln(kiln, &["image", "download", "lab-captured:1", "-o", &captured.display().to_string()]).unwrap();
    let unpacked = std::process::Command::new("zstd").args(["-d", "-c", "-q"]).arg(&captured).output().unwrap();
    assert!(unpacked.status.success() && unpacked.stdout == std::fs::read(&disk).unwrap(), "the captured version is the disk");

    // Undeploy: the disk is cleaned (no partition table, no FAT signature) and the node is
    // available again; its agent token no longer works.
    lab.kiln(kiln, &["node", "undeploy", "node31", "--wait", "--timeout", "600"])
        .unwrap_or_else(|error| panic!("undeploy failed: {error}\nconsole:\n{}", std::fs::read_to_string(&console).unwrap_or_default()));
    let cleaned = std::fs::read(&disk).unwrap();
    assert!(cleaned[..1 << 20].iter().all(|&byte| byte == 0), "the MBR and the partition's start are wiped");
    assert!(cleaned[cleaned.len() - (1 << 20)..].iter().all(|&byte| byte == 0));
    let status = json(&lab.kiln(kiln, &["node", "provision", "node31", "-F", "json"]).unwrap());
    assert_eq!(status["provision_state"], "available");

    // Inspect: the node's properties get the machine's CPUs, memory, disk and NIC.
    lab.kiln(kiln, &["node", "inspect", "node31", "--wait", "--timeout", "600"])
        .unwrap_or_else(|error| panic!("inspect failed: {error}\nconsole:\n{}", std::fs::read_to_string(&console).unwrap_or_default()));
    let node = json(&lab.kiln(kiln, &["node", "show", "node31", "-F", "json"]).unwrap());
    let properties = &node["properties"];
    assert_eq!(properties["cpus"], 1, "{properties}");
    assert!(properties["memory_mb"].as_u64().unwrap() > 400, "{properties}");
    let inventory = &properties["inventory"];
    let disks = inventory["disks"].as_array().unwrap();
    assert!(disks.iter().any(|disk| disk["size_bytes"] == 128 << 20 && disk["serial"] == "KILN-525400beef31"), "{inventory}");
    assert!(inventory["interfaces"].as_array().unwrap().iter().any(|nic| nic["mac"] == mac), "{inventory}");
    assert_eq!(node["provision_state"], "available");
    let _ = data;
}

#[test]
fn a_lab_machine_boots_a_squashfs_root_live_and_calls_back() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();
    let agent = agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();
    // The image has a root and nothing else: Kiln's own init boots it.
    let root = kiln_lab::build_live_root(&work, false).unwrap();
    lab.kiln(kiln, &["image", "create", "lab-live", "--visibility", "public"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-live", &format!("root={}", root.display())]).unwrap();

    let mac = "52:54:00:be:ef:32";
    let machine = lab.add_powered_off_machine(mac, Firmware::Bios).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    let node = serde_json::json!([{ "name": "node32", "interfaces": [{"mac_addr": mac}] }]);
    lab.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}});
    lab.kiln(kiln, &["node", "update", "node32", "-f", "json", "-d", &bmc.to_string()]).unwrap();
    lab.kiln(kiln, &["node", "manage", "node32", "--wait", "--timeout", "30"]).unwrap();
    lab.kiln(kiln, &["node", "provide", "node32", "--wait", "--timeout", "30"]).unwrap();
    let started = std::time::Instant::now();
    let deployed = lab
        .kiln(
            kiln,
            &[
                "node",
                "deploy",
                "node32",
                "--image",
                "lab-live",
                "--mode",
                "live",
                "--wait-for-callback",
                "--wait",
                "--timeout",
                "400",
                "-F",
                "json",
            ],
        )
        .unwrap_or_else(|error| {
            panic!(
                "live deploy failed: {error}\nconsole:\n{}\nserver:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default(),
                lab.server_log()
            )
        });
    assert_eq!(json(&deployed)[0]["provision_state"], "active", "{deployed}");
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(text.contains("KILN-LIVE-ROOT overlay / overlay"), "the root is the RAM overlay:\n{text}");
    assert!(text.contains("KILN-LIVE-WRITABLE") && text.contains("KILN-LIVE-PHONED-HOME"), "{text}");
    eprintln!("live deploy to active: {:.0} s", started.elapsed().as_secs_f64());
    // A live node fetches its root with no credential: private images are refused up front.
    lab.kiln(kiln, &["image", "create", "lab-private"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-private", &format!("root={}", root.display())]).unwrap();
    let refused = lab.kiln(kiln, &["node", "deploy", "node32", "--image", "lab-private", "--mode", "live"]).unwrap_err().to_string();
    assert!(refused.contains("live deploys need a public image"), "{refused}");
}
