//! The boot listener: the HTTP port machines boot from. Files (kernels, initrds, root
//! images, iPXE binaries) go from the page cache to the socket with `sendfile(2)`, never
//! through this process's memory; every other request (boot scripts, cloud-init, images kept
//! in S3) is handed to the node-facing router.
//!
//! hyper has no way to send a file from the kernel, so this listener speaks HTTP/1.1 itself,
//! for the little a booting machine needs: GET and HEAD, keep-alive and pipelining, single
//! byte ranges, ETag and Last-Modified validators. Request heads are bounded, slow clients
//! time out, and a malformed request gets 400 and a closed connection, never a crash.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{self, HeaderMap, HeaderValue, Method, StatusCode, header};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpListener, TcpStream};
use tower::Service as _;

/// The largest request head accepted (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The largest request body handed to the router (boot paths take none, or a small one).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send a request head, and to take each part of an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle keep-alive connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Router answers up to this size are written in one piece.
const SMALL_ANSWER_BYTES: u64 = 256 * 1024;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 4096;

/// A file to send, found by a [`FileResolver`].
#[derive(Debug)]
pub struct StaticFile {
    pub file: std::fs::File,
    pub size: u64,
    /// Quoted, as sent.
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: &'static str,
    pub cache_control: Option<&'static str>,
}

/// What a request path names.
#[derive(Debug)]
pub enum Resolved {
    File(StaticFile),
    /// A path the file server owns that names nothing it may send (absent, or outside its
    /// directory).
    NotFound,
    /// Not a file: the router answers.
    Route,
}

/// Maps requests to files. Implemented over [`crate::ApiState`] by
/// [`crate::boot::resolve_boot_file`]. The headers are there for files only some may read (a
/// deploy's disk image, for its agent's token); a request the resolver does not let through
/// goes to the router, which explains the refusal.
pub trait FileResolver: Send + Sync + 'static {
    fn resolve<'a>(&'a self, path: &'a str, headers: &'a HeaderMap) -> futures::future::BoxFuture<'a, Resolved>;
}

/// A running boot listener. [`BootListener::shutdown`] drains it; dropping it stops it at
/// once.
pub struct BootListener {
    pub local_addr: SocketAddr,
    stopping: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BootListener {
    /// Stops accepting, lets every request in flight finish (a download completes) and
    /// closes idle connections; whatever is still running after `deadline` is cut off.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stopping.send(true);
        let Some(mut task) = self.task.take() else { return };
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(
                deadline_seconds = deadline.as_secs(),
                "boot listener: connections still open after the drain deadline; cut off"
            );
            task.abort();
        }
    }
}

impl Drop for BootListener {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Serves `listener` until the returned handle is dropped.
pub fn start(listener: TcpListener, resolver: Arc<dyn FileResolver>, router: Router) -> io::Result<BootListener> {
    let local_addr = listener.local_addr()?;
    let (stopping, stop_requested) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        let mut stop = stop_requested.clone();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopping| *stopping) => break,
                accepted = accept(&listener, &slots) => accepted,
            };
            let Some((stream, peer, slot)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let (resolver, router, stopping) = (resolver.clone(), router.clone(), stop_requested.clone());
            connections.spawn(async move {
                if let Err(error) = serve_connection(stream, peer, resolver.as_ref(), router, stopping).await {
                    tracing::debug!(%peer, %error, "boot listener: connection ended");
                }
                drop(slot);
            });
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
        // Draining: no new connections; the ones open finish their request and close.
        drop(listener);
        while connections.join_next().await.is_some() {}
    });
    Ok(BootListener { local_addr, stopping, task: Some(task) })
}

