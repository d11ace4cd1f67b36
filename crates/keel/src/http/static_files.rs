//! `/static` served from memory, the way Django's WhiteNoise does it.
//!
//! At start-up every regular file of the static directory within [`MAX_FILE_SIZE`] (and,
//! in path order, within [`MAX_TOTAL_SIZE`] altogether) is read into memory with its
//! `Content-Type`, `Content-Length`, a strong `ETag` (from a SHA-256 of the content) and
//! `Last-Modified`, so a `GET` or `HEAD` is answered without touching the disk. A background
//! task rescans the directory every [`REFRESH_INTERVAL`] (metadata only; a file is read again
//! only when its size or modification time changed), so an edited, added or deleted file is
//! served as it is on disk within about that long.
//!
//! Everything the index does not hold goes to tower-http's `ServeDir` exactly as before:
//! files over the caps or added since the last scan, directories (`index.html`), range
//! requests, other methods (405), and every path that names no indexed file, including `..`
//! and encoded variants of it (404). Symbolic links are never followed by the index, so
//! nothing outside the directory is ever preloaded (a link is left to `ServeDir`, which
//! follows it as before); hidden files are indexed, because `ServeDir` serves them too.

use std::{
    borrow::Cow,
    collections::HashMap,
    convert::Infallible,
    fs::File,
    io::{self, Read, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock, Weak},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use httpdate::HttpDate;
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};
use tower_http::services::ServeDir;

use crate::{
    http::{
        NoCompression,
        conditional::{ETag, IfMatch, IfNoneMatch},
    },
    shutdown::Shutdown,
};

/// Largest file preloaded into memory (1 MiB); larger files are streamed from disk.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Most bytes preloaded altogether (64 MiB); files are admitted in path order until the
/// next one would not fit, and the rest are streamed from disk.
pub const MAX_TOTAL_SIZE: u64 = 64 * 1024 * 1024;

/// How often the directory is rescanned, so a change on disk is served within about this long.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// `Cache-Control` of preloaded files: WhiteNoise's default for files whose name carries no
/// content hash (`WHITENOISE_MAX_AGE` = 60 s), so browsers revalidate edited files soon.
pub const CACHE_CONTROL: &str = "public, max-age=60";

/// Latest time `httpdate` can format (the start of year 10000); it panics beyond.
const LAST_HTTP_DATE_SECS: u64 = 253_402_300_800;

/// The `/static` service: preloaded files from memory, everything else from `ServeDir`.
#[derive(Clone)]
pub struct StaticFiles {
    shared: Arc<Shared>,
    fallback: ServeDir,
}

struct Shared {
    root: PathBuf,
    limits: Limits,
    index: RwLock<Arc<Index>>,
}

/// Size caps of the index.
#[derive(Debug, Clone, Copy)]
struct Limits {
    file: u64,
    total: u64,
}

impl Limits {
    const DEFAULT: Self = Self {
        file: MAX_FILE_SIZE,
        total: MAX_TOTAL_SIZE,
    };
}

/// What one scan found.
#[derive(Default)]
struct Index {
    /// Preloaded files by path relative to the root, `/`-separated.
    files: HashMap<String, Arc<Entry>>,
    /// Files that could not be read, so they are retried (and logged) only once they change.
    failed: HashMap<String, Signature>,
    /// Sum of the preloaded files' sizes.
    bytes: u64,
}

/// What tells that a file changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    len: u64,
    modified: Option<SystemTime>,
}

impl Signature {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// A preloaded file and its precomputed headers.
struct Entry {
    signature: Signature,
    content_type: HeaderValue,
    last_modified: Option<(HttpDate, HeaderValue)>,
    identity: Variant,
    /// The gzip encoding, kept when it saves at least a tenth of the bytes.
    gzip: Option<Variant>,
}

/// One encoding of a preloaded file.
struct Variant {
    body: Bytes,
    content_length: HeaderValue,
    tag: ETag,
    etag: HeaderValue,
}

impl Variant {
    fn new(body: Bytes, tag: ETag) -> Self {
        Self {
            content_length: HeaderValue::from(body.len()),
            etag: tag.header_value(),
            tag,
            body,
        }
    }
}

/// Smallest file worth compressing.
const MIN_GZIP_SIZE: usize = 256;

/// The gzip encoding of `body`, when it is at most nine tenths of its size. Done once per
/// file version (as WhiteNoise does at `collectstatic`), never per request.
fn gzip(body: &[u8]) -> io::Result<Option<Bytes>> {
    if body.len() < MIN_GZIP_SIZE {
        return Ok(None);
    }
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(body)?;
    let compressed = encoder.finish()?;
    Ok((compressed.len() <= body.len() / 10 * 9).then(|| Bytes::from(compressed)))
}

/// Whether `Accept-Encoding` accepts gzip (listed, or `*`, without `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let accepted = parts
            .filter_map(|param| param.strip_prefix("q="))
            .all(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(accepted);
        } else if coding == "*" {
            any = Some(accepted);
        }
    }
    gzip.or(any).unwrap_or(false)
}

