//! Nodes: inventory records with their interfaces and group memberships.
//!
//! Why one file over 600 lines: a node's row, interfaces, groups, BMC secret and events are
//! written in one transaction by the functions here, and the uniqueness rules they check
//! (name, xname, NID, MAC) must be read together.

use kiln_auth::ProjectScope;
use kiln_types::api::{DiscoverySummary, Page};
use kiln_types::node::{BmcSpec, BmcView, InterfaceSpec, InterfaceView, IpAddrEntry, Node, NodeChange, NodeSpec};
use kiln_types::{BmcDriver, MacAddress, ProvisionState, SECRET_MASK};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::{Store, StoreError};

/// Which nodes a listing returns.
#[derive(Debug, Clone)]
pub struct NodeFilter {
    pub scope: ProjectScope,
    pub group: Option<String>,
    pub state: Option<ProvisionState>,
    pub project: Option<String>,
    pub mac: Option<MacAddress>,
    /// Only nodes whose name, xname or a MAC contains this text, case aside.
    pub search: Option<String>,
    /// Names greater than this (the `next` of the previous page).
    pub after: Option<String>,
    pub limit: u32,
}

impl NodeFilter {
    pub fn new(scope: ProjectScope) -> Self {
        NodeFilter { scope, group: None, state: None, project: None, mac: None, search: None, after: None, limit: 100 }
    }
}

/// What the store keeps of a BMC, password aside (that is sealed in its own column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredBmc {
    driver: BmcDriver,
    address: Option<String>,
    mac: Option<MacAddress>,
    username: Option<String>,
    insecure: bool,
}

/// A node as the store holds it: the view plus the sealed BMC password.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub node: Node,
    sealed_bmc_password: Option<String>,
}

/// Whether two snapshots describe the same node, ignoring when they were written.
fn same_content(a: &NodeSnapshot, b: &NodeSnapshot) -> bool {
    let mut left = a.clone();
    left.node.created_at = b.node.created_at;
    left.node.updated_at = b.node.updated_at;
    &left == b
}

const NODE_COLUMNS: &str =
    "id, name, xname, nid, role, project, provision_state, maintenance, bmc, bmc_password, properties, created_at, updated_at";

fn node_from_row(row: &AnyRow) -> Result<NodeSnapshot, StoreError> {
    let get_text = |column: &str| row.try_get::<Option<String>, _>(column).map_err(StoreError::query("reading a node"));
    let get_int = |column: &str| row.try_get::<Option<i64>, _>(column).map_err(StoreError::query("reading a node"));
    let bmc = get_text("bmc")?
        .map(|text| serde_json::from_str::<StoredBmc>(&text))
        .transpose()
        .map_err(|error| StoreError::corrupt("node bmc", error))?;
    let sealed_bmc_password = get_text("bmc_password")?;
    let properties = serde_json::from_str(&get_text("properties")?.unwrap_or_else(|| "{}".to_owned()))
        .map_err(|error| StoreError::corrupt("node properties", error))?;
    let state: String = get_text("provision_state")?.unwrap_or_default();
    let node = Node {
        id: get_text("id")?.unwrap_or_default(),
        name: get_text("name")?.unwrap_or_default(),
        xname: get_text("xname")?,
        nid: get_int("nid")?.map(|nid| nid as u32),
        role: get_text("role")?,
        groups: Vec::new(),
        interfaces: Vec::new(),
        bmc: bmc.map(|bmc| BmcView {
            driver: bmc.driver,
            address: bmc.address,
            mac: bmc.mac,
            username: bmc.username,
            password: sealed_bmc_password.as_ref().map(|_| SECRET_MASK.to_owned()),
            insecure: bmc.insecure,
        }),
        properties,
        project: get_text("project")?,
        provision_state: state.parse().map_err(|error| StoreError::corrupt("node provision_state", error))?,
        maintenance: get_int("maintenance")?.unwrap_or(0) != 0,
        created_at: crate::timestamp(get_int("created_at")?.unwrap_or(0)),
        updated_at: crate::timestamp(get_int("updated_at")?.unwrap_or(0)),
    };
    Ok(NodeSnapshot { node, sealed_bmc_password })
}

