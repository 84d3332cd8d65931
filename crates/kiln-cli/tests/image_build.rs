//! `kiln image build` as an operator runs it, against a real `kiln serve` and a real OCI
//! registry (Debian's docker-registry): a Debian base bootstrapped from the Debian archive
//! and pushed to the registry and to Kiln; a child naming the base by registry reference,
//! and another naming it as a Kiln image; rebuilds reuse the cached layers, checked by time
//! and by digest. Needs root, debootstrap, squashfs-tools, docker-registry and the Debian
//! archive; skipped without them unless `KILN_REQUIRE_LAB=1`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_test_utils::registry::TestRegistry;
use kiln_test_utils::s3::{self, TestS3};
use support::{ServerProcess, kiln, ok, token};

/// One build at a time: each bootstraps Debian, which is heavy for a two-core machine.
static ONE_BUILD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds need root (chroot, mounts) and debootstrap; without them the tests skip, unless
/// `KILN_REQUIRE_LAB=1` (CI) says they must run.
fn can_build() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/debootstrap").exists() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "the build tests need root and debootstrap");
        eprintln!("skipping: needs root and debootstrap (scripts/install-deps)");
        return false;
    }
    true
}

fn build(server: &ServerProcess, admin: &str, definition: &Path, cache: &Path) -> (serde_json::Value, f64) {
    let started = Instant::now();
    let elements = definition.with_file_name("elements");
    let output = support::kiln_with_env(
        server,
        admin,
        &["image", "build", "-c", definition.to_str().unwrap(), "--cache", cache.to_str().unwrap(), "-F", "json"],
        &[
            ("ELEMENTS_PATH", elements.to_str().unwrap()),
            ("DIB_GREETING", "hello from the host"),
            ("S3_ACCESS", s3::ACCESS_KEY_ID),
            ("S3_SECRET", s3::SECRET_ACCESS_KEY),
            ("S3_REGION", s3::REGION),
        ],
    );
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{stderr}");
    (serde_json::from_str(&ok(output)).unwrap(), seconds)
}

#[test]
fn a_base_and_children_build_publish_and_rebuild_from_the_cache() {
    let _one = ONE_BUILD_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !can_build() {
        return;
    }
    let Some(registry) = TestRegistry::start() else { return };
    let Some(bucket) = TestS3::start() else { return };
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let admin = token(&data_dir);
    let cache = directory.path().join("cache");
    let registry_address = &registry.address;

    let base = write_base_definition(directory.path(), registry_address, &bucket);
    // Without the bucket's credentials: said before anything runs.
    let output = support::kiln_with_env(&server, &admin, &["image", "build", "-c", base.to_str().unwrap(), "--cache", "/nonexistent"], &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("publish_s3: set S3_ACCESS and S3_SECRET"));
    let (first_base, _) = build(&server, &admin, &base, &cache);
    assert_eq!(first_base["reused"], false);
    let pushed = first_base["pushed"][0].clone();
    assert_eq!(pushed[0], format!("{registry_address}/kiln/debian-base:bookworm"));
    assert_eq!(first_base["published"], "debian-base:1");
    // In the bucket where OpenCHAMI's builder puts it, whole.
    let key = "compute/base/debian-base-bookworm";
    assert_eq!(first_base["s3"][0], format!("{}/{}/{key}", bucket.endpoint, s3::BUCKET));
    let made = std::fs::metadata(first_base["squashfs"]["root"].as_str().unwrap()).unwrap().len();
    assert_eq!(stored_size(&bucket, key), Some(made));

    std::fs::write(directory.path().join("motd"), "built by kiln\n").unwrap();
    let elements = write_test_elements(directory.path());
    let child = directory.path().join("child.yaml");
    std::fs::write(
        &child,
        format!(
            "options:\n  layer_type: base\n  name: debian-child\n  pkg_manager: apt\n  \
             parent: '{registry_address}/kiln/debian-base:bookworm'\n  registry_opts_pull:\n    - '--tls-verify=false'\n  \
             publish_kiln: debian-child\n\
             packages:\n  - less\ncopyfiles:\n  - src: motd\n    dest: /etc/motd\ncmds:\n  - cmd: 'useradd -m -s /bin/sh kiln'\nelements: [kiln-greeting]\n"
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
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/kiln-greeting")).unwrap(),
        "hello from the host\n",
        "DIB_ variables reach the hooks"
    );
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/kiln-hooks")).unwrap(),
        "pre-install\ncleanup\n",
        "phases in order, in and out of the chroot"
    );

    // The version in Kiln holds exactly the SquashFS the build made.
    let versions: serde_json::Value =
        serde_json::from_str(&ok(kiln(&server, &admin, &["image", "versions", "debian-child", "-F", "json"], None))).unwrap();
    let root_sha = versions[0]["artifacts"].as_array().unwrap().iter().find(|a| a["kind"] == "root").unwrap()["sha256"].clone();
    let made = kiln_image_build::layers::file_digest(Path::new(first_child["squashfs"]["root"].as_str().unwrap())).unwrap().0;
    assert_eq!(format!("sha256:{}", root_sha.as_str().unwrap()), made);
    // And the build's log.
    let log = ok(kiln(&server, &admin, &["image", "download", "debian-child:1", "--artifact", "log", "-o", "-"], None));
    assert!(log.contains("kiln: [4/9] install packages") && log.contains("Setting up less"), "{log}");

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

    let scenario =
        Scenario { directory: directory.path(), cache: &cache, elements: &elements, child: &child, server: &server, admin: &admin };
    missing_parents_and_element_paths_are_named(&scenario);
    assert!(kiln_image_build::chroot::mounts_under(directory.path()).is_empty());

    offline_builds_from_the_cache_and_a_killed_build(&scenario);
}

