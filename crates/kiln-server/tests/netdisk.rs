//! Network disks on loopback, with real sockets and real qemu-nbd: four nodes deployed in
//! network mode (no BMC: nothing to power), each with a reserved loopback address of its
//! own. Each node's boot script, asked for from its own address, carries its export name; asked
//! for from another address, it carries none. The gateway grants each export only from its
//! node's address and a privileged port: every pair of the four is tried, and guessed names
//! and unprivileged ports are refused. Undeploy revokes the name.

mod support;

use std::net::{IpAddr, SocketAddr, TcpStream};

use kiln_client::Client;
use kiln_server::config::NetdiskLayer;
use support::start_server;

fn qemu_nbd_installed() -> bool {
    std::process::Command::new("qemu-nbd").arg("--version").output().is_ok_and(|output| output.status.success())
}

/// An HTTP GET from `source` (a loopback address), as a node at that address would send it.
fn get_from(source: IpAddr, server: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {server}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Negotiates `export` with the gateway from `source`, from a privileged port as the node's
/// agent does (as root: the tests run as root, as the lab does), or from any port.
fn negotiate_from(source: IpAddr, gateway: SocketAddr, export: &str) -> Result<kiln_nbd::ExportInfo, String> {
    negotiate_from_port(source, gateway, export, true)
}

fn negotiate_from_port(source: IpAddr, gateway: SocketAddr, export: &str, privileged: bool) -> Result<kiln_nbd::ExportInfo, String> {
    // A port whose last connection to the gateway is in TIME_WAIT is skipped.
    let ports: Vec<u16> = if privileged { (700..1000).collect() } else { vec![0] };
    for port in ports {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if socket.bind(&SocketAddr::new(source, port).into()).is_err() || socket.connect(&gateway.into()).is_err() {
            continue;
        }
        let mut stream: TcpStream = socket.into();
        return kiln_nbd::negotiate_as_client(&mut stream, export).map_err(|error| error.to_string());
    }
    panic!("no source port on {source} reached the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_reaches_only_its_own_clone_from_its_own_address() {
    if !qemu_nbd_installed() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "qemu-nbd is needed (qemu-utils)");
        eprintln!("skipping: qemu-nbd is not installed");
        return;
    }
    let netdisk = NetdiskLayer { listen: Some("127.0.0.1:0".to_owned()), address: None, dir: None };
    let server = start_server(kiln_server::ServerConfigLayer { netdisk: Some(netdisk), ..Default::default() }).await;
    let api = server.handle.local_addr();
    let gateway = server.handle.network_disk_addr().expect("network disks are configured");
    let admin = Client::new(&format!("http://{api}"), Some(server.admin_token.clone()));

    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.raw");
    std::fs::write(&image, vec![0x5a_u8; 1 << 20]).unwrap();
    let _: serde_json::Value = admin.post("/v1/images", &serde_json::json!({"name": "tiny"})).await.unwrap();
    let upload = admin.upload_file(&image, "tiny", None, &|_| {}).await.unwrap();
    let version = serde_json::json!({"artifacts": [{"kind": "disk", "upload": upload, "format": "raw"}]});
    let _: serde_json::Value = admin.post("/v1/images/tiny/versions", &version).await.unwrap();

    // A stand-in deploy ramdisk: the script names its kernel and initramfs; nothing boots here.
    for (kind, bytes) in [("kernel", b"not a kernel".as_slice()), ("initrd", b"not an initramfs".as_slice())] {
        std::fs::write(work.path().join(kind), bytes).unwrap();
    }
    let _: serde_json::Value =
        admin.post("/v1/images", &serde_json::json!({"name": "kiln-deploy-ramdisk", "visibility": "public"})).await.unwrap();
    let kernel = admin.upload_file(&work.path().join("kernel"), "kiln-deploy-ramdisk", None, &|_| {}).await.unwrap();
    let initrd = admin.upload_file(&work.path().join("initrd"), "kiln-deploy-ramdisk", None, &|_| {}).await.unwrap();
    let ramdisk = serde_json::json!({"artifacts": [{"kind": "kernel", "upload": kernel}, {"kind": "initrd", "upload": initrd}]});
    let _: serde_json::Value = admin.post("/v1/images/kiln-deploy-ramdisk/versions", &ramdisk).await.unwrap();

    let nodes: Vec<(String, String, IpAddr)> =
        (1..=4).map(|n| (format!("nd{n}"), format!("52:54:00:dd:00:0{n}"), IpAddr::from([127, 0, 0, 10 + n]))).collect();
    for (name, mac, address) in &nodes {
        let node = serde_json::json!({"name": name, "interfaces": [{"mac_addr": mac, "ip_addrs": [{"name": "boot", "ip_addr": address.to_string()}]}]});
        let _: serde_json::Value = admin.post("/v1/nodes", &node).await.unwrap();
        for (action, state) in [("manage", "manageable"), ("provide", "available")] {
            let _: serde_json::Value = admin.post(&format!("/v1/nodes/{name}/{action}"), &serde_json::json!({})).await.unwrap();
            wait_for(&admin, name, state).await;
        }
    }
    for (name, ..) in &nodes {
        let deploy = serde_json::json!({"image": "tiny", "mode": "network"});
        let _: serde_json::Value = admin.post(&format!("/v1/nodes/{name}/deploy"), &deploy).await.unwrap();
    }
    let mut exports = Vec::new();
    for (name, mac, address) in &nodes {
        wait_for(&admin, name, "active").await;
        let path = format!("/boot/v1/bootscript?mac={mac}");
        let script = tokio::task::spawn_blocking({
            let (address, path) = (*address, path.clone());
            move || get_from(address, api, &path)
        })
        .await
        .unwrap();
        let export = script.split_whitespace().find_map(|word| word.strip_prefix("kiln.nbd.export=")).unwrap_or_else(|| panic!("{script}"));
        exports.push(export.to_owned());
        // From any other address, the script carries no export name.
        let other = tokio::task::spawn_blocking(move || get_from(IpAddr::from([127, 0, 0, 99]), api, &path)).await.unwrap();
        assert!(!other.contains("kiln.nbd"), "{name}'s script from another address:\n{other}");
    }

    let (nodes_moved, exports_moved) = (nodes.clone(), exports.clone());
    tokio::task::spawn_blocking(move || {
        for (i, (_, _, address)) in nodes_moved.iter().enumerate() {
            for (j, export) in exports_moved.iter().enumerate() {
                let outcome = negotiate_from(*address, gateway, export);
                match i == j {
                    true => assert_eq!(
                        outcome.unwrap_or_else(|error| panic!("node {i}: {error}")).size,
                        1 << 20,
                        "node {i} reaches its own clone"
                    ),
                    false => {
                        let refusal = outcome.unwrap_err();
                        assert!(refusal.contains("not this machine's"), "node {i} with node {j}'s name: {refusal}");
                    }
                }
            }
            // The right name from the right address, but not from root's ports.
            let refusal = negotiate_from_port(*address, gateway, &exports_moved[i], false).unwrap_err();
            assert!(refusal.contains("privileged port"), "{refusal}");
            for guess in ["", "kiln_guessed", &format!("{}x", exports_moved[i])] {
                let refusal = negotiate_from(*address, gateway, guess).unwrap_err();
                assert!(refusal.contains("no such export"), "{guess:?}: {refusal}");
            }
        }
    })
    .await
    .unwrap();

    // The version backs the clones: it stays until they are undeployed.
    let refused = admin.delete::<serde_json::Value>("/v1/images/tiny/versions/1").await.unwrap_err().to_string();
    assert!(refused.contains("4 of tiny:1") && refused.contains("undeploy them first"), "{refused}");

    // A node with a clone is not deleted from under it.
    let refused = admin.delete::<serde_json::Value>("/v1/nodes/nd1").await.unwrap_err().to_string();
    assert!(refused.contains("network disk") && refused.contains("undeploy it first"), "{refused}");

    // Undeploy: the clone and its name are gone.
    let _: serde_json::Value = admin.post("/v1/nodes/nd1/undeploy", &serde_json::json!({})).await.unwrap();
    wait_for(&admin, "nd1", "available").await;
    let (address, export) = (nodes[0].2, exports[0].clone());
    let refusal = tokio::task::spawn_blocking(move || negotiate_from(address, gateway, &export).unwrap_err()).await.unwrap();
    assert!(refusal.contains("no such export"), "{refusal}");
    server.handle.shutdown().await;
}

async fn wait_for(admin: &Client, node: &str, state: &str) {
    for _ in 0..200 {
        let status: serde_json::Value = admin.get(&format!("/v1/nodes/{node}/provision")).await.unwrap();
        if status["provision_state"] == state && status["pending"].is_null() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status: serde_json::Value = admin.get(&format!("/v1/nodes/{node}/provision")).await.unwrap();
    panic!("{node} did not become {state}: {status}");
}
