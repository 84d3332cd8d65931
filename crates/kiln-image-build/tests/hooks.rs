//! diskimage-builder hooks run for real against a busybox root: every phase in order,
//! inside or outside the chroot as documented, with environment.d and `DIB_*` passed; a
//! failing hook leaves no mount behind. Needs root (chroot, bind mounts) and
//! busybox-static; skipped otherwise.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use kiln_image_build::chroot::mounts_under;
use kiln_image_build::elements::{BreakPoints, load_elements, plan_hooks, resolve};
use kiln_image_build::hooks::{HookError, run_hooks};

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/bin/busybox").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "the hook tests need root and busybox-static");
        eprintln!("skipping: the hook tests need root and busybox-static");
        return false;
    }
    true
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    if content.starts_with("#!") {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A hook that records where it ran: inside, the log is /hook-order and /proc must be
/// there; outside, it is $TARGET_ROOT/hook-order.
fn recording_hook(phase: &str, script: &str, inside: bool) -> String {
    if inside {
        format!("#!/bin/sh\ntest -e /proc/self/status || exit 9\necho \"{phase}/{script} $KILN_GREETING $DIB_FLAVOUR\" >> /hook-order\n")
    } else {
        format!("#!/bin/sh\necho \"{phase}/{script} $KILN_GREETING $DIB_FLAVOUR\" >> \"$TARGET_ROOT/hook-order\"\n")
    }
}

/// Two elements, `child` depending on `base`, with a hook in every phase, interleaved by name.
fn elements(directory: &Path) -> PathBuf {
    let elements = directory.join("elements");
    write(&elements.join("child/element-deps"), "base\n");
    write(&elements.join("base/environment.d/10-greeting"), "KILN_GREETING=hello\n");
    let phases = [
        ("root", false),
        ("extra-data", false),
        ("pre-install", true),
        ("install", true),
        ("post-install", true),
        ("block-device", false),
        ("finalise", true),
        ("cleanup", false),
    ];
    for (phase, inside) in phases {
        write(&elements.join(format!("base/{phase}.d/50-base")), &recording_hook(phase, "50-base", inside));
        write(&elements.join(format!("child/{phase}.d/40-child")), &recording_hook(phase, "40-child", inside));
    }
    elements
}

fn busybox_root(directory: &Path) -> PathBuf {
    let root = directory.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    root
}

#[test]
fn every_phase_runs_in_order_where_documented_and_a_failing_hook_leaves_no_mounts() {
    if !can_run() {
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let elements_path = vec![elements(directory.path())];
    let requested = vec!["child".to_owned()];
    let loaded = load_elements(&elements_path, &requested).unwrap();
    let order = resolve(&loaded, &requested).unwrap();
    let plan = plan_hooks(&loaded, &order).unwrap();
    let root = busybox_root(directory.path());
    let environment = BTreeMap::from([("DIB_FLAVOUR".to_owned(), "vanilla".to_owned())]);
    let mut log = Vec::new();
    let mut never = |_: &str, _: &Path| -> bool { panic!("no break point was asked for") };
    run_hooks(&plan, &loaded, &root, &environment, &BreakPoints::default(), &mut never, &mut log).unwrap();
    let recorded = std::fs::read_to_string(root.join("hook-order")).unwrap();
    let expected: Vec<String> = plan.iter().map(|hook| format!("{}/{} hello vanilla", hook.phase.name(), hook.script)).collect();
    assert_eq!(recorded.lines().collect::<Vec<_>>(), expected, "log:\n{}", String::from_utf8_lossy(&log));
    assert_eq!(expected.len(), 16);
    assert!(expected[0].starts_with("root/40-child") && expected[15].starts_with("cleanup/50-base"));
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    assert!(!root.join("tmp/kiln-in-target").exists(), "the copied hooks are removed");

    // A failing in-chroot hook stops the build with its name, and unbinds everything.
    write(&elements_path[0].join("child/install.d/45-broken"), "#!/bin/sh\nexit 3\n");
    std::fs::remove_file(root.join("hook-order")).unwrap();
    let loaded = load_elements(&elements_path, &requested).unwrap();
    let plan = plan_hooks(&loaded, &order).unwrap();
    let mut stopped_at = Vec::new();
    let mut record = |point: &str, _: &Path| -> bool {
        stopped_at.push(point.to_owned());
        false
    };
    let breaks = BreakPoints::parse("after-error").unwrap();
    let error = run_hooks(&plan, &loaded, &root, &environment, &breaks, &mut record, &mut Vec::new()).unwrap_err();
    assert!(matches!(&error, HookError::Failed { script, .. } if script == "45-broken"), "{error}");
    assert_eq!(error.to_string(), "hook install/45-broken of element child failed (exit status: 3)");
    assert_eq!(stopped_at, ["after-error"]);
    assert!(mounts_under(&root).is_empty(), "no mount is left: {:?}", mounts_under(&root));
    let recorded = std::fs::read_to_string(root.join("hook-order")).unwrap();
    assert!(recorded.ends_with("install/40-child hello vanilla\n"), "{recorded}");

    // A break point that stops the build (as a user leaving the debug shell with failure).
    let breaks = BreakPoints::parse("before-install").unwrap();
    let mut stop = |_: &str, root: &Path| -> bool {
        assert!(!mounts_under(root).is_empty(), "the chroot is usable at a break point");
        false
    };
    let error = run_hooks(&plan, &loaded, &root, &environment, &breaks, &mut stop, &mut Vec::new()).unwrap_err();
    assert_eq!(error.to_string(), "stopped at break point before-install");
    assert!(mounts_under(&root).is_empty());
}
