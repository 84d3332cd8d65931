//! The console capture and `/v1/nodes/{node}/console`, with the machine's end of the serial
//! line played by a Unix socket the test listens on, where the lab's QEMU machines offer
//! theirs (the lab tests, `kiln-cli/tests/provision.rs` and `lab_command.rs`, read real
//! machines the same way): output kept and followed by offset, typing delivered, tenancy as
//! for nodes, and a closed line no longer typed into.

use std::time::Duration;

mod support;

use kiln_client::Client;
use kiln_types::api::{ConsoleInput, ConsoleOutput, CreatedToken};
use support::start_server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn decoded(output: &ConsoleOutput) -> String {
    let bytes: Vec<u8> = decode_base64(&output.data);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Standard base64, as the API sends it (a few lines rather than one more dependency).
fn decode_base64(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let value = alphabet.iter().position(|candidate| *candidate == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

async fn token_for(admin: &Client, user: &str) -> String {
    let created: CreatedToken = admin.post("/v1/tokens", &serde_json::json!({"name": "t", "user": user})).await.unwrap();
    created.secret
}

#[tokio::test]
async fn a_serial_line_is_kept_followed_typed_into_and_shown_only_to_its_project() {
    let server = start_server(Default::default()).await;
    let base = format!("http://{}", server.handle.local_addr());
    let admin = Client::new(&base, Some(server.admin_token.clone()));
    let lab = tempfile::tempdir().unwrap();
    let qmp = lab.path().join("qmp-525400cc0001.sock");
    let listener = tokio::net::UnixListener::bind(lab.path().join("serial-525400cc0001.sock")).unwrap();
    for (project, user, role) in [("alpha", "alice", "member"), ("alpha", "rob", "reader"), ("beta", "bob", "member")] {
        let _ = admin.post::<_, serde_json::Value>("/v1/projects", &serde_json::json!({"name": project})).await;
        admin.post::<_, serde_json::Value>("/v1/users", &serde_json::json!({"name": user})).await.unwrap();
        admin
            .put::<_, serde_json::Value>(&format!("/v1/projects/{project}/members"), &serde_json::json!({"user": user, "role": role}))
            .await
            .unwrap();
    }
    let node = serde_json::json!({"name": "n1", "bmc": {"driver": "lab", "address": qmp.display().to_string()}});
    admin.post::<_, serde_json::Value>("/v1/nodes", &node).await.unwrap();
    admin.post::<_, serde_json::Value>("/v1/projects/alpha/allocate", &serde_json::json!({"nodes": ["n1"]})).await.unwrap();
    let alice = Client::new(&base, Some(token_for(&admin, "alice").await));
    let rob = Client::new(&base, Some(token_for(&admin, "rob").await));
    let bob = Client::new(&base, Some(token_for(&admin, "bob").await));

    // The server connects to the line by itself and keeps what the machine prints.
    let (mut machine, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.expect("the capture connects").unwrap();
    machine.write_all(b"iPXE 1.21\r\nlogin: ").await.unwrap();
    let mut output: ConsoleOutput = alice.get("/v1/nodes/n1/console").await.unwrap();
    for _ in 0..40 {
        if output.end == 18 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        output = alice.get("/v1/nodes/n1/console").await.unwrap();
    }
    assert_eq!((output.start, output.end, output.connected), (0, 18, true), "{output:?}");
    assert_eq!(decoded(&output), "iPXE 1.21\r\nlogin: ");
    let after: ConsoleOutput = rob.get("/v1/nodes/n1/console?after=11").await.unwrap();
    assert_eq!((after.start, decoded(&after).as_str()), (11, "login: "), "a reader follows from an offset");

    // A member types; the machine receives it. A reader may not; another project's member
    // finds no such node.
    alice.post::<_, serde_json::Value>("/v1/nodes/n1/console", &ConsoleInput { text: "root\r".into() }).await.unwrap();
    let mut typed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), machine.read_exact(&mut typed)).await.expect("typed in time").unwrap();
    assert_eq!(&typed, b"root\r");
    let refused = rob.post::<_, serde_json::Value>("/v1/nodes/n1/console", &ConsoleInput { text: "x".into() }).await.unwrap_err();
    assert!(refused.to_string().contains("may read node 'n1' but not type"), "{refused}");
    for error in [
        bob.get::<ConsoleOutput>("/v1/nodes/n1/console").await.unwrap_err(),
        bob.post::<_, serde_json::Value>("/v1/nodes/n1/console", &ConsoleInput { text: "x".into() }).await.unwrap_err(),
    ] {
        assert!(error.to_string().contains("node 'n1' not found"), "{error}");
    }
    let empty = alice.post::<_, serde_json::Value>("/v1/nodes/n1/console", &ConsoleInput { text: String::new() }).await.unwrap_err();
    assert!(empty.to_string().contains("text: between 1 and 4096 bytes"), "{empty}");

    // The line closes (the machine went away): typing is refused, what was kept stays.
    drop(machine);
    drop(listener);
    let mut closed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(error) = alice.post::<_, serde_json::Value>("/v1/nodes/n1/console", &ConsoleInput { text: "x".into() }).await {
            closed = Some(error);
            break;
        }
    }
    let closed = closed.expect("typing into a closed line is refused");
    assert!(closed.to_string().contains("no console connection"), "{closed}");
    let kept: ConsoleOutput = alice.get("/v1/nodes/n1/console").await.unwrap();
    assert_eq!((kept.end, kept.connected), (18, false));
    server.handle.shutdown().await;
}
