//! `kiln image build` as an operator runs it, against a real `kiln serve` and a real OCI
//! registry (Debian's docker-registry): a Debian base bootstrapped from the Debian archive
//! and pushed to the registry and to Kiln; a child naming the base by registry reference,
//! and another naming it as a Kiln image; rebuilds reuse the cached layers, checked by time
//! and by digest. Needs root, debootstrap, squashfs-tools, docker-registry and the Debian
//! archive; skipped without them unless `KILN_REQUIRE_LAB=1`.

mod support;

use std::path::Path;
use std::time::Instant;

use kiln_test_utils::registry::TestRegistry;
use support::{ServerProcess, kiln, ok, token};

fn build(server: &ServerProcess, admin: &str, definition: &Path, cache: &Path) -> (serde_json::Value, f64) {
    let started = Instant::now();
    let output = kiln(
        server,
        admin,
        &["image", "build", "-c", definition.to_str().unwrap(), "--cache", cache.to_str().unwrap(), "-F", "json"],
        None,
    );
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{stderr}");
    (serde_json::from_str(&ok(output)).unwrap(), seconds)
}

#[test]
fn a_base_and_children_build_publish_and_rebuild_from_the_cache() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if !root_user || !Path::new("/usr/sbin/debootstrap").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "the build test needs root and debootstrap");
        eprintln!("skipping: needs root and debootstrap (scripts/install-deps)");
        return;
    }
    let Some(registry) = TestRegistry::start() else { return };
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let admin = token(&data_dir);
    let cache = directory.path().join("cache");
    let registry_address = &registry.address;

    let base = directory.path().join("base.yaml");
    std::fs::write(
        &base,
        format!(
            "options:\n  layer_type: base\n  name: debian-base\n  publish_tags: bookworm\n  pkg_manager: apt\n  parent: scratch\n  \
             publish_registry: '{registry_address}/kiln'\n  registry_opts_push:\n    - '--tls-verify=false'\n  publish_kiln: debian-base\n\
             repos:\n  - alias: debian\n    url: 'http://deb.debian.org/debian'\n    suite: bookworm\n"
        ),
    )
    .unwrap();
    let (first_base, _) = build(&server, &admin, &base, &cache);
    assert_eq!(first_base["reused"], false);
    let pushed = first_base["pushed"][0].clone();
    assert_eq!(pushed[0], format!("{registry_address}/kiln/debian-base:bookworm"));
    assert_eq!(first_base["published"], "debian-base:1");

    std::fs::write(directory.path().join("motd"), "built by kiln\n").unwrap();
    let child = directory.path().join("child.yaml");
    std::fs::write(
        &child,
        format!(
            "options:\n  layer_type: base\n  name: debian-child\n  pkg_manager: apt\n  \
             parent: '{registry_address}/kiln/debian-base:bookworm'\n  registry_opts_pull:\n    - '--tls-verify=false'\n  \
             publish_kiln: debian-child\n\
             packages:\n  - less\ncopyfiles:\n  - src: motd\n    dest: /etc/motd\ncmds:\n  - cmd: 'useradd -m -s /bin/sh kiln'\n"
        ),
    )
    .unwrap();
    let (first_child, first_child_seconds) = build(&server, &admin, &child, &cache);
    assert_eq!(first_child["reused"], false);
    assert_eq!(first_child["published"], "debian-child:1");
    let layer = cache.join("layers").join(first_child["layer"].as_str().unwrap()).join("root");
    assert!(layer.join("usr/bin/less").exists(), "the package is installed");
    assert!(std::fs::read_to_string(layer.join("etc/passwd")).unwrap().contains("kiln:"), "the user exists");
    assert_eq!(std::fs::read_to_string(layer.join("etc/motd")).unwrap(), "built by kiln\n");

    // The version in Kiln holds exactly the SquashFS the build made.
    let versions: serde_json::Value =
        serde_json::from_str(&ok(kiln(&server, &admin, &["image", "versions", "debian-child", "-F", "json"], None))).unwrap();
    let root_sha = versions[0]["artifacts"].as_array().unwrap().iter().find(|a| a["kind"] == "root").unwrap()["sha256"].clone();
    let made = kiln_image_build::layers::file_digest(Path::new(first_child["squashfs"]["root"].as_str().unwrap())).unwrap().0;
    assert_eq!(format!("sha256:{}", root_sha.as_str().unwrap()), made);

    // Again, the base unchanged: the base's push gives the same manifest digest, and the
    // child is not rebuilt (same key, from the cache, nothing new published).
    let (again_base, _) = build(&server, &admin, &base, &cache);
    assert_eq!(again_base["reused"], true);
    assert_eq!(again_base["pushed"][0], pushed, "the same layer pushes to the same digest");
    assert_eq!(again_base["published"], "debian-base:1 (unchanged)");
    let (again_child, again_child_seconds) = build(&server, &admin, &child, &cache);
    assert_eq!(again_child["reused"], true);
    assert_eq!(again_child["layer"], first_child["layer"]);
    assert_eq!(again_child["published"], "debian-child:1 (unchanged)");
    eprintln!("child built in {first_child_seconds:.1} s, rebuilt in {again_child_seconds:.1} s (whole command)");
    assert!(again_child_seconds * 2.0 < first_child_seconds);

    // The same child on the base as a Kiln image: another parent digest, so another layer.
    let from_kiln = directory.path().join("from-kiln.yaml");
    std::fs::write(
        &from_kiln,
        std::fs::read_to_string(&child)
            .unwrap()
            .replace(&format!("'{registry_address}/kiln/debian-base:bookworm'"), "'kiln:debian-base'")
            .replace("publish_kiln: debian-child", "publish_kiln: debian-child-k"),
    )
    .unwrap();
    let (kiln_child, _) = build(&server, &admin, &from_kiln, &cache);
    assert_eq!(kiln_child["reused"], false);
    assert_ne!(kiln_child["layer"], first_child["layer"]);
    assert_eq!(kiln_child["published"], "debian-child-k:1");

    // A parent that is not in the registry is named in the error; nothing is built.
    let missing = directory.path().join("missing.yaml");
    std::fs::write(&missing, std::fs::read_to_string(&child).unwrap().replace("debian-base:bookworm", "debian-base:trixie")).unwrap();
    let output = kiln(&server, &admin, &["image", "build", "-c", missing.to_str().unwrap(), "--cache", cache.to_str().unwrap()], None);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("debian-base:trixie is not in the registry"), "{error}");
    assert!(kiln_image_build::chroot::mounts_under(directory.path()).is_empty());
}
