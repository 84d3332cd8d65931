//! `kiln-agent nbd-root`: attaches a network disk as the kernel's `/dev/nbdN` for a node
//! deployed in network mode. The agent negotiates the export with Kiln's gateway itself
//! (the handshake is `kiln-nbd`'s), then hands the socket to the kernel's NBD driver, which
//! speaks the transmission phase; a process must stay in `NBD_DO_IT` for as long as the disk
//! is attached, so the agent forks one that does and returns once the disk is usable.
//!
//! The kernel's socket is one end of a local pair, and the process relays between it and the
//! gateway (`nbd_relay`): when the gateway's connection breaks (the server restarted), the
//! relay reconnects and sends what was unanswered again, and the node's I/O resumes. If the
//! gateway stays away, the relay gives up, the kernel fails the I/O and the console says why.

use std::net::TcpStream;
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

// Linux's `<linux/nbd.h>`: `_IO(0xab, n)`.
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;
// `<linux/fs.h>`: `_IO(0x12, 95)`, re-read the partition table.
const BLKRRPART: libc::c_ulong = 0x125f;

/// The logical block size the device presents: 512, as the disk images' partition tables
/// count in 512-byte sectors (with 4096, an MBR's sectors would be read as 4 KiB each).
const BLOCK_SIZE: u64 = 512;

/// What to attach: `kiln.nbd=HOST:PORT` and `kiln.nbd.export=NAME` on the kernel command
/// line, or `--server`, `--export` and `--device` given to `nbd-root`.
pub(crate) struct NbdRoot {
    pub(crate) server: String,
    pub(crate) export: String,
    pub(crate) device: String,
}

impl NbdRoot {
    pub(crate) fn from_args(args: impl Iterator<Item = String>) -> anyhow::Result<NbdRoot> {
        let command_line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let from_kernel = |name| crate::kernel_argument(&command_line, name).map(str::to_owned);
        let (mut server, mut export, mut device) = (None, None, None);
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--server" => server = Some(value()?),
                "--export" => export = Some(value()?),
                "--device" => device = Some(value()?),
                other => bail!("nbd-root: unknown argument {other} (--server HOST:PORT --export NAME --device /dev/nbdN)"),
            }
        }
        Ok(NbdRoot {
            server: server.or_else(|| from_kernel("kiln.nbd")).context("no network disk: kiln.nbd=HOST:PORT on the kernel command line")?,
            export: export.or_else(|| from_kernel("kiln.nbd.export")).context("no export: kiln.nbd.export= on the kernel command line")?,
            device: device.unwrap_or_else(|| "/dev/nbd0".to_owned()),
        })
    }
}

/// Connects to the gateway from a privileged port (below 1024), which only root on the node
/// can bind: the gateway refuses other ports, so that a user on the node who reads the export
/// name from `/proc/cmdline` still cannot open the disk (NFS's `secure` rule).
pub(crate) fn connect_privileged(server: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    use std::net::ToSocketAddrs as _;
    let address = server.to_socket_addrs()?.next().with_context(|| format!("{server} has no address"))?;
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let unspecified: std::net::IpAddr =
        if address.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    // Ports in use (or in TIME_WAIT from an earlier connection) are skipped.
    let start = 600 + (std::process::id() % 400) as u16;
    let mut last_error = None;
    for offset in 0..400u16 {
        let port = 600 + (start - 600 + offset) % 424;
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Err(error) = socket.bind(&std::net::SocketAddr::new(unspecified, port).into()) {
            last_error = Some(error);
            continue;
        }
        return match socket.connect_timeout(&address.into(), timeout) {
            Ok(()) => Ok(socket.into()),
            Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                last_error = Some(error);
                continue;
            }
            Err(error) => Err(error).with_context(|| format!("connecting to {server} from port {port}")),
        };
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port"))).context("binding a privileged port (the agent must run as root)")
}

fn ioctl(device: &std::fs::File, request: libc::c_ulong, argument: libc::c_ulong, what: &str) -> anyhow::Result<()> {
    // SAFETY: the NBD and block ioctls take an integer argument (a size, a flag word or a
    // file descriptor), never a pointer.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), request as _, argument) };
    if result < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{what} on the NBD device"));
    }
    Ok(())
}

