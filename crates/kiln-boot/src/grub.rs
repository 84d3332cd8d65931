//! GRUB configurations: a [`BootPlan`] as what Debian's signed network GRUB
//! (`grubnetx64.efi.signed`, loaded by shim under Secure Boot) runs.
//!
//! That GRUB has TFTP and no HTTP, and its built-in prefix is `/grub` on the TFTP server it
//! came from: it reads `grub/grub.cfg`, which Kiln serves as [`grub_entry_config`] and which
//! asks for the machine's own configuration by the MAC it booted from
//! (`grub/kiln/MAC`). Kernels and initrds the plan names by this server's URL are fetched
//! by TFTP from the same paths the boot listener serves them on.
//!
//! Every word taken from boot parameters is written in GRUB's single quotes, inside which
//! nothing is special: a `;`, `$(...)` or `menuentry` in a parameter stays text on the
//! kernel command line (a `;` has to: OpenCHAMI's `ds=nocloud-net;s=URL` carries one). Line
//! breaks, the only way out of a quoted word besides a quote, are refused when parameters
//! are stored; a quote is written as `'\''`.

use crate::plan::{BootPlan, KernelBoot, KernelPurpose, ScriptContext};

/// The directory of Debian's network GRUB's built-in prefix, on the TFTP server.
pub const GRUB_CONFIG_DIRECTORY: &str = "grub";

/// After a failed boot the machine waits this long and reads its configuration again.
const RETRY_SECONDS: u32 = 10;

/// `grub/grub.cfg`: the same for every machine, it reads the machine's own configuration,
/// again after a pause for as long as that boots nothing. A loop here rather than a
/// `configfile` at the end of each machine's configuration: every `configfile` nests, and a
/// machine may wait for its parameters for days.
pub fn grub_entry_config() -> String {
    format!(
        "# Kiln: each machine reads its own configuration, named by the MAC it booted from.\n\
         set timeout=0\n\
         while [ 1 = 1 ]; do\n  \
           source \"$prefix/kiln/$net_default_mac\"\n  \
           echo 'Kiln: retrying in {RETRY_SECONDS} seconds'\n  \
           sleep {RETRY_SECONDS}\n\
         done\n"
    )
}

/// Where a boot medium (an ISO Kiln builds for virtual media) holds its files.
pub const MEDIUM_KERNEL_PATH: &str = "/kiln/kernel";
/// The medium's initramfs files, loaded one after the other (Linux unpacks concatenated
/// archives in order): the kernel's own, then what Kiln adds for this one boot.
pub const MEDIUM_INITRD_PATHS: [&str; 2] = ["/kiln/initrd", "/kiln/boot.cpio"];

/// The `grub.cfg` of a boot medium: GRUB on the ISO boots `boot`'s kernel from the medium
/// itself ([`MEDIUM_KERNEL_PATH`], [`MEDIUM_INITRD_PATHS`]) with its command line, each word
/// quoted as in [`grub_config`]; nothing comes from the network, so it boots with no DHCP.
/// When the kernel does not boot, GRUB says so and stops, rather than loop: a medium cannot
/// change until the BMC ejects it.
pub fn medium_grub_config(boot: &KernelBoot, who: &str) -> String {
    let what = match boot.purpose {
        KernelPurpose::Parameters => format!("booting {who}"),
        KernelPurpose::DeployAgent => format!("{who} boots the deploy agent from virtual media"),
        KernelPurpose::Live => format!("{who} boots its image live from virtual media"),
        KernelPurpose::NetworkDisk => format!("{who} boots from its network disk"),
    };
    let mut config = String::from("# Kiln: a boot medium made for one boot of one machine.\nset timeout=0\n");
    say(&mut config, &format!("Kiln: {what}"));
    let mut linux = format!("if linux {}", quote(MEDIUM_KERNEL_PATH));
    for word in boot.command_line.split_whitespace() {
        linux.push(' ');
        linux.push_str(&quote(word));
    }
    config.push_str(&linux);
    config.push_str("; then\n");
    let initrds: Vec<String> = MEDIUM_INITRD_PATHS.iter().map(|path| quote(path)).collect();
    config.push_str(&format!("  if initrd {}; then\n    boot\n  fi\nfi\n", initrds.join(" ")));
    say(&mut config, "Kiln: the kernel did not boot");
    config
}

