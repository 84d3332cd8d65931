//! What a booting machine is to boot, decided once and rendered by each boot loader: an iPXE
//! script ([`crate::script`]) or a GRUB configuration ([`crate::grub`]).

use kiln_types::MacAddress;
use kiln_types::node::Node;

use crate::BootParams;

/// Who a plan is for, and where the server is.
#[derive(Debug, Clone, Copy)]
pub struct ScriptContext<'a> {
    /// How nodes reach the server, e.g. `http://10.77.0.1:8080`.
    pub server_url: &'a str,
    /// The MAC the machine booted from.
    pub mac: MacAddress,
    pub node: Option<&'a Node>,
}

impl ScriptContext<'_> {
    pub(crate) fn bootscript_url(&self) -> String {
        format!("{}/boot/v1/bootscript?mac={}", self.server_url, self.mac)
    }

    /// The node's name, or words that stand for an unknown machine.
    pub(crate) fn who(&self) -> &str {
        self.node.map_or("this machine", |node| node.name.as_str())
    }

    /// Replaces `{{ name }}` templates; the names were checked when the parameters were
    /// stored, so an unknown one cannot occur here and is left as it is.
    fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(end) = rest[start..].find("}}") else { break };
            out.push_str(&rest[..start]);
            let name = rest[start + 2..start + end].trim();
            let value = match (name, self.node) {
                ("server.url", _) => Some(self.server_url.to_owned()),
                ("node.mac", _) => Some(self.mac.to_string()),
                ("node.name", Some(node)) => Some(node.name.clone()),
                ("node.xname", Some(node)) => Some(node.xname.clone().unwrap_or_default()),
                ("node.nid", Some(node)) => Some(node.nid.map(|nid| nid.to_string()).unwrap_or_default()),
                ("node.name" | "node.xname" | "node.nid", None) => Some(String::new()),
                _ => None,
            };
            match value {
                Some(value) => out.push_str(&value),
                None => out.push_str(&rest[start..start + end + 2]),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Why a kernel is booted; the boot loader says it on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPurpose {
    /// The boot parameters that apply to the machine.
    Parameters,
    /// The deploy ramdisk, to run the node agent.
    DeployAgent,
    /// An image running live (diskless).
    Live,
    /// The deploy ramdisk's kernel, attaching the node's network disk as its root.
    NetworkDisk,
}

/// A kernel to boot: URLs as the server hands them out (`http://`, `https://`, `tftp://`),
/// and the command line without any boot loader's own words (iPXE's `initrd=initrd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub purpose: KernelPurpose,
    /// Absent for boot parameters that give only `params`.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub command_line: String,
}

/// What a machine boots next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    Kernel(KernelBoot),
    /// The machine's own disk (deployed to it).
    LocalDisk,
    /// Nothing to boot yet (unknown, no parameters, or between steps): wait and ask again.
    AskAgain,
}

/// Where the deploy agent reaches the API listener, and, when that speaks HTTPS, the SHA-256
/// of the certificate it is to trust there: the agent fetches that certificate from the
/// boot listener and checks it against this digest (`kiln.api_ca=`).
#[derive(Debug, Clone, Copy)]
pub struct AgentApi<'a> {
    pub url: &'a str,
    pub trust_anchor_sha256: Option<&'a str>,
}

/// Where the deploy ramdisk's kernel and initramfs are served.
#[derive(Debug, Clone, Copy)]
pub struct RamdiskUrls<'a> {
    pub kernel: &'a str,
    pub initrd: &'a str,
}

impl BootPlan {
    /// The plan of a machine with boot parameters, templates expanded for it.
    pub fn from_params(params: &BootParams, context: &ScriptContext<'_>) -> BootPlan {
        BootPlan::Kernel(KernelBoot {
            purpose: KernelPurpose::Parameters,
            kernel: params.kernel.as_deref().map(|kernel| context.expand(kernel)),
            initrd: params.initrd.as_deref().map(|initrd| context.expand(initrd)),
            command_line: context.expand(&params.params),
        })
    }

    /// The deploy ramdisk, told where the server is, which node it runs on and the
    /// operation's token (valid only until the operation ends).
    pub fn deploy_agent(
        context: &ScriptContext<'_>,
        ramdisk: RamdiskUrls<'_>,
        node_id: &str,
        agent_token: &str,
        api: AgentApi<'_>,
    ) -> BootPlan {
        let mut command_line = format!(
            "console=tty0 console=ttyS0,115200 quiet kiln.server={server} kiln.api={api_url} kiln.node={node_id} kiln.mac={mac} kiln.token={agent_token}",
            server = context.server_url,
            api_url = api.url,
            mac = context.mac,
        );
        if let Some(digest) = api.trust_anchor_sha256 {
            command_line.push_str(&format!(" kiln.api_ca={digest}"));
        }
        BootPlan::Kernel(KernelBoot {
            purpose: KernelPurpose::DeployAgent,
            kernel: Some(ramdisk.kernel.to_owned()),
            initrd: Some(ramdisk.initrd.to_owned()),
            command_line,
        })
    }

    /// An image running live: its kernel and initramfs, with the root image's URL on the
    /// command line, where the initramfs fetches it into RAM.
    pub fn live(kernel: &str, initrd: &str, command_line: &str) -> BootPlan {
        BootPlan::Kernel(KernelBoot {
            purpose: KernelPurpose::Live,
            kernel: Some(kernel.to_owned()),
            initrd: Some(initrd.to_owned()),
            command_line: command_line.to_owned(),
        })
    }

    /// A network-mode node: the deploy ramdisk's kernel and initramfs, told where the node's
    /// network disk is (`kiln.nbd=`, `kiln.nbd.export=` in `command_line`).
    pub fn network_disk(kernel: &str, initrd: &str, command_line: &str) -> BootPlan {
        BootPlan::Kernel(KernelBoot {
            purpose: KernelPurpose::NetworkDisk,
            kernel: Some(kernel.to_owned()),
            initrd: Some(initrd.to_owned()),
            command_line: command_line.to_owned(),
        })
    }
}
