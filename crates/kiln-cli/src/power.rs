//! `kiln node power|boot-device|virtual-media|facts`: BMC operations on nodes, power on several
//! at once.

use clap::ValueEnum;
use futures::StreamExt as _;
use kiln_client::{Client, encode};
use kiln_types::bmc::{
    BootDevice, BootDeviceRequest, BootMode, PowerAction, PowerRequest, PowerStatus, SystemFacts, VirtualMediaRequest, VirtualMediaStatus,
};

use crate::output::{OutputFormat, print, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PowerVerb {
    On,
    Off,
    ForceOff,
    Reset,
    Cycle,
    Status,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PowerArgs {
    #[arg(value_enum)]
    verb: PowerVerb,
    #[arg(required = true)]
    nodes: Vec<String>,
    /// BMCs talked to at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceArg {
    Pxe,
    Disk,
    Cd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    Bios,
    Uefi,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BootDeviceArgs {
    node: String,
    #[arg(value_enum)]
    device: DeviceArg,
    /// For the next boot only.
    #[arg(long)]
    once: bool,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
}

#[derive(Debug, serde::Serialize)]
struct Outcome {
    node: String,
    #[serde(flatten)]
    status: Option<PowerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the verb on every node, `concurrency` at a time; one failing BMC does not stop the
/// others. Fails at the end if any did.
pub(crate) async fn power(client: &Client, format: OutputFormat, args: PowerArgs) -> anyhow::Result<()> {
    let action = match args.verb {
        PowerVerb::On => Some(PowerAction::On),
        PowerVerb::Off => Some(PowerAction::Off),
        PowerVerb::ForceOff => Some(PowerAction::ForceOff),
        PowerVerb::Reset => Some(PowerAction::Reset),
        PowerVerb::Cycle => Some(PowerAction::Cycle),
        PowerVerb::Status => None,
    };
    let outcomes: Vec<Outcome> = futures::stream::iter(args.nodes.iter().cloned())
        .map(|node| async move {
            let path = format!("/v1/nodes/{}/power", encode(&node));
            let result = match action {
                Some(action) => client.post::<_, PowerStatus>(&path, &PowerRequest { action }).await,
                None => client.get::<PowerStatus>(&path).await,
            };
            match result {
                Ok(status) => Outcome { node, status: Some(status), error: None },
                Err(error) => Outcome { node, status: None, error: Some(error.to_string()) },
            }
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let failed = outcomes.iter().filter(|outcome| outcome.error.is_some()).count();
    print(format, &outcomes, || {
        let rows = outcomes
            .iter()
            .map(|outcome| {
                vec![
                    outcome.node.clone(),
                    outcome.status.as_ref().map_or("-", |status| status.power_state.as_str()).to_owned(),
                    outcome.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(&["node", "power", "error"], rows)
    })?;
    if failed > 0 {
        for outcome in &outcomes {
            if let Some(error) = &outcome.error {
                eprintln!("kiln: {}: {error}", outcome.node);
            }
        }
        anyhow::bail!("{failed} of {} nodes failed", outcomes.len());
    }
    Ok(())
}

pub(crate) async fn boot_device(client: &Client, args: BootDeviceArgs) -> anyhow::Result<()> {
    let request = BootDeviceRequest {
        device: match args.device {
            DeviceArg::Pxe => BootDevice::Pxe,
            DeviceArg::Disk => BootDevice::Disk,
            DeviceArg::Cd => BootDevice::Cd,
        },
        once: args.once,
        mode: args.mode.map(|mode| match mode {
            ModeArg::Bios => BootMode::Bios,
            ModeArg::Uefi => BootMode::Uefi,
        }),
    };
    client.put::<_, serde_json::Value>(&format!("/v1/nodes/{}/boot-device", encode(&args.node)), &request).await?;
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum VirtualMediaCommand {
    /// Have the BMC fetch an ISO by URL and show it to the node as a CD.
    Insert {
        node: String,
        /// An http:// or https:// URL the BMC can reach.
        image: String,
        /// Also boot from the CD next time, only then.
        #[arg(long)]
        boot_once: bool,
    },
    /// Empty the node's virtual CD drive.
    Eject { node: String },
    /// What is in the node's virtual CD drive.
    Status { node: String },
}

pub(crate) async fn virtual_media(client: &Client, format: OutputFormat, command: VirtualMediaCommand) -> anyhow::Result<()> {
    let status: VirtualMediaStatus = match command {
        VirtualMediaCommand::Insert { node, image, boot_once } => {
            client.put(&format!("/v1/nodes/{}/virtual-media", encode(&node)), &VirtualMediaRequest { image, boot_once }).await?
        }
        VirtualMediaCommand::Eject { node } => {
            client.delete::<serde_json::Value>(&format!("/v1/nodes/{}/virtual-media", encode(&node))).await?;
            return Ok(());
        }
        VirtualMediaCommand::Status { node } => client.get(&format!("/v1/nodes/{}/virtual-media", encode(&node))).await?,
    };
    print(format, &status, || {
        let rows = vec![vec![
            status.node.clone(),
            status.device.clone(),
            status.media_types.join(","),
            if status.inserted { "yes" } else { "no" }.to_owned(),
            status.image.clone().unwrap_or_default(),
        ]];
        table(&["node", "device", "media", "inserted", "image"], rows)
    })
}

pub(crate) async fn facts(client: &Client, format: OutputFormat, node: &str) -> anyhow::Result<()> {
    let facts: SystemFacts = client.get(&format!("/v1/nodes/{}/bmc/facts", encode(node))).await?;
    print(format, &facts, || {
        let macs = facts.macs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let rows = vec![
            vec!["manufacturer".to_owned(), facts.manufacturer.clone().unwrap_or_default()],
            vec!["model".to_owned(), facts.model.clone().unwrap_or_default()],
            vec!["serial".to_owned(), facts.serial_number.clone().unwrap_or_default()],
            vec!["uuid".to_owned(), facts.uuid.clone().unwrap_or_default()],
            vec!["macs".to_owned(), macs],
            vec!["processors".to_owned(), facts.processors.map(|count| count.to_string()).unwrap_or_default()],
            vec!["memory GiB".to_owned(), facts.memory_gib.map(|gib| gib.to_string()).unwrap_or_default()],
        ];
        table(&["fact", "value"], rows)
    })
}

#[derive(Debug, clap::Args)]
pub(crate) struct RedfishDiscoveryArgs {
    /// HOST, HOST:PORT or HOST:FIRST-LAST; repeat for more.
    #[arg(long = "targets", required = true, num_args = 1..)]
    targets: Vec<String>,
    #[arg(long)]
    username: Option<String>,
    /// The BMCs' password (or KILN_BMC_PASSWORD, which keeps it out of the process list).
    #[arg(long, env = "KILN_BMC_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Accept any TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// https or http.
    #[arg(long, default_value = "https")]
    scheme: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds one target may take.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// `kiln discover redfish`: the server scans, enrols and reports.
pub(crate) async fn discover_redfish(client: &Client, format: OutputFormat, args: RedfishDiscoveryArgs) -> anyhow::Result<()> {
    let input = kiln_types::bmc::RedfishDiscoveryInput {
        targets: args.targets,
        username: args.username,
        password: args.password,
        insecure: args.insecure,
        scheme: Some(args.scheme),
        concurrency: Some(args.concurrency),
        timeout_seconds: Some(args.timeout),
    };
    let report: kiln_types::bmc::RedfishDiscoveryReport = client.post("/v1/discover/redfish", &input).await?;
    print(format, &report, || {
        let mut text = format!(
            "{} targets: {} Redfish services, {} systems, {} with nothing listening\ncreated: {}\nupdated: {}\nunchanged: {}\n",
            report.targets,
            report.services,
            report.systems,
            report.absent,
            report.created.join(" "),
            report.updated.join(" "),
            report.unchanged.join(" "),
        );
        for failure in &report.failures {
            text.push_str(&format!("failed: {}: {}\n", failure.target, failure.error));
        }
        text
    })
}

/// `kiln node console`: prints the node's kept console output, then (with `follow`) what
/// comes after, asking from the last offset every half second; or types `send`.
pub(crate) async fn console(client: &Client, node: &str, follow: bool, send: Option<String>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use base64::Engine as _;
    use std::io::Write as _;
    let path = format!("/v1/nodes/{}/console", encode(node));
    if let Some(text) = send {
        // `\r` typed on the command line stands for the Enter key.
        let text = text.replace("\\r", "\r").replace("\\n", "\n");
        client.post::<_, serde_json::Value>(&path, &kiln_types::api::ConsoleInput { text }).await.context("typing on the console")?;
        return Ok(());
    }
    let mut after: Option<u64> = None;
    loop {
        let query = after.map(|offset| format!("?after={offset}")).unwrap_or_default();
        let output: kiln_types::api::ConsoleOutput = client.get(&format!("{path}{query}")).await.context("reading the console")?;
        if output.truncated {
            eprintln!("kiln: [console output between offsets {} and {} was dropped]", after.unwrap_or(0), output.start);
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(&output.data).context("decoding console output")?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes).context("writing the console output")?;
        stdout.flush().context("writing the console output")?;
        drop(stdout);
        if !follow {
            return Ok(());
        }
        after = Some(output.end);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
