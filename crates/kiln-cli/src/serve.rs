//! `kiln serve` and `kiln config check`.

use std::collections::HashMap;

use anyhow::Context as _;
use kiln_server::{ServerConfig, ServerConfigLayer};

use crate::ServerFlags;
use crate::output::OutputFormat;

/// File, then `KILN_*` environment, then flags; validated.
fn load_config(flags: &ServerFlags) -> anyhow::Result<ServerConfig> {
    let file = match &flags.config {
        Some(path) => ServerConfigLayer::from_toml_file(path)?,
        None => ServerConfigLayer::default(),
    };
    let environment: HashMap<String, String> = std::env::vars().collect();
    let from_flags = ServerConfigLayer {
        data_dir: flags.data_dir.clone(),
        listen: flags.listen.clone(),
        database_url: flags.database_url.clone(),
        public_url: flags.public_url.clone(),
        ..Default::default()
    };
    let layers = file.overlaid_with(ServerConfigLayer::from_environment(&environment)?).overlaid_with(from_flags);
    ServerConfig::try_from(layers).context("invalid configuration")
}

pub(crate) fn check(flags: &ServerFlags, format: OutputFormat) -> anyhow::Result<()> {
    let config = load_config(flags)?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let config = config.redacted();
    crate::output::print(format, &config, || {
        let mut text = toml::to_string(&config).unwrap_or_default();
        text.insert_str(0, "# the configuration is valid\n");
        text
    })
}

pub(crate) async fn serve(flags: &ServerFlags) -> anyhow::Result<()> {
    let config = load_config(flags)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    // Clients trust a certificate from Kiln's own CA through this file.
    let own_ca = config.tls.as_ref().filter(|tls| tls.cert_file.is_none()).map(|tls| tls.ca_cert_file.clone());
    let handle = kiln_server::start(config).await.context("starting the server")?;
    // Plain, on its own line: scripts and tests that asked for port 0 read the port here.
    // The boot listener's line first: a reader that waits for "listening on" has both.
    if let Some(address) = handle.boot_addr() {
        eprintln!("kiln: boot listener on http://{address}");
    }
    eprintln!("kiln: listening on {scheme}://{}", handle.local_addr());
    if let Some(ca) = own_ca {
        eprintln!("The API's certificate is from Kiln's CA; clients trust it with:\n  export KILN_CA={}", ca.display());
    }
    if let Some(path) = handle.admin_token_file() {
        eprintln!("The administrator's API token is in {}:\n  export KILN_TOKEN=$(cat {})", path.display(), path.display());
    }
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing a SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing in-flight requests"),
    }
    handle.shutdown().await;
    Ok(())
}