/// The next connection and its slot; `None` after an accept error (out of descriptors and
/// the like), having waited a little rather than spin.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, slot)),
        Err(error) => {
            tracing::warn!(%error, "boot listener: accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// One parsed request head.
#[derive(Debug)]
struct RequestHead {
    method: Method,
    target: String,
    version: http::Version,
    headers: HeaderMap,
    /// The length of the head in the buffer.
    length: usize,
}

impl RequestHead {
    fn keep_alive(&self) -> bool {
        let connection = self.headers.get(header::CONNECTION).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let says = |word: &str| connection.split(',').any(|token| token.trim().eq_ignore_ascii_case(word));
        match self.version {
            http::Version::HTTP_10 => says("keep-alive"),
            _ => !says("close"),
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// Why a request head could not be taken.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// More bytes are needed.
    Partial,
    Malformed(String),
    TooLarge,
}

fn parse_head(buffer: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Err(HeadError::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(error.to_string())),
    };
    let method =
        Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| HeadError::Malformed("unknown method".to_owned()))?;
    let target = request.path.unwrap_or_default().to_owned();
    if !target.starts_with('/') {
        return Err(HeadError::Malformed(format!("'{target}' is not an origin-form request target")));
    }
    let version = match request.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut map = HeaderMap::with_capacity(request.headers.len());
    for entry in request.headers.iter() {
        let name = http::HeaderName::from_bytes(entry.name.as_bytes()).map_err(|_| HeadError::Malformed("bad header name".to_owned()))?;
        let value = HeaderValue::from_bytes(entry.value).map_err(|_| HeadError::Malformed("bad header value".to_owned()))?;
        map.append(name, value);
    }
    Ok(RequestHead { method, target, version, headers: map, length })
}

/// A single byte range, end exclusive, or why the header cannot be served.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// `Range: bytes=…` for a file of `size` bytes, honoured only when `If-Range` (if any)
/// names the current ETag. Several ranges get the whole file, which RFC 9110 allows.
fn requested_range(headers: &HeaderMap, size: u64, etag: &str) -> RangeRequest {
    let Some(range) = headers.get(header::RANGE).and_then(|value| value.to_str().ok()) else { return RangeRequest::Whole };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|value| value.to_str().ok())
        && if_range.trim() != etag
    {
        return RangeRequest::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return RangeRequest::Whole };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Whole };
    let (first, last) = (first.trim(), last.trim());
    let parse = |text: &str| text.parse::<u64>().ok();
    let (start, end) = match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match parse(last) {
            Some(0) | None => return RangeRequest::Unsatisfiable,
            Some(suffix) => (size.saturating_sub(suffix), size),
        },
        (false, true) => match parse(first) {
            Some(start) => (start, size),
            None => return RangeRequest::Whole,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(last)) if last >= start => (start, last.saturating_add(1).min(size)),
            _ => return RangeRequest::Whole,
        },
        (true, true) => return RangeRequest::Whole,
    };
    if start >= size { RangeRequest::Unsatisfiable } else { RangeRequest::Part(start, end) }
}

/// Whether the client's copy is current: `If-None-Match` when present, else
/// `If-Modified-Since` (to the second, as HTTP dates are).
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    if let Some(candidates) = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()) {
        return candidates.split(',').any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate == etag || candidate.strip_prefix("W/") == Some(etag)
        });
    }
    let since =
        headers.get(header::IF_MODIFIED_SINCE).and_then(|value| value.to_str().ok()).and_then(|text| httpdate::parse_http_date(text).ok());
    let seconds = |time: SystemTime| time.duration_since(SystemTime::UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    since.is_some_and(|since| seconds(last_modified) <= seconds(since))
}

/// The status line and headers of a file answer.
fn file_head(file: &StaticFile, status: StatusCode, range: Option<(u64, u64)>, keep_alive: bool) -> String {
    let length = range.map_or(file.size, |(start, end)| end - start);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nAccept-Ranges: bytes\r\nETag: {}\r\nLast-Modified: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        httpdate::fmt_http_date(SystemTime::now()),
        file.content_type,
        file.etag,
        httpdate::fmt_http_date(file.last_modified),
    );
    if let Some(cache_control) = file.cache_control {
        head.push_str(&format!("Cache-Control: {cache_control}\r\n"));
    }
    if let Some((start, end)) = range {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{}\r\n", end - 1, file.size));
    }
    head.push_str(if keep_alive { "\r\n" } else { "Connection: close\r\n\r\n" });
    head
}

/// 304: the validators again, and no body.
fn not_modified_head(file: &StaticFile, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 304 Not Modified\r\nDate: {}\r\nETag: {}\r\nLast-Modified: {}\r\n{}\r\n",
        httpdate::fmt_http_date(SystemTime::now()),
        file.etag,
        httpdate::fmt_http_date(file.last_modified),
        if keep_alive { "" } else { "Connection: close\r\n" },
    )
}

