//! Boot parameters as OpenCHAMI's BSS has them: a kernel, an initrd and a kernel command
//! line, for targets named by MAC, host (name or xname), NID or group; `Default` as a host
//! names the entry for machines no other entry matches. The wire input, its validation
//! against script injection (a pure `TryFrom`) and the validated entry; which entry applies
//! to a booting machine is `kiln-boot`'s.

use std::collections::BTreeSet;

use crate::MacAddress;
use crate::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The host name BSS uses for the fallback entry.
pub const DEFAULT_HOST: &str = "Default";

/// Where the TFTP server serves Debian's signed shim to Secure Boot nodes, and the signed
/// network GRUB beside it, where shim looks for `grubx64.efi`. At the root: OVMF's PXE client
/// took no offer naming `secureboot/shimx64.efi` in the lab (PXE-E16, "no valid offer") and
/// takes this one.
pub const SECURE_BOOT_SHIM_TFTP_PATH: &str = "shimx64.efi";
pub const SECURE_BOOT_GRUB_TFTP_PATH: &str = "grubx64.efi";

/// Boot parameters as `kiln boot params set|add` reads them (the tutorial's `boot.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BootParamsInput {
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub params: Option<String>,
    #[serde(default)]
    pub macs: Vec<String>,
    /// Node names or xnames; `Default` for machines nothing else matches.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub nids: Vec<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Accepted for compatibility with BSS output and ignored: Kiln serves cloud-init itself.
    #[serde(default, rename = "cloud-init", skip_serializing)]
    #[schema(value_type = Option<Object>)]
    pub cloud_init: Option<serde_json::Value>,
}

/// One thing an entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum BootTarget {
    Mac(MacAddress),
    Host(String),
    Nid(u32),
    Group(String),
}

impl BootTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            BootTarget::Mac(_) => "mac",
            BootTarget::Host(_) => "host",
            BootTarget::Nid(_) => "nid",
            BootTarget::Group(_) => "group",
        }
    }

    pub fn value(&self) -> String {
        match self {
            BootTarget::Mac(mac) => mac.to_string(),
            BootTarget::Host(host) => host.clone(),
            BootTarget::Nid(nid) => nid.to_string(),
            BootTarget::Group(group) => group.clone(),
        }
    }

    pub fn from_parts(kind: &str, value: &str) -> Option<BootTarget> {
        match kind {
            "mac" => value.parse().ok().map(BootTarget::Mac),
            "host" => Some(BootTarget::Host(value.to_owned())),
            "nid" => value.parse().ok().map(BootTarget::Nid),
            "group" => Some(BootTarget::Group(value.to_owned())),
            _ => None,
        }
    }
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BootParams {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub params: String,
    #[schema(value_type = Vec<String>)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<MacAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidBootParams {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidBootParams {
    InvalidBootParams { field: field.into(), message: message.into() }
}

/// The template variables kernel parameters and URLs may use.
pub const TEMPLATE_VARIABLES: [&str; 5] = ["node.name", "node.xname", "node.nid", "node.mac", "server.url"];

/// Refuses what could change the meaning of the iPXE script the value is written into: line
/// breaks and other control characters (a new command), `||`/`&&` (command chaining) and
/// unknown `{{ … }}` templates.
fn script_safe(field: &str, value: &str, allow_spaces: bool) -> Result<String, InvalidBootParams> {
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains a line break or another control character"));
    }
    if value.contains("||") || value.contains("&&") {
        return Err(invalid(field, "contains '||' or '&&', which iPXE would run as a command"));
    }
    let mut outside_templates = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").ok_or_else(|| invalid(field, "'{{' without a closing '}}'"))?;
        let name = rest[start + 2..start + end].trim();
        if !TEMPLATE_VARIABLES.contains(&name) {
            return Err(invalid(field, format!("unknown template variable '{name}' (known: {})", TEMPLATE_VARIABLES.join(", "))));
        }
        outside_templates.push_str(&rest[..start]);
        rest = &rest[start + end + 2..];
    }
    outside_templates.push_str(rest);
    if !allow_spaces && outside_templates.contains(' ') {
        return Err(invalid(field, "a URL cannot contain spaces"));
    }
    Ok(value.to_owned())
}

fn url(field: &str, value: &str) -> Result<String, InvalidBootParams> {
    let value = script_safe(field, value.trim(), false)?;
    let known_scheme = ["http://", "https://", "tftp://", "{{ server.url }}", "{{server.url}}"].iter().any(|p| value.starts_with(p));
    if !known_scheme {
        return Err(invalid(field, format!("'{value}' is not an http://, https:// or tftp:// URL")));
    }
    Ok(value)
}

impl TryFrom<&BootParamsInput> for BootParams {
    type Error = InvalidBootParams;

    fn try_from(input: &BootParamsInput) -> Result<Self, Self::Error> {
        let kernel = input.kernel.as_deref().map(|value| url("kernel", value)).transpose()?;
        let initrd = input.initrd.as_deref().map(|value| url("initrd", value)).transpose()?;
        let params = input.params.as_deref().map(|value| script_safe("params", value.trim(), true)).transpose()?.unwrap_or_default();
        if kernel.is_none() && initrd.is_none() && params.is_empty() {
            return Err(invalid("kernel", "boot parameters need at least a kernel, an initrd or params"));
        }
        let targets = input.targets()?;
        let params =
            BootParams { kernel, initrd, params, macs: vec![], hosts: vec![], nids: vec![], groups: vec![] }.with_targets(&targets);
        if targets.is_empty() {
            return Err(invalid(
                "macs",
                "boot parameters need a target: macs, hosts, nids or groups (hosts: [Default] for every other machine)",
            ));
        }
        Ok(params)
    }
}

