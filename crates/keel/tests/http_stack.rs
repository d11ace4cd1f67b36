//! The middleware stack, health probes, documentation and shutdown.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, header, problem};
use serde_json::{Value, json};

async fn sqlite() -> TestApp {
    common::spawn(Backend::Sqlite).await.unwrap()
}

const SECURITY_HEADERS: [(&str, &str); 12] = [
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
    ("x-frame-options", "DENY"),
];

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        let found: Vec<&str> = response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(found, [value], "{name} on {what}");
    }
    for name in ["server", "x-powered-by"] {
        assert!(
            response.headers().get(name).is_none(),
            "{what} must not reveal {name}"
        );
    }
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = sqlite().await;
    let created = app.post_user("ada@example.com", "Ada Lovelace").await;
    assert_eq!(created.status(), 201);
    assert_security_headers(&created, "201");
    let user: Value = created.json().await.unwrap();
    let path = format!("/users/{}", user["id"].as_str().unwrap());

    let cases = [
        (app.get("/livez"), 200),
        (app.get("/users"), 200),
        (app.get(&path), 200),
        (app.get("/no-such-route"), 404),
        (app.client.put(app.url("/users")), 405),
        (app.get("/users?limit=0"), 422),
        (app.post_json("/users", &json!({"email": "x"})), 422),
        (app.get(&path).header("if-none-match", "*"), 304),
        (app.delete(&path), 204),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_security_headers(&response, &format!("a {status} answer"));
    }
}

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let app = sqlite().await;
    for path in [
        "/nope",
        "/users/",
        "/users/0190b6f4-8e1c-7c3a-9f3e-3b1e2a4c5d6f/x",
    ] {
        let response = app.get(path).send().await.unwrap();
        let body = problem(response, 404).await;
        assert_eq!(body["type"], "about:blank", "{path}");
        assert_eq!(body["instance"], path);
    }
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow() {
    let app = sqlite().await;
    let response = app.client.put(app.url("/users")).send().await.unwrap();
    let allow = header(&response, "allow");
    let body = problem(response, 405).await;
    assert_eq!(body["type"], "about:blank");
    let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    assert!(
        methods.contains(&"GET") && methods.contains(&"POST"),
        "{allow}"
    );
    assert!(!methods.contains(&"PUT"), "{allow}");

    let response = app.client.post(app.url("/livez")).send().await.unwrap();
    assert!(header(&response, "allow").contains("GET"));
    problem(response, 405).await;
}

#[tokio::test]
async fn request_ids_are_generated_kept_or_replaced() {
    let app = sqlite().await;

    let response = app.get("/livez").send().await.unwrap();
    let generated = header(&response, "x-request-id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let response = app.get("/livez").send().await.unwrap();
    assert_ne!(
        header(&response, "x-request-id"),
        generated,
        "fresh per request"
    );

    for sane in ["abc-123", "req_1.2:3"] {
        let response = app
            .get("/livez")
            .header("x-request-id", sane)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "x-request-id"), sane);
        let response = app
            .get("/nope")
            .header("x-request-id", sane)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "x-request-id"), sane);
        let body = problem(response, 404).await;
        assert_eq!(body["request_id"], sane);
    }

    let long = "a".repeat(300);
    for insane in [long.as_str(), "abc 123", "<script>", "a\"b"] {
        let response = app
            .get("/nope")
            .header("x-request-id", insane)
            .send()
            .await
            .unwrap();
        let replaced = header(&response, "x-request-id");
        assert_ne!(replaced, insane);
        assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
        // problem() checks that the body's request_id is the header's.
        let body = problem(response, 404).await;
        assert_eq!(body["request_id"], replaced.as_str());
    }
}

