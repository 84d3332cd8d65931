//! The deploy ramdisk (diskimage-builder's `ramdisk-image-create`, for Kiln): the host's
//! kernel, and an initramfs holding busybox, the kernel modules a node needs to reach its
//! disks and the network, and `kiln-agent` with the shared libraries it links.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What goes into a ramdisk.
#[derive(Debug, Clone)]
pub struct RamdiskSpec {
    pub kernel: PathBuf,
    /// `/lib/modules/<version>` of that kernel.
    pub modules: PathBuf,
    pub agent: PathBuf,
    pub busybox: PathBuf,
    /// Extra modules to load, beyond [`DEFAULT_MODULES`].
    pub extra_modules: Vec<String>,
}

/// Network and storage drivers of common servers and of QEMU, loaded in this order when
/// present (built-in ones need nothing).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "r8169",
    "mlx4_en",
    "mlx5_core",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    // Live boots: the root image is a SquashFS file on a loop device under a RAM overlay.
    "loop",
    "squashfs",
    "overlay",
    // Static network configurations on a tagged VLAN (virtual-media boots).
    "8021q",
    // Network-mode boots: the root is a filesystem on a network block device. The
    // filesystems check their metadata with CRC32C, which they ask the crypto API for at
    // mount time: loaded first, since the ramdisk has no modprobe to find it then.
    "nbd",
    "crc32c_generic",
    "crc32c-intel",
    "libcrc32c",
    "ext4",
    "xfs",
];

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error("no kernel under /boot (install linux-image-amd64)")]
    NoKernel,
    #[error("{path} is missing: {why}")]
    Missing { path: PathBuf, why: &'static str },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Tool { command: String, message: String },
}

/// The newest kernel under /boot and its module directory.
pub fn host_kernel() -> Result<(PathBuf, PathBuf), RamdiskError> {
    let read = |source| RamdiskError::Read { path: "/boot".into(), source };
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    let kernel = kernels.pop().ok_or(RamdiskError::NoKernel)?;
    let version = kernel.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")).unwrap_or_default().to_owned();
    let modules = PathBuf::from("/lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        return Err(RamdiskError::Missing { path: modules.join("modules.dep"), why: "the kernel's modules are not installed" });
    }
    Ok((kernel, modules))
}

/// Module files (relative to `modules`) to load for `wanted`, dependencies first, as
/// `modules.dep` orders them. Names not found are built in or absent: nothing to load.
pub fn modules_with_dependencies(modules: &Path, wanted: &[&str]) -> Result<Vec<String>, RamdiskError> {
    let dep_path = modules.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(|source| RamdiskError::Read { path: dep_path, source })?;
    let table: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| (module.to_owned(), deps.split_whitespace().map(str::to_owned).collect()))
        .collect();
    fn visit(module: &str, table: &[(String, Vec<String>)], ordered: &mut Vec<String>) {
        if ordered.iter().any(|m| m == module) {
            return;
        }
        if let Some((_, deps)) = table.iter().find(|(m, _)| m == module) {
            for dep in deps {
                visit(dep, table, ordered);
            }
        }
        ordered.push(module.to_owned());
    }
    let mut ordered = Vec::new();
    for name in wanted {
        let module = table
            .iter()
            .find(|(path, _)| Path::new(path).file_name().and_then(|n| n.to_str()).is_some_and(|n| n.split('.').next() == Some(name)));
        if let Some((module, _)) = module {
            visit(module, &table, &mut ordered);
        }
    }
    Ok(ordered)
}

/// The shared libraries `binary` needs (and the dynamic loader), as `ldd` lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, RamdiskError> {
    let output = Command::new("ldd").arg(binary).output().map_err(|source| RamdiskError::Read { path: binary.to_owned(), source })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

const INIT: &str = r#"#!/bin/busybox sh
# Kiln deploy ramdisk: bring up the network, then run the agent.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The kernel says so itself, but under `quiet`: repeat it where the console shows it.
dmesg | grep -q 'Secure boot enabled' && echo "kiln-ramdisk: Secure boot enabled"
echo "kiln-ramdisk: loading drivers"
for module in $(cat /etc/modules.order); do insmod "/lib/modules/$module" 2>/dev/null; done
ip link set lo up
for attempt in $(seq 1 20); do ls /sys/class/net | grep -qv '^lo$' && break; sleep 0.5; done
fail() { echo "kiln-ramdisk: $1; powering off in 10 seconds"; sleep 10; poweroff -f; }
# A static address on the command line (a virtual-media boot, with no DHCP) is set as given;
# otherwise every wired interface asks for a lease, and the first to get one carries the
# agent's traffic.
/bin/kiln-agent network-up
case $? in
0) ;;
3)
    for path in /sys/class/net/*; do
        interface=${path##*/}
        [ "$interface" = lo ] && continue
        ip link set "$interface" up
        if udhcpc -i "$interface" -s /etc/udhcpc.script -q -n -t 10 -T 2; then
            echo "kiln-ramdisk: $interface is up"
            break
        fi
    done
    ;;
