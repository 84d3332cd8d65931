//! Redfish discovery, as OpenCHAMI's magellan does it: scan addresses and ports for Redfish
//! services, walk each one's systems and their Ethernet interfaces, and report what was
//! found. Deciding which inventory nodes that means is the caller's (the store's) job.

use std::time::Duration;

use futures::StreamExt as _;

use crate::{BmcError, BmcTarget, Redfish, SystemFacts};

pub use kiln_types::bmc::{DiscoveryFailure, RedfishDiscoveryInput, RedfishDiscoveryReport};

/// Targets one scan may cover: a mistyped range must not become a scan of a whole network.
pub const MAX_TARGETS: usize = 4096;

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanTarget {
    pub host: String,
    pub port: Option<u16>,
}

impl std::fmt::Display for ScanTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) if self.host.contains(':') => write!(f, "[{}]:{port}", self.host),
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `HOST`, `HOST:PORT` or `HOST:FIRST-LAST` (a port range, as magellan takes), each
/// expanded; refused with the offending text when malformed or too many.
pub fn expand_targets(specs: &[String]) -> Result<Vec<ScanTarget>, String> {
    let mut targets = Vec::new();
    for spec in specs {
        let spec = spec.trim();
        let (host, ports) = match spec.rsplit_once(':') {
            Some((host, ports)) if !host.contains(':') || host.starts_with('[') => (host.trim_matches(['[', ']']), Some(ports)),
            _ => (spec, None),
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(format!("'{spec}' is not HOST, HOST:PORT or HOST:FIRST-LAST"));
        }
        let port = |text: &str| text.parse::<u16>().ok().filter(|port| *port > 0);
        match ports {
            None => targets.push(ScanTarget { host: host.to_owned(), port: None }),
            Some(ports) => {
                let (first, last) = match ports.split_once('-') {
                    Some((first, last)) => (port(first), port(last)),
                    None => (port(ports), port(ports)),
                };
                let (Some(first), Some(last)) = (first, last) else {
                    return Err(format!("'{spec}': '{ports}' is not a port or a port range such as 8000-8010"));
                };
                if first > last {
                    return Err(format!("'{spec}': the port range ends before it starts"));
                }
                if targets.len() + usize::from(last - first) + 1 > MAX_TARGETS {
                    return Err(format!("more than {MAX_TARGETS} targets: narrow the ranges"));
                }
                targets.extend((first..=last).map(|port| ScanTarget { host: host.to_owned(), port: Some(port) }));
            }
        }
        if targets.len() > MAX_TARGETS {
            return Err(format!("more than {MAX_TARGETS} targets: narrow the ranges"));
        }
    }
    Ok(targets)
}

/// How to talk to whatever answers.
#[derive(Clone)]
pub struct ScanSettings {
    /// `https` (Redfish's default) or `http`.
    pub scheme: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub insecure: bool,
    pub timeout: Duration,
    pub concurrency: usize,
}

/// A computer system found behind a Redfish service.
#[derive(Debug, Clone)]
pub struct FoundSystem {
    /// The BMC address as Kiln will store it (`scheme://host:port`).
    pub address: String,
    pub target: ScanTarget,
    /// The system's path on the service, e.g. `/redfish/v1/Systems/1`.
    pub system: String,
    /// Its position among the service's systems.
    pub index: usize,
    pub facts: SystemFacts,
}

/// What one target gave.
#[derive(Debug)]
pub enum ScanOutcome {
    Found(Vec<FoundSystem>),
    /// Nothing listens there: the usual case in a range.
    Absent(ScanTarget),
    /// Something answered, but not usefully (wrong credentials, not Redfish, too slow).
    Failed(ScanTarget, BmcError),
}

async fn scan_one(target: ScanTarget, settings: ScanSettings) -> ScanOutcome {
    let address = format!("{}://{target}", settings.scheme);
    let bmc_target = BmcTarget {
        address: address.clone(),
        username: settings.username.clone(),
        password: settings.password.clone(),
        insecure: settings.insecure,
        timeout: settings.timeout,
    };
    let redfish = match Redfish::new(bmc_target) {
        Ok(redfish) => redfish,
        Err(error) => return ScanOutcome::Failed(target, error),
    };
    let systems = match redfish.systems().await {
        Ok(systems) => systems,
        Err(BmcError::Unreachable { .. }) => return ScanOutcome::Absent(target),
        Err(error) => return ScanOutcome::Failed(target, error),
    };
    let mut found = Vec::with_capacity(systems.len());
    for (index, system) in systems.into_iter().enumerate() {
        match redfish.for_system(&system).facts().await {
            Ok(facts) => found.push(FoundSystem { address: address.clone(), target: target.clone(), system, index, facts }),
            Err(error) => return ScanOutcome::Failed(target, error),
        }
    }
    ScanOutcome::Found(found)
}

/// Scans every target, `concurrency` at a time, in target order.
pub async fn scan(targets: Vec<ScanTarget>, settings: ScanSettings) -> Vec<ScanOutcome> {
    let concurrency = settings.concurrency.clamp(1, 256);
    futures::stream::iter(targets.into_iter().map(|target| scan_one(target, settings.clone()))).buffered(concurrency).collect().await
}

/// A name for a node found at `system`: `rf-<host>-<port>`, and the system's position when
/// the service has more than one. Only characters node names allow.
pub fn node_name(system: &FoundSystem, systems_at_target: usize) -> String {
    let mut name = format!("rf-{}", system.target.host);
    if let Some(port) = system.target.port {
        name.push_str(&format!("-{port}"));
    }
    if systems_at_target > 1 {
        name.push_str(&format!("-{}", system.index + 1));
    }
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_expand_and_bad_ones_are_named() {
        let targets = expand_targets(&["127.0.0.1:8000-8002".into(), "bmc1.example".into(), "10.0.0.5:443".into()]).unwrap();
        let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002", "bmc1.example", "10.0.0.5:443"]);
        assert_eq!(expand_targets(&["[fe80::1]:8000".into()]).unwrap()[0].to_string(), "[fe80::1]:8000");
        for (bad, message) in [
            ("127.0.0.1:9-1", "ends before it starts"),
            ("127.0.0.1:x", "is not a port or a port range"),
            ("127.0.0.1:0", "is not a port or a port range"),
            ("user@host", "is not HOST"),
            ("10.0.0.0/8", "is not HOST"),
            ("127.0.0.1:1-65535", "more than 4096 targets"),
        ] {
            let error = expand_targets(&[bad.into()]).unwrap_err();
            assert!(error.contains(message), "{bad}: {error}");
        }
    }

    #[test]
    fn names_come_from_the_address() {
        let system = |index| FoundSystem {
            address: "http://127.0.0.1:8000".into(),
            target: ScanTarget { host: "127.0.0.1".into(), port: Some(8000) },
            system: "/redfish/v1/Systems/1".into(),
            index,
            facts: SystemFacts::default(),
        };
        assert_eq!(node_name(&system(0), 1), "rf-127-0-0-1-8000");
        assert_eq!(node_name(&system(1), 2), "rf-127-0-0-1-8000-2");
    }
}
