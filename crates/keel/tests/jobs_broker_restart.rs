//! RabbitMQ restarted under keel: no job is lost, neither those waiting in the broker's
//! queue nor those enqueued while it is down. In a test binary of its own, because it
//! stops the machine's RabbitMQ (`rabbitmqctl stop_app` / `start_app`), and cargo runs
//! test binaries one after another.

mod common;

use std::{
    collections::HashMap,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{amqp_url, delete_queues, eventually, queue_prefix, services_required};
use keel::{
    db::Db,
    jobs::{Handlers, JobState, Jobs, NewJob, store::JobQuery},
    shutdown::Shutdown,
};
use secrecy::SecretString;
use serde_json::json;

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Restarts RabbitMQ's application (the node keeps running, so the restart is quick).
fn restart_broker() {
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
    std::thread::sleep(Duration::from_secs(1));
    assert!(rabbitmqctl(&["start_app"]), "rabbitmqctl start_app");
}

async fn count(jobs: &Jobs, state: JobState) -> usize {
    jobs.store()
        .list(&JobQuery {
            state: Some(state),
            limit: 100,
            ..JobQuery::default()
        })
        .await
        .map(|(page, _)| page.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_when_rabbitmq_restarts() {
    let Some(url) = amqp_url().await else {
        return;
    };
    if !rabbitmqctl(&["status"]) {
        assert!(
            !services_required(),
            "KEEL_REQUIRE_SERVICES=1 but rabbitmqctl cannot control the local RabbitMQ"
        );
        eprintln!("skipping: rabbitmqctl cannot control the local RabbitMQ");
        return;
    }
    let Some((name, database_url)) = common::create_pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let prefix = queue_prefix();
    let mut config = common::test_config(dir.path());
    config.database_url = Some(SecretString::from(database_url));
    config.amqp_url = Some(SecretString::from(url.clone()));
    config.amqp_queue_prefix = prefix.clone();
    config.jobs_concurrency = 1;
    config.jobs_poll_ms = 50;
    config.jobs_lease_secs = 5;
    let db = Db::connect(&config).await.expect("database");
    db.migrate().await.expect("migrations");

    // Slow jobs, one at a time, so that most wait in the broker's queue.
    let runs: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let mut handlers = Handlers::default();
    let seen = Arc::clone(&runs);
    handlers.register("test.slow", move |job| {
        let seen = Arc::clone(&seen);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = job.payload["n"].as_i64().unwrap_or(-1);
            *seen.lock().expect("lock").entry(n).or_default() += 1;
            Ok(())
        }
    });
    let jobs = Jobs::new(&config, db.clone());
    let shutdown = Shutdown::default();
    let worker = {
        let (jobs, config, shutdown) = (jobs.clone(), config.clone(), shutdown.clone());
        tokio::spawn(
            async move { keel::jobs::worker::run(jobs, handlers, &config, shutdown).await },
        )
    };
    eventually(20, "the worker to connect", || async {
        jobs.broker_connected().unwrap_or(false).then_some(())
    })
    .await;

    // 1. Queued in the broker when it stops.
    for n in 0..40 {
        jobs.enqueue(NewJob::new("test.slow", json!({ "n": n })))
            .await
            .expect("enqueued");
    }
    eventually(20, "the first jobs to be published", || async {
        let unpublished: Option<(i64,)> = db
            .fetch_optional(
                "SELECT COUNT(*) FROM jobs WHERE published_at IS NULL AND state = 'queued'",
                &[],
            )
            .await
            .ok()
            .flatten();
        (unpublished == Some((0,))).then_some(())
    })
    .await;
    let waiting = 40 - count(&jobs, JobState::Succeeded).await;
    assert!(waiting > 10, "most jobs wait in the broker ({waiting})");
    restart_broker_async().await;

    // 2. Enqueued (and so being published) while the connection is down or coming back.
    for n in 40..80 {
        jobs.enqueue(NewJob::new("test.slow", json!({ "n": n })))
            .await
            .expect("enqueued");
        if n == 50 {
            restart_broker_async().await;
        }
    }
    eventually(120, "all 80 jobs to succeed", || async {
        (count(&jobs, JobState::Succeeded).await == 80).then_some(())
    })
    .await;
    shutdown.begin();
    worker.await.expect("worker stops");
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 80, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{waiting} jobs waited in the broker during the first restart; jobs run more than once: {twice:?}"
    );
    db.close().await;
    delete_queues(&url, &prefix).await;
    common::drop_pg_database(name);
}

async fn restart_broker_async() {
    tokio::task::spawn_blocking(restart_broker)
        .await
        .expect("restart");
}
