//! Virtual media in the lab: a boot medium Kiln builds (`kiln_image_build::medium`) is
//! published as a public image's disk artifact, and `kiln node virtual-media insert` has
//! the lab BMC fetch it from the boot listener by URL and put it in the CD drive of a lab
//! machine, which boots from it when powered on: its init prints the file from the
//! medium's boot archive. Eject empties the drive; a machine without a CD drive is refused,
//! naming what is missing.
//!
//! With no DHCP server on the segment at all, a node whose boot interface is virtual media is
//! deployed: Kiln makes a medium of the deploy ramdisk for the operation, the lab BMC fetches
//! it by its unguessable URL and boots it, the agent sets the node's static address from the
//! medium's command line, writes the image, and the medium is ejected and removed.
//!
//! Needs what the lab needs (`scripts/install-deps`) and a built `kiln-agent`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_boot::medium::{ArchiveEntry, newc_archive};
use kiln_boot::plan::{KernelBoot, KernelPurpose};
use kiln_image_build::medium::{MediumContents, build_boot_medium};
use kiln_lab::{Firmware, Lab};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
exec >/dev/ttyS0 2>&1
echo \"vmedia-test: boot.env $(/bin/busybox cat /etc/kiln/boot.env)\"
/bin/busybox poweroff -f
";

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// A medium whose init prints the boot archive's file and powers off.
fn build_medium(directory: &Path) -> std::path::PathBuf {
    let (kernel, _) = kiln_image_build::ramdisk::host_kernel().unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let initrd = newc_archive(&[
        ArchiveEntry::Directory { path: "bin", mode: 0o755 },
        ArchiveEntry::File { path: "bin/busybox", mode: 0o755, contents: &busybox },
        ArchiveEntry::Directory { path: "dev", mode: 0o755 },
        ArchiveEntry::File { path: "init", mode: 0o755, contents: INIT.as_bytes() },
    ])
    .unwrap();
    let initrd_path = directory.join("vmedia-initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let boot_archive = newc_archive(&[
        ArchiveEntry::Directory { path: "etc", mode: 0o755 },
        ArchiveEntry::Directory { path: "etc/kiln", mode: 0o755 },
        ArchiveEntry::File { path: "etc/kiln/boot.env", mode: 0o600, contents: b"KILN_VMEDIA=from-the-medium" },
    ])
    .unwrap();
    let boot = KernelBoot { purpose: KernelPurpose::Live, kernel: None, initrd: None, command_line: "console=ttyS0".to_owned() };
    let grub_config = kiln_boot::medium_grub_config(&boot, "vm1");
    let medium = directory.join("vmedia.iso");
    build_boot_medium(
        MediumContents { kernel: &kernel, initrd: &initrd_path, boot_archive: &boot_archive, grub_config: &grub_config },
        &medium,
    )
    .unwrap();
    medium
}