/// The interfaces and groups of each node, aggregated to JSON inside the database, so that
/// loading any number of nodes is one statement. Each element carries its position and is
/// sorted in Rust: SQL aggregates promise no order.
fn aggregate_columns(connection: &AnyConnection) -> &'static str {
    if connection.backend_name() == "PostgreSQL" {
        "(SELECT COALESCE(json_agg(json_build_object('position', i.position, 'mac_addr', i.mac, 'ip_addrs', i.ip_addrs::json)), '[]'::json)::text \
            FROM interfaces i WHERE i.node_id = nodes.id) AS interfaces_json, \
         (SELECT COALESCE(json_agg(json_build_object('position', m.position, 'name', m.group_key)), '[]'::json)::text \
            FROM group_members m WHERE m.node_id = nodes.id) AS groups_json"
    } else {
        "(SELECT json_group_array(json_object('position', i.position, 'mac_addr', i.mac, 'ip_addrs', json(i.ip_addrs))) \
            FROM interfaces i WHERE i.node_id = nodes.id) AS interfaces_json, \
         (SELECT json_group_array(json_object('position', m.position, 'name', m.group_key)) \
            FROM group_members m WHERE m.node_id = nodes.id) AS groups_json"
    }
}

#[derive(Deserialize)]
struct AggregatedInterface {
    position: i64,
    mac_addr: MacAddress,
    ip_addrs: Vec<IpAddrEntry>,
}

#[derive(Deserialize)]
struct AggregatedGroup {
    position: i64,
    name: String,
}

/// Loads the nodes chosen by `where_sql` (with `$1…` bound to `binds`), with their
/// interfaces and groups, in one statement.
pub(crate) async fn load_nodes(
    connection: &mut AnyConnection,
    where_sql: &str,
    binds: &[String],
    suffix: &str,
) -> Result<Vec<NodeSnapshot>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS}, {} FROM nodes WHERE {where_sql} {suffix}", aggregate_columns(connection));
    let mut query = sqlx::query(&sql);
    for value in binds {
        query = query.bind(value.as_str());
    }
    let rows = query.fetch_all(&mut *connection).await.map_err(StoreError::query("reading nodes"))?;
    rows.iter()
        .map(|row| {
            let mut snapshot = node_from_row(row)?;
            let interfaces: String = row.try_get("interfaces_json").map_err(StoreError::query("reading interfaces"))?;
            let mut interfaces: Vec<AggregatedInterface> =
                serde_json::from_str(&interfaces).map_err(|error| StoreError::corrupt("node interfaces", error))?;
            interfaces.sort_by_key(|interface| interface.position);
            snapshot.node.interfaces = interfaces
                .into_iter()
                .map(|interface| InterfaceView { mac_addr: interface.mac_addr, ip_addrs: interface.ip_addrs })
                .collect();
            let groups: String = row.try_get("groups_json").map_err(StoreError::query("reading group members"))?;
            let mut groups: Vec<AggregatedGroup> =
                serde_json::from_str(&groups).map_err(|error| StoreError::corrupt("node groups", error))?;
            groups.sort_by_key(|group| group.position);
            snapshot.node.groups = groups.into_iter().map(|group| group.name).collect();
            Ok(snapshot)
        })
        .collect()
}

/// Finds a node by name, xname or id, preferring a name match, in one statement.
pub(crate) async fn find_node(connection: &mut AnyConnection, key: &str) -> Result<Option<NodeSnapshot>, StoreError> {
    let mut found = load_nodes(
        connection,
        "(name = $1 OR xname = $1 OR id = $1)",
        &[key.to_owned()],
        "ORDER BY CASE WHEN name = $1 THEN 0 WHEN xname = $1 THEN 1 ELSE 2 END LIMIT 1",
    )
    .await?;
    Ok(found.pop())
}

