//! The RabbitMQ queue: an outbox relay and a consumer, on stock RabbitMQ (no plugins).
//!
//! Topology, all durable, under the configured prefix `P`:
//! - `P`: the work queue. Messages are persistent and name a job and the attempts it had
//!   when published; a rejected message is dead-lettered to `P.dead`.
//! - `P.retry.<ms>`: one queue per retry delay (rounded to two significant digits), whose
//!   messages expire after `<ms>` and are dead-lettered back to `P`; an idle one deletes
//!   itself a minute after its last use.
//! - `P.dead`: a copy of every job that ran out of attempts, for the broker's own tools.
//!
//! The relay publishes the table's due, unpublished jobs with publisher confirms and marks
//! them published only once the broker confirmed them; the consumer (manual acks,
//! prefetch = concurrency) claims the job in the table before running it, so a duplicate
//! or stale message claims nothing. A lost connection is reopened with a backoff; jobs
//! held meanwhile go back through the table.
//!
//! A message carries the trace context of its job in a `traceparent` header: the relay's
//! `publish` span continues the trace of the request that enqueued the job, and the
//! worker's `job` span continues the publish span.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::{sync::Semaphore, task::JoinSet};
use uuid::Uuid;

use tracing::{Instrument, Span};

use crate::{
    config::Config,
    db::Db,
    shutdown::Shutdown,
    telemetry::otel::{self, TRACEPARENT},
};

use super::{
    Jobs,
    store::Unpublished,
    worker::{Executor, Outcome, run_at},
};

/// Jobs the relay publishes per round.
const RELAY_BATCH: i64 = 100;
/// Time the broker gets to confirm a round of messages.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

/// The body of every message: which job, and the attempts it had when published.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    id: Uuid,
    attempts: i32,
}

/// Queue names under a prefix.
#[derive(Debug, Clone)]
pub struct Names {
    /// The work queue.
    pub work: String,
    /// The dead-letter queue.
    pub dead: String,
    prefix: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            work: prefix.to_owned(),
            dead: format!("{prefix}.dead"),
            prefix: prefix.to_owned(),
        }
    }

    /// The retry queue of `delay`, and the delay it actually applies (in milliseconds,
    /// rounded to two significant digits so that few queues exist).
    pub fn retry(&self, delay: Duration) -> (String, u64) {
        let ms = round_two_digits(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1));
        (format!("{}.retry.{ms}", self.prefix), ms)
    }
}

fn round_two_digits(ms: u64) -> u64 {
    let mut scale = 1;
    while ms / scale >= 100 {
        scale *= 10;
    }
    (ms / scale) * scale
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Declares the work and dead-letter queues.
async fn declare(channel: &Channel, names: &Names) -> lapin::Result<()> {
    let mut work = FieldTable::default();
    work.insert("x-dead-letter-exchange".into(), string(""));
    work.insert("x-dead-letter-routing-key".into(), string(&names.dead));
    channel
        .queue_declare(
            names.work.as_str().into(),
            QueueDeclareOptions::durable(),
            work,
        )
        .await?;
    channel
        .queue_declare(
            names.dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Publishes `body` to `queue` persistently and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &Message,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let confirm = send(channel, queue, body, traceparent).await?;
    confirmed(confirm.await?)
}

async fn send(
    channel: &Channel,
    queue: &str,
    body: &Message,
    traceparent: Option<&str>,
) -> anyhow::Result<PublisherConfirm> {
    let payload = serde_json::to_vec(body)?;
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(body.id.to_string().into());
    if let Some(traceparent) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert(TRACEPARENT.into(), string(traceparent));
        properties = properties.with_headers(headers);
    }
    Ok(channel
        .basic_publish(
            "".into(),
            queue.into(),
            // Mandatory: a message no queue takes comes back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &payload,
            properties,
        )
        .await?)
}

fn confirmed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => anyhow::bail!("the broker could not route the message"),
        Confirmation::Nack(_) => anyhow::bail!("the broker refused the message"),
        Confirmation::NotRequested => anyhow::bail!("publisher confirms are off"),
    }
}

/// Publishes `job` to the retry queue of `delay`.
async fn publish_retry(
    channel: &Channel,
    names: &Names,
    job: &Message,
    delay: Duration,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let (queue, ms) = names.retry(delay);
    let mut args = FieldTable::default();
    let ttl = i64::try_from(ms).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(&names.work));
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(ttl.saturating_add(60_000)),
    );
    // Declaring again renews the queue's expiry, so it outlives the message.
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    publish(channel, &queue, job, traceparent).await
}

