//! Network-mode deploys end to end in the lab: two machines with no disk, one BIOS and one
//! UEFI, deploy one image version in network mode at once. Each boots the deploy ramdisk,
//! whose init attaches the node's own copy-on-write clone over NBD through Kiln's gateway
//! and boots the root it holds; the system writes a marker with its MAC and reboots, then
//! finds its own marker (not the other's), calls back and offers a login prompt. The
//! version's bytes are unchanged afterwards and each clone holds only what its node wrote.
//! A snapshot of one node becomes a new version that stores about its changes only, and
//! the other node, deployed from it, sees them. `kill -9` of `kiln serve` while a node
//! writes synced records: its I/O resumes after the restart, and every record it was told
//! was written is there after a reset; the same after `kill -9` of the node's export
//! process alone, and `fsck -n` of the clone is clean afterwards. Undeploying removes the
//! clones.
//!
//! Needs what the lab needs (`scripts/install-deps`) and a built `kiln-agent`.

mod support;

use std::path::Path;

use kiln_lab::{Firmware, Lab};
use support::agent_binary;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Enrols a powered-off, diskless machine behind the lab BMC as `name` and makes it
/// available; returns its console log.
fn add_node(lab: &mut Lab, name: &str, mac: &str, firmware: Firmware) -> std::path::PathBuf {
    let kiln = Path::new(KILN);
    let machine = lab.add_powered_off_machine(mac, firmware).unwrap();
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    lab.enroll_machine(kiln, name, mac, &qmp).unwrap();
    console
}

