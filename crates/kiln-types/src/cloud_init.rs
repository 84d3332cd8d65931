//! Cloud-init data as the API and the OpenCHAMI files speak it: cluster defaults
//! (`ci-defaults.yaml`), group configs (`ci-group-*.yaml`) and per-node meta-data, each a
//! loose wire struct validated into the form the store keeps.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::InvalidField;
use crate::validate;

/// Keys Kiln computes in a node's meta-data. Free-form keys may not take these names: a
/// default or override that silently lost to the computed value would be a trap.
pub const COMPUTED_META_DATA_KEYS: [&str; 2] = ["instance_data", "security-credentials"];

/// The largest cloud-config file a group may hold.
pub const MAX_CLOUD_CONFIG_BYTES: usize = 1 << 20;

/// Cluster-wide cloud-init meta-data (OpenCHAMI's `ci-defaults.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloudInitDefaults {
    /// Where nodes find group configs, e.g. `http://172.16.0.254:8081/cloud-init`;
    /// defaults to this server's `/cloud-init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Digits of the NID in generated hostnames (`nid001` for 3) [default: 4].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nid_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Prefix of generated hostnames [default: the first two letters of the cluster name].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<String>,
    /// Any other key: copied into every node's meta-data.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Map<String, Value>,
}

impl CloudInitDefaults {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(url) = &self.base_url
            && (!(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace))
        {
            return Err(InvalidField::new("base-url", format!("'{url}' is not an http:// or https:// URL")));
        }
        if let Some(length) = self.nid_length
            && !(1..=10).contains(&length)
        {
            return Err(InvalidField::new("nid-length", format!("{length} is not between 1 and 10")));
        }
        if let Some(short_name) = &self.short_name {
            hostname_label("short-name", short_name)?;
        }
        for (field, value) in [
            ("cluster-name", &self.cluster_name),
            ("region", &self.region),
            ("availability-zone", &self.availability_zone),
            ("cloud-provider", &self.cloud_provider),
        ] {
            if let Some(value) = value {
                validate::single_line(field, value, 253)?;
            }
        }
        public_keys("public-keys", &self.public_keys)?;
        free_form_keys(&self.extra)
    }
}

fn hostname_label(field: &str, value: &str) -> Result<(), InvalidField> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid { Ok(()) } else { Err(InvalidField::new(field, format!("'{value}' is not a hostname label (letters, digits and '-')"))) }
}

fn public_keys(field: &str, keys: &[String]) -> Result<(), InvalidField> {
    for (index, key) in keys.iter().enumerate() {
        // One key per line in authorized_keys: a newline would smuggle in a second one.
        if key.trim().is_empty() || key.contains(['\n', '\r', '\0']) {
            return Err(InvalidField::new(format!("{field}[{index}]"), "must be one non-empty line"));
        }
    }
    Ok(())
}

fn free_form_keys(keys: &Map<String, Value>) -> Result<(), InvalidField> {
    for key in keys.keys() {
        if COMPUTED_META_DATA_KEYS.contains(&key.as_str()) {
            return Err(InvalidField::new(key, "is computed by Kiln and cannot be set"));
        }
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(InvalidField::new(key, "is not a usable meta-data key"));
        }
    }
    Ok(())
}

/// How a group's cloud-config file is written in its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    #[default]
    Plain,
    Base64,
}

/// A cloud-config file as written in a group config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloudConfigFileInput {
    pub content: String,
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Accepted for OpenCHAMI compatibility; Kiln names the file after the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A group's cloud-init config (one entry of OpenCHAMI's `ci-group-*.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitGroupInput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown to the group's nodes under `instance_data.v1.vendor_data.groups.<name>`.
    #[serde(default, rename = "meta-data", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta_data: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<CloudConfigFileInput>,
    /// The project that owns the group when this creates it; absent makes a global group
    /// (administrators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A validated group config: the file decoded to text.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudInitGroupSpec {
    pub name: String,
    pub description: Option<String>,
    pub meta_data: Map<String, Value>,
    pub content: Option<String>,
    pub project: Option<String>,
}

/// What a cloud-config file is, by its first line (the cloud-init user-data formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudConfigKind {
    /// `## template: jinja`, rendered by cloud-init on the node.
    JinjaTemplate,
    CloudConfig,
    Include,
    Script,
    Boothook,
    Multipart,
}