#[test]
fn a_lab_machine_boots_a_medium_its_bmc_fetched_by_url() {
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();
    let medium = build_medium(&work);
    lab.kiln(kiln, &["image", "create", "vmedia", "--visibility", "public"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "vmedia", &format!("disk={}", medium.display())]).unwrap();
    let url = format!("{}/boot/images/vmedia/1/disk", lab.boot_url());

    let machine = lab.add_machine_with_cd("52:54:00:be:ef:71", Firmware::Bios).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    lab.enroll_machine(kiln, "vm1", "52:54:00:be:ef:71", &qmp).unwrap();
    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "status", "vm1", "-F", "json"]).unwrap());
    assert_eq!((status["device"].as_str(), status["inserted"].as_bool()), (Some("kiln-cd"), Some(false)), "{status}");

    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "insert", "vm1", &url, "--boot-once", "-F", "json"]).unwrap());
    assert_eq!((status["image"].as_str(), status["inserted"].as_bool()), (Some(url.as_str()), Some(true)), "{status}");
    lab.kiln(kiln, &["node", "power", "on", "vm1"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !std::fs::read_to_string(&console).unwrap_or_default().contains("vmedia-test: boot.env KILN_VMEDIA=from-the-medium") {
        assert!(
            Instant::now() < deadline,
            "vm1 did not boot its medium:\n{}\nserver:\n{}",
            std::fs::read_to_string(&console).unwrap_or_default(),
            lab.server_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    lab.kiln(kiln, &["node", "virtual-media", "eject", "vm1"]).unwrap();
    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "status", "vm1", "-F", "json"]).unwrap());
    assert_eq!((status["image"].as_str(), status["inserted"].as_bool()), (None, Some(false)), "{status}");
    assert!(!qmp.with_file_name("medium-525400beef71.iso").exists(), "the fetched medium goes with the eject");

    // A URL the BMC cannot fetch: its refusal, and the drive stays empty.
    let error =
        lab.kiln(kiln, &["node", "virtual-media", "insert", "vm1", &format!("{}/boot/images/vmedia/9/disk", lab.boot_url())]).unwrap_err();
    assert!(error.to_string().contains("fetching the image") && error.to_string().contains("HTTP 404"), "{error}");
    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "status", "vm1", "-F", "json"]).unwrap());
    assert_eq!(status["inserted"].as_bool(), Some(false), "{status}");
    // Nor from the server's own loopback, which no BMC could reach.
    let error = lab.kiln(kiln, &["node", "virtual-media", "insert", "vm1", "http://127.0.0.1:8081/boot/images/vmedia/1/disk"]).unwrap_err();
    assert!(error.to_string().contains("where the lab BMC does not fetch from"), "{error}");

    // A machine without a CD drive.
    let machine = lab.add_powered_off_machine("52:54:00:be:ef:72", Firmware::Bios).unwrap();
    let qmp = machine.qmp.clone().unwrap();
    lab.enroll_machine(kiln, "vm2", "52:54:00:be:ef:72", &qmp).unwrap();
    let error = lab.kiln(kiln, &["node", "virtual-media", "insert", "vm2", &url]).unwrap_err();
    assert!(error.to_string().contains("the lab machine has no CD drive"), "{error}");
}

/// The disk image `lab-os` (a SYSLINUX disk whose system reports that it booted) and the
/// deploy ramdisk, in the lab's server; the image's raw file.
fn upload_image_and_ramdisk(lab: &Lab) -> std::path::PathBuf {
    let kiln = Path::new(KILN);
    let work = lab.directory.path().to_owned();
    let (kernel, _) = kiln_lab::host_kernel().unwrap();
    let callback_initrd = work.join("callback-initrd.img");
    kiln_lab::build_callback_initrd(&callback_initrd).unwrap();
    let image = work.join("lab-os.raw");
    kiln_lab::build_bootable_disk(&image, 48, &kernel, &callback_initrd, "console=ttyS0,115200 panic=-1").unwrap();
    lab.kiln(kiln, &["image", "create", "lab-os"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-os", &format!("disk={}", image.display())]).unwrap();
    let agent = support::agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();

    image
}

/// The seed in a deployed node's drive is NoCloud's: a `cidata` volume whose documents
/// Debian's stock cloud-init reads as a local seed before the network, writing the node's
/// static address into the system's network configuration.
fn check_seed_with_stock_cloud_init(lab: &mut Lab, seed: &Path, mac: &str) {
    let info = std::process::Command::new("xorriso").args(["-indev"]).arg(seed).arg("-pvd_info").output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned() + &String::from_utf8_lossy(&info.stderr);
    assert!(info.lines().any(|line| line.starts_with("Volume Id") && line.trim_end().ends_with("cidata")), "{info}");
    let files = lab.directory.path().join("seed-files");
    let extracted = std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(seed)
        .args(["-extract", "/"])
        .arg(&files)
        .output()
        .unwrap();
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    if !Path::new("/usr/bin/cloud-init").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but cloud-init is not installed");
        return;
    }
    // cloud-init configures only the interface the seed names by its MAC, and waits for it:
    // the namespace gets one (a veth pair of its own, off the lab's bridge, where the node
    // has that MAC; this kernel has no dummy interfaces).
    let host = lab.add_host().unwrap();
    let interface = std::process::Command::new("ip")
        .args(["netns", "exec", &host, "ip", "link", "add", "kseed0", "address", mac, "type", "veth", "peer", "name", "kseed1"])
        .status()
        .unwrap();
    assert!(interface.success());
    let scratch = lab.directory.path().join("cloud-init-root");
    std::fs::create_dir_all(&scratch).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/run-cloud-init.sh");
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &host, "unshare", "--mount", "--uts", "--propagation", "private", script])
        .arg(&files)
        .arg(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cloud-init failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let network = stdout.split("network files:").nth(1).unwrap_or_default();
    assert!(network.contains("10.77.0.73/24") && network.contains("10.77.0.1"), "the static address and gateway:\n{stdout}");
}

