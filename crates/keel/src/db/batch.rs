//! Group commit: writes that arrive together share one statement and one commit.
//!
//! A commit costs a disk sync however many rows it holds, so single-row inserts top out at
//! the syncs per second the disk allows. Callers hand their item to a [`Batcher`] and wait
//! for its own result; up to `flushers` batches are written at once, and whatever queues
//! while they run goes out together in the next one. Without load an item is written at
//! once, so batching adds no latency; under load it multiplies the rows per commit.

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The batcher's task is gone (the server is shutting down) or a flush failed to answer.
#[derive(Debug, thiserror::Error)]
#[error("the batched write was not carried out")]
pub struct BatchLost;

type Entry<T, R> = (T, oneshot::Sender<R>);

/// Hands items to a background task that writes them in batches.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Entry<T, R>>,
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the batching task on the current runtime. `flush` gets up to `max_batch`
    /// items and must return one result per item, in the same order; at most `flushers`
    /// calls run at once.
    pub fn spawn<F, Fut>(max_batch: usize, flushers: usize, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let flushers = flushers.max(1);
        let (queue, pending) = mpsc::channel(max_batch * flushers * 2);
        tokio::spawn(run(pending, max_batch, flushers, Arc::new(flush)));
        Self { queue }
    }

    /// Queues `item` and waits until the batch that holds it has been written.
    pub async fn submit(&self, item: T) -> Result<R, BatchLost> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| BatchLost)?;
        result.await.map_err(|_| BatchLost)
    }
}

async fn run<T, R, F, Fut>(
    mut pending: mpsc::Receiver<Entry<T, R>>,
    max_batch: usize,
    flushers: usize,
    flush: Arc<F>,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(flushers));
    loop {
        // Take a flush slot before the next item: while every slot is busy, arrivals
        // queue up and leave together.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = pending.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match pending.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let flush = Arc::clone(&flush);
        tokio::spawn(async move {
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            let results = flush(items).await;
            drop(slot);
            // A caller that went away no longer needs its answer.
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn each_caller_gets_its_own_result_and_load_forms_batches() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher = Arc::new(Batcher::spawn(8, 1, move |items: Vec<u32>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().map(|mut s| s.push(items.len())).ok();
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 10).collect::<Vec<_>>()
            }
        }));
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { (i, batcher.submit(i).await) })
            })
            .collect();
        for call in calls {
            let (i, result) = call.await.unwrap();
            assert_eq!(result.unwrap(), i * 10);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(
            sizes.len() < 20,
            "concurrent items share batches: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn at_most_flushers_batches_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (Arc::clone(&running), Arc::clone(&most));
        let batcher = Arc::new(Batcher::spawn(1, 3, move |items: Vec<u32>| {
            let (running, most) = (Arc::clone(&r), Arc::clone(&m));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                items
            }
        }));
        let calls: Vec<_> = (0..12u32)
            .map(|i| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.submit(i).await.unwrap() })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_flush_that_panics_fails_only_its_callers() {
        let batcher = Batcher::spawn(4, 1, |items: Vec<u32>| async move {
            assert!(items != [13], "unlucky");
            items
        });
        assert!(matches!(batcher.submit(13).await, Err(BatchLost)));
        assert_eq!(batcher.submit(7).await.unwrap(), 7);
    }
}
