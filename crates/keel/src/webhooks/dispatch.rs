//! Turns events into deliveries, once across every instance.
//!
//! Each instance follows its event hub and, up to the hub's watermark (below which every
//! committed event is known, in order), takes the `webhook_cursor` row's lock, records a
//! delivery and its job for each event an active endpoint wants, and moves the cursor, all
//! in one transaction. Another instance that gets the lock next finds the cursor already
//! past those events, so an event is dispatched once; if an instance dies mid-way, its
//! transaction rolls back and the next one dispatches the same events.

use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::{
    db::Db,
    events::{EventHub, EventLog},
    jobs::Jobs,
    shutdown::Shutdown,
};

use super::{
    DELIVER, WebhookStore,
    store::{StoreError, Target},
};

/// Events dispatched per transaction.
const PAGE: i64 = 200;

/// Least time between two dispatch rounds: events that arrive meanwhile share one, which
/// bounds the cursor's writes whatever the event rate.
const MIN_ROUND: Duration = Duration::from_millis(100);

/// A round also runs this often without new events (for events written while no
/// instance ran, and to retry after a failure).
const IDLE_ROUND: Duration = Duration::from_secs(5);

/// What dispatching reads and writes.
pub struct Dispatcher {
    /// Endpoints, deliveries and the cursor.
    pub db: Db,
    /// The events to dispatch.
    pub events: EventHub,
    /// The queue the deliveries go to.
    pub jobs: Jobs,
    /// Dispatching stops when shutdown begins.
    pub shutdown: Shutdown,
}

/// Dispatches events to webhooks until shutdown.
pub async fn run(state: Dispatcher) {
    let store = WebhookStore::new(state.db.clone());
    let (mut receiver, _) = state.events.subscribe();
    loop {
        if let Err(error) = dispatch(&state, &store, state.events.watermark()).await {
            tracing::warn!(%error, "cannot dispatch events to webhooks; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_ROUND) => {}
            () = state.shutdown.started() => return,
        }
        tokio::select! {
            received = receiver.recv() => {
                if matches!(received, Err(RecvError::Closed)) {
                    return;
                }
                // Every event now waiting is covered by the next round.
                while !matches!(
                    receiver.try_recv(),
                    Err(TryRecvError::Empty | TryRecvError::Closed)
                ) {}
            }
            () = tokio::time::sleep(IDLE_ROUND) => {}
            () = state.shutdown.started() => return,
        }
    }
}

/// Dispatches the events up to `upto` that no instance has dispatched yet.
async fn dispatch(state: &Dispatcher, store: &WebhookStore, upto: i64) -> Result<(), StoreError> {
    loop {
        // Without the lock first: usually another instance has dispatched them already.
        if store.cursor().await? >= upto {
            return Ok(());
        }
        let mut tx = state.db.begin().await?;
        let cursor = store.lock_cursor(&mut tx).await?;
        if cursor >= upto {
            tx.commit().await?;
            return Ok(());
        }
        let targets = store.targets(&mut tx).await?;
        let mut end = upto;
        let mut recorded = false;
        if !targets.is_empty() {
            let page = EventLog::after_in(&mut tx, cursor, PAGE).await?;
            if let Some(last) = page.last().filter(|last| last.id < upto) {
                if page.len() as i64 == PAGE {
                    end = last.id;
                }
            }
            for event in page.iter().filter(|event| event.id <= end) {
                if is_delivery_outcome(&event.kind, &event.json) {
                    continue;
                }
                for target in targets.iter().filter(|target| wants(target, event)) {
                    store.record(&state.jobs, &mut tx, target.id, event).await?;
                    recorded = true;
                }
            }
        }
        store.set_cursor(&mut tx, end).await?;
        tx.commit().await?;
        if recorded {
            state.jobs.wake();
        }
        if end >= upto {
            return Ok(());
        }
    }
}

fn wants(target: &Target, event: &crate::events::Published) -> bool {
    event.id > target.since_event_id && target.patterns.matches(&event.kind)
}

/// Whether the event is the outcome of a delivery job, which is never delivered itself:
/// an endpoint subscribed to `job.*` would otherwise be sent one event per delivery,
/// forever.
fn is_delivery_outcome(kind: &str, json: &str) -> bool {
    if !kind.starts_with("job.") {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(json)
        .is_ok_and(|event| event["data"]["kind"] == DELIVER)
}

#[cfg(test)]
mod tests {
    use super::is_delivery_outcome;

    #[test]
    fn delivery_outcomes_are_recognised() {
        let delivered = r#"{"id":1,"type":"job.succeeded","data":{"kind":"webhook.deliver"}}"#;
        let mail = r#"{"id":2,"type":"job.succeeded","data":{"kind":"email.welcome"}}"#;
        assert!(is_delivery_outcome("job.succeeded", delivered));
        assert!(!is_delivery_outcome("job.succeeded", mail));
        assert!(!is_delivery_outcome("user.created", delivered));
    }
}
