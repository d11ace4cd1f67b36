//! The `jobs` table: enqueueing, claiming, outcomes and the admin API's reads.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    db::{Db, DbError, FromRow, Param, Row, Tx, now},
    http::pagination::Cursor,
    telemetry::otel,
};

use super::{Job, JobContext, JobError, JobState, NewJob};

const COLUMNS: &str = "id, kind, payload, state, attempts, max_attempts, run_at, \
    idempotency_key, last_error, created_at, updated_at, finished_at";

impl FromRow for Job {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let state: String = row.get("state")?;
        let payload: String = row.get("payload")?;
        Ok(Self {
            id: row.get("id")?,
            kind: row.get("kind")?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| DbError::Corrupt(format!("job payload: {e}")))?,
            state: JobState::parse(&state)
                .ok_or_else(|| DbError::Corrupt(format!("unknown job state {state:?}")))?,
            attempts: row.get("attempts")?,
            max_attempts: row.get("max_attempts")?,
            run_at: row.get("run_at")?,
            idempotency_key: row.get("idempotency_key")?,
            last_error: row.get("last_error")?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
            finished_at: row.get("finished_at")?,
        })
    }
}

/// A job a worker holds: what its handler gets, and the lease that guards its outcome.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The handler's input.
    pub context: JobContext,
    /// Attempts it gets.
    pub max_attempts: i32,
    /// The lease: every later change of the job names it.
    pub lease: Uuid,
    /// The trace context of the span that enqueued it (W3C `traceparent`).
    pub traceparent: Option<String>,
}

struct ClaimedRow(JobContext, i32, Option<String>);

impl FromRow for ClaimedRow {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let payload: String = row.get("payload")?;
        let max_attempts = row.get("max_attempts")?;
        Ok(Self(
            JobContext {
                id: row.get("id")?,
                kind: row.get("kind")?,
                payload: serde_json::from_str(&payload)
                    .map_err(|e| DbError::Corrupt(format!("job payload: {e}")))?,
                attempt: row.get("attempts")?,
                max_attempts,
            },
            max_attempts,
            row.get("traceparent")?,
        ))
    }
}

/// A page of the jobs list.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Continue after this id (newest first).
    pub after: Option<Cursor>,
}

/// A page of jobs and whether more follow.
pub type JobPage = (Vec<Job>, bool);

/// The queue's size, for readiness.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    /// Jobs due and waiting for a worker.
    pub depth: i64,
    /// How long the oldest of them has waited.
    pub oldest_age: Option<chrono::Duration>,
    /// Jobs held by workers.
    pub running: i64,
    /// Jobs out of attempts.
    pub dead: i64,
    /// Jobs an admin cancelled before they ran.
    pub cancelled: i64,
}

/// How many jobs are held by workers, dead and cancelled.
struct Settled {
    running: i64,
    dead: i64,
    cancelled: i64,
}

impl FromRow for Settled {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            running: row.get("running")?,
            dead: row.get("dead")?,
            cancelled: row.get("cancelled")?,
        })
    }
}

/// A job due for the relay: its id, the attempts it has had and its trace context.
#[derive(Debug, Clone)]
pub struct Unpublished {
    /// The job.
    pub id: Uuid,
    /// Its attempts so far, which the message carries so that a stale copy is ignored.
    pub attempts: i32,
    /// The trace context of the span that enqueued it, which the message carries too.
    pub traceparent: Option<String>,
}

impl FromRow for Unpublished {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get("id")?,
            attempts: row.get("attempts")?,
            traceparent: row.get("traceparent")?,
        })
    }
}

/// The jobs table.
#[derive(Debug, Clone)]
pub struct JobStore {
    db: Db,
}