/// Finds a node the scope may see; anything else is "not found", never "forbidden", so a
/// tenant cannot learn that another tenant's node exists.
pub(crate) async fn find_visible_node(connection: &mut AnyConnection, key: &str, scope: &ProjectScope) -> Result<NodeSnapshot, StoreError> {
    match find_node(connection, key).await? {
        Some(snapshot) if crate::nodes_visible(scope, snapshot.node.project.as_deref()) => Ok(snapshot),
        _ => Err(StoreError::not_found("node", key)),
    }
}

fn interface_views(interfaces: &[InterfaceSpec]) -> Vec<InterfaceView> {
    interfaces.iter().map(|interface| InterfaceView { mac_addr: interface.mac, ip_addrs: interface.ip_addrs.clone() }).collect()
}

impl Store {
    /// Applies BMC settings to a snapshot. A password of `None` keeps the stored one, so a
    /// client that echoes back what it read (with the mask) does not erase the password.
    fn apply_bmc(&self, snapshot: &mut NodeSnapshot, bmc: &BmcSpec) -> Result<(), StoreError> {
        match &bmc.password {
            Some(password) if password != SECRET_MASK => {
                let unchanged = snapshot
                    .sealed_bmc_password
                    .as_deref()
                    .is_some_and(|sealed| self.secrets.open(sealed).is_ok_and(|old| &old == password));
                if !unchanged {
                    snapshot.sealed_bmc_password = (!password.is_empty()).then(|| self.secrets.seal(password));
                }
            }
            _ => {}
        }
        let previous = snapshot.node.bmc.take();
        snapshot.node.bmc = Some(BmcView {
            driver: bmc.driver,
            address: bmc.address.clone(),
            mac: bmc.mac,
            username: bmc.username.clone().or_else(|| previous.as_ref().and_then(|p| p.username.clone())),
            password: snapshot.sealed_bmc_password.as_ref().map(|_| SECRET_MASK.to_owned()),
            insecure: bmc.insecure,
        });
        Ok(())
    }

    /// The decrypted BMC password of a node, for the BMC drivers. Never for API responses.
    pub async fn bmc_password(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.read().await?;
        let snapshot = find_node(&mut connection, key).await?.ok_or_else(|| StoreError::not_found("node", key))?;
        snapshot
            .sealed_bmc_password
            .map(|sealed| self.secrets.open(&sealed).map_err(|error| StoreError::corrupt("node bmc_password", error)))
            .transpose()
    }

    pub async fn create_node(&self, actor: &str, spec: &NodeSpec) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let node = self.create_node_in(transaction.connection(), actor, spec).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// [`Store::create_node`] inside a transaction the caller commits.
    pub(crate) async fn create_node_in(&self, connection: &mut AnyConnection, actor: &str, spec: &NodeSpec) -> Result<Node, StoreError> {
        let mut snapshot = self.new_snapshot(spec)?;
        write_node(connection, &mut snapshot, None).await?;
        let after = serde_json::to_value(&snapshot.node).ok();
        record(
            connection,
            NewEvent {
                actor,
                action: "node.create",
                target_kind: "node",
                target: &snapshot.node.name,
                project: snapshot.node.project.as_deref(),
                before: None,
                after,
            },
        )
        .await?;
        Ok(snapshot.node)
    }

    fn new_snapshot(&self, spec: &NodeSpec) -> Result<NodeSnapshot, StoreError> {
        let now = crate::now();
        let mut snapshot = NodeSnapshot {
            node: Node {
                id: uuid::Uuid::new_v4().to_string(),
                name: spec.name.clone(),
                xname: spec.xname.as_ref().map(|x| x.to_string()),
                nid: spec.nid,
                role: spec.role.clone(),
                groups: spec.groups.clone(),
                interfaces: interface_views(&spec.interfaces),
                bmc: None,
                properties: spec.properties.clone(),
                project: spec.project.clone(),
                provision_state: ProvisionState::Enroll,
                maintenance: false,
                created_at: now,
                updated_at: now,
            },
            sealed_bmc_password: None,
        };
        if let Some(bmc) = &spec.bmc {
            self.apply_bmc(&mut snapshot, bmc)?;
        }
        Ok(snapshot)
    }

