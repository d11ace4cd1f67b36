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
            .start_handler(|_| yield_to_requests())
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

/// How much nicer the pool's threads are than the process.
const COMPUTE_NICE: i32 = 10;

/// Lowers the calling thread's priority so that the runtime's threads, which answer every
/// other request, win the core whenever they have work: with nice 10 a busy pool thread
/// gets about a tenth of a request thread's share, and a saturated pool no longer adds
/// scheduling delay to cheap requests. The pool still gets the whole core when the
/// runtime is idle.
#[cfg(target_os = "linux")]
fn yield_to_requests() {
    // SAFETY: getpriority and setpriority only read and change scheduling; on Linux,
    // PRIO_PROCESS with id 0 names the calling thread, not the whole process. Raising
    // one's own nice value needs no privilege.
    let result = unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (current + COMPUTE_NICE).min(19))
    };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of a compute thread"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_requests() {}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pool_threads_run_below_normal_priority() {
        let pool = CpuPool::new(1, 0).unwrap();
        // SAFETY: getpriority only reads the calling thread's nice value.
        let inside = pool.run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
        let outside = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(inside.await, Ok((outside + COMPUTE_NICE).min(19)));
    }

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