/// A short plain-text answer. `with_body` is false for HEAD, whose answer has the headers
/// of a GET and no body: a body there would be read as the next answer.
fn short_answer(status: StatusCode, extra_headers: &str, keep_alive: bool, with_body: bool) -> String {
    let body = format!("{}\n", status.canonical_reason().unwrap_or_default());
    format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra_headers}{}\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        httpdate::fmt_http_date(SystemTime::now()),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
        if with_body { body.as_str() } else { "" },
    )
}

async fn with_timeout<T>(future: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, future).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stalled"))?
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    resolver: &dyn FileResolver,
    router: Router,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        // Read until a whole head is buffered (pipelined requests may already be).
        let head = loop {
            match parse_head(&buffer) {
                Ok(head) => break head,
                Err(HeadError::Partial) => {}
                Err(HeadError::TooLarge) => {
                    let answer = short_answer(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "", false, true);
                    return with_timeout(stream.write_all(answer.as_bytes())).await;
                }
                Err(HeadError::Malformed(reason)) => {
                    tracing::debug!(%peer, %reason, "boot listener: malformed request");
                    return with_timeout(stream.write_all(short_answer(StatusCode::BAD_REQUEST, "", false, true).as_bytes())).await;
                }
            }
            let idle = buffer.is_empty();
            if idle && *stopping.borrow() {
                return Ok(()); // draining: an idle connection closes between requests
            }
            let wait = if idle { IDLE_TIMEOUT } else { IO_TIMEOUT };
            let mut chunk = [0u8; 4096];
            let read = tokio::select! {
                read = tokio::time::timeout(wait, stream.read(&mut chunk)) => match read {
                    Ok(read) => read?,
                    Err(_) => return Ok(()),
                },
                _ = stopping.wait_for(|stopping| *stopping), if idle => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        buffer.drain(..head.length);
        // Draining: this answer is the connection's last, and says so.
        let keep_alive = head.keep_alive() && !*stopping.borrow();
        if head.headers.contains_key(header::TRANSFER_ENCODING) {
            // No boot path takes a streamed body; refusing it keeps request framing simple.
            return with_timeout(stream.write_all(short_answer(StatusCode::NOT_IMPLEMENTED, "", false, true).as_bytes())).await;
        }
        let body_length =
            match head.headers.get(header::CONTENT_LENGTH).map(|value| value.to_str().ok().and_then(|text| text.parse::<usize>().ok())) {
                None => 0,
                Some(Some(length)) if length <= MAX_BODY_BYTES => length,
                Some(Some(_)) => {
                    return with_timeout(stream.write_all(short_answer(StatusCode::PAYLOAD_TOO_LARGE, "", false, true).as_bytes())).await;
                }
                Some(None) => {
                    return with_timeout(stream.write_all(short_answer(StatusCode::BAD_REQUEST, "", false, true).as_bytes())).await;
                }
            };
        while buffer.len() < body_length {
            let mut chunk = [0u8; 4096];
            let read = with_timeout(stream.read(&mut chunk)).await?;
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        let body: Vec<u8> = buffer.drain(..body_length).collect();

        let is_read = head.method == Method::GET || head.method == Method::HEAD;
        let resolved = if is_read { resolver.resolve(head.path(), &head.headers).await } else { Resolved::Route };
        match resolved {
            Resolved::File(file) => {
                let size = file.size;
                send_file(&mut stream, &head, file, keep_alive).await?;
                let path = kiln_types::bmc::redacted_medium_url(head.path());
                tracing::info!(%peer, path = %path, method = %head.method, size, "boot file sent");
            }
            Resolved::NotFound => {
                with_timeout(stream.write_all(short_answer(StatusCode::NOT_FOUND, "", keep_alive, head.method != Method::HEAD).as_bytes()))
                    .await?
            }
            Resolved::Route => route(&mut stream, peer, &head, body, router.clone(), keep_alive).await?,
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

async fn send_file(stream: &mut TcpStream, head: &RequestHead, file: StaticFile, keep_alive: bool) -> io::Result<()> {
    if not_modified(&head.headers, &file.etag, file.last_modified) {
        return with_timeout(stream.write_all(not_modified_head(&file, keep_alive).as_bytes())).await;
    }
    let (status, range) = match requested_range(&head.headers, file.size, &file.etag) {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Part(start, end) => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
        RangeRequest::Unsatisfiable => {
            let extra = format!("Content-Range: bytes */{}\r\n", file.size);
            return with_timeout(
                stream
                    .write_all(short_answer(StatusCode::RANGE_NOT_SATISFIABLE, &extra, keep_alive, head.method != Method::HEAD).as_bytes()),
            )
            .await;
        }
    };
    let response_head = file_head(&file, status, range, keep_alive);
    let (start, end) = range.unwrap_or((0, file.size));
    if head.method == Method::HEAD || start == end {
        return with_timeout(stream.write_all(response_head.as_bytes())).await;
    }
    // MSG_MORE: the head waits to share a packet with the file's first bytes.
    write_more(stream, response_head.as_bytes()).await?;
    send_range(stream, &file.file, start, end).await
}

/// Writes `bytes` with MSG_MORE, so the kernel holds them for the data that follows.
async fn write_more(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        with_timeout(stream.writable()).await?;
        match stream.try_io(Interest::WRITABLE, || socket2::SockRef::from(stream).send_with_flags(bytes, libc::MSG_MORE)) {
            Ok(sent) => bytes = &bytes[sent..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Sends `[start, end)` of `file` with sendfile(2): from the page cache to the socket, no
/// copy through this process.
async fn send_range(stream: &TcpStream, file: &std::fs::File, start: u64, end: u64) -> io::Result<()> {
    let mut offset = start as libc::off_t;
    let end = end as libc::off_t;
    while offset < end {
        with_timeout(stream.writable()).await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let count = (end - offset).min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the duration of the call (the stream and
            // the file are borrowed), and `offset` is a valid, exclusively borrowed off_t.
            let sent = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
            if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
        });
        match result {
            // The file is shorter than when it was opened: the answer cannot be completed,
            // and closing the connection tells the client so.
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent")),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Hands a request to the router and writes its answer: with Content-Length when the
/// router set one, chunked otherwise.
async fn route(
    stream: &mut TcpStream,
    peer: SocketAddr,
    head: &RequestHead,
    body: Vec<u8>,
    mut router: Router,
    keep_alive: bool,
) -> io::Result<()> {
    let mut request = http::Request::builder().method(head.method.clone()).uri(head.target.as_str()).version(head.version);
    if let Some(headers) = request.headers_mut() {
        *headers = head.headers.clone();
    }
    let Ok(mut request) = request.body(Body::from(body)) else {
        return with_timeout(stream.write_all(short_answer(StatusCode::BAD_REQUEST, "", false, true).as_bytes())).await;
    };
    request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    let response = match router.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|text| text.parse::<u64>().ok());
    let body_allowed = head.method != Method::HEAD && parts.status != StatusCode::NOT_MODIFIED && parts.status != StatusCode::NO_CONTENT;
    let chunked = body_allowed && length.is_none();
    let mut text = format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or_default());
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        text.push_str(name.as_str());
        text.push_str(": ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        text.push_str("\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        text.push_str(&format!("Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())));
    }
    if chunked {
        text.push_str("Transfer-Encoding: chunked\r\n");
    } else if length.is_none() && body_allowed {
        text.push_str("Content-Length: 0\r\n");
    }
    if !keep_alive {
        text.push_str("Connection: close\r\n");
    }
    text.push_str("\r\n");
    let mut frames = body.into_data_stream();
    // A small answer (a script, a cloud-init document, an error) leaves in one write, head
    // and body together, rather than in a packet each.
    if body_allowed && length.is_some_and(|length| length <= SMALL_ANSWER_BYTES) {
        let mut answer = text.into_bytes();
        while let Some(frame) = frames.next().await {
            answer.extend_from_slice(&frame.map_err(io::Error::other)?);
        }
        return with_timeout(stream.write_all(&answer)).await;
    }
    with_timeout(stream.write_all(text.as_bytes())).await?;
    if !body_allowed {
        return Ok(());
    }
    while let Some(frame) = frames.next().await {
        let data = frame.map_err(io::Error::other)?;
        if data.is_empty() {
            continue;
        }
        if chunked {
            with_timeout(stream.write_all(format!("{:x}\r\n", data.len()).as_bytes())).await?;
            with_timeout(stream.write_all(&data)).await?;
            with_timeout(stream.write_all(b"\r\n")).await?;
        } else {
            with_timeout(stream.write_all(&data)).await?;
        }
    }
    if chunked {
        with_timeout(stream.write_all(b"0\r\n\r\n")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
