//! A small HTTP/1.1 client over plain TCP: all the agent needs from the server (JSON calls
//! and one streamed download with ranges), without an async runtime or a TLS stack in the
//! ramdisk. One connection per request keeps failure handling simple.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The server as the kernel command line names it: `http://HOST:PORT`.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub host_port: String,
    pub token: String,
    pub timeout: Duration,
}

impl Server {
    pub(crate) fn parse(url: &str, token: &str) -> anyhow::Result<Server> {
        let rest = url.strip_prefix("http://").with_context(|| format!("server URL '{url}' must start with http://"))?;
        let host_port = rest.trim_end_matches('/').to_owned();
        if host_port.is_empty() || host_port.contains('/') {
            bail!("server URL '{url}' must be http://HOST[:PORT]");
        }
        let host_port = if host_port.contains(':') { host_port } else { format!("{host_port}:80") };
        Ok(Server { host_port, token: token.to_owned(), timeout: Duration::from_secs(30) })
    }

    /// Sends a request; the response's body is left to read from the returned value.
    pub(crate) fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> anyhow::Result<Response> {
        let mut stream = TcpStream::connect(&self.host_port).with_context(|| format!("connecting to {}", self.host_port))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true)?;
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
        Response::read(stream)
    }

    /// Sends `body` as the request body in chunked transfer encoding (its length is not
    /// known ahead: a compressed disk) and decodes the JSON answer.
    pub(crate) fn put_stream(&self, path: &str, body: &mut dyn Read) -> anyhow::Result<serde_json::Value> {
        let mut stream = TcpStream::connect(&self.host_port).with_context(|| format!("connecting to {}", self.host_port))?;
        stream.set_read_timeout(Some(self.timeout * 10))?;
        stream.set_write_timeout(Some(self.timeout))?;
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
    body: std::io::Take<BufReader<TcpStream>>,
    pub content_length: Option<u64>,
}

impl Response {
    fn read(stream: TcpStream) -> anyhow::Result<Response> {
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
