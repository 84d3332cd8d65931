//! Tests of `config`.

use super::*;

#[test]
fn defaults_run_everything_from_one_directory() {
    let config = ServerConfig::try_from(ServerConfigLayer::default()).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("./kiln-data"));
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database_url, "sqlite://./kiln-data/kiln.db");
    assert_eq!(config.public_url, "http://127.0.0.1:8080");
    assert_eq!(config.secret_key_file, PathBuf::from("./kiln-data/secret.key"));
}

#[test]
fn flags_beat_environment_beats_file() {
    let file: ServerConfigLayer = toml::from_str("listen = \"127.0.0.1:1\"\ndata_dir = \"/file\"\npublic_url = \"http://file\"\n").unwrap();
    let environment =
        HashMap::from([("KILN_LISTEN".to_owned(), "127.0.0.1:2".to_owned()), ("KILN_DATA_DIR".to_owned(), "/env".to_owned())]);
    let flags = ServerConfigLayer { listen: Some("127.0.0.1:3".to_owned()), ..Default::default() };
    let merged = file.overlaid_with(ServerConfigLayer::from_environment(&environment).unwrap()).overlaid_with(flags);
    let config = ServerConfig::try_from(merged).unwrap();
    assert_eq!(config.listen.port(), 3);
    assert_eq!(config.data_dir, PathBuf::from("/env"));
    assert_eq!(config.public_url, "http://file");
}

#[test]
fn errors_name_the_setting() {
    let cases = [
        (
            ServerConfigLayer { listen: Some("localhost".into()), ..Default::default() },
            "listen: 'localhost' is not an address:port such as 127.0.0.1:8080",
        ),
        (
            ServerConfigLayer { database_url: Some("mysql://u:pw@h/db".into()), ..Default::default() },
            "database_url: 'mysql://u:******@h/db' is neither sqlite://PATH nor postgres://…",
        ),
        (
            ServerConfigLayer { public_url: Some("ftp://x".into()), ..Default::default() },
            "public_url: 'ftp://x' is not an http:// or https:// URL",
        ),
    ];
    for (layer, message) in cases {
        assert_eq!(ServerConfig::try_from(layer).unwrap_err().to_string(), message);
    }
    let boot = |listen: Option<&str>, public_url: Option<&str>| ServerConfigLayer {
        boot: Some(BootLayer { listen: listen.map(str::to_owned), public_url: public_url.map(str::to_owned), ..Default::default() }),
        ..Default::default()
    };
    let error = |layer: ServerConfigLayer| ServerConfig::try_from(layer).unwrap_err().to_string();
    assert_eq!(error(boot(Some("8081"), None)), "boot.listen: '8081' is not an address:port such as 10.77.0.1:8081");
    assert_eq!(error(boot(None, Some("http://x:8081"))), "boot.public_url: needs boot.listen");
    assert_eq!(error(boot(Some("10.0.0.1:8081"), Some("x:8081"))), "boot.public_url: 'x:8081' is not an http:// or https:// URL");
    let config = ServerConfig::try_from(boot(Some("10.0.0.1:8081"), None)).unwrap();
    assert_eq!(config.boot.listen, Some("10.0.0.1:8081".parse().unwrap()));
    let error = ServerConfig::try_from(ServerConfigLayer {
        cloud_init: Some(CloudInitLayer { trusted_proxies: vec!["10.0.0.0/33".into()], impersonation: None }),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(error.to_string(), "cloud_init.trusted_proxies: '10.0.0.0/33' is neither an address nor a network such as 10.0.0.0/24");
    assert!(toml::from_str::<ServerConfigLayer>("lisen = \"x\"").is_err(), "typos in the file are refused");
}

#[test]
fn network_disks_are_checked_and_flagged_for_replicas() {
    let layer: ServerConfigLayer = toml::from_str("[netdisk]\n").unwrap();
    let config = ServerConfig::try_from(layer).unwrap();
    let netdisk = config.netdisk.as_ref().unwrap();
    assert_eq!(netdisk.listen.to_string(), "0.0.0.0:10809");
    assert_eq!(netdisk.dir, PathBuf::from("./kiln-data/netdisk"));
    assert!(config.warnings().is_empty(), "one replica on SQLite: nothing to say");
    let shared: ServerConfigLayer = toml::from_str("database_url = \"postgres://kiln@db/kiln\"\n[netdisk]\n").unwrap();
    let warnings = ServerConfig::try_from(shared).unwrap().warnings();
    assert!(warnings[0].contains("single-replica backend"), "{warnings:?}");
    for (text, message) in [
        ("[netdisk]\nlisten = \"nowhere\"\n", "netdisk.listen: 'nowhere' is not an address:port"),
        ("[netdisk]\naddress = \"10.0.0.1\"\n", "netdisk.address: '10.0.0.1' is not HOST:PORT"),
    ] {
        let error = ServerConfig::try_from(toml::from_str::<ServerConfigLayer>(text).unwrap()).unwrap_err();
        assert!(error.to_string().contains(message), "{error}");
    }
}

#[test]
fn tls_needs_an_https_public_url_a_boot_listener_and_a_whole_certificate() {
    let layer = |public_url: &str, boot_listen: Option<&str>, tls: TlsLayer| ServerConfigLayer {
        public_url: Some(public_url.to_owned()),
        boot: Some(BootLayer { listen: boot_listen.map(str::to_owned), ..Default::default() }),
        tls: Some(tls),
        ..Default::default()
    };
    let error = |layer: ServerConfigLayer| ServerConfig::try_from(layer).unwrap_err().to_string();
    let https = "https://kiln.example:8443";
    assert!(
        error(layer(https, None, TlsLayer::default())).starts_with("tls: needs boot.listen"),
        "machines need a plain-HTTP listener of their own"
    );
    let half = TlsLayer { cert_file: Some("/etc/kiln/tls.crt".into()), ..Default::default() };
    assert!(error(layer(https, Some("10.0.0.1:8081"), half)).starts_with("tls.cert_file:"));
    assert!(error(layer("http://kiln.example:8443", Some("10.0.0.1:8081"), TlsLayer::default())).contains("https://"));
    let config = ServerConfig::try_from(layer(https, Some("10.0.0.1:8081"), TlsLayer::default())).unwrap();
    assert!(config.tls.is_some());
}
