//! Server configuration: read as loose layers (TOML file, `KILN_*` environment, flags), merged
//! in that order of precedence, then validated into a [`ServerConfig`].
//!
//! Why one file over 600 lines: every setting's wire layer, merge and validation sit
//! together, so a new setting is added in one place and its three forms cannot drift.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One source of settings, every field optional. The TOML file has this shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServerConfigLayer {
    /// Where the SQLite database, the secret key and the blobs live.
    pub data_dir: Option<PathBuf>,
    /// The API's listening address.
    pub listen: Option<String>,
    /// `sqlite://PATH` or `postgres://…`; defaults to `sqlite://<data_dir>/kiln.db`.
    pub database_url: Option<String>,
    /// The URL nodes and clients use to reach this server.
    pub public_url: Option<String>,
    /// The key that encrypts secrets at rest; replicas must share it.
    pub secret_key_file: Option<PathBuf>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: Option<usize>,
    /// A request whose body sends nothing for this long is answered 408 [default: 30]
    pub body_idle_seconds: Option<u64>,
    /// A body read whole (JSON) that has not all arrived after this long is answered 408,
    /// however it trickles [default: 120]
    pub body_total_seconds: Option<u64>,
    /// The largest free-form field stored (node properties, cloud-init data) [default: 65536]
    pub max_field_bytes: Option<usize>,
    /// Network boot over HTTP (boot scripts, files).
    pub boot: Option<BootLayer>,
    /// The DHCP server; absent means no DHCP.
    pub dhcp: Option<DhcpLayer>,
    /// The TFTP server; absent means no TFTP.
    pub tftp: Option<TftpLayer>,
    /// The image store.
    pub images: Option<ImagesLayer>,
    /// The cloud-init metadata service.
    pub cloud_init: Option<CloudInitLayer>,
    /// BMC access and the power-state sync.
    pub bmc: Option<BmcLayer>,
    /// The node lifecycle: timeouts, the reconciler, the deploy ramdisk.
    pub provisioning: Option<ProvisioningLayer>,
    /// The Ironic-compatible API (`/ironic` on the API listener).
    pub ironic: Option<IronicLayer>,
    /// The web console (`/ui/` on the API listener).
    pub web: Option<WebLayer>,
    /// Network disks (deploy mode `network`); absent means none.
    pub netdisk: Option<NetdiskLayer>,
    /// TLS on the API listener; absent means plain HTTP.
    pub tls: Option<TlsLayer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsLayer {
    /// The server's certificate chain, PEM [default: issued at start by Kiln's CA]
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (with cert_file)
    pub key_file: Option<PathBuf>,
    /// Kiln's CA certificate; give the same CA files to every replica [default: <data_dir>/tls/ca.crt, made on first start]
    pub ca_cert_file: Option<PathBuf>,
    /// Kiln's CA key, kept 0600 [default: <data_dir>/tls/ca.key]
    pub ca_key_file: Option<PathBuf>,
    /// Names and addresses of the issued certificate, besides the listen address and the public URL's host
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetdiskLayer {
    /// Where the NBD gateway listens for nodes, e.g. 10.77.0.1:10809 [default: 0.0.0.0:10809]
    pub listen: Option<String>,
    /// HOST:PORT nodes connect to [default: the boot URL's host, the listen port]
    pub address: Option<String>,
    /// Clones, expanded bases and export sockets [default: <data_dir>/netdisk]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebLayer {
    /// How long a console session lasts from sign-in, 10 to 2592000 (30 days)
    /// [default: 28800, 8 hours]
    pub session_lifetime_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IronicLayer {
    /// Answer requests without a token as an administrator, as Ironic's `noauth` does: for a
    /// lab only [default: false]
    pub noauth: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningLayer {
    /// The image whose highest version boots the node agent [default: kiln-deploy-ramdisk]
    pub ramdisk_image: Option<String>,
    /// Seconds from powering a node on to its agent's first heartbeat [default: 600]
    pub agent_boot_timeout_seconds: Option<u64>,
    /// Seconds an agent may stay silent once it has called in [default: 120]
    pub heartbeat_timeout_seconds: Option<u64>,
    /// Seconds from a finished deploy to the deployed system's callback, when awaited [default: 900]
    pub callback_timeout_seconds: Option<u64>,
    /// What undeploying erases: `fast` (signatures, partition tables) or `full` [default: fast]
    pub undeploy_clean: Option<String>,
    /// Seconds a replica's claim on a node lasts; another replica takes over after it [default: 30]
    pub lease_seconds: Option<u64>,
    /// Nodes the reconciler works on at once [default: 64]
    pub workers: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcLayer {
    /// Seconds between power-state syncs; 0 turns the sync off [default: 60]
    pub sync_interval_seconds: Option<u64>,
    /// BMCs read at once [default: 16]
    pub sync_workers: Option<usize>,
    /// Failed reads in a row before a node goes into maintenance [default: 3]
    pub fault_threshold: Option<u32>,
    /// Seconds one BMC request may take [default: 10]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitLayer {
    /// Proxies (addresses or CIDR networks) whose X-Forwarded-For names the node [default: none]
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Let administrators read a node's documents as the node does [default: false]
    pub impersonation: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesLayer {
    /// Where blobs live: `local` (a directory) or `s3` (an S3-compatible bucket) [default: local]
    pub store: Option<String>,
    /// The local store's directory [default: <data_dir>/blobs]
    pub blob_dir: Option<PathBuf>,
    /// Where uploads in progress are kept when the store is S3 [default: <data_dir>/spool]
    pub spool_dir: Option<PathBuf>,
    /// e.g. http://127.0.0.1:3900
    pub s3_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// A key prefix inside the bucket.
    pub s3_prefix: Option<String>,
    /// `file://` imports are allowed from under these directories only [default: none]
    #[serde(default)]
    pub import_allowed_dirs: Vec<PathBuf>,
    /// Networks (CIDRs or addresses) http(s) imports may reach although they are loopback,
    /// link-local, private or the server's own [default: none]
    #[serde(default)]
    pub import_allowed_networks: Vec<String>,
    /// Unused blobs younger than this survive garbage collection [default: 3600]
    pub gc_grace_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootLayer {
    /// Served under /boot/files/ [default: <data_dir>/boot-files]
    pub files_dir: Option<PathBuf>,
    /// iPXE binaries, served by TFTP and under /boot/ipxe/ [default: /usr/lib/ipxe]
    pub ipxe_dir: Option<PathBuf>,
    /// Enrol machines with unknown MACs as `discovered` nodes [default: true]
    pub auto_enroll: Option<bool>,
    /// Enrolments at most in any minute, across replicas [default: 60]
    pub auto_enroll_per_minute: Option<u32>,
    /// `discovered` nodes at most; beyond, unknown machines wait [default: 1000]
    pub max_discovered_nodes: Option<u32>,
    /// A listener of its own for machines (boot scripts, cloud-init, and files sent with
    /// sendfile), e.g. 10.77.0.1:8081 [default: none; the API listener serves them, copying files]
    pub listen: Option<String>,
    /// How machines reach the boot listener [default: http://<boot listen>]
    pub public_url: Option<String>,
    /// Microsoft-signed shim, sent by TFTP to Secure Boot nodes [default: /usr/lib/shim/shimx64.efi.signed]
    pub secure_boot_shim: Option<PathBuf>,
    /// Signed network GRUB that shim loads [default: /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed]
    pub secure_boot_grub: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpLayer {
    /// `authoritative` or `proxy`.
    pub mode: Option<kiln_dhcp::DhcpMode>,
    pub interface: Option<String>,
    /// This server's address on the interface.
    pub server_address: Option<String>,
    /// CIDR, e.g. 10.77.0.0/24.
    pub subnet: Option<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    pub domain: Option<String>,
    pub lease_seconds: Option<u32>,
    /// FIRST-LAST, e.g. 10.77.0.100-10.77.0.199.
    pub pool: Option<String>,
    pub hostname_prefix: Option<String>,
    pub nid_length: Option<usize>,
    pub bios_boot_file: Option<String>,
    pub uefi_boot_file: Option<String>,
    pub arm64_boot_file: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpLayer {
    /// e.g. 10.77.0.1:69
    pub listen: Option<String>,
    /// [default: the boot ipxe_dir]
    pub root: Option<PathBuf>,
    /// Transfers one client address may run at once [default: 8]
    pub max_sessions_per_client: Option<usize>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the configuration file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

impl ServerConfigLayer {
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// The `KILN_*` variables among `environment`.
    pub fn from_environment(environment: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| environment.get(name).filter(|value| !value.is_empty()).cloned();
        let max_body_bytes = get("KILN_MAX_BODY_BYTES")
            .map(|text| {
                text.parse().map_err(|_| ConfigError::Invalid {
                    setting: "KILN_MAX_BODY_BYTES",
                    message: format!("'{text}' is not a number of bytes"),
                })
            })
            .transpose()?;
        Ok(ServerConfigLayer {
            data_dir: get("KILN_DATA_DIR").map(PathBuf::from),
            listen: get("KILN_LISTEN"),
            database_url: get("KILN_DATABASE_URL"),
            public_url: get("KILN_PUBLIC_URL"),
            boot: get("KILN_BOOT_LISTEN").map(|listen| BootLayer { listen: Some(listen), ..Default::default() }),
            secret_key_file: get("KILN_SECRET_KEY_FILE").map(PathBuf::from),
            max_body_bytes,
            images: images_from_environment(&get)?,
            ..Default::default()
        })
    }

    /// `self` with every setting that `over` has replaced by it.
    pub fn overlaid_with(self, over: ServerConfigLayer) -> Self {
        ServerConfigLayer {
            data_dir: over.data_dir.or(self.data_dir),
            listen: over.listen.or(self.listen),
            database_url: over.database_url.or(self.database_url),
            public_url: over.public_url.or(self.public_url),
            secret_key_file: over.secret_key_file.or(self.secret_key_file),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            body_idle_seconds: over.body_idle_seconds.or(self.body_idle_seconds),
            body_total_seconds: over.body_total_seconds.or(self.body_total_seconds),
            max_field_bytes: over.max_field_bytes.or(self.max_field_bytes),
            boot: match (self.boot, over.boot) {
                (Some(base), Some(over)) => Some(base.overlaid_with(over)),
                (base, over) => over.or(base),
            },
            dhcp: over.dhcp.or(self.dhcp),
            tftp: over.tftp.or(self.tftp),
            cloud_init: over.cloud_init.or(self.cloud_init),
            bmc: over.bmc.or(self.bmc),
            provisioning: over.provisioning.or(self.provisioning),
            ironic: over.ironic.or(self.ironic),
            web: over.web.or(self.web),
            netdisk: over.netdisk.or(self.netdisk),
            tls: over.tls.or(self.tls),
            images: match (self.images, over.images) {
                (Some(base), Some(over)) => Some(base.overlaid_with(over)),
                (base, over) => over.or(base),
            },
        }
    }
}

/// `KILN_S3_*` variables: pointing Kiln at a bucket from the environment, where credentials
/// usually come from.
fn images_from_environment(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<ImagesLayer>, ConfigError> {
    let layer = ImagesLayer {
        store: get("KILN_IMAGE_STORE"),
        s3_endpoint: get("KILN_S3_ENDPOINT"),
        s3_bucket: get("KILN_S3_BUCKET"),
        s3_region: get("KILN_S3_REGION"),
        s3_access_key_id: get("KILN_S3_ACCESS_KEY_ID"),
        s3_secret_access_key: get("KILN_S3_SECRET_ACCESS_KEY"),
        s3_prefix: get("KILN_S3_PREFIX"),
        import_allowed_networks: get("KILN_IMPORT_ALLOWED_NETWORKS")
            .map(|text| text.split(',').map(|part| part.trim().to_owned()).filter(|part| !part.is_empty()).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    Ok(if layer == ImagesLayer::default() { None } else { Some(layer) })
}

impl BootLayer {
    fn overlaid_with(self, over: BootLayer) -> BootLayer {
        BootLayer {
            files_dir: over.files_dir.or(self.files_dir),
            ipxe_dir: over.ipxe_dir.or(self.ipxe_dir),
            auto_enroll: over.auto_enroll.or(self.auto_enroll),
            auto_enroll_per_minute: over.auto_enroll_per_minute.or(self.auto_enroll_per_minute),
            max_discovered_nodes: over.max_discovered_nodes.or(self.max_discovered_nodes),
            listen: over.listen.or(self.listen),
            public_url: over.public_url.or(self.public_url),
            secure_boot_shim: over.secure_boot_shim.or(self.secure_boot_shim),
            secure_boot_grub: over.secure_boot_grub.or(self.secure_boot_grub),
        }
    }
}

impl ImagesLayer {
    fn overlaid_with(self, over: ImagesLayer) -> ImagesLayer {
        ImagesLayer {
            store: over.store.or(self.store),
            blob_dir: over.blob_dir.or(self.blob_dir),
            spool_dir: over.spool_dir.or(self.spool_dir),
            s3_endpoint: over.s3_endpoint.or(self.s3_endpoint),
            s3_bucket: over.s3_bucket.or(self.s3_bucket),
            s3_region: over.s3_region.or(self.s3_region),
            s3_access_key_id: over.s3_access_key_id.or(self.s3_access_key_id),
            s3_secret_access_key: over.s3_secret_access_key.or(self.s3_secret_access_key),
            s3_prefix: over.s3_prefix.or(self.s3_prefix),
            import_allowed_dirs: if over.import_allowed_dirs.is_empty() { self.import_allowed_dirs } else { over.import_allowed_dirs },
            import_allowed_networks: if over.import_allowed_networks.is_empty() {
                self.import_allowed_networks
            } else {
                over.import_allowed_networks
            },
            gc_grace_seconds: over.gc_grace_seconds.or(self.gc_grace_seconds),
        }
    }
}

/// Where blobs are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "store", rename_all = "snake_case")]
pub enum BlobBackendConfig {
    Local { blob_dir: PathBuf },
    S3 { s3: S3Config, spool_dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    #[serde(serialize_with = "masked")]
    pub secret_access_key: String,
    pub prefix: String,
}

fn masked<S: serde::Serializer>(_: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kiln_types::SECRET_MASK)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagesConfig {
    pub backend: BlobBackendConfig,
    pub import_allowed_dirs: Vec<PathBuf>,
    pub import_allowed_networks: Vec<ipnet::IpNet>,
    pub gc_grace_seconds: u64,
}

fn images_config(layer: ImagesLayer, data_dir: &std::path::Path) -> Result<ImagesConfig, ConfigError> {
    let store = layer.store.clone().unwrap_or_else(|| if layer.s3_endpoint.is_some() { "s3".to_owned() } else { "local".to_owned() });
    let backend = match store.as_str() {
        "local" => BlobBackendConfig::Local { blob_dir: layer.blob_dir.unwrap_or_else(|| data_dir.join("blobs")) },
        "s3" => {
            let missing =
                |setting: &'static str| ConfigError::Invalid { setting, message: "is required when images.store is s3".to_owned() };
            let endpoint = layer.s3_endpoint.ok_or_else(|| missing("images.s3_endpoint"))?;
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    setting: "images.s3_endpoint",
                    message: format!("'{endpoint}' is not an http(s):// URL"),
                });
            }
            BlobBackendConfig::S3 {
                s3: S3Config {
                    endpoint,
                    bucket: layer.s3_bucket.ok_or_else(|| missing("images.s3_bucket"))?,
                    region: layer.s3_region.unwrap_or_else(|| "us-east-1".to_owned()),
                    access_key_id: layer.s3_access_key_id.ok_or_else(|| missing("images.s3_access_key_id"))?,
                    secret_access_key: layer.s3_secret_access_key.ok_or_else(|| missing("images.s3_secret_access_key"))?,
                    prefix: layer.s3_prefix.unwrap_or_default(),
                },
                spool_dir: layer.spool_dir.unwrap_or_else(|| data_dir.join("spool")),
            }
        }
        other => {
            return Err(ConfigError::Invalid { setting: "images.store", message: format!("'{other}' is neither local nor s3") });
        }
    };
    for directory in &layer.import_allowed_dirs {
        if !directory.is_absolute() {
            return Err(ConfigError::Invalid {
                setting: "images.import_allowed_dirs",
                message: format!("'{}' is not an absolute path", directory.display()),
            });
        }
    }
    let import_allowed_networks = layer
        .import_allowed_networks
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(|_| {
                ConfigError::Invalid {
                    setting: "images.import_allowed_networks",
                    message: format!("'{text}' is not a network (10.0.0.0/8) or an address"),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImagesConfig {
        backend,
        import_allowed_dirs: layer.import_allowed_dirs,
        import_allowed_networks,
        gc_grace_seconds: layer.gc_grace_seconds.unwrap_or(3600),
    })
}

/// A validated configuration: what [`crate::start`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: String,
    pub public_url: String,
    pub secret_key_file: PathBuf,
    pub max_body_bytes: usize,
    /// How long a request body may send nothing.
    pub body_idle_seconds: u64,
    /// How long a body read whole may take to arrive.
    pub body_total_seconds: u64,
    /// The largest free-form field stored.
    pub max_field_bytes: usize,
    pub boot: BootConfig,
    pub dhcp: Option<kiln_dhcp::DhcpConfig>,
    pub tftp: Option<TftpSettings>,
    pub images: ImagesConfig,
    pub cloud_init: CloudInitConfig,
    /// `None` when the power-state sync is off.
    pub power_sync: Option<crate::power_sync::PowerSyncSettings>,
    pub provisioning: ProvisioningConfig,
    /// Whether the Ironic-compatible API answers requests without a token (a lab's `noauth`).
    pub ironic_noauth: bool,
    /// How long a web console session lasts.
    pub web_session_lifetime_seconds: u64,
    /// `None` when network disks are off.
    pub netdisk: Option<NetdiskSettings>,
    /// `None`: the API listener speaks plain HTTP.
    pub tls: Option<crate::tls::TlsSettings>,
}

/// `[netdisk]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetdiskSettings {
    pub listen: SocketAddr,
    /// What nodes connect to, when set explicitly.
    pub address: Option<String>,
    pub dir: PathBuf,
}

impl ServerConfig {
    /// What is valid but worth saying: settings that do not do what a site of several
    /// replicas might expect.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.netdisk.is_some() && self.database_url.starts_with("postgres") {
            warnings.push(
                "[netdisk] keeps network disks' clones on this machine's disk: a single-replica backend. With replicas \
                 sharing this database, give [netdisk] to one replica only (ARCHITECTURE.md: the RBD backend is the scale path)"
                    .to_owned(),
            );
        }
        warnings
    }
}

fn netdisk_config(layer: NetdiskLayer, data_dir: &Path) -> Result<NetdiskSettings, ConfigError> {
    let text = layer.listen.unwrap_or_else(|| "0.0.0.0:10809".to_owned());
    let listen = text
        .parse()
        .map_err(|_| ConfigError::Invalid { setting: "netdisk.listen", message: format!("'{text}' is not an address:port") })?;
    if let Some(address) = &layer.address {
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if !valid || address.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid { setting: "netdisk.address", message: format!("'{address}' is not HOST:PORT") });
        }
    }
    Ok(NetdiskSettings { listen, address: layer.address, dir: layer.dir.unwrap_or_else(|| data_dir.join("netdisk")) })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisioningConfig {
    pub ramdisk_image: String,
    pub agent_boot_timeout_seconds: u64,
    pub heartbeat_timeout_seconds: u64,
    pub callback_timeout_seconds: u64,
    pub undeploy_clean: kiln_types::provision::CleanMode,
    pub lease_seconds: u64,
    pub workers: usize,
    pub bmc_timeout_seconds: u64,
}

impl ProvisioningConfig {
    pub fn reconciler_settings(&self) -> kiln_lifecycle::ReconcilerSettings {
        use std::time::Duration;
        kiln_lifecycle::ReconcilerSettings {
            lifecycle: kiln_lifecycle::LifecycleSettings {
                agent_boot_timeout: Duration::from_secs(self.agent_boot_timeout_seconds),
                heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_seconds),
                callback_timeout: Duration::from_secs(self.callback_timeout_seconds),
                undeploy_clean_mode: self.undeploy_clean,
            },
            lease: Duration::from_secs(self.lease_seconds),
            poll_interval: Duration::from_secs(1),
            workers: self.workers,
            bmc_timeout: Duration::from_secs(self.bmc_timeout_seconds),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudInitConfig {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub impersonation: bool,
}

fn cloud_init_config(layer: CloudInitLayer) -> Result<CloudInitConfig, ConfigError> {
    let trusted_proxies = layer
        .trusted_proxies
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(|_| {
                ConfigError::Invalid {
                    setting: "cloud_init.trusted_proxies",
                    message: format!("'{text}' is neither an address nor a network such as 10.0.0.0/24"),
                }
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CloudInitConfig { trusted_proxies, impersonation: layer.impersonation.unwrap_or(false) })
}

fn provisioning_config(layer: ProvisioningLayer, bmc_timeout_seconds: u64) -> Result<ProvisioningConfig, ConfigError> {
    let seconds = |value: Option<u64>, default: u64, setting: &'static str| match value.unwrap_or(default) {
        0 => Err(ConfigError::Invalid { setting, message: "must be at least 1 second".into() }),
        seconds => Ok(seconds),
    };
    let undeploy_clean = match layer.undeploy_clean.as_deref().unwrap_or("fast") {
        "fast" => kiln_types::provision::CleanMode::Fast,
        "full" => kiln_types::provision::CleanMode::Full,
        other => {
            return Err(ConfigError::Invalid {
                setting: "provisioning.undeploy_clean",
                message: format!("'{other}' is neither 'fast' nor 'full'"),
            });
        }
    };
    let ramdisk_image = layer.ramdisk_image.unwrap_or_else(|| "kiln-deploy-ramdisk".to_owned());
    if ramdisk_image.is_empty() {
        return Err(ConfigError::Invalid { setting: "provisioning.ramdisk_image", message: "must name an image".into() });
    }
    Ok(ProvisioningConfig {
        ramdisk_image,
        agent_boot_timeout_seconds: seconds(layer.agent_boot_timeout_seconds, 600, "provisioning.agent_boot_timeout_seconds")?,
        heartbeat_timeout_seconds: seconds(layer.heartbeat_timeout_seconds, 120, "provisioning.heartbeat_timeout_seconds")?,
        callback_timeout_seconds: seconds(layer.callback_timeout_seconds, 900, "provisioning.callback_timeout_seconds")?,
        undeploy_clean,
        lease_seconds: seconds(layer.lease_seconds, 30, "provisioning.lease_seconds")?,
        workers: layer.workers.unwrap_or(64).clamp(1, 4096),
        bmc_timeout_seconds: bmc_timeout_seconds.clamp(1, 300),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootConfig {
    pub files_dir: PathBuf,
    pub ipxe_dir: PathBuf,
    pub auto_enroll: bool,
    pub enrolment: kiln_db::EnrolmentLimits,
    /// The boot listener's address, if it has one of its own.
    pub listen: Option<SocketAddr>,
    /// How machines reach the boot listener, when set explicitly.
    pub public_url: Option<String>,
    /// Debian's signed shim and network GRUB, for Secure Boot nodes.
    pub secure_boot_shim: PathBuf,
    pub secure_boot_grub: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TftpSettings {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub max_sessions_per_client: usize,
}

fn ipv4(setting: &'static str, text: &str) -> Result<std::net::Ipv4Addr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid { setting, message: format!("'{text}' is not an IPv4 address") })
}

fn dhcp_config(
    layer: DhcpLayer,
    public_url: &str,
    boot: &BootConfig,
    data_dir: &std::path::Path,
) -> Result<kiln_dhcp::DhcpConfig, ConfigError> {
    let missing = |setting: &'static str| ConfigError::Invalid { setting, message: "is required when [dhcp] is configured".to_owned() };
    let interface = layer.interface.ok_or_else(|| missing("dhcp.interface"))?;
    let server_address = ipv4("dhcp.server_address", &layer.server_address.ok_or_else(|| missing("dhcp.server_address"))?)?;
    let subnet_text = layer.subnet.ok_or_else(|| missing("dhcp.subnet"))?;
    let (subnet, prefix) = subnet_text
        .split_once('/')
        .and_then(|(address, prefix)| {
            Some((address.parse::<std::net::Ipv4Addr>().ok()?, prefix.parse::<u8>().ok().filter(|p| (1..=30).contains(p))?))
        })
        .ok_or_else(|| ConfigError::Invalid {
            setting: "dhcp.subnet",
            message: format!("'{subnet_text}' is not a subnet such as 10.77.0.0/24"),
        })?;
    let pool = layer
        .pool
        .map(|text| {
            let (first, last) = text
                .split_once('-')
                .ok_or_else(|| ConfigError::Invalid { setting: "dhcp.pool", message: format!("'{text}' is not FIRST-LAST") })?;
            let (first, last) = (ipv4("dhcp.pool", first.trim())?, ipv4("dhcp.pool", last.trim())?);
            if u32::from(first) > u32::from(last) {
                return Err(ConfigError::Invalid { setting: "dhcp.pool", message: format!("'{text}' ends before it starts") });
            }
            Ok((first, last))
        })
        .transpose()?;
    let defaults = kiln_dhcp::config::BootFiles::default();
    let config = kiln_dhcp::DhcpConfig {
        mode: layer.mode.unwrap_or(kiln_dhcp::DhcpMode::Authoritative),
        interface,
        server_address,
        subnet,
        prefix_length: prefix,
        router: layer.router.as_deref().map(|text| ipv4("dhcp.router", text)).transpose()?,
        dns_servers: layer.dns_servers.iter().map(|text| ipv4("dhcp.dns_servers", text)).collect::<Result<_, _>>()?,
        domain: layer.domain,
        lease_seconds: layer.lease_seconds.unwrap_or(3600).max(60),
        pool,
        hostname_prefix: layer.hostname_prefix.unwrap_or_else(|| "nid".to_owned()),
        nid_length: layer.nid_length.unwrap_or(3),
        boot_files: kiln_dhcp::config::BootFiles {
            bios: layer.bios_boot_file.unwrap_or(defaults.bios),
            uefi_x64: layer.uefi_boot_file.unwrap_or(defaults.uefi_x64),
            uefi_arm64: layer.arm64_boot_file.unwrap_or(defaults.uefi_arm64),
            uefi_x64_secure_boot: defaults.uefi_x64_secure_boot,
        },
        http_base_url: public_url.to_owned(),
        auto_enroll: boot.auto_enroll,
        enrolment: boot.enrolment,
        port: layer.port.unwrap_or(67),
        lease_file: Some(data_dir.join("dhcp-leases.log")),
    };
    if !config.contains(server_address) {
        return Err(ConfigError::Invalid { setting: "dhcp.server_address", message: format!("{server_address} is outside {subnet_text}") });
    }
    if let Some((first, last)) = pool
        && (!config.contains(first) || !config.contains(last))
    {
        return Err(ConfigError::Invalid { setting: "dhcp.pool", message: format!("the pool is outside {subnet_text}") });
    }
    Ok(config)
}

pub const DEFAULT_DATA_DIR: &str = "./kiln-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Large enough for a discovery file of tens of thousands of nodes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

impl ServerConfig {
    /// The same settings with the database URL's password masked, for showing.
    pub fn redacted(mut self) -> ServerConfig {
        self.database_url = kiln_db::redact_url(&self.database_url);
        self
    }
}

/// `[boot]`: the boot listener, its public URL, where files come from, auto-enrolment.
fn boot_config(boot_layer: BootLayer, data_dir: &Path) -> Result<BootConfig, ConfigError> {
    let boot_listen = boot_layer
        .listen
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                setting: "boot.listen",
                message: format!("'{text}' is not an address:port such as 10.77.0.1:8081"),
            })
        })
        .transpose()?;
    let boot_public_url = boot_layer.public_url.map(|url| url.trim_end_matches('/').to_owned());
    if let Some(url) = &boot_public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::Invalid { setting: "boot.public_url", message: format!("'{url}' is not an http:// or https:// URL") });
    }
    if boot_public_url.is_some() && boot_listen.is_none() {
        return Err(ConfigError::Invalid { setting: "boot.public_url", message: "needs boot.listen".to_owned() });
    }
    Ok(BootConfig {
        files_dir: boot_layer.files_dir.unwrap_or_else(|| data_dir.join("boot-files")),
        ipxe_dir: boot_layer.ipxe_dir.unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe")),
        auto_enroll: boot_layer.auto_enroll.unwrap_or(true),
        enrolment: kiln_db::EnrolmentLimits {
            per_minute: boot_layer.auto_enroll_per_minute.unwrap_or(kiln_db::EnrolmentLimits::default().per_minute),
            max_discovered: boot_layer.max_discovered_nodes.unwrap_or(kiln_db::EnrolmentLimits::default().max_discovered),
        },
        listen: boot_listen,
        public_url: boot_public_url,
        secure_boot_shim: boot_layer.secure_boot_shim.unwrap_or_else(|| PathBuf::from("/usr/lib/shim/shimx64.efi.signed")),
        secure_boot_grub: boot_layer
            .secure_boot_grub
            .unwrap_or_else(|| PathBuf::from("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")),
    })
}

/// `[tls]`: a certificate and key together or neither (Kiln's CA issues one), and a public
/// URL that says `https://`, since that is what the listener speaks.
fn tls_config(layer: TlsLayer, data_dir: &Path, public_url: &str, boot: &BootConfig) -> Result<crate::tls::TlsSettings, ConfigError> {
    // Machines are pointed at the API listener when there is no boot listener; iPXE and
    // GRUB speak no HTTPS, and the deploy agent fetches its images and the API's certificate
    // from the boot listener.
    if boot.listen.is_none() {
        return Err(ConfigError::Invalid {
            setting: "tls",
            message: "needs boot.listen: booting machines (iPXE, GRUB) speak plain HTTP, to a listener of their own".to_owned(),
        });
    }
    if layer.cert_file.is_some() != layer.key_file.is_some() {
        return Err(ConfigError::Invalid {
            setting: "tls.cert_file",
            message: "tls.cert_file and tls.key_file go together: give both, or neither for a certificate from Kiln's CA".to_owned(),
        });
    }
    if !public_url.starts_with("https://") {
        return Err(ConfigError::Invalid {
            setting: "public_url",
            message: format!("'{public_url}' is not an https:// URL, but with [tls] the API listener speaks only HTTPS"),
        });
    }
    Ok(crate::tls::TlsSettings {
        cert_file: layer.cert_file,
        key_file: layer.key_file,
        ca_cert_file: layer.ca_cert_file.unwrap_or_else(|| data_dir.join("tls/ca.crt")),
        ca_key_file: layer.ca_key_file.unwrap_or_else(|| data_dir.join("tls/ca.key")),
        names: layer.names,
    })
}

/// `[tftp]`: where it listens, its root (the iPXE directory unless given), its per-client cap.
fn tftp_config(tftp: TftpLayer, ipxe_dir: &Path) -> Result<TftpSettings, ConfigError> {
    let text = tftp.listen.unwrap_or_else(|| "0.0.0.0:69".to_owned());
    let listen =
        text.parse().map_err(|_| ConfigError::Invalid { setting: "tftp.listen", message: format!("'{text}' is not an address:port") })?;
    Ok(TftpSettings {
        listen,
        root: tftp.root.unwrap_or_else(|| ipxe_dir.to_owned()),
        max_sessions_per_client: tftp.max_sessions_per_client.unwrap_or(8).max(1),
    })
}

impl TryFrom<ServerConfigLayer> for ServerConfig {
    type Error = ConfigError;

    fn try_from(layer: ServerConfigLayer) -> Result<Self, Self::Error> {
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { setting: "data_dir", message: "must not be empty".to_owned() });
        }
        let listen_text = layer.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| ConfigError::Invalid {
            setting: "listen",
            message: format!("'{listen_text}' is not an address:port such as 127.0.0.1:8080"),
        })?;
        let database_url = layer.database_url.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kiln.db").display()));
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres:") || database_url.starts_with("postgresql:")) {
            return Err(ConfigError::Invalid {
                setting: "database_url",
                message: format!("'{}' is neither sqlite://PATH nor postgres://…", kiln_db::redact_url(&database_url)),
            });
        }
        let public_url = layer
            .public_url
            .unwrap_or_else(|| {
                let host = if listen.ip().is_unspecified() { "127.0.0.1".to_owned() } else { listen.ip().to_string() };
                let host = if listen.is_ipv6() && host != "127.0.0.1" { format!("[{host}]") } else { host };
                let scheme = if layer.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{host}:{}", listen.port())
            })
            .trim_end_matches('/')
            .to_owned();
        let valid_public_url = (public_url.starts_with("http://") || public_url.starts_with("https://"))
            && public_url.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !valid_public_url {
            return Err(ConfigError::Invalid {
                setting: "public_url",
                message: format!("'{public_url}' is not an http:// or https:// URL"),
            });
        }
        let secret_key_file = layer.secret_key_file.unwrap_or_else(|| data_dir.join("secret.key"));
        let max_body_bytes = layer.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(ConfigError::Invalid { setting: "max_body_bytes", message: "must be at least 1024".to_owned() });
        }
        let max_field_bytes = layer.max_field_bytes.unwrap_or(64 << 10);
        if max_field_bytes < 1024 {
            return Err(ConfigError::Invalid { setting: "max_field_bytes", message: "must be at least 1024".to_owned() });
        }
        let body_idle_seconds = layer.body_idle_seconds.unwrap_or(30);
        if body_idle_seconds == 0 {
            return Err(ConfigError::Invalid { setting: "body_idle_seconds", message: "must be at least 1".to_owned() });
        }
        let body_total_seconds = layer.body_total_seconds.unwrap_or(120);
        if body_total_seconds == 0 {
            return Err(ConfigError::Invalid { setting: "body_total_seconds", message: "must be at least 1".to_owned() });
        }
        let boot = boot_config(layer.boot.unwrap_or_default(), &data_dir)?;
        let tls = layer.tls.map(|tls| tls_config(tls, &data_dir, &public_url, &boot)).transpose()?;
        let dhcp = layer.dhcp.map(|dhcp| dhcp_config(dhcp, &public_url, &boot, &data_dir)).transpose()?;
        let tftp = layer.tftp.map(|tftp| tftp_config(tftp, &boot.ipxe_dir)).transpose()?;
        let netdisk = layer.netdisk.map(|netdisk| netdisk_config(netdisk, &data_dir)).transpose()?;
        let images = images_config(layer.images.unwrap_or_default(), &data_dir)?;
        let cloud_init = cloud_init_config(layer.cloud_init.unwrap_or_default())?;
        let bmc = layer.bmc.unwrap_or_default();
        let power_sync = match bmc.sync_interval_seconds.unwrap_or(60) {
            0 => None,
            seconds => Some(crate::power_sync::PowerSyncSettings {
                interval: std::time::Duration::from_secs(seconds),
                workers: bmc.sync_workers.unwrap_or(16).clamp(1, 1024),
                fault_threshold: bmc.fault_threshold.unwrap_or(3).max(1),
                timeout: std::time::Duration::from_secs(bmc.timeout_seconds.unwrap_or(10).clamp(1, 300)),
            }),
        };
        let provisioning = provisioning_config(layer.provisioning.unwrap_or_default(), bmc.timeout_seconds.unwrap_or(10))?;
        let web_session_lifetime_seconds = layer.web.and_then(|web| web.session_lifetime_seconds).unwrap_or(8 * 3600);
        if !(10..=30 * 86_400).contains(&web_session_lifetime_seconds) {
            return Err(ConfigError::Invalid {
                setting: "web.session_lifetime_seconds",
                message: format!("{web_session_lifetime_seconds} is not between 10 and 2592000 (30 days)"),
            });
        }
        Ok(ServerConfig {
            data_dir,
            listen,
            database_url,
            public_url,
            secret_key_file,
            max_body_bytes,
            body_idle_seconds,
            body_total_seconds,
            max_field_bytes,
            boot,
            dhcp,
            tftp,
            images,
            cloud_init,
            power_sync,
            provisioning,
            ironic_noauth: layer.ironic.and_then(|ironic| ironic.noauth).unwrap_or(false),
            web_session_lifetime_seconds,
            netdisk,
            tls,
        })
    }
}

#[cfg(test)]
mod tests;
