//! `kiln lab up|down|status|exec`: Kiln at work on one machine. A private network, a server
//! bound inside it, two QEMU machines behind lab BMCs with empty disks, one deployed to disk
//! and one booted live, from images the lab makes itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use kiln_lab::standing::{self, LabRecord};
use kiln_lab::{Firmware, Lab};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum LabCommand {
    /// Create the lab network, start a server in it and two machines, and deploy them: one
    /// to disk, one live. Needs root, QEMU and iPXE (scripts/install-deps --lab).
    Up(UpArgs),
    /// Stop the lab's machines and server and remove its network and directory.
    Down(LabLocation),
    /// Show the lab's processes and nodes.
    Status(LabLocation),
    /// Run a command inside the lab network with KILN_URL and KILN_TOKEN set for its server
    /// (`kiln lab exec -- kiln node list`).
    Exec(ExecArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LabLocation {
    /// The lab's directory: data, disks, consoles and logs.
    #[arg(long, default_value = "kiln-lab")]
    dir: PathBuf,
    /// The lab's network namespace.
    #[arg(long, default_value = "kiln-lab")]
    name: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    location: LabLocation,
    /// The agent binary for the deploy ramdisk [default: kiln-agent beside this kiln].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Give up if both machines are not active after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    location: LabLocation,
    /// The command and its arguments; `kiln` means this program.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The lab's machines: node name, MAC, and how each is deployed.
const DISK_NODE: (&str, &str) = ("lab-disk", "52:54:00:4b:00:01");
const LIVE_NODE: (&str, &str) = ("lab-live", "52:54:00:4b:00:02");

pub(crate) async fn lab(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up(args) => {
            let interrupted = Arc::new(AtomicBool::new(false));
            let flag = interrupted.clone();
            // Ctrl-C reaches this process and the client command it runs, not the lab's
            // detached processes: the lab is then torn down here, in order.
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("interrupted: removing the lab");
                    flag.store(true, Ordering::SeqCst);
                }
            });
            tokio::task::spawn_blocking(move || up(&args, &interrupted)).await.context("the lab task")?
        }
        LabCommand::Down(location) => tokio::task::spawn_blocking(move || down(&location)).await.context("the lab task")?,
        LabCommand::Status(location) => tokio::task::spawn_blocking(move || status(&location)).await.context("the lab task")?,
        LabCommand::Exec(args) => tokio::task::spawn_blocking(move || exec(&args)).await.context("the lab task")?,
    }
}

/// Prints one line per step, timed from the start.
struct Steps {
    started: Instant,
}

impl Steps {
    fn step(&self, text: &str) {
        eprintln!("[{:>5.1} s] {text}", self.started.elapsed().as_secs_f64());
    }
}

/// What the lab needs on this machine, and where `kiln` and `kiln-agent` are.
fn prerequisites(args: &UpArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    kiln_lab::available().map_err(anyhow::Error::msg).context("this machine cannot run the lab")?;
    for tool in ["mksquashfs", "zstd", "mcopy", "syslinux", "sfdisk", "mkfs.vfat"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status();
        if !found.is_ok_and(|status| status.success()) {
            bail!("{tool} is not installed: scripts/install-deps --lab installs what the lab needs");
        }
    }
    let kiln = std::env::current_exe().context("finding this program")?;
    let agent = args.agent.clone().unwrap_or_else(|| kiln.with_file_name("kiln-agent"));
    if !agent.exists() {
        bail!("{} is missing: build it with `cargo build --release -p kiln-agent` or name it with --agent", agent.display());
    }
    Ok((kiln, agent))
}

/// The lab's disk image (SYSLINUX, the host's kernel and an initramfs that calls back),
/// compressed with zstd and uploaded as `lab-os`.
fn upload_disk_image(lab: &Lab, kiln: &Path, work: &Path) -> anyhow::Result<()> {
    let (kernel, _) = kiln_lab::host_kernel()?;
    let initrd = work.join("lab-os-initrd.img");
    kiln_lab::build_callback_initrd(&initrd)?;
    let image = work.join("lab-os.raw");
    let append = format!("console=ttyS0,115200 panic=-1 kiln.lab.stay kiln.server={}", lab.boot_url());
    kiln_lab::build_bootable_disk(&image, 48, &kernel, &initrd, &append)?;
    let compressed = work.join("lab-os.raw.zst");
    let zstd = std::process::Command::new("zstd").args(["-q", "-3", "-f", "--rm"]).arg(&image).arg("-o").arg(&compressed).status();
    if !zstd.context("running zstd (apt-get install zstd)")?.success() {
        bail!("zstd could not compress {}", image.display());
    }
    lab.kiln(kiln, &["image", "create", "lab-os", "--description", "made by kiln lab up"])?;
    lab.kiln(kiln, &["image", "upload", "lab-os", &format!("disk={}", compressed.display())])?;
    std::fs::remove_file(&initrd).ok();
    Ok(())
}

