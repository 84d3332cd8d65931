//! Definitions as written (the OpenCHAMI tutorial's, and Debian ones) and the plans they
//! make; and what is wrong with bad ones.

use std::collections::BTreeMap;

use expect_test::{Expect, expect};

use super::{Downloads, plan_build};
use crate::definition::parse_definition;

fn check_plan(yaml: &str, parent_digest: &str, expected: Expect) {
    check_plan_with(yaml, parent_digest, Downloads::Fetch, expected);
}

fn check_plan_with(yaml: &str, parent_digest: &str, downloads: Downloads, expected: Expect) {
    let definition = parse_definition(yaml).unwrap_or_else(|error| panic!("{error}"));
    let copied = BTreeMap::from([("files/motd".to_owned(), "ab".repeat(32))]);
    expected.assert_eq(&plan_build(&definition, parent_digest, &copied, &BTreeMap::new(), downloads).to_string());
}

fn check_error(yaml: &str, expected: Expect) {
    expected.assert_eq(&kiln_types::error_chain(&parse_definition(yaml).unwrap_err()));
}

const ROCKY_BASE: &str = r#"
options:
  layer_type: 'base'
  name: 'rocky-base'
  publish_tags: '9'
  pkg_manager: 'dnf'
  parent: 'scratch'
  publish_registry: 'demo.openchami.cluster:5000/demo'
  registry_opts_push:
    - '--tls-verify=false'

repos:
  - alias: 'Rocky_9_BaseOS'
    url: 'https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/'
    gpg: 'https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9'
  - alias: 'Rocky_9_AppStream'
    url: 'https://dl.rockylinux.org/pub/rocky/9/AppStream/x86_64/os/'
    gpg: 'https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9'

package_groups:
  - 'Minimal Install'
  - 'Development Tools'

packages:
  - kernel
  - wget
  - dracut-live
  - cloud-init
  - chrony
  - rsyslog
  - sudo

cmds:
  - cmd: 'dracut --add "dmsquash-live livenet network-manager" --kver $(basename /lib/modules/*) -N -f --logfile /tmp/dracut.log 2>/dev/null'
  - cmd: 'echo DRACUT LOG:; cat /tmp/dracut.log'
"#;

const COMPUTE_BASE: &str = r#"
options:
  layer_type: 'base'
  name: 'compute-base'
  publish_tags:
    - 'rocky9'
  pkg_manager: 'dnf'
  parent: 'demo.openchami.cluster:5000/demo/rocky-base:9'
  registry_opts_pull:
    - '--tls-verify=false'

  # Publish SquashFS image to local S3
  publish_s3: 'http://demo.openchami.cluster:9000'
  s3_prefix: 'compute/base/'
  s3_bucket: 'boot-images'

  # Publish OCI image to container registry
  publish_registry: 'demo.openchami.cluster:5000/demo'
  registry_opts_push:
    - '--tls-verify=false'

repos:
  - alias: 'Epel9'
    url: 'https://dl.fedoraproject.org/pub/epel/9/Everything/x86_64/'
    gpg: 'https://dl.fedoraproject.org/pub/epel/RPM-GPG-KEY-EPEL-9'

packages:
  - vim
  - nfs-utils
"#;

const DEBIAN_BASE: &str = r#"
options:
  name: debian-base
  publish_tags: ['12']
  pkg_manager: apt
  parent: scratch
  publish_registry: '127.0.0.1:5000/kiln'
repos:
  - alias: debian
    url: 'http://deb.debian.org/debian'
    suite: bookworm
  - alias: debian-security
    url: 'http://deb.debian.org/debian-security'
    suite: bookworm-security
    components: [main, contrib]
packages:
  - linux-image-amd64
  - systemd-sysv
"#;

const DEBIAN_CHILD: &str = r#"
options:
  name: debian-compute
  pkg_manager: apt
  parent: '127.0.0.1:5000/kiln/debian-base:12'
  publish_kiln: debian-compute
  outputs: [squashfs, disk-raw]
packages: [openssh-server, "nfs-common"]
copyfiles:
  - src: files/motd
    dest: /etc/motd
cmds:
  - cmd: "useradd -m -s /bin/bash kiln"
"#;

