//! `GET /events` (Server-Sent Events), `GET /events/ws` (WebSocket) and
//! `POST /events/ticket`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{
        FromRef, FromRequestParts, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Auth, INVALID_TOKEN, Principal},
    error::{ApiError, FieldError, InputLocation, Problem},
    http::extract::QueryPairs,
    metrics::Transport,
};

use super::{
    EventsState, Published,
    stream::{End, Feed, Patterns},
};

/// The event routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    EventsState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(events_sse))
        .routes(routes!(events_ws))
        .routes(routes!(create_ticket))
}

/// Longest WebSocket message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// Bytes read from a WebSocket at a time (larger messages still arrive whole).
const READ_BUFFER: usize = 4 * 1024;

/// A WebSocket send that takes longer than this means the client stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Who opens a stream: the bearer of an access token, or of a ticket from
/// `POST /events/ticket` passed as `?ticket=` (for browsers, which cannot set headers on a
/// WebSocket or an `EventSource`).
struct StreamAuth(Principal);

impl<S> FromRequestParts<S> for StreamAuth
where
    S: Send + Sync,
    EventsState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Principal::from_request_parts(parts, state).await.map(Self);
        }
        let query = QueryPairs::from_request_parts(parts, state).await?;
        let Some(ticket) = query.get("ticket") else {
            return Err(crate::auth::MISSING_TOKEN);
        };
        let state = EventsState::from_ref(state);
        let principal = state
            .events_tickets
            .redeem(ticket, state.auth.tokens.ttl())
            .await?
            .filter(|p| !state.auth.tokens.is_revoked(p.session))
            .ok_or(INVALID_TOKEN)?;
        Ok(Self(principal))
    }
}

/// Where a stream starts and what it carries, from the query (and `Last-Event-ID`).
struct StreamParams {
    after: Option<i64>,
    patterns: Patterns,
}

impl StreamParams {
    fn read(query: &QueryPairs, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        // A reconnecting EventSource sends Last-Event-ID; it wins over the URL's `after`.
        let after = match headers.get("last-event-id") {
            Some(value) => Some((
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<i64>().ok()),
                InputLocation::Header,
                "/last-event-id",
            )),
            None => query
                .get("after")
                .map(|raw| (raw.parse::<i64>().ok(), InputLocation::Query, "/after")),
        };
        let after = match after {
            None => None,
            Some((Some(id), _, _)) if id >= 0 => Some(id),
            Some((_, location, pointer)) => {
                errors.push(FieldError::new(
                    location,
                    pointer,
                    "invalid_event_id",
                    "must be the id of an event (a non-negative integer)",
                ));
                None
            }
        };
        let patterns = match query.get("types").filter(|raw| !raw.is_empty()) {
            None => Patterns::all(),
            Some(raw) => Patterns::parse(raw.split(',').map(str::trim)).unwrap_or_else(|detail| {
                errors.push(FieldError::new(
                    InputLocation::Query,
                    "/types",
                    "invalid_event_type",
                    detail,
                ));
                Patterns::default()
            }),
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(Self { after, patterns })
    }
}

/// 503 once this instance holds as many streams as it is configured for.
fn check_capacity(state: &EventsState) -> Result<(), ApiError> {
    if state.events.subscribers() >= state.max_connections {
        return Err(ApiError::Unavailable {
            detail: "this instance holds as many event streams as it is configured for".into(),
            retry_after_secs: 5,
        });
    }
    Ok(())
}

/// How a stream's last message describes its end.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEnd {
    /// `slow_consumer`, `token_expired`, `session_revoked`, `shutting_down` or `unavailable`.
    pub reason: &'static str,
    /// What to do.
    pub detail: &'static str,
    /// Resume after this id (`Last-Event-ID` or `?after=`).
    pub last_event_id: i64,
}

impl StreamEnd {
    fn new(end: End, last: i64) -> Self {
        Self {
            reason: end.code(),
            detail: end.detail(),
            last_event_id: last,
        }
    }
}

