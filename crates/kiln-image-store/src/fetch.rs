//! Fetching an image from a URL into a spool file: `http://`, `https://`, or `file://` under
//! allowed directories; conditional on the validators an earlier fetch recorded, so an
//! unchanged source is not downloaded again (Ironic's image cache rule).

use std::path::{Path, PathBuf};

use crate::egress::EgressPolicy;
use crate::pump::{PumpError, pump_into_spool};
use crate::{Checksum, Digests, SpoolFile};

/// Where an import reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(String),
    File(PathBuf),
}

/// What a source said about its version, to send back next time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The result of a fetch.
pub enum Fetch {
    /// The source has not changed since `Validators` were recorded; nothing was read.
    NotModified,
    Fetched {
        digests: Digests,
        head: Vec<u8>,
        validators: Validators,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{url}' is not an http://, https:// or file:// URL")]
    UnsupportedUrl { url: String },
    #[error("{path} is not under a directory the server allows imports from")]
    FileNotAllowed { path: String },
    #[error("reading {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("importing {url}")]
    Egress {
        url: String,
        #[source]
        refused: crate::egress::EgressRefused,
    },
    #[error("requesting {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: PumpError,
    },
    #[error("the checksum file {url} has no line for '{name}'")]
    ChecksumNotListed { url: String, name: String },
    #[error("the checksum file {url}: {message}")]
    ChecksumFile { url: String, message: String },
}

impl Source {
    /// Parses a URL, allowing `file://` only below one of `allowed_dirs`. The path is
    /// checked as written (`..` resolved without the file system) before anything on disk
    /// is looked at, so that every path outside gets the same answer whether it exists or
    /// not; then again with symbolic links resolved, so that no link leads out.
    /// An `http(s)://` URL whose host is an address is checked against `egress` here; a
    /// name is checked when it resolves.
    pub fn parse(url: &str, allowed_dirs: &[PathBuf], egress: &EgressPolicy) -> Result<Source, FetchError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::UnsupportedUrl { url: url.to_owned() })?;
            if let Some(address) = crate::egress::literal_address(&parsed) {
                egress
                    .check_host(parsed.host_str().unwrap_or_default(), address)
                    .map_err(|refused| FetchError::Egress { url: url.to_owned(), refused })?;
            }
            return Ok(Source::Http(url.to_owned()));
        }
        let Some(path) = url.strip_prefix("file://") else {
            return Err(FetchError::UnsupportedUrl { url: url.to_owned() });
        };
        let not_allowed = || FetchError::FileNotAllowed { path: path.to_owned() };
        let written = lexically_normal(Path::new(path)).ok_or_else(not_allowed)?;
        // An allowed directory as configured, or as it resolves (it may be a link).
        let inside = allowed_dirs.iter().any(|directory| {
            lexically_normal(directory).is_some_and(|directory| written.starts_with(directory))
                || std::fs::canonicalize(directory).is_ok_and(|directory| written.starts_with(directory))
        });
        if !inside {
            return Err(not_allowed());
        }
        let resolved = std::fs::canonicalize(&written).map_err(|source| FetchError::File { path: path.to_owned(), source })?;
        let allowed = allowed_dirs
            .iter()
            .filter_map(|directory| std::fs::canonicalize(directory).ok())
            .any(|directory| resolved.starts_with(&directory));
        if allowed { Ok(Source::File(resolved)) } else { Err(not_allowed()) }
    }

    /// The file name the URL ends in, as checksum files list it.
    pub fn file_name(&self) -> String {
        match self {
            Source::Http(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path.rsplit('/').next().unwrap_or(path).to_owned()
            }
            Source::File(path) => path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }
}

/// An absolute path with `.` and `..` resolved as written, without the file system; `None`
/// for a relative path.
fn lexically_normal(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if !path.is_absolute() {
        return None;
    }
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    Some(normal)
}

