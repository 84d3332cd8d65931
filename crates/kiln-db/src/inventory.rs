//! An in-memory view of every node, kept current by tailing the event log.
//!
//! Hot read paths (node show and list, DHCP, boot scripts and cloud-init) must not
//! pay a database round trip per request. Each replica holds an [`InventoryView`], loaded
//! once and then brought up to date from the events written since: every node change
//! records an event in its own transaction, and event ids grow in commit order (one writer
//! on SQLite; an advisory lock around the event insert on PostgreSQL), so reading the events
//! after the last one seen never misses a change. A replica sees its own writes at once (the
//! API refreshes after writing) and other replicas' within the follow interval.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiln_auth::ProjectScope;
use kiln_boot::{BootParams, BootTarget};
use kiln_types::MacAddress;
use kiln_types::api::Page;
use kiln_types::node::Node;
use sqlx::Row as _;

use crate::cloud_init::CloudInitData;
use crate::{NodeFilter, Store, StoreError};

/// Above this many changed nodes in one refresh, reloading everything is cheaper.
const FULL_RELOAD_THRESHOLD: usize = 500;

/// An immutable snapshot of the inventory. Cheap to share; never changes once built.
#[derive(Debug, Default, Clone)]
pub struct InventoryView {
    /// Boot parameters by target: few entries, read on every boot script request.
    boot: HashMap<BootTarget, Arc<BootParams>>,
    by_name: BTreeMap<String, Arc<Node>>,
    name_of_id: HashMap<String, String>,
    name_of_xname: HashMap<String, String>,
    name_of_mac: HashMap<MacAddress, String>,
    /// Names of the nodes holding each address. Usually one; two nodes claiming one address
    /// is a mistake in the inventory, and then the address identifies neither.
    names_of_ip: HashMap<IpAddr, Vec<String>>,
    cloud_init: CloudInitData,
    last_event: i64,
}

fn node_addresses(node: &Node) -> impl Iterator<Item = IpAddr> + '_ {
    node.interfaces.iter().flat_map(|interface| interface.ip_addrs.iter()).filter_map(|entry| entry.ip_addr.parse().ok())
}

impl InventoryView {
    fn insert(&mut self, node: Node) {
        self.remove(&node.id);
        self.name_of_id.insert(node.id.clone(), node.name.clone());
        if let Some(xname) = &node.xname {
            self.name_of_xname.insert(xname.clone(), node.name.clone());
        }
        for interface in &node.interfaces {
            self.name_of_mac.insert(interface.mac_addr, node.name.clone());
        }
        for address in node_addresses(&node) {
            let names = self.names_of_ip.entry(address).or_default();
            if !names.contains(&node.name) {
                names.push(node.name.clone());
            }
        }
        self.by_name.insert(node.name.clone(), Arc::new(node));
    }

