//! `/static`: preloaded files answered from memory, everything else from disk as before.

mod common;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Backend, TestApp, header, problem};
use keel::http::static_files::{CACHE_CONTROL, MAX_FILE_SIZE, REFRESH_INTERVAL};

/// A keel serving `parent/static`, where `parent` also holds a `Cargo.toml` that must never
/// be served.
struct StaticApp {
    app: TestApp,
    root: PathBuf,
    _parent: tempfile::TempDir,
}

async fn spawn_with_files(files: &[(&str, &[u8])]) -> StaticApp {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join("Cargo.toml"), "outside").unwrap();
    let root = parent.path().join("static");
    for (name, content) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let static_dir = root.clone();
    let app = common::spawn_with(Backend::Sqlite, move |config| {
        config.static_dir = static_dir;
    })
    .await
    .unwrap();
    StaticApp {
        app,
        root,
        _parent: parent,
    }
}

fn last_modified_of(path: &Path) -> String {
    httpdate::fmt_http_date(std::fs::metadata(path).unwrap().modified().unwrap())
}

fn is_strong_etag(value: &str) -> bool {
    value.len() == 34
        && value.starts_with('"')
        && value.ends_with('"')
        && value[1..33].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A GET of `path` with extra request headers.
async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Polls `path` until `done` accepts the response, for at most five refresh intervals.
async fn poll_until(
    app: &TestApp,
    path: &str,
    what: &str,
    mut done: impl FnMut(&reqwest::Response) -> bool,
) -> reqwest::Response {
    let deadline = Instant::now() + REFRESH_INTERVAL * 5;
    loop {
        let response = app.get(path).send().await.unwrap();
        if done(&response) {
            return response;
        }
        assert!(Instant::now() < deadline, "{what}: still {response:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn preloaded_files_are_served_from_memory_with_cache_headers() {
    let css = b"body { color: #333 }\n";
    let s = spawn_with_files(&[
        ("hello.txt", b"hello\n"),
        ("css/site.css", css),
        (
            ".well-known/security.txt",
            b"Contact: mailto:security@example.com\n",
        ),
        ("with space.js", b"1;"),
    ])
    .await;

    let response = s.app.get("/static/css/site.css").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/css");
    assert_eq!(header(&response, "content-length"), css.len().to_string());
    assert_eq!(header(&response, "cache-control"), CACHE_CONTROL);
    assert_eq!(header(&response, "cache-control"), "public, max-age=60");
    assert_eq!(header(&response, "accept-ranges"), "bytes");
    assert_eq!(
        header(&response, "last-modified"),
        last_modified_of(&s.root.join("css/site.css"))
    );
    let etag = header(&response, "etag");
    assert!(is_strong_etag(&etag), "{etag}");
    // The stack still applies to preloaded files.
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert!(!header(&response, "x-request-id").is_empty());
    assert_eq!(response.bytes().await.unwrap().as_ref(), css);

    let response = s.app.get("/static/hello.txt").send().await.unwrap();
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_ne!(
        header(&response, "etag"),
        etag,
        "the tag follows the content"
    );
    assert_eq!(response.text().await.unwrap(), "hello\n");

    // Hidden files are served, as ServeDir serves them; names are percent-decoded.
    for (path, content) in [
        (
            "/static/.well-known/security.txt",
            "Contact: mailto:security@example.com\n",
        ),
        ("/static/with%20space.js", "1;"),
    ] {
        let response = s.app.get(path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(is_strong_etag(&header(&response, "etag")), "{path}");
        assert_eq!(response.text().await.unwrap(), content, "{path}");
    }
}

#[tokio::test]
async fn head_answers_the_headers_without_a_body() {
    let s = spawn_with_files(&[("app.js", b"console.log(1);\n")]).await;
    let get = s.app.get("/static/app.js").send().await.unwrap();
    let head = s
        .app
        .client
        .head(s.app.url("/static/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    for name in [
        "content-type",
        "content-length",
        "etag",
        "last-modified",
        "cache-control",
    ] {
        assert_eq!(header(&head, name), header(&get, name), "{name}");
    }
    assert_eq!(header(&head, "content-length"), "16");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_matching_if_none_match_answers_304() {
    let s = spawn_with_files(&[("hello.txt", b"hello\n")]).await;
    let response = s.app.get("/static/hello.txt").send().await.unwrap();
    let etag = header(&response, "etag");
    let last_modified = header(&response, "last-modified");

    for value in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        let response = get_with(&s.app, "/static/hello.txt", &[("if-none-match", &value)]).await;
        assert_eq!(response.status(), 304, "{value}");
        assert_eq!(header(&response, "etag"), etag);
        assert_eq!(header(&response, "cache-control"), CACHE_CONTROL);
        assert_eq!(header(&response, "last-modified"), last_modified);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let response = s
        .app
        .client
        .head(s.app.url("/static/hello.txt"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304, "HEAD");

    // A different tag gets the file, even when If-Modified-Since alone would give a 304.
    let response = get_with(
        &s.app,
        "/static/hello.txt",
        &[
            ("if-none-match", "\"stale\""),
            ("if-modified-since", &last_modified),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello\n");
}

#[tokio::test]
async fn if_modified_since_answers_304_unless_the_file_is_newer() {
    let s = spawn_with_files(&[("hello.txt", b"hello\n")]).await;
    let response = s.app.get("/static/hello.txt").send().await.unwrap();
    let last_modified = header(&response, "last-modified");
    let modified = httpdate::parse_http_date(&last_modified).unwrap();

    for since in [
        last_modified.clone(),
        httpdate::fmt_http_date(modified + Duration::from_secs(3600)),
    ] {
        let response = get_with(
            &s.app,
            "/static/hello.txt",
            &[("if-modified-since", &since)],
        )
        .await;
        assert_eq!(response.status(), 304, "{since}");
        assert!(is_strong_etag(&header(&response, "etag")));
        assert!(response.bytes().await.unwrap().is_empty());
    }
    for since in [
        httpdate::fmt_http_date(modified - Duration::from_secs(1)),
        "not a date".to_owned(),
    ] {
        let response = get_with(
            &s.app,
            "/static/hello.txt",
            &[("if-modified-since", &since)],
        )
        .await;
        assert_eq!(response.status(), 200, "{since}");
        assert_eq!(response.text().await.unwrap(), "hello\n");
    }
}

#[tokio::test]
async fn failed_preconditions_are_412_problems() {
    let s = spawn_with_files(&[("hello.txt", b"hello\n")]).await;
    let response = s.app.get("/static/hello.txt").send().await.unwrap();
    let etag = header(&response, "etag");
    let modified = httpdate::parse_http_date(&header(&response, "last-modified")).unwrap();

    let response = get_with(&s.app, "/static/hello.txt", &[("if-match", "\"stale\"")]).await;
    problem(response, 412).await;
    let response = s
        .app
        .get("/static/hello.txt")
        .header(
            "if-unmodified-since",
            httpdate::fmt_http_date(modified - Duration::from_secs(1)),
        )
        .send()
        .await
        .unwrap();
    problem(response, 412).await;
    let response = get_with(&s.app, "/static/hello.txt", &[("if-match", &etag)]).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn edited_and_added_files_are_served_new_within_seconds() {
    let s = spawn_with_files(&[("app.js", b"let version = 1;\n")]).await;
    let response = s.app.get("/static/app.js").send().await.unwrap();
    let old_etag = header(&response, "etag");
    assert_eq!(response.text().await.unwrap(), "let version = 1;\n");

    std::fs::write(s.root.join("app.js"), "let version = 22;\n").unwrap();
    let response = poll_until(&s.app, "/static/app.js", "the edit", |r| {
        r.headers().get("content-length").is_some_and(|v| v == "18")
    })
    .await;
    let new_etag = header(&response, "etag");
    assert!(is_strong_etag(&new_etag));
    assert_ne!(new_etag, old_etag);
    assert_eq!(response.text().await.unwrap(), "let version = 22;\n");
    // A client revalidating with the old tag gets the new file.
    let response = get_with(&s.app, "/static/app.js", &[("if-none-match", &old_etag)]).await;
    assert_eq!(response.status(), 200);

    // A new file is served at once (from disk), then from memory after the next scan.
    std::fs::create_dir(s.root.join("img")).unwrap();
    std::fs::write(s.root.join("img/new.svg"), "<svg/>").unwrap();
    let response = s.app.get("/static/img/new.svg").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "image/svg+xml");
    let response = poll_until(&s.app, "/static/img/new.svg", "the new file", |r| {
        r.headers().contains_key("etag")
    })
    .await;
    assert_eq!(header(&response, "cache-control"), CACHE_CONTROL);
    assert_eq!(response.text().await.unwrap(), "<svg/>");
}

#[tokio::test]
async fn a_deleted_file_becomes_a_404_problem() {
    let s = spawn_with_files(&[("old.txt", b"old\n"), ("kept.txt", b"kept\n")]).await;
    let response = s.app.get("/static/old.txt").send().await.unwrap();
    assert_eq!(response.status(), 200);

    std::fs::remove_file(s.root.join("old.txt")).unwrap();
    let response = poll_until(&s.app, "/static/old.txt", "the deletion", |r| {
        r.status() != 200
    })
    .await;
    let body = problem(response, 404).await;
    assert_eq!(body["instance"], "/static/old.txt");
    let response = s.app.get("/static/kept.txt").send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn files_above_the_cap_are_served_from_disk() {
    let size = usize::try_from(MAX_FILE_SIZE).unwrap() + 1;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let s = spawn_with_files(&[("big.bin", &payload)]).await;

    let response = s.app.get("/static/big.bin").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(header(&response, "content-length"), size.to_string());
    assert_eq!(
        header(&response, "last-modified"),
        last_modified_of(&s.root.join("big.bin"))
    );
    // ServeDir's answer: no ETag and no Cache-Control.
    assert!(!response.headers().contains_key("etag"));
    assert!(!response.headers().contains_key("cache-control"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), payload.as_slice());
}

#[tokio::test]
async fn ranges_directories_and_other_methods_behave_as_before() {
    let s = spawn_with_files(&[
        ("hello.txt", b"hello world\n"),
        ("docs/index.html", b"<p>docs</p>"),
    ])
    .await;

    let response = get_with(&s.app, "/static/hello.txt", &[("range", "bytes=0-4")]).await;
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-range"), "bytes 0-4/12");
    assert_eq!(response.text().await.unwrap(), "hello");

    let response = s.app.get("/static/docs/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "<p>docs</p>");

    let response = s
        .app
        .client
        .post(s.app.url("/static/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "allow"), "GET,HEAD");
    problem(response, 405).await;

    let response = s.app.get("/static/missing.txt").send().await.unwrap();
    problem(response, 404).await;
}

/// Sends `GET path` as written, without the normalisation an HTTP client applies to `..`.
/// Returns the status, the headers in lower case and the body.
async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_owned())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn paths_that_climb_out_of_the_directory_are_404_problems() {
    let s = spawn_with_files(&[("css/site.css", b"body{}")]).await;
    let (status, _, body) = raw_get(s.app.addr, "/static/css/site.css").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "body{}"),
        "the raw client works"
    );

    for path in [
        "/static/../Cargo.toml",
        "/static/css/../../Cargo.toml",
        "/static/%2e%2e/Cargo.toml",
        "/static/%2e%2e%2fCargo.toml",
        "/static/..%2fCargo.toml",
        "/static/.%2e/Cargo.toml",
        "/static/css/%2e%2e/%2e%2e/Cargo.toml",
        "/static/%2e%2e%5cCargo.toml",
        "/static//../Cargo.toml",
    ] {
        let (status, head, body) = raw_get(s.app.addr, path).await;
        assert_eq!(status, 404, "{path}: {head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{path}: {head}"
        );
        assert!(!body.contains("outside"), "{path}: {body}");
    }
}

#[tokio::test]
async fn compressible_files_are_sent_gzipped_from_a_copy_made_once() {
    let text = "keel static text, compressible. ".repeat(64);
    // xorshift32: bytes gzip cannot shrink.
    let mut state = 0x9e37_79b9_u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let s = spawn_with_files(&[("app.js", text.as_bytes()), ("noise.bin", &noise)]).await;

    let plain = s.app.get("/static/app.js").send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(header(&plain, "vary"), "accept-encoding");
    let plain_etag = header(&plain, "etag");
    assert_eq!(plain.text().await.unwrap(), text);

    let gzipped = get_with(
        &s.app,
        "/static/app.js",
        &[("accept-encoding", "br;q=0.9, gzip")],
    )
    .await;
    assert_eq!(gzipped.status(), 200);
    assert_eq!(header(&gzipped, "content-encoding"), "gzip");
    assert_eq!(header(&gzipped, "vary"), "accept-encoding");
    let etag = header(&gzipped, "etag");
    assert_ne!(etag, plain_etag, "each encoding has its own strong tag");
    let compressed = gzipped.bytes().await.unwrap();
    assert!(compressed.len() < text.len() / 4);
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, text);

    let revalidated = get_with(
        &s.app,
        "/static/app.js",
        &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(header(&revalidated, "etag"), etag);

    for refused in ["gzip;q=0", "identity", "br"] {
        let response = get_with(&s.app, "/static/app.js", &[("accept-encoding", refused)]).await;
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{refused}"
        );
        assert_eq!(response.text().await.unwrap(), text, "{refused}");
    }

    // Incompressible content goes out as it is, not recompressed per request.
    let response = get_with(
        &s.app,
        "/static/noise.bin",
        &[("accept-encoding", "gzip, br, zstd")],
    )
    .await;
    assert!(response.headers().get("content-encoding").is_none());
    assert!(response.headers().get("vary").is_none());
    assert_eq!(response.bytes().await.unwrap().as_ref(), &noise[..]);
}
