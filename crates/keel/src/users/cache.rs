//! The read-through cache behind `GET /users/{id}` and `GET /users/me`: in process (moka)
//! by default, Redis when `REDIS_URL` is set.
//!
//! Every entry carries the user's version, and an entry only ever moves to a higher one:
//! a reader that loaded a row before a write cannot put the old row back after the writer
//! stored the new one, whatever the interleaving. Writers store the new row (a deletion, a
//! tombstone) before they answer, so with Redis, which every instance shares, no instance
//! serves the old version once a write has been answered. Without Redis each instance also
//! drops its entry when the event log shows a change made elsewhere.
//!
//! The cache is never a reason to fail: when Redis cannot be reached, reads go to the
//! database and `/readyz` says the cache is down.

use std::{sync::Arc, time::Duration};

use moka::{ops::compute::Op, sync::Cache};
use redis::Script;
use tracing::Instrument;
use uuid::Uuid;

use crate::{events::EventHub, metrics::Metrics, redis_conn::Redis};

use super::domain::User;

/// Users an instance keeps in memory.
const MEMORY_CAPACITY: u64 = 100_000;

/// What is known of a user, version-stamped.
#[derive(Debug, Clone)]
enum Entry {
    /// The user at this version.
    User(Arc<User>),
    /// Versions below this one are stale and nothing newer is cached: a miss.
    Floor(i64),
    /// Deleted for good (ids are never reused).
    Deleted,
}

impl Entry {
    /// Whether `version` may replace this entry.
    fn accepts(&self, version: i64) -> bool {
        match self {
            Self::User(user) => version > user.version,
            Self::Floor(floor) => version >= *floor,
            Self::Deleted => false,
        }
    }
}

/// A cache lookup.
#[derive(Debug)]
pub enum Lookup {
    /// The user.
    Found(User),
    /// The user was deleted.
    Deleted,
    /// Not cached: ask the database.
    Miss,
}

/// Sets a Redis entry only if it moves to a higher version (a tombstone is version
/// i64::MAX). KEYS[1]: the entry; ARGV: version, JSON (empty for a tombstone), TTL in ms.
const PUT_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'user', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// The users cache, and where its lookups are counted.
#[derive(Clone)]
pub struct UserCache(Backend, Option<Arc<Metrics>>);

#[derive(Clone)]
enum Backend {
    /// In this process.
    Memory(Cache<Uuid, Entry>),
    /// Shared by every instance.
    Redis(Arc<RedisCache>),
}

impl std::fmt::Debug for UserCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

/// The Redis side.
struct RedisCache {
    redis: Redis,
    ttl: Duration,
    put: Script,
}

impl UserCache {
    /// An in-process cache whose entries live `ttl`.
    pub fn memory(ttl: Duration) -> Self {
        Self(
            Backend::Memory(
                Cache::builder()
                    .max_capacity(MEMORY_CAPACITY)
                    .time_to_live(ttl)
                    .build(),
            ),
            None,
        )
    }

    /// A cache in `redis` whose entries live `ttl`.
    pub fn redis(redis: Redis, ttl: Duration) -> Self {
        Self(
            Backend::Redis(Arc::new(RedisCache {
                redis,
                ttl,
                put: Script::new(PUT_IF_NEWER),
            })),
            None,
        )
    }

