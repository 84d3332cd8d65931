//! `kiln node deploy|undeploy|inspect|clean|manage|provide|wait|provision|maintenance` and
//! `kiln build ramdisk`: provisioning requests, and following nodes until they get there.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_client::{Client, encode};
use kiln_types::ProvisionState;
use kiln_types::provision::{CleanMode, DeployMode, DeployRequest, ProvisionStatus, RootDeviceHints};

use crate::output::{OutputFormat, print, table};
use crate::transfer::human_bytes;

#[derive(Debug, clap::Args)]
pub(crate) struct DeployArgs {
    #[arg(required = true)]
    nodes: Vec<String>,
    /// IMAGE or IMAGE:VERSION (a number or a tag) [default version: the highest].
    #[arg(long)]
    image: String,
    #[arg(long, value_enum, default_value = "disk")]
    mode: ModeArg,
    /// Which disk to write: name=vda, serial=…, model=…, size=GiB (repeat; all must match).
    #[arg(long = "root-device-hint")]
    root_device_hints: Vec<String>,
    /// Become active only when the deployed system calls back (/boot/v1/phone-home).
    #[arg(long)]
    wait_for_callback: bool,
    /// Start at this time: RFC 3339 (2026-12-01T08:00:00Z) or from now (+90s, +30m, +2h, +1d).
    #[arg(long = "at", value_parser = parse_time)]
    start_at: Option<jiff::Timestamp>,
    /// End the reservation at this time (same forms): the node is undeployed and cleaned.
    #[arg(long = "until", value_parser = parse_time)]
    end_at: Option<jiff::Timestamp>,
    #[command(flatten)]
    wait: WaitFlags,
}