impl JobStore {
    /// The table on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres { .. })
    }

    /// Inserts `job` in `tx`; with an idempotency key already used, answers that job's id.
    pub(super) async fn insert(
        &self,
        tx: &mut Tx,
        job: NewJob,
        max_attempts: i32,
    ) -> Result<Uuid, JobError> {
        let id = Uuid::now_v7();
        let now = now();
        let run_at = chrono::Duration::from_std(job.delay)
            .ok()
            .and_then(|delay| now.checked_add_signed(delay))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let payload = serde_json::to_string(&job.payload)?;
        let traceparent = otel::current_traceparent();
        let inserted: Option<(Uuid,)> = tx
            .fetch_optional(
                "INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, run_at, \
                 idempotency_key, created_at, updated_at, traceparent) \
                 VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7, $7, $8) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                &[
                    &id,
                    &job.kind,
                    &payload,
                    &max_attempts,
                    &run_at,
                    &job.idempotency_key,
                    &now,
                    &traceparent,
                ],
            )
            .await?;
        if let Some((id,)) = inserted {
            return Ok(id);
        }
        let (existing,): (Uuid,) = tx
            .fetch_optional(
                "SELECT id FROM jobs WHERE idempotency_key = $1",
                &[&job.idempotency_key],
            )
            .await?
            .ok_or(DbError::NoRow)?;
        Ok(existing)
    }

    /// Takes the oldest due job for a new lease of `lease_for`, counting an attempt.
    pub async fn claim_next(
        &self,
        lease_for: chrono::Duration,
    ) -> Result<Option<Claimed>, DbError> {
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, \
             lease_until = $2, updated_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= $3 \
             ORDER BY run_at LIMIT 1{lock}) \
             RETURNING id, kind, payload, attempts, max_attempts, traceparent"
        );
        self.claim(&sql, &[], lease_for).await
    }

    /// Takes job `id` for a new lease if it is queued and has had `attempts` attempts (a
    /// message about an earlier attempt is stale, and claims nothing).
    pub async fn claim_id(
        &self,
        id: Uuid,
        attempts: i32,
        lease_for: chrono::Duration,
    ) -> Result<Option<Claimed>, DbError> {
        let sql = "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, \
             lease_until = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'queued' AND attempts = $5 \
             RETURNING id, kind, payload, attempts, max_attempts, traceparent";
        self.claim(sql, &[&id, &attempts], lease_for).await
    }

    async fn claim(
        &self,
        sql: &str,
        extra: &[&dyn Param],
        lease_for: chrono::Duration,
    ) -> Result<Option<Claimed>, DbError> {
        let lease = Uuid::new_v4();
        let now = now();
        let until = now + lease_for;
        let mut params: Vec<&dyn Param> = vec![&lease, &until, &now];
        params.extend_from_slice(extra);
        let row: Option<ClaimedRow> = self.db.fetch_optional(sql, &params).await?;
        Ok(
            row.map(|ClaimedRow(context, max_attempts, traceparent)| Claimed {
                context,
                max_attempts,
                lease,
                traceparent,
            }),
        )
    }

    /// Extends `lease` by `lease_for`; `false` when the lease is no longer the job's.
    pub async fn heartbeat(
        &self,
        lease: Uuid,
        lease_for: chrono::Duration,
    ) -> Result<bool, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET lease_until = $1 WHERE lease_owner = $2 AND state = 'running'",
                &[&(now + lease_for), &lease],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Marks the job of `lease` succeeded; `false` when the lease was lost.
    pub async fn succeed(&self, lease: Uuid) -> Result<bool, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_until = NULL, \
                 last_error = NULL, updated_at = $1, finished_at = $1 \
                 WHERE lease_owner = $2 AND state = 'running'",
                &[&now, &lease],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Queues the job of `lease` again for `run_at` after a failure; `published` says
    /// whether a message for the retry is already with the broker. `false` when the lease
    /// was lost.
    pub async fn retry_later(
        &self,
        lease: Uuid,
        run_at: DateTime<Utc>,
        error: &str,
        published: bool,
    ) -> Result<bool, DbError> {
        let now = now();
        let published_at = published.then_some(now);
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, \
                 run_at = $1, last_error = $2, published_at = $3, updated_at = $4 \
                 WHERE lease_owner = $5 AND state = 'running'",
                &[&run_at, &error.to_owned(), &published_at, &now, &lease],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Marks the job of `lease` dead with `error`; `false` when the lease was lost.
    pub async fn bury(&self, lease: Uuid, error: &str) -> Result<bool, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_until = NULL, \
                 last_error = $1, updated_at = $2, finished_at = $2 \
                 WHERE lease_owner = $3 AND state = 'running'",
                &[&error.to_owned(), &now, &lease],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Gives back the job of `lease` without counting the attempt (shutdown stopped it).
    pub async fn release(&self, lease: Uuid) -> Result<bool, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, \
                 lease_until = NULL, published_at = NULL, updated_at = $1 \
                 WHERE lease_owner = $2 AND state = 'running'",
                &[&now, &lease],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Queues again the jobs whose lease expired (their worker died or hung): the attempt
    /// counts, and a job out of attempts is dead. Returns how many changed.
    pub async fn recover_expired(&self) -> Result<u64, DbError> {
        let now = now();
        self.db
            .execute(
                "UPDATE jobs SET \
                 state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                 finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
                 last_error = 'the worker stopped answering (lease expired)', \
                 lease_owner = NULL, lease_until = NULL, published_at = NULL, updated_at = $1 \
                 WHERE state = 'running' AND lease_until < $1",
                &[&now],
            )
            .await
    }

    /// Due jobs not yet handed to the broker, oldest first, at most `limit`; on PostgreSQL
    /// inside `tx`, whose row locks keep other relays off them.
    pub async fn unpublished(
        &self,
        tx: Option<&mut Tx>,
        limit: i64,
    ) -> Result<Vec<Unpublished>, DbError> {
        let now = now();
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "SELECT id, attempts, traceparent FROM jobs WHERE state = 'queued' AND published_at IS NULL \
             AND run_at <= $1 ORDER BY run_at LIMIT $2{lock}"
        );
        match tx {
            Some(tx) => tx.fetch_all(&sql, &[&now, &limit]).await,
            None => self.db.fetch_all(&sql, &[&now, &limit]).await,
        }
    }

    /// Records that the broker confirmed messages for `jobs`.
    pub async fn mark_published(
        &self,
        tx: Option<&mut Tx>,
        jobs: &[Unpublished],
    ) -> Result<(), DbError> {
        let now = now();
        let sql = "UPDATE jobs SET published_at = $1 WHERE id = $2 AND attempts = $3 \
                   AND state = 'queued' AND published_at IS NULL";
        match tx {
            Some(tx) => {
                for job in jobs {
                    tx.execute(sql, &[&now, &job.id, &job.attempts]).await?;
                }
            }
            None => {
                for job in jobs {
                    self.db
                        .execute(sql, &[&now, &job.id, &job.attempts])
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Job `id`.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        self.db.fetch_optional(&sql, &[&id]).await
    }

    /// One page of jobs, newest first.
    pub async fn list(&self, query: &JobQuery) -> Result<JobPage, DbError> {
        let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
        let state = query.state.map(|s| s.as_str().to_owned());
        let after = query.after.map(|c| c.0);
        let fetch = i64::from(query.limit) + 1;
        let mut params: Vec<&dyn Param> = Vec::new();
        if let Some(state) = &state {
            params.push(state);
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some(kind) = &query.kind {
            params.push(kind);
            sql.push_str(&format!(" AND kind = ${}", params.len()));
        }
        if let Some(after) = &after {
            params.push(after);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        params.push(&fetch);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let mut rows: Vec<Job> = self.db.fetch_all(&sql, &params).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((rows, more))
    }

    /// Queues dead job `id` again with fresh attempts; `None` when there is no such job,
    /// `Some(false)` when it is not dead.
    pub async fn retry_dead(&self, id: Uuid) -> Result<Option<bool>, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, published_at = NULL, \
                 finished_at = NULL, updated_at = $1 WHERE id = $2 AND state = 'dead'",
                &[&now, &id],
            )
            .await?;
        if changed > 0 {
            return Ok(Some(true));
        }
        let exists: Option<(Uuid,)> = self
            .db
            .fetch_optional("SELECT id FROM jobs WHERE id = $1", &[&id])
            .await?;
        Ok(exists.map(|_| false))
    }

    /// Cancels job `id` if it is still queued, in one conditional write, so that a worker
    /// claiming it at the same moment either gets it first (and the cancel fails) or finds
    /// it cancelled (and claims nothing). `None` when there is no such job, `Some(false)`
    /// when it is not queued (running or finished).
    pub async fn cancel_queued(&self, id: Uuid) -> Result<Option<bool>, DbError> {
        let now = now();
        let changed = self
            .db
            .execute(
                "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_until = NULL, \
                 updated_at = $1, finished_at = $1 WHERE id = $2 AND state = 'queued'",
                &[&now, &id],
            )
            .await?;
        if changed > 0 {
            return Ok(Some(true));
        }
        let exists: Option<(Uuid,)> = self
            .db
            .fetch_optional("SELECT id FROM jobs WHERE id = $1", &[&id])
            .await?;
        Ok(exists.map(|_| false))
    }

    /// Deletes succeeded jobs that finished before `before` (dead and cancelled ones stay
    /// until retried or deleted by hand); returns how many.
    pub async fn purge_succeeded(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute(
                "DELETE FROM jobs WHERE state = 'succeeded' AND finished_at < $1",
                &[&before],
            )
            .await
    }

    /// The queue's size.
    pub async fn stats(&self) -> Result<QueueStats, DbError> {
        let now = now();
        let (depth, oldest): (i64, Option<DateTime<Utc>>) = self
            .db
            .fetch_one(
                "SELECT COUNT(*), MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= $1",
                &[&now],
            )
            .await?;
        let Settled {
            running,
            dead,
            cancelled,
        } = self
            .db
            .fetch_one(
                "SELECT COUNT(CASE WHEN state = 'running' THEN 1 END) AS running, \
                 COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
                 COUNT(CASE WHEN state = 'cancelled' THEN 1 END) AS cancelled FROM jobs \
                 WHERE state IN ('running', 'dead', 'cancelled')",
                &[],
            )
            .await?;
        Ok(QueueStats {
            depth,
            oldest_age: oldest.map(|at| now - at),
            running,
            dead,
            cancelled,
        })
    }
}
