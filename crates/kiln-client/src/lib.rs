//! A small HTTP client for Kiln's REST API, used by the CLI and by tests.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Kiln server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered with an error; `message` is its explanation.
    #[error("{message} [{} {code}]", status.as_u16())]
    Api { status: StatusCode, code: String, message: String },
    #[error("unexpected response from {url}: {message}")]
    Decode { url: String, message: String },
    #[error("the CA certificate to trust is not PEM certificates")]
    CaCertificate(#[source] reqwest::Error),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one Kiln server with one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("building an HTTP client with default settings");
        Client { http, base_url: base_url.trim_end_matches('/').to_owned(), token }
    }

    /// A client that also trusts the CA certificates in `ca_pem` (Kiln's own CA: the CLI's
    /// `KILN_CA`), besides the usual roots.
    pub fn with_ca(base_url: &str, token: Option<String>, ca_pem: &[u8]) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder().user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        for certificate in reqwest::Certificate::from_pem_bundle(ca_pem).map_err(ClientError::CaCertificate)? {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(ClientError::CaCertificate)?;
        Ok(Client { http, base_url: base_url.trim_end_matches('/').to_owned(), token })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    /// A GET whose answer is text (rendered templates, vendor-data).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self.authorized(Method::GET, path).send().await.map_err(|error| self.unreachable(&error))?;
        if !response.status().is_success() {
            return Err(Self::error_from(response).await);
        }
        response.text().await.map_err(|error| self.unreachable(&error))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    /// A DELETE with a JSON body (deleting boot parameters by target).
    pub async fn send_delete_with_body<B: Serialize>(&self, path: &str, body: &B) -> Result<serde_json::Value, ClientError> {
        self.send(Method::DELETE, path, Some(body)).await
    }

    /// Sends a request and decodes the JSON answer. An empty answer (204) decodes as JSON
    /// `null`, so callers that expect nothing ask for `serde_json::Value` or `()`.
    async fn send<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response =
            request.send().await.map_err(|error| ClientError::Unreachable { url: self.base_url.clone(), message: root_cause(&error) })?;
        let status = response.status();
        let bytes =
            response.bytes().await.map_err(|error| ClientError::Unreachable { url: self.base_url.clone(), message: root_cause(&error) })?;
        if !status.is_success() {
            let parsed: Option<kiln_types::api::ErrorBody> = serde_json::from_slice(&bytes).ok();
            return Err(match parsed {
                Some(body) => ClientError::Api { status, code: body.error.code, message: body.error.message },
                None => ClientError::Api { status, code: "http".to_owned(), message: String::from_utf8_lossy(&bytes).trim().to_owned() },
            });
        }
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        serde_json::from_slice(bytes).map_err(|error| ClientError::Decode { url, message: error.to_string() })
    }
}

/// Appends per request when uploading; a broken request resumes from the server's offset.
const UPLOAD_RETRIES: u32 = 5;