#[test]
fn two_diskless_machines_boot_their_own_clones_of_one_version() {
    let Some(mut lab) = Lab::create_or_skip() else { return };
    let kiln = Path::new(KILN);
    let data = lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();
    let image = kiln_lab::build_network_disk_image(&work, 64).unwrap();
    let image_sha256 = support::sha256_of(&image);
    let compressed = work.join("netdisk.raw.zst");
    let status = std::process::Command::new("zstd").args(["-q", "-3", "-f"]).arg(&image).arg("-o").arg(&compressed).status().unwrap();
    assert!(status.success());
    lab.kiln(kiln, &["image", "create", "lab-netdisk"]).unwrap();
    lab.kiln(kiln, &["image", "upload", "lab-netdisk", &format!("disk={}", compressed.display())]).unwrap();
    let agent = agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();

    let nodes = [("node51", "52:54:00:be:ef:51", Firmware::Bios), ("node52", "52:54:00:be:ef:52", Firmware::Uefi)];
    let consoles: Vec<_> = nodes.iter().map(|(name, mac, firmware)| add_node(&mut lab, name, mac, *firmware)).collect();
    let started = std::time::Instant::now();
    let mut args = vec!["node", "deploy"];
    args.extend(nodes.iter().map(|(name, ..)| *name));
    args.extend(["--image", "lab-netdisk", "--mode", "network", "--wait-for-callback", "--wait", "--timeout", "600", "-F", "json"]);
    let deployed = lab.kiln(kiln, &args).unwrap_or_else(|error| {
        let consoles: Vec<_> = consoles.iter().map(|console| std::fs::read_to_string(console).unwrap_or_default()).collect();
        panic!("network deploy failed: {error}\nconsoles:\n{}\nserver:\n{}", consoles.join("\n-----\n"), lab.server_log())
    });
    let deployed = json(&deployed);
    for (index, (name, ..)) in nodes.iter().enumerate() {
        assert_eq!(deployed[index]["provision_state"], "active", "{name}: {deployed}");
    }
    eprintln!("two network deploys (BIOS and UEFI) to active, through a reboot each: {:.0} s", started.elapsed().as_secs_f64());

    for ((name, mac, _), console) in nodes.iter().zip(&consoles) {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        assert!(text.contains("KILN-NETDISK-ROOT /dev/nbd0p1 / ext4 rw"), "{name} runs from its network disk:\n{text}");
        assert!(text.contains(&format!("KILN-NETDISK-WROTE {mac}")), "{name} wrote its marker:\n{text}");
        assert!(text.contains(&format!("KILN-NETDISK-MARKER {mac}")), "{name} found its own marker after the reboot:\n{text}");
        assert!(text.contains(&format!("KILN-NETDISK-PHONED-HOME {mac}")), "{text}");
        let login = (0..60).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::fs::read_to_string(console).unwrap_or_default().contains("login:")
        });
        assert!(login, "{name} offers a login prompt:\n{}", std::fs::read_to_string(console).unwrap_or_default());
    }

    // The version's bytes are unchanged, shared by both clones, and each clone holds only
    // what its node wrote.
    let bases: Vec<_> = std::fs::read_dir(data.join("netdisk/bases")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(bases.len(), 1, "one base for one version: {bases:?}");
    assert!(bases[0].extension().is_some_and(|extension| extension == "raw"), "{bases:?}");
    assert_eq!(support::sha256_of(&bases[0]), image_sha256, "the base is the version's bytes, unchanged");
    let clones: Vec<_> = std::fs::read_dir(data.join("netdisk/clones")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(clones.len(), 2, "{clones:?}");
    for clone in &clones {
        use std::os::unix::fs::MetadataExt as _;
        let stored = std::fs::metadata(clone).unwrap().blocks() * 512;
        assert!(stored < 8 << 20, "{} holds {stored} bytes, far less than the 64 MiB image", clone.display());
        eprintln!("clone {} stores {stored} bytes", clone.file_name().unwrap().to_string_lossy());
    }

    snapshot_reaches_another_node(&lab, &consoles);
    a_killed_server_is_survived(&mut lab, &consoles[0]);
    let clone = data
        .join("netdisk/clones")
        .join(format!("{}.qcow2", json(&lab.kiln(kiln, &["node", "show", "node51", "-F", "json"]).unwrap())["id"].as_str().unwrap()));
    a_killed_export_process_is_survived(&lab, &consoles[0], &clone);
    the_clone_checks_clean(&lab, &clone, &work);

    // Undeploy removes the clones; the base stays for the next deploy.
    let mut args = vec!["node", "undeploy"];
    args.extend(nodes.iter().map(|(name, ..)| *name));
    args.extend(["--wait", "--timeout", "60", "-F", "json"]);
    let undeployed = json(&lab.kiln(kiln, &args).unwrap());
    assert_eq!(undeployed[0]["provision_state"], "available", "{undeployed}");
    assert_eq!(std::fs::read_dir(data.join("netdisk/clones")).unwrap().count(), 0, "the clones are removed");
    assert_eq!(support::sha256_of(&bases[0]), image_sha256);
}

/// Snapshot: node51's changes (its marker) become version 1 of another image, a layer over
/// the same disk blob, which adds only about what changed to the store; node52, deployed from
/// it, sees node51's marker; node51 boots its clone again.
fn snapshot_reaches_another_node(lab: &Lab, consoles: &[std::path::PathBuf]) {
    let kiln = Path::new(KILN);
    lab.kiln(kiln, &["image", "create", "lab-netdisk-snap"]).unwrap();
    lab.kiln(kiln, &["node", "snapshot", "node51", "--image", "lab-netdisk-snap", "--wait", "--timeout", "120"])
        .unwrap_or_else(|error| panic!("snapshot failed: {error}\nserver:\n{}", lab.server_log()));
    let versions = json(&lab.kiln(kiln, &["image", "versions", "lab-netdisk-snap", "-F", "json"]).unwrap());
    let artifacts = versions[0]["artifacts"].as_array().unwrap();
    let original = json(&lab.kiln(kiln, &["image", "versions", "lab-netdisk", "-F", "json"]).unwrap());
    let disk = artifacts.iter().find(|artifact| artifact["kind"] == "disk").unwrap();
    assert_eq!(disk["sha256"], original[0]["artifacts"][0]["sha256"], "the snapshot shares the version's disk blob: {versions}");
    let layer = artifacts.iter().find(|artifact| artifact["kind"] == "layer").unwrap();
    let layer_bytes = layer["size"].as_u64().unwrap();
    assert!(layer_bytes < 8 << 20, "the layer holds about what node51 changed: {layer_bytes} bytes");
    eprintln!("snapshot layer stores {layer_bytes} bytes over the 64 MiB disk");
    let undeployed = json(&lab.kiln(kiln, &["node", "undeploy", "node52", "--wait", "--timeout", "60", "-F", "json"]).unwrap());
    assert_eq!(undeployed[0]["provision_state"], "available", "{undeployed}");
    let before = std::fs::read_to_string(&consoles[1]).unwrap_or_default().len();
    let args = [
        "node",
        "deploy",
        "node52",
        "--image",
        "lab-netdisk-snap",
        "--mode",
        "network",
        "--wait-for-callback",
        "--wait",
        "--timeout",
        "600",
    ];
    lab.kiln(kiln, &args).unwrap_or_else(|error| {
        panic!(
            "deploy from the snapshot failed: {error}\nconsole:\n{}\nserver:\n{}",
            std::fs::read_to_string(&consoles[1]).unwrap_or_default(),
            lab.server_log()
        )
    });
    let text = std::fs::read_to_string(&consoles[1]).unwrap_or_default()[before..].to_owned();
    assert!(text.contains("KILN-NETDISK-MARKER 52:54:00:be:ef:51"), "node52 sees node51's change in the snapshot:\n{text}");
    let refused = lab.kiln(kiln, &["node", "deploy", "node52", "--image", "lab-netdisk-snap"]).unwrap_err().to_string();
    assert!(refused.contains("network-disk snapshot"), "{refused}");
    // node51 booted its clone again after the snapshot.
    let again = (0..120).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::read_to_string(&consoles[0]).unwrap_or_default().matches("KILN-NETDISK-PHONED-HOME").count() >= 2
    });
    assert!(
        again,
        "node51 boots its network disk again after the snapshot:\n{}",
        std::fs::read_to_string(&consoles[0]).unwrap_or_default()
    );
}

