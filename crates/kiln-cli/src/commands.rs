//! The client commands: each turns its arguments into API calls and prints the answer.
//!
//! Why one file over 600 lines: it is the dispatch of every client command that is one API
//! call and a print; each arm is a few lines, and the commands with logic of their own
//! (images, power, provisioning, cloud-init, the lab) live in modules of their own.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use kiln_client::{Client, encode};
use kiln_types::api::{CreatedToken, DiscoverySummary, Event, Group, Page, Project, ProjectRole, Token, User, WhoAmI};
use kiln_types::node::Node;
use serde::Deserialize;

use crate::DataArgs;
use crate::output::{OutputFormat, Tabular, or_dash, print, print_one, print_rows, table};

/// What `~/.config/kiln/config.toml` may hold for the client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfigFile {
    url: Option<String>,
    token: Option<String>,
    /// A file holding the token (such as a server's `admin-token`).
    token_file: Option<std::path::PathBuf>,
}

/// Flags and `KILN_URL`/`KILN_TOKEN` first, then the client config file; `KILN_CA` names a CA
/// certificate to trust.
pub(crate) fn client(url: Option<String>, token: Option<String>) -> anyhow::Result<Client> {
    let path = dirs::config_dir().map(|dir| dir.join("kiln").join("config.toml"));
    let file = match &path {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        _ => ClientConfigFile::default(),
    };
    let url = url.or(file.url).unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let token = match (token, file.token, file.token_file) {
        (Some(token), _, _) | (None, Some(token), _) => Some(token),
        (None, None, Some(path)) => {
            Some(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
        }
        (None, None, None) => None,
    };
    let token = token.filter(|t| !t.is_empty());
    // A server with a certificate from Kiln's own CA: the CA's certificate to trust.
    match std::env::var_os("KILN_CA").filter(|path| !path.is_empty()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let pem = std::fs::read(&path).with_context(|| format!("reading KILN_CA ({})", path.display()))?;
            Client::with_ca(&url, token, &pem).with_context(|| format!("trusting KILN_CA ({})", path.display()))
        }
        None => Ok(Client::new(&url, token)),
    }
}

impl Tabular for Node {
    fn headers() -> &'static [&'static str] {
        &["name", "xname", "nid", "state", "project", "groups", "macs"]
    }

    fn row(&self) -> Vec<String> {
        let mut state = self.provision_state.to_string();
        if self.maintenance {
            state.push_str(" (maintenance)");
        }
        vec![
            self.name.clone(),
            or_dash(&self.xname),
            or_dash(&self.nid),
            state,
            or_dash(&self.project),
            self.groups.join(","),
            self.interfaces.iter().map(|i| i.mac_addr.to_string()).collect::<Vec<_>>().join(","),
        ]
    }
}

impl Tabular for Project {
    fn headers() -> &'static [&'static str] {
        &["name", "description", "created"]
    }

    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), self.description.clone(), self.created_at.to_string()]
    }
}

impl Tabular for User {
    fn headers() -> &'static [&'static str] {
        &["name", "admin", "projects"]
    }

    fn row(&self) -> Vec<String> {
        let projects = self.memberships.iter().map(|m| format!("{}:{}", m.project, m.role.as_str())).collect::<Vec<_>>();
        vec![self.name.clone(), self.admin.to_string(), projects.join(",")]
    }
}

impl Tabular for Token {
    fn headers() -> &'static [&'static str] {
        &["id", "name", "user", "expires", "revoked"]
    }

    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.name.clone(), self.user.clone(), or_dash(&self.expires_at), or_dash(&self.revoked_at)]
    }
}

impl Tabular for Group {
    fn headers() -> &'static [&'static str] {
        &["name", "project", "description", "members"]
    }

    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), or_dash(&self.project), self.description.clone(), self.members.join(",")]
    }
}

