//! A small BIOS-bootable disk image for deploy tests: an MBR with SYSLINUX's boot code, one
//! FAT partition with SYSLINUX, a kernel and an initrd. Built from files with mtools and the
//! mtools flavour of `syslinux`, so no loop device or mount is needed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?} (scripts/install-deps --lab)"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Writes the partition table `script` (sfdisk's input) to the image file `image`.
pub(crate) fn partition(image: &Path, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("running sfdisk (apt-get install fdisk)")?;
    use std::io::Write as _;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        bail!("sfdisk could not partition {}", image.display());
    }
    Ok(())
}

/// Writes a raw disk image of `size_mib` MiB to `output` that boots `kernel` with `initrd`
/// and the kernel command line `append`.
pub fn build_bootable_disk(output: &Path, size_mib: u64, kernel: &Path, initrd: &Path, append: &str) -> anyhow::Result<()> {
    let file = std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    file.set_len(size_mib << 20)?;
    drop(file);
    partition(output, &format!("label: dos\nstart={SYSLINUX_PARTITION_START_SECTOR}, type=c, bootable\n"))?;
    let partition_kib = ((size_mib << 20) - SYSLINUX_PARTITION_START_SECTOR * 512) / 1024;
    install_syslinux(output, partition_kib, kernel, initrd, append)
}

/// Where [`install_syslinux`] expects its FAT partition: sector 2048, as partitioning tools
/// align the first one.
pub(crate) const SYSLINUX_PARTITION_START_SECTOR: u64 = 2048;

/// Makes the (already partitioned) first partition of `output`, `partition_kib` KiB at
/// [`SYSLINUX_PARTITION_START_SECTOR`], a FAT filesystem that SYSLINUX boots `kernel` and
/// `initrd` from, and writes SYSLINUX's MBR boot code.
pub(crate) fn install_syslinux(output: &Path, partition_kib: u64, kernel: &Path, initrd: &Path, append: &str) -> anyhow::Result<()> {
    run(Command::new("mkfs.vfat")
        .arg(format!("--offset={SYSLINUX_PARTITION_START_SECTOR}"))
        .args(["-n", "KILNTEST"])
        .arg(output)
        .arg(partition_kib.to_string()))?;
    let image = format!("{}@@{}", output.display(), SYSLINUX_PARTITION_START_SECTOR * 512);
    let config = format!(
        "DEFAULT kiln\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL kiln\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {append}\n"
    );
    let directory = tempfile::tempdir()?;
    let config_path = directory.path().join("syslinux.cfg");
    std::fs::write(&config_path, config)?;
    for (source, name) in [(kernel, "vmlinuz"), (initrd, "initrd.img"), (config_path.as_path(), "syslinux.cfg")] {
        run(Command::new("mcopy").arg("-i").arg(&image).arg(source).arg(format!("::{name}")))?;
    }
    run(Command::new("syslinux").arg("--offset").arg((SYSLINUX_PARTITION_START_SECTOR * 512).to_string()).arg("--install").arg(output))?;
    // SYSLINUX's MBR boot code: the first 440 bytes, before the partition table.
    let mbr = std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").context("reading SYSLINUX's mbr.bin (apt-get install syslinux-common)")?;
    let file = std::fs::OpenOptions::new().write(true).open(output)?;
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(&mbr[..mbr.len().min(440)], 0)?;
    file.sync_all()?;
    Ok(())
}
