//! The network-disk benchmark (`scripts/bench-netdisk`): in the lab, N BIOS machines deploy
//! one image version in network mode at once, and then the same version to their local
//! disks; the time from the request to all N `active` (each booted into the image's system,
//! which called back) is reported for both, with the bytes each clone stores. Then one more
//! machine, with the same image on a local virtio disk, boots in network mode and runs fio
//! (Debian's, carried in the image) against its network disk and its local disk, and the
//! server's CPU seconds (`kiln serve` and the export processes) per GiB served over the
//! network are reported.
//!
//! Usage: `netdisk_bench [--machines N] [--image-mib M]` (root, the lab's packages and fio
//! installed, release builds of `kiln` and `kiln-agent` beside this program).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_lab::{Firmware, Lab};

struct Options {
    machines: usize,
    image_mib: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { machines: 4, image_mib: 384 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--machines" => options.machines = value.parse().context("--machines")?,
            "--image-mib" => options.image_mib = value.parse().context("--image-mib")?,
            other => bail!("unknown option {other}; usage: netdisk_bench [--machines N] [--image-mib M]"),
        }
    }
    Ok(options)
}

/// The release `kiln` and `kiln-agent` beside this example (`<target>/release/examples/`).
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let examples = std::env::current_exe().context("finding this program")?;
    let release = examples.parent().and_then(Path::parent).context("this program lives in <target>/release/examples")?;
    let (kiln, agent) = (release.join("kiln"), release.join("kiln-agent"));
    for binary in [&kiln, &agent] {
        if !binary.exists() {
            bail!("{} is missing: cargo build --release -p kiln-cli -p kiln-agent", binary.display());
        }
    }
    Ok((kiln, agent))
}

/// CPU seconds used so far by the processes whose command line mentions `needle` and starts
/// with `program`.
fn cpu_seconds(program: &str, needle: &Path) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let first = command_line.split(|&byte| byte == 0).next().unwrap_or_default();
        if !first.ends_with(program.as_bytes()) || !kiln_lab::standing::process_mentions(pid, needle) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let used: f64 = fields.get(11..13).unwrap_or_default().iter().filter_map(|field| field.parse::<f64>().ok()).sum();
        total += used / ticks;
    }
    total
}

fn deploy_all(lab: &Lab, kiln: &Path, names: &[String], mode: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut args = vec!["node", "deploy"];
    args.extend(names.iter().map(String::as_str));
    args.extend(["--image", "bench-os", "--mode", mode, "--wait-for-callback", "--wait", "--timeout", "1800"]);
    lab.kiln(kiln, &args).with_context(|| format!("{mode} deploy of {names:?}\nserver:\n{}", lab.server_log()))?;
    Ok(started.elapsed().as_secs_f64())
}

fn undeploy_all(lab: &Lab, kiln: &Path, names: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["node", "undeploy"];
    args.extend(names.iter().map(String::as_str));
    args.extend(["--wait", "--timeout", "1800"]);
    lab.kiln(kiln, &args)?;
    Ok(())
}

/// One fio result: target (network or local), job, MiB/s and IOPS.
struct FioResult {
    target: String,
    job: String,
    mib_per_second: f64,
    iops: f64,
    kib_moved: f64,
}

