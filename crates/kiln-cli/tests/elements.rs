//! `kiln element info` as a user runs it: elements found along ELEMENTS_PATH, dependencies
//! resolved, hooks listed in run order; a missing element named.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn write(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    if content.starts_with("#!") {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn element_info_resolves_dependencies_and_orders_hooks() {
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path();
    write(root, "site/hpc/element-deps", "base\n");
    write(root, "site/hpc/install.d/50-slurm", "#!/bin/sh\n");
    write(root, "site/base/pre-install.d/10-repos", "#!/bin/sh\n");
    write(root, "site/base/root.d/10-debootstrap", "#!/bin/sh\n");
    let output =
        Command::new(KILN).args(["element", "info", "hpc", "-F", "json"]).env("ELEMENTS_PATH", root.join("site")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let elements: Vec<&str> = info["elements"].as_array().unwrap().iter().map(|pair| pair[0].as_str().unwrap()).collect();
    assert_eq!(elements, ["base", "hpc"]);
    let hooks: Vec<String> = info["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hook| {
            format!("{}:{}:{}", hook["phase"].as_str().unwrap(), hook["element"].as_str().unwrap(), hook["script"].as_str().unwrap())
        })
        .collect();
    assert_eq!(hooks, ["Root:base:10-debootstrap", "PreInstall:base:10-repos", "Install:hpc:50-slurm"]);

    let output = Command::new(KILN).args(["element", "info", "hpc", "missing"]).env("ELEMENTS_PATH", root.join("site")).output().unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("element 'missing' is not in ELEMENTS_PATH"), "{error}");
}
