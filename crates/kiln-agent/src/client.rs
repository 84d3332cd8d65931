//! A small HTTP/1.1 client over TCP: all the agent needs from the server (JSON calls and
//! one streamed download with ranges), without an async runtime. Plain HTTP to the boot
//! listener; HTTPS (rustls) to an API listener that speaks it, trusting exactly the one
//! certificate the boot script names by digest. One connection per request keeps failure
//! handling simple.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, ServerName};

/// The largest certificate the agent takes as its trust anchor.
const MAX_TRUST_ANCHOR_BYTES: u64 = 64 << 10;

/// A connection to the server: a TCP stream, or TLS over one.
trait Connection: Read + Write + Send {}

impl<T: Read + Write + Send> Connection for T {}

/// The server as the kernel command line names it: `http://HOST:PORT`, or `https://HOST:PORT`
/// with the certificate to trust there.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub host_port: String,
    pub token: String,
    pub timeout: Duration,
    tls: Option<Tls>,
}

/// What an HTTPS connection checks the server against.
#[derive(Clone)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Tls({:?})", self.name)
    }
}

/// `HOST:PORT` of an `http://` or `https://` URL with nothing after it, the port defaulted.
fn host_port(url: &str, rest: &str, default_port: u16) -> anyhow::Result<String> {
    let host_port = rest.trim_end_matches('/').to_owned();
    if host_port.is_empty() || host_port.contains('/') {
        bail!("server URL '{url}' must be SCHEME://HOST[:PORT]");
    }
    // `[::1]` has colons and no port: only digits after the last colon are one.
    let has_port = host_port.rsplit_once(':').is_some_and(|(_, port)| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
    Ok(if has_port { host_port } else { format!("{host_port}:{default_port}") })
}

impl Server {
    pub(crate) fn parse(url: &str, token: &str) -> anyhow::Result<Server> {
        let rest = url.strip_prefix("http://").with_context(|| format!("server URL '{url}' must start with http://"))?;
        Ok(Server { host_port: host_port(url, rest, 80)?, token: token.to_owned(), timeout: Duration::from_secs(30), tls: None })
    }

    /// An `https://` server whose certificate chain must end in `trust_anchor`, and name the
    /// URL's host.
    pub(crate) fn parse_https(url: &str, token: &str, trust_anchor: CertificateDer<'static>) -> anyhow::Result<Server> {
        let rest = url.strip_prefix("https://").with_context(|| format!("server URL '{url}' must start with https://"))?;
        let host_port = host_port(url, rest, 443)?;
        let host = host_port.rsplit_once(':').map_or(host_port.as_str(), |(host, _)| host);
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .with_context(|| format!("'{host}' in '{url}' is not a host name or address"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust_anchor).context("the API's certificate is not one a TLS client can trust")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Some(Tls { config: Arc::new(config), name });
        Ok(Server { host_port, token: token.to_owned(), timeout: Duration::from_secs(30), tls })
    }

    /// The server's URL, for messages.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.host_port)
    }

    fn connect(&self, read_timeout: Duration) -> anyhow::Result<Box<dyn Connection>> {
        let stream = TcpStream::connect(&self.host_port).with_context(|| format!("connecting to {}", self.host_port))?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true)?;
        let Some(tls) = &self.tls else { return Ok(Box::new(stream)) };
        let connection = rustls::ClientConnection::new(Arc::clone(&tls.config), tls.name.clone()).context("starting TLS")?;
        let mut stream = rustls::StreamOwned::new(connection, stream);
        // The handshake now, so that a server with another certificate fails here, by name.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).with_context(|| format!("TLS with {}", self.host_port))?;
        }
        Ok(Box::new(stream))
    }

    /// The certificate the HTTPS API is trusted through: fetched from this (plain HTTP) boot
    /// listener and taken only if its SHA-256 is `digest`, which the boot script carried.
    pub(crate) fn fetch_trust_anchor(&self, digest: &str) -> anyhow::Result<CertificateDer<'static>> {
        use sha2::Digest as _;
        let mut response = self.request("GET", "/boot/v1/api-ca", &[], b"")?;
        if response.status != 200 {
            bail!("the boot listener answered {} for the API's certificate", response.status);
        }
        let mut der = Vec::new();
        (&mut response).take(MAX_TRUST_ANCHOR_BYTES).read_to_end(&mut der).context("reading the API's certificate")?;
        let fetched = crate::io::hex(&sha2::Sha256::digest(&der));
        if !fetched.eq_ignore_ascii_case(digest) {
            bail!("the API's certificate from the boot listener has SHA-256 {fetched}, not the {digest} of kiln.api_ca=");
        }
        Ok(CertificateDer::from(der))
    }

    /// Sends a request; the response's body is left to read from the returned value.
    pub(crate) fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> anyhow::Result<Response> {
        let mut stream = self.connect(self.timeout)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nUser-Agent: kiln-agent/{}\r\nContent-Length: {}\r\n",
            self.host_port,
            self.token,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).context("sending a request")?;
        stream.write_all(body).context("sending a request body")?;
        stream.flush().context("sending a request")?;
        Response::read(stream)
    }

    /// Sends `body` as the request body in chunked transfer encoding (its length is not
    /// known ahead: a compressed disk) and decodes the JSON answer.
    pub(crate) fn put_stream(&self, path: &str, body: &mut dyn Read) -> anyhow::Result<serde_json::Value> {
        let mut stream = self.connect(self.timeout * 10)?;
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nUser-Agent: kiln-agent/{}\r\n\
             Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            self.host_port,
            self.token,
            env!("CARGO_PKG_VERSION"),
        );
        stream.write_all(head.as_bytes()).context("sending a request")?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = body.read(&mut buffer).context("reading what to send")?;
            if read == 0 {
                break;
            }
            stream.write_all(format!("{read:x}\r\n").as_bytes())?;
            stream.write_all(&buffer[..read])?;
            stream.write_all(b"\r\n").context("sending the body")?;
        }
        stream.write_all(b"0\r\n\r\n").context("ending the body")?;
        stream.flush().context("ending the body")?;
        let mut response = Response::read(stream)?;
        let text = response.text()?;
        if !(200..300).contains(&response.status) {
            bail!(HttpStatus { status: response.status, body: text });
        }
        serde_json::from_str(&text).with_context(|| format!("decoding the answer to {path}"))
    }

    /// POSTs JSON and decodes a JSON answer (or nothing, for 204).
    pub(crate) fn post_json<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        value: &T,
    ) -> anyhow::Result<Option<R>> {
        let body = serde_json::to_vec(value)?;
        let mut response = self.request("POST", path, &[("Content-Type", "application/json".into())], &body)?;
        let text = response.text()?;
        if !(200..300).contains(&response.status) {
            bail!(HttpStatus { status: response.status, body: text });
        }
        if response.status == 204 || text.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("decoding the answer to {path}"))?))
    }
}

