//! The PostgreSQL connection layer: TLS as `sslmode` asks, and recovery from dropped
//! connections. (Statements on both backends are covered through the HTTP tests.)

mod common;

use keel::db::Db;
use secrecy::SecretString;

/// keel's connection to a database of its own, dropped with it.
struct TestDb {
    db: Db,
    name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        common::drop_pg_database(std::mem::take(&mut self.name));
    }
}

impl std::ops::Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// A database for one test and keel's connection to it, with `query` appended to the URL.
async fn connect(query: &str) -> Option<TestDb> {
    let (name, url) = common::create_pg_database().await?;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = common::test_config(dir.path());
    config.database_url = Some(SecretString::from(format!("{url}{query}")));
    let db = Db::connect(&config).await.expect("connects");
    Some(TestDb { db, name })
}

/// Whether the connection that runs the statement is encrypted.
async fn encrypted(db: &Db) -> bool {
    let (ssl,): (bool,) = db
        .fetch_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    ssl
}

async fn server_has_tls(db: &Db) -> bool {
    let (setting,): (String,) = db
        .fetch_one("SELECT current_setting('ssl')", &[])
        .await
        .expect("ssl setting");
    setting == "on"
}

#[tokio::test]
async fn sslmode_disable_connects_in_clear() {
    let Some(db) = connect("?sslmode=disable").await else {
        return;
    };
    assert!(!encrypted(&db).await);
}

#[tokio::test]
async fn sslmode_require_encrypts_when_the_server_offers_tls() {
    let Some(db) = connect("?sslmode=disable").await else {
        return;
    };
    if !server_has_tls(&db).await {
        eprintln!("skipping: this PostgreSQL server has ssl = off");
        return;
    }
    let Some(db) = connect("?sslmode=require").await else {
        return;
    };
    assert!(encrypted(&db).await);
}

#[tokio::test]
async fn connections_killed_by_the_server_are_replaced() {
    let Some(db) = connect("?sslmode=disable").await else {
        return;
    };
    let (before,): (i32,) = db
        .fetch_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("first query");
    let (database,): (String,) = db
        .fetch_one("SELECT current_database()", &[])
        .await
        .expect("database name");
    // Another session ends every connection keel holds, as a failover or an admin would.
    let Some(admin) = connect("?sslmode=disable").await else {
        return;
    };
    let (killed,): (i64,) = admin
        .fetch_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
            &[&database],
        )
        .await
        .expect("terminate");
    assert!(killed >= 1, "keel's connection was not found");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A statement already on its way when the connection died may fail; later ones run on
    // fresh connections.
    let mut results = Vec::new();
    for _ in 0..12 {
        results.push(db.fetch_one::<(i32,)>("SELECT pg_backend_pid()", &[]).await);
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(
        failed <= 4,
        "{failed} of 12 statements failed after the kill"
    );
    assert!(results[8..].iter().all(Result::is_ok), "{results:?}");
    let pids: Vec<i32> = results.into_iter().flatten().map(|(pid,)| pid).collect();
    assert!(!pids.contains(&before), "still on the killed connection");
}