/// The base layer's definition: Debian from scratch, published to the registry, Kiln and
/// the test bucket.
fn write_base_definition(directory: &Path, registry_address: &str, bucket: &TestS3) -> PathBuf {
    let base = directory.join("base.yaml");
    std::fs::write(
        &base,
        format!(
            "options:\n  layer_type: base\n  name: debian-base\n  publish_tags: bookworm\n  pkg_manager: apt\n  parent: scratch\n  \
             publish_registry: '{registry_address}/kiln'\n  registry_opts_push:\n    - '--tls-verify=false'\n  publish_kiln: debian-base\n  \
             publish_s3: '{}'\n  s3_prefix: 'compute/base/'\n  s3_bucket: '{}'\n\
             repos:\n  - alias: debian\n    url: 'http://deb.debian.org/debian'\n    suite: bookworm\n",
            bucket.endpoint,
            s3::BUCKET
        ),
    )
    .unwrap();
    base
}

/// The size of the object at `key` in the test bucket, if it is there.
fn stored_size(bucket: &TestS3, key: &str) -> Option<u64> {
    let settings = kiln_image_store::S3Settings {
        endpoint: bucket.endpoint.clone(),
        bucket: s3::BUCKET.to_owned(),
        region: s3::REGION.to_owned(),
        access_key_id: s3::ACCESS_KEY_ID.to_owned(),
        secret_access_key: s3::SECRET_ACCESS_KEY.to_owned(),
        prefix: String::new(),
    };
    tokio::runtime::Runtime::new().unwrap().block_on(kiln_image_store::object_size_in_bucket(&settings, key)).unwrap()
}

/// Two diskimage-builder elements, one depending on the other, with hooks inside and
/// outside the chroot and an environment.d snippet reading a DIB_ variable.
fn write_test_elements(directory: &Path) -> PathBuf {
    let elements = directory.join("elements");
    let hook = |path: &str, text: &str| {
        let path = elements.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    hook("kiln-greeting/element-deps", "kiln-marker\n");
    hook("kiln-greeting/environment.d/10-greeting", "export GREETING_TEXT=\"${DIB_GREETING:-none}\"\n");
    hook("kiln-greeting/install.d/20-greet", "#!/bin/sh\nset -e\necho \"$GREETING_TEXT\" > /etc/kiln-greeting\n");
    hook("kiln-marker/pre-install.d/10-mark", "#!/bin/sh\nset -e\necho pre-install >> /etc/kiln-hooks\n");
    hook("kiln-marker/cleanup.d/90-outside", "#!/bin/sh\nset -e\necho cleanup >> \"$TARGET_ROOT/etc/kiln-hooks\"\n");
    elements
}

/// What the first part of the scenario leaves for the offline part.
struct Scenario<'a> {
    directory: &'a Path,
    cache: &'a Path,
    elements: &'a Path,
    child: &'a Path,
    server: &'a ServerProcess,
    admin: &'a str,
}

