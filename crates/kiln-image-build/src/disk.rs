//! Whole-disk images of a built layer: GPT, an EFI system partition carrying the kernel,
//! initramfs and SYSLINUX for BIOS (through `gptmbr.bin` and the partition's legacy-boot
//! attribute) and UEFI (`\EFI\BOOT\BOOTX64.EFI`; for Secure Boot, Debian's signed shim
//! there and signed GRUB beside it instead), and an ext4 root labelled
//! `cloudimg-rootfs`, as cloud images are. Every filesystem is written straight into the
//! image file at its offset (mkfs.fat, mke2fs -d, mtools, syslinux): no loop device, no mount.
//! The layout and the boot configuration are pure functions of their inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::execute::{BuildError, io, run_tool as run};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// Room for a kernel and a generous initramfs, and FAT32's minimum cluster count.
const ESP_BYTES: u64 = 256 * MIB;
pub const ROOT_LABEL: &str = "cloudimg-rootfs";
const GPT_MBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
const SYSLINUX_EFI: &str = "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi";
const LDLINUX_E64: &str = "/usr/lib/syslinux/modules/efi64/ldlinux.e64";
/// Debian's shim, signed by Microsoft's UEFI CA, and GRUB, signed by Debian (whose key shim
/// carries). This GRUB's built-in prefix is `/EFI/debian` on the partition it came from.
const SHIM_SIGNED: &str = "/usr/lib/shim/shimx64.efi.signed";
const GRUB_SIGNED: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

/// How a disk image boots: the extra kernel arguments, and whether UEFI goes through signed
/// shim and GRUB (Secure Boot) rather than SYSLINUX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBoot<'a> {
    pub kernel_args: &'a str,
    pub secure_boot: bool,
}

/// Where the partitions are, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLayout {
    pub disk_bytes: u64,
    pub esp_start: u64,
    pub esp_bytes: u64,
    pub root_start: u64,
    pub root_bytes: u64,
}

impl DiskLayout {
    /// A layout for a root tree taking `tree_bytes` (allocated): the root filesystem gets a
    /// quarter more plus 256 MiB for metadata and first-boot writes, rounded to MiB.
    pub fn for_tree(tree_bytes: u64) -> DiskLayout {
        let root_bytes = (tree_bytes + tree_bytes / 4 + 256 * MIB).div_ceil(MIB) * MIB;
        let esp_start = MIB;
        let root_start = esp_start + ESP_BYTES;
        // The backup GPT takes the last 33 sectors; a MiB keeps the end aligned.
        let disk_bytes = root_start + root_bytes + MIB;
        DiskLayout { disk_bytes, esp_start, esp_bytes: ESP_BYTES, root_start, root_bytes }
    }

    /// The partition table, as `sfdisk` reads it.
    pub fn sfdisk_script(&self) -> String {
        format!(
            "label: gpt\nunit: sectors\nfirst-lba: 2048\n\
             start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\", attrs=\"LegacyBIOSBootable\"\n\
             start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"{ROOT_LABEL}\"\n",
            self.esp_start / SECTOR,
            self.esp_bytes / SECTOR,
            self.root_start / SECTOR,
            self.root_bytes / SECTOR,
        )
    }
}

/// SYSLINUX's configuration: boot the kernel at once with the root found by its label.
/// The root is mounted read-write from the start, as the image carries no fstab of its own.
pub fn syslinux_config(kernel_args: &str) -> String {
    let extra = if kernel_args.trim().is_empty() { String::new() } else { format!(" {}", kernel_args.trim()) };
    format!(
        "DEFAULT kiln\nPROMPT 0\nTIMEOUT 0\nLABEL kiln\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  \
         APPEND root=LABEL={ROOT_LABEL} rw console=tty0 console=ttyS0,115200{extra}\n"
    )
}

