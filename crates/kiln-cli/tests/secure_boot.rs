//! UEFI Secure Boot network boot in the lab: OVMF enforcing Secure Boot with Microsoft's keys
//! enrolled loads Debian's signed shim from Kiln's TFTP, shim loads Debian's signed network
//! GRUB, GRUB reads the configuration Kiln renders for the machine and boots Debian's signed
//! kernel. And the firmware refuses what is not signed: iPXE.
//!
//! A third machine is deployed to disk with Secure Boot on throughout: the deploy ramdisk
//! boots through shim and GRUB, and the disk it writes (made by Kiln's disk writer with shim
//! and signed GRUB on its ESP) boots under Secure Boot and calls back.
//!
//! These tests need root, QEMU, OVMF, shim-signed, grub-efi-amd64-signed and Debian's kernel
//! (`scripts/install-deps`), and the deploy test a built `kiln-agent`; without them they are
//! skipped, unless `KILN_REQUIRE_LAB=1`.

mod support;

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

#[test]
fn a_secure_boot_machine_is_deployed_to_disk_and_boots_its_signed_disk() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !loaders_installed() {
        return;
    }
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();

    // The image: Kiln's disk writer with Secure Boot asked for, around Debian's signed kernel
    // and an initramfs that calls the server back.
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    let version = kernel.file_name().unwrap().to_str().unwrap().strip_prefix("vmlinuz-").unwrap().to_owned();
    let layer = work.join("layer");
    std::fs::create_dir_all(layer.join("boot")).unwrap();
    std::fs::copy(&kernel, layer.join(format!("boot/vmlinuz-{version}"))).unwrap();
    kiln_lab::build_callback_initrd(&layer.join(format!("boot/initrd.img-{version}"))).unwrap();
    let kernel_args = format!("panic=-1 kiln.server={}", lab.boot_url());
    let boot = kiln_image_build::disk::DiskBoot { kernel_args: &kernel_args, secure_boot: true };
    let image = kiln_image_build::disk::make_disk(&layer, "sb-os", &work, &boot, &mut std::io::sink()).unwrap();
    let compressed = work.join("sb-os.raw.zst");
    let status = std::process::Command::new("zstd").args(["-q", "-3", "-f"]).arg(&image).arg("-o").arg(&compressed).status().unwrap();
    assert!(status.success());
    lab.kiln(kiln, &["image", "create", "sb-os"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "sb-os", &format!("disk={}", compressed.display())]).unwrap();
    let agent = support::agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();

    let disk = work.join("node-disk.raw");
    let image_bytes = std::fs::metadata(&image).unwrap().len();
    std::fs::File::create(&disk).unwrap().set_len(image_bytes + (64 << 20)).unwrap();
    let mac = "52:54:00:5b:00:03";
    let machine = lab.add_machine_with_disk(mac, Firmware::UefiSecureBoot, &disk).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    let node = serde_json::json!([{ "name": "sb03", "interfaces": [{"mac_addr": mac}] }]);
    lab.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    let update = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}, "properties": {"secure_boot": true}});
    lab.kiln(kiln, &["node", "update", "sb03", "-f", "json", "-d", &update.to_string()]).unwrap();
    lab.kiln(kiln, &["node", "manage", "sb03", "--wait", "--timeout", "30"]).unwrap();
    lab.kiln(kiln, &["node", "provide", "sb03", "--wait", "--timeout", "30"]).unwrap();
    let started = std::time::Instant::now();
    let deployed = lab
        .kiln(kiln, &["node", "deploy", "sb03", "--image", "sb-os", "--wait-for-callback", "--wait", "--timeout", "900", "-F", "json"])
        .unwrap_or_else(|error| {
            panic!(
                "deploy failed: {error}\nconsole:\n{}\nserver:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default(),
                lab.server_log()
            )
        });
    eprintln!("secure boot deploy to active: {:.0} s", started.elapsed().as_secs_f64());
    assert!(deployed.contains("\"active\""), "{deployed}");
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let agent_ran = console_text.find("kiln-agent: command").expect("the agent ran");
    let called_back = console_text.rfind("KILN-LAB-PHONED-HOME").expect("the deployed system called back");
    // The ramdisk's kernel and the deployed system's each print it as they start.
    let secure = |range: &str| range.matches("Secure boot enabled").count();
    assert!(secure(&console_text[..agent_ran]) >= 1, "the deploy ramdisk ran under Secure Boot:\n{console_text}");
    assert!(secure(&console_text[agent_ran..called_back]) >= 1, "the deployed system ran under Secure Boot:\n{console_text}");
    assert!(console_text.contains("boots the deploy agent"), "GRUB booted the deploy ramdisk:\n{console_text}");
    let log = lab.server_log();
    let by_tftp = |file: &str| log.lines().any(|line| line.contains("TFTP transfer complete") && line.contains(file));
    assert!(by_tftp("boot/images/kiln-deploy-ramdisk/"), "GRUB fetched the ramdisk by TFTP:\n{log}");
}
