//! Shutdown progress, shared by the listener, the background tasks and the readiness probe.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::Notify;

/// Tells whether shutdown has begun, and wakes whoever waits for it.
#[derive(Clone, Default)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// Starts the shutdown: readiness fails from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has begun.
    pub async fn started(&self) {
        let notified = self.notify.notified();
        if self.is_draining() {
            return;
        }
        notified.await;
    }
}