/// Notes the names of the media in the server's directory while they exist.
struct MediaWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

impl MediaWatcher {
    fn start(media_dir: std::path::PathBuf) -> MediaWatcher {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir(&media_dir).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".iso") {
                        seen.insert(name);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        MediaWatcher { stop, thread }
    }

    fn stop(self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_node_is_deployed_from_virtual_media_with_no_dhcp_anywhere() {
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    let data = lab.start_server_without_dhcp(kiln).unwrap();
    let work = lab.directory.path().to_owned();
    let image = upload_image_and_ramdisk(&lab);
    let disk = work.join("node-disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(128 << 20).unwrap();
    let mac = "52:54:00:be:ef:73";
    let machine = lab.add_machine_with_cd_and_disk(mac, Firmware::Bios, &disk).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    let node = serde_json::json!([{
        "name": "vm3",
        "interfaces": [{"mac_addr": mac, "ip_addrs": [{"name": "provisioning", "ip_addr": "10.77.0.73", "prefix_length": 24,
            "gateway": "10.77.0.1", "dns_servers": ["10.77.0.1"]}]}],
    }]);
    lab.kiln(kiln, &["discover", "static", "-f", "json", "-d", &node.to_string()]).unwrap();
    let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()},
        "properties": {"boot_interface": "virtual-media"}});
    lab.kiln(kiln, &["node", "update", "vm3", "-f", "json", "-d", &bmc.to_string()]).unwrap();
    lab.kiln(kiln, &["node", "manage", "vm3", "--wait", "--timeout", "30"]).unwrap();
    lab.kiln(kiln, &["node", "provide", "vm3", "--wait", "--timeout", "30"]).unwrap();

