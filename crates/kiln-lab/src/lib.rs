//! The test lab: a network namespace with a bridge, Kiln's server (DHCP, TFTP, HTTP) bound
//! inside it, and QEMU machines on taps that PXE boot through it.
//!
//! Everything the lab makes (the namespace and all its links, the processes, the temporary
//! files) is removed when the [`Lab`] is dropped, also when a test fails. The lab talks only
//! inside its own namespace.

mod disk;
mod initrd;
mod live;
mod netdisk;
pub mod standing;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use disk::build_bootable_disk;
pub use initrd::{build_callback_initrd, host_kernel};
pub use live::build_live_root;
pub use netdisk::{build_benchmark_disk_image, build_network_disk_image};

/// The lab network: 10.77.0.0/24 inside the namespace, the server at .1.
pub const SERVER_ADDRESS: &str = "10.77.0.1";
pub const SUBNET: &str = "10.77.0.0/24";
pub const BRIDGE: &str = "kbr0";
pub const API_PORT: u16 = 8080;
/// The boot listener: boot scripts, files (sent with sendfile) and cloud-init.
pub const BOOT_PORT: u16 = 8081;
/// The network-disk gateway's port (NBD's registered port).
pub const NETDISK_PORT: u16 = 10809;

/// Whether this machine can run the lab: root, `ip`, QEMU and Debian's iPXE.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Err("the lab needs root (network namespaces, taps)".into());
    }
    for tool in ["ip", "qemu-system-x86_64", "cpio"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err(format!("{tool} is not installed (scripts/install-deps --lab)"));
        }
    }
    for file in ["/usr/lib/ipxe/undionly.kpxe", "/bin/busybox"] {
        if !Path::new(file).exists() {
            return Err(format!("{file} is missing (scripts/install-deps --lab)"));
        }
    }
    host_kernel().map(|_| ()).map_err(|error| error.to_string())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Where a lab keeps its files: a temporary directory removed with the lab (tests), or a
/// directory of the user's that outlives it (`kiln lab up`).
pub enum LabDirectory {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl LabDirectory {
    pub fn path(&self) -> &Path {
        match self {
            LabDirectory::Temporary(directory) => directory.path(),
            LabDirectory::Kept(path) => path,
        }
    }
}

/// A private network segment with Kiln's server in it.
pub struct Lab {
    pub namespace: String,
    pub directory: LabDirectory,
    /// Whether processes are started in process groups of their own, out of reach of the
    /// terminal's Ctrl-C, so that they outlive the command that started them.
    detached: bool,
    /// Set once the lab is handed over to a [`standing::LabRecord`]: dropping it then
    /// leaves everything running.
    kept: bool,
    server: Option<Child>,
    /// The site's own DHCP server (dnsmasq) in a namespace of its own, for proxy mode.
    site: Option<(String, Child)>,
    machines: Vec<Machine>,
    taps: usize,
    /// Whether the server's API listener speaks HTTPS (with Kiln's own CA).
    tls: bool,
}

/// A QEMU machine in the lab; killed when dropped.
pub struct Machine {
    pub mac: String,
    pub console: PathBuf,
    /// The QMP socket of a machine started behind the lab driver ("its BMC").
    pub qmp: Option<PathBuf>,
    /// Its virtual disk, if it has one.
    pub disk: Option<PathBuf>,
    child: Child,
    kept: bool,
}

impl Machine {
    /// Waits until the serial console shows `needle`, or fails with the console's tail.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = std::fs::read_to_string(&self.console).unwrap_or_default();
            if console.contains(needle) {
                return Ok(console);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the machine {} stopped ({status}) before printing {needle:?}; console:\n{}", self.mac, tail(&console));
            }
            if Instant::now() > deadline {
                bail!("the machine {} did not print {needle:?} within {timeout:?}; console:\n{}", self.mac, tail(&console));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which firmware a machine boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM.
    Bios,
    /// OVMF, whose own PXE client loads iPXE by TFTP.
    Uefi,
    /// OVMF with its PXE boot options turned off (its fw_cfg knobs), so that it boots by
    /// UEFI HTTP boot, as a machine on a network without TFTP does.
    UefiHttpBoot,
    /// OVMF enforcing Secure Boot with Microsoft's keys enrolled (Debian's
    /// `OVMF_CODE_4M.secboot.fd` with `OVMF_VARS_4M.ms.fd`), on a q35 machine with SMM, which
    /// that firmware requires: it runs only what Microsoft's UEFI CA signed, such as shim.
    UefiSecureBoot,
    /// An arm64 `virt` machine with AAVMF (EDK2 for arm64), whose PXE client asks as
    /// architecture 11 and loads the arm64 boot file by TFTP.
    UefiArm64,
}

impl Lab {
    /// A lab for a test, or `None` (with the reason printed) when this machine cannot run
    /// one; with `KILN_REQUIRE_LAB=1` that is a failure instead, so CI cannot skip the lab.
    pub fn create_or_skip() -> Option<Lab> {
        if let Err(reason) = available() {
            if std::env::var("KILN_REQUIRE_LAB").as_deref() == Ok("1") {
                panic!("KILN_REQUIRE_LAB=1 but the lab cannot run: {reason}");
            }
            eprintln!("skipping a lab test: {reason}");
            return None;
        }
        Some(Lab::create().expect("creating the lab network"))
    }

