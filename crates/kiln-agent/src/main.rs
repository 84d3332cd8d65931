//! `kiln-agent`: runs on a node in the deploy ramdisk. It finds the server, its node id and
//! its token on the kernel command line (`kiln.server=`, `kiln.node=`, `kiln.token=`, and
//! `kiln.mac=`, the MAC it booted with), exchanges that boot token once for the operation's
//! session token (the one never seen in a boot script), heartbeats, carries out what the server answers (inspect, deploy, clean)
//! while reporting progress, reports the result, then reboots or powers off as the command
//! said. When the API listener speaks HTTPS (`kiln.api=https://…`), the session, heartbeats,
//! results and captures go there over TLS, trusting only the certificate whose SHA-256 the
//! boot script names (`kiln.api_ca=`); images still come from the boot listener, checked
//! against the digest in the command.
//!
//! The same binary simulates nodes for scale tests: `--server`, `--node`, `--token` on the
//! command line (`--api` for the API listener, if it is not the server's address, `--mac`
//! for the booting MAC) and `--disk-file` to write to a file instead of the machine's disks.
//!
//! `kiln-agent nbd-root` attaches a network-mode node's disk instead (see `nbd_root`), and
//! `kiln-agent network-up` sets a static address from the command line (see `network_up`).

mod client;
mod inspect;
mod io;
mod nbd_relay;
mod nbd_root;
mod network_up;
mod work;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_types::provision::{AgentCommand, AgentResult, Heartbeat, Progress, Then};

use crate::client::{HttpStatus, Server};
use crate::io::ProgressCounter;
use crate::work::Disks;

struct Options {
    /// The boot listener: boot scripts and image downloads (plain HTTP, checked against the
    /// digest each command carries).
    server: Server,
    /// The API listener, for uploads too large for the boot listener (captures).
    api: Server,
    /// Where the session exchange, heartbeats and results go: the API listener when it
    /// speaks HTTPS (so the session token and the commands never cross the network in the
    /// clear), else the boot listener.
    control: Server,
    node: String,
    /// The MAC the node booted with, to ask for a fresh boot script (and token) with.
    mac: Option<String>,
    disks: Disks,
    /// Exit instead of rebooting or powering off (simulations, tests).
    no_power: bool,
    heartbeat: Duration,
}

fn kernel_argument<'a>(command_line: &'a str, name: &str) -> Option<&'a str> {
    command_line.split_whitespace().find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

fn options() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let (mut server, mut node, mut token, mut disk_file, mut no_power) = (None, None, None, None, false);
    let (mut api, mut api_ca, mut mac) = (None, None, None);
    let mut heartbeat = Duration::from_secs(5);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--server" => server = Some(value()?),
            "--api" => api = Some(value()?),
            "--api-ca" => api_ca = Some(value()?),
            "--node" => node = Some(value()?),
            "--mac" => mac = Some(value()?),
            "--token" => token = Some(value()?),
            "--disk-file" => disk_file = Some(PathBuf::from(value()?)),
            "--heartbeat-seconds" => heartbeat = Duration::from_secs_f64(value()?.parse().context("--heartbeat-seconds")?),
            "--no-power" => no_power = true,
            "--help" | "-h" => {
                println!(
                    "kiln-agent [--server URL [--api URL [--api-ca SHA256]] --node ID --token TOKEN [--mac MAC]] [--disk-file PATH] [--no-power] [--heartbeat-seconds N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let command_line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let from_kernel = |name| kernel_argument(&command_line, name).map(str::to_owned);
    let server = server.or_else(|| from_kernel("kiln.server")).context("no server: kiln.server= on the kernel command line")?;
    let node = node.or_else(|| from_kernel("kiln.node")).context("no node id: kiln.node= on the kernel command line")?;
    let token = token.or_else(|| from_kernel("kiln.token")).context("no token: kiln.token= on the kernel command line")?;
    let api = api.or_else(|| from_kernel("kiln.api")).unwrap_or_else(|| server.clone());
    let api_ca = api_ca.or_else(|| from_kernel("kiln.api_ca"));
    let mac = mac.or_else(|| from_kernel("kiln.mac"));
    let disks = disk_file.map_or(Disks::Machine, Disks::File);
    let server = Server::parse(&server, &token)?;
    let (api, control) = match api.starts_with("https://") {
        true => {
            let digest = api_ca.context("kiln.api is https:// but no kiln.api_ca= names the certificate to trust there")?;
            let api = Server::parse_https(&api, &token, trust_anchor(&server, &digest)?)?;
            (api.clone(), api)
        }
        false => (Server::parse(&api, &token)?, server.clone()),
    };
    Ok(Options { server, api, control, node, mac, disks, no_power, heartbeat })
}

/// The HTTPS API's certificate, from the boot listener, waiting for it as for the server.
fn trust_anchor(server: &Server, digest: &str) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    const ATTEMPTS: u32 = 20;
    let mut attempt = 1;
    loop {
        match server.fetch_trust_anchor(digest) {
            Ok(certificate) => return Ok(certificate),
            Err(error) if attempt < ATTEMPTS => {
                eprintln!("kiln-agent: fetching the API's certificate failed ({error:#}); retrying");
                std::thread::sleep(Duration::from_secs(3));
                attempt += 1;
            }
            Err(error) => return Err(error.context("fetching the API's certificate")),
        }
    }
}

