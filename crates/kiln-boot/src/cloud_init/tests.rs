//! Snapshot tests of what nodes are served: meta-data, vendor-data and group renders.

use expect_test::{Expect, expect};
use kiln_types::cloud_init::CloudInitDefaults;
use serde_json::{Map, Value, json};

use super::*;

const TUTORIAL_DEFAULTS: &str = "---
base-url: \"http://172.16.0.254:8081/cloud-init\"
cluster-name: \"demo\"
nid-length: 3
public-keys:
- \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head\"
short-name: \"nid\"
";

const TUTORIAL_COMPUTE_CONFIG: &str = "## template: jinja
#cloud-config
merge_how:
- name: list
  settings: [append]
- name: dict
  settings: [no_replace, recurse_list]
users:
  - name: root
    ssh_authorized_keys: {{ ds.meta_data.instance_data.v1.public_keys }}
disable_root: false
";

fn defaults() -> CloudInitDefaults {
    serde_yaml::from_str(TUTORIAL_DEFAULTS).unwrap()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn compute() -> CloudInitGroupView<'static> {
    CloudInitGroupView { name: "compute", description: "compute config", meta_data: None, has_file: true }
}

fn node<'a>(overrides: Option<&'a Map<String, Value>>) -> CloudInitNode<'a> {
    CloudInitNode {
        id: "0b9c1f6e-node-x1000c0s0b0n0",
        name: "x1000c0s0b0n0",
        nid: Some(1),
        local_ipv4: Some("172.16.0.1".parse().unwrap()),
        overrides,
        generation: 0,
    }
}

fn check_meta_data(inputs: &CloudInitInputs<'_>, expected: Expect) {
    expected.assert_eq(&to_yaml(&meta_data(inputs)));
}

