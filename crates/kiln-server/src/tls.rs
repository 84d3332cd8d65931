//! TLS on the API listener (rustls): a certificate and key from files, or, with none given,
//! a server certificate issued at start by Kiln's own CA (made on first start, its key 0600
//! in the data directory; replicas are given one CA's files, never one each). SIGHUP loads
//! the certificate again; connections already open keep theirs. A client that speaks plain
//! HTTP to the listener gets a plain-HTTP answer telling it to use `https://`.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// `[tls]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsSettings {
    /// The server's certificate chain and key (PEM), when the site gives them.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Kiln's CA, made here on first start unless given (the same files to every replica).
    pub ca_cert_file: PathBuf,
    pub ca_key_file: PathBuf,
    /// Names and addresses the issued certificate is for, besides the listen address and the
    /// public URL's host.
    pub names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds a PEM block that is not a certificate")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no PEM private key")]
    NoKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("Kiln's CA is half there: {present} exists and {missing} does not (restore it, or remove both to make a new CA)")]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("the certificate and key do not make a TLS configuration")]
    Rustls {
        #[source]
        source: rustls::Error,
    },
    #[error("issuing a certificate with Kiln's CA ({ca_cert})")]
    Issue {
        ca_cert: PathBuf,
        #[source]
        source: rcgen::Error,
    },
}

/// The certificate the listener presents now, replaced by [`Certificates::reload`].
pub struct Certificates {
    settings: TlsSettings,
    /// The listen address and the public URL's host: always in an issued certificate.
    own_names: Vec<String>,
    current: RwLock<Served>,
}

/// What the listener serves now: the TLS configuration, and the certificate its chain ends
/// in (the one clients trust: Kiln's CA, or the last of a site's chain).
struct Served {
    config: Arc<rustls::ServerConfig>,
    trust_anchor: CertificateDer<'static>,
}

impl Certificates {
    pub fn load(settings: TlsSettings, own_names: Vec<String>) -> Result<Arc<Certificates>, TlsError> {
        let served = build(&settings, &own_names)?;
        Ok(Arc::new(Certificates { settings, own_names, current: RwLock::new(served) }))
    }

    /// Reads the files again (or issues again); on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let served = build(&self.settings, &self.own_names)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = served;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).config.clone()
    }
}

impl kiln_api::boot::TrustAnchorSource for Certificates {
    fn trust_anchor_der(&self) -> Vec<u8> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).trust_anchor.to_vec()
    }
}

fn build(settings: &TlsSettings, own_names: &[String]) -> Result<Served, TlsError> {
    let (chain, key) = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_file), Some(key_file)) => (read_chain(cert_file)?, read_key(key_file)?),
        _ => issue(settings, own_names)?,
    };
    let trust_anchor = chain.last().expect("a chain read or issued holds a certificate").clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // rustls speaks TLS 1.2 and 1.3 only, with forward-secret AEAD suites only.
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls { source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Served { config: Arc::new(config), trust_anchor })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate { path: path.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| TlsError::NoKey { path: path.to_owned(), source })
}

/// A new CA's certificate: Kiln's, for a hundred years, issuing only server certificates.
fn new_ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Kiln CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// The CA that issues the server's certificate: read from its files (Kiln's own from an
/// earlier start, or a site's given to every replica), or made now when neither exists, the
/// key 0600. Returns what to sign with and the CA certificate as clients hold it.
fn certificate_authority(settings: &TlsSettings) -> Result<(rcgen::Certificate, rcgen::KeyPair, CertificateDer<'static>), TlsError> {
    let failed = |source| TlsError::Issue { ca_cert: settings.ca_cert_file.clone(), source };
    let (cert_file, key_file) = (&settings.ca_cert_file, &settings.ca_key_file);
    match (cert_file.exists(), key_file.exists()) {
        (true, true) => {
            let key = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(&read(key_file)?)).map_err(failed)?;
            let held = read_chain(cert_file)?.swap_remove(0);
            // Signing needs the CA as rcgen's certificate: its subject and key are the ones
            // clients hold, which is all a certificate it issues is checked against.
            let ca = rcgen::CertificateParams::from_ca_cert_der(&held).map_err(failed)?.self_signed(&key).map_err(failed)?;
            Ok((ca, key, held))
        }
        (false, false) => {
            let key = rcgen::KeyPair::generate().map_err(failed)?;
            let ca = new_ca_params().self_signed(&key).map_err(failed)?;
            write_new_files(&[(key_file, key.serialize_pem().as_bytes(), 0o600), (cert_file, ca.pem().as_bytes(), 0o644)])?;
            tracing::info!(ca = %cert_file.display(), "made Kiln's CA: give its certificate to clients (KILN_CA)");
            let held = ca.der().clone();
            Ok((ca, key, held))
        }
        (true, false) => Err(TlsError::HalfCa { present: cert_file.clone(), missing: key_file.clone() }),
        (false, true) => Err(TlsError::HalfCa { present: key_file.clone(), missing: cert_file.clone() }),
    }
}