fn up(args: &UpArgs, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let steps = Steps { started: Instant::now() };
    let check = || if interrupted.load(Ordering::SeqCst) { bail!("interrupted") } else { Ok(()) };
    let (kiln, agent) = prerequisites(args)?;
    let mut lab = Lab::create_standing(&args.location.name, &args.location.dir)?;
    let result = (|| -> anyhow::Result<()> {
        let work = lab.directory.path().to_owned();
        steps.step(&format!("lab network {} up; starting kiln serve at {}", lab.namespace, lab.server_url()));
        lab.start_server(&kiln, "")?;
        check()?;

        steps.step("building the deploy ramdisk (host kernel, busybox, kiln-agent)");
        lab.kiln(&kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).context("building the deploy ramdisk")?;
        check()?;

        steps.step("making a disk image: SYSLINUX, a kernel and an initramfs that calls back");
        upload_disk_image(&lab, &kiln, &work)?;
        check()?;

        steps.step("making a live image: a SquashFS root with busybox");
        let root = kiln_lab::build_live_root(&work, true)?;
        lab.kiln(&kiln, &["image", "create", "lab-live", "--visibility", "public", "--description", "made by kiln lab up"])?;
        lab.kiln(&kiln, &["image", "upload", "lab-live", &format!("root={}", root.display())])?;
        check()?;

        steps.step("starting two powered-off machines with empty 256 MiB disks behind lab BMCs");
        let mut enrol = Vec::new();
        for (node, mac) in [DISK_NODE, LIVE_NODE] {
            let disk = work.join(format!("{node}.disk"));
            std::fs::File::create(&disk)?.set_len(256 << 20)?;
            let machine = lab.add_machine_with_disk(mac, Firmware::Bios, &disk)?;
            let qmp = machine.qmp.clone().context("a lab machine has a BMC")?;
            enrol.push((node, mac, qmp));
        }
        steps.step("enrolling them (static discovery, BMCs) and making them available");
        let nodes: Vec<serde_json::Value> =
            enrol.iter().map(|(node, mac, _)| serde_json::json!({"name": node, "interfaces": [{"mac_addr": mac}]})).collect();
        lab.kiln(&kiln, &["discover", "static", "-f", "json", "-d", &serde_json::Value::Array(nodes).to_string()])?;
        for (node, _, qmp) in &enrol {
            let bmc = serde_json::json!({"bmc": {"driver": "lab", "address": qmp.display().to_string()}});
            lab.kiln(&kiln, &["node", "update", node, "-f", "json", "-d", &bmc.to_string()])?;
        }
        let names = [DISK_NODE.0, LIVE_NODE.0];
        lab.kiln(&kiln, &["node", "manage", names[0], names[1], "--wait", "--timeout", "60"])?;
        lab.kiln(&kiln, &["node", "provide", names[0], names[1], "--wait", "--timeout", "60"])?;
        check()?;

        steps.step(&format!("deploying lab-os to {} (disk) and lab-live to {} (live)", DISK_NODE.0, LIVE_NODE.0));
        lab.kiln(&kiln, &["node", "deploy", DISK_NODE.0, "--image", "lab-os", "--wait-for-callback"])?;
        lab.kiln(&kiln, &["node", "deploy", LIVE_NODE.0, "--image", "lab-live", "--mode", "live", "--wait-for-callback"])?;
        let token = std::fs::read_to_string(work.join("data/admin-token")).context("reading the lab's admin token")?;
        let status = lab
            .command(&kiln)
            .args(["node", "wait", names[0], names[1], "--state", "active", "--timeout", &args.timeout.to_string()])
            .env("KILN_URL", lab.server_url())
            .env("KILN_TOKEN", token.trim())
            .stdin(Stdio::null())
            .status()
            .context("following the deploys")?;
        check()?;
        if !status.success() {
            bail!("the machines did not both become active; their consoles are in {}", work.display());
        }
        Ok(())
    })();
    if let Err(error) = result {
        if !interrupted.load(Ordering::SeqCst) {
            eprintln!("{}", lab_failure_details(&lab));
        }
        // Dropping the lab stops its processes and removes its network; its directory stays
        // for reading (`kiln lab down` removes it).
        drop(lab);
        return Err(error.context(format!("the lab did not come up; its logs are in {}", args.location.dir.display())));
    }
    let record = lab.keep(&[DISK_NODE.0, LIVE_NODE.0])?;
    steps.step("both machines are active");
    let dir = args.location.dir.display();
    println!(
        "the lab is up in {:.0} s: {} deployed to disk, {} booted live\n\
         \x20 API (inside the lab network): {} (admin token: {dir}/data/admin-token)\n\
         \x20 serial consoles: {dir}/console-*.log\n\
         \x20 use it: kiln lab exec -- kiln node list\n\
         \x20 see it: kiln lab status\n\
         \x20 end it: kiln lab down",
        steps.started.elapsed().as_secs_f64(),
        DISK_NODE.0,
        LIVE_NODE.0,
        record.api_url
    );
    Ok(())
}

