//! `Idempotency-Key` on `POST /users`, on every backend.

mod common;

use std::time::Duration;

use common::{ADMIN_EMAIL, Backend, TestApp, header, problem, validation_errors};
use serde_json::{Value, json};

/// `POST /users` with `body` and `Idempotency-Key: key`.
async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.post_json("/users", body)
        .header("idempotency-key", key)
        .send()
        .await
        .unwrap()
}

/// The users stored, newest first, but the bootstrap admin.
async fn users(app: &TestApp) -> Vec<Value> {
    let response = app.get("/users?limit=100").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"] != ADMIN_EMAIL)
        .cloned()
        .collect()
}

async fn retry_with_the_same_key_replays_the_first_answer(app: TestApp) {
    let body = json!({"email": "ada@example.com", "name": "Ada Lovelace"});
    let first = post_with_key(&app, "k1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = header(&first, "location");
    let etag = header(&first, "etag");
    let first_body = first.bytes().await.unwrap();

    let second = post_with_key(&app, "k1", &body).await;
    assert_eq!(second.status(), 201);
    assert_eq!(header(&second, "idempotent-replayed"), "true");
    assert_eq!(header(&second, "location"), location);
    assert_eq!(header(&second, "etag"), etag);
    assert_eq!(header(&second, "content-type"), "application/json");
    assert!(!header(&second, "x-request-id").is_empty());
    assert_eq!(second.bytes().await.unwrap(), first_body, "same body");

    let stored = users(&app).await;
    assert_eq!(stored.len(), 1, "only one user was created");
    let first_json: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(stored[0], first_json);

    // Another key is another request: the address is taken now.
    let other = post_with_key(&app, "k2", &body).await;
    let problem_body = problem(other, 409).await;
    assert_eq!(problem_body["type"], "/problems/email-taken");
}

async fn same_key_with_another_body_is_422(app: TestApp) {
    let first = post_with_key(
        &app,
        "k1",
        &json!({"email": "ada@example.com", "name": "Ada Lovelace"}),
    )
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let second = post_with_key(
        &app,
        "k1",
        &json!({"email": "grace@example.com", "name": "Grace Hopper"}),
    )
    .await;
    assert!(second.headers().get("idempotent-replayed").is_none());
    let body = problem(second, 422).await;
    assert_eq!(body["type"], "/problems/idempotency-key-reused");
    assert_eq!(users(&app).await, [first], "nothing else was created");
}

async fn a_failed_first_request_does_not_keep_the_key(app: TestApp) {
    let invalid = post_with_key(&app, "k1", &json!({"email": "nope", "name": "A"})).await;
    let errors = validation_errors(invalid).await;
    assert_eq!(errors.len(), 2);

    let valid = json!({"email": "ada@example.com", "name": "Ada Lovelace"});
    let retry = post_with_key(&app, "k1", &valid).await;
    assert_eq!(retry.status(), 201, "the key is free after a failure");
    assert!(retry.headers().get("idempotent-replayed").is_none());
    let created: Value = retry.json().await.unwrap();

    // A conflict is a failure too: it is not kept either.
    let conflict = post_with_key(&app, "k2", &valid).await;
    problem(conflict, 409).await;
    let response = app
        .delete(&format!("/users/{}", created["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let retry = post_with_key(&app, "k2", &valid).await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(users(&app).await.len(), 1);
}

async fn an_invalid_key_is_422(app: TestApp) {
    let body = json!({"email": "ada@example.com", "name": "Ada Lovelace"});
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str(), "has space", "tab\there"] {
        let response = post_with_key(&app, key, &body).await;
        let errors = validation_errors(response).await;
        assert_eq!(errors.len(), 1, "key {key:?}");
        assert_eq!(errors[0].0, "header", "key {key:?}");
    }
    assert!(users(&app).await.is_empty(), "nothing was created");

    let longest = "k".repeat(255);
    let response = post_with_key(&app, &longest, &body).await;
    assert_eq!(response.status(), 201, "255 characters are fine");
    let response = post_with_key(&app, &longest, &body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "idempotent-replayed"), "true");
}

/// A key belongs to the caller: without the admin's token, the admin's key replays nothing
/// (the request is judged on its own: 401), and another account's key is its own.
async fn keys_are_scoped_to_the_caller(app: TestApp) {
    let body = json!({"email": "ada@example.com", "name": "Ada Lovelace"});
    let first = post_with_key(&app, "shared-key", &body).await;
    assert_eq!(first.status(), 201);
    let anonymous = app
        .anon
        .post(app.url("/users"))
        .header("content-type", "application/json")
        .header("idempotency-key", "shared-key")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(anonymous.headers().get("idempotent-replayed").is_none());
    let problem = problem(anonymous, 401).await;
    assert!(
        !problem.to_string().contains("ada@example.com"),
        "{problem}"
    );
    assert_eq!(users(&app).await.len(), 1);
}

/// Token pairs are never stored for replay: a retried login runs again and answers a new
/// pair, and no refresh token sits in the idempotency table.
async fn token_answers_are_not_kept(app: TestApp) {
    let login = || {
        app.anon
            .post(app.url("/auth/login"))
            .header("idempotency-key", "login-1")
            .json(&json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
            .send()
    };
    let first: Value = login().await.unwrap().json().await.unwrap();
    let second = login().await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(second.headers().get("idempotent-replayed").is_none());
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["refresh_token"], second["refresh_token"]);
}

backend_tests!(
    keys_are_scoped_to_the_caller,
    token_answers_are_not_kept,
    retry_with_the_same_key_replays_the_first_answer,
    same_key_with_another_body_is_422,
    a_failed_first_request_does_not_keep_the_key,
    an_invalid_key_is_422,
);

async fn a_key_expires_after_its_ttl(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |config| config.idempotency_ttl_secs = 1).await
    else {
        return;
    };
    let first = post_with_key(
        &app,
        "k1",
        &json!({"email": "ada@example.com", "name": "Ada Lovelace"}),
    )
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    // Within the TTL the key is still bound to the first body.
    let early = post_with_key(
        &app,
        "k1",
        &json!({"email": "grace@example.com", "name": "Grace Hopper"}),
    )
    .await;
    problem(early, 422).await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = post_with_key(
        &app,
        "k1",
        &json!({"email": "grace@example.com", "name": "Grace Hopper"}),
    )
    .await;
    assert_eq!(later.status(), 201, "the expired key is free again");
    assert!(later.headers().get("idempotent-replayed").is_none());
    let second: Value = later.json().await.unwrap();
    assert_ne!(second["id"], first["id"], "a new user");
    assert_eq!(users(&app).await, [second, first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_key_expires_after_its_ttl() {
    a_key_expires_after_its_ttl(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_key_expires_after_its_ttl() {
    a_key_expires_after_its_ttl(Backend::Postgres).await;
}
