//! What Kiln's TFTP server serves beyond its root: Secure Boot's signed shim and network
//! GRUB, GRUB's configurations (one entry file, then each machine's own, rendered from the
//! same [`BootPlan`] as its iPXE script), and the boot listener's files, which that GRUB
//! (TFTP only, no HTTP) fetches its kernel and initrd from.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;

use kiln_boot::{BootPlan, ScriptContext};
use kiln_tftp::{DynamicFile, DynamicFiles};
use kiln_types::MacAddress;

use crate::ApiState;
use crate::boot_listener::Resolved;

/// Where the signed boot loaders are on this machine (Debian's `shim-signed` and
/// `grub-efi-amd64-signed` by default).
#[derive(Debug, Clone)]
pub struct SecureBootLoaders {
    pub shim: PathBuf,
    pub grub: PathBuf,
}

/// [`DynamicFiles`] over the API's state. The TFTP server runs its own event loop; the
/// work is done on the API's runtime (`runtime`), where the database pool lives.
pub struct TftpBootFiles {
    pub state: ApiState,
    pub runtime: tokio::runtime::Handle,
    pub loaders: SecureBootLoaders,
}

impl DynamicFiles for TftpBootFiles {
    fn open<'a>(&'a self, path: &'a str, client: IpAddr) -> Pin<Box<dyn Future<Output = Option<DynamicFile>> + Send + 'a>> {
        let state = self.state.clone();
        let loaders = self.loaders.clone();
        let path = path.to_owned();
        let work = self.runtime.spawn(async move { open(&state, &loaders, &path, client).await });
        Box::pin(async move { work.await.ok().flatten() })
    }
}

async fn open(state: &ApiState, loaders: &SecureBootLoaders, path: &str, client: IpAddr) -> Option<DynamicFile> {
    let grub_directory = kiln_boot::grub::GRUB_CONFIG_DIRECTORY;
    if path == kiln_types::boot::SECURE_BOOT_SHIM_TFTP_PATH {
        return open_loader(&loaders.shim, path);
    }
    if path == kiln_types::boot::SECURE_BOOT_GRUB_TFTP_PATH {
        return open_loader(&loaders.grub, path);
    }
    if let Some(file) = path.strip_prefix(grub_directory).and_then(|rest| rest.strip_prefix('/')) {
        if file == "grub.cfg" {
            return Some(DynamicFile::Bytes(kiln_boot::grub::grub_entry_config().into_bytes()));
        }
        let mac = file.strip_prefix("kiln/")?.parse::<MacAddress>().ok()?;
        return Some(DynamicFile::Bytes(machine_grub_config(state, mac, client).await.into_bytes()));
    }
    if path.starts_with("boot/") {
        return match crate::boot::resolve_boot_file(state, &format!("/{path}"), &axum::http::HeaderMap::new()).await {
            Resolved::File(found) => Some(DynamicFile::File(found.file)),
            Resolved::NotFound | Resolved::Route => None,
        };
    }
    None
}

/// The GRUB configuration of the machine booting from `mac`. A failure to decide is a
/// configuration that boots nothing, so the machine's loop asks again.
async fn machine_grub_config(state: &ApiState, mac: MacAddress, client: IpAddr) -> String {
    let (plan, node) = match crate::boot::boot_plan(state, mac, client.to_canonical()).await {
        Ok(decided) => decided,
        Err(error) => {
            tracing::warn!(%mac, %client, ?error, "no GRUB configuration could be decided; the machine asks again");
            (BootPlan::AskAgain, None)
        }
    };
    let context = ScriptContext { server_url: &state.boot.public_url, mac, node: node.as_deref() };
    tracing::info!(%mac, %client, node = node.as_ref().map(|node| node.name.as_str()), "GRUB configuration served");
    kiln_boot::grub::grub_config(&plan, &context)
}

fn open_loader(path: &std::path::Path, name: &str) -> Option<DynamicFile> {
    match std::fs::File::open(path) {
        Ok(file) => Some(DynamicFile::File(file)),
        Err(error) => {
            tracing::warn!(file = name, path = %path.display(), %error, "a Secure Boot loader is missing (apt-get install shim-signed grub-efi-amd64-signed)");
            None
        }
    }
}