    let media_dir = data.join("boot-media");
    let watcher = MediaWatcher::start(media_dir.clone());
    let deployed = lab.kiln(kiln, &["node", "deploy", "vm3", "--image", "lab-os", "--wait", "--timeout", "600", "-F", "json"]);
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let log = lab.server_log();
    let deployed = deployed.unwrap_or_else(|error| panic!("deploy failed: {error}\nconsole:\n{console_text}\nserver:\n{log}"));
    assert_eq!(json(&deployed)[0]["provision_state"], "active", "{deployed}");
    assert!(console_text.contains("is up with static address 10.77.0.73/24"), "the ramdisk set the static address:\n{console_text}");
    assert!(console_text.contains("kiln-agent: command"), "the agent ran:\n{console_text}");
    assert!(!log.contains("DHCP"), "no DHCP server ran:\n{log}");
    assert!(log.contains("boot medium made") && log.contains("boot medium removed"), "{log}");
    let written = std::fs::read(&disk).unwrap();
    let expected = std::fs::read(&image).unwrap();
    assert!(written[..expected.len()] == expected[..], "the disk holds exactly the image");
    // The agent powered off; once the medium was out, Kiln powered the node on from its disk.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !std::fs::read_to_string(&console).unwrap_or_default().contains("kiln-lab: init started") {
        assert!(Instant::now() < deadline, "the deployed system did not boot:\n{}", std::fs::read_to_string(&console).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The medium (with the operation's token on its command line) is gone from the BMC's
    // drive and from the boot listener; the drive holds the node's cloud-init seed instead.
    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "status", "vm3", "-F", "json"]).unwrap());
    assert_eq!(status["inserted"].as_bool(), Some(true), "{status}\n{}", lab.server_log());
    let left: Vec<String> =
        std::fs::read_dir(&media_dir).unwrap().flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 1, "only the seed stays: {left:?}");
    assert!(log.lines().any(|line| line.contains("boot file sent") && line.contains("/boot/media/<secret>")), "{log}");
    assert!(log.contains("cloud-init seed inserted"), "{log}");
    let names = watcher.stop();
    let medium = names.iter().find(|name| !left.contains(name)).unwrap_or_else(|| panic!("no medium was seen: {names:?}"));
    assert!(medium.len() > 60, "the medium's name is unguessable: {medium}");
    assert!(!log.contains(medium.as_str()), "the medium's name is in no log:\n{log}");
    assert!(!status.to_string().contains(medium.as_str()), "nor in the API's answers: {status}");
    let answer = lab
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/boot/media/{medium}", lab.boot_url())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&answer.stdout), "404", "the medium's URL died with the operation");
    check_seed_with_stock_cloud_init(&mut lab, &media_dir.join(&left[0]), mac);

    // Undeploy: the agent cleans the disk from a new medium, which is ejected after.
    lab.kiln(kiln, &["node", "undeploy", "vm3", "--wait", "--timeout", "600"])
        .unwrap_or_else(|error| panic!("undeploy failed: {error}\nconsole:\n{}", std::fs::read_to_string(&console).unwrap_or_default()));
    assert!(std::fs::read(&disk).unwrap()[..1 << 20].iter().all(|&byte| byte == 0), "the disk was cleaned");
    let left: Vec<_> = std::fs::read_dir(data.join("boot-media")).unwrap().flatten().map(|entry| entry.file_name()).collect();
    assert!(left.is_empty(), "media left behind: {left:?}");

    // A live image: the ramdisk on the medium sets the static address, fetches the root and
    // boots it; the live system calls back from that address, which completes the deploy.
    let root = kiln_lab::build_live_root(&work, true).unwrap();
    lab.kiln(kiln, &["image", "create", "lab-live", "--visibility", "public"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-live", &format!("root={}", root.display())]).unwrap();
    let live = lab.kiln(
        kiln,
        &[
            "node",
            "deploy",
            "vm3",
            "--image",
            "lab-live",
            "--mode",
            "live",
            "--wait-for-callback",
            "--wait",
            "--timeout",
            "400",
            "-F",
            "json",
        ],
    );
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let live = live.unwrap_or_else(|error| panic!("live deploy failed: {error}\nconsole:\n{console_text}\nserver:\n{}", lab.server_log()));
    assert_eq!(json(&live)[0]["provision_state"], "active", "{live}");
    assert!(console_text.contains("KILN-LIVE-PHONED-HOME"), "the live system called back:\n{console_text}");
    let log = lab.server_log();
    assert!(log.lines().any(|line| line.contains("node phoned home") && line.contains("10.77.0.73")), "from its static address:\n{log}");
    // A live node keeps its medium inserted.
    let status = json(&lab.kiln(kiln, &["node", "virtual-media", "status", "vm3", "-F", "json"]).unwrap());
    assert_eq!(status["inserted"].as_bool(), Some(true), "{status}");
    assert!(!log.contains("DHCP"), "no DHCP server ran:\n{log}");
}