/// The tails of the server log and the consoles: why a lab did not come up.
fn lab_failure_details(lab: &Lab) -> String {
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let mut details = format!("server log (last lines):\n{}\n", tail(&lab.server_log()));
    if let Ok(entries) = std::fs::read_dir(lab.directory.path()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("console-") {
                details.push_str(&format!("{name} (last lines):\n{}\n", tail(&std::fs::read_to_string(entry.path()).unwrap_or_default())));
            }
        }
    }
    details
}

fn down(location: &LabLocation) -> anyhow::Result<()> {
    let report = standing::down(&location.dir, &location.name)?;
    if report.processes_ended.is_empty() && report.namespace_removed.is_none() && report.directory_removed.is_none() {
        println!("no lab at {} (network {}): nothing to remove", location.dir.display(), location.name);
        return Ok(());
    }
    println!(
        "lab down: {} processes ended, network {}, directory {}",
        report.processes_ended.len(),
        report.namespace_removed.as_deref().unwrap_or("(already gone)"),
        report.directory_removed.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| "(already gone)".into())
    );
    Ok(())
}

fn record_or_explain(location: &LabLocation) -> anyhow::Result<LabRecord> {
    standing::read_record(&location.dir)?.with_context(|| format!("no lab is up in {} (kiln lab up, or --dir)", location.dir.display()))
}

fn status(location: &LabLocation) -> anyhow::Result<()> {
    let record = record_or_explain(location)?;
    let running = |pid: u32| if standing::process_mentions(pid, &record.directory) { "running" } else { "gone" };
    println!("lab {} up since {}, API {}", record.namespace, record.started_at, record.api_url);
    println!("  server      pid {:<8} {}", record.server_pid, running(record.server_pid));
    for machine in &record.machines {
        println!(
            "  {:<11} pid {:<8} {:<8} {}  console {}",
            machine.node,
            machine.pid,
            running(machine.pid),
            machine.mac,
            machine.console.display()
        );
    }
    run_inside(&record, &["kiln".to_owned(), "node".into(), "list".into()])
}

fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    let record = record_or_explain(&args.location)?;
    run_inside(&record, &args.command)
}

/// Runs `command` in the lab's namespace with the lab server's URL and admin token.
fn run_inside(record: &LabRecord, command: &[String]) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(record.directory.join("data/admin-token")).context("reading the lab's admin token")?;
    let program: PathBuf = match command[0].as_str() {
        "kiln" => std::env::current_exe().context("finding this program")?,
        other => Path::new(other).to_owned(),
    };
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &record.namespace])
        .arg(&program)
        .args(&command[1..])
        .env("KILN_URL", &record.api_url)
        .env("KILN_TOKEN", token.trim())
        .status()
        .with_context(|| format!("running {} in the lab network", command[0]))?;
    if !status.success() {
        bail!("{} exited with {status}", command.join(" "));
    }
    Ok(())
}
