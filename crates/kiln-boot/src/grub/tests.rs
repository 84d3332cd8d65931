//! Snapshots of the GRUB configurations, and parameters that try to become GRUB commands.

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

fn context(node: Option<&Node>) -> ScriptContext<'_> {
    ScriptContext { server_url: "http://10.77.0.1:8081", mac: "52:54:00:be:ef:01".parse().unwrap(), node }
}

fn params(params: &str) -> BootParams {
    BootParams::try_from(&BootParamsInput {
        kernel: Some("{{ server.url }}/boot/files/vmlinuz".into()),
        initrd: Some("{{ server.url }}/boot/files/initrd.img".into()),
        params: Some(params.into()),
        hosts: vec!["Default".into()],
        ..Default::default()
    })
    .unwrap()
}

/// `grub-script-check` (grub-common) parses a configuration as GRUB does; the Secure Boot
/// lab test boots what it accepts.
fn assert_grub_parses(config: &str) {
    let Ok(mut child) = std::process::Command::new("grub-script-check")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("grub-script-check not installed (apt-get install grub-common): syntax not checked");
        return;
    };
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), config.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "GRUB refuses:\n{config}\n{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_entry_configuration_loops_over_the_machines_own() {
    expect_test::expect![[r#"
        # Kiln: each machine reads its own configuration, named by the MAC it booted from.
        set timeout=0
        while [ 1 = 1 ]; do
          source "$prefix/kiln/$net_default_mac"
          echo 'Kiln: retrying in 10 seconds'
          sleep 10
        done
    "#]]
    .assert_eq(&grub_entry_config());
    assert_grub_parses(&grub_entry_config());
}

#[test]
fn known_node_with_templates_and_the_tutorials_semicolon() {
    let node = node();
    let context = context(Some(&node));
    let params =
        params("console=ttyS0,115200 kiln.node={{ node.name }} kiln.nid={{node.nid}} ds=nocloud-net;s={{ server.url }}/cloud-init/");
    let config = grub_config(&BootPlan::from_params(&params, &context), &context);
    expect_test::expect![[r#"
        echo 'Kiln: booting nid001 (52:54:00:be:ef:01)'
        if linux '(tftp)/boot/files/vmlinuz' 'console=ttyS0,115200' 'kiln.node=nid001' 'kiln.nid=1' 'ds=nocloud-net;s=http://10.77.0.1:8081/cloud-init/'; then
          if initrd '(tftp)/boot/files/initrd.img'; then
            boot
          fi
        fi
        echo 'Kiln: the kernel did not boot'
    "#]]
    .assert_eq(&config);
    assert_grub_parses(&config);
}

#[test]
fn unknown_node_and_local_disk() {
    let unknown = context(None);
    expect_test::expect![[r#"
        echo 'Kiln: no boot parameters for this machine (52:54:00:be:ef:01)'
    "#]]
    .assert_eq(&grub_config(&BootPlan::AskAgain, &unknown));
    let node = node();
    expect_test::expect![[r#"
        echo 'Kiln: nid001 (52:54:00:be:ef:01) boots from its local disk'
        exit
    "#]]
    .assert_eq(&grub_config(&BootPlan::LocalDisk, &context(Some(&node))));
}

#[test]
fn deploy_agent_live_and_network_disk() {
    let node = node();
    let context = context(Some(&node));
    let ramdisk = RamdiskUrls {
        kernel: "http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/kernel",
        initrd: "http://10.77.0.1:8081/boot/images/kiln-deploy-ramdisk/1/initrd",
    };
    let deploy = grub_config(
        &BootPlan::deploy_agent(
            &context,
            ramdisk,
            "3d3c",
            "kiln_secret",
            AgentApi { url: "http://10.77.0.1:8080", trust_anchor_sha256: None },
        ),
        &context,
    );
    expect_test::expect![[r#"
        echo 'Kiln: nid001 (52:54:00:be:ef:01) boots the deploy agent'
        if linux '(tftp)/boot/images/kiln-deploy-ramdisk/1/kernel' 'console=tty0' 'console=ttyS0,115200' 'quiet' 'kiln.server=http://10.77.0.1:8081' 'kiln.api=http://10.77.0.1:8080' 'kiln.node=3d3c' 'kiln.mac=52:54:00:be:ef:01' 'kiln.token=kiln_secret'; then
          if initrd '(tftp)/boot/images/kiln-deploy-ramdisk/1/initrd'; then
            boot
          fi
        fi
        echo 'Kiln: the kernel did not boot'
    "#]]
    .assert_eq(&deploy);
    assert_grub_parses(&deploy);
    let live = grub_config(
        &BootPlan::live(
            "http://10.77.0.1:8081/boot/images/rocky/2/kernel",
            "tftp://10.77.0.9/rocky/initrd",
            "root=live:http://10.77.0.1:8081/r",
        ),
        &context,
    );
    expect_test::expect![[r#"
        echo 'Kiln: nid001 (52:54:00:be:ef:01) boots its image live'
        if linux '(tftp)/boot/images/rocky/2/kernel' 'root=live:http://10.77.0.1:8081/r'; then
          if initrd '(tftp,10.77.0.9)/rocky/initrd'; then
            boot
          fi
        fi
        echo 'Kiln: the kernel did not boot'
    "#]]
    .assert_eq(&live);
    let network =
        grub_config(&BootPlan::network_disk("http://10.77.0.1:8081/k", "http://10.77.0.1:8081/i", "kiln.nbd=10.77.0.1:10809"), &context);
    assert!(network.starts_with("echo 'Kiln: nid001 (52:54:00:be:ef:01) boots from its network disk'\n"), "{network}");
}

#[test]
fn a_file_grub_cannot_fetch_is_named_and_nothing_boots() {
    let node = node();
    let context = context(Some(&node));
    let elsewhere = BootPlan::live("http://mirror.example/vmlinuz", "http://10.77.0.1:8081/i", "quiet");
    expect_test::expect![[r#"
        echo 'Kiln: nid001 (52:54:00:be:ef:01) boots its image live'
        echo 'Kiln: GRUB fetches files by TFTP only (paths on this server or tftp://), not http://mirror.example/vmlinuz'
    "#]]
    .assert_eq(&grub_config(&elsewhere, &context));
    // A URL that only starts like the server's is not the server's.
    let lookalike = BootPlan::live("http://10.77.0.1:80812/k", "http://10.77.0.1:8081/i", "quiet");
    assert!(!grub_config(&lookalike, &context).contains("linux"));
    let no_kernel =
        BootPlan::Kernel(KernelBoot { purpose: KernelPurpose::Parameters, kernel: None, initrd: None, command_line: "quiet".into() });
    assert!(grub_config(&no_kernel, &context).contains("'Kiln: the boot parameters name no kernel'"));
}

/// GRUB's reading of one line: words split on blanks, single quotes taken literally, and
/// a backslash outside them taking the next character literally, and `;` outside quotes
/// ending a command. Returns the commands as lists of words.
fn grub_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![vec![]];
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            _ if quoted => word.push(character),
            ' ' | ';' => {
                if in_word {
                    commands.last_mut().unwrap().push(std::mem::take(&mut word));
                    in_word = false;
                }
                if character == ';' {
                    commands.push(vec![]);
                }
            }
            '\\' => {
                word.extend(characters.next());
                in_word = true;
            }
            _ => {
                word.push(character);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "a quote is left open: {line}");
    if in_word {
        commands.last_mut().unwrap().push(word);
    }
    commands.retain(|command| !command.is_empty());
    commands
}

#[test]
fn parameters_that_try_to_become_grub_commands_stay_kernel_arguments() {
    let node = node();
    let context = context(Some(&node));
    let hostile = [
        "quiet; reboot",
        "quiet ;reboot;",
        "x=$(reboot) y=`reboot`",
        "menuentry 'pwned' { reboot }",
        "a='; reboot; echo '",
        "it's \\'; halt",
        "${prefix} $net_default_mac",
    ];
    for text in hostile {
        let config = grub_config(&BootPlan::from_params(&params(text), &context), &context);
        assert_grub_parses(&config);
        let linux_line = config.lines().find(|line| line.starts_with("if linux ")).unwrap();
        let commands = grub_commands(linux_line.strip_suffix("; then").unwrap());
        assert_eq!(commands.len(), 1, "{text:?} became more than one command: {commands:?}");
        let expected: Vec<String> = ["if", "linux", "(tftp)/boot/files/vmlinuz"]
            .into_iter()
            .map(str::to_owned)
            .chain(text.split_whitespace().map(str::to_owned))
            .collect();
        assert_eq!(commands[0], expected, "{text:?}");
        for line in config.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            assert!(["echo", "if", "boot", "fi", "exit"].contains(&first), "{text:?} wrote a line of its own: {line:?}");
        }
    }
    // A line break is the only way out of a quoted word besides a quote: refused on input,
    // as it is for iPXE.
    for text in ["quiet\nreboot", "quiet\rreboot", "quiet\u{0}"] {
        let input = BootParamsInput {
            kernel: Some("http://10.77.0.1:8081/k".into()),
            params: Some(text.into()),
            hosts: vec!["Default".into()],
            ..Default::default()
        };
        assert!(BootParams::try_from(&input).is_err(), "{text:?} was accepted");
    }
}

#[test]
fn a_boot_medium_boots_its_own_files_with_every_word_quoted() {
    let node = node();
    let context = context(Some(&node));
    let ramdisk = RamdiskUrls { kernel: "http://10.77.0.1:8081/k", initrd: "http://10.77.0.1:8081/i" };
    let BootPlan::Kernel(boot) = BootPlan::deploy_agent(
        &context,
        ramdisk,
        "3d3c",
        "kiln_secret",
        AgentApi { url: "http://10.77.0.1:8080", trust_anchor_sha256: None },
    ) else {
        unreachable!()
    };
    let config = medium_grub_config(&boot, "nid001");
    assert_grub_parses(&config);
    expect_test::expect![[r#"
        # Kiln: a boot medium made for one boot of one machine.
        set timeout=0
        echo 'Kiln: nid001 boots the deploy agent from virtual media'
        if linux '/kiln/kernel' 'console=tty0' 'console=ttyS0,115200' 'quiet' 'kiln.server=http://10.77.0.1:8081' 'kiln.api=http://10.77.0.1:8080' 'kiln.node=3d3c' 'kiln.mac=52:54:00:be:ef:01' 'kiln.token=kiln_secret'; then
          if initrd '/kiln/initrd' '/kiln/boot.cpio'; then
            boot
          fi
        fi
        echo 'Kiln: the kernel did not boot'
    "#]]
    .assert_eq(&config);

    for text in ["quiet; reboot", "a='; reboot; echo '", "${prefix} $root `halt`"] {
        let BootPlan::Kernel(boot) = BootPlan::from_params(&params(text), &context) else { unreachable!() };
        let config = medium_grub_config(&boot, "nid001");
        assert_grub_parses(&config);
        let linux_line = config.lines().find(|line| line.starts_with("if linux ")).unwrap();
        let commands = grub_commands(linux_line.strip_suffix("; then").unwrap());
        assert_eq!(commands.len(), 1, "{text:?} became more than one command: {commands:?}");
        let words: Vec<&str> = commands[0].iter().skip(3).map(String::as_str).collect();
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>(), "{text:?}");
    }
}
