//! The users cache over HTTP: reads served from it, never stale after a write that was
//! answered (also across two instances sharing PostgreSQL and Redis, and under concurrent
//! writes), and keel going on from the database when Redis is unreachable.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, eventually, redis_url};
use keel::{config::Config, db::Db};
use secrecy::SecretString;
use serde_json::{Value, json};

/// Changes a user's name behind keel's back, as another program would.
async fn rename_in_database(database_url: &str, id: &str, name: &str) {
    let config = Config {
        database_url: Some(SecretString::from(database_url.to_owned())),
        ..Config::default()
    };
    let db = Db::connect(&config).await.unwrap();
    let id: uuid::Uuid = id.parse().unwrap();
    let changed = db
        .execute(
            "UPDATE users SET name = $1 WHERE id = $2",
            &[&name.to_owned(), &id],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    db.close().await;
}

async fn get_user(app: &TestApp, id: &str) -> (u16, Value) {
    let response = app.get(&format!("/users/{id}")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn patch_name(app: &TestApp, id: &str, name: &str) -> reqwest::Response {
    app.patch_json(&format!("/users/{id}"), &json!({"name": name}))
        .send()
        .await
        .unwrap()
}

async fn reads_are_cached_and_writes_refresh_them(app: TestApp) {
    let ada = app.create_user("ada@example.com", "Ada Lovelace").await;
    let id = ada["id"].as_str().unwrap();
    assert_eq!(get_user(&app, id).await.1["name"], "Ada Lovelace");
    // A change keel did not make is not seen: the answer came from the cache.
    rename_in_database(&app.database_url, id, "Changed Elsewhere").await;
    assert_eq!(get_user(&app, id).await.1["name"], "Ada Lovelace");

    // A write through keel is seen at once, with its new ETag.
    let response = patch_name(&app, id, "Countess of Lovelace").await;
    assert_eq!(response.status(), 200);
    let response = app.get(&format!("/users/{id}")).send().await.unwrap();
    assert_eq!(common::header(&response, "etag"), "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "Countess of Lovelace");

    // So is a deletion.
    let response = app.delete(&format!("/users/{id}")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(get_user(&app, id).await.0, 404);

    // /users/me too: a new password is a new revision.
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": "me@example.com", "name": "Me Myself", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    let me = || async {
        let response = app
            .anon
            .get(app.url("/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        common::header(&response, "etag")
    };
    assert_eq!(me().await, "\"1\"");
    let response = app
        .anon
        .patch(app.url("/users/me"))
        .bearer_auth(&token)
        .json(&json!({"current_password": "correct horse battery staple", "password": "another fine passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(me().await, "\"2\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_reads_are_cached_and_writes_refresh_them() {
    if let Some(app) = common::spawn(Backend::Sqlite).await {
        reads_are_cached_and_writes_refresh_them(app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_reads_are_cached_and_writes_refresh_them() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = common::redis_prefix();
    let app = common::spawn_with(Backend::Postgres, move |config| {
        config.redis_url = Some(SecretString::from(redis));
        config.redis_key_prefix = prefix;
    })
    .await;
    if let Some(app) = app {
        reads_are_cached_and_writes_refresh_them(app).await;
    }
}

/// Two instances on one PostgreSQL and one Redis: whatever instance answered a write, the
/// other serves the new version at once, also when both write the same user concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_redis_read_their_writes() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = common::redis_prefix();
    let shared = (redis.clone(), prefix.clone());
    let Some(a) = common::spawn_with(Backend::Postgres, move |config| {
        config.redis_url = Some(SecretString::from(shared.0));
        config.redis_key_prefix = shared.1;
    })
    .await
    else {
        return;
    };
    let b = common::spawn_beside(&a, move |config| {
        config.redis_url = Some(SecretString::from(redis));
        config.redis_key_prefix = prefix;
    })
    .await;
    let user = a.create_user("ada@example.com", "Ada Lovelace").await;
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(get_user(&b, &id).await.1["name"], "Ada Lovelace");
    assert_eq!(patch_name(&a, &id, "Written Through A").await.status(), 200);
    assert_eq!(get_user(&b, &id).await.1["name"], "Written Through A");

    // Concurrent writers and readers on both instances: after each answered write, both
    // instances serve that version or a later one.
    let mut tasks = Vec::new();
    for round in 0..24 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (writer, reader, id) = (writer.url(""), reader.url(""), id.clone());
        let client = a.client.clone();
        tasks.push(tokio::spawn(async move {
            let response = client
                .patch(format!("{writer}/users/{id}"))
                .json(&json!({"name": format!("Round {round:02}")}))
                .send()
                .await
                .unwrap();
            if response.status() != 200 {
                return None;
            }
            let written: i64 = common::header(&response, "etag")
                .trim_matches('"')
                .parse()
                .unwrap();
            let response = client
                .get(format!("{reader}/users/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                200,
                "round {round}: reading after a write"
            );
            let read: i64 = common::header(&response, "etag")
                .trim_matches('"')
                .parse()
                .unwrap();
            assert!(
                read >= written,
                "round {round}: read version {read} after writing {written}"
            );
            Some((round % 2, written))
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        if let Some(write) = task.await.unwrap() {
            written.push(write);
        }
    }
    // Each instance's writes went through (some lose to a concurrent one, as they should).
    assert!(
        written.iter().any(|(instance, _)| *instance == 0),
        "{written:?}"
    );
    assert!(
        written.iter().any(|(instance, _)| *instance == 1),
        "{written:?}"
    );
    let written: Vec<i64> = written.into_iter().map(|(_, version)| version).collect();
    // In the end both serve exactly what is stored.
    let stored = get_user(&a, &id).await.1;
    for app in [&a, &b] {
        let (status, body) = get_user(app, &id).await;
        assert_eq!(status, 200);
        assert_eq!(body, stored);
    }
    let response = a.get(&format!("/users/{id}")).send().await.unwrap();
    let version: i64 = common::header(&response, "etag")
        .trim_matches('"')
        .parse()
        .unwrap();
    assert_eq!(version, written.iter().copied().max().unwrap());

    // A deletion through one is a 404 through the other at once.
    assert_eq!(
        b.delete(&format!("/users/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(get_user(&a, &id).await.0, 404);
    b.stop().await.unwrap();
}

/// Without Redis each instance caches in memory and drops what the event log says another
/// instance changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_without_redis_converge_through_the_event_log() {
    let Some(a) = common::spawn(Backend::Postgres).await else {
        return;
    };
    let b = common::spawn_beside(&a, |_| {}).await;
    let user = a.create_user("ada@example.com", "Ada Lovelace").await;
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(get_user(&b, &id).await.1["name"], "Ada Lovelace");
    assert_eq!(patch_name(&a, &id, "Changed On A").await.status(), 200);
    eventually(5, "instance B to drop its stale entry", || async {
        (get_user(&b, &id).await.1["name"] == "Changed On A").then_some(())
    })
    .await;
    b.stop().await.unwrap();
}

/// An unreachable Redis costs nothing but the cache: reads and writes work from the
/// database, and /readyz says the cache is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_serves_from_the_database_when_redis_is_down() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let Some(app) = common::spawn_with(Backend::Sqlite, move |config| {
        config.redis_url = Some(SecretString::from(format!("redis://127.0.0.1:{port}")));
    })
    .await
    else {
        return;
    };
    let ada = app.create_user("ada@example.com", "Ada Lovelace").await;
    let id = ada["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get_user(&app, id).await.1["name"], "Ada Lovelace");
    assert_eq!(patch_name(&app, id, "Still Works").await.status(), 200);
    assert_eq!(get_user(&app, id).await.1["name"], "Still Works");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let response = app.get("/readyz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ready: Value = response.json().await.unwrap();
    assert_eq!(ready["cache"]["backend"], "redis");
    assert_eq!(ready["cache"]["status"], "down");
    assert!(ready["cache"]["reason"].is_string());
}
