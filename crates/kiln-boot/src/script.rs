//! iPXE scripts: what a booting machine runs.

use kiln_types::MacAddress;
use kiln_types::node::Node;

use crate::BootParams;

/// What a script is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct ScriptContext<'a> {
    /// How nodes reach the server, e.g. `http://10.77.0.1:8080`.
    pub server_url: &'a str,
    /// The MAC the machine booted from.
    pub mac: MacAddress,
    pub node: Option<&'a Node>,
}

impl ScriptContext<'_> {
    fn bootscript_url(&self) -> String {
        format!("{}/boot/v1/bootscript?mac={}", self.server_url, self.mac)
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

/// After a failed boot the machine waits this long and asks again, rather than falling
/// through to whatever boots next.
const RETRY_SECONDS: u32 = 10;

fn retry_tail(context: &ScriptContext<'_>) -> String {
    format!(
        ":retry\necho Retrying in {RETRY_SECONDS} seconds\nsleep {RETRY_SECONDS}\nchain --replace --autofree {} || goto retry\n",
        context.bootscript_url()
    )
}

/// The script for a machine with boot parameters. The initrd gets a fixed name and the
/// command line names it (`initrd=initrd`): the kernel's EFI stub finds the initrd only that
/// way when iPXE boots it on UEFI.
pub fn bootscript(params: &BootParams, context: &ScriptContext<'_>) -> String {
    let mut script = String::from("#!ipxe\n");
    if let Some(node) = context.node {
        script.push_str(&format!("echo Kiln: booting {} ({})\n", node.name, context.mac));
    }
    let mut command_line = context.expand(&params.params);
    if params.initrd.is_some() && !command_line.split(' ').any(|word| word.starts_with("initrd=")) {
        command_line = format!("initrd=initrd {command_line}").trim_end().to_owned();
    }
    if let Some(kernel) = &params.kernel {
        script.push_str(&format!("kernel --name kernel {} {command_line} || goto retry\n", context.expand(kernel)).replace("  ", " "));
    }
    if let Some(initrd) = &params.initrd {
        script.push_str(&format!("initrd --name initrd {} || goto retry\n", context.expand(initrd)));
    }
    script.push_str("boot || goto retry\n");
    script.push_str(&retry_tail(context));
    script
}

/// The script for a machine without boot parameters (unknown, or known without any): it
/// waits and asks again, so that it boots as soon as an operator gives it parameters.
pub fn unknown_machine_script(context: &ScriptContext<'_>) -> String {
    let who = match context.node {
        Some(node) => format!("node {}", node.name),
        None => "this machine".to_owned(),
    };
    format!("#!ipxe\necho Kiln: no boot parameters for {who} ({})\ngoto retry\n{}", context.mac, retry_tail(context))
}

/// Where the deploy ramdisk's kernel and initramfs are served.
#[derive(Debug, Clone, Copy)]
pub struct RamdiskUrls<'a> {
    pub kernel: &'a str,
    pub initrd: &'a str,
}

/// The script that boots the deploy ramdisk, telling `kiln-agent` where the server is, which
/// node it runs on and the operation's token (valid only until the operation ends).
pub fn agent_script(context: &ScriptContext<'_>, ramdisk: RamdiskUrls<'_>, node_id: &str, agent_token: &str, api_url: &str) -> String {
    let name = context.node.map_or("this machine", |node| node.name.as_str());
    format!(
        "#!ipxe\necho Kiln: {name} ({mac}) boots the deploy agent\n\
         kernel --name kernel {kernel} initrd=initrd console=tty0 console=ttyS0,115200 quiet \
         kiln.server={server} kiln.api={api_url} kiln.node={node_id} kiln.mac={mac} kiln.token={agent_token} || goto retry\n\
         initrd --name initrd {initrd} || goto retry\nboot || goto retry\n{tail}",
        mac = context.mac,
        kernel = ramdisk.kernel,
        initrd = ramdisk.initrd,
        server = context.server_url,
        tail = retry_tail(context),
    )
}

