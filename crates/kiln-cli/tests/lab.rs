//! Real network boots in the lab: QEMU machines with real iPXE (BIOS) and OVMF (UEFI) firmware
//! get their address from Kiln's DHCP, iPXE from Kiln's TFTP, their boot script, kernel and
//! initrd over Kiln's HTTP, boot Linux and call the server back.
//!
//! These tests need root, QEMU and Debian's iPXE, OVMF, kernel and busybox
//! (`scripts/install-deps`); without them they are skipped, unless `KILN_REQUIRE_LAB=1`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use kiln_lab::{Firmware, Lab};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// One machine at a time: TCG emulation on two cores is slow enough already.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Starts the server in the lab with a kernel and the callback initrd under /boot/files.
fn prepare(lab: &mut Lab) {
    prepare_with(lab, "");
}

fn prepare_with(lab: &mut Lab, dhcp_config: &str) {
    let data = lab.start_server(Path::new(KILN), dhcp_config).unwrap();
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    std::fs::copy(kernel, data.join("boot-files/vmlinuz")).unwrap();
    kiln_lab::build_callback_initrd(&data.join("boot-files/initrd.img")).unwrap();
}

fn boot_params(targets: &str) -> String {
    format!(
        "kernel: '{{{{ server.url }}}}/boot/files/vmlinuz'\ninitrd: '{{{{ server.url }}}}/boot/files/initrd.img'\n\
         params: 'console=ttyS0,115200 panic=-1 kiln.server={{{{ server.url }}}} kiln.node={{{{ node.name }}}}'\n{targets}\n"
    )
}

fn phone_home_events(lab: &Lab) -> Vec<serde_json::Value> {
    let events: serde_json::Value =
        serde_json::from_str(&lab.kiln(Path::new(KILN), &["events", "--kind", "node_boot", "-F", "json"]).unwrap()).unwrap();
    events.as_array().unwrap().clone()
}

fn known_node_boots(firmware: Firmware) {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    prepare(&mut lab);
    let kiln = Path::new(KILN);
    lab.kiln(kiln, &["discover", "static", "-f", "yaml", "-d",
        "- name: nid001\n  nid: 1\n  xname: x1000c0s0b0n0\n  group: compute\n  interfaces:\n  - mac_addr: 52:54:00:be:ef:01\n    ip_addrs:\n    - name: management\n      ip_addr: 10.77.0.11\n"]).unwrap();
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &boot_params("macs: ['52:54:00:be:ef:01']")]).unwrap();
    let machine = lab.boot_machine("52:54:00:be:ef:01", firmware).unwrap();
    let result = machine.wait_for_console("KILN-LAB-PHONED-HOME", BOOT_TIMEOUT);
    let console = match result {
        Ok(console) => console,
        Err(error) => panic!("{error:#}\nserver log:\n{}", lab.server_log()),
    };
    assert!(console.contains("kiln-lab: lease 10.77.0.11"), "the reserved address was leased:\n{console}");
    assert!(console.contains("hostname nid001"), "the OpenCHAMI-style host name was given:\n{console}");
    let events = phone_home_events(&lab);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["target"], "nid001");
    assert_eq!(events[0]["after"]["address"], "10.77.0.11");
    let log = lab.server_log();
    assert!(log.contains("lease acknowledged"), "{log}");
    for file in ["/boot/files/vmlinuz", "/boot/files/initrd.img"] {
        let sent = log.lines().any(|line| line.contains("boot file sent") && line.contains(file) && line.contains("10.77.0.11"));
        assert!(sent, "{file} went out through the boot listener's sendfile path:\n{log}");
    }
    if firmware == Firmware::Uefi {
        assert!(
            log.contains("TFTP transfer complete") && log.contains("snponly.efi"),
            "OVMF loaded iPXE by TFTP:\n{log}\nconsole:\n{console}"
        );
    }
}

#[test]
fn a_bios_machine_in_the_inventory_boots_linux_and_calls_back() {
    known_node_boots(Firmware::Bios);
}

#[test]
fn a_uefi_machine_loads_ipxe_by_tftp_boots_linux_and_calls_back() {
    known_node_boots(Firmware::Uefi);
}

#[test]
fn a_uefi_machine_boots_by_http_boot_with_no_tftp_server() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let data = lab.start_server_without_tftp(Path::new(KILN), "").unwrap();
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    std::fs::copy(kernel, data.join("boot-files/vmlinuz")).unwrap();
    kiln_lab::build_callback_initrd(&data.join("boot-files/initrd.img")).unwrap();
    let kiln = Path::new(KILN);
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &boot_params("macs: ['52:54:00:be:ef:07']")]).unwrap();
    let machine = lab.boot_machine("52:54:00:be:ef:07", Firmware::UefiHttpBoot).unwrap();
    let console = match machine.wait_for_console("KILN-LAB-PHONED-HOME", BOOT_TIMEOUT) {
        Ok(console) => console,
        Err(error) => panic!("{error:#}\nserver log:\n{}", lab.server_log()),
    };
    assert!(console.contains("Start HTTP Boot over IPv4"), "the firmware's own HTTP boot:\n{console}");
    let log = lab.server_log();
    assert!(!log.contains("TFTP server listening"), "no TFTP server ran:\n{log}");
    let fetched =
        log.lines().any(|line| line.contains("boot file sent") && line.contains("/boot/ipxe/snponly.efi") && line.contains("method=GET"));
    assert!(fetched, "the firmware fetched iPXE by HTTP:\n{log}");
}