impl Entry {
    fn new(key: &str, body: Bytes, signature: Signature) -> io::Result<Self> {
        let content_type = mime_guess::from_path(key).first_raw().map_or(
            HeaderValue::from_static("application/octet-stream"),
            HeaderValue::from_static,
        );
        let digest = hex::encode(&Sha256::digest(&body)[..16]);
        let last_modified = match signature.modified.and_then(http_date) {
            Some(date) => Some((
                date,
                HeaderValue::try_from(date.to_string()).map_err(io::Error::other)?,
            )),
            None => None,
        };
        // Each encoding is its own representation, so it gets its own strong tag.
        let gzip = gzip(&body)?.map(|compressed| {
            Variant::new(compressed, ETag::strong(format_args!("{digest}-gzip")))
        });
        Ok(Self {
            signature,
            content_type,
            last_modified,
            identity: Variant::new(body, ETag::strong(&digest)),
            gzip,
        })
    }

    /// The encoding to send for a request with these headers.
    fn variant(&self, headers: &HeaderMap) -> &Variant {
        match &self.gzip {
            Some(gzip) if accepts_gzip(headers) => gzip,
            _ => &self.identity,
        }
    }

    fn response(&self, method: &Method, variant: &Variant) -> Response {
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(variant.body.clone())
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type.clone());
        headers.insert(header::CONTENT_LENGTH, variant.content_length.clone());
        if std::ptr::eq(variant, &self.identity) {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        } else {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        self.validators(headers, variant);
        // The body is already in its final encoding: compressing per request would only
        // cost time (and for incompressible files, bytes).
        response.extensions_mut().insert(NoCompression);
        response
    }

    fn not_modified(&self, variant: &Variant) -> Response {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        self.validators(response.headers_mut(), variant);
        response
    }

    /// The headers a 304 repeats from the 200 (RFC 9110 §15.4.5).
    fn validators(&self, headers: &mut HeaderMap, variant: &Variant) {
        headers.insert(header::ETAG, variant.etag.clone());
        if let Some((_, value)) = &self.last_modified {
            headers.insert(header::LAST_MODIFIED, value.clone());
        }
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
        if self.gzip.is_some() {
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
    }
}

/// A modification time as an HTTP date, when it is one `httpdate` can represent.
fn http_date(time: SystemTime) -> Option<HttpDate> {
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < LAST_HTTP_DATE_SECS).then(|| HttpDate::from(time))
}

impl StaticFiles {
    /// Preloads `root` and starts the task that keeps the index fresh until `shutdown`
    /// begins (or the service is dropped). A missing or unreadable directory gives an empty
    /// index: every request then goes to `ServeDir`, as it would without preloading.
    pub async fn start(root: PathBuf, shutdown: Shutdown) -> Self {
        let shared = Arc::new(Shared {
            root,
            limits: Limits::DEFAULT,
            index: RwLock::new(Arc::default()),
        });
        shared.refresh().await;
        let index = shared.snapshot();
        tracing::info!(
            dir = %shared.root.display(),
            files = index.files.len(),
            bytes = index.bytes,
            "static files preloaded"
        );
        tokio::spawn(keep_fresh(Arc::downgrade(&shared), shutdown));
        Self {
            fallback: ServeDir::new(&shared.root),
            shared,
        }
    }

