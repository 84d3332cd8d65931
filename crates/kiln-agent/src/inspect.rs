//! What the machine is, read from /proc and /sys: CPUs, memory, disks, NICs, DMI.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_types::provision::{DiskInfo, HardwareInventory, NicInfo};

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_owned()).filter(|text| !text.is_empty())
}

/// The whole inventory of this machine, under `root` (`/` on a node; a fixture in tests).
pub(crate) fn inventory(root: &Path) -> HardwareInventory {
    let cpuinfo = read(root.join("proc/cpuinfo")).unwrap_or_default();
    let cpu_count = cpuinfo.lines().filter(|line| line.starts_with("processor")).count() as u32;
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    let memory_bytes = read(root.join("proc/meminfo"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    let mut dmi = BTreeMap::new();
    for key in ["sys_vendor", "product_name", "product_serial", "product_uuid", "board_vendor", "board_name", "bios_vendor", "bios_version"]
    {
        if let Some(value) = read(root.join("sys/class/dmi/id").join(key)) {
            dmi.insert(key.to_owned(), value);
        }
    }
    HardwareInventory {
        cpu_count: cpu_count.max(1),
        cpu_model,
        cpu_arch: std::env::consts::ARCH.to_owned(),
        memory_bytes,
        disks: disks(root),
        interfaces: interfaces(root),
        dmi,
    }
}

/// Whole disks: not partitions, loop, RAM or optical devices.
pub(crate) fn disks(root: &Path) -> Vec<DiskInfo> {
    let mut disks = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("sys/block")) else { return disks };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "sr", "zram", "dm-", "md", "fd"].iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let base = root.join("sys/block").join(&name);
        let sectors: u64 = read(base.join("size")).and_then(|s| s.parse().ok()).unwrap_or(0);
        disks.push(DiskInfo {
            size_bytes: sectors * 512,
            model: read(base.join("device/model")),
            serial: read(base.join("device/serial")).or_else(|| read(base.join("serial"))),
            rotational: read(base.join("queue/rotational")).as_deref() == Some("1"),
            removable: read(base.join("removable")).as_deref() == Some("1"),
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn interfaces(root: &Path) -> Vec<NicInfo> {
    let mut nics = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/net")) else { return nics };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = root.join("sys/class/net").join(&name);
        // Physical NICs have a device; lo, bridges and the like do not.
        if !base.join("device").exists() {
            continue;
        }
        nics.push(NicInfo {
            mac: read(base.join("address")).unwrap_or_default(),
            speed_mbps: read(base.join("speed")).and_then(|s| s.parse::<i64>().ok()).filter(|s| *s > 0).map(|s| s as u32),
            carrier: read(base.join("carrier")).as_deref() == Some("1"),
            name,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_machine_from_its_proc_and_sys() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n");
        write("proc/meminfo", "MemTotal:        2048000 kB\nMemFree: 1 kB\n");
        write("sys/block/vda/size", "8388608\n");
        write("sys/block/vda/serial", "KILN-DISK-1\n");
        write("sys/block/vda/queue/rotational", "0\n");
        write("sys/block/vda/removable", "0\n");
        write("sys/block/loop0/size", "100\n");
        write("sys/class/net/eth0/address", "52:54:00:be:ef:01\n");
        write("sys/class/net/eth0/carrier", "1\n");
        write("sys/class/net/eth0/device/vendor", "0x1af4\n");
        write("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write("sys/class/dmi/id/sys_vendor", "QEMU\n");
        let inventory = inventory(root.path());
        assert_eq!(inventory.cpu_count, 2);
        assert_eq!(inventory.cpu_model.as_deref(), Some("QEMU Virtual CPU"));
        assert_eq!(inventory.memory_bytes, 2048000 * 1024);
        assert_eq!(inventory.disks.len(), 1);
        assert_eq!(inventory.disks[0].size_bytes, 4 << 30);
        assert_eq!(inventory.disks[0].serial.as_deref(), Some("KILN-DISK-1"));
        assert_eq!(inventory.interfaces.len(), 1);
        assert_eq!(inventory.interfaces[0].mac, "52:54:00:be:ef:01");
        assert_eq!(inventory.dmi.get("sys_vendor").map(String::as_str), Some("QEMU"));
    }
}