/// A server certificate from the CA, for `own_names` and `[tls] names`.
fn issue(settings: &TlsSettings, own_names: &[String]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let failed = |source| TlsError::Issue { ca_cert: settings.ca_cert_file.clone(), source };
    let (ca, ca_key, held) = certificate_authority(settings)?;
    let mut names: Vec<String> = own_names.iter().chain(&settings.names).cloned().collect();
    names.sort();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Kiln API");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(397 * 86_400)).into();
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let certificate = params.signed_by(&key, &ca, &ca_key).map_err(failed)?;
    let key = PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![certificate.der().clone(), held], key))
}

/// Writes each file under a temporary name, then renames them in order, so that none is
/// ever seen half-written (called when none of them exists).
fn write_new_files(files: &[(&PathBuf, &[u8], u32)]) -> Result<(), TlsError> {
    for (path, bytes, mode) in files {
        write_file(&partial_path(path), bytes, *mode)?;
    }
    for (path, _, _) in files {
        std::fs::rename(partial_path(path), path).map_err(|source| TlsError::Write { path: (*path).clone(), source })?;
    }
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write { path: path.to_owned(), source };
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory).map_err(failed)?;
    }
    // A partial file left by an earlier crash is written over.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(failed)?;
    io::Write::write_all(&mut file, bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}

/// How long a client has to start its handshake and finish it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way; more connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
/// Handshakes under way from one address: beyond, its new connections are closed, so that
/// one client holding connections open without a handshake cannot take every slot.
const MAX_HANDSHAKES_PER_CLIENT: usize = 16;

/// Handshakes under way per client address; a [`ClientSlot`] gives its place back.
#[derive(Default)]
struct HandshakesPerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

struct ClientSlot {
    clients: Arc<HandshakesPerClient>,
    address: std::net::IpAddr,
}

impl HandshakesPerClient {
    fn claim(self: &Arc<Self>, address: std::net::IpAddr) -> Option<ClientSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(ClientSlot { clients: Arc::clone(self), address })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.clients.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The API listener under TLS, for `axum::serve`: handshakes run as tasks of their own, so
/// that a slow client delays nobody else, and finished ones are handed to the server.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The acceptor ended (it does not, but for its listener failing): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Serves TLS on `listener` with the certificate `certificates` hold at each handshake.
pub fn listen(listener: TcpListener, certificates: Arc<Certificates>) -> io::Result<TlsListener> {
    let local_addr = listener.local_addr()?;
    let (sender, ready) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_client = Arc::new(HandshakesPerClient::default());
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a TLS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = per_client.claim(peer.ip()) else {
                tracing::debug!(%peer, "too many TLS handshakes from one address; connection closed");
                continue;
            };
            let (sender, config) = (sender.clone(), certificates.current());
            tokio::spawn(async move {
                let _held = (permit, slot);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, config)).await {
                    Ok(Ok(Some(tls))) => {
                        let _ = sender.send((tls, peer)).await;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { local_addr, ready, acceptor })
}

/// What a client that sent plain HTTP reads: the one answer it can understand.
const PLAIN_HTTP_REFUSAL: &str = "This Kiln listener speaks HTTPS only: use an https:// URL.\n";

fn plain_http_refusal() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PLAIN_HTTP_REFUSAL}",
        PLAIN_HTTP_REFUSAL.len()
    )
}

/// A TLS stream, or `None` for a client that started with something other than a TLS
/// record (a handshake record's first byte is 22).
async fn handshake(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None); // Closed before saying anything (a port probe).
    }
    if first[0] != 22 {
        tracing::info!(peer = ?stream.peer_addr().ok(), "plain HTTP on the TLS listener refused");
        let mut stream = stream;
        stream.write_all(plain_http_refusal().as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    }
    tokio_rustls::TlsAcceptor::from(config).accept(stream).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn the_refusal_declares_its_own_length() {
        let text = plain_http_refusal();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head.lines().find_map(|line| line.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(declared, body.len());
    }

    #[test]
    fn kilns_ca_is_made_once_and_issues_for_the_names_after_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let settings = TlsSettings {
            cert_file: None,
            key_file: None,
            ca_cert_file: directory.path().join("tls/ca.crt"),
            ca_key_file: directory.path().join("tls/ca.key"),
            names: vec!["kiln.example.internal".into()],
        };
        let (chain, _) = issue(&settings, &["127.0.0.1".into()]).unwrap();
        let ca_pem = std::fs::read(&settings.ca_cert_file).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&settings.ca_key_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the CA key is the server's alone");
        // Again, as after a restart: the same CA, not a new one, and a chain it verifies.
        let (again, _) = issue(&settings, &["127.0.0.1".into()]).unwrap();
        assert_eq!(std::fs::read(&settings.ca_cert_file).unwrap(), ca_pem);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&ca_pem).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        for chain in [chain, again] {
            for name in ["kiln.example.internal", "127.0.0.1"] {
                let name = rustls::pki_types::ServerName::try_from(name).unwrap();
                let verified = verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], rustls::pki_types::UnixTime::now());
                assert!(verified.is_ok(), "{name:?}: {verified:?}");
            }
        }
    }
}