impl Options {
    /// The operation's token, for every server the agent talks to.
    fn set_token(&mut self, token: &str) {
        for server in [&mut self.server, &mut self.api, &mut self.control] {
            server.token = token.to_owned();
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("network-up") {
        match network_up::network_up() {
            Ok(true) => return,
            Ok(false) => std::process::exit(network_up::NO_STATIC_CONFIGURATION),
            Err(error) => {
                eprintln!("kiln-agent network-up: {error:#}");
                std::process::exit(1);
            }
        }
    }
    if std::env::args().nth(1).as_deref() == Some("nbd-root") {
        let attached = nbd_root::NbdRoot::from_args(std::env::args().skip(2)).and_then(|root| nbd_root::attach(&root));
        if let Err(error) = attached {
            eprintln!("kiln-agent nbd-root: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("kiln-agent: {error:#}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "kiln-agent {}: node {} boot server {} control {}",
        env!("CARGO_PKG_VERSION"),
        options.node,
        options.server.url(),
        options.control.url()
    );
    let outcome = exchange_boot_token(&mut options).and_then(|()| run(&options));
    let then = match &outcome {
        Ok(then) => *then,
        Err(error) => {
            eprintln!("kiln-agent: {error:#}");
            Then::PowerOff
        }
    };
    finish(&options, then);
}

/// Trades the boot token from the kernel command line for the operation's session token,
/// before anything else: the boot token is good for this once. A server that is not there
/// yet is waited for, as heartbeats wait. A refusal means the token is spent, perhaps by an
/// exchange whose answer was lost on the way: the agent then does what a ramdisk booting
/// again would, once (a fresh boot script carries a fresh token, and ends any session the
/// lost answer held); a second refusal ends the agent.
fn exchange_boot_token(options: &mut Options) -> anyhow::Result<()> {
    let path = format!("/agent/v1/nodes/{}/session", options.node);
    let (mut failures, mut fresh_token_asked) = (0u32, false);
    loop {
        match options.control.post_json::<_, kiln_types::provision::AgentSession>(&path, &serde_json::json!({})) {
            Ok(Some(session)) => {
                options.set_token(&session.token);
                return Ok(());
            }
            Ok(None) => bail!("the server answered the token exchange with nothing"),
            Err(error) if is_refused(&error) && !fresh_token_asked => {
                fresh_token_asked = true;
                eprintln!("kiln-agent: the boot token was refused ({error:#}); asking for a fresh boot script");
                let token = fresh_boot_token(options).context("the server refused the boot token, and gave no fresh one")?;
                options.set_token(&token);
            }
            Err(error) if is_refused(&error) => {
                bail!("the server refused the boot token: it was used already, or the operation is over ({error:#})")
            }
            Err(error) => {
                failures += 1;
                eprintln!("kiln-agent: exchanging the boot token failed ({error:#}); retrying");
                std::thread::sleep(Duration::from_secs(u64::from(failures.min(6))));
            }
        }
    }
}

/// The token of a fresh boot script for this node, asked for with the MAC it booted with.
/// The server serves one only to the node's own address, and only while the operation lasts.
fn fresh_boot_token(options: &Options) -> anyhow::Result<String> {
    let mac = options.mac.as_deref().context("no kiln.mac= on the kernel command line to ask for a boot script with")?;
    let mut response = options.server.request("GET", &format!("/boot/v1/bootscript?mac={mac}"), &[], b"")?;
    if response.status != 200 {
        bail!("the boot script answered {}", response.status);
    }
    let script = response.text()?;
    if kernel_argument(&script, "kiln.node") != Some(options.node.as_str()) {
        bail!("the boot script is not this node's deploy ramdisk's: the operation is over, or this is not the node's address");
    }
    kernel_argument(&script, "kiln.token").map(str::to_owned).context("the boot script carries no token")
}

/// Heartbeats and carries out commands until one ends with its result accepted (returning
/// what to do next) or the server stops accepting the token.
fn run(options: &Options) -> anyhow::Result<Then> {
    let heartbeat_path = format!("/agent/v1/nodes/{}/heartbeat", options.node);
    let mut failures = 0u32;
    loop {
        let answer: anyhow::Result<Option<AgentCommand>> = options.control.post_json(&heartbeat_path, &Heartbeat::default());
        let command = match answer {
            Ok(Some(command)) => {
                failures = 0;
                command
            }
            Ok(None) => bail!("the server answered a heartbeat with nothing"),
            Err(error) if is_refused(&error) => bail!("the server refused the token: the operation is over ({error:#})"),
            Err(error) => {
                failures += 1;
                // The server may be restarting: keep trying; it decides when to give up.
                eprintln!("kiln-agent: heartbeat failed ({error:#}); retrying");
                std::thread::sleep(Duration::from_secs(u64::from(failures.min(6))));
                continue;
            }
        };
        match command {
            AgentCommand::Wait { seconds } => std::thread::sleep(Duration::from_secs(u64::from(seconds.clamp(1, 60)))),
            AgentCommand::PowerOff => return Ok(Then::PowerOff),
            command => {
                let id = command.id().expect("work commands have ids");
                let then = match &command {
                    AgentCommand::Inspect { then, .. }
                    | AgentCommand::Deploy { then, .. }
                    | AgentCommand::Clean { then, .. }
                    | AgentCommand::Capture { then, .. } => *then,
                    _ => Then::PowerOff,
                };
                let result = carry_out(options, command, &heartbeat_path);
                let failed = result.error.is_some();
                report(options, &result)?;
                if !failed {
                    return Ok(then);
                }
                eprintln!("kiln-agent: command {id} failed; waiting for the server");
            }
        }
    }
}

fn is_refused(error: &anyhow::Error) -> bool {
    error.downcast_ref::<HttpStatus>().is_some_and(|status| status.status == 401)
}

/// Runs one command on a thread of its own while this one heartbeats with its progress.
fn carry_out(options: &Options, command: AgentCommand, heartbeat_path: &str) -> AgentResult {
    let id = command.id().unwrap_or(0);
    let downloaded = Arc::new(ProgressCounter::default());
    let written = Arc::new(ProgressCounter::default());
    let (phase, total) = match &command {
        AgentCommand::Deploy { artifact, .. } => ("writing", Some(artifact.size)),
        AgentCommand::Clean { .. } => ("erasing", None),
        AgentCommand::Capture { .. } => ("capturing", None),
        _ => ("inspecting", None),
    };
    let started = Instant::now();
    // The worker hands its result over a channel, so that it is taken the moment it is
    // ready rather than at the next tick of the heartbeat loop.
    let (finished, results) = std::sync::mpsc::channel::<AgentResult>();
    let worker = {
        let (server, api, disks) = (options.server.clone(), options.api.clone(), options.disks.clone());
        let (downloaded, written) = (downloaded.clone(), written.clone());
        std::thread::spawn(move || {
            let mut result = AgentResult { id, error: None, inventory: None, root_device: None };
            let outcome = match command {
                AgentCommand::Inspect { .. } => {
                    result.inventory = Some(inspect::inventory(Path::new("/")));
                    Ok(())
                }
                AgentCommand::Deploy { artifact, root_device_hints, .. } => {
                    work::deploy(&server, &disks, &artifact, &root_device_hints, downloaded, written).map(|deployed| {
                        eprintln!(
                            "kiln-agent: wrote {} bytes of image to {} ({} bytes not zero)",
                            deployed.image_bytes,
                            deployed.device.display(),
                            deployed.written_bytes
                        );
                        result.root_device = Some(deployed.device.display().to_string());
                    })
                }
                AgentCommand::Clean { mode, .. } => work::clean(&disks, mode, written).map(|_| ()),
                AgentCommand::Capture { upload_path, root_device_hints, .. } => {
                    work::capture(&api, &disks, &root_device_hints, &upload_path, written).map(|version| {
                        eprintln!("kiln-agent: the disk is now version {version}");
                    })
                }
                _ => Ok(()),
            };
            result.error = outcome.err().map(|error| format!("{error:#}"));
            let _ = finished.send(result);
        })
    };
    let mut last = (Instant::now(), 0u64);
    let result = loop {
        match results.recv_timeout(options.heartbeat.saturating_sub(last.0.elapsed())) {
            Ok(result) => break result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break AgentResult { id, error: Some("the agent's worker thread panicked".into()), inventory: None, root_device: None };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let done = if phase == "writing" { downloaded.bytes.load(Ordering::Relaxed) } else { written.bytes.load(Ordering::Relaxed) };
        let rate = (done.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64()) as u64;
        last = (Instant::now(), done);
        let progress = Progress { phase: phase.to_owned(), bytes_done: done, bytes_total: total, rate: Some(rate) };
        let heartbeat = Heartbeat { running: Some(id), progress: Some(progress) };
        if let Err(error) = options.control.post_json::<_, AgentCommand>(heartbeat_path, &heartbeat) {
            eprintln!("kiln-agent: progress heartbeat failed ({error:#})");
        }
    };
    let _ = worker.join();
    eprintln!("kiln-agent: command {id} done in {:.1} s: {}", started.elapsed().as_secs_f64(), result.error.as_deref().unwrap_or("ok"));
    result
}

/// Reports a result, retrying while the server is unreachable.
fn report(options: &Options, result: &AgentResult) -> anyhow::Result<()> {
    let path = format!("/agent/v1/nodes/{}/result", options.node);
    for attempt in 1..=60u64 {
        match options.control.post_json::<_, serde_json::Value>(&path, result) {
            Ok(_) => return Ok(()),
            Err(error) if error.downcast_ref::<HttpStatus>().is_some() => return Err(error.context("reporting the result")),
            Err(error) => {
                eprintln!("kiln-agent: reporting the result failed ({error:#}); retrying");
                std::thread::sleep(Duration::from_secs(attempt.min(5)));
            }
        }
    }
    bail!("could not report the result")
}

fn finish(options: &Options, then: Then) {
    if options.no_power {
        eprintln!("kiln-agent: done ({then:?}; --no-power)");
        return;
    }
    eprintln!("kiln-agent: {}", if then == Then::Reboot { "rebooting" } else { "powering off" });
    // SAFETY: sync and reboot take no pointers; reboot does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(if then == Then::Reboot { libc::RB_AUTOBOOT } else { libc::RB_POWER_OFF });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_settings_from_the_kernel_command_line() {
        let line = "initrd=initrd console=ttyS0 kiln.server=http://10.77.0.1:8081 kiln.node=abc kiln.token=kiln_x quiet";
        assert_eq!(super::kernel_argument(line, "kiln.server"), Some("http://10.77.0.1:8081"));
        assert_eq!(super::kernel_argument(line, "kiln.node"), Some("abc"));
        assert_eq!(super::kernel_argument(line, "kiln.nodes"), None);
    }
}