fn fio_results(console: &str) -> Vec<FioResult> {
    console
        .lines()
        .filter_map(|line| {
            let rest = line.split("KILN-BENCH-FIO ").nth(1)?;
            let mut words = rest.splitn(3, ' ');
            let (target, job, terse) = (words.next()?, words.next()?, words.next()?);
            // fio's terse format, version 3: read KiB, KiB/s and IOPS are fields 6-8, the
            // write ones 47-49 (counting from 1).
            let fields: Vec<f64> = terse.trim().split(';').map(|field| field.parse().unwrap_or(0.0)).collect();
            let (kib, bandwidth, iops) = if job.contains("read") { (5, 6, 7) } else { (46, 47, 48) };
            Some(FioResult {
                target: target.to_owned(),
                job: job.to_owned(),
                mib_per_second: *fields.get(bandwidth)? / 1024.0,
                iops: *fields.get(iops)?,
                kib_moved: *fields.get(kib)?,
            })
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    kiln_lab::available().map_err(|reason| anyhow::anyhow!("the lab cannot run here: {reason}"))?;
    let (kiln, agent) = binaries()?;
    let mut lab = Lab::create()?;
    let data = lab.start_server(&kiln, "")?;
    let work = lab.directory.path().to_owned();

    let (kernel, _) = kiln_lab::host_kernel()?;
    let initrd = work.join("callback-initrd.img");
    kiln_lab::build_callback_initrd(&initrd)?;
    let append = format!("console=ttyS0,115200 panic=-1 kiln.lab.stay kiln.server={}", lab.boot_url());
    let image = kiln_lab::build_benchmark_disk_image(&work, options.image_mib, &kernel, &initrd, &append)?;
    let compressed = work.join("benchmark.raw.zst");
    let zstd = std::process::Command::new("zstd").args(["-q", "-3", "-f"]).arg(&image).arg("-o").arg(&compressed).status()?;
    anyhow::ensure!(zstd.success(), "zstd could not compress {}", image.display());
    lab.kiln(&kiln, &["image", "create", "bench-os"])?;
    lab.kiln(&kiln, &["image", "upload", "bench-os", &format!("disk={}", compressed.display())])?;
    lab.kiln(&kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()])?;
    eprintln!("image: {} MiB, {} bytes compressed", options.image_mib, std::fs::metadata(&compressed)?.len());

    let mut names = Vec::new();
    for index in 0..options.machines {
        let (name, mac) = (format!("bench{index}"), format!("52:54:00:be:e0:{index:02x}"));
        let disk = work.join(format!("{name}-disk.raw"));
        std::fs::File::create(&disk)?.set_len((options.image_mib + 64) << 20)?;
        let qmp = lab.add_machine_with_disk(&mac, Firmware::Bios, &disk)?.qmp.clone().context("behind the lab BMC")?;
        lab.enroll_machine(&kiln, &name, &mac, &qmp)?;
        names.push(name);
    }
    eprintln!("{} machines enrolled; network deploy", names.len());
    let network = deploy_all(&lab, &kiln, &names, "network")?;
    let mut clone_bytes = Vec::new();
    for entry in std::fs::read_dir(data.join("netdisk/clones"))? {
        use std::os::unix::fs::MetadataExt as _;
        clone_bytes.push(entry?.metadata()?.blocks() * 512);
    }
    undeploy_all(&lab, &kiln, &names)?;
    eprintln!("network deploy: {network:.1} s; disk deploy");
    let disk = deploy_all(&lab, &kiln, &names, "disk")?;
    eprintln!("disk deploy: {disk:.1} s; fio");

    // One more machine: the same image on its local disk, booted in network mode.
    let local = work.join("fio-disk.raw");
    std::fs::copy(&image, &local)?;
    let mac = "52:54:00:be:e0:ff";
    let machine = lab.add_machine_with_disk(mac, Firmware::Bios, &local)?;
    let (qmp, console) = (machine.qmp.clone().context("behind the lab BMC")?, machine.console.clone());
    lab.enroll_machine(&kiln, "bench-fio", mac, &qmp)?;
    let fio_names = vec!["bench-fio".to_owned()];
    let sampler = {
        // `kiln serve` names the lab's configuration file, the export processes their clones
        // under the lab's data directory.
        let (console, lab_directory) = (console.clone(), work.clone());
        std::thread::spawn(move || -> Option<(f64, f64)> {
            let deadline = Instant::now() + Duration::from_secs(1800);
            let server_cpu = || cpu_seconds("kiln", &lab_directory) + cpu_seconds("qemu-nbd", &lab_directory);
            let mut started = None;
            while Instant::now() < deadline {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                match started {
                    None if text.contains("KILN-BENCH-FIO-START network") => started = Some(server_cpu()),
                    Some(before) if text.contains("KILN-BENCH-FIO-END network") => return Some((before, server_cpu())),
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        })
    };
    deploy_all(&lab, &kiln, &fio_names, "network")?;
    let (cpu_before, cpu_after) = sampler.join().expect("the sampler does not panic").context("fio did not run on the network disk")?;
    let text = std::fs::read_to_string(&console)?;
    let results = fio_results(&text);
    anyhow::ensure!(results.len() == 8, "eight fio results on the console:\n{text}");
    // fio lays its 128 MiB file out before the first job; that is served too.
    let network_kib: f64 =
        results.iter().filter(|result| result.target == "network").map(|result| result.kib_moved).sum::<f64>() + 128.0 * 1024.0;
    let gib = network_kib / (1024.0 * 1024.0);
    let cpu = cpu_after - cpu_before;

    println!("| machines | network mode, request to all active | disk mode, request to all active | ratio | bytes stored per clone |");
    println!("| --- | --- | --- | --- | --- |");
    let clones: Vec<String> = clone_bytes.iter().map(|bytes| format!("{:.1} MiB", *bytes as f64 / 1048576.0)).collect();
    println!("| {} | {network:.1} s | {disk:.1} s | {:.2}x | {} |", names.len(), network / disk, clones.join(", "));
    println!();
    println!("| fio job | network disk | local virtio disk | network / local |");
    println!("| --- | --- | --- | --- |");
    for job in ["seqread", "seqwrite", "randread", "randwrite"] {
        let find = |target: &str| results.iter().find(|result| result.target == target && result.job == job);
        let (Some(network), Some(local)) = (find("network"), find("local")) else { continue };
        let cell = |result: &FioResult| format!("{:.1} MiB/s, {:.0} IOPS", result.mib_per_second, result.iops);
        println!(
            "| {job} | {} | {} | {:.2}x |",
            cell(network),
            cell(local),
            network.mib_per_second / local.mib_per_second.max(f64::MIN_POSITIVE)
        );
    }
    println!();
    println!(
        "server CPU (kiln serve and the export processes) while fio ran on the network disk: {cpu:.1} s for {gib:.2} GiB served, {:.1} s per GiB",
        cpu / gib
    );
    undeploy_all(&lab, &kiln, &fio_names)?;
    Ok(())
}