    pub async fn get_node(&self, key: &str, scope: &ProjectScope) -> Result<Node, StoreError> {
        let mut connection = self.read().await?;
        Ok(find_visible_node(&mut connection, key, scope).await?.node)
    }

    pub async fn list_nodes(&self, filter: &NodeFilter) -> Result<Page<Node>, StoreError> {
        let mut conditions = vec!["1 = 1".to_owned()];
        let mut binds: Vec<String> = Vec::new();
        let bind = |value: String, binds: &mut Vec<String>| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let ProjectScope::Projects(projects) = &filter.scope {
            if projects.is_empty() {
                return Ok(Page { items: Vec::new(), next: None });
            }
            let list: Vec<String> = projects.iter().map(|p| bind(p.clone(), &mut binds)).collect();
            conditions.push(format!("project IN ({})", list.join(", ")));
        }
        if let Some(project) = &filter.project {
            conditions.push(format!("project = {}", bind(project.clone(), &mut binds)));
        }
        if let Some(state) = filter.state {
            conditions.push(format!("provision_state = {}", bind(state.as_str().to_owned(), &mut binds)));
        }
        if let Some(group) = &filter.group {
            conditions.push(format!("id IN (SELECT node_id FROM group_members WHERE group_key = {})", bind(group.clone(), &mut binds)));
        }
        if let Some(mac) = &filter.mac {
            conditions.push(format!("id IN (SELECT node_id FROM interfaces WHERE mac = {})", bind(mac.to_string(), &mut binds)));
        }
        if let Some(search) = &filter.search {
            let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            let pattern = bind(format!("%{escaped}%"), &mut binds);
            conditions.push(format!(
                "(LOWER(name) LIKE {pattern} ESCAPE '\\' OR LOWER(COALESCE(xname, '')) LIKE {pattern} ESCAPE '\\' \
                 OR id IN (SELECT node_id FROM interfaces WHERE LOWER(mac) LIKE {pattern} ESCAPE '\\'))"
            ));
        }
        if let Some(after) = &filter.after {
            conditions.push(format!("name > {}", bind(after.clone(), &mut binds)));
        }
        let limit = filter.limit.clamp(1, crate::MAX_PAGE_SIZE);
        let mut connection = self.read().await?;
        let mut snapshots =
            load_nodes(&mut connection, &conditions.join(" AND "), &binds, &format!("ORDER BY name LIMIT {}", limit + 1)).await?;
        let next = if snapshots.len() > limit as usize {
            snapshots.truncate(limit as usize);
            snapshots.last().map(|snapshot| snapshot.node.name.clone())
        } else {
            None
        };
        Ok(Page { items: snapshots.into_iter().map(|snapshot| snapshot.node).collect(), next })
    }