#[test]
fn the_tutorial_s_rocky_base_bootstraps_with_dnf_and_pushes_to_the_registry() {
    check_plan(
        ROCKY_BASE,
        "scratch",
        expect![[r#"
            layer b83d20763c4990b4a46dc5ec571ec7793f0f03d2569f0641fc82b2a7b2ae94dc
              1. start from an empty root
              2. write $ROOT/etc/yum.repos.d/Rocky_9_BaseOS.repo: [Rocky_9_BaseOS]\nname=Rocky_9_BaseOS\nbaseurl=https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/\nenabled=1\ngpgcheck=1\ngpgkey=https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9
              3. write $ROOT/etc/yum.repos.d/Rocky_9_AppStream.repo: [Rocky_9_AppStream]\nname=Rocky_9_AppStream\nbaseurl=https://dl.rockylinux.org/pub/rocky/9/AppStream/x86_64/os/\nenabled=1\ngpgcheck=1\ngpgkey=https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9
              4. bind /proc, /sys and /dev into $ROOT
              5. install package groups, in $ROOT: dnf -y groupinstall 'Minimal Install' 'Development Tools'
              6. install packages, in $ROOT: dnf -y install kernel wget dracut-live cloud-init chrony rsyslog sudo
              7. cmds[0], in $ROOT: dracut --add "dmsquash-live livenet network-manager" --kver $(basename /lib/modules/*) -N -f --logfile /tmp/dracut.log 2>/dev/null
              8. cmds[1], in $ROOT: echo DRACUT LOG:; cat /tmp/dracut.log
              9. drop the package caches, in $ROOT: dnf clean all
             10. unbind /proc, /sys and /dev
             11. make oci
             12. publish to demo.openchami.cluster:5000/demo/rocky-base:9
        "#]],
    );
}

#[test]
fn the_tutorial_s_compute_base_unpacks_its_parent_and_publishes_twice() {
    check_plan(
        COMPUTE_BASE,
        "sha256:1111",
        expect![[r#"
            layer 388da62108ea5e55b639f15037afa80b3818d2100dc72931ac662a62a400c61a
              1. unpack demo.openchami.cluster:5000/demo/rocky-base:9 (--tls-verify=false)
              2. write $ROOT/etc/yum.repos.d/Epel9.repo: [Epel9]\nname=Epel9\nbaseurl=https://dl.fedoraproject.org/pub/epel/9/Everything/x86_64/\nenabled=1\ngpgcheck=1\ngpgkey=https://dl.fedoraproject.org/pub/epel/RPM-GPG-KEY-EPEL-9
              3. bind /proc, /sys and /dev into $ROOT
              4. install packages, in $ROOT: dnf -y install vim nfs-utils
              5. drop the package caches, in $ROOT: dnf clean all
              6. unbind /proc, /sys and /dev
              7. make squashfs
              8. make oci
              9. publish to demo.openchami.cluster:5000/demo/compute-base:rocky9
             10. publish to http://demo.openchami.cluster:9000/boot-images/compute/base/compute-base
        "#]],
    );
}

#[test]
fn a_debian_base_is_bootstrapped_from_its_first_repository() {
    check_plan(
        DEBIAN_BASE,
        "scratch",
        expect![[r#"
            layer 9291664fe36ef8a53dbe960a456a98f567508296baa36f73e95c966e350eaaa6
              1. fetch what debootstrap installs: debootstrap --variant=minbase --cache-dir=$DOWNLOADS/packages --components=main --make-tarball=$DOWNLOADS/bootstrap/bookworm-3044c0617adb67e5.tgz.partial bookworm $ROOT http://deb.debian.org/debian
              2. keep it for offline builds: mv $DOWNLOADS/bootstrap/bookworm-3044c0617adb67e5.tgz.partial $DOWNLOADS/bootstrap/bookworm-3044c0617adb67e5.tgz
              3. bootstrap: debootstrap --variant=minbase --components=main --unpack-tarball=$DOWNLOADS/bootstrap/bookworm-3044c0617adb67e5.tgz bookworm $ROOT http://deb.debian.org/debian
              4. write $ROOT/etc/apt/sources.list.d/debian-security.list: deb http://deb.debian.org/debian-security bookworm-security main contrib
              5. bind /proc, /sys and /dev into $ROOT, and $DOWNLOADS/packages onto $ROOT/var/cache/apt/archives
              6. refresh the package lists, in $ROOT: apt-get update; keep them in $DOWNLOADS/apt-lists
              7. install packages, in $ROOT: DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-image-amd64 systemd-sysv
              8. unbind /proc, /sys and /dev
              9. drop the package caches, in $ROOT: rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
             10. make oci
             11. publish to 127.0.0.1:5000/kiln/debian-base:12
        "#]],
    );
}

#[test]
fn offline_the_same_layer_is_built_from_the_cache_only() {
    check_plan_with(
        DEBIAN_BASE,
        "scratch",
        Downloads::CacheOnly,
        expect![[r#"
            layer 9291664fe36ef8a53dbe960a456a98f567508296baa36f73e95c966e350eaaa6
              1. bootstrap: debootstrap --variant=minbase --components=main --unpack-tarball=$DOWNLOADS/bootstrap/bookworm-3044c0617adb67e5.tgz bookworm $ROOT http://deb.debian.org/debian
              2. write $ROOT/etc/apt/sources.list.d/debian-security.list: deb http://deb.debian.org/debian-security bookworm-security main contrib
              3. bind /proc, /sys and /dev into $ROOT, and $DOWNLOADS/packages onto $ROOT/var/cache/apt/archives
              4. the package lists of these sources, from $DOWNLOADS/apt-lists
              5. install packages, in $ROOT: missing=$(apt-get install -qq --print-uris --no-install-recommends linux-image-amd64 systemd-sysv | cut -d' ' -f2 | tr '\n' ' '); [ -z "$missing" ] || { echo "not in the build cache: $missing" >&2; exit 100; }; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-download linux-image-amd64 systemd-sysv
              6. unbind /proc, /sys and /dev
              7. drop the package caches, in $ROOT: rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
              8. make oci
              9. publish to 127.0.0.1:5000/kiln/debian-base:12
        "#]],
    );
    let key =
        |downloads| plan_build(&parse_definition(DEBIAN_BASE).unwrap(), "scratch", &BTreeMap::new(), &BTreeMap::new(), downloads).layer_key;
    assert_eq!(key(Downloads::Fetch), key(Downloads::CacheOnly), "where the packages come from is not content");
}

#[test]
fn a_debian_child_copies_files_runs_commands_and_makes_two_outputs() {
    check_plan(
        DEBIAN_CHILD,
        "sha256:2222",
        expect![[r#"
            layer 2208a2b77598df2f8e69528d3d078b44f9f34e5b260311450e60e47f150028f0
              1. unpack 127.0.0.1:5000/kiln/debian-base:12
              2. bind /proc, /sys and /dev into $ROOT, and $DOWNLOADS/packages onto $ROOT/var/cache/apt/archives
              3. refresh the package lists, in $ROOT: apt-get update; keep them in $DOWNLOADS/apt-lists
              4. install packages, in $ROOT: DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server nfs-common
              5. copy files/motd to $ROOT/etc/motd
              6. cmds[0], in $ROOT: useradd -m -s /bin/bash kiln
              7. unbind /proc, /sys and /dev
              8. drop the package caches, in $ROOT: rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
              9. make squashfs
             10. make disk-raw
             11. publish to kiln:debian-compute (a new version)
        "#]],
    );
}

#[test]
fn the_layer_key_follows_content_not_publishing() {
    let key = |yaml: &str, parent: &str| {
        plan_build(
            &parse_definition(yaml).unwrap(),
            parent,
            &BTreeMap::from([("files/motd".to_owned(), "ab".repeat(32))]),
            &BTreeMap::new(),
            Downloads::Fetch,
        )
        .layer_key
    };
    let base = key(DEBIAN_CHILD, "sha256:2222");
    assert_eq!(base, key(DEBIAN_CHILD, "sha256:2222"), "the same inputs, the same key");
    assert_ne!(base, key(DEBIAN_CHILD, "sha256:3333"), "a new parent is a new layer");
    assert_ne!(base, key(&DEBIAN_CHILD.replace("openssh-server", "openssh-client"), "sha256:2222"));
    assert_eq!(base, key(&DEBIAN_CHILD.replace("publish_kiln: debian-compute", "publish_kiln: elsewhere"), "sha256:2222"));
    let other_file = plan_build(
        &parse_definition(DEBIAN_CHILD).unwrap(),
        "sha256:2222",
        &BTreeMap::from([("files/motd".to_owned(), "cd".repeat(32))]),
        &BTreeMap::new(),
        Downloads::Fetch,
    );
    assert_ne!(base, other_file.layer_key, "a copied file's bytes are content");
    let with_elements = format!("{DEBIAN_CHILD}elements: [kiln-hello]\n");
    let element_key = |digest: &str| {
        let copied = BTreeMap::from([("files/motd".to_owned(), "ab".repeat(32))]);
        let elements = BTreeMap::from([("kiln-hello".to_owned(), digest.to_owned())]);
        plan_build(&parse_definition(&with_elements).unwrap(), "sha256:2222", &copied, &elements, Downloads::Fetch).layer_key
    };
    assert_ne!(base, element_key("aa"), "elements are content");
    assert_ne!(element_key("aa"), element_key("bb"), "and so are their files");
}

#[test]
fn elements_run_after_the_commands_and_before_the_caches_go() {
    check_plan(
        "options: {name: x, pkg_manager: apt, parent: 'kiln:base', publish_kiln: x}\ncmds: [{cmd: 'true'}]\nelements: [kiln-hello]\n",
        "sha256:1111",
        expect![[r#"
            layer d46fda5be98d7bcac5bc5a1eab2c7e0df013b99c5909de00a3ed82efecd1aeb4
              1. unpack kiln:base:latest
              2. bind /proc, /sys and /dev into $ROOT, and $DOWNLOADS/packages onto $ROOT/var/cache/apt/archives
              3. cmds[0], in $ROOT: true
              4. unbind /proc, /sys and /dev
              5. run the hooks of elements kiln-hello
              6. drop the package caches, in $ROOT: rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
              7. make squashfs
              8. publish to kiln:x (a new version)
        "#]],
    );
}

#[test]
fn bad_definitions_name_what_is_wrong() {
    check_error("options: {name: x}\n", expect!["options.pkg_manager: is required (apt, dnf or zypper)"]);
    check_error("options: {name: x, pkg_manager: pacman}\n", expect!["options.pkg_manager: 'pacman' is not apt, dnf or zypper"]);
    check_error("options: {name: 'a b', pkg_manager: apt}\n", expect!["options.name: 'a b' must be letters, digits, '-', '_' and '.'"]);
    check_error(
        "options: {name: x, pkg_manager: apt, publish_registry: r/x}\n",
        expect!["options.parent: a scratch layer is bootstrapped from its first repository, and there is none"],
    );
    check_error(
        "options: {name: x, pkg_manager: apt, publish_registry: r/x}\nrepos: [{alias: d, url: 'http://deb.debian.org/debian'}]\n",
        expect!["repos[0]: an apt repository needs a suite (e.g. suite: bookworm)"],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, parent: 'rocky:9', publish_registry: r}\n",
        expect!["options.parent: 'rocky:9' is not 'scratch', a registry reference (host/path/name:tag) or kiln:IMAGE[:VERSION]"],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, parent: 'r/base:1', publish_s3: 'http://s3'}\n",
        expect!["options.s3_bucket: is required with publish_s3"],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, parent: 'r/base:1', publish_kiln: x}\ncopyfiles: [{src: a, dest: etc/a}]\n",
        expect!["copyfiles[0]: dest 'etc/a' must be an absolute path inside the image"],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, parent: 'r/base:1'}\n",
        expect!["options.publish_registry: the layer goes nowhere: set publish_registry, publish_s3, publish_kiln or outputs"],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, colour: blue}\n",
        expect![
            "the definition is not valid YAML for an image: options: unknown field `colour`, expected one of `name`, `layer_type`, `parent`, `pkg_manager`, `publish_tags`, `publish_registry`, `registry_opts_push`, `registry_opts_pull`, `publish_s3`, `s3_prefix`, `s3_bucket`, `publish_local`, `publish_kiln`, `outputs`, `kernel_args`, `secure_boot` at line 1 column 38"
        ],
    );
    check_error(
        "options: {name: x, pkg_manager: dnf, parent: 'r/b:1', publish_kiln: x}\ncmds: [{cmd: ' '}]\n",
        expect!["cmds[0]: is empty"],
    );
}