/// The kind of a cloud-config file, or why it is none that cloud-init would act on.
pub fn cloud_config_kind(content: &str) -> Result<CloudConfigKind, String> {
    let first_line = content.lines().next().unwrap_or_default().trim_end();
    let kind = match first_line {
        line if line.starts_with("## template:") => {
            if line.trim_start_matches("## template:").trim() != "jinja" {
                return Err(format!("'{line}': jinja is the only template language cloud-init knows"));
            }
            CloudConfigKind::JinjaTemplate
        }
        "#cloud-config" => CloudConfigKind::CloudConfig,
        "#include" => CloudConfigKind::Include,
        "#cloud-boothook" => CloudConfigKind::Boothook,
        line if line.starts_with("#!") => CloudConfigKind::Script,
        line if line.to_ascii_lowercase().starts_with("content-type: multipart") => CloudConfigKind::Multipart,
        line => {
            return Err(format!(
                "starts with '{line}'; cloud-init acts only on '#cloud-config', '## template: jinja', '#include', '#!' scripts, \
                 '#cloud-boothook' or MIME multipart"
            ));
        }
    };
    Ok(kind)
}

impl TryFrom<&CloudInitGroupInput> for CloudInitGroupSpec {
    type Error = InvalidField;

    fn try_from(input: &CloudInitGroupInput) -> Result<Self, InvalidField> {
        let name = validate::name("name", &input.name)?;
        let description = input.description.as_deref().map(|text| validate::single_line("description", text, 1024)).transpose()?;
        let project = input.project.as_deref().map(|project| validate::name("project", project)).transpose()?;
        let content = match &input.file {
            None => None,
            Some(file) => {
                let bytes = match file.encoding {
                    ContentEncoding::Plain => file.content.clone().into_bytes(),
                    ContentEncoding::Base64 => {
                        use base64::Engine as _;
                        let compact: String = file.content.split_whitespace().collect();
                        base64::engine::general_purpose::STANDARD
                            .decode(compact)
                            .map_err(|error| InvalidField::new("file.content", format!("is not base64: {error}")))?
                    }
                };
                if bytes.len() > MAX_CLOUD_CONFIG_BYTES {
                    return Err(InvalidField::new("file.content", format!("is larger than {MAX_CLOUD_CONFIG_BYTES} bytes")));
                }
                let text = String::from_utf8(bytes).map_err(|_| InvalidField::new("file.content", "is not UTF-8 text"))?;
                cloud_config_kind(&text).map_err(|message| InvalidField::new("file.content", message))?;
                Some(text)
            }
        };
        Ok(CloudInitGroupSpec { name, description, meta_data: input.meta_data.clone().unwrap_or_default(), content, project })
    }
}

/// A group's cloud-init config as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitGroup {
    pub name: String,
    pub description: String,
    #[serde(rename = "meta-data")]
    #[schema(value_type = Object)]
    pub meta_data: Map<String, Value>,
    /// The cloud-config file, as plain text.
    pub file: Option<CloudConfigFile>,
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloudConfigFile {
    pub encoding: ContentEncoding,
    pub content: String,
}

/// Per-node cloud-init data (an entry of `ochami cloud-init node set -d '[{"id": …}]'`):
/// overrides of `local-hostname`, `hostname`, `instance-id`, extra `public-keys`, any other
/// key copied into the node's meta-data, and secrets served on the token path only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitNodeInput {
    /// The node's name, xname or id.
    pub id: String,
    /// Served only to the node itself on `/cloud-init-secure/`, under
    /// `security-credentials` (a key cloud-init keeps out of its world-readable files).
    #[serde(default, rename = "secret-data", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub secret_data: Option<Map<String, Value>>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub meta_data: Map<String, Value>,
}

/// Node meta-data keys with a meaning beyond being copied.
pub const NODE_OVERRIDE_KEYS: [&str; 4] = ["local-hostname", "hostname", "instance-id", "public-keys"];

impl CloudInitNodeInput {
    /// Checks the overrides; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidField> {
        for key in ["local-hostname", "hostname"] {
            if let Some(value) = self.meta_data.get(key) {
                let text = value.as_str().ok_or_else(|| InvalidField::new(key, "must be a string"))?;
                let valid = !text.is_empty() && text.len() <= 253 && text.split('.').all(|label| hostname_label(key, label).is_ok());
                if !valid {
                    return Err(InvalidField::new(key, format!("'{text}' is not a hostname")));
                }
            }
        }
        if let Some(value) = self.meta_data.get("instance-id") {
            let text = value.as_str().ok_or_else(|| InvalidField::new("instance-id", "must be a string"))?;
            validate::name("instance-id", text)?;
        }
        if let Some(value) = self.meta_data.get("public-keys") {
            let keys: Vec<String> =
                serde_json::from_value(value.clone()).map_err(|_| InvalidField::new("public-keys", "must be a list of strings"))?;
            public_keys("public-keys", &keys)?;
        }
        free_form_keys(&self.meta_data)
    }
}