    /// Creates the namespace, the bridge and the server's address.
    pub fn create() -> anyhow::Result<Lab> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let namespace = format!("kiln-lab-{}-{}", std::process::id(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        Lab::create_with(namespace, LabDirectory::Temporary(tempfile::tempdir()?), false)
    }

    fn create_with(namespace: String, directory: LabDirectory, detached: bool) -> anyhow::Result<Lab> {
        run(Command::new("ip").args(["netns", "add", &namespace]))?;
        let lab = Lab { namespace, directory, detached, kept: false, server: None, site: None, machines: Vec::new(), taps: 0, tls: false };
        lab.ip(&["link", "set", "lo", "up"])?;
        lab.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        lab.ip(&["addr", "add", &format!("{SERVER_ADDRESS}/24"), "dev", BRIDGE])?;
        lab.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(lab)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", &self.namespace, "ip"]).args(args))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]).arg(program);
        command
    }

    /// A long-lived process of the lab (server, QEMU, dnsmasq): in a detached lab, a process
    /// group of its own, so that Ctrl-C in the terminal reaches only the command.
    fn daemon(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = self.command(program);
        if self.detached {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        command
    }

    pub fn server_url(&self) -> String {
        format!("{}://{SERVER_ADDRESS}:{API_PORT}", if self.tls { "https" } else { "http" })
    }

    /// Where machines boot from: the boot listener.
    pub fn boot_url(&self) -> String {
        format!("http://{SERVER_ADDRESS}:{BOOT_PORT}")
    }

    /// Starts `kiln serve` inside the namespace with DHCP on the bridge and TFTP from
    /// Debian's iPXE directory. `extra_config` is appended to the TOML configuration.
    pub fn start_server(&mut self, kiln: &Path, extra_config: &str) -> anyhow::Result<PathBuf> {
        self.start_server_with(kiln, extra_config, true, true)
    }

    /// [`Lab::start_server`] with no TFTP server at all: machines boot by UEFI HTTP boot.
    pub fn start_server_without_tftp(&mut self, kiln: &Path, extra_config: &str) -> anyhow::Result<PathBuf> {
        self.start_server_with(kiln, extra_config, false, true)
    }

    /// `kiln serve` with no DHCP server and no TFTP server on the segment at all: machines
    /// boot from virtual media with static addresses.
    pub fn start_server_without_dhcp(&mut self, kiln: &Path) -> anyhow::Result<PathBuf> {
        self.start_server_with(kiln, "", false, false)
    }

    /// [`Lab::start_server`] with the API listener on HTTPS (`[tls]`, a certificate from
    /// Kiln's own CA); [`Lab::kiln`] trusts that CA.
    pub fn start_server_with_tls(&mut self, kiln: &Path, extra_config: &str) -> anyhow::Result<PathBuf> {
        self.tls = true;
        self.start_server_with(kiln, extra_config, true, true)
    }

    fn start_server_with(&mut self, kiln: &Path, extra_config: &str, tftp: bool, dhcp: bool) -> anyhow::Result<PathBuf> {
        let data_dir = self.directory.path().join("data");
        std::fs::create_dir_all(data_dir.join("boot-files"))?;
        let config = self.directory.path().join("kiln.toml");
        let mut file = std::fs::File::create(&config)?;
        write!(
            file,
            "listen = \"{SERVER_ADDRESS}:{API_PORT}\"\npublic_url = \"{url}\"\ndata_dir = \"{data}\"\n\n\
             [boot]\nlisten = \"{SERVER_ADDRESS}:{BOOT_PORT}\"\n\n\
             {dhcp}\
             {tftp}\
             [netdisk]\nlisten = \"{SERVER_ADDRESS}:{NETDISK_PORT}\"\n\n\
             {tls}",
            url = self.server_url(),
            data = data_dir.display(),
            dhcp = if dhcp {
                format!(
                    "[dhcp]\ninterface = \"{BRIDGE}\"\nserver_address = \"{SERVER_ADDRESS}\"\nsubnet = \"{SUBNET}\"\n\
                     router = \"{SERVER_ADDRESS}\"\npool = \"10.77.0.100-10.77.0.150\"\nlease_seconds = 600\n{extra_config}\n\n"
                )
            } else {
                String::new()
            },
            tftp = if tftp { format!("[tftp]\nlisten = \"{SERVER_ADDRESS}:69\"\nroot = \"/usr/lib/ipxe\"\n\n") } else { String::new() },
            tls = if self.tls { "[tls]\n" } else { "" },
        )?;
        let log = std::fs::File::create(self.directory.path().join("server.log"))?;
        let child = self
            .daemon(kiln)
            .args(["serve", "--config"])
            .arg(&config)
            .env("KILN_LOG", "info,kiln_dhcp=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kiln serve in the lab")?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.server_log().contains("kiln: listening on") {
            if Instant::now() > deadline {
                bail!("kiln serve did not start:\n{}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(data_dir)
    }

    /// Stops the server (SIGKILL: no chance to tidy up), keeping its data directory.
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("server.log")).unwrap_or_default()
    }

    /// Enrols a lab machine as node `name` through the CLI (static discovery with its MAC,
    /// its lab BMC at `qmp`) and makes it available.
    pub fn enroll_machine(&self, kiln: &Path, name: &str, mac: &str, qmp: &Path) -> anyhow::Result<()> {
        let node = serde_json::json!([{ "name": name, "interfaces": [{"mac_addr": mac}] }]);
        self.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()])?;
        let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}});
        self.kiln(kiln, &["node", "update", name, "-f", "json", "-d", &bmc.to_string()])?;
        self.kiln(kiln, &["node", "manage", name, "--wait", "--timeout", "30"])?;
        self.kiln(kiln, &["node", "provide", name, "--wait", "--timeout", "30"])?;
        Ok(())
    }

