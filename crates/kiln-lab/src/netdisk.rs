//! A small disk image for network-mode boots: an MBR partition table and one ext4 partition
//! (made from a directory with `mke2fs -d`, so no loop device or mount is needed) holding
//! busybox and an init that proves the disk is the node's own and writable: on the first boot
//! it writes a marker with its MAC, syncs and reboots; on the next it reports the marker it
//! finds, calls the server back, offers a login prompt on the serial line and appends a
//! numbered record a second to a file, syncing each before it reports it. And an image for
//! the network-disk benchmark that boots from a local disk as well, and carries fio.

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
    let tree = root_tree(directory, INIT)?;
    let filesystem_mib = size_mib - 2;
    let filesystem = make_ext4(directory, &tree, filesystem_mib)?;
    let image = directory.join("netdisk.raw");
    let file = std::fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size_mib << 20)?;
    let table = format!("label: dos\nstart={}, size={}, type=83\n", PARTITION_START / 512, (filesystem_mib << 20) / 512);
    crate::disk::partition(&image, &table)?;
    write_sparse(&file, &filesystem, PARTITION_START)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(image)
}

/// The init of [`build_benchmark_disk_image`]'s root: no marker and no reboot; with the same
/// image on the machine's local disk as well, it measures both with fio first.
const BENCHMARK_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc 2>/dev/null
interface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
mac=$(cat "/sys/class/net/$interface/address")
echo "KILN-BENCH-ROOT $(grep ' / ' /proc/mounts)"
mkdir -p /mnt/local
if [ -b /dev/vda2 ] && mount /dev/vda2 /mnt/local 2>/dev/null && [ -e /mnt/local/sbin/init ]; then
    for target in network:/ local:/mnt/local; do
        name=${target%%:*}
        directory=${target#*:}
        echo "KILN-BENCH-FIO-START $name"
        for job in seqread:read:1m seqwrite:write:1m randread:randread:4k randwrite:randwrite:4k; do
            label=${job%%:*}
            rest=${job#*:}
            result=$(fio --name="$label" --filename="$directory/fio.data" --size=128m --rw="${rest%%:*}" \
                --bs="${rest#*:}" --direct=1 --ioengine=libaio --iodepth=16 --runtime=10 --time_based \
                --minimal 2>&1 | tail -n 1)
            echo "KILN-BENCH-FIO $name $label $result"
        done
        echo "KILN-BENCH-FIO-END $name"
        rm -f "$directory/fio.data"
    done
    umount /mnt/local
fi
server=$(sed -n 's/.*kiln.server=\([^ ]*\).*/\1/p' /proc/cmdline)
if wget -q -O /dev/null "$server/boot/v1/phone-home?mac=$mac"; then echo "KILN-BENCH-PHONED-HOME $mac"; fi
while :; do getty -L 115200 ttyS0 vt100; done
"#;

/// Where [`build_benchmark_disk_image`]'s root partition starts: after the 32 MiB boot
/// partition at 1 MiB.
const BENCHMARK_ROOT_START: u64 = 33 << 20;

/// Builds `directory/benchmark.raw` (`size_mib` MiB), bootable both ways: from a local disk
/// (SYSLINUX in a FAT first partition boots `kernel` and `initrd` with `append`, the lab's
/// callback system) and in network mode (the second partition, ext4, is a root whose init
/// calls back too, and carries Debian's fio with the libraries it links, so that a machine
/// with the same image on a local disk can compare the two).
pub fn build_benchmark_disk_image(directory: &Path, size_mib: u64, kernel: &Path, initrd: &Path, append: &str) -> anyhow::Result<PathBuf> {
    let tree = root_tree(directory, BENCHMARK_INIT)?;
    copy_program_with_libraries(Path::new("/usr/bin/fio"), &tree).context("copying fio into the image (apt-get install fio)")?;
    let filesystem_mib = size_mib - (BENCHMARK_ROOT_START >> 20) - 1;
    let filesystem = make_ext4(directory, &tree, filesystem_mib)?;
    let image = directory.join("benchmark.raw");
    let file = std::fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size_mib << 20)?;
    let boot_sectors = (BENCHMARK_ROOT_START - PARTITION_START) / 512;
    let table = format!(
        "label: dos\nstart={}, size={boot_sectors}, type=c, bootable\nstart={}, size={}, type=83\n",
        PARTITION_START / 512,
        BENCHMARK_ROOT_START / 512,
        (filesystem_mib << 20) / 512
    );
    crate::disk::partition(&image, &table)?;
    crate::disk::install_syslinux(&image, boot_sectors / 2, kernel, initrd, append)?;
    write_sparse(&file, &filesystem, BENCHMARK_ROOT_START)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(image)
}

/// A root directory with busybox, `init` as `/sbin/init`, and what getty and login need.
fn root_tree(directory: &Path, init: &str) -> anyhow::Result<PathBuf> {
    let tree = directory.join("netdisk-tree");
    for sub in ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt"] {
        std::fs::create_dir_all(tree.join(sub)).with_context(|| format!("creating {}", tree.join(sub).display()))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying busybox (apt-get install busybox-static)")?;
    std::fs::write(tree.join("sbin/init"), init)?;
    std::fs::set_permissions(tree.join("sbin/init"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    Ok(tree)
}

/// `program` and every library `ldd` names for it, at the same paths under `tree`.
fn copy_program_with_libraries(program: &Path, tree: &Path) -> anyhow::Result<()> {
    let output = Command::new("ldd").arg(program).output().context("running ldd")?;
    if !output.status.success() {
        bail!("ldd {}: {}", program.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let listed = String::from_utf8_lossy(&output.stdout);
    let libraries = listed.split_whitespace().filter(|word| word.starts_with('/')).map(PathBuf::from);
    for file in std::iter::once(program.to_owned()).chain(libraries) {
        let target = tree.join(file.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("a file has a parent"))?;
        std::fs::copy(&file, &target).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}

/// An ext4 filesystem image of `size_mib` MiB made from `tree` with `mke2fs -d` (no loop
/// device, no mount).
fn make_ext4(directory: &Path, tree: &Path, size_mib: u64) -> anyhow::Result<PathBuf> {
    let filesystem = directory.join("netdisk-root.ext4");
    let output = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "kiln-root", "-d"])
        .arg(tree)
        .arg(&filesystem)
        .arg(format!("{size_mib}M"))
        .stdout(Stdio::null())
        .output()
        .context("running mke2fs (apt-get install e2fsprogs)")?;
    if !output.status.success() {
        bail!("mke2fs could not build {}: {}", filesystem.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(filesystem)
}

/// Writes the file `filesystem` into `image` at `offset`, sparse where it is empty, and
/// removes it.
fn write_sparse(image: &std::fs::File, filesystem: &Path, offset: u64) -> anyhow::Result<()> {
    let bytes = std::fs::read(filesystem)?;
    for (index, block) in bytes.chunks(64 << 10).enumerate() {
        if block.iter().any(|&byte| byte != 0) {
            image.write_all_at(block, offset + (index as u64) * (64 << 10))?;
        }
    }
    image.sync_all()?;
    std::fs::remove_file(filesystem)?;
    Ok(())
}
