//! Domain events over HTTP on both databases: the log written with each change, Server-Sent
//! Events and WebSocket streams, resuming, who sees what, tickets, slow consumers, and (on
//! PostgreSQL) transactions that commit out of id order.

mod common;

use std::time::Duration;

use common::{ADMIN_EMAIL, Backend, TestApp, problem};
use futures_util::{SinkExt, StreamExt};
use keel::{config::Config, db::Db, events::EventLog};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};

const PASSWORD: &str = "correct horse battery staple";

/// How long a test waits for an event that should come.
const WAIT: Duration = Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Reads an event stream as a browser's EventSource would.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn open(app: &TestApp, path: &str, token: Option<&str>, last_id: Option<i64>) -> Self {
        let mut request = app.anon.get(app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("stream opened");
        assert_eq!(response.status(), 200, "opening {path}");
        assert_eq!(
            common::header(&response, "content-type"),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (heartbeat comments skipped), or `None` if none comes within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(Sse { id, event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("stream readable")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    async fn next(&mut self) -> Sse {
        self.next_within(WAIT).await.expect("an event within 10 s")
    }
}

async fn register(app: &TestApp, email: &str) -> (Value, String) {
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": email, "name": "Test Person", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "registering {email}");
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    (body["user"].clone(), token)
}

async fn rename(app: &TestApp, id: &str, name: &str) {
    let response = app
        .patch_json(&format!("/users/{id}"), &json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "renaming {id}");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = crate::common::spawn(crate::common::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = crate::common::spawn(crate::common::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    sse_streams_changes_and_resumes_after_a_reconnect,
    users_see_their_own_events_and_admins_all,
    websocket_subscribes_with_a_single_use_ticket,
    bad_stream_requests_are_refused,
    streams_end_cleanly_on_shutdown,
);

async fn sse_streams_changes_and_resumes_after_a_reconnect(app: TestApp) {
    let token = app.admin_token.clone();
    let mut stream = SseClient::open(&app, "/events?types=user.*", Some(&token), None).await;
    let ada = app.create_user("ada@example.com", "Ada Lovelace").await;
    let created = stream.next().await;
    assert_eq!(created.event, "user.created");
    assert_eq!(created.data["type"], "user.created");
    assert_eq!(created.data["data"]["id"], ada["id"]);
    assert_eq!(created.data["data"]["email"], "ada@example.com");
    assert_eq!(created.data["data"]["email_verified"], false);
    let first = created.id.expect("events carry an id");
    assert_eq!(created.data["id"], first);

    let id = ada["id"].as_str().unwrap();
    rename(&app, id, "Countess of Lovelace").await;
    let updated = stream.next().await;
    assert_eq!(updated.event, "user.updated");
    assert_eq!(updated.data["data"]["name"], "Countess of Lovelace");
    assert_eq!(updated.data["data"]["version"], 2);
    assert!(updated.id.unwrap() > first);
    drop(stream);

    // Written while no one listens: the resumed stream replays them in order, then goes on live.
    let grace = app.create_user("grace@example.com", "Grace Hopper").await;
    let response = app.delete(&format!("/users/{id}")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let mut resumed =
        SseClient::open(&app, "/events?types=user.*", Some(&token), Some(first)).await;
    let replayed: Vec<Sse> = vec![
        resumed.next().await,
        resumed.next().await,
        resumed.next().await,
    ];
    let kinds: Vec<&str> = replayed.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["user.updated", "user.created", "user.deleted"]);
    assert_eq!(replayed[1].data["data"]["id"], grace["id"]);
    assert_eq!(replayed[2].data["data"], json!({"id": id}));
    let ids: Vec<i64> = replayed.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    app.create_user("alan@example.com", "Alan Turing").await;
    let live = resumed.next().await;
    assert_eq!(live.data["data"]["email"], "alan@example.com");
    assert!(live.id.unwrap() > ids[2]);

    // `?after=` works like Last-Event-ID, and `types` filters.
    let path = format!("/events?after={first}&types=user.deleted");
    let mut filtered = SseClient::open(&app, &path, Some(&token), None).await;
    let only = filtered.next().await;
    assert_eq!(only.event, "user.deleted");
}

async fn users_see_their_own_events_and_admins_all(app: TestApp) {
    let (me, my_token) = register(&app, "me@example.com").await;
    let my_id = me["id"].as_str().unwrap().to_owned();
    let mut mine = SseClient::open(&app, "/events?after=0", Some(&my_token), None).await;
    let mut all = SseClient::open(&app, "/events?after=0", Some(&app.admin_token), None).await;

    // The log so far, as this user sees it: their own account's creation and registration.
    let created = mine.next().await;
    assert_eq!(created.event, "user.created");
    assert_eq!(created.data["data"]["id"], my_id.as_str());
    let registered = mine.next().await;
    assert_eq!(registered.event, "security.account.registered");
    assert_eq!(registered.data["data"]["user_id"], my_id.as_str());

    let other = app.create_user("other@example.com", "Someone Else").await;
    rename(&app, &my_id, "Renamed By Admin").await;
    // The rename comes after the other user's creation in the log; this user never sees
    // the creation, an admin sees both.
    let next = mine.next().await;
    assert_eq!(next.event, "user.updated");
    assert_eq!(next.data["data"]["name"], "Renamed By Admin");
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let event = all.next().await;
        let done = event.event == "user.updated";
        seen.push((event.event, event.data["data"]["id"].clone()));
        if done {
            break;
        }
    }
    assert!(seen.contains(&("user.created".to_owned(), other["id"].clone())));
    assert!(seen.contains(&("user.created".to_owned(), json!(my_id))));
    // A failed login on another account is not this user's business either.
    let response = app
        .anon
        .post(app.url("/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": "wrong password entirely"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The registration's e-mail jobs may finish at any point of this session, so their
    // `job.succeeded` events can come first.
    let mut admin_sees = all.next().await;
    while admin_sees.event == "job.succeeded" {
        admin_sees = all.next().await;
    }
    assert_eq!(admin_sees.event, "security.login.failed");
    assert_eq!(
        mine.next_within(Duration::from_millis(700))
            .await
            .map(|e| e.event),
        None
    );
}

/// A WebSocket client.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ticket(app: &TestApp, token: &str) -> String {
    let response = app
        .anon
        .post(app.url("/events/ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(common::header(&response, "cache-control"), "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().unwrap().to_owned()
}

async fn connect(app: &TestApp, query: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{}/events/ws?{query}", app.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next JSON text message, answering nothing else; `None` on close or timeout.
async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await.ok()?? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn command(ws: &mut Ws, command: Value) -> Value {
    ws.send(Message::Text(command.to_string().into()))
        .await
        .unwrap();
    next_json(ws, WAIT).await.expect("an answer")
}

async fn websocket_subscribes_with_a_single_use_ticket(app: TestApp) {
    let ticket = ticket(&app, &app.admin_token).await;
    let mut ws = connect(&app, &format!("ticket={ticket}&types=user.updated"))
        .await
        .expect("the ticket opens a WebSocket");
    // Spent: a second use is refused before the handshake.
    match connect(&app, &format!("ticket={ticket}")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "a spent ticket must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    match connect(&app, "ticket=made-up").await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "an unknown ticket must be refused, got {:?}",
            other.map(|_| ())
        ),
    }

    let answer = command(
        &mut ws,
        json!({"type": "subscribe", "events": ["user.created"]}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"type": "subscribed", "events": ["user.updated", "user.created"]})
    );
    let ada = app.create_user("ada@example.com", "Ada Lovelace").await;
    let event = next_json(&mut ws, WAIT).await.expect("an event");
    assert_eq!(event["type"], "event");
    assert_eq!(event["event"]["type"], "user.created");
    assert_eq!(event["event"]["data"]["id"], ada["id"]);

    let answer = command(
        &mut ws,
        json!({"type": "unsubscribe", "events": ["user.created"]}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"type": "subscribed", "events": ["user.updated"]})
    );
    // Not subscribed to creations any more: the next event is the rename.
    let grace = app.create_user("grace@example.com", "Grace Hopper").await;
    rename(&app, grace["id"].as_str().unwrap(), "Rear Admiral Hopper").await;
    let event = next_json(&mut ws, WAIT).await.expect("an event");
    assert_eq!(event["event"]["type"], "user.updated");
    assert_eq!(event["event"]["data"]["id"], grace["id"]);

    assert_eq!(
        command(&mut ws, json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
    let error = command(
        &mut ws,
        json!({"type": "subscribe", "events": ["Not A Type"]}),
    )
    .await;
    assert_eq!(error["type"], "error");
    let error = command(&mut ws, json!({"type": "dance"})).await;
    assert_eq!(error["type"], "error");
    // The connection survives bad messages.
    assert_eq!(
        command(&mut ws, json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );

    // A user's ticket opens a stream of that user's events only.
    let (me, my_token) = register(&app, "me@example.com").await;
    let mine = self::ticket(&app, &my_token).await;
    let mut ws = connect(&app, &format!("ticket={mine}&after=0"))
        .await
        .unwrap();
    let first = next_json(&mut ws, WAIT).await.unwrap();
    assert_eq!(first["event"]["type"], "user.created");
    assert_eq!(first["event"]["data"]["id"], me["id"]);
    let second = next_json(&mut ws, WAIT).await.unwrap();
    assert_eq!(second["event"]["type"], "security.account.registered");
    assert_eq!(next_json(&mut ws, Duration::from_millis(500)).await, None);

    // The header works as well as a ticket.
    let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/events/ws?after=0&types=user.deleted",
        app.addr
    ))
    .map(|mut r| {
        r.headers_mut().insert(
            "authorization",
            format!("Bearer {}", app.admin_token).parse().unwrap(),
        );
        r
    })
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let response = app
        .delete(&format!("/users/{}", ada["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let event = next_json(&mut ws, WAIT).await.unwrap();
    assert_eq!(event["event"]["type"], "user.deleted");
}

async fn bad_stream_requests_are_refused(app: TestApp) {
    let response = app.anon.get(app.url("/events")).send().await.unwrap();
    problem(response, 401).await;
    let response = app
        .anon
        .get(app.url("/events?ticket=nope"))
        .send()
        .await
        .unwrap();
    problem(response, 401).await;
    for query in ["after=-1", "after=abc", "types=User.Created", "types=a..b"] {
        let response = app.get(&format!("/events?{query}")).send().await.unwrap();
        problem(response, 422).await;
    }
    let response = app
        .get("/events")
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    problem(response, 422).await;
    // Not a WebSocket handshake.
    let response = app.get("/events/ws").send().await.unwrap();
    assert!(response.status().is_client_error());
    let response = app
        .anon
        .post(app.url("/events/ticket"))
        .send()
        .await
        .unwrap();
    problem(response, 401).await;
}

async fn streams_end_cleanly_on_shutdown(app: TestApp) {
    let mut stream =
        SseClient::open(&app, "/events?types=user.*", Some(&app.admin_token), None).await;
    let mut ws = connect(
        &app,
        &format!("ticket={}", ticket(&app, &app.admin_token).await),
    )
    .await
    .unwrap();
    let stopped = tokio::spawn(app.stop());
    let close = stream.next().await;
    assert_eq!(close.event, "close");
    assert_eq!(close.data["reason"], "shutting_down");
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert!(frame.reason.starts_with("shutting_down; resume after "));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("the server stops although streams were open")
        .unwrap()
        .unwrap();
}

/// A connection of the test's own to the server's database.
async fn connect_db(database_url: &str) -> Db {
    let config = Config {
        database_url: Some(SecretString::from(database_url.to_owned())),
        ..Config::default()
    };
    Db::connect(&config).await.unwrap()
}

/// Appends `count` events of about `size` bytes straight to the log, as a burst.
async fn append_events(database_url: &str, count: i64, size: usize) {
    let db = connect_db(database_url).await;
    let filler = "x".repeat(size);
    let data = json!({"filler": filler}).to_string();
    let sql = if database_url.starts_with("postgres") {
        "INSERT INTO events (type, data) SELECT 'test.burst', CAST(CAST($1 AS text) AS jsonb) \
         FROM generate_series(1, CAST($2 AS bigint))"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
         INSERT INTO events (type, data, occurred_at) \
         SELECT 'test.burst', $1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM n"
    };
    db.execute(sql, &[&data, &count]).await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_slow_consumer_is_closed_and_resumes() {
    a_slow_consumer_is_closed_and_resumes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_slow_consumer_is_closed_and_resumes() {
    a_slow_consumer_is_closed_and_resumes(Backend::Postgres).await;
}

async fn a_slow_consumer_is_closed_and_resumes(backend: Backend) {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let Some(app) = common::spawn_with(backend, |c| {
        c.events_buffer = 8;
        c.metrics_addr = Some(metrics);
    })
    .await
    else {
        return;
    };
    let ticket = ticket(&app, &app.admin_token).await;
    let mut ws = connect(&app, &format!("ticket={ticket}&types=test.*"))
        .await
        .unwrap();
    let start = app_latest_id(&app).await;
    // More than the socket buffers hold, all at once, while the client reads nothing.
    append_events(&app.database_url, 600, 4096).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut received = Vec::new();
    let reason = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message")
        {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                received.push(message["event"]["id"].as_i64().unwrap());
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Again);
                break frame.reason.to_string();
            }
            Some(Ok(_)) => {}
            other => panic!("expected events then a close frame, got {other:?}"),
        }
    };
    assert!(
        received.len() < 600,
        "the burst did not overflow the buffer"
    );
    // Counted as dropped, and no longer as open.
    common::eventually(10, "the slow consumer counted", || async {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.contains("keel_events_slow_consumers_dropped_total{transport=\"websocket\"} 1\n")
            && text.contains("keel_events_connections{transport=\"websocket\"} 0\n"))
        .then_some(())
    })
    .await;
    let resume: i64 = reason
        .strip_prefix("slow_consumer; resume after ")
        .expect("the reason names the resume point")
        .parse()
        .unwrap();
    match received.last() {
        Some(last) => assert_eq!(resume, *last),
        // Overflowed before the first event went out; it may have started before `start`.
        None => assert!(resume <= start),
    }

    // Resuming from the log delivers the rest, each once and in order.
    let ticket = self::ticket(&app, &app.admin_token).await;
    let mut ws = connect(
        &app,
        &format!("ticket={ticket}&types=test.*&after={resume}"),
    )
    .await
    .unwrap();
    while received.len() < 600 {
        let message = next_json(&mut ws, WAIT)
            .await
            .expect("the rest of the burst");
        received.push(message["event"]["id"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (start + 1..=start + 600).collect();
    assert_eq!(received, expected);
}

async fn app_latest_id(app: &TestApp) -> i64 {
    let db = connect_db(&app.database_url).await;
    let (id,): (Option<i64>,) = db
        .fetch_one("SELECT MAX(id) FROM events", &[])
        .await
        .unwrap();
    db.close().await;
    id.unwrap_or(0)
}

/// On PostgreSQL a transaction can commit a lower event id after a higher one: the stream
/// holds the higher one back until the lower one commits, or skips it once it rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_committed_out_of_order_are_delivered_in_order() {
    let Some(app) = common::spawn(Backend::Postgres).await else {
        return;
    };
    let db = connect_db(&app.database_url).await;
    let mut stream = SseClient::open(
        &app,
        "/events?types=user.created",
        Some(&app.admin_token),
        None,
    )
    .await;

    for commit in [true, false] {
        let slow = format!("slow-{commit}@example.com");
        let mut tx = db.begin().await.unwrap();
        let now = chrono::Utc::now();
        tx.execute(
            "INSERT INTO users (id, email, name, role, version, created_at, updated_at) \
             VALUES ($1, $2, 'Slow Writer', 'user', 1, $3, $3)",
            &[&uuid::Uuid::now_v7(), &slow, &now],
        )
        .await
        .unwrap();
        let fast = format!("fast-{commit}@example.com");
        app.create_user(&fast, "Fast Writer").await;
        // The fast user's event has the higher id and is committed; it must wait.
        assert!(
            stream
                .next_within(Duration::from_millis(800))
                .await
                .is_none(),
            "an event was delivered past an uncommitted lower id"
        );
        if commit {
            tx.commit().await.unwrap();
            let first = stream.next().await;
            let second = stream.next().await;
            assert_eq!(first.data["data"]["email"], slow.as_str());
            assert_eq!(second.data["data"]["email"], fast.as_str());
            assert!(first.id < second.id);
        } else {
            drop(tx);
            let next = stream.next().await;
            assert_eq!(next.data["data"]["email"], fast.as_str());
        }
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_written_with_the_change_and_purged_after_retention() {
    let Some(app) = common::spawn(Backend::Sqlite).await else {
        return;
    };
    // A refused registration leaves no event: the log is written in the change's transaction.
    let before = app_latest_id(&app).await;
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": ADMIN_EMAIL, "name": "Duplicate", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(
        app_latest_id(&app).await,
        before,
        "a refused write left an event"
    );

    // A new password is no visible change of the user: a security event, no user.updated.
    let (_, token) = register(&app, "me@example.com").await;
    let response = app
        .anon
        .patch(app.url("/users/me"))
        .bearer_auth(&token)
        .json(&json!({"current_password": PASSWORD, "password": "another fine passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let db = connect_db(&app.database_url).await;
    let rows: Vec<(String,)> = db
        .fetch_all(
            "SELECT type FROM events WHERE id > $1 AND type NOT LIKE 'job.%' ORDER BY id",
            &[&before],
        )
        .await
        .unwrap();
    let log: Vec<String> = rows.into_iter().map(|(t,)| t).collect();
    assert_eq!(
        log,
        [
            "user.created",
            "security.account.registered",
            "security.password.changed"
        ]
    );

    // Retention: events older than the cut-off go, newer ones stay.
    let events = EventLog::new(db.clone());
    assert_eq!(
        events
            .purge(chrono::Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert!(events.purge(chrono::Utc::now()).await.unwrap() >= 3);
    assert_eq!(events.after(0, 10).await.unwrap().len(), 0);
    db.close().await;
}