*) fail "could not set the static network configuration" ;;
esac
nbd=$(sed -n 's/.*kiln\.nbd=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$nbd" ]; then
    # Network mode: the node's own copy-on-write disk over NBD; the root is whichever of its
    # partitions holds an init, booted in place (writes go to the node's clone).
    echo "kiln-ramdisk: attaching the network disk at $nbd"
    /bin/kiln-agent nbd-root || fail "could not attach the network disk at $nbd"
    mkdir -p /newroot
    root=""
    for device in /dev/nbd0p* /dev/nbd0; do
        [ -b "$device" ] || continue
        mount "$device" /newroot 2>/dev/null || continue
        if [ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ]; then root=$device; break; fi
        umount /newroot
    done
    [ -n "$root" ] || fail "no partition of the network disk holds /sbin/init"
    for fs in proc sys dev; do mkdir -p "/newroot/$fs"; mount --move "/$fs" "/newroot/$fs"; done
    echo "kiln-ramdisk: switching to the root on $root"
    exec switch_root /newroot /sbin/init
fi
live=$(sed -n 's/.*kiln\.live=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$live" ]; then
    # Kiln's small live init: the root image into RAM, a RAM overlay on top, and its init.
    sha=$(sed -n 's/.*kiln\.live\.sha256=\([^ ]*\).*/\1/p' /proc/cmdline)
    mkdir -p /live /newroot
    mount -t tmpfs -o mode=0755 live /live
    mkdir -p /live/image /live/lower /live/upper /live/work
    echo "kiln-ramdisk: fetching the live root $live"
    wget -q -O /live/image/root.squashfs "$live" || fail "could not fetch $live"
    if [ -n "$sha" ] && ! echo "$sha  /live/image/root.squashfs" | sha256sum -c - >/dev/null; then
        fail "the live root's SHA-256 is not $sha"
    fi
    mount -t squashfs -o loop,ro /live/image/root.squashfs /live/lower || fail "could not mount the live root"
    mount -t overlay overlay -o lowerdir=/live/lower,upperdir=/live/upper,workdir=/live/work /newroot ||
        fail "could not mount the RAM overlay"
    [ -x /newroot/sbin/init ] || fail "the live root has no /sbin/init"
    for fs in proc sys dev; do mkdir -p "/newroot/$fs"; mount --move "/$fs" "/newroot/$fs"; done
    echo "kiln-ramdisk: switching to the live root"
    exec switch_root /newroot /sbin/init
fi
echo "kiln-ramdisk: starting kiln-agent"
/bin/kiln-agent
echo "kiln-ramdisk: kiln-agent exited ($?); powering off in 10 seconds"
sleep 10
poweroff -f
"#;

/// The script busybox's `udhcpc` runs on a lease: configure the address and route, and say
/// so on the console under `tag` (tests read the line).
pub fn udhcpc_script(tag: &str) -> String {
    format!(
        r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${{mask:-24}}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${{router%% *}}" dev "$interface"
    echo "{tag}: lease $ip on $interface from ${{serverid:-?}} hostname ${{hostname:-none}}"
    ;;
esac
exit 0
"#
    )
}

/// Assembles the initramfs (gzip-compressed newc cpio) into `initrd_out` and copies the
/// kernel to `kernel_out`.
pub fn build_ramdisk(spec: &RamdiskSpec, kernel_out: &Path, initrd_out: &Path) -> Result<(), RamdiskError> {
    for (path, why) in [
        (&spec.kernel, "the kernel to boot"),
        (&spec.agent, "build it with `cargo build --release -p kiln-agent`"),
        (&spec.busybox, "install busybox-static"),
    ] {
        if !path.exists() {
            return Err(RamdiskError::Missing { path: path.clone(), why });
        }
    }
    let work = tempfile::tempdir().map_err(|source| RamdiskError::Write { path: std::env::temp_dir(), source })?;
    let root = work.path();
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| RamdiskError::Write { path, source }
    };
    for directory in ["bin", "sbin", "proc", "sys", "dev", "etc", "lib/modules", "tmp", "run"] {
        std::fs::create_dir_all(root.join(directory)).map_err(write_error(&root.join(directory)))?;
    }
    let copy = |from: &Path, to: &Path| -> Result<(), RamdiskError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        std::fs::copy(from, to).map(|_| ()).map_err(|source| RamdiskError::Read { path: from.to_owned(), source })
    };
    copy(&spec.busybox, &root.join("bin/busybox"))?;
    copy(&spec.agent, &root.join("bin/kiln-agent"))?;
    // Debug information is most of a Rust binary and of no use in a ramdisk; without
    // `strip` (binutils) the agent goes in as it is.
    let _ = Command::new("strip").arg("--strip-debug").arg(root.join("bin/kiln-agent")).stderr(Stdio::null()).status();
    for library in shared_libraries(&spec.agent)? {
        copy(&library, &root.join(library.strip_prefix("/").unwrap_or(&library)))?;
    }
    let mut wanted: Vec<&str> = DEFAULT_MODULES.to_vec();
    wanted.extend(spec.extra_modules.iter().map(String::as_str));
    let order = modules_with_dependencies(&spec.modules, &wanted)?;
    let mut names = Vec::new();
    for module in &order {
        let name = Path::new(module).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        copy(&spec.modules.join(module), &root.join("lib/modules").join(&name))?;
        names.push(name);
    }
    std::fs::write(root.join("etc/modules.order"), names.join("\n")).map_err(write_error(&root.join("etc/modules.order")))?;
    for (name, content) in [("init", INIT.to_owned()), ("etc/udhcpc.script", udhcpc_script("kiln-ramdisk"))] {
        let path = root.join(name);
        std::fs::write(&path, content).map_err(write_error(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(write_error(&path))?;
    }
    // The archive is written from inside the tree: the output path must not be relative.
    let initrd_out = &std::path::absolute(initrd_out).map_err(write_error(initrd_out))?;
    let temporary = initrd_out.with_extension("partial");
    let command = format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -6 > '{}'", root.display(), temporary.display());
    let output = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RamdiskError::Write { path: temporary.clone(), source })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&temporary);
        return Err(RamdiskError::Tool {
            command: "cpio | gzip".into(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&temporary, initrd_out).map_err(write_error(initrd_out))?;
    copy(&spec.kernel, kernel_out)?;
    Ok(())
}