fn file_validators(metadata: &std::fs::Metadata) -> Validators {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|age| format!("{}.{:09} {}", age.as_secs(), age.subsec_nanos(), metadata.len()));
    Validators { etag: None, last_modified: modified }
}

/// Reads `source` into `spool`, unless `previous` validators show it unchanged.
pub async fn fetch(
    client: &reqwest::Client,
    source: &Source,
    spool: SpoolFile,
    previous: Option<&Validators>,
) -> Result<Fetch, FetchError> {
    match source {
        Source::File(path) => {
            let display = path.display().to_string();
            let file_error = |source| FetchError::File { path: display.clone(), source };
            let file = tokio::fs::File::open(path).await.map_err(file_error)?;
            let validators = file_validators(&file.metadata().await.map_err(file_error)?);
            if previous.is_some_and(|previous| previous.last_modified.is_some() && previous.last_modified == validators.last_modified) {
                return Ok(Fetch::NotModified);
            }
            let mut stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
            let (spool, pumped) = pump_into_spool(spool, &mut stream).await;
            pumped.map_err(|source| FetchError::Download { url: format!("file://{display}"), source })?;
            let (digests, head) =
                spool.finish().map_err(|source| FetchError::Download { url: display, source: PumpError::Spool(source) })?;
            Ok(Fetch::Fetched { digests, head, validators })
        }
        Source::Http(url) => {
            let mut request = client.get(url);
            if let Some(previous) = previous {
                if let Some(etag) = &previous.etag {
                    request = request.header(reqwest::header::IF_NONE_MATCH, etag);
                }
                if let Some(modified) = &previous.last_modified {
                    request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
                }
            }
            let response = request.send().await.map_err(|source| FetchError::Request { url: url.clone(), source })?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_MODIFIED && previous.is_some() {
                return Ok(Fetch::NotModified);
            }
            if !status.is_success() {
                return Err(FetchError::Status { url: url.clone(), status: status.as_u16() });
            }
            let header =
                |name| response.headers().get(name).and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok()).map(str::to_owned);
            let validators = Validators { etag: header(reqwest::header::ETAG), last_modified: header(reqwest::header::LAST_MODIFIED) };
            let mut stream = response.bytes_stream();
            let (spool, pumped) = pump_into_spool(spool, &mut stream).await;
            pumped.map_err(|source| FetchError::Download { url: url.clone(), source })?;
            let (digests, head) =
                spool.finish().map_err(|source| FetchError::Download { url: url.clone(), source: PumpError::Spool(source) })?;
            Ok(Fetch::Fetched { digests, head, validators })
        }
    }
}

/// Reads a checksum file (`HEX  NAME` lines as `sha256sum` writes them, `ALGO (NAME) = HEX`
/// as BSD tools do, or one bare digest) and returns the digest listed for `name`.
pub async fn fetch_checksum(
    client: &reqwest::Client,
    url: &str,
    allowed_dirs: &[PathBuf],
    egress: &EgressPolicy,
    name: &str,
) -> Result<Checksum, FetchError> {
    let text = match Source::parse(url, allowed_dirs, egress)? {
        Source::File(path) => {
            tokio::fs::read_to_string(&path).await.map_err(|source| FetchError::File { path: path.display().to_string(), source })?
        }
        Source::Http(url) => {
            let response = client.get(&url).send().await.map_err(|source| FetchError::Request { url: url.clone(), source })?;
            if !response.status().is_success() {
                return Err(FetchError::Status { url, status: response.status().as_u16() });
            }
            response.text().await.map_err(|source| FetchError::Request { url: url.clone(), source })?
        }
    };
    checksum_for(&text, name).map_err(|message| match message {
        None => FetchError::ChecksumNotListed { url: url.to_owned(), name: name.to_owned() },
        Some(message) => FetchError::ChecksumFile { url: url.to_owned(), message },
    })
}

