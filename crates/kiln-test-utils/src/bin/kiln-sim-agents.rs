//! Simulated nodes for scale benchmarks: each one does what a machine and its `kiln-agent`
//! do over the network, with no VM and no disk. It asks for its boot script until the script
//! carries an agent token, heartbeats, downloads the deploy's artifact checking its SHA-256,
//! and reports the result, all through the real agent protocol.
//!
//! Usage: kiln-sim-agents --server URL --count N [--mac-prefix 52:54:00:10] [--concurrency 256]
//! MACs are PREFIX:HH:LL for node numbers 0..N.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

struct Options {
    server: String,
    count: usize,
    prefix: String,
    concurrency: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options { server: String::new(), count: 0, prefix: "52:54:00:10".into(), concurrency: 256 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--server" => options.server = value()?,
            "--count" => options.count = value()?.parse().map_err(|_| "--count: a number")?,
            "--mac-prefix" => options.prefix = value()?,
            "--concurrency" => options.concurrency = value()?.parse().map_err(|_| "--concurrency: a number")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.server.is_empty() || options.count == 0 {
        return Err("usage: kiln-sim-agents --server URL --count N [--mac-prefix P] [--concurrency C]".into());
    }
    Ok(options)
}

fn word(script: &str, key: &str) -> Option<String> {
    script.split_whitespace().find_map(|word| word.strip_prefix(key)).map(str::to_owned)
}

async fn one_node(client: &reqwest::Client, server: &str, mac: &str) -> Result<(), String> {
    let started = Instant::now();
    // As a machine in PXE: ask until the reconciler has made the script the agent's.
    let (node, boot_token) = loop {
        let script = client
            .get(format!("{server}/boot/v1/bootscript?mac={mac}"))
            .send()
            .await
            .map_err(|e| format!("boot script: {e}"))?
            .text()
            .await
            .map_err(|e| format!("boot script: {e}"))?;
        if let (Some(node), Some(token)) = (word(&script, "kiln.node="), word(&script, "kiln.token=")) {
            break (node, token);
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("no agent boot script within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The boot token is good once: for the session token the agent uses from then on.
    let session = client
        .post(format!("{server}/agent/v1/nodes/{node}/session"))
        .bearer_auth(&boot_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .map_err(|e| format!("token exchange: {e}"))?;
    if !session.status().is_success() {
        return Err(format!("token exchange: {}", session.status()));
    }
    let session: serde_json::Value = session.json().await.map_err(|e| format!("token exchange: {e}"))?;
    let token = session["token"].as_str().ok_or("token exchange: no token")?.to_owned();
    let heartbeat = format!("{server}/agent/v1/nodes/{node}/heartbeat");
    let command: serde_json::Value = loop {
        let answer =
            client.post(&heartbeat).bearer_auth(&token).json(&serde_json::json!({})).send().await.map_err(|e| format!("heartbeat: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("heartbeat: {}", answer.status()));
        }
        let command: serde_json::Value = answer.json().await.map_err(|e| format!("heartbeat: {e}"))?;
        if command["command"] != "wait" {
            break command;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if command["command"] != "deploy" {
        return Err(format!("expected a deploy command, got {command}"));
    }
    let artifact = &command["artifact"];
    let mut response = client
        .get(format!("{server}{}", artifact["path"].as_str().unwrap_or_default()))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| format!("artifact: {e}"))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("artifact: {e}"))? {
        hasher.update(&chunk);
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let error = (Some(digest.as_str()) != artifact["sha256"].as_str()).then(|| format!("checksum mismatch: {digest}"));
    let result = serde_json::json!({ "id": command["id"], "error": error, "inventory": null, "root_device": "/dev/sim" });
    let answer = client
        .post(format!("{server}/agent/v1/nodes/{node}/result"))
        .bearer_auth(&token)
        .json(&result)
        .send()
        .await
        .map_err(|e| format!("result: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("result: {}", answer.status()));
    }
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("kiln-sim-agents: {error}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(options.concurrency).build().expect("an HTTP client");
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..options.count {
        let mac = format!("{}:{:02x}:{:02x}", options.prefix, index >> 8, index & 0xff);
        let (client, server, limit, failures) = (client.clone(), options.server.clone(), limit.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            if let Err(error) = one_node(&client, &server, &mac).await {
                eprintln!("{mac}: {error}");
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let failed = failures.load(Ordering::Relaxed);
    println!("{} simulated nodes done, {failed} failed, in {:.1} s", options.count - failed, started.elapsed().as_secs_f64());
    if failed > 0 {
        std::process::exit(1);
    }
}