/// The highest record the node reported as written (synced), in `text`.
fn last_record(text: &str) -> u64 {
    text.lines().filter_map(|line| line.split("KILN-NETDISK-RECORD ").nth(1)?.trim().parse().ok()).max().unwrap_or(0)
}

/// `kill -9` of `kiln serve` (its export processes die with it) while node51 writes synced
/// records: the node's I/O waits, resumes when the server is back, and every record it was
/// told was written is on its disk after a reset of the machine.
fn a_killed_server_is_survived(lab: &mut Lab, console: &Path) {
    let kiln = Path::new(KILN);
    let read = || std::fs::read_to_string(console).unwrap_or_default();
    let writing = (0..60).any(|_| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        last_record(&read()) >= 3
    });
    assert!(writing, "node51 writes records:\n{}", read());
    lab.stop_server();
    let stopped_at = last_record(&read());
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(last_record(&read()) <= stopped_at + 1, "no write completes while the server is down");
    lab.start_server(kiln, "").unwrap();
    let resumed = (0..90).any(|_| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        last_record(&read()) >= stopped_at + 3
    });
    let text = read();
    assert!(
        resumed && text.contains("kiln-nbd: reconnected"),
        "node51's I/O resumes after the restart:\n{text}\nserver:\n{}",
        lab.server_log()
    );
    let acknowledged = last_record(&text);
    let kept = records_kept_over_a_reset(lab, console, acknowledged);
    eprintln!(
        "kill -9 of kiln serve survived: records {stopped_at} to {acknowledged} written around the restart, {kept} kept over a reset"
    );
}