/// A status the server answered with, kept so callers can tell 401 from the rest.
#[derive(Debug)]
pub(crate) struct HttpStatus {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}: {}", self.status, self.body.trim())
    }
}

impl std::error::Error for HttpStatus {}

/// A response whose body is read as a stream, bounded by Content-Length.
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: std::io::Take<BufReader<Box<dyn Connection>>>,
    pub content_length: Option<u64>,
}

impl Response {
    fn read(stream: Box<dyn Connection>) -> anyhow::Result<Response> {
        // Small: it holds the headers; the body's reads are larger than it and bypass it,
        // so the image's bytes go from the socket straight into the caller's buffer.
        let mut reader = BufReader::with_capacity(16 * 1024, stream);
        let mut line = String::new();
        reader.read_line(&mut line).context("reading the status line")?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP status line: {:?}", line.trim_end()))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).context("reading headers")? == 0 {
                bail!("the connection closed inside the response headers");
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
            bail!("chunked responses are not supported by the agent");
        }
        let content_length = header("content-length").and_then(|value| value.parse().ok());
        let body = reader.take(content_length.unwrap_or(u64::MAX));
        Ok(Response { status, headers, body, content_length })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&mut self) -> anyhow::Result<String> {
        let mut text = String::new();
        self.body.by_ref().take(1 << 20).read_to_string(&mut text).context("reading a response")?;
        Ok(text)
    }
}