/// A parent that is not in the registry is named in the error, and so are elements named
/// without a path to find them; nothing is built.
fn missing_parents_and_element_paths_are_named(scenario: &Scenario<'_>) {
    let Scenario { directory, cache, elements, child, server, admin } = *scenario;
    let missing = directory.join("missing.yaml");
    std::fs::write(&missing, std::fs::read_to_string(child).unwrap().replace("debian-base:bookworm", "debian-base:trixie")).unwrap();
    let build_missing = |environment: &[(&str, &str)]| {
        let args = ["image", "build", "-c", missing.to_str().unwrap(), "--cache", cache.to_str().unwrap()];
        let output = support::kiln_with_env(server, admin, &args, environment);
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = build_missing(&[("ELEMENTS_PATH", elements.to_str().unwrap())]);
    assert!(error.contains("debian-base:trixie is not in the registry"), "{error}");
    // Elements named without a path to find them: said before anything runs.
    let error = build_missing(&[]);
    assert!(error.contains("elements: kiln-greeting named, but no ELEMENTS_PATH"), "{error}");
}

/// Offline builds in a network namespace of their own, from what the online builds left in
/// the cache; what the cache lacks is named; a build killed mid-step leaves no mount.
fn offline_builds_from_the_cache_and_a_killed_build(scenario: &Scenario<'_>) {
    let Scenario { directory, cache, elements, child, server, admin } = *scenario;
    // Offline, in a network namespace of its own (no network at all): a new base and a new
    // child, neither cached, build from what the builds above left in the cache.
    let offline_base = directory.join("offline-base.yaml");
    std::fs::write(
        &offline_base,
        "options:\n  name: debian-offline\n  pkg_manager: apt\n  parent: scratch\n  publish_local: true\n\
         repos:\n  - alias: debian\n    url: 'http://deb.debian.org/debian'\n    suite: bookworm\n\
         packages: [less]\ncmds:\n  - cmd: 'echo built offline > /etc/kiln-offline'\n",
    )
    .unwrap();
    let offline_child = directory.join("offline-child.yaml");
    std::fs::write(
        &offline_child,
        std::fs::read_to_string(child)
            .unwrap()
            .replace("publish_kiln: debian-child", "publish_local: true")
            .replace("useradd -m -s /bin/sh kiln", "useradd -m -s /bin/sh offline"),
    )
    .unwrap();
    // `kiln image build --offline` with no network at all (a network namespace of its own;
    // `unshare` execs kiln, so the child's pid is kiln's).
    let offline_command = |definition: &Path| {
        let mut command = std::process::Command::new("unshare");
        command
            .args(["--net", "--"])
            .arg(support::KILN)
            .args(["image", "build", "-c", definition.to_str().unwrap(), "--cache", cache.to_str().unwrap(), "--offline", "-F", "json"])
            .env("ELEMENTS_PATH", elements)
            .env("DIB_GREETING", "offline")
            .env("KILN_URL", &server.url)
            .env("KILN_TOKEN", admin);
        command
    };
    let build_offline = |definition: &Path| {
        let output = offline_command(definition).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for definition in [&offline_base, &offline_child] {
        let (succeeded, stdout, stderr) = build_offline(definition);
        assert!(succeeded, "{stderr}");
        let built: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(built["reused"], false, "{stderr}");
        let root = cache.join("layers").join(built["layer"].as_str().unwrap()).join("root");
        assert!(root.join("usr/bin/less").exists(), "installed from the cache");
        assert!(!root.join("var/lib/apt/lists").read_dir().unwrap().any(|entry| entry.unwrap().file_name() != "partial"));
        assert!(
            !root
                .join("var/cache/apt/archives")
                .read_dir()
                .unwrap()
                .any(|entry| { entry.unwrap().file_name().to_string_lossy().ends_with(".deb") }),
            "no package file is left in the layer"
        );
    }
    // What the cache does not hold is named, and nothing is built.
    std::fs::write(&offline_base, std::fs::read_to_string(&offline_base).unwrap().replace("[less]", "[less, ed]")).unwrap();
    let (succeeded, _, stderr) = build_offline(&offline_base);
    assert!(!succeeded && stderr.contains("not in the build cache: ed_"), "{stderr}");
    std::fs::write(&offline_base, std::fs::read_to_string(&offline_base).unwrap().replace("suite: bookworm", "suite: trixie")).unwrap();
    let (succeeded, _, stderr) = build_offline(&offline_base);
    assert!(!succeeded && stderr.contains("--offline: what debootstrap installs for trixie"), "{stderr}");
    assert!(kiln_image_build::chroot::mounts_under(directory).is_empty());

    // Killed mid-step (SIGKILL: no cleanup code of Kiln's runs): the chroot mounts were never
    // the host's, and the next build of the layer starts afresh. The step sleeps while a
    // marker is in /dev/shm (the host's /dev is bound in), so the second build goes through.
    let marker = format!("/dev/shm/kiln-test-{}", std::process::id());
    std::fs::write(&marker, "").unwrap();
    let killed = directory.join("killed.yaml");
    std::fs::write(
        &killed,
        std::fs::read_to_string(&offline_base)
            .unwrap()
            .replace("suite: trixie", "suite: bookworm")
            .replace("[less, ed]", "[less]")
            .replace(
                "echo built offline > /etc/kiln-offline",
                &format!("echo $$ > /kiln-step.pid; if [ -e {marker} ]; then exec sleep 600; fi"),
            ),
    )
    .unwrap();
    let mut build = offline_command(&killed).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let step_pid = loop {
        let found = std::fs::read_dir(cache.join("layers")).unwrap().flatten().find_map(|entry| {
            std::fs::read_to_string(entry.path().join("root/kiln-step.pid")).ok().and_then(|text| text.trim().parse::<i32>().ok())
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(started.elapsed().as_secs() < 300, "the build never reached its step");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(kiln_image_build::chroot::mounts_under(directory).is_empty(), "the host never sees the build's mounts");
    build.kill().unwrap();
    build.wait().unwrap();
    // SAFETY: ending the step this test's build started (its pid, written by the step itself).
    unsafe { libc::kill(step_pid, libc::SIGKILL) };
    std::fs::remove_file(&marker).unwrap();
    assert!(kiln_image_build::chroot::mounts_under(directory).is_empty());
    let (succeeded, stdout, stderr) = build_offline(&killed);
    assert!(succeeded, "{stderr}");
    let rebuilt: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rebuilt["reused"], false);
    assert!(cache.join("layers").join(rebuilt["layer"].as_str().unwrap()).join("root/usr/bin/less").exists());
}

#[test]
fn a_built_debian_image_boots_live_in_the_lab_and_calls_back() {
    let _one = ONE_BUILD_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !can_build() {
        return;
    }
    let Some(mut lab) = kiln_lab::Lab::create_or_skip() else { return };
    let kiln = Path::new(support::KILN);
    lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();
    let cache = work.join("build-cache");
    let cache_arg = cache.to_str().unwrap().to_owned();

    // The base needs the Debian archive, which only the host's network reaches: built there
    // into the cache. Inside the lab the same layer (publishing does not change its key)
    // comes from the cache and goes to the lab's server; the child needs no archive.
    let base = "options:\n  name: debian-live-base\n  pkg_manager: apt\n  parent: scratch\n  publish_local: true\n\
                repos:\n  - alias: debian\n    url: 'http://deb.debian.org/debian'\n    suite: bookworm\n";
    std::fs::write(work.join("base-local.yaml"), base).unwrap();
    std::fs::write(work.join("base.yaml"), base.replace("publish_local: true", "publish_kiln: debian-live-base")).unwrap();
    std::fs::write(work.join("init"), DEBIAN_INIT).unwrap();
    std::fs::write(
        work.join("child.yaml"),
        "options:\n  name: debian-live\n  pkg_manager: apt\n  parent: 'kiln:debian-live-base'\n  publish_kiln: debian-live\n\
         copyfiles:\n  - src: init\n    dest: /sbin/init\ncmds:\n  - cmd: 'chmod 0755 /sbin/init'\n",
    )
    .unwrap();
    let host_build = std::process::Command::new(kiln)
        .args(["image", "build", "-c", work.join("base-local.yaml").to_str().unwrap(), "--cache", &cache_arg])
        .output()
        .unwrap();
    assert!(host_build.status.success(), "{}", String::from_utf8_lossy(&host_build.stderr));
    let agent = support::agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();
    // Live nodes fetch their root without a credential: the image is public.
    lab.kiln(kiln, &["image", "create", "debian-live", "--visibility", "public"]).unwrap();
    let base_built = json(
        &lab.kiln(kiln, &["image", "build", "-c", work.join("base.yaml").to_str().unwrap(), "--cache", &cache_arg, "-F", "json"]).unwrap(),
    );
    assert_eq!(base_built["reused"], true, "the lab's build reuses the host's layer");
    let child_built = json(
        &lab.kiln(kiln, &["image", "build", "-c", work.join("child.yaml").to_str().unwrap(), "--cache", &cache_arg, "-F", "json"]).unwrap(),
    );
    assert_eq!(child_built["published"], "debian-live:1");

    let console = add_node(&mut lab, kiln, "node42", "52:54:00:be:ef:42", None);
    let started = Instant::now();
    let text = deploy_until_active(&lab, kiln, "node42", "debian-live", "live", &console);
    assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on overlay / overlay"), "{text}");
    assert!(text.contains("KILN-DEBIAN-PHONED-HOME HTTP/1.1 204"), "{text}");
    eprintln!("built Debian image, live deploy to active: {:.0} s", started.elapsed().as_secs_f64());
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The lab's proof of life for a built Debian root: its init (bash; the images have no init
/// system) brings the network up with busybox's DHCP client where the initramfs has not
/// already, reports the root it runs on, and calls the server back.
const DEBIAN_INIT: &str = r#"#!/bin/bash
. /etc/os-release
echo "KILN-DEBIAN-BOOTED $PRETTY_NAME on $(grep ' / ' /proc/mounts)" > /dev/console
# Booted from its disk: a kernel update, as a kernel package's hooks would run it. The image's
# hook must bring the new kernel and initramfs onto the EFI system partition.
if grep -q ' / ext4 ' /proc/mounts && ! grep -q '^/dev/nbd' /proc/mounts && [ -x /etc/kernel/postinst.d/zz-kiln-esp ]; then
    running=$(uname -r)
    { cat "/boot/vmlinuz-$running"; echo KILN-NEWER-KERNEL; } > /boot/vmlinuz-99.0-kiln
    { cat "/boot/initrd.img-$running"; echo KILN-NEWER-INITRD; } > /boot/initrd.img-99.0-kiln
    /etc/kernel/postinst.d/zz-kiln-esp 99.0-kiln /boot/vmlinuz-99.0-kiln > /dev/console 2>&1
    echo "KILN-ESP-HOOK $?" > /dev/console
fi
interface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
# Booted in network mode (the root on the node's own clone): a marker with the MAC, synced
# before a reboot, and reported when found after it.
if grep -q '^/dev/nbd[0-9]*p[0-9]* / ' /proc/mounts; then
    if [ -f /kiln-marker ]; then
        echo "KILN-DEBIAN-MARKER $(cat /kiln-marker)" > /dev/console
    else
        cat "/sys/class/net/$interface/address" > /kiln-marker
        sync
        echo "KILN-DEBIAN-WROTE $(cat /kiln-marker); rebooting" > /dev/console
        busybox reboot -f
    fi
fi
server=$(sed -n 's/.*kiln\.server=http:\/\/\([^ /]*\).*/\1/p' /proc/cmdline)
if command -v busybox > /dev/null && ! ip -4 addr show "$interface" 2> /dev/null | grep -q inet; then
    busybox ip link set "$interface" up
    busybox udhcpc -i "$interface" -q -n -t 20 -T 2 -s /usr/local/sbin/kiln-udhcpc > /dev/console 2>&1
fi
mac=$(cat "/sys/class/net/$interface/address")
exec 3<>"/dev/tcp/${server%:*}/${server#*:}"
printf 'GET /boot/v1/phone-home?mac=%s HTTP/1.0\r\nHost: %s\r\n\r\n' "$mac" "$server" >&3
read -r status <&3
echo "KILN-DEBIAN-PHONED-HOME $status" > /dev/console
hostname kiln-debian
while :; do agetty -L 115200 ttyS0 vt100 || sleep 5; done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    busybox ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && busybox ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
"#;

#[test]
fn a_built_debian_image_boots_live_and_from_its_disk_in_the_lab() {
    let _one = ONE_BUILD_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !can_build() {
        return;
    }
    let Some(registry) = TestRegistry::start() else { return };
    let Some(mut lab) = kiln_lab::Lab::create_or_skip() else { return };
    let kiln = Path::new(support::KILN);
    let data = lab.start_server(kiln, "").unwrap();
    let work = lab.directory.path().to_owned();
    let cache = work.join("build-cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let registry_address = &registry.address;

    // On the host, which reaches the Debian archive: the base, pushed to the registry, and
    // the child on it with a kernel and a dracut initramfs that can fetch a live root over
    // HTTP (as OpenCHAMI's images do), kept in the cache.
    std::fs::write(
        work.join("base.yaml"),
        format!(
            "options:\n  name: debian-base\n  publish_tags: bookworm\n  pkg_manager: apt\n  parent: scratch\n  \
             publish_registry: '{registry_address}/kiln'\n  registry_opts_push: ['--tls-verify=false']\n\
             repos:\n  - alias: debian\n    url: 'http://deb.debian.org/debian'\n    suite: bookworm\n"
        ),
    )
    .unwrap();
    std::fs::write(work.join("init"), DEBIAN_INIT).unwrap();
    std::fs::write(work.join("udhcpc"), UDHCPC_SCRIPT).unwrap();
    let child = format!(
        "options:\n  name: debian-disk\n  pkg_manager: apt\n  parent: '{registry_address}/kiln/debian-base:bookworm'\n  \
         registry_opts_pull: ['--tls-verify=false']\n  outputs: [squashfs, disk-raw]\n  publish_local: true\n  \
         kernel_args: 'init=/sbin/kiln-init panic=-1 kiln.server={}'\n\
         packages: [linux-image-cloud-amd64, dracut, dracut-network, dracut-live, curl, procps, busybox]\n\
         copyfiles:\n  - src: init\n    dest: /sbin/kiln-init\n  - src: init\n    dest: /sbin/init\n  \
         - src: udhcpc\n    dest: /usr/local/sbin/kiln-udhcpc\n\
         cmds:\n  - cmd: 'chmod 0755 /sbin/kiln-init /sbin/init /usr/local/sbin/kiln-udhcpc'\n  \
         - cmd: 'kver=$(ls /lib/modules); dracut --force --no-hostonly --add \"livenet dmsquash-live\" /boot/initrd.img-$kver $kver'\n",
        lab.boot_url()
    );
    std::fs::write(work.join("child-local.yaml"), &child).unwrap();
    for definition in ["base.yaml", "child-local.yaml"] {
        let output = std::process::Command::new(kiln)
            .args(["image", "build", "-c", work.join(definition).to_str().unwrap(), "--cache", &cache_arg])
            .output()
            .unwrap();
        assert!(output.status.success(), "{definition}: {}", String::from_utf8_lossy(&output.stderr));
    }

    // In the lab, which reaches neither: the same child, offline, from the cache, to Kiln,
    // into a public image (live nodes fetch their root without a credential).
    lab.kiln(kiln, &["image", "create", "debian-disk", "--visibility", "public"]).unwrap();
    std::fs::write(work.join("child.yaml"), child.replace("publish_local: true", "publish_kiln: debian-disk")).unwrap();
    let built = json(
        &lab.kiln(
            kiln,
            &["image", "build", "-c", work.join("child.yaml").to_str().unwrap(), "--cache", &cache_arg, "--offline", "-F", "json"],
        )
        .unwrap(),
    );
    assert_eq!(built["reused"], true);
    assert_eq!(built["published"], "debian-disk:1");
    let image = std::path::PathBuf::from(built["disk"].as_str().unwrap());
    let image_size = std::fs::metadata(&image).unwrap().len();
    let agent = support::agent_binary();
    lab.kiln(kiln, &["build", "ramdisk", "--agent", &agent.display().to_string()]).unwrap();

    // Live: the SquashFS triple, with the image's own kernel and dracut initramfs.
    let live_console = add_node(&mut lab, kiln, "node44", "52:54:00:be:ef:44", None);
    let started = Instant::now();
    let text = deploy_until_active(&lab, kiln, "node44", "debian-disk", "live", &live_console);
    assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on LiveOS_rootfs / overlay"), "booted live:\n{text}");
    assert!(text.contains("KILN-DEBIAN-PHONED-HOME HTTP/1.1 204"), "{text}");
    eprintln!("built Debian SquashFS triple, live deploy to active: {:.0} s", started.elapsed().as_secs_f64());
    lab.kiln(kiln, &["node", "power", "force-off", "node44"]).unwrap();

    // Disk: the whole-disk image, written by the agent and booted from the disk.
    let disk = work.join("node-disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(image_size + (64 << 20)).unwrap();
    let console = add_node(&mut lab, kiln, "node43", "52:54:00:be:ef:43", Some(&disk));
    let started = Instant::now();
    let text = deploy_until_active(&lab, kiln, "node43", "debian-disk", "disk", &console);
    assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on /dev/"), "booted from its disk:\n{text}");
    assert!(text.contains("ext4 rw"), "{text}");
    assert!(text.contains("KILN-DEBIAN-PHONED-HOME HTTP/1.1 204"), "{text}");
    // The root filesystem has been mounted read-write since, and the ESP changed by the
    // kernel update; the partition tables are as written.
    let written = std::fs::read(&disk).unwrap();
    let expected = std::fs::read(&image).unwrap();
    assert!(written[..1 << 20] == expected[..1 << 20], "the disk holds the image's partition table");
    let tail = expected.len() - (1 << 20);
    assert!(written[tail..expected.len()] == expected[tail..], "and its backup GPT");
    // The kernel update inside the deployed system reached the ESP, which SYSLINUX boots.
    assert!(text.contains("now boots 99.0-kiln") && text.contains("KILN-ESP-HOOK 0"), "the ESP hook ran:\n{text}");
    for (file, marker) in [("::/vmlinuz", "KILN-NEWER-KERNEL\n"), ("::/initrd.img", "KILN-NEWER-INITRD\n")] {
        let on_esp =
            std::process::Command::new("mcopy").args(["-n", "-i", &format!("{}@@1M", disk.display()), file, "-"]).output().unwrap();
        assert!(on_esp.status.success(), "{}", String::from_utf8_lossy(&on_esp.stderr));
        assert!(on_esp.stdout.ends_with(marker.as_bytes()), "{file} on the ESP is the new one");
    }
    eprintln!("built Debian disk image ({image_size} bytes), deploy to active: {:.0} s", started.elapsed().as_secs_f64());

    // UEFI: the same image, booted by OVMF straight from the disk (no network, writes
    // discarded), reaches its init through SYSLINUX's BOOTX64.EFI.
    let started = Instant::now();
    let text = boot_disk_with_ovmf(&work, &image, false);
    assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on /dev/"), "UEFI boot from the disk image:\n{text}");
    eprintln!("UEFI boot of the disk image to its init: {:.0} s", started.elapsed().as_secs_f64());

    the_image_boots_under_secure_boot(&lab, kiln, &work, &child, &cache_arg);
    the_image_boots_in_network_mode(&mut lab, kiln, &data, &image);
}

/// Secure Boot: the same layer (from the cache) made into a disk with shim and signed GRUB on
/// its ESP, booted by OVMF enforcing Secure Boot with Microsoft's keys.
fn the_image_boots_under_secure_boot(lab: &kiln_lab::Lab, kiln: &Path, work: &Path, child: &str, cache_arg: &str) {
    if !std::path::Path::new("/usr/lib/shim/shimx64.efi.signed").exists() {
        eprintln!("skipped the Secure Boot disk: shim-signed is not installed");
        return;
    }
    let secure = child
        .replace("name: debian-disk", "name: debian-disk-secure")
        .replace("publish_local: true", "publish_local: true\n  secure_boot: true");
    std::fs::write(work.join("child-secure.yaml"), &secure).unwrap();
    let started = Instant::now();
    let built = json(
        &lab.kiln(
            kiln,
            &["image", "build", "-c", work.join("child-secure.yaml").to_str().unwrap(), "--cache", cache_arg, "--offline", "-F", "json"],
        )
        .unwrap(),
    );
    assert_eq!(built["reused"], true, "the layer is the cached one: {built}");
    let secure_image = std::path::PathBuf::from(built["disk"].as_str().unwrap());
    let text = boot_disk_with_ovmf(work, &secure_image, true);
    assert!(text.contains("Secure boot enabled"), "the kernel runs under Secure Boot:\n{text}");
    assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on /dev/"), "Secure Boot from the disk image:\n{text}");
    eprintln!("Secure Boot disk image made and booted to its init: {:.0} s", started.elapsed().as_secs_f64());
}

/// Network mode: two machines with no disk, BIOS and UEFI, deploy the same version at once;
/// each boots the image's root from its own clone, writes a marker and reboots, finds its
/// own marker and not the other's, calls back and offers a login prompt. The version's
/// bytes (the shared base) are unchanged afterwards.
fn the_image_boots_in_network_mode(lab: &mut kiln_lab::Lab, kiln: &Path, data: &Path, image: &Path) {
    let nodes = [("node46", "52:54:00:be:ef:46", kiln_lab::Firmware::Bios), ("node47", "52:54:00:be:ef:47", kiln_lab::Firmware::Uefi)];
    let mut consoles = Vec::new();
    for (name, mac, firmware) in nodes {
        let machine = lab.add_powered_off_machine(mac, firmware).unwrap();
        let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
        lab.enroll_machine(kiln, name, mac, &qmp).unwrap();
        consoles.push(console);
    }
    let started = Instant::now();
    let args = ["node", "deploy", "node46", "node47", "--image", "debian-disk", "--mode", "network"];
    let deployed = lab.kiln(kiln, &[&args[..], &["--wait-for-callback", "--wait", "--timeout", "900", "-F", "json"]].concat());
    let read = |console: &PathBuf| std::fs::read_to_string(console).unwrap_or_default();
    let deployed = deployed.unwrap_or_else(|error| {
        panic!(
            "network deploy failed: {error}\nconsoles:\n{}\n-----\n{}\nserver:\n{}",
            read(&consoles[0]),
            read(&consoles[1]),
            lab.server_log()
        )
    });
    assert_eq!(json(&deployed)[1]["provision_state"], "active", "{deployed}");
    for ((name, mac, _), console) in nodes.iter().zip(&consoles) {
        let login = (0..120).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(500));
            read(console).contains("kiln-debian login:")
        });
        let text = read(console);
        assert!(login, "{name} offers a login prompt:\n{text}");
        assert!(text.contains("KILN-DEBIAN-BOOTED Debian GNU/Linux 12 (bookworm) on /dev/nbd0p"), "{name} runs from its clone:\n{text}");
        assert!(text.contains(&format!("KILN-DEBIAN-WROTE {mac}")), "{name} wrote its marker:\n{text}");
        let markers: Vec<&str> = text.lines().filter_map(|line| line.split("KILN-DEBIAN-MARKER ").nth(1)).map(str::trim).collect();
        assert_eq!(markers, [*mac], "{name} finds its own marker after the reboot, and only it:\n{text}");
        assert!(text.contains("KILN-DEBIAN-PHONED-HOME HTTP/1.1 204"), "{text}");
    }
    eprintln!("built Debian image, network deploy of a BIOS and a UEFI machine to login: {:.0} s", started.elapsed().as_secs_f64());
    // Both clones stand on one base, the version's bytes, unchanged.
    let clones: Vec<PathBuf> = std::fs::read_dir(data.join("netdisk/clones")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(clones.len(), 2, "{clones:?}");
    let backing: Vec<String> = clones
        .iter()
        .map(|clone| {
            let info = std::process::Command::new("qemu-img").args(["info", "-U", "--output", "json"]).arg(clone).output().unwrap();
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            info["full-backing-filename"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(backing[0], backing[1], "one base for one version");
    assert_eq!(support::sha256_of(Path::new(&backing[0])), support::sha256_of(image), "the base is the version's bytes, unchanged");
    lab.kiln(kiln, &["node", "undeploy", "node46", "node47", "--wait", "--timeout", "120"]).unwrap();
    assert_eq!(std::fs::read_dir(data.join("netdisk/clones")).unwrap().count(), 0, "the clones are removed");
}

/// Boots `image` in a QEMU machine with OVMF and no network until its init reports; returns
/// the serial console. The machine is killed when done, or when the test fails.
/// Boots `image` in OVMF with no network and writes discarded, until the Debian init says it
/// booted; with `secure_boot`, OVMF enforcing Secure Boot with Microsoft's keys enrolled (on
/// q35 with SMM, as that firmware needs).
fn boot_disk_with_ovmf(work: &Path, image: &Path, secure_boot: bool) -> String {
    struct Machine(std::process::Child);
    impl Drop for Machine {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (code, vars_template, machine_type) = match secure_boot {
        true => ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd", "q35,smm=on"),
        false => ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "q35"),
    };
    let vars = work.join("uefi-vars.fd");
    std::fs::copy(format!("/usr/share/OVMF/{vars_template}"), &vars).unwrap();
    let console = work.join(if secure_boot { "uefi-secure-console.log" } else { "uefi-console.log" });
    let machine = Machine(
        std::process::Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                machine_type,
                "-accel",
                "tcg",
                "-m",
                "512",
                "-display",
                "none",
                "-monitor",
                "none",
                "-nic",
                "none",
                "-snapshot",
            ])
            .args(if secure_boot { &["-global", "driver=cfi.pflash01,property=secure,value=on"][..] } else { &[] })
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/{code}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("if=virtio,format=raw,file={}", image.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("KILN-DEBIAN-BOOTED") || Instant::now() > deadline {
            drop(machine);
            return text;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Deploys `image` to `node` in `mode`, waiting for the deployed system's callback, and
/// returns the machine's console.
fn deploy_until_active(lab: &kiln_lab::Lab, kiln: &Path, node: &str, image: &str, mode: &str, console: &Path) -> String {
    let args =
        ["node", "deploy", node, "--image", image, "--mode", mode, "--wait-for-callback", "--wait", "--timeout", "900", "-F", "json"];
    let deployed = lab.kiln(kiln, &args).unwrap_or_else(|error| {
        panic!(
            "{mode} deploy of {node} failed: {error}\nconsole:\n{}\nserver:\n{}",
            std::fs::read_to_string(console).unwrap_or_default(),
            lab.server_log()
        )
    });
    assert_eq!(json(&deployed)[0]["provision_state"], "active", "{deployed}");
    std::fs::read_to_string(console).unwrap_or_default()
}

/// A powered-off BIOS machine (with `disk`, if given) behind the lab BMC, enrolled as `name`
/// and made available; returns its console log.
fn add_node(lab: &mut kiln_lab::Lab, kiln: &Path, name: &str, mac: &str, disk: Option<&Path>) -> std::path::PathBuf {
    let machine = match disk {
        Some(disk) => lab.add_machine_with_disk(mac, kiln_lab::Firmware::Bios, disk).unwrap(),
        None => lab.add_powered_off_machine(mac, kiln_lab::Firmware::Bios).unwrap(),
    };
    let (qmp, console) = (machine.qmp.clone().unwrap(), machine.console.clone());
    lab.enroll_machine(kiln, name, mac, &qmp).unwrap();
    console
}