    /// The answer from memory, or `None` when `ServeDir` must answer.
    fn respond(&self, request: &Request) -> Option<Response> {
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let key = request_key(request.uri().path())?;
        let entry = self.shared.lookup(&key)?;
        let last_modified = entry.last_modified.as_ref().map(|(date, _)| *date);
        let variant = entry.variant(request.headers());
        match evaluate(request.headers(), &variant.tag, last_modified) {
            Condition::NotModified => Some(entry.not_modified(variant)),
            Condition::PreconditionFailed => Some(StatusCode::PRECONDITION_FAILED.into_response()),
            // ServeDir serves ranges (and answers unsatisfiable ones) from the file on disk.
            Condition::Serve if request.headers().contains_key(header::RANGE) => None,
            Condition::Serve => Some(entry.response(method, variant)),
        }
    }
}

impl Service<Request> for StaticFiles {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response, Infallible>>,
        BoxFuture<'static, Result<Response, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(response) = self.respond(&request) {
            return Either::Left(ready(Ok(response)));
        }
        let fallback = self.fallback.clone();
        Either::Right(Box::pin(async move {
            let response = fallback.oneshot(request).await?;
            Ok(response.into_response())
        }))
    }
}

/// The index key a request path names: without leading slashes, percent-decoded. Keys hold
/// only real file names joined by `/`, so `.`, `..` and empty segments never match one.
fn request_key(path: &str) -> Option<Cow<'_, str>> {
    let path = path.trim_start_matches('/');
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()
}

/// What the conditional headers of a `GET` or `HEAD` ask for (RFC 9110 §13.2.2).
#[derive(Debug, PartialEq, Eq)]
enum Condition {
    Serve,
    NotModified,
    PreconditionFailed,
}

fn evaluate(headers: &HeaderMap, etag: &ETag, last_modified: Option<HttpDate>) -> Condition {
    let date = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .map(HttpDate::from)
    };
    // A file server does not refuse a malformed tag list: it just matches nothing.
    if headers.contains_key(header::IF_MATCH) {
        if !IfMatch::from_headers(headers).is_ok_and(|tags| tags.matches(etag)) {
            return Condition::PreconditionFailed;
        }
    } else if let (Some(since), Some(modified)) = (date(header::IF_UNMODIFIED_SINCE), last_modified)
    {
        if modified > since {
            return Condition::PreconditionFailed;
        }
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        if IfNoneMatch::from_headers(headers).is_ok_and(|tags| tags.is_fresh(etag)) {
            return Condition::NotModified;
        }
    } else if let (Some(since), Some(modified)) = (date(header::IF_MODIFIED_SINCE), last_modified) {
        if modified <= since {
            return Condition::NotModified;
        }
    }
    Condition::Serve
}

impl Shared {
    fn snapshot(&self) -> Arc<Index> {
        Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn lookup(&self, key: &str) -> Option<Arc<Entry>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index.files.get(key).cloned()
    }

    /// Rescans the directory off the runtime and swaps the new index in.
    async fn refresh(self: &Arc<Self>) {
        let previous = self.snapshot();
        let (root, limits) = (self.root.clone(), self.limits);
        match tokio::task::spawn_blocking(move || scan(&root, limits, &previous)).await {
            Ok(index) => {
                *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
            }
            Err(error) => tracing::warn!(%error, "static file scan failed"),
        }
    }
}

/// Rescans every [`REFRESH_INTERVAL`] until shutdown begins or the service is gone.
async fn keep_fresh(shared: Weak<Shared>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the index was just built.
    interval.tick().await;
    let stopped = shutdown.started();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = interval.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.refresh().await;
    }
}

/// A regular file found by [`walk`].
struct Found {
    key: String,
    path: PathBuf,
    signature: Signature,
}

/// Builds the index of `root`, reusing the entries of `previous` whose signature is unchanged.
fn scan(root: &Path, limits: Limits, previous: &Index) -> Index {
    let mut found = walk(root);
    found.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut index = Index::default();
    let mut read = 0_usize;
    for Found {
        key,
        path,
        signature,
    } in found
    {
        if signature.len > limits.file || index.bytes + signature.len > limits.total {
            continue;
        }
        if let Some(entry) = previous.files.get(&key) {
            if entry.signature == signature {
                index.bytes += signature.len;
                index.files.insert(key, Arc::clone(entry));
                continue;
            }
        }
        if previous.failed.get(&key) == Some(&signature) {
            index.failed.insert(key, signature);
            continue;
        }
        match read_entry(&path, &key, signature) {
            Ok(Some(entry)) => {
                read += 1;
                index.bytes += signature.len;
                index.files.insert(key, Arc::new(entry));
            }
            // It changed while being read: the next scan tries again.
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot preload static file; it is served from disk");
                index.failed.insert(key, signature);
            }
        }
    }
    let removed = previous
        .files
        .keys()
        .filter(|key| !index.files.contains_key(*key))
        .count();
    if read > 0 || removed > 0 {
        tracing::debug!(
            read,
            removed,
            files = index.files.len(),
            bytes = index.bytes,
            "static files rescanned"
        );
    }
    index
}

