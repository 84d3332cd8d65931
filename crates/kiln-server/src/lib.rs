//! Kiln's server: configuration, start-up, the running services and their shutdown.
//!
//! [`start`] brings up everything a [`ServerConfig`] describes and returns a
//! [`ServerHandle`]; dropping the handle, or calling [`ServerHandle::shutdown`], stops it.

mod boot_media;
pub mod config;
pub mod console;
mod netdisk;
pub mod power_sync;
pub mod tls;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_api::ApiState;
use kiln_auth::{SecretBox, hash_token, mint_token};
use kiln_db::Store;
use tokio::sync::watch;

pub use config::{ConfigError, ServerConfig, ServerConfigLayer};

/// How often a replica looks for changes other replicas made to the inventory.
const INVENTORY_FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the server's secret key")]
    SecretKey(#[source] kiln_auth::SecretError),
    #[error("opening the store")]
    Store(#[source] kiln_db::StoreError),
    #[error("creating the first administrator")]
    Bootstrap(#[source] kiln_db::StoreError),
    #[error("writing the admin token to {path}")]
    AdminToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the DHCP server")]
    Dhcp(#[source] kiln_dhcp::server::DhcpError),
    #[error("opening the image store")]
    BlobStore(#[source] kiln_image_store::BlobError),
    #[error("starting the TFTP server")]
    Tftp(#[source] kiln_tftp::server::TftpError),
    #[error("preparing network disks")]
    NetworkDisks(#[source] kiln_netdisk::NetdiskError),
    #[error("preparing TLS on the API listener")]
    Tls(#[source] tls::TlsError),
    #[error("listening on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long a boot listener download or a reconciler step in flight may take to finish once
/// shutdown is asked for; then it is cut off (the client resumes by range, the step's lease
/// hands it on).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// What the server has been asked to do about stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    /// `shutdown()`: finish what is in flight first.
    Drain,
    /// The handle was dropped: stop accepting, and abort the boot listener and the
    /// reconciler at once.
    Now,
}

/// A running server. Dropping it stops the server without waiting.
pub struct ServerHandle {
    local_addr: SocketAddr,
    boot_addr: Option<SocketAddr>,
    network_disk_addr: Option<SocketAddr>,
    admin_token_file: Option<PathBuf>,
    shutdown: watch::Sender<Stopping>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Where the API listens (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the boot listener listens, when it has a listener of its own.
    pub fn boot_addr(&self) -> Option<SocketAddr> {
        self.boot_addr
    }

    /// Where the network-disk gateway listens, when network disks are configured.
    pub fn network_disk_addr(&self) -> Option<SocketAddr> {
        self.network_disk_addr
    }

    /// The admin token file, when this start created the first administrator.
    pub fn admin_token_file(&self) -> Option<&Path> {
        self.admin_token_file.as_deref()
    }

    /// Stops accepting connections and claiming work, lets what is in flight finish (API
    /// requests, boot listener downloads and reconciler steps, the latter two within
    /// [`DRAIN_DEADLINE`]), then closes the database.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(Stopping::Drain);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let _ = task.await;
            self.task = None;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(Stopping::Now);
    }
}

/// What the boot routes need: where machines and agents reach the server, the files, and
/// auto-enrolment.
fn boot_settings(
    config: &ServerConfig,
    boot_url: &str,
    api_url: &str,
    certificates: Option<&Arc<tls::Certificates>>,
) -> kiln_api::boot::BootSettings {
    kiln_api::boot::BootSettings {
        public_url: boot_url.to_owned(),
        files_dir: config.boot.files_dir.clone(),
        ipxe_dir: config.boot.ipxe_dir.clone(),
        auto_enroll: config.boot.auto_enroll,
        enrolment: config.boot.enrolment,
        ramdisk_image: config.provisioning.ramdisk_image.clone(),
        api_url: api_url.to_owned(),
        network_disk_address: config.netdisk.as_ref().map(|netdisk| network_disk_address(netdisk, boot_url)),
        api_trust_anchor: certificates
            .map(|certificates| kiln_api::boot::ApiTrustAnchor(Arc::clone(certificates) as Arc<dyn kiln_api::boot::TrustAnchorSource>)),
        media_dir: config.data_dir.join("boot-media"),
    }
}

/// What nodes connect to for their network disks: as configured, or the boot URL's host with
/// the gateway's port.
fn network_disk_address(netdisk: &config::NetdiskSettings, boot_url: &str) -> String {
    if let Some(address) = &netdisk.address {
        return address.clone();
    }
    let host = boot_url.split("://").nth(1).unwrap_or(boot_url).split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host,
    };
    format!("{host}:{}", netdisk.listen.port())
}

/// What request bodies are held to on both listeners.
fn body_limits(config: &ServerConfig) -> kiln_api::BodyLimits {
    kiln_api::BodyLimits {
        max_bytes: config.max_body_bytes,
        idle: std::time::Duration::from_secs(config.body_idle_seconds),
        whole_within: std::time::Duration::from_secs(config.body_total_seconds),
    }
}

/// Starts the server described by `config`.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
    let secrets = SecretBox::load_or_create(&config.secret_key_file).map_err(StartError::SecretKey)?;
    let store = Store::open(&config.database_url, secrets).await.map_err(StartError::Store)?;
    let admin_token_file = bootstrap_admin(&store, &config.data_dir).await?;

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|source| StartError::Listen { address: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen { address: config.listen, source })?;
    let inventory = kiln_db::Inventory::load(store.clone()).await.map_err(StartError::Store)?;
    let follower = inventory.follow(INVENTORY_FOLLOW_INTERVAL);
    let power_sync = config.power_sync.clone().map(|settings| power_sync::spawn(store.clone(), inventory.clone(), settings));
    // Machines may have a listener of their own; every URL they are given points there.
    let boot_listener = match config.boot.listen {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(|source| StartError::Listen { address, source })?),
        None => None,
    };
    // Port 0 (tests): the URL is known only once bound.
    let api_url = match config.listen.port() == 0 && config.public_url.ends_with(":0") {
        true => format!("{}://{local_addr}", if config.tls.is_some() { "https" } else { "http" }),
        false => config.public_url.clone(),
    };
    let certificates = match &config.tls {
        Some(settings) => {
            Some(tls::Certificates::load(settings.clone(), certificate_names(&api_url, local_addr)).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let reload_on_hangup = certificates.clone().map(reload_certificates_on_hangup);
    let boot_url = match (&config.boot.public_url, &boot_listener) {
        (Some(url), _) => url.clone(),
        (None, Some(listener)) => {
            let address = listener.local_addr().map_err(|source| StartError::Listen { address: local_addr, source })?;
            let host = if address.ip().is_unspecified() { local_addr.ip() } else { address.ip() };
            format!("http://{}", SocketAddr::new(host, address.port()))
        }
        (None, None) => api_url.clone(),
    };
    let boot = boot_settings(&config, &boot_url, &api_url, certificates.as_ref());
    let dhcp = start_dhcp(&config, &store, &inventory, &boot_url).await?;
    let images = image_settings(&config)?;
    let state = api_state(&config, &store, &inventory, boot, images, dhcp.as_ref());
    let tftp = start_tftp(&config, &state, &boot_url).await?;
    let consoles = console::spawn(store.clone(), inventory.clone(), state.consoles.clone());
    let network_disks = start_network_disks(&config, &store, &inventory, &state).await?;
    let reconciler = kiln_lifecycle::start(
        store.clone(),
        inventory,
        config.provisioning.reconciler_settings(),
        state.provisioning_wake.clone(),
        kiln_lifecycle::Services {
            network_disks: network_disks.as_ref().map(|service| service.reconciler_hook(&store)),
            // Media are served by the boot listener alone: without one there are none.
            boot_media: boot_listener.is_some().then(|| boot_media::BootMedia::new(state.clone()) as Arc<dyn kiln_lifecycle::BootMedia>),
        },
    );
    let boot_service = start_boot_listener(boot_listener, &state, &config, &boot_url, local_addr)?;
    let (boot_addr, network_disk_addr) =
        (boot_service.as_ref().map(|s| s.local_addr), network_disks.as_ref().map(|s| s.gateway.local_addr));
    let app = kiln_api::router(state, body_limits(&config));
    let (shutdown, mut shutdown_requested) = watch::channel(Stopping::No);
    let stop_signal = shutdown_requested.clone();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown_requested.wait_for(|stopping| *stopping != Stopping::No).await;
        };
        let api = serve_api(listener, certificates, app, stopped);
        // Every listener and the reconciler drain at once, each from the same signal.
        let mut stop_signal = stop_signal;
        let others = async move {
            let drain = matches!(stop_signal.wait_for(|stopping| *stopping != Stopping::No).await.as_deref(), Ok(Stopping::Drain));
            // DHCP answers and TFTP blocks are retried by the client: they stop at once.
            drop((dhcp, tftp));
            if !drain {
                // The handle was dropped: nothing waits for the work in flight, which
                // must not go on behind the caller's back (it may start another server on
                // the same store). Dropping the services aborts them.
                drop((boot_service, reconciler));
                return;
            }
            let boot = async {
                if let Some(boot_service) = boot_service {
                    boot_service.shutdown(DRAIN_DEADLINE).await;
                }
            };
            tokio::join!(boot, reconciler.shutdown(DRAIN_DEADLINE));
        };
        tokio::join!(api, others);
        if let Some(network_disks) = network_disks {
            network_disks.shutdown().await;
        }
        follower.abort();
        consoles.abort();
        if let Some(reload) = reload_on_hangup {
            reload.abort();
        }
        if let Some(power_sync) = power_sync {
            power_sync.abort();
        }
        // Everything that uses the store has stopped: it closes.
        store.close().await;
        tracing::info!("server stopped");
    });
    tracing::info!(address = %local_addr, public_url = %config.public_url, database = %kiln_db::redact_url(&config.database_url), "kiln is serving");
    Ok(ServerHandle { local_addr, boot_addr, network_disk_addr, admin_token_file, shutdown, task: Some(task) })
}

/// The API listener, plain or under TLS, until `stopped`; then it drains.
async fn serve_api(
    listener: tokio::net::TcpListener,
    certificates: Option<Arc<tls::Certificates>>,
    app: axum::Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = match certificates {
        Some(certificates) => match tls::listen(listener, certificates) {
            // `tap_io` only for the connection's address, which axum gives handlers for a
            // tapped listener.
            Ok(listener) => axum::serve(axum::serve::ListenerExt::tap_io(listener, |_| {}), app).with_graceful_shutdown(stopped).await,
            Err(error) => Err(error),
        },
        None => axum::serve(listener, app).with_graceful_shutdown(stopped).await,
    };
    if let Err(error) = served {
        tracing::error!(%error, "the API server failed");
    }
}

/// What a certificate from Kiln's CA is for, besides `[tls] names`: the API URL's host, the
/// listen address when it is one, and this machine by loopback (the CLI beside the server).
fn certificate_names(api_url: &str, local_addr: SocketAddr) -> Vec<String> {
    let authority = api_url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    let mut names = vec![host.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned()];
    if !local_addr.ip().is_unspecified() {
        names.push(local_addr.ip().to_string());
    }
    names.retain(|name| !name.is_empty());
    names
}

/// SIGHUP loads the API listener's certificate again (a renewed file, or a new one from
/// Kiln's CA); connections already open keep the one they shook hands with.
fn reload_certificates_on_hangup(certificates: Arc<tls::Certificates>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be caught: the certificate is reloaded only by a restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match certificates.reload() {
                Ok(()) => tracing::info!("SIGHUP: the API listener's certificate was reloaded"),
                Err(error) => {
                    tracing::warn!(error = %kiln_types::error_chain(&error), "SIGHUP: the certificate could not be reloaded; the current one stays")
                }
            }
        }
    })
}

/// The boot listener, when machines have one of their own.
fn start_boot_listener(
    listener: Option<tokio::net::TcpListener>,
    state: &ApiState,
    config: &ServerConfig,
    boot_url: &str,
    api_addr: SocketAddr,
) -> Result<Option<kiln_api::boot_listener::BootListener>, StartError> {
    let Some(listener) = listener else { return Ok(None) };
    let files = Arc::new(kiln_api::boot::BootFiles(state.clone()));
    let address = listener.local_addr().ok();
    let service = kiln_api::boot_listener::start(listener, files, kiln_api::boot_router(state.clone(), body_limits(config)))
        .map_err(|source| StartError::Listen { address: address.unwrap_or(api_addr), source })?;
    tracing::info!(address = %service.local_addr, url = %boot_url, "boot listener ready (files sent with sendfile)");
    Ok(Some(service))
}

/// Network disks and their NBD gateway, where configured.
async fn start_network_disks(
    config: &ServerConfig,
    store: &Store,
    inventory: &Arc<kiln_db::Inventory>,
    state: &ApiState,
) -> Result<Option<netdisk::NetworkDiskService>, StartError> {
    let Some(settings) = &config.netdisk else { return Ok(None) };
    let disks = Arc::new(kiln_netdisk::NetworkDisks::local(&settings.dir, state.images.blobs.clone()).map_err(StartError::NetworkDisks)?);
    let listener =
        tokio::net::TcpListener::bind(settings.listen).await.map_err(|source| StartError::Listen { address: settings.listen, source })?;
    let authority = Arc::new(netdisk::Authority { store: store.clone(), inventory: inventory.clone(), leases: state.leases.clone() });
    let gateway = kiln_netdisk::gateway::start(listener, disks.clone(), authority)
        .map_err(|source| StartError::Listen { address: settings.listen, source })?;
    tracing::info!(clones = %disks.describe(), address = %gateway.local_addr, "network disks ready");
    Ok(Some(netdisk::NetworkDiskService { disks, blobs: state.images.blobs.clone(), gateway }))
}

/// What every handler shares, from the configuration and the services started so far.
fn api_state(
    config: &ServerConfig,
    store: &Store,
    inventory: &Arc<kiln_db::Inventory>,
    boot: kiln_api::boot::BootSettings,
    images: kiln_api::images::ImageSettings,
    dhcp: Option<&kiln_dhcp::DhcpHandle>,
) -> ApiState {
    let cloud_init = kiln_api::cloud_init::CloudInitSettings {
        trusted_proxies: config.cloud_init.trusted_proxies.clone(),
        impersonation: config.cloud_init.impersonation,
    };
    let mut state = ApiState::new(store.clone(), inventory.clone(), boot, images, cloud_init);
    state.field_limits = kiln_api::FieldLimits { max_field_bytes: config.max_field_bytes };
    state.leases = dhcp.map(kiln_dhcp::DhcpHandle::lease_lookup);
    state.ironic = kiln_api::ironic::IronicSettings { noauth: config.ironic_noauth };
    state.web = kiln_api::web::WebSettings {
        session_lifetime: std::time::Duration::from_secs(config.web_session_lifetime_seconds),
        // Browsers reach the console at the public URL: over HTTPS, cookies go only over HTTPS.
        secure_cookies: config.public_url.starts_with("https://"),
    };
    if config.ironic_noauth {
        tracing::warn!("the Ironic-compatible API answers requests without a token as an administrator ([ironic] noauth): for a lab only");
    }
    state
}

/// DHCP, where configured: machines are pointed at `boot_url`.
async fn start_dhcp(
    config: &ServerConfig,
    store: &Store,
    inventory: &Arc<kiln_db::Inventory>,
    boot_url: &str,
) -> Result<Option<kiln_dhcp::DhcpHandle>, StartError> {
    let Some(dhcp) = &config.dhcp else { return Ok(None) };
    let dhcp = kiln_dhcp::DhcpConfig { http_base_url: boot_url.to_owned(), ..dhcp.clone() };
    Ok(Some(kiln_dhcp::start(dhcp, store.clone(), inventory.clone()).await.map_err(StartError::Dhcp)?))
}

/// TFTP, where configured: iPXE from its root, and through the API's state what Secure Boot
/// nodes load (shim, GRUB, GRUB's configurations, the boot listener's files).
async fn start_tftp(config: &ServerConfig, state: &ApiState, boot_url: &str) -> Result<Option<kiln_tftp::TftpHandle>, StartError> {
    let Some(tftp) = &config.tftp else { return Ok(None) };
    let mut settings = kiln_tftp::TftpConfig::new(tftp.listen, tftp.root.clone());
    settings.max_sessions_per_client = tftp.max_sessions_per_client;
    // iPXE asking by TFTP gets a script that continues over HTTP.
    settings.generated.insert("kiln.ipxe".to_owned(), kiln_boot::chain_script(boot_url).into_bytes());
    settings.dynamic = Some(Arc::new(kiln_api::boot_tftp::TftpBootFiles {
        state: state.clone(),
        runtime: tokio::runtime::Handle::current(),
        loaders: kiln_api::boot_tftp::SecureBootLoaders {
            shim: config.boot.secure_boot_shim.clone(),
            grub: config.boot.secure_boot_grub.clone(),
        },
    }));
    Ok(Some(kiln_tftp::start(settings).await.map_err(StartError::Tftp)?))
}

/// The image store's settings: blobs on local disk or in S3, imports and collection.
fn image_settings(config: &ServerConfig) -> Result<kiln_api::images::ImageSettings, StartError> {
    let blobs = match &config.images.backend {
        config::BlobBackendConfig::Local { blob_dir } => kiln_image_store::BlobStore::local(blob_dir),
        config::BlobBackendConfig::S3 { s3, spool_dir } => kiln_image_store::BlobStore::s3(
            &kiln_image_store::S3Settings {
                endpoint: s3.endpoint.clone(),
                bucket: s3.bucket.clone(),
                region: s3.region.clone(),
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
                prefix: s3.prefix.clone(),
            },
            spool_dir,
        ),
    }
    .map_err(StartError::BlobStore)?;
    tracing::info!(blobs = %blobs.describe(), "image store ready");
    let egress = kiln_image_store::egress::EgressPolicy::with_local_networks(config.images.import_allowed_networks.clone());
    let mut images = kiln_api::images::ImageSettings::new(blobs, config.images.import_allowed_dirs.clone(), egress);
    images.gc_grace = Duration::from_secs(config.images.gc_grace_seconds);
    Ok(images)
}

/// On a database without users, creates the administrator and writes its token to
/// `<data-dir>/admin-token` (0600). The token is written (to a side file) before the
/// database commit and renamed after it, so that a crash in between never leaves an
/// administrator whose token is lost: the next start finishes the rename.
async fn bootstrap_admin(store: &Store, data_dir: &Path) -> Result<Option<PathBuf>, StartError> {
    let path = data_dir.join("admin-token");
    let pending = data_dir.join("admin-token.pending");
    let write_error = |source| StartError::AdminToken { path: path.clone(), source };
    if pending.exists() && !path.exists() {
        // A previous start committed or not; if its token works, keep it.
        let secret = std::fs::read_to_string(&pending).map_err(write_error)?;
        if store.identify_token(&hash_token(secret.trim())).await.map_err(StartError::Bootstrap)?.is_some() {
            std::fs::rename(&pending, &path).map_err(write_error)?;
            tracing::info!(path = %path.display(), "admin token written");
            return Ok(Some(path));
        }
    }
    let secret = mint_token();
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&pending).map_err(write_error)?;
    file.write_all(format!("{secret}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(write_error)?;
    drop(file);
    let created = store.bootstrap_admin(&hash_token(&secret)).await.map_err(StartError::Bootstrap)?;
    if created {
        std::fs::rename(&pending, &path).map_err(write_error)?;
        tracing::info!(path = %path.display(), "created the administrator 'admin'; its API token is in this file");
        Ok(Some(path))
    } else {
        let _ = std::fs::remove_file(&pending);
        Ok(None)
    }
}
