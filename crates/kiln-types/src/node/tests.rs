//! The node types' checks: Secure Boot from properties, static addresses, boot interfaces.

mod properties {
    use super::super::*;

    fn node_with(properties: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "id": "1", "name": "n1", "xname": null, "nid": null, "role": null, "groups": [], "interfaces": [], "bmc": null,
            "properties": properties, "project": null, "provision_state": "available", "maintenance": false,
            "created_at": "2026-12-07T00:00:00Z", "updated_at": "2026-12-07T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn secure_boot_is_read_from_properties_and_ironic_capabilities() {
        for yes in [
            serde_json::json!({"secure_boot": true}),
            serde_json::json!({"secure_boot": "True"}),
            serde_json::json!({"capabilities": "boot_mode:uefi,secure_boot:true"}),
            serde_json::json!({"capabilities": {"secure_boot": "true"}}),
        ] {
            assert!(node_with(yes.clone()).secure_boot(), "{yes}");
        }
        for no in [
            serde_json::json!({}),
            serde_json::json!({"secure_boot": false}),
            serde_json::json!({"capabilities": "boot_mode:uefi,secure_boot:false"}),
            serde_json::json!({"capabilities": "not_secure_boot:true"}),
        ] {
            assert!(!node_with(no.clone()).secure_boot(), "{no}");
        }
    }
}

mod static_addresses {
    use super::super::*;
    use expect_test::expect;

    fn check(entry: serde_json::Value) -> Result<IpAddrEntry, String> {
        let entry: IpAddrEntry = serde_json::from_value(entry).unwrap();
        super::super::address::validate_address("interfaces[0].ip_addrs[0]", &entry).map_err(|error| error.to_string())
    }

    #[test]
    fn static_addresses_are_checked_and_written_canonically() {
        let good = check(serde_json::json!({"name": "mgmt", "ip_addr": "fd00:0077::0041", "prefix_length": 64,
            "gateway": "fd00:77::1", "dns_servers": ["fd00:77::0001"], "vlan": 100}))
        .unwrap();
        assert_eq!((good.ip_addr.as_str(), good.dns_servers[0].as_str()), ("fd00:77::41", "fd00:77::1"));
        assert!(check(serde_json::json!({"ip_addr": "10.0.0.5"})).is_ok(), "OpenCHAMI's entries stay as they are");
        assert!(check(serde_json::json!({"ip_addr": "fd00::5", "prefix_length": 64, "gateway": "fe80::1"})).is_ok(), "a link-local router");
        assert!(check(serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 32})).is_ok(), "a host route");
        let errors: Vec<String> = [
            serde_json::json!({"ip_addr": "10.0.0.5", "gateway": "10.0.0.1"}),
            serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 33}),
            serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 24, "gateway": "10.0.1.1"}),
            serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 24, "dns_servers": ["fd00::1"]}),
            serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 24, "vlan": 4095}),
            serde_json::json!({"ip_addr": "10.0.0.255", "prefix_length": 24}),
            serde_json::json!({"ip_addr": "10.0.0.5", "prefix_length": 0}),
        ]
        .into_iter()
        .map(|entry| check(entry).unwrap_err())
        .collect();
        expect![[r#"
            [
                "interfaces[0].ip_addrs[0].prefix_length: missing: a gateway, DNS servers or a VLAN make a static address, which needs its prefix length",
                "interfaces[0].ip_addrs[0].prefix_length: 33 is not a prefix length (1 to 32)",
                "interfaces[0].ip_addrs[0].gateway: 10.0.1.1 is not another address of 10.0.0.5/24's subnet",
                "interfaces[0].ip_addrs[0].dns_servers: fd00::1 is not of the same family as 10.0.0.5",
                "interfaces[0].ip_addrs[0].vlan: 4095 is not a VLAN ID (1 to 4094)",
                "interfaces[0].ip_addrs[0].ip_addr: 10.0.0.255 is the network or broadcast address of its /24, not a host's",
                "interfaces[0].ip_addrs[0].prefix_length: 0 is not a prefix length (1 to 32)",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn the_boot_interface_property_is_checked() {
        let properties = |value: serde_json::Value| serde_json::json!({ "boot_interface": value }).as_object().unwrap().clone();
        assert!(validate_properties(properties(serde_json::json!("redfish-virtual-media"))).is_ok());
        let error = validate_properties(properties(serde_json::json!("floppy"))).unwrap_err().to_string();
        assert_eq!(error, "properties.boot_interface: 'floppy' is not a boot interface (pxe or virtual-media)");
    }
}