/// Runs jobs from RabbitMQ until `shutdown` begins, reconnecting as needed.
pub(super) async fn run(
    jobs: Jobs,
    executor: Executor,
    url: SecretString,
    config: &Config,
    shutdown: Shutdown,
) {
    let names = Names::new(&config.amqp_queue_prefix);
    let permits = Arc::new(Semaphore::new(executor.settings.concurrency));
    let mut tasks = JoinSet::new();
    let mut delay = Duration::from_millis(250);
    jobs.set_broker_connected(false);
    while !shutdown.is_draining() {
        let session = Session {
            jobs: &jobs,
            executor: &executor,
            names: &names,
            shutdown: &shutdown,
            permits: &permits,
        };
        match session
            .run(url.expose_secret(), &mut tasks, &mut delay)
            .await
        {
            Ok(()) => break,
            Err(error) => {
                jobs.set_broker_connected(false);
                tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "RabbitMQ connection lost or refused");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.started() => {}
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
    executor.drain(&mut tasks).await;
    jobs.set_broker_connected(false);
}

struct Session<'a> {
    jobs: &'a Jobs,
    executor: &'a Executor,
    names: &'a Names,
    shutdown: &'a Shutdown,
    permits: &'a Arc<Semaphore>,
}

impl Session<'_> {
    /// One connection's life: returns `Ok` on shutdown, an error when the connection fails.
    async fn run(
        &self,
        url: &str,
        tasks: &mut JoinSet<()>,
        delay: &mut Duration,
    ) -> anyhow::Result<()> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&publisher, self.names).await?;
        let consuming = connection.create_channel().await?;
        let prefetch = u16::try_from(self.executor.settings.concurrency).unwrap_or(u16::MAX);
        consuming
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("keel-{}", Uuid::new_v4());
        let mut consumer = consuming
            .basic_consume(
                self.names.work.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.jobs.set_broker_connected(true);
        *delay = Duration::from_millis(250);
        tracing::info!(
            queue = %self.names.work,
            concurrency = self.executor.settings.concurrency,
            "job worker started on RabbitMQ"
        );
        let relay = relay(
            self.jobs,
            &publisher,
            &self.names.work,
            self.executor.settings.poll,
        );
        tokio::pin!(relay);
        loop {
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                delivery = consumer.next() => {
                    let delivery = match delivery {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(error)) => return Err(error.into()),
                        None => anyhow::bail!("the broker cancelled the consumer"),
                    };
                    let Ok(permit) = Arc::clone(self.permits).acquire_owned().await else {
                        break;
                    };
                    let executor = self.executor.clone();
                    let publisher = publisher.clone();
                    let names = self.names.clone();
                    tasks.spawn(async move {
                        handle(&executor, &publisher, &names, delivery).await;
                        drop(permit);
                    });
                }
                result = &mut relay => return result,
                () = self.shutdown.started() => break,
            }
        }
        // Shutdown: no new deliveries; running jobs finish (and ack) on this connection.
        if let Err(error) = consuming
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(%error, "cannot cancel the consumer");
        }
        tracing::info!(running = tasks.len(), "job worker stopping");
        self.executor.drain(tasks).await;
        let _ = connection.close(200, "shutting down".into()).await;
        Ok(())
    }
}

