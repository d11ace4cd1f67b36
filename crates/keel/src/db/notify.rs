//! PostgreSQL's `LISTEN`: wakes a waiter on each notification of a channel, so that it
//! reads what was committed without waiting for its next poll.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::shutdown::Shutdown;

use super::Db;

/// How long to wait before listening again after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

impl Db {
    /// On PostgreSQL, wakes `wake` on each notification of `channel` (and once each time
    /// the listening connection is made, for what was committed while it was away), until
    /// shutdown; on SQLite, which has no notifications, does nothing.
    pub fn wake_on_notify(&self, channel: &'static str, wake: Arc<Notify>, shutdown: Shutdown) {
        if let Self::Postgres { url, .. } = self {
            let url = url.expose_secret().to_owned();
            tokio::spawn(listen(url, channel, wake, shutdown));
        }
    }
}

/// Follows `channel`, reconnecting after a failure, until shutdown.
async fn listen(url: String, channel: &'static str, wake: Arc<Notify>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            error = follow(&url, channel, &wake) => {
                tracing::warn!(%error, channel, "notifications lost; reconnecting");
            }
            () = shutdown.started() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
            () = shutdown.started() => return,
        }
    }
}

/// Follows the notifications until the listener fails.
async fn follow(url: &str, channel: &str, wake: &Notify) -> sqlx::Error {
    let mut listener = match PgListener::connect(url).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    if let Err(error) = listener.listen(channel).await {
        return error;
    }
    loop {
        // Anything committed while the listener was away is read now; `None` means the
        // connection dropped and is re-established on the next call.
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                Ok(None) => break,
                Err(error) => return error,
            }
        }
    }
}
