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

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None).await
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
