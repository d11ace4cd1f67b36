//! A pool of OS threads for CPU-bound work, so that it never runs on the async runtime.
//!
//! Admission is bounded: at most `threads + queue` jobs are running or waiting; beyond that
//! [`CpuPool::run`] refuses at once, and the caller answers 503 with `Retry-After`.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::oneshot;

/// Why a job did not produce a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the queue is full.
    #[error("the CPU pool is saturated")]
    Busy,
    /// The job panicked.
    #[error("the job panicked")]
    Panicked,
}

/// A bounded pool of CPU threads.
pub struct CpuPool {
    pool: rayon::ThreadPool,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// Gives a place back when the job that held it ends, however it ends.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CpuPool {
    /// A pool of `threads` threads admitting `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("keel-cpu-{i}"))
            .build()?;
        Ok(Self {
            pool,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: threads + queue,
        })
    }

    /// Runs `job` on the pool and waits for its result without blocking the runtime.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Busy);
        }
        let admission = Admission(self.admitted.clone());
        let (sender, receiver) = oneshot::channel();
        self.pool.spawn(move || {
            // The client may have gone while the job waited: skip the work then.
            if sender.is_closed() {
                return;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(job));
            // Free the place before answering, so the caller's next job is admitted.
            drop(admission);
            let _ = sender.send(result);
        });
        match receiver.await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(PoolError::Panicked),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;

    #[tokio::test]
    async fn refuses_beyond_threads_plus_queue_and_recovers() {
        let pool = Arc::new(CpuPool::new(1, 1).unwrap());
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        let mut running = Vec::new();
        for _ in 0..2 {
            let pool = pool.clone();
            let wait = wait.clone();
            running.push(tokio::spawn(async move {
                pool.run(move || {
                    let _ = wait.lock().map(|w| w.recv_timeout(Duration::from_secs(5)));
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(|| 1).await, Err(PoolError::Busy));
        release.send(()).unwrap();
        release.send(()).unwrap();
        for job in running {
            assert_eq!(job.await.unwrap(), Ok(()));
        }
        assert_eq!(pool.run(|| 2).await, Ok(2));
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_frees_its_place() {
        let pool = CpuPool::new(1, 0).unwrap();
        assert_eq!(
            pool.run(|| -> u8 { panic!("job failed") }).await,
            Err(PoolError::Panicked)
        );
        assert_eq!(pool.run(|| 3).await, Ok(3));
    }
}