    /// Changes a node the scope may write. Returns the node as it now is.
    pub async fn update_node(&self, actor: &str, key: &str, scope: &ProjectScope, change: &NodeChange) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let node = self.update_node_in(transaction.connection(), actor, key, scope, change).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// [`Store::update_node`] inside a transaction the caller commits.
    pub(crate) async fn update_node_in(
        &self,
        connection: &mut AnyConnection,
        actor: &str,
        key: &str,
        scope: &ProjectScope,
        change: &NodeChange,
    ) -> Result<Node, StoreError> {
        let before = find_visible_node(connection, key, scope).await?;
        let mut after = before.clone();
        let node = &mut after.node;
        if let Some(name) = &change.name {
            node.name = name.clone();
        }
        if let Some(xname) = &change.xname {
            node.xname = Some(xname.to_string());
        }
        if let Some(nid) = change.nid {
            node.nid = Some(nid);
        }
        if let Some(role) = &change.role {
            node.role = Some(role.clone());
        }
        if let Some(groups) = &change.groups {
            node.groups = groups.clone();
        }
        if let Some(interfaces) = &change.interfaces {
            node.interfaces = interface_views(interfaces);
        }
        if let Some(properties) = &change.properties {
            node.properties = properties.clone();
        }
        if let Some(maintenance) = change.maintenance {
            node.maintenance = maintenance;
        }
        if let Some(bmc) = &change.bmc {
            self.apply_bmc(&mut after, bmc)?;
        }
        if !same_content(&before, &after) {
            let project = after.node.project.clone();
            save_changed_node(connection, actor, "node.update", project.as_deref(), &before, &mut after).await?;
        }
        Ok(after.node)
    }

    pub async fn delete_node(&self, actor: &str, key: &str, scope: &ProjectScope) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = find_visible_node(connection, key, scope).await?;
        // Its clone and export would outlive it, unreachable by any operation.
        let clone: Option<(String, i64)> = sqlx::query_as("SELECT image, version FROM network_disks WHERE node_id = $1")
            .bind(&before.node.id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("looking up a node's network disk"))?;
        if let Some((image, version)) = clone {
            return Err(StoreError::conflict(format!(
                "node {} boots from a network disk (a clone of {image}:{version}): undeploy it first",
                before.node.name
            )));
        }
        for table in ["interfaces", "group_members"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE node_id = $1"))
                .bind(&before.node.id)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("deleting a node"))?;
        }
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(&before.node.id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a node"))?;
        let old = serde_json::to_value(&before.node).ok();
        record(
            connection,
            NewEvent {
                actor,
                action: "node.delete",
                target_kind: "node",
                target: &before.node.name,
                project: before.node.project.as_deref(),
                before: old,
                after: None,
            },
        )
        .await?;
        transaction.commit().await
    }

    /// Allocates nodes to a project (`Some`) or takes them back into the unallocated pool
    /// (`None`), all or none. Nodes leave the groups of the project they leave.
    ///
    /// With `from`, every node must belong to that project now, checked in the same
    /// transaction; a node elsewhere is "not found" (releasing from the wrong project is a
    /// mistake worth reporting, not a no-op).
    pub async fn set_nodes_project(
        &self,
        actor: &str,
        keys: &[String],
        project: Option<&str>,
        from: Option<&str>,
    ) -> Result<Vec<Node>, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if let Some(project) = project
            && !crate::tenancy::project_exists(connection, project).await?
        {
            return Err(StoreError::not_found("project", project));
        }
        let mut nodes = Vec::with_capacity(keys.len());
        for key in keys {
            let before = find_node(connection, key)
                .await?
                .filter(|snapshot| from.is_none_or(|from| snapshot.node.project.as_deref() == Some(from)))
                .ok_or_else(|| StoreError::not_found("node", key))?;
            if before.node.project.as_deref() == project {
                nodes.push(before.node);
                continue;
            }
            let mut after = before.clone();
            after.node.project = project.map(str::to_owned);
            if let Some(old_project) = &before.node.project {
                let project_groups = project_groups(connection, old_project).await?;
                after.node.groups.retain(|group| !project_groups.contains(group));
            }
            let action = if project.is_some() { "node.allocate" } else { "node.release" };
            // The event belongs to the project the node joins, or to the one it leaves.
            let event_project = project.or(before.node.project.as_deref());
            save_changed_node(connection, actor, action, event_project, &before, &mut after).await?;
            nodes.push(after.node);
        }
        transaction.commit().await?;
        Ok(nodes)
    }

    /// Applies a validated static discovery document in one transaction: nodes are matched
    /// by xname (or name when they have none), created or updated; unchanged nodes are not
    /// written, so a second run changes nothing and records no events.
    pub async fn discover(&self, actor: &str, specs: &[NodeSpec]) -> Result<DiscoverySummary, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let mut summary = DiscoverySummary::default();
        for (position, spec) in specs.iter().enumerate() {
            let entry = |error: StoreError| match error {
                StoreError::Conflict { message } => StoreError::conflict(format!("entry {} ({}): {message}", position + 1, spec.name)),
                StoreError::NotFound { kind, key } => {
                    StoreError::Invalid { message: format!("entry {} ({}): {kind} '{key}' not found", position + 1, spec.name) }
                }
                other => other,
            };
            let existing = match &spec.xname {
                Some(xname) => find_node_by(connection, "xname", xname.as_str()).await?,
                None => find_node_by(connection, "name", &spec.name).await?,
            };
            match existing {
                None => {
                    let mut snapshot = self.new_snapshot(spec)?;
                    write_node(connection, &mut snapshot, None).await.map_err(entry)?;
                    let after = serde_json::to_value(&snapshot.node).ok();
                    record(
                        connection,
                        NewEvent {
                            actor,
                            action: "node.discover",
                            target_kind: "node",
                            target: &spec.name,
                            project: None,
                            before: None,
                            after,
                        },
                    )
                    .await?;
                    summary.created.push(spec.name.clone());
                }
                Some(before) => {
                    let mut after = before.clone();
                    let node = &mut after.node;
                    node.name = spec.name.clone();
                    if spec.nid.is_some() {
                        node.nid = spec.nid;
                    }
                    if spec.role.is_some() {
                        node.role = spec.role.clone();
                    }
                    node.interfaces = interface_views(&spec.interfaces);
                    // The node holds its groups' keys: compare what the file names with
                    // those, so that a re-run changes nothing.
                    for group in &spec.groups {
                        let key = crate::groups::existing_group_for(connection, group, node.project.as_deref())
                            .await
                            .map_err(entry)?
                            .unwrap_or_else(|| group.clone());
                        if !node.groups.contains(&key) {
                            node.groups.push(key);
                        }
                    }
                    if let Some(bmc) = &spec.bmc {
                        self.apply_bmc(&mut after, bmc)?;
                    }
                    if same_content(&before, &after) {
                        summary.unchanged.push(spec.name.clone());
                        continue;
                    }
                    let project = after.node.project.clone();
                    save_changed_node(connection, actor, "node.discover", project.as_deref(), &before, &mut after).await.map_err(entry)?;
                    summary.updated.push(spec.name.clone());
                }
            }
        }
        transaction.commit().await?;
        Ok(summary)
    }
}

