//! A Debian base layer bootstrapped from the Debian archive, and a child layer on it adding
//! a package and a user; building the child again with the base unchanged reuses it.
//! Needs root (chroot, mounts), debootstrap and squashfs-tools (scripts/install-deps) and
//! the Debian archive; skipped without root or debootstrap.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_image_build::chroot::mounts_under;
use kiln_image_build::definition::parse_definition;
use kiln_image_build::execute::{BuildError, BuildSettings, ParentRoot, build_layer, make_squashfs};
use kiln_image_build::plan::{Downloads, plan_build};

const BASE: &str = r#"
options:
  name: debian-base
  pkg_manager: apt
  parent: scratch
  publish_kiln: debian-base
repos:
  - alias: debian
    url: 'http://deb.debian.org/debian'
    suite: bookworm
"#;

const CHILD: &str = r#"
options:
  name: debian-child
  pkg_manager: apt
  parent: kiln:debian-base
  publish_kiln: debian-child
packages: [less]
copyfiles:
  - src: motd
    dest: /etc/motd
cmds:
  - cmd: "useradd -m -s /bin/sh kiln"
"#;

#[test]
fn a_debian_base_and_a_child_build_and_the_child_rebuilds_from_the_cache() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if !root_user || !Path::new("/usr/sbin/debootstrap").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "the build test needs root and debootstrap");
        eprintln!("skipping: needs root and debootstrap (scripts/install-deps)");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("motd"), "built by kiln\n").unwrap();
    let settings = BuildSettings { cache_dir: directory.path().join("cache"), definition_dir: directory.path().to_owned(), elements: None };
    let mut log = Vec::new();

    let base = plan_build(&parse_definition(BASE).unwrap(), "scratch", &BTreeMap::new(), &BTreeMap::new(), Downloads::Fetch);
    let built_base =
        build_layer(&base, None, &settings, &mut log).unwrap_or_else(|error| panic!("{error}\n{}", String::from_utf8_lossy(&log)));
    assert!(!built_base.reused);
    assert!(built_base.root.join("usr/bin/apt-get").exists());
    assert!(mounts_under(directory.path()).is_empty(), "{:?}", mounts_under(directory.path()));

    // The child names the base by the digest of what it is made from (here its key).
    let copied = BTreeMap::from([("motd".to_owned(), "motd-digest".to_owned())]);
    let child = plan_build(&parse_definition(CHILD).unwrap(), &built_base.key, &copied, &BTreeMap::new(), Downloads::Fetch);
    let parent = ParentRoot { root: built_base.root.clone() };
    let built_child = build_layer(&child, Some(&parent), &settings, &mut log)
        .unwrap_or_else(|error| panic!("{error}\n{}", String::from_utf8_lossy(&log)));
    assert!(!built_child.reused);
    assert!(built_child.root.join("usr/bin/less").exists(), "the package is installed");
    assert!(std::fs::read_to_string(built_child.root.join("etc/passwd")).unwrap().contains("kiln:"), "the user exists");
    assert_eq!(std::fs::read_to_string(built_child.root.join("etc/motd")).unwrap(), "built by kiln\n");
    assert!(!built_base.root.join("usr/bin/less").exists(), "the base layer is untouched");

    // Again, base unchanged: both come from the cache at once.
    let again_base = build_layer(&base, None, &settings, &mut log).unwrap();
    let again_child = build_layer(&child, Some(&parent), &settings, &mut log).unwrap();
    assert!(again_base.reused && again_child.reused);
    assert_eq!((again_base.key.as_str(), again_child.key.as_str()), (built_base.key.as_str(), built_child.key.as_str()));
    assert!(again_child.seconds < 1.0 && built_child.seconds > again_child.seconds * 10.0);
    eprintln!(
        "base built in {:.0} s, child in {:.0} s, child again in {:.3} s",
        built_base.seconds, built_child.seconds, again_child.seconds
    );

    // A failing command fails the build with its step, leaves no mount and caches nothing.
    let broken = plan_build(
        &parse_definition(&CHILD.replace("useradd -m -s /bin/sh kiln", "exit 7")).unwrap(),
        &built_base.key,
        &copied,
        &BTreeMap::new(),
        Downloads::Fetch,
    );
    let error = build_layer(&broken, Some(&parent), &settings, &mut log).unwrap_err();
    assert!(matches!(&error, BuildError::StepFailed { message, .. } if message.contains("exit status: 7")), "{error}");
    assert!(mounts_under(directory.path()).is_empty(), "{:?}", mounts_under(directory.path()));
    assert!(!settings.cache_dir.join("layers").join(&broken.layer_key).exists());

    // The SquashFS of a layer without a kernel: the root alone, the same bytes when made again.
    let output = directory.path().join("out");
    let triple = make_squashfs(&built_child.root, "debian-child", &output, &mut log).unwrap();
    assert!(triple.kernel.is_none() && triple.initrd.is_none());
    assert!(triple.root.metadata().unwrap().len() > 10 << 20);
    let first = std::fs::read(&triple.root).unwrap();
    let again = make_squashfs(&built_child.root, "debian-child", &output, &mut log).unwrap();
    assert!(first == std::fs::read(&again.root).unwrap(), "mksquashfs is reproducible");
}