/// Connects, negotiates, attaches and returns once the device has its size (and its
/// partitions, where it has any); a child process keeps the disk attached.
pub(crate) fn attach(root: &NbdRoot) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match connect_privileged(&root.server, Duration::from_secs(10)) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() < deadline => {
                eprintln!("kiln-nbd: {} not reachable yet ({error}); retrying", root.server);
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(error) => return Err(error).with_context(|| format!("connecting to the network disk at {}", root.server)),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).context("setting a handshake timeout")?;
    let export = kiln_nbd::negotiate_as_client(&mut stream, &root.export).context("negotiating the network disk")?;
    stream.set_read_timeout(None).context("clearing the handshake timeout")?;
    stream.set_nodelay(true).ok();
    if export.size % BLOCK_SIZE != 0 {
        bail!("the network disk's size {} is not a multiple of {BLOCK_SIZE} bytes", export.size);
    }
    let device =
        std::fs::OpenOptions::new().read(true).write(true).open(&root.device).with_context(|| format!("opening {}", root.device))?;
    // The kernel gets a local socket; the relay carries its requests to the gateway, and over
    // a restart of the server (`nbd_relay`).
    let (kernel_end, relay_end) = UnixStream::pair().context("making the relay's socket pair")?;
    ioctl(&device, NBD_CLEAR_SOCK, 0, "clearing a previous socket")?;
    ioctl(&device, NBD_SET_BLKSIZE, BLOCK_SIZE as libc::c_ulong, "setting the block size")?;
    ioctl(&device, NBD_SET_SIZE_BLOCKS, (export.size / BLOCK_SIZE) as libc::c_ulong, "setting the size")?;
    ioctl(&device, NBD_SET_FLAGS, libc::c_ulong::from(export.transmission_flags), "setting the transmission flags")?;
    ioctl(&device, NBD_SET_SOCK, kernel_end.as_raw_fd() as libc::c_ulong, "handing over the socket")?;
    // SAFETY: fork in a single-threaded process (the agent starts no thread before this).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("forking the process that keeps the disk attached"),
        0 => {
            // The child: its own session, so that the init's exit or a hang-up does not end it.
            unsafe { libc::setsid() };
            spare_from_shutdown_killing();
            drop(kernel_end);
            let gateway = crate::nbd_relay::Gateway { server: root.server.clone(), export: root.export.clone() };
            std::thread::spawn(move || {
                if let Err(error) = crate::nbd_relay::run(relay_end, gateway, stream) {
                    crate::nbd_relay::say(&format!("kiln-nbd: the relay stopped: {error:#}"));
                }
            });
            // No request timeout is set: the kernel waits for the relay, which reconnects.
            let result = unsafe { libc::ioctl(device.as_raw_fd(), NBD_DO_IT as _, 0) };
            let error = std::io::Error::last_os_error();
            match result {
                0 => crate::nbd_relay::say("kiln-nbd: the network disk was disconnected"),
                _ => crate::nbd_relay::say(&format!("kiln-nbd: the network disk {} is gone ({error}); its I/O now fails", root.server)),
            }
            std::process::exit(if result == 0 { 0 } else { 1 });
        }
        child => wait_until_ready(&root.device, child),
    }
}

/// Marks this process as one that systemd's final killing spree at shutdown spares: its
/// argv[0] starts with `@` (systemd's rule for processes that keep the root storage
/// alive). It holds the node's root disk; killed before the root is unmounted, the disk's
/// last writes would have nowhere to go. The first byte of argv[0] is overwritten in place,
/// where the kernel put it (`arg_start` in `/proc/self/stat`), as setproctitle does.
fn spare_from_shutdown_killing() {
    let first_byte = std::fs::read("/proc/self/cmdline").ok().and_then(|command_line| command_line.first().copied());
    if first_byte.is_none_or(|byte| byte == 0 || byte == b'@') {
        return; // An empty argv[0] has no byte to overwrite but its end.
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // After the command name's closing parenthesis, fields count from 3 (state); arg_start
    // is field 48.
    let arg_start = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(48 - 3)?.parse::<usize>().ok());
    if let Some(address) = arg_start.filter(|&address| address != 0) {
        // SAFETY: `address` is this process's argv[0], at least one byte before its NUL
        // (checked above), in its own writable stack.
        unsafe { std::ptr::write_volatile(address as *mut u8, b'@') };
    }
}

/// Waits for the kernel to show the disk's size, then has it read the partition table.
fn wait_until_ready(device: &str, child: libc::pid_t) -> anyhow::Result<()> {
    let name = Path::new(device).file_name().and_then(|name| name.to_str()).unwrap_or("nbd0").to_owned();
    let size_file = format!("/sys/block/{name}/size");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut status = 0;
        // SAFETY: waiting on our own child without blocking.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            bail!("the process keeping the network disk attached exited at once (status {status})");
        }
        let sectors: u64 = std::fs::read_to_string(&size_file).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0);
        if sectors > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{device} has no size 30 s after it was attached");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = std::fs::File::open(device).with_context(|| format!("opening {device} to read its partitions"))?;
    // A disk without a partition table has nothing to read: not an error.
    let _ = ioctl(&opened, BLKRRPART, 0, "reading the partition table");
    eprintln!("kiln-nbd: {device} attached");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The shutdown mark, on this test process's own argv[0] (the harness has read it).

    #[test]
    fn the_process_holding_the_disk_is_marked_for_systemd() {
        super::spare_from_shutdown_killing();
        let command_line = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(command_line[0], b'@', "{}", String::from_utf8_lossy(&command_line));
        let program = command_line.split(|&byte| byte == 0).next().unwrap();
        assert!(program.len() > 1, "the rest of argv[0] is kept: {}", String::from_utf8_lossy(program));
    }
}