#[test]
fn tutorial_node_with_a_local_hostname_override() {
    let defaults = defaults();
    let overrides = object(json!({"local-hostname": "compute1"}));
    let inputs = CloudInitInputs {
        defaults: &defaults,
        node: node(Some(&overrides)),
        groups: vec![compute()],
        base_url: "http://172.16.0.254:8081/cloud-init".into(),
        secrets: None,
    };
    check_meta_data(
        &inputs,
        expect![[r#"
            cluster-name: demo
            hostname: nid001
            instance-id: i-1c6ec1d1
            instance_data:
              v1:
                instance_id: i-1c6ec1d1
                local_ipv4: 172.16.0.1
                public_keys:
                - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head
                vendor_data:
                  cloud_init_base_url: http://172.16.0.254:8081/cloud-init
                  cluster_name: demo
                  groups:
                    compute:
                      Description: compute config
                  version: '1.0'
            local-hostname: compute1
        "#]],
    );
    expect![[r#"
        #include
        http://172.16.0.254:8081/cloud-init/compute.yaml
    "#]]
    .assert_eq(&vendor_data(&inputs.base_url, &inputs.groups));
}

#[test]
fn groups_in_membership_order_with_their_meta_data_extra_keys_and_secrets() {
    let mut defaults = defaults();
    defaults.extra.insert("ntp-server".to_owned(), json!("172.16.0.254"));
    defaults.region = Some("lab".to_owned());
    let overrides = object(json!({
        "public-keys": ["ssh-ed25519 AAAAnode node@x", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head"],
        "rack": "r12",
        "ntp-server": "10.0.0.1",
    }));
    let io_meta = object(json!({"lustre": "fs1", "mount": "/lus"}));
    let secrets = object(json!({"munge-key": "c2VjcmV0"}));
    let groups = vec![CloudInitGroupView { name: "io", description: "", meta_data: Some(&io_meta), has_file: false }, compute()];
    let inputs = CloudInitInputs {
        defaults: &defaults,
        node: CloudInitNode { generation: 3, ..node(Some(&overrides)) },
        groups,
        base_url: "http://10.0.0.1:8080/cloud-init".into(),
        secrets: Some(&secrets),
    };
    check_meta_data(
        &inputs,
        expect![[r#"
            cluster-name: demo
            hostname: nid001
            instance-id: i-abf9827e
            instance_data:
              v1:
                instance_id: i-abf9827e
                local_ipv4: 172.16.0.1
                public_keys:
                - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head
                - ssh-ed25519 AAAAnode node@x
                region: lab
                vendor_data:
                  cloud_init_base_url: http://10.0.0.1:8080/cloud-init
                  cluster_name: demo
                  groups:
                    io:
                      lustre: fs1
                      mount: /lus
                    compute:
                      Description: compute config
                  version: '1.0'
            local-hostname: nid001
            ntp-server: 10.0.0.1
            rack: r12
            security-credentials:
              munge-key: c2VjcmV0
        "#]],
    );
    expect![[r#"
        #include
        http://10.0.0.1:8080/cloud-init/compute.yaml
    "#]]
    .assert_eq(&vendor_data(&inputs.base_url, &inputs.groups));
}

#[test]
fn a_node_without_nid_or_defaults_keeps_its_name() {
    let defaults = CloudInitDefaults::default();
    let inputs = CloudInitInputs {
        defaults: &defaults,
        node: CloudInitNode { nid: None, local_ipv4: None, ..node(None) },
        groups: vec![],
        base_url: "http://127.0.0.1:8080/cloud-init".into(),
        secrets: None,
    };
    check_meta_data(
        &inputs,
        expect![[r#"
            hostname: x1000c0s0b0n0
            instance-id: i-1c6ec1d1
            instance_data:
              v1:
                instance_id: i-1c6ec1d1
                public_keys: []
                vendor_data:
                  cloud_init_base_url: http://127.0.0.1:8080/cloud-init
                  groups: {}
                  version: '1.0'
            local-hostname: x1000c0s0b0n0
        "#]],
    );
    expect!["#include\n"].assert_eq(&vendor_data(&inputs.base_url, &inputs.groups));
}

#[test]
fn hostnames_follow_short_name_and_nid_length() {
    let mut defaults = CloudInitDefaults { cluster_name: Some("demo".into()), ..Default::default() };
    assert_eq!(generated_hostname(&defaults, "n", Some(7)), "de0007");
    defaults.short_name = Some("cn".into());
    defaults.nid_length = Some(2);
    assert_eq!(generated_hostname(&defaults, "n", Some(7)), "cn07");
    assert_eq!(generated_hostname(&defaults, "n", Some(1234)), "cn1234", "a NID wider than nid-length is not cut");
    assert_eq!(instance_id("a", 0), instance_id("a", 0));
    assert_ne!(instance_id("a", 0), instance_id("a", 1), "a new deploy is a new instance");
}

#[test]
fn the_tutorial_compute_group_renders_with_the_ssh_key() {
    let defaults = defaults();
    let overrides = object(json!({"local-hostname": "compute1"}));
    let inputs = CloudInitInputs {
        defaults: &defaults,
        node: node(Some(&overrides)),
        groups: vec![compute()],
        base_url: "http://172.16.0.254:8081/cloud-init".into(),
        secrets: None,
    };
    let rendered = render_group(TUTORIAL_COMPUTE_CONFIG, &meta_data(&inputs)).unwrap();
    expect![[r#"
        #cloud-config
        merge_how:
        - name: list
          settings: [append]
        - name: dict
          settings: [no_replace, recurse_list]
        users:
          - name: root
            ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head']
        disable_root: false
    "#]]
    .assert_eq(&rendered);
    // The rendered text is YAML that gives root the key.
    let parsed: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(parsed["users"][0]["ssh_authorized_keys"][0], "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln demo@head");
}

#[test]
fn renders_print_values_as_python_and_aliases_dashes() {
    let meta = object(json!({
        "local-hostname": "nid001",
        "instance-id": "i-1",
        "flags": [true, false, null, 3, "it's", "a\\b"],
        "map": {"k": "v"},
    }));
    let template = "## template: jinja\n#cloud-config\nhostname: {{ ds.meta_data.local_hostname }}\nid: {{ v1.instance_id }}\nflags: {{ ds.meta_data.flags }}\nmap: {{ ds.meta_data.map }}\n";
    expect![[r#"
        #cloud-config
        hostname: nid001
        id: i-1
        flags: [True, False, None, 3, "it's", 'a\\b']
        map: {'k': 'v'}
    "#]]
    .assert_eq(&render_group(template, &meta).unwrap());
    let plain = "#cloud-config\nusers: []\n";
    assert_eq!(render_group(plain, &meta).unwrap(), plain, "only templates are rendered");
}

#[test]
fn template_errors_name_the_line() {
    let meta = Map::new();
    let error = render_group("## template: jinja\n#cloud-config\nkeys: {{ ds.meta_data.nothing.here }}\n", &meta).unwrap_err();
    expect!["rendering the template at line 2 (after the '## template' line)"].assert_eq(&error.to_string());
    expect!["undefined value (in <string>:2)"].assert_eq(&std::error::Error::source(&error).unwrap().to_string());
    let error = render_group("## template: jinja\n{% if %}\n", &meta).unwrap_err();
    assert_eq!(error.line, Some(1), "{error}");
}
