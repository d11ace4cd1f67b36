//! One event stream held open: a WebSocket on `GET /events/ws` or Server-Sent Events on
//! `GET /events`, both filtered to `user.created`, timestamping each event on arrival.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::StreamExt;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, watch},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

/// How the client holds its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /events/ws`.
    Ws,
    /// `GET /events` (Server-Sent Events).
    Sse,
}

/// Counters every stream updates, read by the main task while it waits.
#[derive(Debug, Default)]
pub struct Progress {
    /// Streams whose handshake completed: keel has subscribed them to its hub.
    pub subscribed: AtomicUsize,
    /// Streams that could not be opened.
    pub failed: AtomicUsize,
    /// Streams that ended before the client stopped them.
    pub dropped: AtomicUsize,
    /// `user.created` events received, over all streams.
    pub received: AtomicUsize,
}

/// One `user.created` event as it reached one stream.
#[derive(Debug)]
pub struct Receipt {
    /// The created user's id (`data.id` of the event).
    pub user_id: Box<str>,
    /// When the client read it.
    pub at: Instant,
}

/// What happened to one stream.
#[derive(Debug, Default)]
pub struct StreamLog {
    /// The events it received, in order.
    pub receipts: Vec<Receipt>,
    /// Why it could not be opened.
    pub open_error: Option<String>,
    /// Why it ended before the client stopped it.
    pub dropped: Option<String>,
}

/// The part of an event this client reads: `{"data":{"id":...}}`.
#[derive(Deserialize)]
struct EventBody<'a> {
    #[serde(borrow)]
    data: UserData<'a>,
}

#[derive(Deserialize)]
struct UserData<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// A WebSocket server message: `{"type":"event","event":{...}}` carries an event.
#[derive(Deserialize)]
struct WsMessage<'a> {
    #[serde(borrow)]
    event: Option<EventBody<'a>>,
}

/// Where and as whom the streams connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// keel's host:port.
    pub addr: String,
    /// `Bearer <access token>`.
    pub authorization: HeaderValue,
}

/// Opens one stream (holding `permit` until keel has subscribed it), then records its
/// events until `stop` changes or the stream ends.
pub async fn hold(
    transport: Transport,
    target: Arc<Target>,
    progress: Arc<Progress>,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) -> StreamLog {
    let mut log = StreamLog::default();
    let result = match transport {
        Transport::Ws => match open_ws(&target).await {
            Ok(ws) => {
                progress.subscribed.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                read_ws(ws, &progress, stop, &mut log).await;
                Ok(())
            }
            Err(error) => Err(error),
        },
        Transport::Sse => match open_sse(&target).await {
            Ok(body) => {
                progress.subscribed.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                read_sse(body, &progress, stop, &mut log).await;
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = result {
        progress.failed.fetch_add(1, Ordering::Relaxed);
        log.open_error = Some(format!("{error:#}"));
    }
    if log.dropped.is_some() {
        progress.dropped.fetch_add(1, Ordering::Relaxed);
    }
    log
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `GET /events/ws?types=user.created`. keel subscribes the stream before it answers
/// 101, so once this returns no later event can be missed.
async fn open_ws(target: &Target) -> Result<Ws> {
    let mut request =
        format!("ws://{}/events/ws?types=user.created", target.addr).into_client_request()?;
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, target.authorization.clone());
    // Small client buffers: the client holds as many sockets as keel does.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

async fn read_ws(
    mut ws: Ws,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
    log: &mut StreamLog,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            message = ws.next() => {
                let at = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(WsMessage { event: Some(event) }) = serde_json::from_str(&text) {
                            record(log, progress, &event, at);
                        }
                    }
                    // tungstenite answers pings itself while the stream is read.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        log.dropped = Some(match frame {
                            Some(frame) => format!("closed by keel: {} {}", frame.code, frame.reason),
                            None => "closed by keel".to_owned(),
                        });
                        return;
                    }
                    Some(Err(error)) => {
                        log.dropped = Some(format!("WebSocket error: {error}"));
                        return;
                    }
                    None => {
                        log.dropped = Some("connection ended".to_owned());
                        return;
                    }
                }
            }
        }
    }
}

/// Opens `GET /events?types=user.created` and returns the stream's body once keel has
/// answered 200 (it subscribes before answering).
async fn open_sse(target: &Target) -> Result<Incoming> {
    let tcp = TcpStream::connect(&target.addr)
        .await
        .context("connecting")?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    let request = Request::get("/events?types=user.created")
        .header(header::HOST, &target.addr)
        .header(header::AUTHORIZATION, target.authorization.clone())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await.context("GET /events")?;
    if response.status() != StatusCode::OK {
        bail!("GET /events answered {}", response.status());
    }
    Ok(response.into_body())
}

async fn read_sse(
    mut body: Incoming,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
    log: &mut StreamLog,
) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            frame = body.frame() => {
                let at = Instant::now();
                let data = match frame {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Some(Err(error)) => {
                        log.dropped = Some(format!("stream error: {error}"));
                        return;
                    }
                    None => {
                        log.dropped = Some("stream ended".to_owned());
                        return;
                    }
                };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    if let Some(reason) = sse_block(&buffer[..end], log, progress, at) {
                        log.dropped = Some(reason);
                        return;
                    }
                    buffer.drain(..end + 2);
                }
            }
        }
    }
}

/// Handles one Server-Sent Event (lines without the blank line that ends it); the reason
/// if it is keel's `close` event.
fn sse_block(
    block: &[u8],
    log: &mut StreamLog,
    progress: &Progress,
    at: Instant,
) -> Option<String> {
    let mut kind: &[u8] = b"message";
    let mut data: &[u8] = b"";
    for line in block.split(|b| *b == b'\n') {
        if let Some(value) = line.strip_prefix(b"event:") {
            kind = value.trim_ascii();
        } else if let Some(value) = line.strip_prefix(b"data:") {
            data = value.trim_ascii();
        }
    }
    if kind == b"close" {
        return Some(format!("closed by keel: {}", String::from_utf8_lossy(data)));
    }
    if let Ok(event) = serde_json::from_slice::<EventBody>(data) {
        record(log, progress, &event, at);
    }
    None
}

fn record(log: &mut StreamLog, progress: &Progress, event: &EventBody, at: Instant) {
    log.receipts.push(Receipt {
        user_id: event.data.id.as_ref().into(),
        at,
    });
    progress.received.fetch_add(1, Ordering::Relaxed);
}