    /// The same cache, its lookups counted in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Option<Arc<Metrics>>) -> Self {
        Self(self.0, metrics)
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match &self.0 {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// What the cache knows of user `id`.
    pub async fn get(&self, id: Uuid) -> Lookup {
        let lookup = match &self.0 {
            Backend::Memory(cache) => match cache.get(&id) {
                Some(Entry::User(user)) => Lookup::Found((*user).clone()),
                Some(Entry::Deleted) => Lookup::Deleted,
                Some(Entry::Floor(_)) | None => Lookup::Miss,
            },
            Backend::Redis(redis) => redis.get(id).await,
        };
        if let Some(metrics) = &self.1 {
            metrics.users_cache_lookup(!matches!(lookup, Lookup::Miss));
        }
        lookup
    }

    /// Stores `user` unless a newer version is cached.
    pub async fn put(&self, user: &User) {
        match &self.0 {
            Backend::Memory(cache) => {
                let entry = Entry::User(Arc::new(user.clone()));
                replace_if_accepted(cache, user.id, user.version, entry);
            }
            Backend::Redis(redis) => redis.put(user.id, user.version, Some(user)).await,
        }
    }

    /// Records that user `id` is gone.
    pub async fn delete(&self, id: Uuid) {
        match &self.0 {
            Backend::Memory(cache) => cache.insert(id, Entry::Deleted),
            Backend::Redis(redis) => redis.put(id, i64::MAX, None).await,
        }
    }

    /// Whether the cache answers; `None` for the in-process one, which always does.
    pub async fn check(&self) -> Option<Result<(), String>> {
        match &self.0 {
            Backend::Memory(_) => None,
            Backend::Redis(cache) => Some(cache.redis.ping().await),
        }
    }

    /// Without Redis, drops the entries that other instances' writes made stale, as the
    /// event log reports them, until shutdown.
    pub async fn follow_changes(self, events: EventHub, shutdown: crate::shutdown::Shutdown) {
        let Backend::Memory(cache) = self.0 else {
            return;
        };
        let (mut receiver, _) = events.subscribe();
        loop {
            let event = tokio::select! {
                event = receiver.recv() => event,
                () = shutdown.started() => return,
            };
            let event = match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Some changes went by unseen: nothing cached can be trusted.
                    cache.invalidate_all();
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if !event.kind.starts_with("user.") {
                continue;
            }
            let Some(id) = event.user_id else {
                continue;
            };
            if event.kind == "user.deleted" {
                cache.insert(id, Entry::Deleted);
            } else {
                let version = user_version(&event.json).unwrap_or(i64::MAX);
                replace_if_accepted(&cache, id, version, Entry::Floor(version));
            }
        }
    }
}

/// The `data.version` of an event's JSON.
fn user_version(json: &str) -> Option<i64> {
    let event: serde_json::Value = serde_json::from_str(json).ok()?;
    event["data"]["version"].as_i64()
}

fn replace_if_accepted(cache: &Cache<Uuid, Entry>, id: Uuid, version: i64, entry: Entry) {
    cache.entry(id).and_compute_with(|current| match current {
        Some(current) if !current.value().accepts(version) => Op::Nop,
        _ => Op::Put(entry),
    });
}

impl RedisCache {
    fn key(&self, id: Uuid) -> String {
        self.redis.key(&format!("user:{id}"))
    }

    async fn get(&self, id: Uuid) -> Lookup {
        let key = self.key(id);
        let found: Result<(Option<i64>, Option<String>), String> = self
            .redis
            .run(|mut connection| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("user")
                    .query_async(&mut connection)
                    .await
            })
            .instrument(Redis::span("HMGET"))
            .await;
        match found {
            Ok((Some(i64::MAX), _)) => Lookup::Deleted,
            Ok((Some(version), Some(json))) if !json.is_empty() => {
                match serde_json::from_str::<User>(&json) {
                    Ok(user) => Lookup::Found(User { version, ..user }),
                    Err(error) => {
                        tracing::warn!(%error, %id, "unreadable cached user; reading the database");
                        Lookup::Miss
                    }
                }
            }
            Ok(_) | Err(_) => Lookup::Miss,
        }
    }

    async fn put(&self, id: Uuid, version: i64, user: Option<&User>) {
        let json = match user.map(serde_json::to_string).transpose() {
            Ok(json) => json.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, %id, "cannot encode a user for the cache");
                return;
            }
        };
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.put.key(self.key(id));
        invocation.arg(version).arg(json).arg(ttl);
        let stored: Result<i64, String> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .instrument(Redis::span("EVALSHA"))
            .await;
        if let Err(error) = stored {
            // The entry may now be stale until its TTL; say so where an operator looks.
            tracing::warn!(%error, %id, "cannot update the cached user after a write");
        }
    }
}
