//! UEFI Secure Boot network boot in the lab: OVMF enforcing Secure Boot with Microsoft's keys
//! enrolled loads Debian's signed shim from Kiln's TFTP, shim loads Debian's signed network
//! GRUB, GRUB reads the configuration Kiln renders for the machine and boots Debian's signed
//! kernel. And the firmware refuses what is not signed: iPXE.
//!
//! These tests need root, QEMU, OVMF, shim-signed, grub-efi-amd64-signed and Debian's kernel
//! (`scripts/install-deps`); without them they are skipped, unless `KILN_REQUIRE_LAB=1`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use kiln_lab::{Firmware, Lab};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Secure Boot firmware under TCG with SMM is slower than plain OVMF, and GRUB fetches the
/// kernel by TFTP.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn loaders_installed() -> bool {
    let installed = [
        "/usr/lib/shim/shimx64.efi.signed",
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    ]
    .iter()
    .all(|path| Path::new(path).exists());
    if !installed && std::env::var_os("KILN_REQUIRE_LAB").is_some_and(|value| value == "1") {
        panic!("KILN_REQUIRE_LAB=1 but shim-signed, grub-efi-amd64-signed or ovmf is not installed (scripts/install-deps)");
    }
    installed
}

/// A lab with the server, the host's (signed) kernel and the callback initrd under
/// /boot/files, and node `name` enrolled with `mac`.
fn lab_with_node(name: &str, mac: &str, properties: &str) -> Option<Lab> {
    if !loaders_installed() {
        eprintln!("skipped: shim-signed, grub-efi-amd64-signed or ovmf is not installed");
        return None;
    }
    let mut lab = Lab::create_or_skip()?;
    let data = lab.start_server(Path::new(KILN), "").unwrap();
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    std::fs::copy(kernel, data.join("boot-files/vmlinuz")).unwrap();
    kiln_lab::build_callback_initrd(&data.join("boot-files/initrd.img")).unwrap();
    let kiln = Path::new(KILN);
    let node = format!("- name: {name}\n  interfaces:\n  - mac_addr: {mac}\n    ip_addrs: []\n");
    lab.kiln(kiln, &["discover", "static", "-f", "yaml", "-d", &node]).unwrap();
    if !properties.is_empty() {
        lab.kiln(kiln, &["node", "update", name, "-f", "json", "-d", &format!("{{\"properties\": {properties}}}")]).unwrap();
    }
    let params = format!(
        "kernel: '{{{{ server.url }}}}/boot/files/vmlinuz'\ninitrd: '{{{{ server.url }}}}/boot/files/initrd.img'\n\
         params: 'console=ttyS0,115200 panic=-1 kiln.server={{{{ server.url }}}} kiln.node={{{{ node.name }}}} ds=nocloud-net;s={{{{ server.url }}}}/cloud-init/'\n\
         macs: ['{mac}']\n"
    );
    lab.kiln(kiln, &["boot", "params", "set", "-f", "yaml", "-d", &params]).unwrap();
    Some(lab)
}

#[test]
fn a_secure_boot_machine_boots_linux_through_shim_and_signed_grub() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mac = "52:54:00:5b:00:01";
    // Ironic's spelling of the mark, as a node enrolled through its API carries it.
    let Some(mut lab) = lab_with_node("sb01", mac, r#"{"capabilities": "boot_mode:uefi,secure_boot:true"}"#) else { return };
    let machine = lab.boot_machine(mac, Firmware::UefiSecureBoot).unwrap();
    let console = match machine.wait_for_console("KILN-LAB-PHONED-HOME", BOOT_TIMEOUT) {
        Ok(console) => console,
        Err(error) => panic!("{error:#}\nserver log:\n{}", lab.server_log()),
    };
    assert!(console.contains("Secure boot enabled"), "the kernel runs under Secure Boot:\n{console}");
    assert!(console.contains("Kiln: booting sb01 (52:54:00:5b:00:01)"), "GRUB ran Kiln's configuration for the node:\n{console}");
    assert!(!console.contains("iPXE"), "iPXE never ran:\n{console}");
    let log = lab.server_log();
    for file in
        ["shimx64.efi", "grubx64.efi", "grub/grub.cfg", "grub/kiln/52:54:00:5b:00:01", "boot/files/vmlinuz", "boot/files/initrd.img"]
    {
        let sent = log.lines().any(|line| line.contains("TFTP transfer complete") && line.contains(file));
        assert!(sent, "{file} went out by TFTP:\n{log}");
    }
    assert!(log.contains("GRUB configuration served"), "{log}");
}

#[test]
fn secure_boot_firmware_refuses_unsigned_ipxe() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mac = "52:54:00:5b:00:02";
    // Not marked for Secure Boot: Kiln offers iPXE, as to any UEFI machine.
    let Some(mut lab) = lab_with_node("sb02", mac, "") else { return };
    let machine = lab.boot_machine(mac, Firmware::UefiSecureBoot).unwrap();
    let console = match machine.wait_for_console("Access Denied", BOOT_TIMEOUT) {
        Ok(console) => console,
        Err(error) => panic!("{error:#}\nserver log:\n{}", lab.server_log()),
    };
    // iPXE prints its banner as it starts: had the firmware run it, it would show by now.
    if let Ok(console) = machine.wait_for_console("iPXE", Duration::from_secs(5)) {
        panic!("the firmware ran iPXE:\n{console}");
    }
    assert!(console.contains("Access Denied"), "{console}");
    let log = lab.server_log();
    assert!(log.lines().any(|line| line.contains("TFTP transfer complete") && line.contains("snponly.efi")), "iPXE was sent:\n{log}");
}
