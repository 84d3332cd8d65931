//! `kiln`: the server (`kiln serve`) and the command-line client for its API.

mod cloud_init;
mod commands;
mod elements;
mod image_build;
mod images;
mod input;
mod lab;
mod output;
mod power;
mod provision;
mod serve;
mod transfer;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::input::InputFormat;
use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "Bare-metal provisioning and image management", propagate_version = true)]
pub struct Cli {
    /// The server's URL [default: from the client config file, else http://127.0.0.1:8080]
    #[arg(long = "server", env = "KILN_URL", global = true)]
    server: Option<String>,
    /// The API token [default: from the client config file]
    #[arg(long, env = "KILN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(short = 'F', long = "format", value_enum, default_value = "table", global = true)]
    format: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServerFlags),
    /// Validate the server configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Nodes: the machines Kiln manages.
    #[command(subcommand)]
    Node(commands::NodeCommand),
    /// Groups of nodes.
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// Projects (tenants).
    #[command(subcommand)]
    Project(commands::ProjectCommand),
    /// Users.
    #[command(subcommand)]
    User(commands::UserCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Add nodes to the inventory.
    #[command(subcommand)]
    Discover(commands::DiscoverCommand),
    /// Network boot: boot parameters.
    #[command(subcommand)]
    Boot(commands::BootCommand),
    /// Cloud-init: defaults, group configs, node data, and what nodes are served.
    #[command(subcommand, name = "cloud-init")]
    CloudInit(cloud_init::CloudInitCommand),
    /// diskimage-builder elements: `kiln element info` (local, no server).
    #[command(subcommand)]
    Element(elements::ElementCommand),
    /// Images: versions, uploads, downloads, imports, clones.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Build artifacts: the deploy ramdisk.
    #[command(subcommand)]
    Build(provision::BuildCommand),
    /// The change log.
    Events(commands::EventsArgs),
    /// Kiln at work on this machine: a lab network, a server and two QEMU machines (root).
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Show who the token belongs to.
    Whoami,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the validated configuration, or what is wrong with it.
    Check(ServerFlags),
}

/// Settings for `kiln serve`; each overrides `KILN_*` variables, which override the file.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerFlags {
    /// A TOML configuration file.
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database, secret key and blobs live [default: ./kiln-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The API's listening address [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// sqlite://PATH or postgres://… [default: sqlite://<data-dir>/kiln.db]
    #[arg(long)]
    database_url: Option<String>,
    /// The URL nodes use to reach this server [default: from --listen]
    #[arg(long)]
    public_url: Option<String>,
}

/// `-f FORMAT -d DATA`, the ochami way of passing a document.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// The format of the data.
    #[arg(short = 'f', long = "input-format", value_enum, default_value = "yaml")]
    input_format: InputFormat,
    /// @FILE, - for standard input, or the document itself.
    #[arg(short = 'd', long = "data", allow_hyphen_values = true)]
    data: String,
}

impl DataArgs {
    pub fn read(&self) -> anyhow::Result<serde_json::Value> {
        input::read_document(self.input_format, &self.data)
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    // `KILN_LOG` as `debug` or `info,kiln_api=debug`: targets and levels (tracing's
    // `Targets`, which needs no regex engine in the binary).
    let default_level = if serving { "info" } else { "warn" };
    let filter = std::env::var("KILN_LOG")
        .ok()
        .and_then(|text| text.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| default_level.parse().expect("a level parses as a filter"));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a person at a terminal; plain text for files and journald.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(flags) => serve::serve(&flags).await,
        Command::Config(ConfigCommand::Check(flags)) => serve::check(&flags, cli.format),
        Command::Element(command) => elements::element(cli.format, command),
        Command::Lab(command) => lab::lab(command).await,
        command => {
            let client = commands::client(cli.server, cli.token)?;
            let format = cli.format;
            match command {
                Command::Node(command) => commands::node(&client, format, command).await,
                Command::Group(command) => commands::group(&client, format, command).await,
                Command::Project(command) => commands::project(&client, format, command).await,
                Command::User(command) => commands::user(&client, format, command).await,
                Command::Token(command) => commands::token(&client, format, command).await,
                Command::Discover(command) => commands::discover(&client, format, command).await,
                Command::Boot(command) => commands::boot(&client, format, command).await,
                Command::Image(command) => images::image(&client, format, command).await,
                Command::Build(command) => provision::build(Some(&client), format, command).await,
                Command::CloudInit(command) => cloud_init::cloud_init(&client, format, command).await,
                Command::Events(args) => commands::events(&client, format, args).await,
                Command::Whoami => commands::whoami(&client, format).await,
                Command::Serve(_) | Command::Config(_) | Command::Element(_) | Command::Lab(_) => unreachable!("handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