impl BootParamsInput {
    /// The validated targets alone (for deleting by target).
    pub fn targets(&self) -> Result<Vec<BootTarget>, InvalidBootParams> {
        let input = self;
        let macs = input
            .macs
            .iter()
            .enumerate()
            .map(|(index, mac)| validate::mac(&format!("macs[{index}]"), mac).map_err(|e| invalid(e.field, e.message)))
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = input
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| validate::name(&format!("hosts[{index}]"), host).map_err(|e| invalid(e.field, e.message)))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = input
            .groups
            .iter()
            .enumerate()
            // A group target is exact: `NAME` is the group without a project, `PROJECT/NAME` a
            // project's group.
            .map(|(index, group)| {
                crate::scoped_name::ScopedName::parse(&format!("groups[{index}]"), group)
                    .map(|group| group.key())
                    .map_err(|e| invalid(e.field, e.message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let all = BootParams { kernel: None, initrd: None, params: String::new(), macs, hosts, nids: input.nids.clone(), groups };
        Ok(all.targets())
    }
}

impl BootParams {
    /// Every target, without duplicates, in a stable order.
    pub fn targets(&self) -> Vec<BootTarget> {
        let set: BTreeSet<BootTarget> = self
            .macs
            .iter()
            .map(|mac| BootTarget::Mac(*mac))
            .chain(self.hosts.iter().map(|host| BootTarget::Host(host.clone())))
            .chain(self.nids.iter().map(|nid| BootTarget::Nid(*nid)))
            .chain(self.groups.iter().map(|group| BootTarget::Group(group.clone())))
            .collect();
        set.into_iter().collect()
    }

    /// The same parameters for other targets.
    pub fn with_targets(&self, targets: &[BootTarget]) -> BootParams {
        let mut params = BootParams { macs: vec![], hosts: vec![], nids: vec![], groups: vec![], ..self.clone() };
        for target in targets {
            match target {
                BootTarget::Mac(mac) => params.macs.push(*mac),
                BootTarget::Host(host) => params.hosts.push(host.clone()),
                BootTarget::Nid(nid) => params.nids.push(*nid),
                BootTarget::Group(group) => params.groups.push(group.clone()),
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<BootParams, InvalidBootParams> {
        BootParams::try_from(&serde_yaml::from_str::<BootParamsInput>(yaml).unwrap())
    }

    #[test]
    fn the_tutorial_boot_yaml_is_accepted() {
        let params = parse(
            "kernel: 'http://172.16.0.254:9000/boot-images/efi-images/compute/debug/vmlinuz-5.14.0-570.21.1.el9_6.x86_64'\n\
             initrd: 'http://172.16.0.254:9000/boot-images/efi-images/compute/debug/initramfs-5.14.0-570.21.1.el9_6.x86_64.img'\n\
             params: 'nomodeset ro root=live:http://172.16.0.254:9000/boot-images/compute/debug/rocky9.6-compute-debug-rocky9 ip=dhcp overlayroot=tmpfs overlayroot_cfgdisk=disabled apparmor=0 selinux=0 console=ttyS0,115200 ip6=off cloud-init=enabled ds=nocloud-net;s=http://172.16.0.254:8081/cloud-init'\n\
             macs:\n  - 52:54:00:be:ef:01\n  - 52:54:00:be:ef:02\n",
        )
        .unwrap();
        assert_eq!(params.macs.len(), 2);
        assert!(params.params.ends_with("ds=nocloud-net;s=http://172.16.0.254:8081/cloud-init"));
    }

    #[test]
    fn script_injection_is_refused() {
        let cases = [
            (
                "kernel: http://x/k\nparams: \"quiet\\nshell\"\nhosts: [Default]\n",
                "params: contains a line break or another control character",
            ),
            (
                "kernel: http://x/k\nparams: \"quiet || shell\"\nhosts: [Default]\n",
                "params: contains '||' or '&&', which iPXE would run as a command",
            ),
            ("kernel: \"http://x/k\\r\\nshell\"\nhosts: [Default]\n", "kernel: contains a line break or another control character"),
            ("kernel: http://x/k extra\nhosts: [Default]\n", "kernel: a URL cannot contain spaces"),
            ("kernel: file:///etc/passwd\nhosts: [Default]\n", "kernel: 'file:///etc/passwd' is not an http://, https:// or tftp:// URL"),
            (
                "kernel: http://x/k\nparams: \"a={{ node.secret }}\"\nhosts: [Default]\n",
                "params: unknown template variable 'node.secret' (known: node.name, node.xname, node.nid, node.mac, server.url)",
            ),
            (
                "kernel: http://x/k\n",
                "macs: boot parameters need a target: macs, hosts, nids or groups (hosts: [Default] for every other machine)",
            ),
            ("hosts: [Default]\n", "kernel: boot parameters need at least a kernel, an initrd or params"),
            ("kernel: http://x/k\nmacs: [zz]\n", "macs[0]: 'zz' is not a MAC address (expected six hex pairs like 52:54:00:be:ef:01)"),
        ];
        for (yaml, message) in cases {
            assert_eq!(parse(yaml).unwrap_err().to_string(), message, "{yaml}");
        }
    }
}