impl Read for Response {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.body.read(buffer)?;
        if read == 0 && !buffer.is_empty() && self.body.limit() > 0 && self.content_length.is_some() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection closed before the body ended"));
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    //! The trust-anchor fetch and HTTPS against real sockets and a real rustls server, beside
    //! the lab test that runs the same path in a booted deploy ramdisk (`tests/provision.rs`).

    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_get_their_default_ports_and_ipv6_hosts_keep_their_brackets() {
        assert_eq!(Server::parse("http://10.77.0.1", "t").unwrap().host_port, "10.77.0.1:80");
        assert_eq!(Server::parse("http://10.77.0.1:8081/", "t").unwrap().host_port, "10.77.0.1:8081");
        assert_eq!(Server::parse("http://[fd00::1]", "t").unwrap().host_port, "[fd00::1]:80");
        assert_eq!(Server::parse("http://[fd00::1]:8081", "t").unwrap().host_port, "[fd00::1]:8081");
        assert!(Server::parse("https://10.77.0.1", "t").is_err(), "https needs a certificate to trust");
        assert!(Server::parse("http://10.77.0.1/boot", "t").is_err());
    }

    /// Answers one request with `body`, as an HTTP/1.1 server over `stream`. The request's
    /// own body is read first: a socket closed with bytes unread is reset, and the client
    /// could then lose the answer.
    fn answer_one(mut stream: impl Read + Write, body: &[u8]) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let length = String::from_utf8_lossy(&head)
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: ").and_then(|value| value.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        let _ = std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink());
        let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }

    #[test]
    fn the_api_certificate_is_taken_only_with_the_digest_the_boot_script_named() {
        use sha2::Digest as _;
        let certificate = b"not really DER, but bytes with a digest".to_vec();
        let digest = crate::io::hex(&sha2::Sha256::digest(&certificate));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = certificate.clone();
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                answer_one(stream.unwrap(), &served);
            }
        });
        let boot = Server::parse(&url, "t").unwrap();
        assert_eq!(boot.fetch_trust_anchor(&digest.to_uppercase()).unwrap().as_ref(), &certificate[..]);
        let error = format!("{:#}", boot.fetch_trust_anchor(&"0".repeat(64)).unwrap_err());
        assert!(error.contains(&digest) && error.contains("kiln.api_ca="), "{error}");
        server.join().unwrap();
    }

    /// A CA and a certificate it issued for 127.0.0.1, as rustls wants them.
    fn issued_for_loopback() -> (CertificateDer<'static>, Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        (ca.der().clone(), vec![leaf.der().clone(), ca.der().clone()], key)
    }

    #[test]
    fn https_reaches_a_server_whose_chain_ends_in_the_anchor_and_no_other() {
        let (anchor, chain, key) = issued_for_loopback();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                answer_one(rustls::StreamOwned::new(connection, stream.unwrap()), b"{\"ok\": true}");
            }
        });
        let api = Server::parse_https(&url, "t", anchor).unwrap();
        assert_eq!(api.url(), url);
        let answer: Option<serde_json::Value> = api.post_json("/agent/v1/nodes/n/heartbeat", &serde_json::json!({})).unwrap();
        assert_eq!(answer, Some(serde_json::json!({"ok": true})));
        // Another CA's certificate is not trusted: the handshake fails, by the server's name.
        let (other_anchor, ..) = issued_for_loopback();
        let stranger = Server::parse_https(&url, "t", other_anchor).unwrap();
        let error = format!("{:#}", stranger.request("GET", "/healthz", &[], b"").err().unwrap());
        assert!(error.contains("TLS with 127.0.0.1:"), "{error}");
        server.join().unwrap();
    }
}