async fn find_node_by(connection: &mut AnyConnection, column: &str, value: &str) -> Result<Option<NodeSnapshot>, StoreError> {
    Ok(load_nodes(connection, &format!("{column} = $1"), &[value.to_owned()], "").await?.pop())
}

async fn project_groups(connection: &mut AnyConnection, project: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query("SELECT key FROM node_groups WHERE project = $1")
        .bind(project)
        .fetch_all(connection)
        .await
        .map_err(StoreError::query("listing a project's groups"))?
        .iter()
        .map(|row| row.try_get("key").map_err(StoreError::query("listing a project's groups")))
        .collect()
}

/// Writes a changed node and, in the same transaction, the event that records the change.
pub(crate) async fn save_changed_node(
    connection: &mut AnyConnection,
    actor: &str,
    action: &str,
    project: Option<&str>,
    before: &NodeSnapshot,
    after: &mut NodeSnapshot,
) -> Result<(), StoreError> {
    after.node.updated_at = crate::now();
    write_node(connection, after, Some(before)).await?;
    let (old, new) = (serde_json::to_value(&before.node).ok(), serde_json::to_value(&after.node).ok());
    let event = NewEvent { actor, action, target_kind: "node", target: &after.node.name, project, before: old, after: new };
    record(connection, event).await
}