/// Resets node51 and returns the last record its disk holds when it comes back, which must
/// be at least `acknowledged`.
fn records_kept_over_a_reset(lab: &Lab, console: &Path, acknowledged: u64) -> u64 {
    let kiln = Path::new(KILN);
    let read = || std::fs::read_to_string(console).unwrap_or_default();
    let reset_at = read().len();
    lab.kiln(kiln, &["node", "power", "reset", "node51"]).unwrap();
    let kept = (0..180).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let text = read();
        let after_reset = text.get(reset_at..).unwrap_or_default();
        after_reset.split("KILN-NETDISK-RECORDS-KEPT ").nth(1).and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    });
    let kept = kept.unwrap_or_else(|| panic!("node51 booted again after the reset:\n{}", read()));
    assert!(kept >= acknowledged, "records up to {acknowledged} were acknowledged; {kept} are on the disk");
    kept
}

/// `kill -9` of node51's export process alone (qemu-nbd, which keeps the qcow2 clone's
/// cluster tables in memory until a flush) while the node writes synced records: the
/// node's relay reconnects, writes again what was answered but not flushed, and every
/// record the node was told was written is there after a reset.
fn a_killed_export_process_is_survived(lab: &Lab, console: &Path, clone: &Path) {
    let read = || std::fs::read_to_string(console).unwrap_or_default();
    let before = last_record(&read());
    let writing = (0..60).any(|_| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        last_record(&read()) >= before + 3
    });
    assert!(writing, "node51 writes records:\n{}", read());
    let exports: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| {
            let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            command_line.starts_with(b"qemu-nbd\0") && kiln_lab::standing::process_mentions(pid, clone)
        })
        .collect();
    assert_eq!(exports.len(), 1, "one export process serves {}: {exports:?}", clone.display());
    // SAFETY: kill has no memory preconditions; the pid is the lab server's qemu-nbd for
    // this test's clone.
    unsafe { libc::kill(exports[0] as libc::pid_t, libc::SIGKILL) };
    let killed_at = last_record(&read());
    let resumed = (0..90).any(|_| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        last_record(&read()) >= killed_at + 3
    });
    let text = read();
    assert!(resumed, "node51's I/O resumes after its export process was killed:\n{text}\nserver:\n{}", lab.server_log());
    let acknowledged = last_record(&text);
    let kept = records_kept_over_a_reset(lab, console, acknowledged);
    eprintln!("kill -9 of the export process survived: records {killed_at} to {acknowledged} written around it, {kept} kept over a reset");
}

/// With node51 powered off, its clone's filesystem is clean: `fsck -n` after the journal
/// replay a mount would do (the machine was switched off, not shut down).
fn the_clone_checks_clean(lab: &Lab, clone: &Path, work: &Path) {
    let kiln = Path::new(KILN);
    lab.kiln(kiln, &["node", "power", "force-off", "node51"]).unwrap();
    let status = json(&lab.kiln(kiln, &["node", "power", "status", "node51", "-F", "json"]).unwrap());
    assert_eq!(status[0]["power_state"], "off", "{status}");
    let raw = work.join("node51-clone.raw");
    let output = std::process::Command::new("qemu-img").args(["convert", "-U", "-O", "raw"]).arg(clone).arg(&raw).output().unwrap();
    assert!(output.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&output.stderr));
    // The root partition starts at 1 MiB (kiln_lab::build_network_disk_image).
    let partition = work.join("node51-root.ext4");
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::write(&partition, &bytes[1 << 20..]).unwrap();
    let replay = std::process::Command::new("e2fsck").args(["-E", "journal_only", "-p"]).arg(&partition).output().unwrap();
    assert!(replay.status.code().is_some_and(|code| code <= 1), "journal replay: {}", String::from_utf8_lossy(&replay.stdout));
    let check = std::process::Command::new("e2fsck").args(["-f", "-n"]).arg(&partition).output().unwrap();
    assert!(
        check.status.success(),
        "fsck -n of node51's clone is clean:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("fsck -n of node51's clone after the faults: clean");
    let _ = std::fs::remove_file(raw);
    let _ = std::fs::remove_file(partition);
}