/// The GRUB configuration of `plan` for the machine of `context`, read by
/// [`grub_entry_config`]'s loop: it returns to that loop when it boots nothing.
pub fn grub_config(plan: &BootPlan, context: &ScriptContext<'_>) -> String {
    let mac = context.mac;
    let who = context.who();
    let mut config = String::new();
    match plan {
        BootPlan::Kernel(boot) => {
            let what = match boot.purpose {
                KernelPurpose::Parameters => format!("booting {who} ({mac})"),
                KernelPurpose::DeployAgent => format!("{who} ({mac}) boots the deploy agent"),
                KernelPurpose::Live => format!("{who} ({mac}) boots its image live"),
                KernelPurpose::NetworkDisk => format!("{who} ({mac}) boots from its network disk"),
            };
            say(&mut config, &format!("Kiln: {what}"));
            kernel_commands(&mut config, boot, context);
        }
        BootPlan::LocalDisk => {
            // Back to the firmware, which goes on to its next boot option: the disk.
            say(&mut config, &format!("Kiln: {who} ({mac}) boots from its local disk"));
            config.push_str("exit\n");
        }
        BootPlan::AskAgain => {
            let who = context.node.map_or("this machine".to_owned(), |node| format!("node {}", node.name));
            say(&mut config, &format!("Kiln: no boot parameters for {who} ({mac})"));
        }
    }
    config
}

fn kernel_commands(config: &mut String, boot: &KernelBoot, context: &ScriptContext<'_>) {
    let Some(kernel) = &boot.kernel else {
        say(config, "Kiln: the boot parameters name no kernel");
        return;
    };
    let Some(kernel_path) = tftp_path(kernel, context) else {
        say(config, &format!("Kiln: GRUB fetches files by TFTP only (paths on this server or tftp://), not {kernel}"));
        return;
    };
    let initrd_path = match &boot.initrd {
        Some(initrd) => match tftp_path(initrd, context) {
            Some(path) => Some(path),
            None => {
                say(config, &format!("Kiln: GRUB fetches files by TFTP only (paths on this server or tftp://), not {initrd}"));
                return;
            }
        },
        None => None,
    };
    let mut linux = format!("if linux {}", quote(&kernel_path));
    for word in boot.command_line.split_whitespace() {
        linux.push(' ');
        linux.push_str(&quote(word));
    }
    config.push_str(&linux);
    config.push_str("; then\n");
    match initrd_path {
        Some(initrd) => config.push_str(&format!("  if initrd {}; then\n    boot\n  fi\n", quote(&initrd))),
        None => config.push_str("  boot\n"),
    }
    config.push_str("fi\n");
    say(config, "Kiln: the kernel did not boot");
}

/// Where GRUB finds a file the plan names by URL: this server's own files by TFTP (the TFTP
/// server serves the boot listener's paths), another TFTP server's by its address. `None`
/// for anything else, which this GRUB cannot fetch (no HTTP in it).
fn tftp_path(url: &str, context: &ScriptContext<'_>) -> Option<String> {
    if let Some(path) = url.strip_prefix(context.server_url).filter(|path| path.starts_with('/')) {
        return Some(format!("(tftp){path}"));
    }
    let rest = url.strip_prefix("tftp://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    (!host.is_empty()).then(|| format!("(tftp,{host}){path}"))
}

fn say(config: &mut String, text: &str) {
    config.push_str("echo ");
    config.push_str(&quote(text));
    config.push('\n');
}

/// One word in GRUB's single quotes, where nothing but the closing quote is special.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests;