/// A node's cloud-init data as the API shows it: secrets by name only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitNode {
    pub node: String,
    #[serde(rename = "meta-data")]
    #[schema(value_type = Object)]
    pub meta_data: Map<String, Value>,
    /// The names of the node's secrets; never their values.
    #[serde(rename = "secret-keys")]
    pub secret_keys: Vec<String>,
    /// Whether a cloud-init token has been minted for the node.
    #[serde(rename = "has-token")]
    pub has_token: bool,
}

/// A freshly minted node token: shown once, kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitToken {
    pub node: String,
    pub token: String,
    /// The NoCloud seed URL carrying the token, for the kernel command line
    /// (`ds=nocloud-net;s=<seed_url>`).
    pub seed_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tutorial_defaults_parse_and_print_back() {
        let text = "---\nbase-url: \"http://172.16.0.254:8081/cloud-init\"\ncluster-name: \"demo\"\nnid-length: 3\npublic-keys:\n- \"ssh-ed25519 AAAA key\"\nshort-name: \"nid\"\n";
        let defaults: CloudInitDefaults = serde_yaml::from_str(text).unwrap();
        defaults.validate().unwrap();
        assert_eq!(defaults.nid_length, Some(3));
        expect_test::expect![[r#"
            {
              "base-url": "http://172.16.0.254:8081/cloud-init",
              "cluster-name": "demo",
              "nid-length": 3,
              "public-keys": [
                "ssh-ed25519 AAAA key"
              ],
              "short-name": "nid"
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&defaults).unwrap());
    }

    #[test]
    fn bad_defaults_name_the_field() {
        let cases = [
            ("nid-length: 0", "nid-length: 0 is not between 1 and 10"),
            ("base-url: ftp://x", "base-url: 'ftp://x' is not an http:// or https:// URL"),
            ("short-name: 'n d'", "short-name: 'n d' is not a hostname label (letters, digits and '-')"),
            ("public-keys: [\"a\\nb\"]", "public-keys[0]: must be one non-empty line"),
            ("instance_data: {}", "instance_data: is computed by Kiln and cannot be set"),
        ];
        for (text, message) in cases {
            let defaults: CloudInitDefaults = serde_yaml::from_str(text).unwrap();
            assert_eq!(defaults.validate().unwrap_err().to_string(), message, "{text}");
        }
    }

    #[test]
    fn group_files_decode_and_must_be_something_cloud_init_runs() {
        let input = |encoding, content: &str| CloudInitGroupInput {
            name: "compute".into(),
            description: None,
            meta_data: None,
            file: Some(CloudConfigFileInput { content: content.into(), encoding, filename: None }),
            project: None,
        };
        let spec = CloudInitGroupSpec::try_from(&input(ContentEncoding::Base64, "I2Nsb3VkLWNvbmZpZwp7fQo=")).unwrap();
        assert_eq!(spec.content.as_deref(), Some("#cloud-config\n{}\n"));
        let error = CloudInitGroupSpec::try_from(&input(ContentEncoding::Base64, "not base64!")).unwrap_err();
        assert!(error.to_string().starts_with("file.content: is not base64"), "{error}");
        let error = CloudInitGroupSpec::try_from(&input(ContentEncoding::Plain, "users: []\n")).unwrap_err();
        assert!(error.to_string().starts_with("file.content: starts with 'users: []'"), "{error}");
        let error = CloudInitGroupSpec::try_from(&input(ContentEncoding::Plain, "## template: mako\n#cloud-config\n")).unwrap_err();
        assert!(error.to_string().contains("jinja is the only template language"), "{error}");
    }

    #[test]
    fn node_overrides_are_checked() {
        let parse = |json: &str| serde_json::from_str::<CloudInitNodeInput>(json).unwrap();
        parse(r#"{"id": "x1000c0s0b0n0", "local-hostname": "compute1"}"#).validate().unwrap();
        let error = parse(r#"{"id": "n", "local-hostname": "bad host\nname"}"#).validate().unwrap_err();
        assert_eq!(error.to_string(), "local-hostname: 'bad host\nname' is not a hostname");
        let error = parse(r#"{"id": "n", "public-keys": "one"}"#).validate().unwrap_err();
        assert_eq!(error.to_string(), "public-keys: must be a list of strings");
        let node = parse(r#"{"id": "n", "secret-data": {"password": "x"}, "role": "compute"}"#);
        assert_eq!(node.secret_data.unwrap()["password"], "x");
        assert_eq!(node.meta_data["role"], "compute");
    }
}
