//! Rate limits shared through Redis: two instances on one PostgreSQL and one Redis enforce
//! one quota per client and one failed-login count per account; without Redis answering,
//! each instance still limits on its own.

mod common;

use common::{ADMIN_EMAIL, Backend, TestApp, redis_prefix, redis_url};
use keel::config::Config;
use secrecy::SecretString;
use serde_json::json;

async fn login(app: &TestApp, password: &str) -> u16 {
    app.anon
        .post(app.url("/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Two instances sharing PostgreSQL and Redis, both configured by `limits`.
async fn pair(limits: fn(&mut Config)) -> Option<(TestApp, TestApp)> {
    let redis = redis_url().await?;
    let prefix = redis_prefix();
    let (url, key_prefix) = (redis.clone(), prefix.clone());
    let a = common::spawn_with(Backend::Postgres, move |config| {
        config.redis_url = Some(SecretString::from(url));
        config.redis_key_prefix = key_prefix;
        limits(config);
    })
    .await?;
    let b = common::spawn_beside(&a, move |config| {
        config.redis_url = Some(SecretString::from(redis));
        config.redis_key_prefix = prefix;
        limits(config);
    })
    .await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_limit_holds_across_instances() {
    // The harness has logged in once on each instance; 6 more fit in a quota of 8.
    let Some((a, b)) = pair(|config| config.auth_rate_limit_per_minute = 8).await else {
        return;
    };
    for app in [&a, &b, &a, &b, &a, &b] {
        assert_eq!(login(app, common::ADMIN_PASSWORD).await, 200);
    }
    // The quota is spent, whichever instance is asked.
    for app in [&a, &b] {
        let response = app
            .anon
            .post(app.url("/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        let state = common::header(&response, "ratelimit");
        assert!(state.contains("\"auth\";r=0;t="), "{state}");
        assert!(
            common::header(&response, "retry-after")
                .parse::<u64>()
                .unwrap()
                >= 1
        );
    }
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_account_on_every_instance() {
    let Some((a, b)) = pair(|config| {
        config.login_failure_limit = 3;
        config.login_failure_window_secs = 60;
    })
    .await
    else {
        return;
    };
    assert_eq!(login(&a, "wrong password number one").await, 401);
    assert_eq!(login(&b, "wrong password number two").await, 401);
    assert_eq!(login(&a, "wrong password number three").await, 401);
    // Three failures in all: locked on both, even with the right password.
    assert_eq!(login(&b, common::ADMIN_PASSWORD).await, 429);
    assert_eq!(login(&a, common::ADMIN_PASSWORD).await, 429);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_answering_each_instance_limits_on_its_own() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let Some(app) = common::spawn_with(Backend::Sqlite, move |config| {
        config.redis_url = Some(SecretString::from(format!("redis://127.0.0.1:{port}")));
        config.auth_rate_limit_per_minute = 3;
    })
    .await
    else {
        return;
    };
    // One login was the harness's.
    assert_eq!(login(&app, common::ADMIN_PASSWORD).await, 200);
    assert_eq!(login(&app, common::ADMIN_PASSWORD).await, 200);
    assert_eq!(login(&app, common::ADMIN_PASSWORD).await, 429);
}
