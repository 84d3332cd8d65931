//! iPXE scripts: a [`BootPlan`] as the script a machine running iPXE runs.

use crate::plan::{BootPlan, KernelBoot, KernelPurpose, ScriptContext};

/// After a failed boot the machine waits this long and asks again, rather than falling
/// through to whatever boots next.
const RETRY_SECONDS: u32 = 10;

fn retry_tail(context: &ScriptContext<'_>) -> String {
    format!(
        ":retry\necho Retrying in {RETRY_SECONDS} seconds\nsleep {RETRY_SECONDS}\nchain --replace --autofree {} || goto retry\n",
        context.bootscript_url()
    )
}

/// The iPXE script of `plan`.
pub fn ipxe_script(plan: &BootPlan, context: &ScriptContext<'_>) -> String {
    match plan {
        BootPlan::Kernel(boot) => kernel_script(boot, context),
        BootPlan::LocalDisk => local_disk_script(context),
        BootPlan::AskAgain => ask_again_script(context),
    }
}

/// The initrd gets a fixed name and the command line names it (`initrd=initrd`): the
/// kernel's EFI stub finds the initrd only that way when iPXE boots it on UEFI.
fn kernel_script(boot: &KernelBoot, context: &ScriptContext<'_>) -> String {
    let mut script = String::from("#!ipxe\n");
    let who = context.who();
    let mac = context.mac;
    match boot.purpose {
        KernelPurpose::Parameters => {
            if let Some(node) = context.node {
                script.push_str(&format!("echo Kiln: booting {} ({mac})\n", node.name));
            }
        }
        KernelPurpose::DeployAgent => script.push_str(&format!("echo Kiln: {who} ({mac}) boots the deploy agent\n")),
        KernelPurpose::Live => script.push_str(&format!("echo Kiln: {who} ({mac}) boots its image live\n")),
        KernelPurpose::NetworkDisk => script.push_str(&format!("echo Kiln: {who} ({mac}) boots from its network disk\n")),
    }
    let mut command_line = boot.command_line.clone();
    if boot.initrd.is_some() && !command_line.split(' ').any(|word| word.starts_with("initrd=")) {
        command_line = format!("initrd=initrd {command_line}").trim_end().to_owned();
    }
    if let Some(kernel) = &boot.kernel {
        script.push_str(&format!("kernel --name kernel {kernel} {command_line} || goto retry\n").replace("  ", " "));
    }
    if let Some(initrd) = &boot.initrd {
        script.push_str(&format!("initrd --name initrd {initrd} || goto retry\n"));
    }
    script.push_str("boot || goto retry\n");
    script.push_str(&retry_tail(context));
    script
}

/// The script for a machine with nothing to boot yet (unknown, or known without
/// parameters): it waits and asks again, so that it boots as soon as there is something.
fn ask_again_script(context: &ScriptContext<'_>) -> String {
    let who = match context.node {
        Some(node) => format!("node {}", node.name),
        None => "this machine".to_owned(),
    };
    format!("#!ipxe\necho Kiln: no boot parameters for {who} ({})\ngoto retry\n{}", context.mac, retry_tail(context))
}

/// The script of a node deployed to disk: boot the local disk. On BIOS iPXE boots the first
/// disk itself (whatever the firmware's boot order); on UEFI it returns to the firmware,
/// which goes on to its next boot option.
fn local_disk_script(context: &ScriptContext<'_>) -> String {
    format!(
        "#!ipxe\necho Kiln: {} ({}) boots from its local disk\n\
         iseq ${{platform}} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n",
        context.who(),
        context.mac
    )
}

/// The script served by TFTP to iPXE: chain to the HTTP boot script of the booting NIC.
pub fn chain_script(server_url: &str) -> String {
    format!("#!ipxe\nchain --replace --autofree {server_url}/boot/v1/bootscript?mac=${{netX/mac}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AgentApi, RamdiskUrls};
    use crate::{BootParams, BootParamsInput};
    use kiln_types::node::Node;

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
        .assert_eq(&ipxe_script(&BootPlan::from_params(&params, &context), &context));
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
        .assert_eq(&ipxe_script(&BootPlan::AskAgain, &unknown));
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
        .assert_eq(&ipxe_script(&BootPlan::deploy_agent(&context, ramdisk, "3d3c", "kiln_secret", AgentApi { url: "http://10.77.0.1:8080", trust_anchor_sha256: None }), &context));
        // Behind an HTTPS API, the agent is told which certificate to trust there.
        let https = AgentApi { url: "https://kiln.example:8443", trust_anchor_sha256: Some("9f86d081884c7d65") };
        let KernelBoot { command_line, .. } = match BootPlan::deploy_agent(&context, ramdisk, "3d3c", "kiln_secret", https) {
            BootPlan::Kernel(boot) => boot,
            other => panic!("{other:?}"),
        };
        expect_test::expect!["console=tty0 console=ttyS0,115200 quiet kiln.server=http://10.77.0.1:8081 kiln.api=https://kiln.example:8443 kiln.node=3d3c kiln.mac=52:54:00:be:ef:01 kiln.token=kiln_secret kiln.api_ca=9f86d081884c7d65"]
            .assert_eq(&command_line);
        expect_test::expect![[r#"
            #!ipxe
            echo Kiln: nid001 (52:54:00:be:ef:01) boots from its local disk
            iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||
            exit
        "#]]
        .assert_eq(&ipxe_script(&BootPlan::LocalDisk, &context));
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
        .assert_eq(&ipxe_script(
            &BootPlan::live("http://10.77.0.1:8081/k", "http://10.77.0.1:8081/i", "console=ttyS0 root=live:http://10.77.0.1:8081/r"),
            &context,
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
        "#]].assert_eq(&ipxe_script(
            &BootPlan::network_disk(
            "http://10.77.0.1:8081/k",
            "http://10.77.0.1:8081/i",
            "console=ttyS0 kiln.nbd=10.77.0.1:10809 kiln.nbd.export=kiln_secret",
            ),
            &context,
        ));
    }
}
