//! A small disk image for network-mode boots: an MBR partition table and one ext4 partition
//! (made from a directory with `mke2fs -d`, so no loop device or mount is needed) holding
//! busybox and an init that proves the disk is the node's own and writable: on the first boot
//! it writes a marker with its MAC, syncs and reboots; on the next it reports the marker it
//! finds, calls the server back, offers a login prompt on the serial line and appends a
//! numbered record a second to a file, syncing each before it reports it.

use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Where the root partition starts: 1 MiB, as partitioning tools align it.
const PARTITION_START: u64 = 1 << 20;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
interface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
mac=$(cat "/sys/class/net/$interface/address")
echo "KILN-NETDISK-ROOT $(grep ' / ' /proc/mounts)"
[ -f /kiln-records ] && echo "KILN-NETDISK-RECORDS-KEPT $(tail -n 1 /kiln-records)"
if [ -f /kiln-marker ]; then
    echo "KILN-NETDISK-MARKER $(cat /kiln-marker)"
else
    echo "$mac" > /kiln-marker
    sync
    echo "KILN-NETDISK-WROTE $mac; rebooting"
    sleep 1
    reboot -f
fi
server=$(sed -n 's/.*kiln.server=\([^ ]*\).*/\1/p' /proc/cmdline)
if wget -q -O /dev/null "$server/boot/v1/phone-home?mac=$mac"; then echo "KILN-NETDISK-PHONED-HOME $mac"; fi
hostname kiln-netdisk
# Numbered records, each synced before it is reported: what the node was told is written
# must be there after the server restarts or the machine is reset.
(
    record=$(tail -n 1 /kiln-records 2>/dev/null || echo 0)
    while :; do
        record=$((record + 1))
        echo "$record" >> /kiln-records
        sync
        echo "KILN-NETDISK-RECORD $record" > /dev/console
        sleep 1
    done
) &
while :; do getty -L 115200 ttyS0 vt100; done
"#;

/// Builds `directory/netdisk.raw` (`size_mib` MiB) and returns it.
pub fn build_network_disk_image(directory: &Path, size_mib: u64) -> anyhow::Result<PathBuf> {
    let tree = directory.join("netdisk-tree");
    for sub in ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(tree.join(sub)).with_context(|| format!("creating {}", tree.join(sub).display()))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying busybox (apt-get install busybox-static)")?;
    std::fs::write(tree.join("sbin/init"), INIT)?;
    std::fs::set_permissions(tree.join("sbin/init"), std::fs::Permissions::from_mode(0o755))?;
    // getty and login need these to offer a prompt.
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    let filesystem = directory.join("netdisk-root.ext4");
    let filesystem_mib = size_mib - 2;
    let output = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "kiln-root", "-d"])
        .arg(&tree)
        .arg(&filesystem)
        .arg(format!("{filesystem_mib}M"))
        .stdout(Stdio::null())
        .output()
        .context("running mke2fs (apt-get install e2fsprogs)")?;
    if !output.status.success() {
        bail!("mke2fs could not build {}: {}", filesystem.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let image = directory.join("netdisk.raw");
    let file = std::fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size_mib << 20)?;
    let table = format!("label: dos\nstart={}, size={}, type=83\n", PARTITION_START / 512, (filesystem_mib << 20) / 512);
    crate::disk::partition(&image, &table)?;
    // The filesystem into its partition, sparse where it is empty.
    let bytes = std::fs::read(&filesystem)?;
    for (index, block) in bytes.chunks(64 << 10).enumerate() {
        if block.iter().any(|&byte| byte != 0) {
            file.write_all_at(block, PARTITION_START + (index as u64) * (64 << 10))?;
        }
    }
    file.sync_all()?;
    std::fs::remove_file(&filesystem)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(image)
}