/// Every regular file under `root`, without following symbolic links and skipping names that
/// are not UTF-8 (no request can name them). Unreadable directories are left to `ServeDir`.
fn walk(root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) => {
                // Logged at debug: a missing directory is normal, and this repeats every scan.
                tracing::debug!(dir = %dir.display(), %error, "cannot list static directory");
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // DirEntry::file_type and ::metadata do not follow symbolic links.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push((entry.path(), key));
            } else if file_type.is_file() {
                if let Ok(metadata) = entry.metadata() {
                    found.push(Found {
                        key,
                        path: entry.path(),
                        signature: Signature::of(&metadata),
                    });
                }
            }
        }
    }
    found
}

/// Reads a file expected to have `signature`; `None` when it changed since it was listed or
/// while it was read.
fn read_entry(path: &Path, key: &str, signature: Signature) -> io::Result<Option<Entry>> {
    let mut file = File::open(path)?;
    let before = file.metadata()?;
    if !before.is_file() || Signature::of(&before) != signature {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(usize::try_from(signature.len).unwrap_or(0));
    // One byte more than expected tells that it grew.
    Read::by_ref(&mut file)
        .take(signature.len + 1)
        .read_to_end(&mut body)?;
    if body.len() as u64 != signature.len || Signature::of(&file.metadata()?) != signature {
        return Ok(None);
    }
    Entry::new(key, Bytes::from(body), signature).map(Some)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const TAG: &str = "\"0123456789abcdef0123456789abcdef\"";

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn check(pairs: &[(header::HeaderName, &str)]) -> Condition {
        let modified = httpdate::parse_http_date("Wed, 01 Jan 2025 12:00:00 GMT").unwrap();
        evaluate(
            &headers(pairs),
            &ETag::strong(TAG.trim_matches('"')),
            Some(modified.into()),
        )
    }

    #[test]
    fn conditional_headers_are_evaluated_in_rfc_9110_order() {
        use Condition::{NotModified, PreconditionFailed, Serve};
        use header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE};
        const BEFORE: &str = "Tue, 31 Dec 2024 12:00:00 GMT";
        const SAME: &str = "Wed, 01 Jan 2025 12:00:00 GMT";
        const WEAK: &str = "W/\"0123456789abcdef0123456789abcdef\"";
        let cases: [(&[(header::HeaderName, &str)], Condition); 16] = [
            (&[], Serve),
            (&[(IF_NONE_MATCH, TAG)], NotModified),
            (&[(IF_NONE_MATCH, WEAK)], NotModified),
            (&[(IF_NONE_MATCH, "*")], NotModified),
            (&[(IF_NONE_MATCH, "\"a\", \"b\"")], Serve),
            (
                &[(IF_NONE_MATCH, "\"a\""), (IF_NONE_MATCH, TAG)],
                NotModified,
            ),
            (&[(IF_MODIFIED_SINCE, SAME)], NotModified),
            (&[(IF_MODIFIED_SINCE, BEFORE)], Serve),
            (&[(IF_MODIFIED_SINCE, "yesterday")], Serve),
            // If-None-Match wins over If-Modified-Since.
            (
                &[(IF_NONE_MATCH, "\"a\""), (IF_MODIFIED_SINCE, SAME)],
                Serve,
            ),
            (&[(IF_MATCH, TAG)], Serve),
            (&[(IF_MATCH, "*")], Serve),
            (&[(IF_MATCH, WEAK)], PreconditionFailed),
            (&[(IF_UNMODIFIED_SINCE, BEFORE)], PreconditionFailed),
            // If-Match wins over If-Unmodified-Since.
            (&[(IF_MATCH, TAG), (IF_UNMODIFIED_SINCE, BEFORE)], Serve),
            (&[(IF_MATCH, TAG), (IF_NONE_MATCH, TAG)], NotModified),
        ];
        for (pairs, expected) in cases {
            assert_eq!(check(pairs), expected, "{pairs:?}");
        }
    }

    #[test]
    fn request_keys_are_decoded_and_never_climb_out() {
        assert_eq!(
            request_key("/css/site.css").as_deref(),
            Some("css/site.css")
        );
        assert_eq!(request_key("//a%20b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(request_key("/%ff"), None);
        let files = scan_of(&fixture().0);
        for path in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/./hello.txt",
        ] {
            let key = request_key(path).unwrap();
            assert!(!files.files.contains_key(key.as_ref()), "{path}");
        }
    }

    #[test]
    fn dates_httpdate_cannot_format_are_left_out() {
        assert!(http_date(UNIX_EPOCH - Duration::from_secs(1)).is_none());
        assert!(http_date(UNIX_EPOCH + Duration::from_secs(LAST_HTTP_DATE_SECS)).is_none());
        assert!(http_date(UNIX_EPOCH).is_some());
    }

    /// `parent/secret.txt` and `parent/static/` with nested, hidden and linked files.
    fn fixture() -> (PathBuf, tempfile::TempDir) {
        let parent = tempfile::tempdir().unwrap();
        fs::write(parent.path().join("secret.txt"), "outside").unwrap();
        let root = parent.path().join("static");
        fs::create_dir_all(root.join("css/deep")).unwrap();
        fs::create_dir_all(root.join(".well-known")).unwrap();
        fs::write(root.join("hello.txt"), "hello\n").unwrap();
        fs::write(root.join("css/site.css"), "body{}").unwrap();
        fs::write(root.join("css/deep/x.js"), "1").unwrap();
        fs::write(root.join(".well-known/security.txt"), "Contact: x").unwrap();
        fs::write(root.join("big.bin"), vec![0_u8; 100]).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(parent.path().join("secret.txt"), root.join("link.txt"))
                .unwrap();
            std::os::unix::fs::symlink(parent.path(), root.join("up")).unwrap();
        }
        (root, parent)
    }

    fn scan_of(root: &Path) -> Index {
        scan(root, Limits::DEFAULT, &Index::default())
    }

    fn keys(index: &Index) -> Vec<&str> {
        let mut keys: Vec<&str> = index.files.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn scan_indexes_regular_files_and_follows_no_links() {
        let (root, _parent) = fixture();
        let index = scan_of(&root);
        assert_eq!(
            keys(&index),
            [
                ".well-known/security.txt",
                "big.bin",
                "css/deep/x.js",
                "css/site.css",
                "hello.txt"
            ]
        );
        let entry = &index.files["css/site.css"];
        assert_eq!(entry.identity.body.as_ref(), b"body{}");
        assert_eq!(entry.content_type, "text/css");
        assert_eq!(entry.identity.content_length, "6");
        assert_eq!(entry.identity.etag.len(), 34);
        assert!(entry.last_modified.is_some());
        assert_eq!(index.bytes, 6 + 6 + 1 + 10 + 100);
    }

    #[test]
    fn scan_respects_the_caps() {
        let (root, _parent) = fixture();
        let per_file = scan(
            &root,
            Limits {
                file: 99,
                total: 1024,
            },
            &Index::default(),
        );
        assert!(!per_file.files.contains_key("big.bin"));
        // In path order: security.txt (10), big.bin (100) does not fit, x.js (1), site.css (6).
        let total = scan(
            &root,
            Limits {
                file: 1024,
                total: 20,
            },
            &Index::default(),
        );
        assert_eq!(
            keys(&total),
            [".well-known/security.txt", "css/deep/x.js", "css/site.css"]
        );
        assert_eq!(total.bytes, 17);
    }

    #[test]
    fn rescans_reuse_unchanged_files_and_drop_deleted_ones() {
        let (root, _parent) = fixture();
        let first = scan_of(&root);
        fs::write(root.join("hello.txt"), "hello again\n").unwrap();
        fs::remove_file(root.join("css/site.css")).unwrap();
        let second = scan(&root, Limits::DEFAULT, &first);
        assert!(Arc::ptr_eq(
            &first.files["big.bin"],
            &second.files["big.bin"]
        ));
        assert_eq!(
            second.files["hello.txt"].identity.body.as_ref(),
            b"hello again\n"
        );
        assert_ne!(
            second.files["hello.txt"].identity.etag,
            first.files["hello.txt"].identity.etag
        );
        assert!(!second.files.contains_key("css/site.css"));
    }
}