    fn remove(&mut self, id: &str) {
        let Some(name) = self.name_of_id.remove(id) else { return };
        if let Some(node) = self.by_name.remove(&name) {
            if let Some(xname) = &node.xname {
                self.name_of_xname.remove(xname);
            }
            for interface in &node.interfaces {
                self.name_of_mac.remove(&interface.mac_addr);
            }
            for address in node_addresses(&node) {
                if let Some(names) = self.names_of_ip.get_mut(&address) {
                    names.retain(|other| *other != node.name);
                    if names.is_empty() {
                        self.names_of_ip.remove(&address);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The id of the last event this view reflects.
    pub fn last_event(&self) -> i64 {
        self.last_event
    }

    /// A node by name, xname or id (in that order of preference), as the store finds them.
    pub fn get(&self, key: &str) -> Option<&Arc<Node>> {
        self.by_name
            .get(key)
            .or_else(|| self.name_of_xname.get(key).and_then(|name| self.by_name.get(name)))
            .or_else(|| self.name_of_id.get(key).and_then(|name| self.by_name.get(name)))
    }

    /// The node with an interface of this MAC.
    pub fn by_mac(&self, mac: &MacAddress) -> Option<&Arc<Node>> {
        self.name_of_mac.get(mac).and_then(|name| self.by_name.get(name))
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.by_name.values()
    }

    /// The node whose BMC is at `address`. A scan: for discovery, not for hot paths.
    pub fn by_bmc_address(&self, address: &str) -> Option<&Arc<Node>> {
        self.by_name.values().find(|node| node.bmc.as_ref().and_then(|bmc| bmc.address.as_deref()) == Some(address))
    }

    /// The one node that holds this address; none when no node or several do.
    pub fn by_ip(&self, address: &IpAddr) -> Option<&Arc<Node>> {
        match self.names_of_ip.get(address).map(Vec::as_slice) {
            Some([name]) => self.by_name.get(name),
            _ => None,
        }
    }

    /// Whether any node's interface holds this address (a reservation).
    pub fn is_assigned(&self, address: &IpAddr) -> bool {
        self.names_of_ip.contains_key(address)
    }

    /// Cloud-init defaults, groups and per-node data.
    pub fn cloud_init(&self) -> &CloudInitData {
        &self.cloud_init
    }

    /// The node whose cloud-init token hashes to `token_hash`.
    pub fn by_cloud_init_token(&self, token_hash: &str) -> Option<&Arc<Node>> {
        let node_id = self.cloud_init.tokens.get(token_hash)?;
        self.name_of_id.get(node_id).and_then(|name| self.by_name.get(name))
    }

    /// The boot parameters of the first target in `order` that has some.
    pub fn boot_params_for(&self, order: &[BootTarget]) -> Option<&Arc<BootParams>> {
        order.iter().find_map(|target| self.boot.get(target))
    }

    fn set_boot_params(&mut self, entries: Vec<BootParams>) {
        self.boot.clear();
        for entry in entries {
            let entry = Arc::new(entry);
            for target in entry.targets() {
                self.boot.insert(target, Arc::clone(&entry));
            }
        }
    }

    /// A node the scope may see; others are absent, as in the store.
    pub fn get_visible(&self, key: &str, scope: &ProjectScope) -> Option<&Arc<Node>> {
        self.get(key).filter(|node| crate::nodes_visible(scope, node.project.as_deref()))
    }

    /// Every node a reader with `scope` sees, judged by each node's own project.
    pub fn visible_nodes<'a>(&'a self, scope: &'a ProjectScope) -> impl Iterator<Item = &'a Arc<Node>> + 'a {
        self.nodes().filter(move |node| crate::nodes_visible(scope, node.project.as_deref()))
    }

    /// The same listing as [`Store::list_nodes`], from memory.
    pub fn list(&self, filter: &NodeFilter) -> Page<Node> {
        let limit = filter.limit.clamp(1, crate::MAX_PAGE_SIZE) as usize;
        let start = match &filter.after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut items = Vec::with_capacity(limit.min(self.by_name.len()));
        let mut next = None;
        let search = filter.search.as_ref().map(|text| text.to_lowercase());
        let matching = self.by_name.range((start, std::ops::Bound::Unbounded)).map(|(_, node)| node).filter(|node| {
            crate::nodes_visible(&filter.scope, node.project.as_deref())
                && filter.project.as_ref().is_none_or(|project| node.project.as_ref() == Some(project))
                && filter.state.is_none_or(|state| node.provision_state == state)
                && filter.group.as_ref().is_none_or(|group| node.groups.contains(group))
                && filter.mac.is_none_or(|mac| node.interfaces.iter().any(|interface| interface.mac_addr == mac))
                && search.as_ref().is_none_or(|text| node_matches_search(node, text))
        });
        for node in matching {
            if items.len() == limit {
                next = items.last().map(|node: &Node| node.name.clone());
                break;
            }
            items.push(Node::clone(node));
        }
        Page { items, next }
    }
}

/// Whether `lowercase_text` is in the node's name, xname or one of its MACs, case aside.
fn node_matches_search(node: &Node, lowercase_text: &str) -> bool {
    node.name.to_lowercase().contains(lowercase_text)
        || node.xname.as_ref().is_some_and(|xname| xname.to_lowercase().contains(lowercase_text))
        || node.interfaces.iter().any(|interface| interface.mac_addr.to_string().contains(lowercase_text))
}

/// The live inventory of one replica: the current view and the means to refresh it.
pub struct Inventory {
    store: Store,
    current: RwLock<Arc<InventoryView>>,
    /// One refresh at a time, so two never race to install views out of order.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("nodes", &self.view().len()).finish_non_exhaustive()
    }
}

impl Inventory {
    /// Loads every node.
    pub async fn load(store: Store) -> Result<Arc<Inventory>, StoreError> {
        let view = store.load_view().await?;
        Ok(Arc::new(Inventory { store, current: RwLock::new(Arc::new(view)), refreshing: tokio::sync::Mutex::new(()) }))
    }

    pub fn view(&self) -> Arc<InventoryView> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Applies the changes recorded since the current view. Returns the new view.
    pub async fn refresh(&self) -> Result<Arc<InventoryView>, StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.view();
        let changes = self.store.node_changes_after(current.last_event).await?;
        let Some(last_event) = changes.last_event else { return Ok(current) };
        let view = if changes.everything || changes.node_ids.len() > FULL_RELOAD_THRESHOLD {
            self.store.load_view().await?
        } else {
            let mut view = InventoryView::clone(&current);
            if changes.boot_params {
                view.set_boot_params(self.store.list_boot_params().await?);
            }
            if changes.cloud_init {
                let (defaults, groups) = self.store.load_cloud_init_shared().await?;
                view.cloud_init.defaults = Arc::new(defaults);
                view.cloud_init.groups = Arc::new(groups);
            }
            for id in &changes.node_ids {
                match self.store.get_node(id, &ProjectScope::All).await {
                    Ok(node) => view.insert(node),
                    Err(StoreError::NotFound { .. }) => {
                        view.remove(id);
                        view.cloud_init.set_node(id, None);
                    }
                    Err(error) => return Err(error),
                }
            }
            for id in &changes.cloud_init_node_ids {
                let record = self.store.load_cloud_init_node(id).await?;
                view.cloud_init.set_node(id, record);
            }
            view.last_event = last_event;
            view
        };
        let view = Arc::new(view);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = view.clone();
        Ok(view)
    }

    /// Refreshes every `interval` until the returned task is aborted: how a replica learns
    /// of other replicas' changes.
    pub fn follow(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let inventory = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = inventory.refresh().await {
                    tracing::warn!(error = %error, "refreshing the inventory view failed; retrying");
                }
            }
        })
    }
}

