//! Element resolution and hook order, on element trees written for each test.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::*;

/// Writes an element: `files` are (relative path, content); scripts (`#!`) are made
/// executable, as hooks must be.
fn element(root: &Path, name: &str, files: &[(&str, &str)]) {
    for (relative, content) in files {
        let path = root.join(name).join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        if content.starts_with("#!") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::create_dir_all(root.join(name)).unwrap();
}

fn tree() -> (tempfile::TempDir, Vec<PathBuf>) {
    let first = tempfile::tempdir().unwrap();
    let root = first.path().join("site");
    let upstream = first.path().join("upstream");
    element(
        &root,
        "compute",
        &[
            ("element-deps", "base\n# a comment\nnetwork-tools\n"),
            ("install.d/50-packages", "#!/bin/sh\n"),
            ("post-install.d/90-clean", "#!/bin/sh\n"),
            ("environment.d/10-compute.bash", "export DIB_COMPUTE=1\n"),
        ],
    );
    element(
        &root,
        "base",
        &[("element-deps", "operating-system\n"), ("pre-install.d/01-repos", "#!/bin/sh\n"), ("finalise.d/99-grub", "#!/bin/sh\n")],
    );
    element(&root, "network-tools", &[("install.d/60-net", "#!/bin/sh\n"), ("install.d/README", "not a hook: not executable\n")]);
    element(
        &upstream,
        "debian",
        &[
            ("element-provides", "operating-system\n"),
            ("root.d/10-debootstrap", "#!/bin/sh\n"),
            ("extra-data.d/10-keys", "#!/bin/sh\n"),
            ("block-device.d/10-partition", "#!/bin/sh\n"),
            ("cleanup.d/99-unmount", "#!/bin/sh\n"),
        ],
    );
    // Shadowed by the site's `base`: the first directory on the path wins.
    element(&upstream, "base", &[("install.d/00-upstream-base", "#!/bin/sh\n")]);
    (first, vec![root, upstream])
}

#[test]
fn dependencies_resolve_along_the_path_and_hooks_run_by_phase_then_name() {
    let (_directory, path) = tree();
    let requested = ["compute".to_owned(), "debian".to_owned()];
    let loaded = load_elements(&path, &requested).unwrap();
    let elements = resolve(&loaded, &requested).unwrap();
    assert_eq!(elements, ["base", "compute", "debian", "network-tools"]);
    assert!(loaded["base"].path.ends_with("site/base"), "the first directory on the path wins");
    assert_eq!(loaded["compute"].environment, ["10-compute.bash"]);
    let plan = plan_hooks(&loaded, &elements).unwrap();
    let text: Vec<String> = plan
        .iter()
        .map(|hook| {
            format!("{:<15} {:<14} {}{}", hook.phase.directory(), hook.element, hook.script, if hook.in_chroot { "  (chroot)" } else { "" })
        })
        .collect();
    expect_test::expect![[r#"
        root.d          debian         10-debootstrap
        extra-data.d    debian         10-keys
        pre-install.d   base           01-repos  (chroot)
        install.d       compute        50-packages  (chroot)
        install.d       network-tools  60-net  (chroot)
        post-install.d  compute        90-clean  (chroot)
        block-device.d  debian         10-partition
        finalise.d      base           99-grub  (chroot)
        cleanup.d       debian         99-unmount"#]]
    .assert_eq(&text.join("\n"));
}

#[test]
fn missing_elements_clashing_hooks_and_double_providers_are_refused() {
    let (directory, path) = tree();
    let error = load_elements(&path, &["nonexistent".to_owned()]).unwrap_err();
    assert!(error.to_string().starts_with("element 'nonexistent' is not in ELEMENTS_PATH ("), "{error}");
    element(&path[0], "clash", &[("install.d/50-packages", "#!/bin/sh\n")]);
    let requested = ["compute".to_owned(), "debian".to_owned(), "clash".to_owned()];
    let loaded = load_elements(&path, &requested).unwrap();
    let error = plan_hooks(&loaded, &resolve(&loaded, &requested).unwrap()).unwrap_err();
    assert_eq!(error.to_string(), "install.d hook '50-packages' is in both 'clash' and 'compute': rename one, only one can run");
    element(&path[0], "other-os", &[("element-provides", "operating-system\n")]);
    let requested = ["compute".to_owned(), "debian".to_owned(), "other-os".to_owned()];
    let loaded = load_elements(&path, &requested).unwrap();
    let error = resolve(&loaded, &requested).unwrap_err();
    assert_eq!(error.to_string(), "'operating-system' is provided by both 'debian' and 'other-os'");
    assert!(load_elements(&path, &["../escape".to_owned()]).is_err());
    drop(directory);
}

#[test]
fn break_points_and_the_hook_environment() {
    let points = BreakPoints::parse("before-install, after-finalise,after-error").unwrap();
    assert!(points.before.contains(&Phase::Install) && points.after.contains(&Phase::Finalise) && points.after_error);
    let error = BreakPoints::parse("before-instal").unwrap_err();
    assert!(error.to_string().starts_with("'before-instal' is not a break point"), "{error}");
    assert!(BreakPoints::parse("during-install").is_err());
    let environment = hook_environment([("DIB_RELEASE", "bookworm"), ("HOME", "/root"), ("ELEMENTS_PATH", "/e"), ("AWS_SECRET", "x")]);
    assert_eq!(environment.keys().collect::<Vec<_>>(), ["DIB_RELEASE", "ELEMENTS_PATH"]);
}