impl Client {
    fn authorized(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base_url.clone(), message: root_cause(error) }
    }

    async fn error_from(response: reqwest::Response) -> ClientError {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<kiln_types::api::ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api { status, code: body.error.code, message: body.error.message },
            Err(_) => ClientError::Api { status, code: "http".to_owned(), message: String::from_utf8_lossy(&bytes).trim().to_owned() },
        }
    }

    /// Sends a file as a resumable upload for `image` and returns the upload's id. `progress` is called
    /// with the number of bytes the server has. A request that breaks off is resumed from
    /// the offset the server reports, a few times, before giving up.
    pub async fn upload_file(
        &self,
        path: &std::path::Path,
        image: &str,
        checksum: Option<&str>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<String, ClientError> {
        let input = kiln_types::image::UploadInput { image: Some(image.to_owned()), project: None, checksum: checksum.map(str::to_owned) };
        let upload: kiln_types::image::Upload = self.post("/v1/uploads", &input).await?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|error| ClientError::Decode { url: path.display().to_string(), message: error.to_string() })?
            .len();
        let mut offset = 0u64;
        let mut failures = 0;
        loop {
            if offset == size && size > 0 {
                return Ok(upload.id);
            }
            match self.append_from(&upload.id, path, offset, progress).await {
                Ok(new_offset) => {
                    offset = new_offset;
                    if offset >= size {
                        return Ok(upload.id);
                    }
                }
                Err(error) => {
                    failures += 1;
                    // A broken connection, or an offset that moved under us, is worth resuming;
                    // an answer such as a full disk or a refusal is not.
                    let resumable = match &error {
                        ClientError::Unreachable { .. } => true,
                        ClientError::Api { status, .. } => *status == StatusCode::CONFLICT,
                        ClientError::Decode { .. } | ClientError::CaCertificate(_) => false,
                    };
                    if failures > UPLOAD_RETRIES || !resumable {
                        return Err(error);
                    }
                    let current: kiln_types::image::Upload = self.get(&format!("/v1/uploads/{}", upload.id)).await?;
                    offset = current.offset;
                }
            }
        }
    }

    async fn append_from(
        &self,
        id: &str,
        path: &std::path::Path,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, ClientError> {
        use futures::StreamExt as _;
        // The file is read on a thread of its own in large blocks, so that reading and
        // sending overlap and no read waits for a thread-pool hop.
        let file_error = |error: std::io::Error| ClientError::Decode { url: path.display().to_string(), message: error.to_string() };
        let mut file = std::fs::File::open(path).map_err(file_error)?;
        let length = file.metadata().map_err(file_error)?.len().saturating_sub(offset);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).map_err(file_error)?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        std::thread::spawn(move || {
            use std::io::Read as _;
            loop {
                let mut buffer = vec![0u8; 1 << 20];
                let chunk = match file.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        buffer.truncate(n);
                        Ok(bytes::Bytes::from(buffer))
                    }
                    Err(error) => Err(error),
                };
                let failed = chunk.is_err();
                if sender.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(offset));
        let counter = sent.clone();
        let stream = futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) })
            .map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                chunk
            });
        let request = self
            .authorized(Method::PATCH, &format!("/v1/uploads/{id}"))
            .header("upload-offset", offset)
            .header(reqwest::header::CONTENT_TYPE, "application/offset+octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(stream));
        let sending = request.send();
        tokio::pin!(sending);
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
        let response = loop {
            tokio::select! {
                response = &mut sending => break response.map_err(|error| self.unreachable(&error))?,
                _ = ticker.tick() => progress(sent.load(std::sync::atomic::Ordering::Relaxed)),
            }
        };
        if !response.status().is_success() {
            return Err(Self::error_from(response).await);
        }
        let upload: kiln_types::image::Upload =
            response.json().await.map_err(|error| ClientError::Decode { url: self.base_url.clone(), message: error.to_string() })?;
        progress(upload.offset);
        Ok(upload.offset)
    }

    /// Streams `path` (an API path answering with bytes) into `writer`, starting at byte
    /// `from`; returns the total size. `progress` gets the bytes written so far.
    pub async fn download_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        path: &str,
        from: u64,
        writer: &mut W,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, ClientError> {
        use futures::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        let mut request = self.authorized(Method::GET, path);
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = request.send().await.map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Self::error_from(response).await);
        }
        if from > 0 && status != StatusCode::PARTIAL_CONTENT {
            return Err(ClientError::Decode { url: path.to_owned(), message: "the server ignored the range; cannot resume".to_owned() });
        }
        let total = from + response.content_length().unwrap_or(0);
        let mut written = from;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| self.unreachable(&error))?;
            writer
                .write_all(&chunk)
                .await
                .map_err(|error| ClientError::Decode { url: path.to_owned(), message: format!("writing: {error}") })?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        writer.flush().await.map_err(|error| ClientError::Decode { url: path.to_owned(), message: format!("writing: {error}") })?;
        Ok(written)
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Percent-encodes one path segment or query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