/// Writes a new node that needs no uniqueness checks beyond the database's own (enrolment).
pub(crate) async fn insert_plain_node(connection: &mut AnyConnection, node: &Node) -> Result<(), StoreError> {
    write_node(connection, &mut NodeSnapshot { node: node.clone(), sealed_bmc_password: None }, None).await
}

/// Checks that the project a node is put in exists, so that a missing one is the input's
/// fault, named, and not a foreign-key failure.
pub(crate) async fn check_project_exists(connection: &mut AnyConnection, project: &str) -> Result<(), StoreError> {
    let found = sqlx::query("SELECT name FROM projects WHERE name = $1")
        .bind(project)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("looking up a project"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::Invalid { message: format!("project: no project '{project}'") }),
    }
}

/// Checks that `value` in `column` is not held by a node other than `id`.
async fn check_unique(connection: &mut AnyConnection, column: &str, value: &str, id: &str, what: &str) -> Result<(), StoreError> {
    let holder = sqlx::query(&format!("SELECT name FROM nodes WHERE {column} = $1 AND id <> $2"))
        .bind(value)
        .bind(id)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("checking uniqueness"))?;
    match holder {
        Some(row) => {
            let name: String = row.try_get("name").map_err(StoreError::query("checking uniqueness"))?;
            Err(StoreError::conflict(format!("{what} is already used by node '{name}'")))
        }
        None => Ok(()),
    }
}

/// Writes a node's row, interfaces and group memberships. `before` is the stored state
/// when updating. Uniqueness is checked first so that a conflict names the other node.
/// Writes the node; its `groups` come back as the keys of the groups they named.
async fn write_node(connection: &mut AnyConnection, snapshot: &mut NodeSnapshot, before: Option<&NodeSnapshot>) -> Result<(), StoreError> {
    let node = &snapshot.node;
    check_node_unique(connection, node).await?;
    if let Some(project) = &node.project
        && before.is_none_or(|before| before.node.project.as_ref() != Some(project))
    {
        check_project_exists(connection, project).await?;
    }
    write_node_row(connection, snapshot, before.is_some()).await?;
    if before.is_none_or(|before| before.node.interfaces != node.interfaces) {
        write_interfaces(connection, node, before.is_some()).await?;
    }
    if before.is_none_or(|before| before.node.groups != node.groups) {
        let stored = before.map_or(&[][..], |before| before.node.groups.as_slice());
        snapshot.node.groups = write_group_members(connection, &snapshot.node, before.is_some(), stored).await?;
    }
    Ok(())
}

/// Refuses a name, xname, NID or MAC that another node holds, naming that node.
async fn check_node_unique(connection: &mut AnyConnection, node: &Node) -> Result<(), StoreError> {
    check_unique(connection, "name", &node.name, &node.id, &format!("name '{}'", node.name)).await?;
    if let Some(xname) = &node.xname {
        check_unique(connection, "xname", xname, &node.id, &format!("xname {xname}")).await?;
    }
    if let Some(nid) = node.nid {
        let holder = sqlx::query("SELECT name FROM nodes WHERE nid = $1 AND id <> $2")
            .bind(i64::from(nid))
            .bind(&node.id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("checking uniqueness"))?;
        if let Some(row) = holder {
            let name: String = row.try_get("name").map_err(StoreError::query("checking uniqueness"))?;
            return Err(StoreError::conflict(format!("NID {nid} is already used by node '{name}'")));
        }
    }
    for interface in &node.interfaces {
        let holder = sqlx::query("SELECT n.name FROM interfaces i JOIN nodes n ON n.id = i.node_id WHERE i.mac = $1 AND i.node_id <> $2")
            .bind(interface.mac_addr.to_string())
            .bind(&node.id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("checking uniqueness"))?;
        if let Some(row) = holder {
            let name: String = row.try_get("name").map_err(StoreError::query("checking uniqueness"))?;
            return Err(StoreError::conflict(format!("MAC {} is already used by node '{name}'", interface.mac_addr)));
        }
    }
    Ok(())
}

