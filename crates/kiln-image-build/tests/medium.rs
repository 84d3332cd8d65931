//! Boot media boot: a medium Kiln builds (this machine's kernel, an initramfs and a boot
//! archive written by Kiln's own `newc` writer, GRUB's configuration from
//! `kiln_boot::medium_grub_config`) started as a QEMU machine's CD, with no network at all,
//! by SeaBIOS and by OVMF. The booted init prints its kernel command line and the file from
//! the boot archive, then powers off.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_boot::medium::{ArchiveEntry, newc_archive};
use kiln_boot::plan::{KernelBoot, KernelPurpose};
use kiln_image_build::medium::{MediumContents, build_boot_medium};

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
exec >/dev/ttyS0 2>&1
/bin/busybox mount -t proc proc /proc
echo \"medium-test: cmdline $(/bin/busybox cat /proc/cmdline)\"
echo \"medium-test: boot.env $(/bin/busybox cat /etc/kiln/boot.env)\"
/bin/busybox poweroff -f
";

/// What the test needs, or why it cannot run (a failure under `KILN_REQUIRE_LAB=1`).
fn prerequisites() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let missing = ["qemu-system-x86_64", "grub-mkrescue", "xorriso"].into_iter().find(|tool| {
        !Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    let kernel = kiln_image_build::ramdisk::host_kernel().ok().map(|(kernel, _)| kernel);
    let why = match (missing, &kernel, Path::new("/bin/busybox").exists()) {
        (Some(tool), _, _) => format!("{tool} is not installed"),
        (None, None, _) => "no kernel under /boot".to_owned(),
        (None, Some(_), false) => "busybox-static is not installed".to_owned(),
        (None, Some(kernel), true) => return Some((kernel.clone(), "/bin/busybox".into())),
    };
    assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but {why} (scripts/install-deps)");
    eprintln!("skipping: {why} (scripts/install-deps)");
    None
}

/// A QEMU process killed when dropped, so a failing assertion leaves none behind.
struct Machine(Child);

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot_from_cd(medium: &Path, uefi: bool, directory: &Path) -> String {
    let log = directory.join(if uefi { "uefi.log" } else { "bios.log" });
    let mut command = Command::new("qemu-system-x86_64");
    command.args(["-accel", "tcg", "-machine", "q35", "-m", "512", "-nic", "none", "-no-reboot", "-display", "none", "-monitor", "none"]);
    command.arg("-serial").arg(format!("file:{}", log.display()));
    command.arg("-cdrom").arg(medium);
    if uefi {
        let vars = directory.join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        command.args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"]);
        command.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut machine = Machine(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(240);
    while machine.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(machine);
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn a_boot_medium_boots_by_bios_and_uefi_without_a_network() {
    let Some((kernel, busybox)) = prerequisites() else { return };
    let directory = tempfile::tempdir().unwrap();
    let busybox = std::fs::read(busybox).unwrap();
    let initrd = newc_archive(&[
        ArchiveEntry::Directory { path: "bin", mode: 0o755 },
        ArchiveEntry::File { path: "bin/busybox", mode: 0o755, contents: &busybox },
        ArchiveEntry::Directory { path: "dev", mode: 0o755 },
        ArchiveEntry::Directory { path: "proc", mode: 0o755 },
        ArchiveEntry::File { path: "init", mode: 0o755, contents: INIT.as_bytes() },
    ])
    .unwrap();
    let initrd_path = directory.path().join("initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let boot_archive = newc_archive(&[
        ArchiveEntry::Directory { path: "etc", mode: 0o755 },
        ArchiveEntry::Directory { path: "etc/kiln", mode: 0o755 },
        ArchiveEntry::File { path: "etc/kiln/boot.env", mode: 0o600, contents: b"KILN_TEST=from-the-boot-archive" },
    ])
    .unwrap();
    let boot = KernelBoot {
        purpose: KernelPurpose::DeployAgent,
        kernel: None,
        initrd: None,
        command_line: "console=ttyS0 kiln.test=semi;colon$(x)".to_owned(),
    };
    let grub_config = kiln_boot::medium_grub_config(&boot, "medium-test");
    let medium = directory.path().join("boot.iso");
    build_boot_medium(
        MediumContents { kernel: &kernel, initrd: &initrd_path, boot_archive: &boot_archive, grub_config: &grub_config },
        &medium,
    )
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert!(!left.iter().any(|name| name.to_string_lossy().starts_with(".medium-")), "no temporary file left: {left:?}");
    let size = std::fs::metadata(&medium).unwrap().len();
    eprintln!("medium: {} MiB", size >> 20);

    for uefi in [false, true] {
        let console = boot_from_cd(&medium, uefi, directory.path());
        let firmware = if uefi { "OVMF" } else { "SeaBIOS" };
        assert!(
            console.contains("medium-test: cmdline BOOT_IMAGE=/kiln/kernel console=ttyS0 kiln.test=semi;colon$(x)"),
            "{firmware}:\n{console}"
        );
        assert!(console.contains("medium-test: boot.env KILN_TEST=from-the-boot-archive"), "{firmware}:\n{console}");
    }
}

#[test]
fn a_failed_build_leaves_nothing_behind() {
    if prerequisites().is_none() {
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let medium = directory.path().join("boot.iso");
    let error = build_boot_medium(
        MediumContents {
            kernel: &directory.path().join("absent"),
            initrd: &directory.path().join("absent"),
            boot_archive: b"",
            grub_config: "",
        },
        &medium,
    )
    .unwrap_err();
    assert!(error.to_string().contains("copying") && error.to_string().contains("absent"), "{error}");
    assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0, "nothing written");
    // An output directory that does not exist: refused before grub-mkrescue runs, and the
    // working tree goes with the error.
    let kernel = directory.path().join("kernel");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let parent = directory.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    let error = build_boot_medium(
        MediumContents { kernel: &kernel, initrd: &kernel, boot_archive: b"", grub_config: "" },
        &parent.join("missing-directory/boot.iso"),
    )
    .unwrap_err();
    assert!(error.to_string().contains("writing"), "{error}");
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0, "nothing left");
}