#[test]
fn an_unknown_machine_is_enrolled_and_boots_the_default_parameters() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    prepare(&mut lab);
    let kiln = Path::new(KILN);
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &boot_params("hosts: [Default]")]).unwrap();
    let machine = lab.boot_machine("52:54:00:be:ef:99", Firmware::Bios).unwrap();
    if let Err(error) = machine.wait_for_console("KILN-LAB-PHONED-HOME", BOOT_TIMEOUT) {
        panic!("{error:#}\nserver log:\n{}", lab.server_log());
    }
    let nodes: serde_json::Value = serde_json::from_str(&lab.kiln(kiln, &["node", "list", "-F", "json"]).unwrap()).unwrap();
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["provision_state"], "discovered");
    assert_eq!(nodes[0]["interfaces"][0]["mac_addr"], "52:54:00:be:ef:99");
    let events = phone_home_events(&lab);
    assert_eq!(events.len(), 1);
    assert!(events[0]["after"]["address"].as_str().unwrap().starts_with("10.77.0.1"), "a pool address: {events:?}");
}

#[test]
fn proxy_mode_boots_a_machine_beside_the_sites_dnsmasq() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    lab.start_site_dhcp().unwrap();
    prepare_with(&mut lab, "mode = \"proxy\"");
    let kiln = Path::new(KILN);
    lab.kiln(
        kiln,
        &["discover", "static", "-f", "yaml", "-d", "- name: nid001\n  nid: 1\n  interfaces:\n  - mac_addr: 52:54:00:be:ef:01\n"],
    )
    .unwrap();
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &boot_params("macs: ['52:54:00:be:ef:01']")]).unwrap();
    let machine = lab.boot_machine("52:54:00:be:ef:01", Firmware::Bios).unwrap();
    let result = machine.wait_for_console("KILN-LAB-PHONED-HOME", BOOT_TIMEOUT);
    if let Err(error) = result {
        panic!("{error:#}\nserver log:\n{}\ndnsmasq log:\n{}", lab.server_log(), lab.site_dhcp_log());
    }
    let events = phone_home_events(&lab);
    assert_eq!(events.len(), 1, "{events:?}");
    let address = events[0]["after"]["address"].as_str().unwrap().to_owned();
    let last: u8 = address.rsplit('.').next().unwrap().parse().unwrap();
    assert!((50..=60).contains(&last), "the address came from the site's dnsmasq, not Kiln: {address}");
    assert!(lab.site_dhcp_log().contains("52:54:00:be:ef:01"), "dnsmasq served the machine");
}

/// Thousands of random MACs, truncated packets and option overflows from another host on the
/// segment: the server stays up and keeps offering a known machine its reservation.
#[test]
fn dhcp_survives_hostile_packets_and_keeps_serving_known_nodes() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "").unwrap();
    lab.kiln(
        kiln,
        &[
            "discover",
            "static",
            "-f",
            "yaml",
            "-d",
            "- name: nid001\n  nid: 1\n  interfaces:\n  - mac_addr: 52:54:00:be:ef:01\n    ip_addrs:\n    - ip_addr: 10.77.0.11\n",
        ],
    )
    .unwrap();
    let host = lab.add_host().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dhcp_hostile_client.py");
    let output = std::process::Command::new("ip").args(["netns", "exec", &host, "python3", script, "3000"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("OK"),
        "{stdout}{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        lab.server_log()
    );
    // Still answering the API, and the flood did not turn into thousands of enrolments at once.
    let nodes: serde_json::Value = serde_json::from_str(&lab.kiln(kiln, &["node", "list", "-F", "json"]).unwrap()).unwrap();
    assert!(nodes.as_array().unwrap().iter().any(|node| node["name"] == "nid001"));
    assert!(!lab.server_log().contains("panicked"));
}

