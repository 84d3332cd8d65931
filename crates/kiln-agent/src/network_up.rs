//! `kiln-agent network-up`: configures the node's network from the static configuration on
//! the kernel command line (a virtual-media boot, where no DHCP answers), with busybox's
//! `ip`: the interface with the configured MAC comes up, tagged when a VLAN is named, with
//! its address, its default route and `/etc/resolv.conf`. It exits 3 when the command line
//! has no static configuration, so that the ramdisk's init asks DHCP instead.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_types::MacAddress;
use kiln_types::static_network::StaticNetwork;

/// The exit status that means "no static configuration here".
pub(crate) const NO_STATIC_CONFIGURATION: i32 = 3;

/// Reads `/proc/cmdline` and configures what it says; `Ok(false)` when it says nothing.
pub(crate) fn network_up() -> anyhow::Result<bool> {
    let command_line = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let Some(network) = StaticNetwork::from_kernel_command_line(&command_line)? else { return Ok(false) };
    let physical = interface_with_mac(Path::new("/sys/class/net"), network.mac, Duration::from_secs(10))?;
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("ip").args(args).status().with_context(|| format!("running ip {}", args.join(" ")))?;
        if !status.success() {
            bail!("ip {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    ip(&["link", "set", "dev", &physical, "up"])?;
    // What comes next (fetching a root, attaching a disk, the agent's first call) fails at
    // once without a link; a real NIC takes seconds to negotiate one.
    if !wait_for_carrier(Path::new("/sys/class/net"), &physical, Duration::from_secs(30)) {
        eprintln!("kiln-ramdisk: {physical} has no link after 30 seconds; going on");
    }
    let interface = match network.vlan {
        Some(vlan) => {
            let tagged = format!("{physical}.{vlan}");
            ip(&["link", "add", "link", &physical, "name", &tagged, "type", "vlan", "id", &vlan.to_string()])?;
            ip(&["link", "set", "dev", &tagged, "up"])?;
            tagged
        }
        None => physical,
    };
    let address = format!("{}/{}", network.address, network.prefix_length);
    match network.address {
        IpAddr::V4(_) => ip(&["addr", "add", &address, "dev", &interface])?,
        // The address was assigned by the inventory: without `nodad` it stays tentative
        // (unusable) for the seconds duplicate address detection takes.
        IpAddr::V6(_) => ip(&["-6", "addr", "add", &address, "dev", &interface, "nodad"])?,
    }
    if let Some(gateway) = network.gateway {
        let family = if gateway.is_ipv4() { "-4" } else { "-6" };
        ip(&[family, "route", "add", "default", "via", &gateway.to_string(), "dev", &interface])?;
    }
    if !network.dns_servers.is_empty() {
        let resolv: String = network.dns_servers.iter().map(|server| format!("nameserver {server}\n")).collect();
        std::fs::write("/etc/resolv.conf", resolv).context("writing /etc/resolv.conf")?;
    }
    println!("kiln-ramdisk: {interface} is up with static address {address}");
    Ok(true)
}

/// Whether `interface` reports a carrier within `patience`.
fn wait_for_carrier(sysfs: &Path, interface: &str, patience: Duration) -> bool {
    let started = Instant::now();
    loop {
        if std::fs::read_to_string(sysfs.join(interface).join("carrier")).is_ok_and(|carrier| carrier.trim() == "1") {
            return true;
        }
        if started.elapsed() >= patience {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The name of the interface whose MAC is `mac`, waiting up to `patience` for its driver.
fn interface_with_mac(sysfs: &Path, mac: MacAddress, patience: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let entries = std::fs::read_dir(sysfs).with_context(|| format!("listing {}", sysfs.display()))?;
        for entry in entries.flatten() {
            let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
            if address.trim().parse::<MacAddress>().is_ok_and(|found| found == mac) {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if started.elapsed() >= patience {
            bail!("no network interface has MAC {mac}, which the static configuration names");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_found_by_its_mac_and_a_missing_one_is_named() {
        let sysfs = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("ens3", "52:54:00:be:ef:41")] {
            std::fs::create_dir(sysfs.path().join(name)).unwrap();
            std::fs::write(sysfs.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        let found = interface_with_mac(sysfs.path(), "52:54:00:BE:EF:41".parse().unwrap(), Duration::ZERO).unwrap();
        assert_eq!(found, "ens3");
        let missing = interface_with_mac(sysfs.path(), "52:54:00:be:ef:42".parse().unwrap(), Duration::ZERO).unwrap_err();
        assert_eq!(missing.to_string(), "no network interface has MAC 52:54:00:be:ef:42, which the static configuration names");
        assert!(!wait_for_carrier(sysfs.path(), "ens3", Duration::ZERO));
        std::fs::write(sysfs.path().join("ens3").join("carrier"), "1\n").unwrap();
        assert!(wait_for_carrier(sysfs.path(), "ens3", Duration::ZERO));
    }
}
