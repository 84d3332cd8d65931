//! A tiny initramfs for lab machines: busybox, the virtio network modules of the kernel being
//! booted, and an init that takes a DHCP lease and calls the server back, then powers off
//! (tests) or, with `kiln.lab.stay` on the kernel command line, keeps running (`kiln lab up`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The newest Debian kernel installed under /boot and its module directory.
pub fn host_kernel() -> anyhow::Result<(PathBuf, PathBuf)> {
    Ok(kiln_image_build::ramdisk::host_kernel()?)
}

fn with_dependencies(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    Ok(kiln_image_build::ramdisk::modules_with_dependencies(modules, wanted)?)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do insmod "/modules/$module" 2>/dev/null; done
server=$(sed -n 's/.*kiln.server=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "kiln-lab: init started, server $server"
ip link set lo up
for attempt in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
ip link set eth0 up
mac=$(cat /sys/class/net/eth0/address)
udhcpc -i eth0 -s /udhcpc.script -q -n -t 20 -T 2 || echo "kiln-lab: no DHCP lease"
echo "kiln-lab: address $(ip -4 -o addr show eth0)"
if wget -q -O /dev/null "$server/boot/v1/phone-home?mac=$mac"; then echo "KILN-LAB-PHONED-HOME $mac"; else echo "KILN-LAB-PHONE-HOME-FAILED"; fi
if grep -q kiln.lab.stay /proc/cmdline; then
  echo "kiln-lab: up and running"
  # Lines typed on the serial console are answered, so that typing through Kiln shows.
  while :; do if read -r line; then echo "kiln-lab: heard $line"; else sleep 1; fi; done
fi
sleep 1
poweroff -f
"#;

/// Builds the initramfs into `output` (gzip-compressed newc cpio).
pub fn build_callback_initrd(output: &Path) -> anyhow::Result<()> {
    let (_, modules) = host_kernel()?;
    let root = tempfile::tempdir()?;
    let path = root.path();
    for directory in ["bin", "proc", "sys", "dev", "modules", "etc"] {
        std::fs::create_dir_all(path.join(directory))?;
    }
    std::fs::copy("/bin/busybox", path.join("bin/busybox")).context("copying busybox (apt-get install busybox-static)")?;
    let order = with_dependencies(&modules, &["virtio_pci", "virtio_net"])?;
    let mut names = Vec::new();
    for module in &order {
        let name = Path::new(module).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        std::fs::copy(modules.join(module), path.join("modules").join(&name))?;
        names.push(name);
    }
    std::fs::write(path.join("modules.order"), names.join("\n"))?;
    for (name, content) in [("init", INIT.to_owned()), ("udhcpc.script", kiln_image_build::ramdisk::udhcpc_script("kiln-lab"))] {
        std::fs::write(path.join(name), content)?;
        std::fs::set_permissions(path.join(name), std::fs::Permissions::from_mode(0o755))?;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'", path.display(), output.display()))
        .stderr(Stdio::inherit())
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed");
    }
    Ok(())
}