impl Tabular for Event {
    fn headers() -> &'static [&'static str] {
        &["id", "at", "actor", "action", "target"]
    }

    fn row(&self) -> Vec<String> {
        vec![self.id.to_string(), self.at.to_string(), self.actor.clone(), self.action.clone(), self.target.clone()]
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// List nodes (all pages unless --limit is given).
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one node by name, xname or id.
    Show { node: String },
    /// Create a node from a document (the shape of `kiln node show -F yaml`).
    Create(DataArgs),
    /// Change a node: the document lists only the fields to change.
    Update {
        node: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete nodes.
    Delete {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Give nodes to a project (administrators).
    Allocate {
        #[arg(long)]
        project: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Take nodes back from a project (administrators).
    Release {
        #[arg(long)]
        project: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Power on, off (soft), force-off, reset, cycle, or show status, through the BMCs.
    Power(crate::power::PowerArgs),
    /// Set the device the node boots from next: pxe, disk or cd.
    BootDevice(crate::power::BootDeviceArgs),
    /// The node's virtual CD drive, through its BMC (Redfish VirtualMedia): insert an image
    /// by URL, eject it, or show what is in.
    #[command(subcommand)]
    VirtualMedia(crate::power::VirtualMediaCommand),
    /// What the node's BMC says about the system (maker, model, serial, MACs…).
    Facts { node: String },
    /// The node's recent serial console output; with --follow, what comes next as it comes.
    Console {
        node: String,
        /// Keep printing new output until interrupted.
        #[arg(long)]
        follow: bool,
        /// Type this on the console (a line: end it with \r for Enter) instead of reading.
        #[arg(long)]
        send: Option<String>,
    },
    /// Deploy an image: to disk (written by the agent, then booted) or live (diskless).
    Deploy(crate::provision::DeployArgs),
    /// Take the image off: the disks are cleaned and the nodes become available.
    Undeploy(crate::provision::NodesWithWait),
    /// Stop the operation waiting on the nodes' agents (deploy, inspect, clean, capture): it
    /// ends in its failure state and the machine is powered off.
    Abort(crate::provision::NodesWithWait),
    /// Boot the agent to read the hardware into the nodes' properties.
    Inspect(crate::provision::NodesWithWait),
    /// Erase the disks (signatures and partition tables; everything with --full).
    Clean(crate::provision::CleanArgs),
    /// enroll → manageable.
    Manage(crate::provision::NodesWithWait),
    /// manageable → available.
    Provide(crate::provision::NodesWithWait),
    /// Wait until the nodes reach a state.
    Wait(crate::provision::WaitArgs),
    /// Read a deployed node's disk into a new version of an image.
    Capture(crate::provision::CaptureArgs),
    /// Turn a network-mode node's disk into a new version of an image: only what the node
    /// changed is stored (a layer over the version it runs); the node is powered off for it
    /// and boots again.
    Snapshot(crate::provision::CaptureArgs),
    /// A node's provisioning: state, step, progress, last error.
    Provision { node: String },
    /// Who holds which node when: deploys waiting for their start and deploys on nodes.
    Reservations,
    /// Pause (on) or resume (off) automation for nodes.
    Maintenance(crate::provision::MaintenanceArgs),
}

pub(crate) async fn node(client: &Client, format: OutputFormat, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Power(args) => crate::power::power(client, format, args).await,
        NodeCommand::BootDevice(args) => crate::power::boot_device(client, args).await,
        NodeCommand::VirtualMedia(command) => crate::power::virtual_media(client, format, command).await,
        NodeCommand::Facts { node } => crate::power::facts(client, format, &node).await,
        NodeCommand::Console { node, follow, send } => crate::power::console(client, &node, follow, send).await,
        NodeCommand::Deploy(args) => crate::provision::deploy(client, format, args).await,
        NodeCommand::Undeploy(args) => crate::provision::simple(client, format, "undeploy", args).await,
        NodeCommand::Abort(args) => crate::provision::simple(client, format, "abort", args).await,
        NodeCommand::Inspect(args) => crate::provision::simple(client, format, "inspect", args).await,
        NodeCommand::Clean(args) => crate::provision::clean(client, format, args).await,
        NodeCommand::Manage(args) => crate::provision::simple(client, format, "manage", args).await,
        NodeCommand::Provide(args) => crate::provision::simple(client, format, "provide", args).await,
        NodeCommand::Wait(args) => crate::provision::wait(client, format, args).await,
        NodeCommand::Provision { node } => crate::provision::status(client, format, &node).await,
        NodeCommand::Reservations => crate::provision::reservations(client, format).await,
        NodeCommand::Capture(args) => crate::provision::capture(client, format, "capture", args).await,
        NodeCommand::Snapshot(args) => crate::provision::capture(client, format, "snapshot", args).await,
        NodeCommand::Maintenance(args) => crate::provision::maintenance(client, args).await,
        NodeCommand::List { group, state, project, mac, limit } => {
            let mut query = Vec::new();
            for (key, value) in [("group", group), ("state", state), ("project", project), ("mac", mac)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", encode(&value)));
                }
            }
            // A page size: the list is read whole, page after page.
            query.push(format!("limit={}", limit.unwrap_or(1000).clamp(1, 1000)));
            let mut nodes = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut page_query = query.clone();
                if let Some(after) = &after {
                    page_query.push(format!("after={}", encode(after)));
                }
                let page: Page<Node> = client.get(&format!("/v1/nodes?{}", page_query.join("&"))).await?;
                nodes.extend(page.items);
                match page.next {
                    Some(next) if limit.is_none() => after = Some(next),
                    _ => break,
                }
            }
            print_rows(format, &nodes)
        }
        NodeCommand::Show { node } => {
            let node: Node = client.get(&format!("/v1/nodes/{}", encode(&node))).await?;
            print(format, &node, || node_details(&node))
        }
        NodeCommand::Create(data) => {
            let node: Node = client.post("/v1/nodes", &data.read()?).await?;
            print_one(format, &node)
        }
        NodeCommand::Update { node, data } => {
            let node: Node = client.patch(&format!("/v1/nodes/{}", encode(&node)), &data.read()?).await?;
            print_one(format, &node)
        }
        NodeCommand::Delete { nodes } => {
            for node in nodes {
                client
                    .delete::<serde_json::Value>(&format!("/v1/nodes/{}", encode(&node)))
                    .await
                    .with_context(|| format!("deleting {node}"))?;
            }
            Ok(())
        }
        NodeCommand::Allocate { project, nodes } => {
            let nodes: Vec<Node> =
                client.post(&format!("/v1/projects/{}/allocate", encode(&project)), &serde_json::json!({ "nodes": nodes })).await?;
            print_rows(format, &nodes)
        }
        NodeCommand::Release { project, nodes } => {
            let nodes: Vec<Node> =
                client.post(&format!("/v1/projects/{}/release", encode(&project)), &serde_json::json!({ "nodes": nodes })).await?;
            print_rows(format, &nodes)
        }
    }
}

fn node_details(node: &Node) -> String {
    let mut rows = vec![
        vec!["name".to_owned(), node.name.clone()],
        vec!["id".to_owned(), node.id.clone()],
        vec!["xname".to_owned(), or_dash(&node.xname)],
        vec!["nid".to_owned(), or_dash(&node.nid)],
        vec!["role".to_owned(), or_dash(&node.role)],
        vec!["project".to_owned(), or_dash(&node.project)],
        vec!["state".to_owned(), node.provision_state.to_string()],
        vec!["maintenance".to_owned(), node.maintenance.to_string()],
        vec!["groups".to_owned(), node.groups.join(",")],
    ];
    for interface in &node.interfaces {
        let ips = interface.ip_addrs.iter().map(|ip| format!("{}={}", ip.name, ip.ip_addr)).collect::<Vec<_>>().join(",");
        rows.push(vec!["interface".to_owned(), format!("{} {ips}", interface.mac_addr).trim().to_owned()]);
    }
    if let Some(bmc) = &node.bmc {
        let mut text = format!("{} {}", bmc.driver.as_str(), or_dash(&bmc.address));
        if let Some(user) = &bmc.username {
            text.push_str(&format!(" user={user}"));
        }
        if let Some(password) = &bmc.password {
            text.push_str(&format!(" password={password}"));
        }
        rows.push(vec!["bmc".to_owned(), text]);
    }
    if !node.properties.is_empty() {
        rows.push(vec!["properties".to_owned(), serde_json::Value::Object(node.properties.clone()).to_string()]);
    }
    table(&["field", "value"], rows)
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    List,
    Show {
        group: String,
    },
    /// Create a group.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The owning project (members must give one of theirs).
        #[arg(long)]
        project: Option<String>,
        /// A node to put in the group (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Change a group's description or replace its members.
    Update {
        group: String,
        #[arg(long)]
        description: Option<String>,
        /// The complete new member list (repeatable).
        #[arg(long = "member")]
        members: Option<Vec<String>>,
    },
    Delete {
        group: String,
    },
}

pub(crate) async fn group(client: &Client, format: OutputFormat, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => print_rows(format, &client.get::<Vec<Group>>("/v1/groups").await?),
        GroupCommand::Show { group } => print_one(format, &client.get::<Group>(&format!("/v1/groups/{}", encode(&group))).await?),
        GroupCommand::Create { name, description, project, members } => {
            let body = serde_json::json!({ "name": name, "description": description, "project": project, "members": members });
            print_one(format, &client.post::<_, Group>("/v1/groups", &body).await?)
        }
        GroupCommand::Update { group, description, members } => {
            let body = serde_json::json!({ "description": description, "members": members });
            print_one(format, &client.patch::<_, Group>(&format!("/v1/groups/{}", encode(&group)), &body).await?)
        }
        GroupCommand::Delete { group } => {
            client.delete::<serde_json::Value>(&format!("/v1/groups/{}", encode(&group))).await?;
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    List,
    Show {
        project: String,
    },
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Delete {
        project: String,
    },
    /// Add a user to a project, or change their role.
    AddMember {
        project: String,
        user: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    RemoveMember {
        project: String,
        user: String,
    },
}

pub(crate) async fn project(client: &Client, format: OutputFormat, command: ProjectCommand) -> anyhow::Result<()> {
    match command {
        ProjectCommand::List => print_rows(format, &client.get::<Vec<Project>>("/v1/projects").await?),
        ProjectCommand::Show { project } => print_one(format, &client.get::<Project>(&format!("/v1/projects/{}", encode(&project))).await?),
        ProjectCommand::Create { name, description } => print_one(
            format,
            &client.post::<_, Project>("/v1/projects", &serde_json::json!({ "name": name, "description": description })).await?,
        ),
        ProjectCommand::Delete { project } => {
            client.delete::<serde_json::Value>(&format!("/v1/projects/{}", encode(&project))).await?;
            Ok(())
        }
        ProjectCommand::AddMember { project, user, role } => {
            let role: ProjectRole = role.parse().map_err(anyhow::Error::msg)?;
            client
                .put::<_, serde_json::Value>(
                    &format!("/v1/projects/{}/members", encode(&project)),
                    &serde_json::json!({ "user": user, "role": role }),
                )
                .await?;
            Ok(())
        }
        ProjectCommand::RemoveMember { project, user } => {
            client.delete::<serde_json::Value>(&format!("/v1/projects/{}/members/{}", encode(&project), encode(&user))).await?;
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    List,
    Show {
        user: String,
    },
    Create {
        name: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
    },
    Delete {
        user: String,
    },
    /// Set a user's password, read from standard input (its first line): it signs the user
    /// in where a token cannot be sent (HTTP basic authentication to the Ironic API).
    /// Administrators set anyone's; a user their own.
    SetPassword {
        user: String,
    },
    /// Remove a user's password; their tokens keep working.
    RemovePassword {
        user: String,
    },
}

pub(crate) async fn user(client: &Client, format: OutputFormat, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::List => print_rows(format, &client.get::<Vec<User>>("/v1/users").await?),
        UserCommand::Show { user } => print_one(format, &client.get::<User>(&format!("/v1/users/{}", encode(&user))).await?),
        UserCommand::Create { name, admin } => {
            print_one(format, &client.post::<_, User>("/v1/users", &serde_json::json!({ "name": name, "admin": admin })).await?)
        }
        UserCommand::Delete { user } => {
            client.delete::<serde_json::Value>(&format!("/v1/users/{}", encode(&user))).await?;
            Ok(())
        }
        UserCommand::SetPassword { user } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input (echo … | kiln user set-password {user})");
            let body = serde_json::json!({ "password": password });
            client.put::<_, serde_json::Value>(&format!("/v1/users/{}/password", encode(&user)), &body).await?;
            Ok(())
        }
        UserCommand::RemovePassword { user } => {
            client.delete::<serde_json::Value>(&format!("/v1/users/{}/password", encode(&user))).await?;
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token; its secret is printed once.
    Create {
        #[arg(long, default_value = "cli")]
        name: String,
        /// For another user (administrators).
        #[arg(long)]
        user: Option<String>,
        /// Lifetime such as 3600s, 12h, 30d [default: no expiry]
        #[arg(long)]
        expires_in: Option<String>,
    },
    List {
        #[arg(long)]
        user: Option<String>,
    },
    Revoke {
        id: String,
    },
}

/// `90s`, `15m`, `12h`, `30d`, or plain seconds.
fn parse_lifetime(text: &str) -> anyhow::Result<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().with_context(|| format!("'{text}' is not a lifetime such as 3600s, 12h or 30d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("'{text}' is not a lifetime such as 3600s, 12h or 30d"),
    };
    Ok(number * factor)
}

pub(crate) async fn token(client: &Client, format: OutputFormat, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, user, expires_in } => {
            let expires_in_seconds = expires_in.as_deref().map(parse_lifetime).transpose()?;
            let body = serde_json::json!({ "name": name, "user": user, "expires_in_seconds": expires_in_seconds });
            let created: CreatedToken = client.post("/v1/tokens", &body).await?;
            print(format, &created, || format!("{}\n", created.secret))
        }
        TokenCommand::List { user } => {
            let path = match user {
                Some(user) => format!("/v1/tokens?user={}", encode(&user)),
                None => "/v1/tokens".to_owned(),
            };
            print_rows(format, &client.get::<Vec<Token>>(&path).await?)
        }
        TokenCommand::Revoke { id } => print_one(format, &client.delete::<Token>(&format!("/v1/tokens/{}", encode(&id))).await?),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum DiscoverCommand {
    /// Load nodes from an OpenCHAMI static discovery file (nodes.yaml). Idempotent.
    Static(DataArgs),
    /// Scan for Redfish BMCs and enrol or update a node per system found (as magellan does).
    Redfish(crate::power::RedfishDiscoveryArgs),
}

pub(crate) async fn discover(client: &Client, format: OutputFormat, command: DiscoverCommand) -> anyhow::Result<()> {
    match command {
        DiscoverCommand::Redfish(args) => crate::power::discover_redfish(client, format, args).await,
        DiscoverCommand::Static(data) => {
            let summary: DiscoverySummary = client.post("/v1/discover/static", &data.read()?).await?;
            print(format, &summary, || {
                let mut rows = Vec::new();
                for (what, names) in [("created", &summary.created), ("updated", &summary.updated), ("unchanged", &summary.unchanged)] {
                    rows.extend(names.iter().map(|name| vec![name.clone(), what.to_owned()]));
                }
                table(&["node", "result"], rows)
            })
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum BootCommand {
    /// Boot parameters (kernel, initrd, command line) by MAC, host, NID or group.
    #[command(subcommand)]
    Params(BootParamsCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BootParamsCommand {
    /// Show every entry.
    Get,
    /// Store parameters, replacing those of the same targets.
    Set(DataArgs),
    /// Store parameters; refused if a target already has some.
    Add(DataArgs),
    /// Remove targets (the document lists macs, hosts, nids or groups).
    Delete(DataArgs),
}

pub(crate) async fn boot(client: &Client, format: OutputFormat, command: BootCommand) -> anyhow::Result<()> {
    let BootCommand::Params(command) = command;
    let show = |entries: &Vec<kiln_types::boot::BootParams>| {
        let rows = entries
            .iter()
            .map(|entry| {
                let targets = entry.targets().iter().map(|t| format!("{}={}", t.kind(), t.value())).collect::<Vec<_>>().join(",");
                vec![targets, or_dash(&entry.kernel), or_dash(&entry.initrd), entry.params.clone()]
            })
            .collect();
        table(&["targets", "kernel", "initrd", "params"], rows)
    };
    match command {
        BootParamsCommand::Get => {
            let entries: Vec<kiln_types::boot::BootParams> = client.get("/v1/boot/params").await?;
            print(format, &entries, || show(&entries))
        }
        BootParamsCommand::Set(data) => {
            let entry: kiln_types::boot::BootParams = client.put("/v1/boot/params", &data.read()?).await?;
            let entries = vec![entry];
            print(format, &entries, || show(&entries))
        }
        BootParamsCommand::Add(data) => {
            let entry: kiln_types::boot::BootParams = client.post("/v1/boot/params", &data.read()?).await?;
            let entries = vec![entry];
            print(format, &entries, || show(&entries))
        }
        BootParamsCommand::Delete(data) => {
            client.send_delete_with_body("/v1/boot/params", &data.read()?).await?;
            Ok(())
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// Only events of this kind of resource (node, project, user, token, group).
    #[arg(long)]
    kind: Option<String>,
    /// Only events about this resource.
    #[arg(long)]
    target: Option<String>,
    /// Only events after this id.
    #[arg(long)]
    after: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(crate) async fn events(client: &Client, format: OutputFormat, args: EventsArgs) -> anyhow::Result<()> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(kind) = args.kind {
        query.push(format!("kind={}", encode(&kind)));
    }
    if let Some(target) = args.target {
        query.push(format!("target={}", encode(&target)));
    }
    if let Some(after) = args.after {
        query.push(format!("after={after}"));
    }
    print_rows(format, &client.get::<Vec<Event>>(&format!("/v1/events?{}", query.join("&"))).await?)
}

pub(crate) async fn whoami(client: &Client, format: OutputFormat) -> anyhow::Result<()> {
    let who: WhoAmI = client.get("/v1/whoami").await?;
    print(format, &who, || {
        let projects = who.memberships.iter().map(|m| format!("{}:{}", m.project, m.role.as_str())).collect::<Vec<_>>();
        table(&["user", "admin", "projects"], vec![vec![who.user.clone(), who.admin.to_string(), projects.join(",")]])
    })
}

#[cfg(test)]
mod tests;