/// GRUB's configuration on a Secure Boot disk: the same kernel, initramfs and arguments as
/// SYSLINUX's, each argument one single-quoted word (nothing in it is GRUB syntax then).
pub fn grub_config(kernel_args: &str) -> String {
    let mut arguments = format!("root=LABEL={ROOT_LABEL} rw console=tty0 console=ttyS0,115200 {}", kernel_args.trim());
    arguments = arguments.split_whitespace().map(|word| format!("'{}'", word.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ");
    format!("set timeout=0\nlinux /vmlinuz {arguments}\ninitrd /initrd.img\nboot\n")
}

/// Bytes a tree takes, counted as a filesystem allocates them (4 KiB blocks, an inode's
/// worth per entry); symbolic links are not followed.
pub fn tree_bytes(root: &Path) -> Result<u64, BuildError> {
    let mut total = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).map_err(io("reading", &directory))? {
            let entry = entry.map_err(io("reading", &directory))?;
            let metadata = entry.metadata().map_err(io("reading", &entry.path()))?;
            total += metadata.len().div_ceil(4096) * 4096 + 256;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Makes `<name>.raw` (sparse) in `output_dir` from a built layer.
pub fn make_disk(
    layer_root: &Path,
    name: &str,
    output_dir: &Path,
    boot: &DiskBoot<'_>,
    log: &mut dyn Write,
) -> Result<PathBuf, BuildError> {
    for tool_file in [GPT_MBR, SYSLINUX_EFI, LDLINUX_E64] {
        if !Path::new(tool_file).exists() {
            return Err(BuildError::ToolFailed {
                tool: "syslinux",
                message: format!("{tool_file} is missing (apt-get install syslinux syslinux-efi syslinux-common)"),
            });
        }
    }
    for signed_file in [SHIM_SIGNED, GRUB_SIGNED].into_iter().filter(|_| boot.secure_boot) {
        if !Path::new(signed_file).exists() {
            return Err(BuildError::ToolFailed {
                tool: "secure boot",
                message: format!("{signed_file} is missing (apt-get install shim-signed grub-efi-amd64-signed)"),
            });
        }
    }
    let Some((kernel, Some(initrd))) = crate::execute::newest_kernel(layer_root) else { return Err(BuildError::DiskNeedsKernel) };
    let layout = DiskLayout::for_tree(tree_bytes(layer_root)?);
    std::fs::create_dir_all(output_dir).map_err(io("creating", output_dir))?;
    let raw = output_dir.join(format!("{name}.raw"));
    let partial = output_dir.join(format!("{name}.raw.partial"));
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        let file = std::fs::File::create(&partial).map_err(io("creating", &partial))?;
        file.set_len(layout.disk_bytes).map_err(io("sizing", &partial))?;
        drop(file);
        let _ = writeln!(
            log,
            "kiln: partitioning {} (GPT: EFI system {} MiB, root {} MiB)",
            raw.display(),
            layout.esp_bytes / MIB,
            layout.root_bytes / MIB
        );
        let mut sfdisk = Command::new("sfdisk");
        sfdisk.args(["--quiet", "--no-reread", "--no-tell-kernel"]).arg(&partial);
        run_with_input("sfdisk", &mut sfdisk, layout.sfdisk_script().as_bytes(), log)?;
        // BIOS: the GPT-aware MBR boots the partition marked legacy-bootable, the ESP.
        let mbr = std::fs::read(GPT_MBR).map_err(io("reading", Path::new(GPT_MBR)))?;
        write_at(&partial, 0, &mbr[..mbr.len().min(440)])?;
        let mut fat = Command::new("mkfs.fat");
        fat.args(["-F", "32", "-s", "1", "-n", "ESP"])
            .arg(format!("--offset={}", layout.esp_start / SECTOR))
            .arg(&partial)
            .arg((layout.esp_bytes / 1024).to_string());
        run("mkfs.fat", &mut fat, log)?;
        let _ = writeln!(log, "kiln: writing the root filesystem ({ROOT_LABEL})");
        let mut ext4 = Command::new("mke2fs");
        ext4.args(["-t", "ext4", "-b", "4096", "-q", "-F", "-L", ROOT_LABEL, "-d"])
            .arg(layer_root)
            .arg("-E")
            .arg(format!("offset={},nodiscard", layout.root_start))
            .arg(&partial)
            .arg(format!("{}k", layout.root_bytes / 1024));
        run("mke2fs", &mut ext4, log)?;
        install_esp_hook(&partial, layout.root_start, output_dir, log)?;
        let _ = writeln!(log, "kiln: installing SYSLINUX for BIOS and UEFI");
        let mut syslinux = Command::new("syslinux");
        syslinux.arg("--offset").arg(layout.esp_start.to_string()).arg("--install").arg(&partial);
        run("syslinux", &mut syslinux, log)?;
        let esp = format!("{}@@{}", partial.display(), layout.esp_start);
        let config = output_dir.join("syslinux.cfg");
        std::fs::write(&config, syslinux_config(boot.kernel_args)).map_err(io("writing", &config))?;
        run("mmd", Command::new("mmd").args(["-i", &esp, "::/EFI", "::/EFI/BOOT"]), log)?;
        let copies: [(&Path, &str); 6] = [
            (&kernel, "::/vmlinuz"),
            (&initrd, "::/initrd.img"),
            (&config, "::/syslinux.cfg"),
            (&config, "::/EFI/BOOT/syslinux.cfg"),
            (Path::new(SYSLINUX_EFI), "::/EFI/BOOT/BOOTX64.EFI"),
            (Path::new(LDLINUX_E64), "::/EFI/BOOT/ldlinux.e64"),
        ];
        for (source, target) in copies {
            run("mcopy", Command::new("mcopy").args(["-o", "-i", &esp]).arg(source).arg(target), log)?;
        }
        let _ = std::fs::remove_file(&config);
        if boot.secure_boot {
            install_signed_uefi_boot(&esp, output_dir, boot.kernel_args, log)?;
        }
        Ok(())
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &raw).map_err(io("renaming", &partial))?;
    Ok(raw)
}

/// Replaces SYSLINUX's UEFI loader with shim (at the removable-media path firmware boots
/// without a boot entry), signed GRUB beside it where shim looks, and GRUB's configuration
/// where that GRUB's prefix points. BIOS keeps SYSLINUX: there is no Secure Boot there.
fn install_signed_uefi_boot(esp: &str, scratch: &Path, kernel_args: &str, log: &mut dyn Write) -> Result<(), BuildError> {
    let _ = writeln!(log, "kiln: installing signed shim and GRUB for UEFI Secure Boot");
    let config = scratch.join("grub.cfg");
    std::fs::write(&config, grub_config(kernel_args)).map_err(io("writing", &config))?;
    let installed = (|| {
        run("mmd", Command::new("mmd").args(["-i", esp, "::/EFI/debian"]), log)?;
        let copies: [(&Path, &str); 3] = [
            (Path::new(SHIM_SIGNED), "::/EFI/BOOT/BOOTX64.EFI"),
            (Path::new(GRUB_SIGNED), "::/EFI/BOOT/grubx64.efi"),
            (&config, "::/EFI/debian/grub.cfg"),
        ];
        for (source, target) in copies {
            run("mcopy", Command::new("mcopy").args(["-o", "-i", esp]).arg(source).arg(target), log)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&config);
    installed
}

/// The script that keeps the ESP's kernel and initramfs the newest in `/boot`.
pub const ESP_HOOK: &str = include_str!("esp-hook.sh");

/// Where the root filesystem holds [`ESP_HOOK`]: the kernel packages' hook directory and
/// initramfs-tools'.
pub const ESP_HOOK_PATHS: [&str; 2] = ["/etc/kernel/postinst.d/zz-kiln-esp", "/etc/initramfs/post-update.d/zz-kiln-esp"];

/// Writes [`ESP_HOOK`] into the ext4 root at `root_start` of `image`, executable, with
/// `debugfs` (the layer itself stays as built: the hook belongs to disk images only).
///
/// Why: the kernel and initramfs SYSLINUX boots are copies on the ESP; without the hook a
/// kernel upgrade inside the deployed system would leave the ESP booting the old kernel,
/// whose modules may be gone.
fn install_esp_hook(image: &Path, root_start: u64, scratch: &Path, log: &mut dyn Write) -> Result<(), BuildError> {
    let _ = writeln!(log, "kiln: installing the ESP kernel hook ({})", ESP_HOOK_PATHS.join(", "));
    let script = scratch.join("zz-kiln-esp");
    std::fs::write(&script, ESP_HOOK).map_err(io("writing", &script))?;
    let filesystem = format!("{}?offset={root_start}", image.display());
    // debugfs goes on after a failed request (a directory that exists already), and exits 0
    // whatever happened: the result is checked below.
    let mut requests = String::new();
    for path in ESP_HOOK_PATHS {
        let directory = Path::new(path).parent().expect("the paths have directories");
        for ancestor in directory.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
            requests.push_str(&format!("mkdir {}\n", ancestor.display()));
        }
        requests.push_str(&format!("write {} {path}\nsif {path} mode 0100755\nsif {path} uid 0\nsif {path} gid 0\n", script.display()));
    }
    let written = run_with_input("debugfs", Command::new("debugfs").args(["-w", "-f", "-"]).arg(&filesystem), requests.as_bytes(), log);
    let _ = std::fs::remove_file(&script);
    written?;
    for path in ESP_HOOK_PATHS {
        let output = Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(&filesystem)
            .output()
            .map_err(|error| BuildError::Io { operation: "running", path: PathBuf::from("debugfs"), error })?;
        let described = String::from_utf8_lossy(&output.stdout);
        if !described.contains("Type: regular") || !described.contains("Mode:  0755") {
            return Err(BuildError::ToolFailed {
                tool: "debugfs",
                message: format!(
                    "{path} is not an executable file in the root filesystem: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

/// Converts a raw disk image to `<same name>.qcow2` beside it.
pub fn convert_to_qcow2(raw: &Path, log: &mut dyn Write) -> Result<PathBuf, BuildError> {
    let qcow2 = raw.with_extension("qcow2");
    let partial = raw.with_extension("qcow2.partial");
    let converted = run("qemu-img", Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(&partial), log);
    if let Err(error) = converted {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &qcow2).map_err(io("renaming", &partial))?;
    Ok(qcow2)
}

fn run_with_input(tool: &'static str, command: &mut Command, input: &[u8], log: &mut dyn Write) -> Result<(), BuildError> {
    let spawn_error = |error| BuildError::Io { operation: "running", path: PathBuf::from(tool), error };
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn_error)?;
    child.stdin.take().expect("piped").write_all(input).map_err(spawn_error)?;
    let output = child.wait_with_output().map_err(spawn_error)?;
    let _ = log.write_all(&output.stderr);
    if !output.status.success() {
        return Err(BuildError::ToolFailed { tool, message: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    Ok(())
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), BuildError> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io("opening", path))?;
    file.write_all_at(bytes, offset).map_err(io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_hook_lands_executable_in_the_root_filesystem_at_its_offset() {
        let directory = tempfile::tempdir().unwrap();
        let tree = directory.path().join("tree");
        // One hook directory there already (a kernel's package made it), one not.
        std::fs::create_dir_all(tree.join("etc/kernel/postinst.d")).unwrap();
        std::fs::write(tree.join("etc/kernel/postinst.d/dracut"), "#!/bin/sh\n").unwrap();
        let image = directory.path().join("disk.raw");
        std::fs::File::create(&image).unwrap().set_len(40 * MIB).unwrap();
        let offset = 8 * MIB;
        let mut ext4 = Command::new("mke2fs");
        ext4.args(["-t", "ext4", "-q", "-F", "-d"]).arg(&tree).arg("-E").arg(format!("offset={offset}")).arg(&image).arg("16384k");
        run("mke2fs", &mut ext4, &mut std::io::sink()).unwrap();
        install_esp_hook(&image, offset, directory.path(), &mut std::io::sink()).unwrap();
        for path in ESP_HOOK_PATHS {
            let output = Command::new("debugfs")
                .args(["-R", &format!("cat {path}")])
                .arg(format!("{}?offset={offset}", image.display()))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&output.stdout), ESP_HOOK, "{path}");
        }
        let listing = Command::new("debugfs")
            .args(["-R", "ls -l /etc/kernel/postinst.d"])
            .arg(format!("{}?offset={offset}", image.display()))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&listing.stdout).contains("dracut"), "what was there stays");
        assert!(!directory.path().join("zz-kiln-esp").exists(), "no scratch file left");
        // No filesystem at that offset: an error, not a disk image without its hook.
        let error = install_esp_hook(&image, 0, directory.path(), &mut std::io::sink()).unwrap_err();
        assert!(error.to_string().contains("debugfs"), "{error}");
    }

    #[test]
    fn the_layout_and_boot_configuration() {
        let layout = DiskLayout::for_tree(300 * MIB);
        assert_eq!(layout.root_bytes % MIB, 0);
        assert!(layout.root_bytes >= 300 * MIB + 75 * MIB + 256 * MIB);
        expect_test::expect![[r#"
            label: gpt
            unit: sectors
            first-lba: 2048
            start=2048, size=524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System", attrs="LegacyBIOSBootable"
            start=526336, size=1292288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="cloudimg-rootfs"
        "#]]
        .assert_eq(&layout.sfdisk_script());
        expect_test::expect![[r#"
            DEFAULT kiln
            PROMPT 0
            TIMEOUT 0
            LABEL kiln
              LINUX /vmlinuz
              INITRD /initrd.img
              APPEND root=LABEL=cloudimg-rootfs rw console=tty0 console=ttyS0,115200 init=/sbin/kiln-init
        "#]]
        .assert_eq(&syslinux_config(" init=/sbin/kiln-init "));
        expect_test::expect![[r#"
            set timeout=0
            linux /vmlinuz 'root=LABEL=cloudimg-rootfs' 'rw' 'console=tty0' 'console=ttyS0,115200' 'init=/sbin/kiln-init' 'ds=nocloud;s=/x/' 'it'\''s'
            initrd /initrd.img
            boot
        "#]]
        .assert_eq(&grub_config(" init=/sbin/kiln-init ds=nocloud;s=/x/ it's"));
    }
}