/// The script of a node deployed to disk: boot the local disk. On BIOS iPXE boots the first
/// disk itself (whatever the firmware's boot order); on UEFI it returns to the firmware,
/// which goes on to its next boot option.
pub fn local_disk_script(context: &ScriptContext<'_>) -> String {
    let name = context.node.map_or("this machine", |node| node.name.as_str());
    format!(
        "#!ipxe\necho Kiln: {name} ({}) boots from its local disk\n\
         iseq ${{platform}} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n",
        context.mac
    )
}

/// The script of a node running an image live (diskless): its kernel and initramfs, with the
/// root image's URL on the command line, where the initramfs fetches it into RAM.
pub fn live_script(context: &ScriptContext<'_>, kernel: &str, initrd: &str, command_line: &str) -> String {
    kernel_script(context, "boots its image live", kernel, initrd, command_line)
}

/// A network-mode node's script: the deploy ramdisk's kernel and initramfs, told where the
/// node's network disk is (`kiln.nbd=`, `kiln.nbd.export=` in `command_line`).
pub fn network_disk_script(context: &ScriptContext<'_>, kernel: &str, initrd: &str, command_line: &str) -> String {
    kernel_script(context, "boots from its network disk", kernel, initrd, command_line)
}

fn kernel_script(context: &ScriptContext<'_>, what: &str, kernel: &str, initrd: &str, command_line: &str) -> String {
    let name = context.node.map_or("this machine", |node| node.name.as_str());
    format!(
        "#!ipxe\necho Kiln: {name} ({mac}) {what}\n\
         kernel --name kernel {kernel} initrd=initrd {command_line} || goto retry\n\
         initrd --name initrd {initrd} || goto retry\nboot || goto retry\n{tail}",
        mac = context.mac,
        tail = retry_tail(context),
    )
}

