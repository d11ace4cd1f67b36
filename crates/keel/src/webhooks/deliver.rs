//! The delivery job: one signed POST of a stored event to its endpoint.

use std::{
    error::Error as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use http::header;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    config::Config,
    db::Db,
    jobs::{Handlers, JobContext},
    telemetry::otel,
};

use super::{
    DELIVER, DeliveryState, WebhookStore, signing,
    store::{Attempt, Sending},
};

/// Most of an answer's body kept in the delivery log.
const RESPONSE_KEPT: usize = 1024;

/// Time to open a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the delivery job's handler to `handlers`.
pub fn register_handler(handlers: &mut Handlers, config: &Config, db: &Db) -> anyhow::Result<()> {
    let deliverer = Arc::new(Deliverer::new(config, db.clone())?);
    handlers.register(DELIVER, move |job| {
        let deliverer = Arc::clone(&deliverer);
        async move { deliverer.deliver(job).await }
    });
    Ok(())
}

#[derive(Deserialize)]
struct ForDelivery {
    delivery_id: Uuid,
}

struct Deliverer {
    store: WebhookStore,
    client: reqwest::Client,
    allow_private: bool,
}

impl Deliverer {
    fn new(config: &Config, db: Db) -> anyhow::Result<Self> {
        let allow_private = config.webhooks_allow_private_networks();
        let client = reqwest::Client::builder()
            .user_agent(concat!("keel-webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(config.webhooks_timeout_secs))
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect is an answer like any other: following it would send the signed
            // body somewhere the admin did not register.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .build()
            .context("cannot build the webhook HTTP client")?;
        Ok(Self {
            store: WebhookStore::new(db),
            client,
            allow_private,
        })
    }

    async fn deliver(&self, job: JobContext) -> anyhow::Result<()> {
        let ForDelivery { delivery_id } =
            serde_json::from_value(job.payload).context("not a delivery job's payload")?;
        let Some(sending) = self.store.sending(delivery_id).await? else {
            // The endpoint was deleted, and its deliveries with it.
            return Ok(());
        };
        if sending.state != DeliveryState::Pending {
            // A job run again after its worker died, when the first run had finished.
            return Ok(());
        }
        if !sending.active {
            let attempt = Attempt {
                state: DeliveryState::Failed,
                response_status: None,
                response_body: None,
                error: Some("the webhook was disabled before this delivery".to_owned()),
                duration_ms: 0,
            };
            self.store.record_attempt(delivery_id, &attempt).await?;
            return Ok(());
        }
        let last = job.attempt >= job.max_attempts;
        let started = Instant::now();
        let outcome = self.send(&sending).await;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (attempt, result) = match outcome {
            Ok((status, body)) if status.is_success() => (
                Attempt {
                    state: DeliveryState::Succeeded,
                    response_status: Some(i32::from(status.as_u16())),
                    response_body: Some(body),
                    error: None,
                    duration_ms,
                },
                Ok(()),
            ),
            Ok((status, body)) => {
                let error = format!("the endpoint answered {status}");
                (
                    Attempt {
                        state: failed_or_pending(last),
                        response_status: Some(i32::from(status.as_u16())),
                        response_body: Some(body),
                        error: Some(error.clone()),
                        duration_ms,
                    },
                    Err(anyhow!(error)),
                )
            }
            Err(error) => (
                Attempt {
                    state: failed_or_pending(last),
                    response_status: None,
                    response_body: None,
                    error: Some(error.clone()),
                    duration_ms,
                },
                Err(anyhow!(error)),
            ),
        };
        self.store.record_attempt(delivery_id, &attempt).await?;
        match result {
            // The delivery log holds the failure, and a replay is how to send it again: the
            // job itself has done its work (a dead job would mean keel failed).
            Err(error) if last => {
                tracing::warn!(delivery = %delivery_id, %error, "webhook delivery failed for the last time");
                Ok(())
            }
            result => result,
        }
    }

    /// POSTs the signed body; the answer's status and the start of its body, or why
    /// there was no answer.
    async fn send(&self, sending: &Sending) -> Result<(http::StatusCode, String), String> {
        let url = reqwest::Url::parse(&sending.url).map_err(|e| format!("invalid URL: {e}"))?;
        // Names go through the resolver's check; literal addresses do not, so here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.allow_private && !is_public(*ip)) {
            return Err(format!("{PRIVATE_REFUSED} ({ip})"));
        }
        let message_id = sending.message_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signing::sign(&sending.secret, &message_id, timestamp, &sending.body)
            .ok_or("the webhook's secret is not a whsec_ secret")?;
        let span = client_span(&url);
        // The receiver can continue the trace: the `traceparent` of this client span.
        let mut trace = http::HeaderMap::new();
        span.in_scope(|| otel::inject_headers(&mut trace));
        let mut response = self
            .client
            .post(url)
            .headers(trace)
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(sending.body.clone())
            .send()
            .instrument(span.clone())
            .await
            .map_err(|error| describe(&error))?;
        let status = response.status();
        if otel::enabled() {
            span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        }
        let mut kept = Vec::new();
        // The answer's body is only logged: an error reading it does not change the outcome.
        while kept.len() < RESPONSE_KEPT {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        kept.truncate(RESPONSE_KEPT);
        Ok((status, String::from_utf8_lossy(&kept).into_owned()))
    }
}

/// The HTTP client span of a delivery to `url` (host and port only: a webhook URL's path
/// and query may hold the receiver's secrets).
fn client_span(url: &reqwest::Url) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "webhook",
        "otel.kind" = "client",
        "otel.name" = "POST",
        "http.request.method" = "POST",
        "server.address" = url.host_str().unwrap_or_default(),
        "server.port" = url.port_or_known_default().map(i64::from),
    )
}

fn failed_or_pending(last: bool) -> DeliveryState {
    if last {
        DeliveryState::Failed
    } else {
        DeliveryState::Pending
    }
}

/// An error with its causes, which is where reqwest says what went wrong.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the endpoint did not answer in time".to_owned()
    } else {
        error.to_string()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const PRIVATE_REFUSED: &str = "the endpoint is on a loopback, private or link-local address, \
    which KEEL_WEBHOOKS_ALLOW_PRIVATE_NETWORKS does not allow";

/// Resolves endpoint names, dropping the addresses webhooks may not reach.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(PRIVATE_REFUSED.into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `ip` is a public unicast address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_unspecified()
                || ip.is_multicast()
                || a == 0
                || a >= 240
                // Carrier-grade NAT, 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
                // Benchmarking, 198.18.0.0/15.
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || ip.is_unique_local()
                    || ip.is_unicast_link_local()
                    // Documentation, 2001:db8::/32.
                    || (ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