/// Runs one delivered message: claims its job, runs it, records the outcome, acks.
async fn handle(executor: &Executor, publisher: &Channel, names: &Names, delivery: Delivery) {
    let Ok(message) = serde_json::from_slice::<Message>(&delivery.data) else {
        tracing::warn!("unreadable message on the job queue; dead-lettered");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let claimed = match executor
        .store
        .claim_id(
            message.id,
            message.attempts,
            executor.settings.lease_chrono(),
        )
        .await
    {
        Ok(Some(claimed)) => claimed,
        Ok(None) => {
            // A duplicate, or a message about an attempt that is over.
            tracing::debug!(id = %message.id, "stale job message dropped");
            ack(&delivery).await;
            return;
        }
        Err(error) => {
            tracing::warn!(id = %message.id, %error, "cannot claim a job; message requeued");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            return;
        }
    };
    let mut claimed = claimed;
    // The message's context (the relay's publish span) over the one stored with the job.
    if let Some(traceparent) = header_str(&delivery, TRACEPARENT) {
        claimed.traceparent = Some(traceparent);
    }
    let outcome = executor.attempt(&claimed).await;
    let store = &executor.store;
    let lease = claimed.lease;
    let recorded = match &outcome {
        Outcome::Succeeded => store.succeed(lease).await,
        Outcome::Retry { delay, error } => {
            // Queued in the table first (unpublished, so the relay sends it when due if
            // what follows fails), then handed to the retry queue.
            let queued = store.retry_later(lease, run_at(*delay), error, false).await;
            if matches!(queued, Ok(true)) {
                let retry = Message {
                    id: claimed.context.id,
                    attempts: claimed.context.attempt,
                };
                let traceparent = claimed.traceparent.as_deref();
                match publish_retry(publisher, names, &retry, *delay, traceparent).await {
                    Ok(()) => {
                        let job = Unpublished {
                            id: retry.id,
                            attempts: retry.attempts,
                            traceparent: None,
                        };
                        if let Err(error) = store.mark_published(None, &[job]).await {
                            tracing::warn!(id = %retry.id, %error, "cannot mark a retry published; it may run twice");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(id = %retry.id, error = format!("{error:#}"), "cannot publish a retry; the relay will")
                    }
                }
            }
            queued
        }
        Outcome::Dead { error } => {
            let buried = store.bury(lease, error).await;
            let copy = Message {
                id: claimed.context.id,
                attempts: claimed.context.attempt,
            };
            let traceparent = claimed.traceparent.as_deref();
            if let Err(error) = publish(publisher, &names.dead, &copy, traceparent).await {
                tracing::warn!(id = %copy.id, error = format!("{error:#}"), "cannot copy a dead job to the dead-letter queue");
            }
            buried
        }
        Outcome::Lost => Ok(true),
    };
    executor.done(&claimed, recorded);
    ack(&delivery).await;
}

/// A string header of `delivery`.
fn header_str(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The broker will deliver it again; the claim makes that harmless.
        tracing::debug!(%error, "cannot ack a job message");
    }
}

/// Publishes due, unpublished jobs whenever there are some; returns only on failure.
async fn relay(jobs: &Jobs, channel: &Channel, queue: &str, poll: Duration) -> anyhow::Result<()> {
    let wake = jobs.waker();
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let published = relay_round(jobs, channel, queue).await?;
        if published < RELAY_BATCH as usize {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = woken => {}
            }
        }
    }
}

/// Publishes one batch; answers how many jobs it published.
async fn relay_round(jobs: &Jobs, channel: &Channel, queue: &str) -> anyhow::Result<usize> {
    let store = jobs.store();
    // On PostgreSQL the batch's rows stay locked until they are marked, so that relays of
    // other instances skip them; SQLite has one writer, which a transaction would block.
    let mut tx = match store.db() {
        Db::Postgres { .. } => Some(store.db().begin().await?),
        Db::Sqlite(..) => None,
    };
    let due = store.unpublished(tx.as_mut(), RELAY_BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut confirms = Vec::with_capacity(due.len());
    for job in &due {
        let message = Message {
            id: job.id,
            attempts: job.attempts,
        };
        let span = publish_span(queue, job);
        let traceparent = span.in_scope(otel::current_traceparent);
        let sent = send(channel, queue, &message, traceparent.as_deref());
        confirms.push(sent.instrument(span).await?);
    }
    let all = async {
        for confirm in confirms {
            confirmed(confirm.await?)?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CONFIRM_TIMEOUT, all)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not confirm within {CONFIRM_TIMEOUT:?}"))??;
    store.mark_published(tx.as_mut(), &due).await?;
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    tracing::debug!(jobs = due.len(), "jobs published");
    Ok(due.len())
}

/// The producer span of publishing `job`, in the trace of the request that enqueued it.
fn publish_span(queue: &str, job: &Unpublished) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "publish",
        "otel.kind" = "producer",
        "otel.name" = format!("send {queue}"),
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = queue,
        "messaging.message.id" = %job.id,
    );
    otel::set_parent_from_traceparent(&span, job.traceparent.as_deref());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_queues_round_delays_to_two_significant_digits() {
        let names = Names::new("keel.jobs");
        assert_eq!(names.work, "keel.jobs");
        assert_eq!(names.dead, "keel.jobs.dead");
        for (ms, queue, applied) in [
            (0, "keel.jobs.retry.1", 1),
            (87, "keel.jobs.retry.87", 87),
            (1234, "keel.jobs.retry.1200", 1200),
            (3_599_999, "keel.jobs.retry.3500000", 3_500_000),
        ] {
            assert_eq!(
                names.retry(Duration::from_millis(ms)),
                (queue.to_owned(), applied)
            );
        }
    }
}
