//! Every code block of the README, run as written: the configuration blocks through
//! `kiln config check`, the build definitions through the definition parser, and the shell
//! blocks of the quick start, network boot, images, cloud-init and tenancy sections one
//! after the other in one shell, against a real `kiln serve` inside a network namespace of
//! the test's own (so that its `127.0.0.1:8080` is private). A block this test does not
//! know fails it, so a new README example cannot go untested by accident; the blocks that
//! cannot run here say why in the README and are listed in [`NOT_RUN_HERE`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A fenced block of the README: where it starts, its info string, the section it is in.
#[derive(Debug)]
struct Block {
    line: usize,
    language: String,
    section: String,
    text: String,
}

fn readme() -> String {
    std::fs::read_to_string(kiln_test_utils::workspace_root().join("README.md")).unwrap()
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for (index, line) in readme.lines().enumerate() {
        match open.as_mut() {
            Some(_) if line.starts_with("```") => blocks.push(open.take().expect("open")),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None if line.starts_with("```") => {
                let language = line.trim_start_matches('`').trim().to_owned();
                open = Some(Block { line: index + 1, language, section: section.clone(), text: String::new() });
            }
            None if line.starts_with("## ") || line.starts_with("### ") => section = line.trim_start_matches('#').trim().to_owned(),
            None => {}
        }
    }
    assert!(open.is_none(), "the README ends inside a code block");
    blocks
}

/// Shell blocks this test does not run, by section, each with the reason the README gives
/// beside it.
const NOT_RUN_HERE: &[(&str, &str)] = &[
    ("First: see it work", "the lab: tests/lab_command.rs runs `kiln lab up`, `exec`, `status` and `down`, which scripts/lab wraps"),
    ("The two commands", "the commands themselves: CI runs scripts/test, and `kiln serve` runs in the quick start below"),
    ("Building images", "needs root, a registry and the network: tests/image_build.rs builds such definitions with a local registry"),
    (
        "BMCs: power, boot device, virtual media, discovery",
        "a synopsis (alternatives in `|`, addresses of a site): tests/bmc.rs runs each command against sushy-tools and ipmi_sim",
    ),
    (
        "Provisioning: deploy, undeploy, inspect, clean",
        "a synopsis: tests/provision.rs and tests/netdisk.rs run each command against machines in the lab",
    ),
    (
        "Ironic's commands: `baremetal` and openstacksdk",
        "needs OpenStack's clients (PyPI): tests/ironic.rs runs these commands with python-ironicclient and openstacksdk",
    ),
    ("TLS", "a site's host name: tests/tls.rs runs `kiln` with KILN_CA and curl --cacert against a server with Kiln's CA, and SIGHUP"),
    (
        "Web console",
        "tests/web_console.rs and tests/web_browser.rs set passwords this way and sign in with them, over HTTP and in Chromium",
    ),
];

/// Shell sections run here, in README order, with the lines that stand for something the
/// test provides otherwise (each must still be in the README as written).
const RUN_HERE: &[&str] = &["Quick start: enrol the tutorial's nodes", "Network boot", "Secure Boot", "Images", "Cloud-init", "Tenancy"];

/// Lines replaced before running: the build (the test runs the binary cargo built for it),
/// a place-holder URL (the test's "mirror" is on loopback, which imports reach only when
/// the operator allows it), and a wait for the server that a person does by reading its
/// output.
const REPLACED: &[(&str, &str)] = &[
    ("cargo build --release -p kiln-cli", "true"),
    ("export PATH=$PWD/target/release:$PATH", "export PATH=\"$KILN_BIN_DIR:$PATH\""),
    (
        "kiln serve &",
        "KILN_IMPORT_ALLOWED_NETWORKS=127.0.0.1/32 kiln serve 2>serve.log & until grep -q 'listening on' serve.log; do sleep 0.2; done",
    ),
    (
        "kiln image import fedora --url https://mirror/…/Fedora.qcow2 --checksum sha256:…",
        "kiln image import fedora --url http://127.0.0.1:8099/Fedora.qcow2 --checksum sha256:$(sha256sum Fedora.qcow2 | cut -d' ' -f1)",
    ),
];

fn is_shell(block: &Block) -> bool {
    matches!(block.language.as_str(), "sh" | "")
}

#[test]
fn every_block_of_the_readme_is_run_here_or_says_why_not() {
    for block in blocks(&readme()) {
        let known = match block.language.as_str() {
            "toml" | "yaml" => true,
            _ if is_shell(&block) => {
                RUN_HERE.contains(&block.section.as_str()) || NOT_RUN_HERE.iter().any(|(section, _)| *section == block.section)
            }
            _ => false,
        };
        assert!(
            known,
            "README line {}: a ```{} block in '{}' that no test runs; run it in tests/readme.rs or list why not",
            block.line, block.language, block.section
        );
    }
}