#[tokio::test]
async fn large_responses_are_compressed_on_request() {
    let app = sqlite().await;
    for i in 0..10 {
        app.create_user(&format!("user{i}@example.com"), &format!("User Number {i}"))
            .await;
    }
    let client = reqwest::Client::builder().build().unwrap();
    let response = client
        .get(app.url("/users"))
        .bearer_auth(&app.admin_token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-encoding"), "gzip");
    assert_security_headers(&response, "a compressed answer");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(&bytes[..2], [0x1f, 0x8b], "a gzip stream");

    let plain = client
        .get(app.url("/users"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let page: Value = plain.json().await.unwrap();
    // Ten users and the bootstrap admin.
    assert_eq!(page["items"].as_array().unwrap().len(), 11);

    // A single user is a few hundred bytes: not worth an encoder per response.
    let id = page["items"][0]["id"].as_str().unwrap();
    let small = client
        .get(app.url(&format!("/users/{id}")))
        .bearer_auth(&app.admin_token)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("content-encoding").is_none());
    assert_eq!(small.json::<Value>().await.unwrap()["id"], id);
}

#[tokio::test]
async fn livez_answers_ok() {
    let app = sqlite().await;
    let response = app.get("/livez").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/json"));
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

async fn readyz_fails_once_shutdown_begins(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |config| config.shutdown_drain_secs = 2).await
    else {
        return;
    };
    let response = app.get("/readyz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ready: Value = response.json().await.unwrap();
    assert_eq!(ready["status"], "ok");
    let checks: Vec<(&str, &str)> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(checks, [("database", "ok"), ("migrations", "ok")]);

    app.shutdown_handle().begin();
    let response = app.get("/readyz").send().await.unwrap();
    let body = problem(response, 503).await;
    assert!(
        body["detail"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    // Still serving during the drain window, new connections included.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = reqwest::Client::new();
    let response = fresh.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = fresh.get(app.url("/readyz")).send().await.unwrap();
    problem(response, 503).await;
    let response = app.get("/users").send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn sqlite_readyz_fails_once_shutdown_begins() {
    readyz_fails_once_shutdown_begins(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_readyz_fails_once_shutdown_begins() {
    readyz_fails_once_shutdown_begins(Backend::Postgres).await;
}

#[tokio::test]
async fn openapi_document_describes_every_operation() {
    let app = sqlite().await;
    let response = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/json"));
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().unwrap();
    for path in ["/users", "/users/{id}", "/livez", "/readyz"] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let mut operations = 0;
    for (path, item) in paths {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path} lists 500");
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lists {status}"
                    );
                }
            }
        }
    }
    // POST and GET /users; GET, PATCH and DELETE /users/{id}; a user's forced logout;
    // GET and PATCH /users/me; register, login, refresh, logout, logout-all and the JWKS;
    // verify-email, its resend, forgot- and reset-password; the audit trail; GET /jobs,
    // GET /jobs/{id}, retry and cancel; the event streams (SSE, WebSocket) and their
    // tickets; POST and GET /webhooks, GET, PATCH and DELETE /webhooks/{id}, its secret's
    // rotation, the delivery log, one delivery and its replay; GET and PUT
    // /admin/log-filter; matmul; the two probes.
    assert_eq!(operations, 40);
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let secured = |path: &str, method: &str| {
        paths[path][method]["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()))
    };
    for (path, method) in [
        ("/users", "get"),
        ("/users", "post"),
        ("/users/{id}", "get"),
        ("/users/{id}", "patch"),
        ("/users/{id}", "delete"),
        ("/users/me", "get"),
        ("/users/me", "patch"),
        ("/auth/logout", "post"),
        ("/auth/logout-all", "post"),
        ("/admin/audit-events", "get"),
        ("/auth/verify-email/resend", "post"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/retry", "post"),
    ] {
        assert!(
            secured(path, method),
            "{method} {path} needs the bearer scheme"
        );
    }
    for (path, method) in [
        ("/auth/login", "post"),
        ("/auth/register", "post"),
        ("/auth/refresh", "post"),
        ("/.well-known/jwks.json", "get"),
        ("/livez", "get"),
    ] {
        assert!(!secured(path, method), "{method} {path} is public");
    }
    for schema in ["Problem", "FieldError", "User", "UserPage"] {
        assert!(
            document["components"]["schemas"].get(schema).is_some(),
            "schema {schema}"
        );
    }
}

/// The values of every `attribute="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let needle = format!("{attribute}=\"");
    html.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest.split_once('"').map(|(value, _)| value)
        })
        .collect()
}

#[tokio::test]
async fn docs_page_is_self_contained() {
    let app = sqlite().await;
    let response = app.get("/docs").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/html"));
    let csp = header(&response, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    let html = response.text().await.unwrap();

    let mut urls = attribute_values(&html, "src");
    urls.extend(attribute_values(&html, "href"));
    for url in &urls {
        assert!(
            url.starts_with('/') && !url.starts_with("//"),
            "{url} is served by keel itself"
        );
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script>"), "no inline script");

    for (asset, content_type) in [
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-initializer.js", "javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        assert!(urls.contains(&asset), "the page references {asset}");
        let response = app.get(asset).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let found = header(&response, "content-type");
        assert!(
            found.contains(content_type)
                && (found.starts_with("text/") || found.starts_with("application/")),
            "{asset}: {found}"
        );
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
}

const APP_ORIGIN: &str = "https://app.example.com";

fn preflight(app: &TestApp, origin: &str) -> reqwest::RequestBuilder {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/users"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let app = sqlite().await;
    let response = app
        .get("/users")
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let response = preflight(&app, APP_ORIGIN).send().await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = common::spawn_with(Backend::Sqlite, |config| {
        config.cors_allowed_origins = vec![APP_ORIGIN.into()];
    })
    .await
    .unwrap();
    let response = preflight(&app, APP_ORIGIN).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(header(&response, "access-control-allow-origin"), APP_ORIGIN);
    let methods = header(&response, "access-control-allow-methods");
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&response, "access-control-allow-headers");
    assert!(headers.contains("content-type"), "{headers}");

    let response = app
        .get("/users")
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), APP_ORIGIN);
    let exposed = header(&response, "access-control-expose-headers").to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("x-request-id"),
        "{exposed}"
    );

    for origin in ["https://evil.example.com", "http://app.example.com"] {
        let response = preflight(&app, origin).send().await.unwrap();
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}"
        );
        let response = app
            .get("/users")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}"
        );
    }
}