/// What changed since an event id.
#[derive(Debug, Default)]
pub(crate) struct NodeChanges {
    last_event: Option<i64>,
    node_ids: Vec<String>,
    /// A change that may touch many nodes at once (group edits): reload all.
    everything: bool,
    boot_params: bool,
    /// Cloud-init defaults or group configs changed.
    cloud_init: bool,
    cloud_init_node_ids: Vec<String>,
}

impl Store {
    /// Every node, and the id of the last event they reflect. The event id is read first:
    /// a change that lands in between is then both in the load and replayed, which is
    /// harmless, rather than in neither.
    async fn load_view(&self) -> Result<InventoryView, StoreError> {
        let mut connection = self.read().await?;
        let last_event: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM events")
            .fetch_one(&mut *connection)
            .await
            .and_then(|row| row.try_get("id"))
            .map_err(StoreError::query("reading the last event"))?;
        let nodes = crate::nodes::load_nodes(&mut connection, "1 = 1", &[], "").await?;
        drop(connection);
        let mut view = InventoryView { last_event, ..Default::default() };
        view.set_boot_params(self.list_boot_params().await?);
        view.cloud_init = self.load_cloud_init().await?;
        for snapshot in nodes {
            view.insert(snapshot.node);
        }
        Ok(view)
    }

    async fn node_changes_after(&self, after: i64) -> Result<NodeChanges, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query("SELECT id, target_kind, target, state_before, state_after FROM events WHERE id > $1 ORDER BY id")
            .bind(after)
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("reading node changes"))?;
        let mut changes = NodeChanges::default();
        for row in rows {
            let read = StoreError::query("reading node changes");
            let id: i64 = row.try_get("id").map_err(read)?;
            changes.last_event = Some(id);
            let kind: String = row.try_get("target_kind").map_err(StoreError::query("reading node changes"))?;
            match kind.as_str() {
                "node" => {
                    for column in ["state_before", "state_after"] {
                        let state: Option<String> = row.try_get(column).map_err(StoreError::query("reading node changes"))?;
                        let node_id = state
                            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                            .and_then(|value| value.get("id").and_then(|id| id.as_str()).map(str::to_owned));
                        if let Some(node_id) = node_id
                            && !changes.node_ids.contains(&node_id)
                        {
                            changes.node_ids.push(node_id);
                        }
                    }
                }
                "group" => changes.everything = true,
                "boot_params" => changes.boot_params = true,
                "cloud_init" => changes.cloud_init = true,
                "cloud_init_node" => {
                    let node_id: String = row.try_get("target").map_err(StoreError::query("reading node changes"))?;
                    if !changes.cloud_init_node_ids.contains(&node_id) {
                        changes.cloud_init_node_ids.push(node_id);
                    }
                }
                _ => {}
            }
        }
        Ok(changes)
    }
}