#[test]
fn every_configuration_block_passes_config_check() {
    let directory = tempfile::tempdir().unwrap();
    for block in blocks(&readme()).into_iter().filter(|block| block.language == "toml") {
        let file = directory.path().join(format!("readme-{}.toml", block.line));
        std::fs::write(&file, &block.text).unwrap();
        let output = Command::new(KILN)
            .args(["config", "check", "--config"])
            .arg(&file)
            .env_remove("KILN_CONFIG")
            .env("KILN_DATA_DIR", directory.path().join("data"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "README line {} ({}): kiln config check refused it: {}",
            block.line,
            block.section,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_image_definition_block_parses() {
    for block in blocks(&readme()).into_iter().filter(|block| block.language == "yaml") {
        for (number, document) in block.text.split("\n---\n").enumerate() {
            if let Err(error) = kiln_image_build::definition::parse_definition(document) {
                panic!("README line {}, document {}: {}", block.line, number + 1, kiln_types::error_chain(&error));
            }
        }
    }
}

/// The shell script the sections in [`RUN_HERE`] make, with [`REPLACED`] applied.
fn script(readme: &str) -> String {
    let mut script = String::from("set -euxo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    let mut replaced = vec![false; REPLACED.len()];
    for block in blocks(readme).into_iter().filter(|block| is_shell(block) && RUN_HERE.contains(&block.section.as_str())) {
        script.push_str(&format!("# README line {} ({})\n", block.line, block.section));
        for line in block.text.lines() {
            let command = line.split("  #").next().unwrap_or(line).trim_end();
            match REPLACED.iter().position(|(original, _)| command == *original) {
                Some(index) => {
                    replaced[index] = true;
                    script.push_str(REPLACED[index].1);
                }
                None => script.push_str(line),
            }
            script.push('\n');
        }
    }
    for (index, done) in replaced.iter().enumerate() {
        assert!(done, "the README no longer has the line `{}`: update tests/readme.rs", REPLACED[index].0);
    }
    script
}

/// The files the images section names, in the directory the script runs in: a real
/// SquashFS (two), a kernel and an initramfs, and a qcow2 served over HTTP for the import.
fn write_image_files(directory: &Path) {
    let tree = directory.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=rocky\n").unwrap();
    for name in ["rootfs.squashfs", "rootfs-2.squashfs"] {
        std::fs::write(tree.join("etc/motd"), name).unwrap();
        let status = Command::new("mksquashfs").arg(&tree).arg(directory.join(name)).args(["-quiet", "-noappend"]).status().unwrap();
        assert!(status.success(), "mksquashfs");
    }
    std::fs::write(directory.join("vmlinuz"), b"a kernel, as far as the store cares").unwrap();
    std::fs::write(directory.join("initrd.img"), b"an initramfs").unwrap();
    let status =
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(directory.join("Fedora.qcow2")).arg("16M").status().unwrap();
    assert!(status.success(), "qemu-img");
}

/// Copies the README's example files, which the blocks name as `@examples/…`.
fn copy_examples(directory: &Path) {
    let examples = directory.join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    for entry in std::fs::read_dir(kiln_test_utils::workspace_root().join("examples")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), examples.join(entry.file_name())).unwrap();
    }
}

/// Kills the process group `group` (the shell and everything it started) when dropped:
/// on success that is a no-op, on a failed or hung test it leaves nothing behind.
struct GroupKiller(i32);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the group is the shell's own.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn the_quick_start_images_cloud_init_and_tenancy_blocks_run_as_written() {
    use std::os::unix::process::CommandExt as _;
    let Some(lab) = kiln_lab::Lab::create_or_skip() else { return };
    let work = tempfile::tempdir().unwrap();
    copy_examples(work.path());
    write_image_files(work.path());
    // The import's "mirror": a plain HTTP server beside Kiln in the namespace, started
    // after the script's first two lines (its shell options and its exit trap).
    let serve_files = "python3 -m http.server -b 127.0.0.1 8099 >http.log 2>&1 &\nuntil curl -s -o /dev/null http://127.0.0.1:8099/; do sleep 0.2; done\n";
    let script = script(&readme());
    let (head, body) = script.split_at(script.match_indices('\n').nth(1).expect("two lines").0 + 1);
    let script = format!("{head}{serve_files}{body}");
    let kiln_dir: PathBuf = Path::new(KILN).parent().unwrap().to_owned();
    let mut command = lab.command("bash");
    command
        .args(["-c", &script])
        .current_dir(work.path())
        .env("KILN_BIN_DIR", &kiln_dir)
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_URL")
        .env_remove("KILN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command.spawn().unwrap();
    let killer = GroupKiller(child.id() as i32);
    // A hung command fails the test instead of hanging it.
    let group = child.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(300));
        // SAFETY: as in GroupKiller.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    });
    let output = child.wait_with_output().unwrap();
    drop(killer);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let server_log = std::fs::read_to_string(work.path().join("serve.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "a README block failed:\n--- stdout\n{stdout}\n--- stderr (the last command shown is the one that failed)\n{stderr}\n--- server\n{server_log}"
    );
    assert!(stdout.contains("x1000c0s0b0n0"), "the quick start lists the tutorial's nodes:\n{stdout}");
    assert!(stdout.contains("#!ipxe"), "the network boot block's curl gets a boot script:\n{stdout}");
    // The last block ran too: its last command's trace is there.
    assert!(stderr.contains("+ kiln group show lab-a/gpu"), "the tenancy blocks ran:\n{stderr}");
    let shown_group = stdout.rsplit("lab-a").next().unwrap_or_default();
    assert!(shown_group.contains("nid001"), "nid001 joined lab-a's gpu:\n{stdout}");
    assert!(stdout.contains("lab-b"), "`kiln image show lab-b/debian` shows lab-b's image:\n{stdout}");
    drop(lab);
}