/// The script served by TFTP to iPXE: chain to the HTTP boot script of the booting NIC.
pub fn chain_script(server_url: &str) -> String {
    format!("#!ipxe\nchain --replace --autofree {server_url}/boot/v1/bootscript?mac=${{netX/mac}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootParamsInput;

    fn node() -> Node {
        serde_json::from_value(serde_json::json!({
            "id": "3d3c", "name": "nid001", "xname": "x1000c0s0b0n0", "nid": 1, "role": "Compute", "groups": ["compute"],
            "interfaces": [{"mac_addr": "52:54:00:be:ef:01", "ip_addrs": []}], "bmc": null, "properties": {},
            "project": null, "provision_state": "available", "maintenance": false,
            "created_at": "2026-11-22T00:00:00Z", "updated_at": "2026-11-22T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn scripts_for_known_unknown_and_tftp_chain() {
        let input = BootParamsInput {
            kernel: Some("{{ server.url }}/boot/files/vmlinuz".into()),
            initrd: Some("http://10.77.0.1:8080/boot/files/initrd.img".into()),
            params: Some(
                "console=ttyS0,115200 kiln.node={{ node.name }} kiln.nid={{node.nid}} ds=nocloud-net;s={{ server.url }}/cloud-init/".into(),
            ),
            hosts: vec!["Default".into()],
            ..Default::default()
        };
        let params = BootParams::try_from(&input).unwrap();
        let node = node();
        let context = ScriptContext { server_url: "http://10.77.0.1:8080", mac: "52:54:00:be:ef:01".parse().unwrap(), node: Some(&node) };
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: booting nid001 (52:54:00:be:ef:01)
            kernel --name kernel http://10.77.0.1:8080/boot/files/vmlinuz initrd=initrd console=ttyS0,115200 kiln.node=nid001 kiln.nid=1 ds=nocloud-net;s=http://10.77.0.1:8080/cloud-init/ || goto retry
            initrd --name initrd http://10.77.0.1:8080/boot/files/initrd.img || goto retry
            boot || goto retry
            :retry
            echo Retrying in 10 seconds
            sleep 10
            chain --replace --autofree http://10.77.0.1:8080/boot/v1/bootscript?mac=52:54:00:be:ef:01 || goto retry
        "#]]
        .assert_eq(&bootscript(&params, &context));
        let unknown = ScriptContext { node: None, mac: "52:54:00:00:00:99".parse().unwrap(), ..context };
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: no boot parameters for this machine (52:54:00:00:00:99)
            goto retry
            :retry
            echo Retrying in 10 seconds
            sleep 10
            chain --replace --autofree http://10.77.0.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:99 || goto retry
        "#]]
        .assert_eq(&unknown_machine_script(&unknown));
        expect_test::expect![[r#"
            #!ipxe
            chain --replace --autofree http://10.77.0.1:8080/boot/v1/bootscript?mac=${netX/mac}
        "#]]
        .assert_eq(&chain_script("http://10.77.0.1:8080"));
    }

    #[test]
    fn provisioning_scripts() {
        let node = node();
        let context = ScriptContext { server_url: "http://10.77.0.1:8081", mac: "52:54:00:be:ef:01".parse().unwrap(), node: Some(&node) };
        let ramdisk = RamdiskUrls {
            kernel: "http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/kernel",
            initrd: "http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/initrd",
        };
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: nid001 (52:54:00:be:ef:01) boots the deploy agent
            kernel --name kernel http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/kernel initrd=initrd console=tty0 console=ttyS0,115200 quiet kiln.server=http://10.77.0.1:8081 kiln.api=http://10.77.0.1:8080 kiln.node=3d3c kiln.mac=52:54:00:be:ef:01 kiln.token=kiln_secret || goto retry
            initrd --name initrd http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/initrd || goto retry
            boot || goto retry
            :retry
            echo Retrying in 10 seconds
            sleep 10
            chain --replace --autofree http://10.77.0.1:8081/boot/v1/bootscript?mac=52:54:00:be:ef:01 || goto retry
        "#]]
        .assert_eq(&agent_script(&context, ramdisk, "3d3c", "kiln_secret", "http://10.77.0.1:8080"));
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: nid001 (52:54:00:be:ef:01) boots from its local disk
            iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||
            exit
        "#]]
        .assert_eq(&local_disk_script(&context));
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: nid001 (52:54:00:be:ef:01) boots its image live
            kernel --name kernel http://10.77.0.1:8081/k initrd=initrd console=ttyS0 root=live:http://10.77.0.1:8081/r || goto retry
            initrd --name initrd http://10.77.0.1:8081/i || goto retry
            boot || goto retry
            :retry
            echo Retrying in 10 seconds
            sleep 10
            chain --replace --autofree http://10.77.0.1:8081/boot/v1/bootscript?mac=52:54:00:be:ef:01 || goto retry
        "#]]
        .assert_eq(&live_script(
            &context,
            "http://10.77.0.1:8081/k",
            "http://10.77.0.1:8081/i",
            "console=ttyS0 root=live:http://10.77.0.1:8081/r",
        ));
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: nid001 (52:54:00:be:ef:01) boots from its network disk
            kernel --name kernel http://10.77.0.1:8081/k initrd=initrd console=ttyS0 kiln.nbd=10.77.0.1:10809 kiln.nbd.export=kiln_secret || goto retry
            initrd --name initrd http://10.77.0.1:8081/i || goto retry
            boot || goto retry
            :retry
            echo Retrying in 10 seconds
            sleep 10
            chain --replace --autofree http://10.77.0.1:8081/boot/v1/bootscript?mac=52:54:00:be:ef:01 || goto retry
        "#]].assert_eq(&network_disk_script(
            &context,
            "http://10.77.0.1:8081/k",
            "http://10.77.0.1:8081/i",
            "console=ttyS0 kiln.nbd=10.77.0.1:10809 kiln.nbd.export=kiln_secret",
        ));
    }
}
