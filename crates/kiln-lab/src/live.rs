//! A small SquashFS root for live (diskless) boots: busybox and an init that reports where its
//! root is mounted from, checks that it can write, calls the server back and then powers off
//! or keeps running.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Builds the tree under `directory` and packs it into `directory/live-root.squashfs` (zstd),
/// which is returned. With `stay`, the booted system keeps running after its callback.
pub fn build_live_root(directory: &Path, stay: bool) -> anyhow::Result<PathBuf> {
    let tree = directory.join("live-tree");
    for sub in ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(tree.join(sub)).with_context(|| format!("creating {}", tree.join(sub).display()))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying busybox (apt-get install busybox-static)")?;
    let end = if stay { "echo KILN-LIVE-RUNNING\nwhile :; do sleep 3600; done\n" } else { "sleep 2\npoweroff -f\n" };
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         server=$(sed -n 's/.*kiln.server=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
         mac=$(cat /sys/class/net/eth0/address)\n\
         echo \"KILN-LIVE-ROOT $(grep ' / ' /proc/mounts)\"\n\
         touch /written-in-ram && echo KILN-LIVE-WRITABLE\n\
         if wget -q -O /dev/null \"$server/boot/v1/phone-home?mac=$mac\"; then echo \"KILN-LIVE-PHONED-HOME $mac\"; fi\n{end}"
    );
    std::fs::write(tree.join("sbin/init"), init)?;
    std::fs::set_permissions(tree.join("sbin/init"), std::fs::Permissions::from_mode(0o755))?;
    let image = directory.join("live-root.squashfs");
    let status = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-comp", "zstd", "-noappend", "-quiet", "-all-root"])
        .stdout(Stdio::null())
        .status()
        .context("running mksquashfs (apt-get install squashfs-tools)")?;
    if !status.success() {
        bail!("mksquashfs could not pack {}", tree.display());
    }
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(image)
}