/// The digest `text` lists for `name`. `Err(None)`: not listed.
pub fn checksum_for(text: &str, name: &str) -> Result<Checksum, Option<String>> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    for line in &lines {
        // BSD style: SHA256 (name) = hex
        if let Some((left, hex)) = line.split_once(" = ")
            && let Some((algorithm, rest)) = left.split_once(" (")
            && rest.strip_suffix(')') == Some(name)
        {
            return format!("{}:{}", algorithm.to_ascii_lowercase(), hex.trim()).parse().map_err(Some);
        }
        // GNU style: hex  name, or hex *name for binary mode
        let mut fields = line.split_whitespace();
        if let (Some(hex), Some(listed)) = (fields.next(), fields.next())
            && listed.trim_start_matches('*').rsplit('/').next() == Some(name)
        {
            return hex.parse().map_err(Some);
        }
    }
    match lines.as_slice() {
        [single] if !single.contains(char::is_whitespace) => single.parse().map_err(Some),
        _ => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn checksum_files_in_the_usual_shapes() {
        let sha = "a".repeat(64);
        let gnu = format!("{}  other.img\n{sha}  disk.qcow2\n", "b".repeat(64));
        assert_eq!(checksum_for(&gnu, "disk.qcow2").unwrap().hex, sha);
        let binary = format!("{sha} *images/disk.qcow2\n");
        assert_eq!(checksum_for(&binary, "disk.qcow2").unwrap().hex, sha);
        let bsd = format!("SHA256 (disk.qcow2) = {sha}\n");
        assert_eq!(checksum_for(&bsd, "disk.qcow2").unwrap().hex, sha);
        assert_eq!(checksum_for(&format!("{sha}\n"), "anything").unwrap().hex, sha);
        assert_eq!(checksum_for(&gnu, "missing.img").unwrap_err(), None);
    }

    #[test]
    fn file_urls_are_confined_to_allowed_directories() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("disk.img"), b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), allowed.path().join("link")).unwrap();
        let dirs = [allowed.path().to_owned()];
        let url = |path: &Path| format!("file://{}", path.display());
        assert!(matches!(Source::parse(&url(&allowed.path().join("disk.img")), &dirs, &EgressPolicy::default()), Ok(Source::File(_))));
        for refused in [outside.path().join("secret"), allowed.path().join("link"), allowed.path().join("../").join("x")] {
            assert!(Source::parse(&url(&refused), &dirs, &EgressPolicy::default()).is_err(), "{} must be refused", refused.display());
        }
        assert!(matches!(Source::parse("ftp://host/x", &dirs, &EgressPolicy::default()), Err(FetchError::UnsupportedUrl { .. })));
    }

    /// Outside the allowed directories, a path that exists and one that does not get the
    /// same answer: nothing on disk is looked at for them.
    #[test]
    fn paths_outside_the_allowed_directories_look_alike_whether_they_exist_or_not() {
        let allowed = tempfile::tempdir().unwrap();
        let dirs = [allowed.path().to_owned()];
        let answer =
            |path: &str| Source::parse(&format!("file://{path}"), &dirs, &EgressPolicy::default()).map(|_| ()).unwrap_err().to_string();
        let existing = answer("/etc/passwd");
        let missing = answer("/etc/no-such-file-here");
        assert_eq!(existing.replace("/etc/passwd", "PATH"), missing.replace("/etc/no-such-file-here", "PATH"));
        assert!(matches!(Source::parse("file:///etc/passwd", &dirs, &EgressPolicy::default()), Err(FetchError::FileNotAllowed { .. })));
        let escaping = format!("{}/../../etc/passwd", allowed.path().display());
        assert!(matches!(
            Source::parse(&format!("file://{escaping}"), &dirs, &EgressPolicy::default()),
            Err(FetchError::FileNotAllowed { .. })
        ));
        assert!(matches!(Source::parse("file://relative/path", &dirs, &EgressPolicy::default()), Err(FetchError::FileNotAllowed { .. })));
    }
}
