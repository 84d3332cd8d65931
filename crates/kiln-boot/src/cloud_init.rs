//! What the cloud-init metadata service says to a node: its merged meta-data, its
//! vendor-data, and the preview of a group's templated cloud-config. Pure functions of the
//! cluster defaults, the node and its groups, so every document is a snapshot test.

use std::fmt::Write as _;
use std::net::IpAddr;

use kiln_types::cloud_init::{CloudConfigKind, CloudInitDefaults, cloud_config_kind};
use serde_json::{Map, Value};
use sha2::Digest as _;

/// The `version` OpenCHAMI writes into `vendor_data`.
const VENDOR_DATA_VERSION: &str = "1.0";

/// What the service knows of the node a request is for.
#[derive(Debug, Clone, Copy)]
pub struct CloudInitNode<'a> {
    /// The node's id: stable across renames, so its instance-id is too.
    pub id: &'a str,
    pub name: &'a str,
    pub nid: Option<u32>,
    pub local_ipv4: Option<IpAddr>,
    /// The node's meta-data overrides and extra keys (`kiln cloud-init node set`).
    pub overrides: Option<&'a Map<String, Value>>,
    /// Bumped by each deploy, so cloud-init sees a new instance and runs its per-instance
    /// modules again.
    pub generation: u64,
}

/// One of the node's groups, in membership order.
#[derive(Debug, Clone, Copy)]
pub struct CloudInitGroupView<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub meta_data: Option<&'a Map<String, Value>>,
    /// Whether the group has a cloud-config file (and so a line in vendor-data).
    pub has_file: bool,
}

/// Everything a node's documents depend on.
#[derive(Debug, Clone)]
pub struct CloudInitInputs<'a> {
    pub defaults: &'a CloudInitDefaults,
    pub node: CloudInitNode<'a>,
    pub groups: Vec<CloudInitGroupView<'a>>,
    /// Where group configs are fetched from: the defaults' `base-url`, or this server's.
    pub base_url: String,
    /// The node's secrets, on the token path only.
    pub secrets: Option<&'a Map<String, Value>>,
}

/// `i-` and eight hex digits: stable for a node until its next deploy.
pub fn instance_id(node_id: &str, generation: u64) -> String {
    let digest = sha2::Sha256::digest(format!("{node_id}:{generation}"));
    format!("i-{}", hex::encode(&digest[..4]))
}

/// The generated hostname: the short name and the NID padded to `nid-length` digits
/// (`nid001`), as OpenCHAMI names nodes; a node without a NID keeps its own name.
pub fn generated_hostname(defaults: &CloudInitDefaults, node_name: &str, nid: Option<u32>) -> String {
    let Some(nid) = nid else { return node_name.to_owned() };
    let short_name = match (&defaults.short_name, &defaults.cluster_name) {
        (Some(short_name), _) => short_name.clone(),
        (None, Some(cluster)) if !cluster.is_empty() => cluster.chars().take(2).collect(),
        _ => "nid".to_owned(),
    };
    let width = defaults.nid_length.unwrap_or(4) as usize;
    format!("{short_name}{nid:0width$}")
}

fn override_str<'a>(node: &CloudInitNode<'a>, key: &str) -> Option<&'a str> {
    node.overrides.and_then(|map| map.get(key)).and_then(Value::as_str)
}

