//! `kiln cloud-init …`: cluster defaults, group configs and per-node data, in the shapes and
//! with the commands of OpenCHAMI's `ochami cloud-init`.

use anyhow::bail;
use clap::Subcommand;
use kiln_client::{Client, encode};
use kiln_types::cloud_init::{CloudInitDefaults, CloudInitGroup, CloudInitNode, CloudInitToken};
use serde_json::{Map, Value};

use crate::DataArgs;
use crate::output::{OutputFormat, Tabular, or_dash, print, print_rows, table};

#[derive(Debug, Subcommand)]
pub(crate) enum CloudInitCommand {
    /// Cluster-wide meta-data (ci-defaults.yaml).
    #[command(subcommand)]
    Defaults(DefaultsCommand),
    /// Group configs: meta-data and a cloud-config file per group.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Per-node meta-data, secrets and tokens, and what a node is served.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DefaultsCommand {
    Get,
    /// Replace the defaults (administrators).
    Set(DataArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Groups with a cloud-init config.
    List,
    /// Set group configs from a list (ci-group-*.yaml); missing groups are created.
    Set {
        #[command(flatten)]
        data: DataArgs,
        /// The project that owns groups this creates (entries may name their own).
        #[arg(long)]
        project: Option<String>,
    },
    /// Show groups: `get GROUP…`, or only their cloud-config with `get config GROUP…`.
    Get {
        #[arg(required = true, value_name = "[config|meta-data] GROUP")]
        args: Vec<String>,
    },
    /// Remove a group's config (the group stays).
    Delete { group: String },
    /// Preview the group's cloud-config as cloud-init on NODE renders it.
    Render { group: String, node: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Set node data from a list: [{"id": NODE, "local-hostname": …, "secret-data": {…}}].
    Set(DataArgs),
    /// Show what nodes are served (`meta-data`, `vendor-data`) or their stored overrides (`data`).
    Get {
        #[arg(value_enum)]
        what: NodePart,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Mint the node's token for /cloud-init-secure/, replacing any earlier one; shown once.
    Token { node: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NodePart {
    MetaData,
    VendorData,
    Data,
}

impl Tabular for CloudInitGroup {
    fn headers() -> &'static [&'static str] {
        &["name", "description", "project", "meta-data keys", "file"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.description.clone(),
            or_dash(&self.project),
            self.meta_data.keys().cloned().collect::<Vec<_>>().join(","),
            self.file.as_ref().map_or_else(|| "-".to_owned(), |file| format!("{} bytes", file.content.len())),
        ]
    }
}

impl Tabular for CloudInitNode {
    fn headers() -> &'static [&'static str] {
        &["node", "meta-data", "secrets", "token"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            serde_json::to_string(&self.meta_data).unwrap_or_default(),
            if self.secret_keys.is_empty() { "-".to_owned() } else { self.secret_keys.join(",") },
            if self.has_token { "minted" } else { "-" }.to_owned(),
        ]
    }
}

/// Documents that have no table shape print as YAML by default.
fn document_format(format: OutputFormat) -> OutputFormat {
    if format == OutputFormat::Table { OutputFormat::Yaml } else { format }
}

/// A single document or a list of them, as the API takes lists.
fn as_list(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => vec![other],
    }
}

pub(crate) async fn cloud_init(client: &Client, format: OutputFormat, command: CloudInitCommand) -> anyhow::Result<()> {
    match command {
        CloudInitCommand::Defaults(DefaultsCommand::Get) => {
            let defaults: CloudInitDefaults = client.get("/v1/cloud-init/defaults").await?;
            print(document_format(format), &defaults, String::new)
        }
        CloudInitCommand::Defaults(DefaultsCommand::Set(data)) => {
            let defaults: CloudInitDefaults = client.put("/v1/cloud-init/defaults", &data.read()?).await?;
            print(document_format(format), &defaults, String::new)
        }
        CloudInitCommand::Group(command) => group(client, format, command).await,
        CloudInitCommand::Node(command) => node(client, format, command).await,
    }
}

async fn group(client: &Client, format: OutputFormat, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => print_rows(format, &client.get::<Vec<CloudInitGroup>>("/v1/cloud-init/groups").await?),
        GroupCommand::Set { data, project } => {
            let mut entries = as_list(data.read()?);
            if let Some(project) = project {
                for entry in &mut entries {
                    if let Value::Object(map) = entry {
                        map.entry("project").or_insert_with(|| Value::String(project.clone()));
                    }
                }
            }
            let groups: Vec<CloudInitGroup> = client.post("/v1/cloud-init/groups", &entries).await?;
            print_rows(format, &groups)
        }
        GroupCommand::Get { args } => {
            let (part, names) = match args.first().map(String::as_str) {
                Some(part @ ("config" | "meta-data")) if args.len() > 1 => (Some(part.to_owned()), &args[1..]),
                _ => (None, &args[..]),
            };
            let mut groups = Vec::with_capacity(names.len());
            for name in names {
                groups.push(client.get::<CloudInitGroup>(&format!("/v1/cloud-init/groups/{}", encode(name))).await?);
            }
            match part.as_deref() {
                // The file itself, as cloud-init will read it.
                Some("config") => {
                    for group in &groups {
                        match &group.file {
                            Some(file) => print!("{}", file.content),
                            None => bail!("group '{}' has no cloud-config file", group.name),
                        }
                    }
                    Ok(())
                }
                Some(_) => {
                    let meta: Vec<&Map<String, Value>> = groups.iter().map(|group| &group.meta_data).collect();
                    print(document_format(format), &meta, String::new)
                }
                None => print_rows(format, &groups),
            }
        }
        GroupCommand::Delete { group } => {
            client.delete::<Value>(&format!("/v1/cloud-init/groups/{}", encode(&group))).await?;
            Ok(())
        }
        GroupCommand::Render { group, node } => {
            let text = client.get_text(&format!("/v1/cloud-init/groups/{}/render/{}", encode(&group), encode(&node))).await?;
            print!("{text}");
            Ok(())
        }
    }
}

async fn node(client: &Client, format: OutputFormat, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Set(data) => {
            let nodes: Vec<CloudInitNode> = client.post("/v1/cloud-init/nodes", &as_list(data.read()?)).await?;
            print_rows(format, &nodes)
        }
        NodeCommand::Get { what: NodePart::MetaData, nodes } => {
            let mut documents = Vec::with_capacity(nodes.len());
            for node in &nodes {
                documents.push(client.get::<Map<String, Value>>(&format!("/v1/cloud-init/nodes/{}/meta-data", encode(node))).await?);
            }
            print(document_format(format), &documents, String::new)
        }
        NodeCommand::Get { what: NodePart::VendorData, nodes } => {
            for node in &nodes {
                print!("{}", client.get_text(&format!("/v1/cloud-init/nodes/{}/vendor-data", encode(node))).await?);
            }
            Ok(())
        }
        NodeCommand::Get { what: NodePart::Data, nodes } => {
            let mut found = Vec::with_capacity(nodes.len());
            for node in &nodes {
                found.push(client.get::<CloudInitNode>(&format!("/v1/cloud-init/nodes/{}", encode(node))).await?);
            }
            print_rows(format, &found)
        }
        NodeCommand::Token { node } => {
            let minted: CloudInitToken = client.post(&format!("/v1/cloud-init/nodes/{}/token", encode(&node)), &Value::Null).await?;
            print(format, &minted, || {
                table(&["node", "token", "seed url"], vec![vec![minted.node.clone(), minted.token.clone(), minted.seed_url.clone()]])
            })
        }
    }
}