/// Stream events as Server-Sent Events.
///
/// Each event is `id: <id>`, `event: <type>`, `data: <Event JSON>`. A comment line is sent
/// as a heartbeat when nothing else was. A user receives the events about their own
/// account, an admin all events. The stream ends with an `event: close` whose data is a
/// `StreamEnd` (slow consumer, token expired, shutdown); reconnecting with `Last-Event-ID`
/// (browsers do it on their own) or `?after=` resumes without missing an event still in the
/// log.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    security(("bearer" = [])),
    params(
        ("after" = Option<i64>, Query, minimum = 0, description = "Send the events after this id first (0: the whole retained log); by default only new events"),
        ("Last-Event-ID" = Option<String>, Header, description = "Same as after; wins over it"),
        ("types" = Option<String>, Query, description = "Comma-separated event types to send: names such as user.created, prefixes such as user.*, or * (the default)"),
        ("ticket" = Option<String>, Query, description = "A ticket from POST /events/ticket, instead of the Authorization header"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid access token or ticket", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This instance holds its maximum of streams", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn events_sse(
    State(state): State<EventsState>,
    StreamAuth(principal): StreamAuth,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = StreamParams::read(&query, &headers)?;
    check_capacity(&state)?;
    let heartbeat = Duration::from_secs(state.heartbeat_secs);
    let feed = Feed::new(
        state,
        principal,
        params.after,
        params.patterns,
        Transport::Sse,
    );
    let events = stream::unfold(Some(feed), |feed| async move {
        let mut feed = feed?;
        let item = match feed.next().await {
            Ok(event) => sse_event(&event),
            Err(end) => {
                let end = StreamEnd::new(end, feed.last());
                let close = SseEvent::default()
                    .event("close")
                    .json_data(&end)
                    .unwrap_or_default();
                return Some((Ok::<_, Infallible>(close), None));
            }
        };
        Some((Ok(item), Some(feed)))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    // Proxies such as nginx would otherwise hold events back to fill their buffers.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse_event(event: &Published) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(&event.kind)
        .data(&*event.json)
}

/// Stream events over a WebSocket.
///
/// Server messages are JSON: `{"type":"event","event":<Event>}`,
/// `{"type":"subscribed","events":[...]}` (after each subscribe or unsubscribe),
/// `{"type":"pong"}` and `{"type":"error","detail":"..."}`. Clients send
/// `{"type":"subscribe","events":["user.*"]}`, `{"type":"unsubscribe","events":[...]}` and
/// `{"type":"ping"}`; the server also sends WebSocket pings and closes a connection that
/// stops answering them. The close reason of a server-side close names why and the id to
/// resume after (`?after=`). Who sees what, `after` and `types` are as for `GET /events`.
#[utoipa::path(
    get,
    path = "/events/ws",
    tag = "events",
    security(("bearer" = [])),
    params(
        ("after" = Option<i64>, Query, minimum = 0, description = "Send the events after this id first (0: the whole retained log); by default only new events"),
        ("types" = Option<String>, Query, description = "Comma-separated event types to start subscribed to (default *)"),
        ("ticket" = Option<String>, Query, description = "A ticket from POST /events/ticket, instead of the Authorization header"),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token or ticket", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This instance holds its maximum of streams", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn events_ws(
    upgrade: WebSocketUpgrade,
    State(state): State<EventsState>,
    StreamAuth(principal): StreamAuth,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let params = StreamParams::read(&query, &HeaderMap::new())?;
    check_capacity(&state)?;
    let heartbeat = Duration::from_secs(state.heartbeat_secs);
    // Subscribed before the handshake completes: nothing after it is missed.
    let feed = Feed::new(
        state,
        principal,
        params.after,
        params.patterns,
        Transport::WebSocket,
    );
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        // tungstenite allocates its read buffer up front (128 KiB by default), which would
        // be most of a connection's memory; clients only send small control messages.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| session(socket, feed, heartbeat)))
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Command {
    Subscribe { events: Vec<String> },
    Unsubscribe { events: Vec<String> },
    Ping,
}

/// Runs one WebSocket until either side ends it.
async fn session(mut socket: WebSocket, mut feed: Feed, heartbeat: Duration) {
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut unanswered = 0u32;
    let end = loop {
        let outgoing = tokio::select! {
            next = feed.next() => match next {
                Ok(event) => format!(r#"{{"type":"event","event":{}}}"#, event.json),
                Err(end) => break end,
            },
            incoming = socket.recv() => {
                unanswered = 0;
                match incoming {
                    Some(Ok(Message::Text(text))) => reply(&mut feed, text.as_str()),
                    Some(Ok(Message::Binary(_))) => error_message("messages must be JSON text"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                }
            }
            _ = pings.tick() => {
                if unanswered >= 2 {
                    // Gone without a close: nothing to tell it.
                    return;
                }
                unanswered += 1;
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    return;
                }
                continue;
            }
        };
        if !send(&mut socket, Message::Text(outgoing.into())).await {
            // It stopped reading: whatever it was sent will not arrive.
            return;
        }
    };
    let code = match end {
        End::SlowConsumer => close_code::AGAIN,
        End::Expired | End::Revoked => close_code::POLICY,
        End::ShuttingDown => close_code::AWAY,
        End::Unavailable => close_code::ERROR,
    };
    let reason = format!("{}; resume after {}", end.code(), feed.last());
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    send(&mut socket, close).await;
}

/// Sends within [`SEND_TIMEOUT`]; false if the connection is unusable.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// The answer to a client's message.
fn reply(feed: &mut Feed, text: &str) -> String {
    let command = match serde_json::from_str::<Command>(text) {
        Ok(command) => command,
        Err(error) => return error_message(&format!("not a command: {error}")),
    };
    match command {
        Command::Subscribe { events } => {
            let mut patterns = feed.patterns.clone();
            if let Err(detail) = patterns.add(events.iter().map(String::as_str)) {
                return error_message(&detail);
            }
            feed.patterns = patterns;
        }
        Command::Unsubscribe { events } => feed.patterns.remove(events.iter().map(String::as_str)),
        Command::Ping => return r#"{"type":"pong"}"#.to_owned(),
    }
    serde_json::json!({"type": "subscribed", "events": feed.patterns.as_slice()}).to_string()
}

fn error_message(detail: &str) -> String {
    serde_json::json!({"type": "error", "detail": detail}).to_string()
}

/// A ticket for opening a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` to `GET /events/ws` or `GET /events`; works once.
    pub ticket: String,
    /// Seconds until it expires unused.
    pub expires_in: u64,
}

/// Get a single-use ticket that opens an event stream.
///
/// Browsers cannot set `Authorization` on a WebSocket or an `EventSource`: they pass this
/// ticket in the URL instead. It works once, within `expires_in` seconds, and the stream it
/// opens lasts as long as an access token would.
#[utoipa::path(
    post,
    path = "/events/ticket",
    tag = "events",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A ticket", body = Ticket),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_ticket(
    State(state): State<EventsState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    let ticket = state.events_tickets.issue(&principal).await?;
    let body = Ticket {
        ticket,
        expires_in: state.events_tickets.ttl().as_secs(),
    };
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}