fn string_or_absent(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value.filter(|value| !value.is_empty()) {
        map.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

/// The node's merged meta-data, shaped as OpenCHAMI's (`instance-id`, `hostname`,
/// `local-hostname`, `cluster-name`, `instance_data.v1`), cluster defaults first, then the
/// node's overrides; keys in alphabetical order as the tutorial prints them.
pub fn meta_data(inputs: &CloudInitInputs<'_>) -> Map<String, Value> {
    let defaults = inputs.defaults;
    let node = &inputs.node;
    let instance_id = override_str(node, "instance-id").map_or_else(|| instance_id(node.id, node.generation), str::to_owned);
    let generated = generated_hostname(defaults, node.name, node.nid);
    let hostname = override_str(node, "hostname").unwrap_or(&generated).to_owned();
    let local_hostname = override_str(node, "local-hostname").unwrap_or(&hostname).to_owned();

    let mut public_keys: Vec<Value> = defaults.public_keys.iter().cloned().map(Value::String).collect();
    if let Some(Value::Array(keys)) = node.overrides.and_then(|map| map.get("public-keys")) {
        public_keys.extend(keys.iter().filter(|key| !public_keys.contains(key)).cloned().collect::<Vec<_>>());
    }

    let mut groups = Map::new();
    for group in &inputs.groups {
        let mut entry = Map::new();
        if !group.description.is_empty() {
            entry.insert("Description".to_owned(), Value::String(group.description.to_owned()));
        }
        for (key, value) in group.meta_data.into_iter().flatten() {
            entry.insert(key.clone(), value.clone());
        }
        groups.insert(group.name.to_owned(), Value::Object(entry));
    }
    let mut vendor_data = Map::new();
    vendor_data.insert("cloud_init_base_url".to_owned(), Value::String(inputs.base_url.clone()));
    string_or_absent(&mut vendor_data, "cluster_name", defaults.cluster_name.as_deref());
    vendor_data.insert("groups".to_owned(), Value::Object(groups));
    vendor_data.insert("version".to_owned(), Value::String(VENDOR_DATA_VERSION.to_owned()));

    let mut v1 = Map::new();
    string_or_absent(&mut v1, "availability_zone", defaults.availability_zone.as_deref());
    string_or_absent(&mut v1, "cloud_provider", defaults.cloud_provider.as_deref());
    v1.insert("instance_id".to_owned(), Value::String(instance_id.clone()));
    if let Some(address) = node.local_ipv4 {
        v1.insert("local_ipv4".to_owned(), Value::String(address.to_string()));
    }
    v1.insert("public_keys".to_owned(), Value::Array(public_keys));
    string_or_absent(&mut v1, "region", defaults.region.as_deref());
    v1.insert("vendor_data".to_owned(), Value::Object(vendor_data));

    // Free-form keys first (defaults, then the node's), so the computed keys win; both were
    // validated not to collide with them.
    let mut merged = std::collections::BTreeMap::new();
    for (key, value) in &defaults.extra {
        merged.insert(key.clone(), value.clone());
    }
    for (key, value) in node.overrides.into_iter().flatten() {
        if !kiln_types::cloud_init::NODE_OVERRIDE_KEYS.contains(&key.as_str()) {
            merged.insert(key.clone(), value.clone());
        }
    }
    if let Some(cluster_name) = defaults.cluster_name.as_deref().filter(|name| !name.is_empty()) {
        merged.insert("cluster-name".to_owned(), Value::String(cluster_name.to_owned()));
    }
    merged.insert("hostname".to_owned(), Value::String(hostname));
    merged.insert("instance-id".to_owned(), Value::String(instance_id));
    merged.insert("instance_data".to_owned(), Value::Object(Map::from_iter([("v1".to_owned(), Value::Object(v1))])));
    merged.insert("local-hostname".to_owned(), Value::String(local_hostname));
    if let Some(secrets) = inputs.secrets.filter(|secrets| !secrets.is_empty()) {
        merged.insert("security-credentials".to_owned(), Value::Object(secrets.clone()));
    }
    merged.into_iter().collect()
}

/// The node's vendor-data: `#include` and the URL of each of its groups' cloud-configs, in
/// group order, so cloud-init fetches and merges them in that order.
pub fn vendor_data(base_url: &str, groups: &[CloudInitGroupView<'_>]) -> String {
    let mut text = String::from("#include\n");
    for group in groups.iter().filter(|group| group.has_file) {
        text.push_str(&format!("{}/{}.yaml\n", base_url.trim_end_matches('/'), group.name));
    }
    text
}

/// Meta-data as YAML, as the NoCloud datasource reads it.
pub fn to_yaml(meta_data: &Map<String, Value>) -> String {
    serde_yaml::to_string(meta_data).expect("JSON values always serialize to YAML")
}

/// Why a group's template could not be previewed.
#[derive(Debug, thiserror::Error)]
#[error("rendering the template{}", line.map(|line| format!(" at line {line} (after the '## template' line)")).unwrap_or_default())]
pub struct RenderError {
    /// The template's line, counted after the `## template` line, where minijinja knows it.
    pub line: Option<usize>,
    #[source]
    pub source: minijinja::Error,
}

/// What cloud-init on the node makes of a group's cloud-config: a `## template: jinja` file
/// rendered with the node's instance data (the first line dropped, as cloud-init does);
/// anything else as it is. Values print as Python prints them (`['ssh-ed25519 …']`), as
/// Jinja2 on the node does, so the preview is the node's text.
pub fn render_group(content: &str, meta_data: &Map<String, Value>) -> Result<String, RenderError> {
    if cloud_config_kind(content) != Ok(CloudConfigKind::JinjaTemplate) {
        return Ok(content.to_owned());
    }
    let body = content.split_once('\n').map_or("", |(_, rest)| rest);
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    environment.set_keep_trailing_newline(true);
    environment.set_formatter(|out, _state, value| {
        if value.as_str().is_some() || value.is_number() {
            write!(out, "{value}")?;
        } else {
            write_python(out, value)?;
        }
        Ok(())
    });
    let failed = |source: minijinja::Error| RenderError { line: source.line(), source };
    let template = environment.template_from_str(body).map_err(failed)?;
    template.render(instance_data(meta_data)).map_err(failed)
}

/// The variables cloud-init gives templates: `ds.meta_data` and the standard `v1` keys,
/// with every `a-b` key also reachable as `a_b`, as cloud-init does.
fn instance_data(meta_data: &Map<String, Value>) -> Value {
    let text = |key: &str| meta_data.get(key).cloned().unwrap_or(Value::Null);
    let v1 = serde_json::json!({
        "cloud_name": "nocloud",
        "platform": "nocloud",
        "instance_id": text("instance-id"),
        "local_hostname": text("local-hostname"),
    });
    underscore_aliases(serde_json::json!({ "ds": { "meta_data": meta_data }, "v1": v1 }))
}

fn underscore_aliases(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let value = underscore_aliases(value);
                if key.contains('-') {
                    out.entry(key.replace('-', "_")).or_insert_with(|| value.clone());
                }
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(underscore_aliases).collect()),
        other => other,
    }
}

/// Python's `repr` of a JSON-like value, which is what Jinja2 prints for lists and dicts.
fn write_python(out: &mut minijinja::Output<'_>, value: &minijinja::Value) -> std::fmt::Result {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.write_str("None"),
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            // Python quotes with ' unless the text holds ' and not ".
            let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
            out.write_char(quote)?;
            for c in text.chars() {
                match c {
                    '\\' => out.write_str("\\\\")?,
                    '\n' => out.write_str("\\n")?,
                    '\r' => out.write_str("\\r")?,
                    '\t' => out.write_str("\\t")?,
                    c if c == quote => {
                        out.write_char('\\')?;
                        out.write_char(c)?;
                    }
                    c => out.write_char(c)?,
                }
            }
            out.write_char(quote)
        }
        ValueKind::Seq => {
            out.write_char('[')?;
            for (index, item) in value.try_iter().into_iter().flatten().enumerate() {
                if index > 0 {
                    out.write_str(", ")?;
                }
                write_python(out, &item)?;
            }
            out.write_char(']')
        }
        ValueKind::Map => {
            out.write_char('{')?;
            for (index, key) in value.try_iter().into_iter().flatten().enumerate() {
                if index > 0 {
                    out.write_str(", ")?;
                }
                write_python(out, &key)?;
                out.write_str(": ")?;
                write_python(out, &value.get_item(&key).unwrap_or_default())?;
            }
            out.write_char('}')
        }
        _ => write!(out, "{value}"),
    }
}

#[cfg(test)]
mod tests;
