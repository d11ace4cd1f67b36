//! `/metrics` on its own listener, on both databases: what a session of requests, a job and
//! an event stream leave in it, that labels are route templates and never paths or ids, and
//! that neither listener serves the other's routes.

mod common;

use std::net::SocketAddr;

use common::{Backend, TestApp, eventually, free_port};
use serde_json::json;

/// The auth routes' limit per minute: the admin's login and one registration fit, the
/// next login is refused.
const AUTH_LIMIT: u32 = 2;

/// The text of `GET /metrics`, after checking the status and media type.
async fn scrape(addr: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        common::header(&response, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.expect("metrics text")
}

/// The value of the series named exactly `series` (name and labels), if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

/// Waits until `series` reads `predicate`-worthy values, and returns the text.
async fn wait_for(addr: SocketAddr, series: &str, predicate: impl Fn(f64) -> bool) -> String {
    eventually(20, series, || async {
        let text = scrape(addr).await;
        value(&text, series).filter(|v| predicate(*v)).map(|_| text)
    })
    .await
}

async fn session(backend: Backend) {
    let port = free_port();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Some(app) = common::spawn_with(backend, |config| {
        config.metrics_addr = Some(metrics_addr);
        config.auth_rate_limit_per_minute = AUTH_LIMIT;
    })
    .await
    else {
        return;
    };

    // Reads of two users (the second read of each from the cache), one of an unknown id.
    let mut ids = Vec::new();
    for (email, name) in [("ada@example.com", "Ada"), ("grace@example.com", "Grace")] {
        let user = app.create_user(email, name).await;
        ids.push(user["id"].as_str().expect("user id").to_owned());
    }
    for id in &ids {
        for _ in 0..2 {
            let response = app.get(&format!("/users/{id}")).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let unknown = "0193a1b2-0000-7000-8000-000000000000";
    let response = app.get(&format!("/users/{unknown}")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let response = app.get("/no-such-path/4242").send().await.unwrap();
    assert_eq!(response.status(), 404);
    let response = app
        .post_json("/users", &json!({"email": "not an address"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    // A registration (its welcome e-mail is a job), then a login over the auth limit.
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(
            &json!({"email": "lin@example.com", "name": "Lin", "password": common::ADMIN_PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = app
        .anon
        .post(app.url("/auth/login"))
        .json(&json!({"email": "lin@example.com", "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);

    let text = wait_for(
        metrics_addr,
        r#"keel_jobs_finished_total{kind="email.welcome",outcome="succeeded"}"#,
        |v| v >= 1.0,
    )
    .await;
    let count =
        |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    let duration = "http_server_request_duration_seconds_count";
    assert_eq!(
        count(&format!(
            r#"{duration}{{method="GET",route="/users/{{id}}",status_class="2xx"}}"#
        )),
        4.0
    );
    assert_eq!(
        count(&format!(
            r#"{duration}{{method="GET",route="/users/{{id}}",status_class="4xx"}}"#
        )),
        1.0
    );
    assert_eq!(
        count(&format!(
            r#"{duration}{{method="GET",route="<unmatched>",status_class="4xx"}}"#
        )),
        1.0
    );
    assert!(
        count(&format!(
            r#"{duration}{{method="POST",route="/users",status_class="4xx"}}"#
        )) >= 1.0
    );
    assert!(
        count(&format!(
            r#"{duration}{{method="POST",route="/auth/login",status_class="4xx"}}"#
        )) >= 1.0
    );
    for id in ids.iter().map(String::as_str).chain([unknown]) {
        assert!(!text.contains(id), "{id} appears in\n{text}");
    }
    assert!(!text.contains("no-such-path"), "{text}");
    assert!(count(r#"keel_cache_requests_total{cache="users",result="hit"}"#) >= 2.0);
    assert!(count(r#"keel_cache_requests_total{cache="users",result="miss"}"#) >= 1.0);
    assert_eq!(
        count(r#"keel_rate_limit_rejections_total{policy="auth"}"#),
        1.0
    );
    assert_eq!(
        count(&format!(
            r#"keel_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(count("keel_db_pool_max_connections"), 5.0);
    assert!(count("keel_db_query_duration_seconds_count") > 0.0);
    assert!(count(r#"keel_db_pool_connections{state="in_use"}"#) >= 0.0);
    assert!(count(r#"keel_jobs{state="queued"}"#) >= 0.0);
    assert!(count(r#"keel_jobs{state="dead"}"#) == 0.0);
    assert!(count("keel_jobs_oldest_queued_age_seconds") >= 0.0);
    assert!(count("http_server_active_requests") >= 0.0);

    event_streams_are_counted_while_open(&app, metrics_addr).await;
    the_listeners_do_not_serve_each_other(&app, metrics_addr).await;
    app.stop().await.expect("clean stop");
}

async fn event_streams_are_counted_while_open(app: &TestApp, metrics_addr: SocketAddr) {
    let sse = r#"keel_events_connections{transport="sse"}"#;
    assert_eq!(value(&scrape(metrics_addr).await, sse), Some(0.0));
    let stream = app.get("/events").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    wait_for(metrics_addr, sse, |v| v == 1.0).await;
    drop(stream);
    wait_for(metrics_addr, sse, |v| v == 0.0).await;
    let text = scrape(metrics_addr).await;
    assert_eq!(
        value(
            &text,
            r#"keel_events_slow_consumers_dropped_total{transport="sse"}"#
        ),
        Some(0.0)
    );
}

async fn the_listeners_do_not_serve_each_other(app: &TestApp, metrics_addr: SocketAddr) {
    let response = app.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 404);
    for path in ["/users", "/livez", "/openapi.json"] {
        let response = reqwest::get(format!("http://{metrics_addr}{path}"))
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the metrics listener");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_session() {
    session(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session() {
    session(Backend::Postgres).await;
}

#[tokio::test]
async fn without_the_setting_nothing_listens() {
    let Some(app) = common::spawn(Backend::Sqlite).await else {
        return;
    };
    let response = app.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await.expect("clean stop");
}