    /// Runs the `kiln` CLI inside the namespace with the lab's admin token.
    pub fn kiln(&self, kiln: &Path, args: &[&str]) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(self.directory.path().join("data/admin-token"))?;
        let mut command = self.command(kiln);
        command.args(args).env("KILN_URL", self.server_url()).env("KILN_TOKEN", token.trim());
        if self.tls {
            command.env("KILN_CA", self.directory.path().join("data/tls/ca.crt"));
        }
        let output = command.output()?;
        if !output.status.success() {
            bail!("kiln {args:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Puts a second host on the segment (10.77.0.2, its own namespace, a veth to the
    /// bridge) running dnsmasq as the site's DHCP server, handing out 10.77.0.50–60 and no
    /// boot information: what Kiln's proxy mode runs beside.
    pub fn start_site_dhcp(&mut self) -> anyhow::Result<()> {
        let site = self.add_host()?;
        let log = std::fs::File::create(self.directory.path().join("dnsmasq.log"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &site,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--interface=ksite1",
                "--bind-interfaces",
                "--no-ping",
                "--log-dhcp",
            ])
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,10m")
            .arg(format!("--dhcp-leasefile={}", self.directory.path().join("dnsmasq.leases").display()))
            .arg(format!("--pid-file={}", self.directory.path().join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        self.site = Some((site, child));
        Ok(())
    }

    /// A second host on the segment: its own namespace at 10.77.0.2 on `ksite1`, a veth to
    /// the bridge. Returns the namespace, for `ip netns exec`.
    pub fn add_host(&mut self) -> anyhow::Result<String> {
        let site = format!("{}-site", self.namespace);
        run(Command::new("ip").args(["netns", "add", &site]))?;
        // Recorded at once, so that a failure below still removes the namespace.
        self.site = Some((site.clone(), Command::new("true").spawn()?));
        self.ip(&["link", "add", "ksite0", "type", "veth", "peer", "name", "ksite1"])?;
        self.ip(&["link", "set", "ksite1", "netns", &site])?;
        self.ip(&["link", "set", "ksite0", "master", BRIDGE])?;
        self.ip(&["link", "set", "ksite0", "up"])?;
        let in_site = |args: &[&str]| run(Command::new("ip").args(["netns", "exec", &site, "ip"]).args(args));
        in_site(&["link", "set", "lo", "up"])?;
        in_site(&["addr", "add", "10.77.0.2/24", "dev", "ksite1"])?;
        in_site(&["link", "set", "ksite1", "up"])?;
        Ok(site)
    }

    pub fn site_dhcp_log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Boots a QEMU machine with `mac` on a new tap on the bridge (TCG: KVM guests hang here).
    pub fn boot_machine(&mut self, mac: &str, firmware: Firmware) -> anyhow::Result<&mut Machine> {
        self.start_machine(mac, firmware, false, None, false)
    }

    /// A machine that starts powered off, behind a QMP socket (`Machine::qmp`) that Kiln's
    /// lab BMC driver powers it through: on, resets and off, as an operator would. Resets
    /// restart it rather than end QEMU.
    pub fn add_powered_off_machine(&mut self, mac: &str, firmware: Firmware) -> anyhow::Result<&mut Machine> {
        self.start_machine(mac, firmware, true, None, false)
    }

    /// A powered-off machine behind the lab BMC with an empty CD drive first in its boot
    /// order (an empty drive is passed over), which the lab BMC fills as virtual media.
    pub fn add_machine_with_cd(&mut self, mac: &str, firmware: Firmware) -> anyhow::Result<&mut Machine> {
        self.start_machine(mac, firmware, true, None, true)
    }

    /// A powered-off machine behind the lab BMC with an empty CD drive and `disk`: it boots
    /// from the drive while it holds a medium, else from the disk, then the network.
    pub fn add_machine_with_cd_and_disk(&mut self, mac: &str, firmware: Firmware, disk: &Path) -> anyhow::Result<&mut Machine> {
        self.start_machine(mac, firmware, true, Some(disk), true)
    }

    /// A powered-off machine behind the lab BMC with `disk` (a raw image file) as its
    /// virtio disk: what deploy tests provision.
    pub fn add_machine_with_disk(&mut self, mac: &str, firmware: Firmware, disk: &Path) -> anyhow::Result<&mut Machine> {
        self.start_machine(mac, firmware, true, Some(disk), false)
    }

    fn start_machine(
        &mut self,
        mac: &str,
        firmware: Firmware,
        behind_bmc: bool,
        disk: Option<&Path>,
        cd_drive: bool,
    ) -> anyhow::Result<&mut Machine> {
        let tap = format!("ktap{}", self.taps);
        self.taps += 1;
        self.ip(&["tuntap", "add", &tap, "mode", "tap"])?;
        self.ip(&["link", "set", &tap, "master", BRIDGE])?;
        self.ip(&["link", "set", &tap, "up"])?;
        let console = self.directory.path().join(format!("console-{}.log", mac.replace(':', "")));
        let mut command = self.daemon(if firmware == Firmware::UefiArm64 { "qemu-system-aarch64" } else { "qemu-system-x86_64" });
        command.args(["-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none"]);
        let qmp = behind_bmc.then(|| self.directory.path().join(format!("qmp-{}.sock", mac.replace(':', ""))));
        match &qmp {
            // Stopped until powered on; a guest power-off stops it rather than ending QEMU.
            Some(socket) => {
                command.args(["-S", "-no-shutdown"]).arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
            }
            None => {
                command.arg("-no-reboot");
            }
        }
        match &qmp {
            // Behind the lab BMC the serial line is also a socket, which Kiln's console
            // capture reads and types into; the file keeps everything for the tests.
            Some(qmp) => {
                let serial = serial_socket(qmp);
                command.arg("-chardev").arg(format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                    serial.display(),
                    console.display()
                ));
                command.args(["-serial", "chardev:serial0"]);
            }
            None => {
                command.arg("-serial").arg(format!("file:{}", console.display()));
            }
        }
        command.args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        if let Some(disk) = disk {
            // A serial number, so root device hints have something to match.
            command.arg("-drive").arg(format!("file={},if=none,id=d0,format=raw,discard=unmap", disk.display()));
            // Beside a CD drive, the disk comes second, as a server's after its virtual media.
            let disk_boot_order = if cd_drive { ",bootindex=1" } else { "" };
            command.args(["-device", &format!("virtio-blk-pci,drive=d0,serial=KILN-{}{disk_boot_order}", mac.replace(':', ""))]);
        }
        // With a CD drive, boot order is by device: the drive (passed over while empty), the
        // disk if there is one, then the network.
        let nic_boot_order = if cd_drive {
            command.args(["-drive", "if=none,id=cd0,media=cdrom,readonly=on"]);
            command.args(["-device", &format!("ide-cd,drive=cd0,id={},bootindex=0", CD_DEVICE)]);
            ",bootindex=2"
        } else {
            ""
        };
        match firmware {
            Firmware::Bios if cd_drive => {
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}{nic_boot_order}")]);
            }
            Firmware::Bios => {
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}"), "-boot", "n"]);
            }
            Firmware::Uefi => {
                let vars = self.directory.path().join(format!("vars-{}.fd", mac.replace(':', "")));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).context("copying OVMF variables (apt-get install ovmf)")?;
                // No option ROM: OVMF's own PXE client, which loads iPXE by TFTP.
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile={nic_boot_order}")]);
                command.args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"]);
                command.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            Firmware::UefiHttpBoot => {
                let vars = self.directory.path().join(format!("vars-{}.fd", mac.replace(':', "")));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).context("copying OVMF variables (apt-get install ovmf)")?;
                command.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]);
                command.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")]);
                command.args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"]);
                command.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            Firmware::UefiSecureBoot => {
                let vars = self.directory.path().join(format!("vars-{}.fd", mac.replace(':', "")));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", &vars)
                    .context("copying OVMF's Secure Boot variables (apt-get install ovmf)")?;
                command.args(["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]);
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")]);
                command.args(["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"]);
                command.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
            }
            Firmware::UefiArm64 => {
                let vars = self.directory.path().join(format!("vars-{}.fd", mac.replace(':', "")));
                std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars)
                    .context("copying AAVMF variables (apt-get install qemu-efi-aarch64 qemu-system-arm)")?;
                command.args(["-machine", "virt", "-cpu", "cortex-a57"]);
                command.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")]);
                command.args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"]);
                command.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting QEMU")?;
        if let Some(socket) = &qmp {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !socket.exists() {
                if Instant::now() > deadline {
                    bail!("QEMU did not open its QMP socket {}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.machines.push(Machine { mac: mac.to_owned(), console, qmp, disk: disk.map(Path::to_owned), child, kept: false });
        Ok(self.machines.last_mut().expect("just pushed"))
    }
}

/// The QEMU id of a lab machine's CD drive, where Kiln's lab BMC looks for it
/// (`kiln_bmc::lab::CD_DEVICE`; a test checks they agree).
pub const CD_DEVICE: &str = "kiln-cd";

/// Where the machine behind QMP socket `qmp` offers its serial line: the name Kiln's lab BMC
/// driver derives from the BMC address (`kiln_bmc::lab::serial_socket`; the test below keeps
/// the two the same, without the CLI depending on the BMC drivers).
pub fn serial_socket(qmp: &Path) -> PathBuf {
    let name = qmp.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    qmp.with_file_name(format!("serial-{}", name.strip_prefix("qmp-").unwrap_or(name)))
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.machines.clear();
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some((site, mut dnsmasq)) = self.site.take() {
            let _ = dnsmasq.kill();
            let _ = dnsmasq.wait();
            let _ = Command::new("ip").args(["netns", "delete", &site]).status();
        }
        // Deleting the namespace removes the bridge, the taps and the veth in it.
        let _ = Command::new("ip").args(["netns", "delete", &self.namespace]).status();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_serial_socket_is_where_the_lab_bmc_driver_looks() {
        assert_eq!(super::CD_DEVICE, kiln_bmc::lab::CD_DEVICE);
        let qmp = std::path::Path::new("/run/kiln-lab/qmp-525400be0001.sock");
        assert_eq!(Some(super::serial_socket(qmp)), kiln_bmc::lab::serial_socket(qmp));
    }
}