#[tokio::test]
async fn shutdown_stops_the_server_promptly() {
    let app = sqlite().await;
    let url = app.url("/livez");
    // An idle keep-alive connection must not hold the shutdown up.
    let response = app.get("/livez").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let _keep_alive_client = app.client.clone();

    app.shutdown_handle().begin();
    let stopped = tokio::time::timeout(Duration::from_secs(2), app.stop()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "stop() returns Ok within 2 s: {stopped:?}"
    );
    let after = reqwest::Client::new().get(url).send().await;
    assert!(after.is_err(), "the listener is closed");
}

#[tokio::test]
async fn static_files_are_served_from_the_static_dir_and_nothing_else() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join("secret.txt"), "outside").unwrap();
    let static_dir = parent.path().join("static");
    std::fs::create_dir(&static_dir).unwrap();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(static_dir.join("bench-4k.bin"), &payload).unwrap();
    std::fs::write(static_dir.join("hello.txt"), "hello\n").unwrap();
    let app = common::spawn_with(Backend::Sqlite, move |config| {
        config.static_dir = static_dir;
    })
    .await
    .unwrap();

    let response = app.get("/static/bench-4k.bin").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(response.bytes().await.unwrap().as_ref(), payload.as_slice());

    let response = app.get("/static/hello.txt").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/plain"));

    let response = app.get("/static/missing.txt").send().await.unwrap();
    problem(response, 404).await;
    // Paths that climb out of the directory are refused.
    for path in [
        "/static/..%2fsecret.txt",
        "/static/%2e%2e%2fsecret.txt",
        "/static/%2e%2e/secret.txt",
    ] {
        let response = app.get(path).send().await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{path}: {}",
            response.status()
        );
        assert_ne!(response.text().await.unwrap(), "outside", "{path}");
    }
}