/// Pool leases survive a server killed and restarted: the client is offered the same address.
#[test]
fn pool_leases_survive_a_restart() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "").unwrap();
    let host = lab.add_host().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dhcp_dora.py");
    let dora = |mac: &str| {
        let output = std::process::Command::new("ip").args(["netns", "exec", &host, "python3", script, mac]).output().unwrap();
        assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let first = dora("52:54:00:aa:00:01");
    let second = dora("52:54:00:aa:00:02");
    assert_ne!(first, second);
    // Let the batch reach the disk, then kill the server without a chance to flush.
    std::thread::sleep(Duration::from_millis(200));
    lab.stop_server();
    lab.start_server(kiln, "").unwrap();
    assert!(lab.server_log().contains("DHCP leases restored"), "{}", lab.server_log());
    assert_eq!(dora("52:54:00:aa:00:02"), second, "the second client keeps its address");
    assert_eq!(dora("52:54:00:aa:00:01"), first, "the first client keeps its address");
}

#[test]
fn an_arm64_uefi_machine_is_offered_and_loads_the_arm64_boot_file() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    if !Path::new("/usr/share/AAVMF/AAVMF_CODE.fd").exists() || !Path::new("/usr/bin/qemu-system-aarch64").exists() {
        assert!(std::env::var("KILN_REQUIRE_LAB").as_deref() != Ok("1"), "KILN_REQUIRE_LAB=1 but arm64 QEMU or AAVMF is missing");
        eprintln!("skipping: qemu-system-arm and qemu-efi-aarch64 are not installed");
        return;
    }
    // Debian ships no arm64 iPXE build; a distinct file of the TFTP root stands in for it, so
    // that the test shows the arm64 client (architecture 11) was given and fetched its own
    // file, not the x86-64 one. AAVMF then fails to run it, as expected.
    prepare_with(&mut lab, "arm64_boot_file = \"ipxe.pxe\"");
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    // AAVMF tries PXE (architecture 11, TFTP) first and UEFI HTTP boot (architecture 19)
    // after it. Under a loaded host the emulated arm64 firmware sometimes lets its PXE offers
    // time out and goes on to HTTP boot; either way it must ask for the arm64 file.
    let fetched = |log: &str| {
        log.lines().any(|line| {
            (line.contains("TFTP transfer complete") && line.contains("ipxe.pxe"))
                || (line.contains("boot file sent") && line.contains("/boot/ipxe/ipxe.pxe"))
        })
    };
    let console_path = lab.boot_machine("52:54:00:be:ef:64", Firmware::UefiArm64).unwrap().console.clone();
    let mut console = String::new();
    while !fetched(&lab.server_log()) {
        if std::time::Instant::now() > deadline {
            panic!("the arm64 machine did not fetch its boot file:\n{}\nconsole:\n{console}", lab.server_log());
        }
        console = std::fs::read_to_string(&console_path).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = lab.server_log();
    assert!(
        !log.lines()
            .any(|line| (line.contains("TFTP transfer complete") || line.contains("boot file sent")) && line.contains("snponly.efi")),
        "{log}"
    );
}

/// A lab machine behind the lab BMC driver (QMP): powered on through `kiln node power`, it
/// boots through Kiln and calls back; a reset boots it again; off stops it.
#[test]
fn a_lab_machine_is_powered_on_reset_and_off_through_kiln() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut lab) = Lab::create_or_skip() else { return };
    prepare(&mut lab);
    let kiln = Path::new(KILN);
    let machine = lab.add_powered_off_machine("52:54:00:be:ef:21", Firmware::Bios).unwrap();
    let qmp = machine.qmp.clone().unwrap();
    let console = machine.console.clone();
    let node = serde_json::json!([{
        "name": "nid021", "nid": 21, "group": "compute",
        "interfaces": [{"mac_addr": "52:54:00:be:ef:21", "ip_addrs": [{"name": "management", "ip_addr": "10.77.0.21"}]}],
    }]);
    lab.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}});
    lab.kiln(kiln, &["node", "update", "nid021", "-f", "json", "-d", &bmc.to_string()]).unwrap();
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &boot_params("macs: ['52:54:00:be:ef:21']")]).unwrap();

    let status = |lab: &Lab| -> String {
        let answer: serde_json::Value =
            serde_json::from_str(&lab.kiln(kiln, &["node", "power", "status", "nid021", "-F", "json"]).unwrap()).unwrap();
        answer[0]["power_state"].as_str().unwrap().to_owned()
    };
    assert_eq!(status(&lab), "off", "the machine starts powered off");
    assert!(std::fs::read_to_string(&console).unwrap_or_default().is_empty(), "and has printed nothing");

    lab.kiln(kiln, &["node", "power", "on", "nid021"]).unwrap();
    assert_eq!(status(&lab), "on");
    let phoned = |count: usize| {
        let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if text.matches("KILN-LAB-PHONED-HOME").count() >= count {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "boot {count} did not call back; console:\n{text}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    phoned(1);
    lab.kiln(kiln, &["node", "power", "reset", "nid021"]).unwrap();
    phoned(2);
    assert_eq!(phone_home_events(&lab).len(), 2, "two boots, two callbacks");
    lab.kiln(kiln, &["node", "power", "force-off", "nid021"]).unwrap();
    assert_eq!(status(&lab), "off");
}