/// An RFC 3339 time, or `+N` seconds, minutes, hours or days from now.
fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    if let Some(relative) = text.strip_prefix('+') {
        let split = relative.find(|c: char| !c.is_ascii_digit()).unwrap_or(relative.len());
        let (number, unit) = relative.split_at(split);
        let number: i64 = number.parse().map_err(|_| format!("'{text}': expected +N followed by s, m, h or d"))?;
        let seconds = match unit {
            "s" | "" => number,
            "m" => number * 60,
            "h" => number * 3600,
            "d" => number * 86400,
            _ => return Err(format!("'{text}': the unit must be s, m, h or d")),
        };
        return jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(seconds)).map_err(|error| error.to_string());
    }
    text.parse().map_err(|error| format!("'{text}': not an RFC 3339 time such as 2026-12-01T08:00:00Z ({error})"))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// Write the image to the node's disk.
    Disk,
    /// Boot the image's root from RAM.
    Live,
    /// Boot from a copy-on-write clone of the image's disk, served over the network.
    Network,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WaitFlags {
    /// Follow the nodes until they are done, with their progress.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NodesWithWait {
    #[arg(required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CleanArgs {
    #[arg(required = true)]
    nodes: Vec<String>,
    /// Erase every block rather than signatures and partition tables.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CaptureArgs {
    node: String,
    /// The image to add a version to (yours to change).
    #[arg(long)]
    image: String,
    #[command(flatten)]
    wait: WaitFlags,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WaitArgs {
    #[arg(required = true)]
    nodes: Vec<String>,
    /// The state to wait for.
    #[arg(long)]
    state: String,
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub(crate) struct MaintenanceArgs {
    #[arg(value_enum)]
    switch: OnOff,
    #[arg(required = true)]
    nodes: Vec<String>,
}

/// Where a request is done, and where it failed.
fn outcome_states(request: &str) -> (&'static [ProvisionState], &'static [ProvisionState]) {
    use ProvisionState::*;
    match request {
        "deploy" => (&[Active], &[DeployFailed]),
        "undeploy" | "clean" => (&[Available, Manageable], &[CleanFailed]),
        "inspect" => (&[Manageable, Available], &[InspectFailed]),
        "manage" => (&[Manageable], &[]),
        "capture" | "snapshot" => (&[Active], &[]),
        // An aborted operation ends in its failure state (a capture back in active).
        "abort" => (&[DeployFailed, CleanFailed, InspectFailed, Active], &[]),
        _ => (&[Available], &[]),
    }
}

/// Sends `request` for every node; with `--wait`, follows them to the end.
pub(crate) async fn request(
    client: &Client,
    format: OutputFormat,
    request: &str,
    nodes: &[String],
    body: serde_json::Value,
    wait: Option<&WaitFlags>,
) -> anyhow::Result<()> {
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    for node in nodes {
        match client.post::<_, ProvisionStatus>(&format!("/v1/nodes/{}/{request}", encode(node)), &body).await {
            Ok(status) => accepted.push(status),
            Err(error) => errors.push(format!("{node}: {error}")),
        }
    }
    for error in &errors {
        eprintln!("{error}");
    }
    match wait.filter(|flags| flags.wait) {
        Some(flags) => {
            let names: Vec<String> = accepted.iter().map(|status| status.node.clone()).collect();
            let (done, failed) = outcome_states(request);
            follow(client, format, &names, done, failed, Duration::from_secs(flags.timeout)).await?;
        }
        None => print(format, &accepted, || status_table(&accepted))?,
    }
    if !errors.is_empty() {
        bail!("{} of {} requests refused", errors.len(), nodes.len());
    }
    Ok(())
}

/// A request without a body (undeploy, inspect, manage, provide).
pub(crate) async fn simple(client: &Client, format: OutputFormat, verb: &str, args: NodesWithWait) -> anyhow::Result<()> {
    request(client, format, verb, &args.nodes, serde_json::Value::Null, Some(&args.wait)).await
}

pub(crate) async fn deploy(client: &Client, format: OutputFormat, args: DeployArgs) -> anyhow::Result<()> {
    let mut hints = RootDeviceHints::default();
    for hint in &args.root_device_hints {
        hints.add_from_text(hint).map_err(anyhow::Error::msg)?;
    }
    let body = DeployRequest {
        image: args.image,
        mode: match args.mode {
            ModeArg::Disk => DeployMode::Disk,
            ModeArg::Live => DeployMode::Live,
            ModeArg::Network => DeployMode::Network,
        },
        root_device_hints: hints,
        wait_for_callback: args.wait_for_callback,
        start_at: args.start_at,
        end_at: args.end_at,
    };
    request(client, format, "deploy", &args.nodes, serde_json::to_value(body)?, Some(&args.wait)).await
}

/// `capture` or `snapshot`: the node's disk into a new version of an image.
pub(crate) async fn capture(client: &Client, format: OutputFormat, action: &str, args: CaptureArgs) -> anyhow::Result<()> {
    let body = serde_json::json!({ "image": args.image });
    request(client, format, action, std::slice::from_ref(&args.node), body, Some(&args.wait)).await?;
    if args.wait.wait {
        let status: ProvisionStatus = client.get(&format!("/v1/nodes/{}/provision", encode(&args.node))).await?;
        if let Some(error) = status.last_error {
            bail!("the {action} failed: {error}");
        }
    }
    Ok(())
}

pub(crate) async fn clean(client: &Client, format: OutputFormat, args: CleanArgs) -> anyhow::Result<()> {
    let mode = if args.full { CleanMode::Full } else { CleanMode::Fast };
    request(client, format, "clean", &args.nodes, serde_json::json!({ "mode": mode }), Some(&args.wait)).await
}

pub(crate) async fn wait(client: &Client, format: OutputFormat, args: WaitArgs) -> anyhow::Result<()> {
    let state: ProvisionState = args.state.parse().map_err(anyhow::Error::msg)?;
    use ProvisionState::*;
    let failed: &[ProvisionState] = &[DeployFailed, CleanFailed, InspectFailed];
    let wanted = [state];
    follow(client, format, &args.nodes, &wanted, failed, Duration::from_secs(args.timeout)).await
}

pub(crate) async fn status(client: &Client, format: OutputFormat, node: &str) -> anyhow::Result<()> {
    let status: ProvisionStatus = client.get(&format!("/v1/nodes/{}/provision", encode(node))).await?;
    print(format, &status, || status_table(std::slice::from_ref(&status)))
}

/// `kiln node reservations`: who holds which node when.
pub(crate) async fn reservations(client: &Client, format: OutputFormat) -> anyhow::Result<()> {
    let reservations: Vec<kiln_types::provision::Reservation> = client.get("/v1/reservations").await?;
    print(format, &reservations, || {
        let rows: Vec<Vec<String>> = reservations
            .iter()
            .map(|reservation| {
                vec![
                    reservation.node.clone(),
                    reservation.project.clone().unwrap_or_default(),
                    format!("{}:{}", reservation.image, reservation.version),
                    reservation.start_at.map(|at| at.to_string()).unwrap_or_else(|| "now".to_owned()),
                    reservation.end_at.map(|at| at.to_string()).unwrap_or_else(|| "until undeployed".to_owned()),
                    if reservation.pending { "waiting".to_owned() } else { reservation.provision_state.to_string() },
                ]
            })
            .collect();
        table(&["NODE", "PROJECT", "IMAGE", "FROM", "TO", "STATE"], rows)
    })
}

pub(crate) async fn maintenance(client: &Client, args: MaintenanceArgs) -> anyhow::Result<()> {
    let on = matches!(args.switch, OnOff::On);
    for node in &args.nodes {
        let _: serde_json::Value = client.patch(&format!("/v1/nodes/{}", encode(node)), &serde_json::json!({ "maintenance": on })).await?;
        eprintln!("{node}: maintenance {}", if on { "on" } else { "off" });
    }
    Ok(())
}

fn describe(status: &ProvisionStatus) -> String {
    let mut text = status.provision_state.to_string();
    if let Some(step) = &status.step {
        text.push_str(&format!(" ({step})"));
    }
    if let Some(progress) = &status.progress {
        let total = progress.bytes_total.map(|total| format!(" of {}", human_bytes(total))).unwrap_or_default();
        let rate = progress.rate.map(|rate| format!(", {}/s", human_bytes(rate))).unwrap_or_default();
        text.push_str(&format!(" {} {}{total}{rate}", progress.phase, human_bytes(progress.bytes_done)));
    }
    if let Some(error) = &status.last_error {
        text.push_str(&format!(": {error}"));
    }
    text
}

fn status_table(statuses: &[ProvisionStatus]) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            vec![
                status.node.clone(),
                status.provision_state.to_string(),
                status.step.map(|step| step.to_string()).unwrap_or_default(),
                status.pending.as_ref().map(|intent| intent.name().to_owned()).unwrap_or_default(),
                status.target.as_ref().map(|t| format!("{}:{} ({})", t.image, t.version, t.mode.as_str())).unwrap_or_default(),
                status.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NODE", "STATE", "STEP", "PENDING", "IMAGE", "ERROR"], rows)
}

/// Polls the nodes until each is in one of `done` (success) or `failed`, showing changes:
/// a line per change, or live progress bars on a terminal.
async fn follow(
    client: &Client,
    format: OutputFormat,
    nodes: &[String],
    done: &[ProvisionState],
    failed: &[ProvisionState],
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut shown: BTreeMap<String, (String, Option<indicatif::ProgressBar>)> = BTreeMap::new();
    let mut finals: BTreeMap<String, ProvisionStatus> = BTreeMap::new();
    let mut first = true;
    loop {
        for node in nodes {
            if finals.contains_key(node) {
                continue;
            }
            let status: ProvisionStatus =
                client.get(&format!("/v1/nodes/{}/provision", encode(node))).await.with_context(|| format!("following {node}"))?;
            // A request not yet taken up still shows the old state: not an outcome.
            let settled = status.pending.is_none() && !first;
            let text = describe(&status);
            let entry = shown.entry(node.clone()).or_insert_with(|| {
                let bar = terminal.then(|| {
                    let bar = bars.add(indicatif::ProgressBar::new(100));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg}")
                            .expect("a valid template")
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(node.clone());
                    bar
                });
                (String::new(), bar)
            });
            if entry.0 != text {
                entry.0 = text.clone();
                match &entry.1 {
                    Some(bar) => {
                        if let Some(progress) = &status.progress
                            && let Some(total) = progress.bytes_total.filter(|t| *t > 0)
                        {
                            bar.set_position(progress.bytes_done * 100 / total);
                        }
                        bar.set_message(text);
                    }
                    None => eprintln!("{node}: {text} [{:.0} s]", started.elapsed().as_secs_f64()),
                }
            }
            if settled && (done.contains(&status.provision_state) || failed.contains(&status.provision_state)) {
                if let Some(bar) = &entry.1 {
                    bar.set_position(100);
                    bar.finish();
                }
                finals.insert(node.clone(), status);
            }
        }
        first = false;
        if finals.len() == nodes.len() {
            break;
        }
        if started.elapsed() > timeout {
            bail!("gave up after {} s: {} of {} nodes not done", timeout.as_secs(), nodes.len() - finals.len(), nodes.len());
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let statuses: Vec<ProvisionStatus> = finals.into_values().collect();
    print(format, &statuses, || status_table(&statuses))?;
    let failures: Vec<&ProvisionStatus> = statuses.iter().filter(|s| failed.contains(&s.provision_state)).collect();
    if !failures.is_empty() {
        bail!("{} of {} nodes failed", failures.len(), statuses.len());
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BuildCommand {
    /// The deploy ramdisk: the host's kernel, busybox, drivers and kiln-agent, stored as a
    /// public image (default kiln-deploy-ramdisk) that nodes boot to be provisioned.
    Ramdisk(RamdiskArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RamdiskArgs {
    /// The kernel [default: the newest /boot/vmlinuz-*].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The agent binary [default: kiln-agent beside this kiln].
    #[arg(long)]
    agent: Option<PathBuf>,
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// A kernel module to add (repeat).
    #[arg(long = "module")]
    modules: Vec<String>,
    /// Where the kernel and initramfs are written [default: a temporary directory].
    #[arg(long)]
    output: Option<PathBuf>,
    /// The image the ramdisk is stored as.
    #[arg(long, default_value = "kiln-deploy-ramdisk")]
    image: String,
    /// Only write the files.
    #[arg(long)]
    no_upload: bool,
}

pub(crate) async fn build(client: Option<&Client>, format: OutputFormat, command: BuildCommand) -> anyhow::Result<()> {
    let BuildCommand::Ramdisk(args) = command;
    let (host_kernel, modules) = kiln_image_build::ramdisk::host_kernel()?;
    let kernel = args.kernel.unwrap_or(host_kernel);
    let agent = match args.agent {
        Some(agent) => agent,
        None => std::env::current_exe().context("finding this program")?.with_file_name("kiln-agent"),
    };
    let temporary = tempfile::tempdir()?;
    let output = args.output.unwrap_or_else(|| temporary.path().to_owned());
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let (kernel_out, initrd_out) = (output.join("kiln-deploy.kernel"), output.join("kiln-deploy.initramfs"));
    let spec = kiln_image_build::ramdisk::RamdiskSpec { kernel, modules, agent, busybox: args.busybox, extra_modules: args.modules };
    let started = Instant::now();
    kiln_image_build::ramdisk::build_ramdisk(&spec, &kernel_out, &initrd_out).context("building the deploy ramdisk")?;
    eprintln!(
        "built {} ({}) and {} ({}) in {:.1} s",
        kernel_out.display(),
        human_bytes(std::fs::metadata(&kernel_out)?.len()),
        initrd_out.display(),
        human_bytes(std::fs::metadata(&initrd_out)?.len()),
        started.elapsed().as_secs_f64()
    );
    if args.no_upload {
        return Ok(());
    }
    let client = client.context("uploading needs a server: --server/KILN_URL and a token")?;
    // The server boots the ramdisk image without a project; an administrator's bare name
    // could also find a project's image of that name, which is not it.
    let exists =
        client.get::<serde_json::Value>(&format!("/v1/images/{}", encode(&args.image))).await.is_ok_and(|image| image["project"].is_null());
    if !exists {
        let input = serde_json::json!({ "name": args.image, "visibility": "public", "description": "Kiln deploy ramdisk (kiln-agent)" });
        let _: serde_json::Value = client.post("/v1/images", &input).await.context("creating the ramdisk image")?;
    }
    let files = [(kiln_types::image::ArtifactKind::Kernel, kernel_out), (kiln_types::image::ArtifactKind::Initrd, initrd_out)];
    let version = crate::transfer::upload_artifacts(client, &args.image, &files, "kiln build ramdisk").await?;
    print(format, &version, || format!("stored as {}:{}\n", version.image, version.version))
}