/// The node's own row, inserted or (`exists`) updated.
async fn write_node_row(connection: &mut AnyConnection, snapshot: &NodeSnapshot, exists: bool) -> Result<(), StoreError> {
    let node = &snapshot.node;
    let bmc = node
        .bmc
        .as_ref()
        .map(|bmc| {
            serde_json::to_string(&StoredBmc {
                driver: bmc.driver,
                address: bmc.address.clone(),
                mac: bmc.mac,
                username: bmc.username.clone(),
                insecure: bmc.insecure,
            })
        })
        .transpose()
        .map_err(|error| StoreError::corrupt("node bmc", error))?;
    let properties = serde_json::Value::Object(node.properties.clone()).to_string();
    let sql = if exists {
        "UPDATE nodes SET name = $2, xname = $3, nid = $4, role = $5, project = $6, provision_state = $7, maintenance = $8, \
         bmc = $9, bmc_password = $10, properties = $11, created_at = $12, updated_at = $13 WHERE id = $1"
    } else {
        "INSERT INTO nodes (id, name, xname, nid, role, project, provision_state, maintenance, bmc, bmc_password, properties, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    };
    sqlx::query(sql)
        .bind(&node.id)
        .bind(&node.name)
        .bind(node.xname.as_deref())
        .bind(node.nid.map(i64::from))
        .bind(node.role.as_deref())
        .bind(node.project.as_deref())
        .bind(node.provision_state.as_str())
        .bind(i64::from(node.maintenance))
        .bind(bmc)
        .bind(snapshot.sealed_bmc_password.as_deref())
        .bind(properties)
        .bind(node.created_at.as_millisecond())
        .bind(node.updated_at.as_millisecond())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("writing a node"))?;
    Ok(())
}

/// The node's interfaces, replacing the stored ones (`replace`).
async fn write_interfaces(connection: &mut AnyConnection, node: &Node, replace: bool) -> Result<(), StoreError> {
    if replace {
        sqlx::query("DELETE FROM interfaces WHERE node_id = $1")
            .bind(&node.id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("writing interfaces"))?;
    }
    for (position, interface) in node.interfaces.iter().enumerate() {
        let ip_addrs = serde_json::to_string(&interface.ip_addrs).map_err(|error| StoreError::corrupt("interface ip_addrs", error))?;
        sqlx::query("INSERT INTO interfaces (mac, node_id, position, ip_addrs) VALUES ($1, $2, $3, $4)")
            .bind(interface.mac_addr.to_string())
            .bind(&node.id)
            .bind(position as i64)
            .bind(ip_addrs)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("writing interfaces"))?;
    }
    Ok(())
}

/// The node's group memberships, replacing the stored ones (`replace`); returns the keys of
/// the groups its `groups` named, each once. A value among the `stored` keys is that group
/// exactly: rewriting a node's groups never moves it from a group without a project to its
/// project's group of the same name.
async fn write_group_members(
    connection: &mut AnyConnection,
    node: &Node,
    replace: bool,
    stored: &[String],
) -> Result<Vec<String>, StoreError> {
    if replace {
        sqlx::query("DELETE FROM group_members WHERE node_id = $1")
            .bind(&node.id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("writing group members"))?;
    }
    let mut keys: Vec<String> = Vec::with_capacity(node.groups.len());
    for group in &node.groups {
        let key = if stored.contains(group) {
            group.clone()
        } else {
            crate::groups::ensure_group_for(connection, group, node.project.as_deref()).await?
        };
        if keys.contains(&key) {
            continue;
        }
        sqlx::query("INSERT INTO group_members (group_key, node_id, position) VALUES ($1, $2, $3)")
            .bind(&key)
            .bind(&node.id)
            .bind(keys.len() as i64)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("writing group members"))?;
        keys.push(key);
    }
    Ok(keys)
}
