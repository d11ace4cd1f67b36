//! `/compute/matmul` over HTTP: results, validation and back-pressure.

mod common;

use common::{Backend, problem};
use serde_json::Value;

/// sum(A·B) computed independently: Σ_k (column k of A summed) · (row k of B summed).
fn expected_checksum(n: u64) -> f64 {
    (0..n)
        .map(|k| {
            let column: u64 = (0..n).map(|i| (i * k) % 7 + 1).sum();
            let row: u64 = (0..n).map(|j| (k + j) % 5 + 1).sum();
            column * row
        })
        .sum::<u64>() as f64
}

#[tokio::test]
async fn matmul_answers_the_checksum_of_the_product() {
    let app = common::spawn(Backend::Sqlite).await.unwrap();
    for n in [1u64, 7, 128, 300] {
        let response = app
            .get(&format!("/compute/matmul?n={n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["n"], n);
        assert_eq!(
            body["checksum"].as_f64(),
            Some(expected_checksum(n)),
            "n = {n}"
        );
    }
}

#[tokio::test]
async fn matmul_rejects_n_outside_the_range() {
    let app = common::spawn(Backend::Sqlite).await.unwrap();
    for query in ["n=0", "n=1025", "n=abc", "n=-1", ""] {
        let response = app
            .get(&format!("/compute/matmul?{query}"))
            .send()
            .await
            .unwrap();
        let body = problem(response, 422).await;
        assert_eq!(body["errors"][0]["location"], "query", "{query}");
        assert_eq!(body["errors"][0]["pointer"], "/n", "{query}");
    }
}

#[tokio::test]
async fn a_saturated_pool_answers_503_with_retry_after() {
    let app = common::spawn_with(Backend::Sqlite, |config| {
        config.compute_threads = 1;
        config.compute_queue = 0;
    })
    .await
    .unwrap();
    let requests = (0..8).map(|_| app.get("/compute/matmul?n=1024").send());
    let responses = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    let mut refused = 0;
    for response in responses {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body = problem(response, 503).await;
                assert_eq!(body["type"], "/problems/overloaded");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1, "at least the admitted job succeeds");
    assert!(
        refused >= 1,
        "one thread and no queue cannot take 8 jobs at once"
    );
    let after = app.get("/compute/matmul?n=4").send().await.unwrap();
    assert_eq!(after.status(), 200, "the pool recovers once the jobs end");
}
