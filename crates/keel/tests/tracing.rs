//! Traces end to end: `keel serve` exports to an OTLP/HTTP receiver run by the test on
//! loopback, and the test asserts on the spans it receives. One registration, sent with a
//! W3C `traceparent`, must give one trace holding its HTTP span, its database spans and
//! the span of the e-mail job it enqueued (on the embedded queue, and across RabbitMQ);
//! its log lines and problem documents name the same trace.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use common::{
    amqp_url, create_pg_database, delete_queues, drop_pg_database, eventually, free_port,
    queue_prefix,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value as AnyValue,
    trace::v1::span::SpanKind,
};
use prost::Message as _;
use serde_json::{Value, json};

/// One received span, reduced to what the assertions read.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: SpanKind,
    attributes: HashMap<String, String>,
    service: String,
}

/// An OTLP/HTTP (protobuf) trace receiver on a loopback port.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver port");
        let address = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, format!("http://{address}"))
    }

    fn spans(&self, trace_id: &str) -> Vec<Received> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

async fn export(State(receiver): State<Receiver>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = receiver.0.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent: hex::encode(&span.parent_span_id),
                kind: span.kind(),
                name: span.name,
                attributes: span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect(),
                service: service.clone(),
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A `keel serve` child process exporting to the receiver.
struct Keel {
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Keel {
    fn start(dir: &Path, endpoint: &str, extra: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = dir.join("keel.log");
        let output = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("KEEL_DATA_DIR", dir)
            .env("KEEL_PASSWORD_HASH_MEMORY_KIB", "1024")
            .env("KEEL_PASSWORD_HASH_ITERATIONS", "1")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_SERVICE_NAME", "keel-under-test")
            // Export every 100 ms instead of every 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log file"))
            .stderr(output)
            .spawn()
            .expect("keel starts");
        Self { port, child, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn ready(&mut self) {
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("keel exited at start-up ({status}):\n{}", self.log_text());
            }
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keel not ready within 30 s:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh W3C trace context: (trace id, parent span id, header value).
fn traceparent() -> (String, String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

/// Registers an account with a `traceparent` and checks the whole trace that follows; also
/// the trace id in log lines and in a problem document. `system` is the database's
/// `db.system.name`; `broker` whether the jobs cross RabbitMQ.
async fn one_connected_trace(extra: &[(&str, String)], system: &str, broker: bool) {
    let (receiver, endpoint) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut keel = Keel::start(dir.path(), &endpoint, extra);
    keel.ready().await;
    let client = reqwest::Client::new();

    let (trace, caller_span, header) = traceparent();
    let response = client
        .post(keel.url("/auth/register"))
        .header("traceparent", &header)
        .json(&json!({
            "email": "traced@example.com",
            "name": "Traced",
            "password": "a long enough password",
        }))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 201, "{}", keel.log_text());

    // The request's server span, under the caller's span; its queries; the e-mail jobs.
    let spans = eventually(20, "the registration's trace with its jobs", || {
        let spans = receiver.spans(&trace);
        async move {
            let jobs = spans
                .iter()
                .filter(|s| s.kind == SpanKind::Consumer && s.name.starts_with("process email."))
                .count();
            (jobs >= 2).then_some(spans)
        }
    })
    .await;
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let descends_from = |span: &Received, ancestor: &str| {
        let mut parent = span.parent.as_str();
        for _ in 0..16 {
            if parent == ancestor {
                return true;
            }
            match by_id.get(parent) {
                Some(next) => parent = next.parent.as_str(),
                None => return false,
            }
        }
        false
    };
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    assert_eq!(server.name, "POST /auth/register");
    assert_eq!(
        server.parent, caller_span,
        "the incoming traceparent is the parent"
    );
    assert_eq!(server.service, "keel-under-test");
    assert_eq!(server.attributes["http.request.method"], "POST");
    assert_eq!(server.attributes["http.route"], "/auth/register");
    assert_eq!(server.attributes["http.response.status_code"], "201");
    assert_eq!(server.attributes["url.path"], "/auth/register");

    let insert = spans
        .iter()
        .find(|s| s.name == "INSERT users")
        .unwrap_or_else(|| panic!("no INSERT users span in {spans:#?}"));
    assert_eq!(insert.kind, SpanKind::Client);
    assert_eq!(insert.attributes["db.system.name"], system);
    assert!(insert.attributes["db.query.text"].starts_with("INSERT INTO users"));
    assert!(
        !insert.attributes["db.query.text"].contains("traced@example.com"),
        "bind values never reach a span"
    );
    assert!(
        descends_from(insert, &server.span_id),
        "the query is in the request"
    );

    for job in spans.iter().filter(|s| s.kind == SpanKind::Consumer) {
        assert!(
            descends_from(job, &server.span_id),
            "the job {} continues the request's trace: {spans:#?}",
            job.name
        );
        // The handler's own work (its queries) belongs to the job's span.
        assert!(
            spans.iter().any(|s| s.parent == job.span_id),
            "no span inside {}: {spans:#?}",
            job.name
        );
    }
    if broker {
        let publish = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Producer)
            .collect::<Vec<_>>();
        assert_eq!(publish.len(), 2, "one publish span per job: {spans:#?}");
        for span in publish {
            assert_eq!(span.attributes["messaging.system"], "rabbitmq");
            assert!(descends_from(span, &server.span_id));
            assert!(
                spans
                    .iter()
                    .any(|s| s.kind == SpanKind::Consumer && s.parent == span.span_id),
                "the worker continues the message's context"
            );
        }
    }

    // The request's log line carries the trace, as does a problem document.
    let line = eventually(5, "the request's log line", || {
        let lines = keel.log_lines();
        async move {
            lines
                .into_iter()
                .find(|l| l["message"] == "request finished" && l["http.route"] == "/auth/register")
        }
    })
    .await;
    assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    assert_eq!(line["span_id"], server.span_id.as_str(), "{line}");
    let job_line = keel
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "job succeeded")
        .expect("a job line");
    assert_eq!(job_line["trace_id"], trace.as_str(), "{job_line}");

    let (other_trace, _, header) = traceparent();
    let response = client
        .post(keel.url("/auth/register"))
        .header("traceparent", &header)
        .json(&json!({ "email": "not an address", "name": "", "password": "x" }))
        .send()
        .await
        .expect("bad registration");
    assert_eq!(response.status(), 422);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: Value = response.json().await.expect("problem+json");
    assert_eq!(problem["trace_id"], other_trace.as_str(), "{problem}");
    assert_eq!(problem["request_id"], request_id.as_str(), "{problem}");
}

#[tokio::test]
async fn a_registration_is_one_trace_on_the_embedded_queue() {
    one_connected_trace(&[], "sqlite", false).await;
}

#[tokio::test]
async fn a_registration_is_one_trace_across_postgres_and_rabbitmq() {
    let Some(amqp) = amqp_url().await else { return };
    let Some((database, url)) = create_pg_database().await else {
        return;
    };
    let prefix = queue_prefix();
    one_connected_trace(
        &[
            ("DATABASE_URL", url),
            ("AMQP_URL", amqp.clone()),
            ("KEEL_AMQP_QUEUE_PREFIX", prefix.clone()),
        ],
        "postgresql",
        true,
    )
    .await;
    delete_queues(&amqp, &prefix).await;
    drop_pg_database(database);
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_no_trace_ids_appear() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut keel = Keel::start(dir.path(), "", &[]);
    keel.ready().await;
    let (_, _, header) = traceparent();
    let response = reqwest::Client::new()
        .get(keel.url("/no-such-route"))
        .header("traceparent", header)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.expect("problem+json");
    assert!(problem.get("trace_id").is_none(), "{problem}");
    assert!(problem["request_id"].is_string(), "{problem}");
    let lines = eventually(5, "a request line", || {
        let lines = keel.log_lines();
        async move {
            lines
                .iter()
                .any(|l| l["message"] == "request finished")
                .then_some(lines)
        }
    })
    .await;
    assert!(lines.iter().all(|l| l.get("trace_id").is_none()));
}

#[tokio::test]
async fn a_webhook_delivery_sends_the_traceparent_of_its_span() {
    let (receiver, endpoint) = Receiver::start().await;
    // The webhook endpoint: records the traceparent of each delivery.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook =
        Router::new()
            .route(
                "/hook",
                post(
                    |State(seen): State<Arc<Mutex<Vec<String>>>>,
                     headers: axum::http::HeaderMap| async move {
                        if let Some(value) =
                            headers.get("traceparent").and_then(|v| v.to_str().ok())
                        {
                            seen.lock().unwrap().push(value.to_owned());
                        }
                        "ok"
                    },
                ),
            )
            .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("hook port");
    let hook_url = format!(
        "http://{}/hook",
        listener.local_addr().expect("hook address")
    );
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let dir = tempfile::tempdir().expect("temporary directory");
    let admin = ("hooks-admin@example.com", "hooks admin password 0123");
    let mut keel = Keel::start(
        dir.path(),
        &endpoint,
        &[
            ("KEEL_BOOTSTRAP_ADMIN_EMAIL", admin.0.to_owned()),
            ("KEEL_BOOTSTRAP_ADMIN_PASSWORD", admin.1.to_owned()),
        ],
    );
    keel.ready().await;
    let client = reqwest::Client::new();
    let login: Value = client
        .post(keel.url("/auth/login"))
        .json(&json!({ "email": admin.0, "password": admin.1 }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("tokens");
    let token = login["access_token"].as_str().expect("access token");
    let response = client
        .post(keel.url("/webhooks"))
        .bearer_auth(token)
        .json(&json!({ "url": hook_url, "event_types": ["user.created"] }))
        .send()
        .await
        .expect("webhook registration");
    assert_eq!(response.status(), 201);
    let response = client
        .post(keel.url("/auth/register"))
        .json(&json!({
            "email": "hooked@example.com",
            "name": "Hooked",
            "password": "a long enough password",
        }))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 201);

    let traceparent = eventually(20, "a delivery with a traceparent", || {
        let first = seen.lock().unwrap().first().cloned();
        async move { first }
    })
    .await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace, span) = (parts[1].to_owned(), parts[2].to_owned());
    // The header names the delivery's client span, inside the delivery job's span.
    let spans = eventually(20, "the delivery's spans", || {
        let spans = receiver.spans(&trace);
        let found = spans.iter().any(|s| s.span_id == span);
        async move { found.then_some(spans) }
    })
    .await;
    let client_span = spans
        .iter()
        .find(|s| s.span_id == span)
        .expect("client span");
    assert_eq!(client_span.kind, SpanKind::Client);
    assert_eq!(client_span.attributes["http.response.status_code"], "200");
    let job = spans
        .iter()
        .find(|s| s.span_id == client_span.parent)
        .expect("the delivery job's span");
    assert_eq!(job.name, "process webhook.deliver");
}
