//! Webhooks: registration, signed deliveries to a real HTTP receiver, retries, the delivery
//! log and replays, the private-network guard, and one delivery per event across two
//! instances.

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use base64::{Engine, engine::general_purpose::STANDARD};
use common::{Backend, TestApp, eventually, spawn_beside, spawn_with};
use hmac::{Hmac, Mac};
use keel::config::Config;
use serde_json::{Value, json};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn event(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }
}

/// An HTTP endpoint that records every POST and fails the first `failures` of them.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    failures: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state((Arc::clone(&received), Arc::clone(&failures)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            received,
            failures,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    /// Waits until `n` requests arrived, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(20, &format!("{n} webhook requests"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

type ReceiverState = (Arc<Mutex<Vec<Received>>>, Arc<AtomicUsize>);

async fn receive(
    State((received, failures)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    received.lock().expect("receiver lock").push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let failing = failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        (StatusCode::SERVICE_UNAVAILABLE, "try later")
    } else {
        (StatusCode::OK, "thanks")
    }
}

/// Checks a request's signature as a receiver would, with the Standard Webhooks scheme.
fn verify(secret: &str, request: &Received) {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC key");
    mac.update(format!("{}.{}.{}", request.id, request.timestamp, request.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(request.signature, expected, "signature of {request:?}");
    let timestamp: i64 = request.timestamp.parse().expect("numeric timestamp");
    let age = chrono::Utc::now().timestamp() - timestamp;
    assert!((0..60).contains(&age), "timestamp {age}s old");
}

fn quick_jobs(config: &mut Config) {
    config.jobs_poll_ms = 50;
    config.jobs_retry_base_ms = 50;
    config.jobs_retry_max_secs = 1;
    config.events_poll_ms = 20;
}

async fn start(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    spawn_with(backend, |config| {
        quick_jobs(config);
        adjust(config);
    })
    .await
}

async fn register(app: &TestApp, body: Value) -> Value {
    let response = app
        .post_json("/webhooks", &body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201, "registering {body}");
    let location = common::header(&response, "location");
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(
        location,
        format!("/webhooks/{}", created["id"].as_str().unwrap())
    );
    created
}

async fn deliveries(app: &TestApp, webhook: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/webhooks/{webhook}/deliveries"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("JSON");
    page["items"].as_array().expect("items").clone()
}

async fn signed_deliveries_of_the_wanted_events(backend: Backend) {
    let Some(app) = start(backend, |_| {}).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": receiver.url(), "event_types": ["user.created"], "description": "CRM"}),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert_eq!(created["event_types"], json!(["user.created"]));
    assert_eq!(created["active"], true);

    // The secret is shown once: never again.
    let shown: Value = app
        .get(&format!("/webhooks/{id}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(shown["id"], id.as_str());
    assert!(shown.get("secret").is_none(), "{shown}");

    let first = app.create_user("hooked@example.com", "Hooked One").await;
    let user_id = first["id"].as_str().unwrap();
    // An update is not wanted; the next creation is the next delivery.
    let patched = app
        .patch_json(&format!("/users/{user_id}"), &json!({"name": "Renamed"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(patched.status(), 200);
    app.create_user("hooked2@example.com", "Hooked Two").await;

    let mut got = receiver.wait_for(2).await;
    for request in &got {
        verify(&secret, request);
        assert_eq!(request.event()["type"], "user.created", "{}", request.body);
    }
    // Deliveries are concurrent jobs: they may arrive in either order.
    got.sort_by_key(|request| request.event()["id"].as_i64());
    assert_eq!(got[0].event()["data"]["email"], "hooked@example.com");
    assert_eq!(got[1].event()["data"]["email"], "hooked2@example.com");
    assert_ne!(got[0].id, got[1].id);

    let log = eventually(10, "both deliveries logged as succeeded", || async {
        let log = deliveries(&app, &id).await;
        (log.len() == 2 && log.iter().all(|d| d["state"] == "succeeded")).then_some(log)
    })
    .await;
    // Newest first; each with its outcome and the body that was sent.
    assert_eq!(log[0]["payload"]["data"]["email"], "hooked2@example.com");
    for delivery in &log {
        assert_eq!(delivery["attempts"], 1);
        assert_eq!(delivery["response_status"], 200);
        assert_eq!(delivery["response_body"], "thanks");
        assert_eq!(delivery["event_type"], "user.created");
        assert!(delivery["delivered_at"].is_string());
        assert_eq!(delivery["webhook_id"], id.as_str());
    }
    let ids: HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(log[0]["message_id"].as_str().unwrap()));
    // One delivery, read on its own.
    let one = app
        .get(&format!(
            "/webhooks/{id}/deliveries/{}",
            log[1]["id"].as_str().unwrap()
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(one.status(), 200);
    assert_eq!(receiver.received().len(), 2, "nothing else was delivered");
}

async fn failures_are_retried_then_replayed(backend: Backend) {
    let Some(app) = start(backend, |config| config.jobs_max_attempts = 3).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": receiver.url(), "event_types": ["user.*"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();

    // Two failures, then success: the third attempt delivers.
    receiver.fail_next(2);
    app.create_user("retry@example.com", "Retry Me").await;
    let got = receiver.wait_for(3).await;
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one message, retried"
    );
    got.iter().for_each(|request| verify(&secret, request));
    let delivery = eventually(10, "the retried delivery succeeded", || async {
        let log = deliveries(&app, &id).await;
        log.into_iter().find(|d| d["state"] == "succeeded")
    })
    .await;
    assert_eq!(delivery["attempts"], 3);

    // Every attempt fails: the delivery fails for good, with the last answer kept.
    receiver.fail_next(usize::MAX);
    app.create_user("doomed@example.com", "Doomed Delivery")
        .await;
    let failed = eventually(20, "the delivery failed", || async {
        let log = deliveries(&app, &id).await;
        log.into_iter().find(|d| d["state"] == "failed")
    })
    .await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["response_status"], 503);
    assert_eq!(
        failed["last_error"],
        "the endpoint answered 503 Service Unavailable"
    );
    let filtered: Value = app
        .get(&format!("/webhooks/{id}/deliveries?state=failed"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(filtered["items"].as_array().map(Vec::len), Some(1));

    // The endpoint is fixed; the admin replays the failed delivery.
    receiver.fail_next(0);
    let before = receiver.received().len();
    let failed_id = failed["id"].as_str().unwrap();
    let replay = app
        .client
        .post(app.url(&format!("/webhooks/{id}/deliveries/{failed_id}/replay")))
        .send()
        .await
        .expect("sent");
    assert_eq!(replay.status(), 202);
    let replay: Value = replay.json().await.expect("JSON");
    assert_eq!(replay["replay_of"], failed_id);
    assert_eq!(replay["message_id"], failed["message_id"]);
    assert_eq!(replay["state"], "pending");
    let got = receiver.wait_for(before + 1).await;
    let last = got.last().unwrap();
    assert_eq!(last.id, failed["message_id"].as_str().unwrap());
    assert_eq!(last.event()["data"]["email"], "doomed@example.com");
    verify(&secret, last);
    let replay_id = replay["id"].as_str().unwrap().to_owned();
    eventually(10, "the replay succeeded", || async {
        let log = deliveries(&app, &id).await;
        log.into_iter()
            .find(|d| d["id"] == replay_id.as_str() && d["state"] == "succeeded")
    })
    .await;
    // The original stays failed in the log.
    let original: Value = app
        .get(&format!("/webhooks/{id}/deliveries/{failed_id}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(original["state"], "failed");
    // A second replay of the same delivery, then the endpoint goes with its whole log.
    let again = app
        .client
        .post(app.url(&format!("/webhooks/{id}/deliveries/{failed_id}/replay")))
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status(), 202);
    let deleted = app
        .delete(&format!("/webhooks/{id}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status(), 204);
}

async fn disabled_and_deleted_endpoints_get_nothing(backend: Backend) {
    let Some(app) = start(backend, |_| {}).await else {
        return;
    };
    let off = Receiver::start().await;
    let on = Receiver::start().await;
    let disabled = register(
        &app,
        json!({"url": off.url(), "event_types": ["*"], "active": false}),
    )
    .await;
    let deleted = register(&app, json!({"url": off.url(), "event_types": ["*"]})).await;
    register(&app, json!({"url": on.url(), "event_types": ["*"]})).await;
    let response = app
        .delete(&format!("/webhooks/{}", deleted["id"].as_str().unwrap()))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    app.create_user("quiet@example.com", "Quiet One").await;
    on.wait_for(1).await;
    // The receiver that still listens got the user's event, and never the outcome of its
    // own delivery job (which would loop forever); wait for a second event to be sure.
    app.create_user("quiet2@example.com", "Quiet Two").await;
    let got = on.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = on.received();
    assert!(
        got_all
            .iter()
            .all(|r| r.event()["data"]["kind"] != "webhook.deliver"),
        "{got_all:?}"
    );
    assert_eq!(got[0].event()["type"], "user.created");
    assert!(off.received().is_empty(), "{:?}", off.received());
    assert!(
        deliveries(&app, disabled["id"].as_str().unwrap())
            .await
            .is_empty()
    );

    // Enabling it delivers what follows, not what came before.
    let id = disabled["id"].as_str().unwrap();
    let enabled = app
        .patch_json(
            &format!("/webhooks/{id}"),
            &json!({"active": true, "event_types": ["user.created"]}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(enabled.status(), 200);
    let enabled: Value = enabled.json().await.expect("JSON");
    assert_eq!(enabled["active"], true);
    assert_eq!(enabled["event_types"], json!(["user.created"]));
    app.create_user("loud@example.com", "Loud One").await;
    let got = off.wait_for(1).await;
    assert_eq!(got[0].event()["data"]["email"], "loud@example.com");
}

async fn private_networks_are_refused_when_not_allowed(backend: Backend) {
    let Some(app) = start(backend, |config| {
        config.webhooks_allow_private_networks = Some(false);
        config.jobs_max_attempts = 1;
    })
    .await
    else {
        return;
    };
    let receiver = Receiver::start().await;
    let by_name = format!("http://localhost:{}/hook", receiver.addr.port());
    let by_ip = register(
        &app,
        json!({"url": receiver.url(), "event_types": ["user.created"]}),
    )
    .await;
    let named = register(
        &app,
        json!({"url": by_name, "event_types": ["user.created"]}),
    )
    .await;
    app.create_user("private@example.com", "Private Net").await;
    for webhook in [&by_ip, &named] {
        let id = webhook["id"].as_str().unwrap();
        let failed = eventually(10, "the delivery to a private address failed", || async {
            deliveries(&app, id)
                .await
                .into_iter()
                .find(|d| d["state"] == "failed")
        })
        .await;
        let error = failed["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("KEEL_WEBHOOKS_ALLOW_PRIVATE_NETWORKS"),
            "{error}"
        );
    }
    assert!(receiver.received().is_empty());
}

async fn bad_input_is_refused(backend: Backend) {
    let Some(app) = start(backend, |_| {}).await else {
        return;
    };
    let cases = [
        (
            json!({"url": "ftp://example.com/x", "event_types": ["*"]}),
            "/url",
            "invalid_url",
        ),
        (
            json!({"url": "not a url", "event_types": ["*"]}),
            "/url",
            "invalid_url",
        ),
        (
            json!({"url": "https://user:pw@example.com/", "event_types": ["*"]}),
            "/url",
            "invalid_url",
        ),
        (
            json!({"url": "https://example.com/", "event_types": []}),
            "/event_types",
            "out_of_range",
        ),
        (
            json!({"url": "https://example.com/", "event_types": ["User Created"]}),
            "/event_types",
            "invalid_event_type",
        ),
        (
            json!({"url": "https://example.com/", "event_types": "user.*"}),
            "/event_types",
            "type",
        ),
        (
            json!({"url": "https://example.com/", "event_types": ["*"], "active": "yes"}),
            "/active",
            "type",
        ),
        (
            json!({"url": "https://example.com/", "event_types": ["*"], "description": "a\u{7}b"}),
            "/description",
            "control_characters",
        ),
        (
            json!({"url": "https://example.com/", "event_types": ["*"], "secret": "x"}),
            "/secret",
            "unknown_field",
        ),
        (json!({"event_types": ["*"]}), "/url", "missing"),
    ];
    for (body, pointer, code) in cases {
        let response = app
            .post_json("/webhooks", &body)
            .send()
            .await
            .expect("sent");
        let errors = common::validation_errors(response).await;
        assert!(
            errors.contains(&("body".to_owned(), pointer.to_owned(), code.to_owned())),
            "{body}: {errors:?}"
        );
    }
    // Only admins manage webhooks.
    let password = "a plain user's password";
    let created = app
        .post_json(
            "/users",
            &json!({"email": "plain@example.com", "name": "Plain User", "password": password}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let token = common::login(&app.anon, app.addr, "plain@example.com", password).await;
    let forbidden = app
        .anon
        .get(app.url("/webhooks"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    common::problem(forbidden, 403).await;
    let anonymous = app
        .anon
        .get(app.url("/webhooks"))
        .send()
        .await
        .expect("sent");
    common::problem(anonymous, 401).await;
    let missing = uuid::Uuid::now_v7();
    let response = app
        .get(&format!("/webhooks/{missing}"))
        .send()
        .await
        .expect("sent");
    common::problem(response, 404).await;
    let response = app
        .get(&format!("/webhooks/{missing}/deliveries"))
        .send()
        .await
        .expect("sent");
    common::problem(response, 404).await;
    let response = app
        .client
        .post(app.url(&format!("/webhooks/{missing}/deliveries/{missing}/replay")))
        .send()
        .await
        .expect("sent");
    common::problem(response, 404).await;
    let response = app
        .get(&format!("/webhooks/{missing}/deliveries/not-a-uuid"))
        .send()
        .await
        .expect("sent");
    let errors = common::validation_errors(response).await;
    assert_eq!(
        errors,
        common::expected(&[("path", "/delivery_id", "invalid_uuid")])
    );
    let response = app
        .get(&format!("/webhooks/{missing}/deliveries?state=lost"))
        .send()
        .await
        .expect("sent");
    let errors = common::validation_errors(response).await;
    assert_eq!(
        errors,
        common::expected(&[("query", "/state", "invalid_state")])
    );
}

/// Two instances follow the same log: each event is delivered once.
async fn each_event_is_delivered_once_across_instances(backend: Backend) {
    let Some(first) = start(backend, |_| {}).await else {
        return;
    };
    let second = spawn_beside(&first, quick_jobs).await;
    let receiver = Receiver::start().await;
    register(
        &first,
        json!({"url": receiver.url(), "event_types": ["user.created"]}),
    )
    .await;
    let mut emails = HashSet::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { &first } else { &second };
        let email = format!("twice-{i}@example.com");
        app.create_user(&email, "Spread Out").await;
        emails.insert(email);
    }
    receiver.wait_for(20).await;
    // Give a duplicate time to arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.received();
    let delivered: Vec<String> = got
        .iter()
        .map(|r| r.event()["data"]["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered.len(), 20, "{delivered:?}");
    assert_eq!(delivered.into_iter().collect::<HashSet<_>>(), emails);
}

/// Whether `request` is signed with `secret` (the Standard Webhooks scheme).
fn signed_with(secret: &str, request: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC key");
    mac.update(format!("{}.{}.{}", request.id, request.timestamp, request.body).as_bytes());
    request.signature == format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// `POST /webhooks/{id}/rotate-secret`: the new secret is in that answer only, and every
/// delivery after it is signed with it and not with the old one. Admins only.
async fn rotating_the_secret_signs_with_the_new_one_only(backend: Backend) {
    let Some(app) = start(backend, |_| {}).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": receiver.url(), "event_types": ["user.created"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let old = created["secret"].as_str().unwrap().to_owned();
    app.create_user("before@example.com", "Before Rotation")
        .await;
    let got = receiver.wait_for(1).await;
    assert!(signed_with(&old, &got[0]));

    let response = app
        .client
        .post(app.url(&format!("/webhooks/{id}/rotate-secret")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(common::header(&response, "cache-control"), "no-store");
    let rotated: Value = response.json().await.expect("JSON");
    let new = rotated["secret"].as_str().expect("secret").to_owned();
    assert!(new.starts_with("whsec_"), "{new}");
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["url"], created["url"]);
    assert_eq!(rotated["event_types"], created["event_types"]);
    assert_eq!(rotated["active"], true);
    // Shown once: never again.
    let shown: Value = app
        .get(&format!("/webhooks/{id}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert!(shown.get("secret").is_none(), "{shown}");

    app.create_user("after@example.com", "After Rotation").await;
    let got = receiver.wait_for(2).await;
    let after = got
        .iter()
        .find(|r| r.event()["data"]["email"] == "after@example.com")
        .expect("the second delivery");
    verify(&new, after);
    assert!(!signed_with(&old, after), "the old secret still signs");

    // Unknown, malformed, and not an admin's.
    let unknown = uuid::Uuid::now_v7();
    let response = app
        .client
        .post(app.url(&format!("/webhooks/{unknown}/rotate-secret")))
        .send()
        .await
        .expect("sent");
    common::problem(response, 404).await;
    let response = app
        .client
        .post(app.url("/webhooks/nope/rotate-secret"))
        .send()
        .await
        .expect("sent");
    common::problem(response, 422).await;
    let response = app
        .anon
        .post(app.url(&format!("/webhooks/{id}/rotate-secret")))
        .send()
        .await
        .expect("sent");
    common::problem(response, 401).await;
    let user = app
        .post_json(
            "/users",
            &json!({"email": "plain@example.com", "name": "Plain User", "password": "a long enough password"}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(user.status(), 201);
    let token = common::login(
        &app.anon,
        app.addr,
        "plain@example.com",
        "a long enough password",
    )
    .await;
    let response = app
        .anon
        .post(app.url(&format!("/webhooks/{id}/rotate-secret")))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    common::problem(response, 403).await;
    // Refused rotations changed nothing: the new secret still signs.
    app.create_user("last@example.com", "Last One").await;
    let got = eventually(20, "the last delivery", || async {
        receiver
            .received()
            .into_iter()
            .find(|r| r.event()["data"]["email"] == "last@example.com")
    })
    .await;
    verify(&new, &got);
}

/// `WebhookStore::failing` counts the active endpoints whose newest delivery failed, and
/// `WebhookStore::count` every endpoint.
async fn the_store_counts_failing_endpoints(backend: Backend) {
    let Some(app) = start(backend, |config| config.jobs_max_attempts = 1).await else {
        return;
    };
    let mut config = common::test_config(&app.data_dir);
    config.database_url = Some(secrecy::SecretString::from(app.database_url.clone()));
    let db = keel::db::Db::connect(&config).await.expect("database");
    let store = keel::webhooks::WebhookStore::new(db.clone());
    assert_eq!(store.count().await.expect("count"), 0);
    assert_eq!(store.failing().await.expect("failing"), 0);
    let receiver = Receiver::start().await;
    let hook = register(
        &app,
        json!({"url": receiver.url(), "event_types": ["user.created"]}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    // An endpoint that has had no delivery is not failing.
    register(
        &app,
        json!({"url": receiver.url(), "event_types": ["job.dead"]}),
    )
    .await;
    assert_eq!(store.count().await.expect("count"), 2);

    receiver.fail_next(usize::MAX);
    app.create_user("fails@example.com", "Fails Once").await;
    let failed = eventually(20, "the delivery to fail", || async {
        deliveries(&app, &id)
            .await
            .into_iter()
            .find(|d| d["state"] == "failed")
    })
    .await;
    assert_eq!(store.failing().await.expect("failing"), 1);

    // A disabled endpoint is not counted.
    let patch = |active: bool| {
        app.patch_json(&format!("/webhooks/{id}"), &json!({"active": active}))
            .send()
    };
    assert_eq!(patch(false).await.expect("sent").status(), 200);
    assert_eq!(store.failing().await.expect("failing"), 0);
    assert_eq!(patch(true).await.expect("sent").status(), 200);
    assert_eq!(store.failing().await.expect("failing"), 1);

    // Its newest delivery succeeds: no longer failing.
    receiver.fail_next(0);
    let failed_id = failed["id"].as_str().unwrap();
    let replay = app
        .client
        .post(app.url(&format!("/webhooks/{id}/deliveries/{failed_id}/replay")))
        .send()
        .await
        .expect("sent");
    assert_eq!(replay.status(), 202);
    eventually(20, "the replay to succeed", || async {
        deliveries(&app, &id)
            .await
            .into_iter()
            .find(|d| d["replay_of"] == failed_id && d["state"] == "succeeded")
    })
    .await;
    assert_eq!(store.failing().await.expect("failing"), 0);
    db.close().await;
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_databases!(
    signed_deliveries_of_the_wanted_events,
    failures_are_retried_then_replayed,
    disabled_and_deleted_endpoints_get_nothing,
    private_networks_are_refused_when_not_allowed,
    bad_input_is_refused,
    each_event_is_delivered_once_across_instances,
    rotating_the_secret_signs_with_the_new_one_only,
    the_store_counts_failing_endpoints,
);
