//! Rate limits: a general limit per client on every route, a stricter one per client on the
//! credential routes (login, register, refresh), and a limit of failed logins per account.
//!
//! Per-client limits are GCRA (governor) keyed by the client address, which is the socket's
//! peer unless that peer is a trusted proxy (see [`client`]). Every limited response carries
//! the IETF `RateLimit-Policy` and `RateLimit` headers; a refused one is a 429 problem with
//! `Retry-After`. With Redis (`REDIS_URL`) the counts live there, so every instance behind
//! a load balancer enforces the same limits (GCRA and the failure counter run as Lua
//! scripts, atomically); without it, or while Redis does not answer, each instance counts
//! in its own memory.

pub mod client;
pub mod layer;

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use http::HeaderValue;
use moka::sync::Cache;
use redis::Script;

use crate::{config::Config, error::ApiError, metrics::Metrics, redis_conn::Redis};

pub use client::{ClientIp, TrustedProxies};
pub use layer::RateLimitLayer;

/// How often idle clients are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Accounts whose failed logins are counted at once, at most.
const MAX_ACCOUNTS: u64 = 100_000;

type KeyedLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// One per-client limit: `quota` requests per minute.
struct Limit {
    name: &'static str,
    per_minute: u32,
    limiter: KeyedLimiter,
    /// `RateLimit-Policy` member for this limit.
    policy: String,
}

/// What a check of one limit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more fit now, the quota is whole again in `reset` seconds.
    Allowed {
        /// Requests left.
        remaining: u32,
        /// Seconds until the quota is whole again.
        reset: u64,
    },
    /// Refused for `retry_after` seconds.
    Refused {
        /// Seconds until one more request fits.
        retry_after: u64,
    },
}

impl Limit {
    fn new(name: &'static str, per_minute: u32) -> Option<Self> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        Some(Self {
            name,
            per_minute,
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            policy: format!("\"{name}\";q={per_minute};w=60"),
        })
    }

    /// Takes one request of `client`'s quota, if there is one.
    fn check(&self, client: IpAddr) -> Decision {
        match self.limiter.check_key(&client) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Each used request comes back after 60/q seconds.
                let used = u64::from(self.per_minute.saturating_sub(remaining));
                Decision::Allowed {
                    remaining,
                    reset: (used * 60).div_ceil(u64::from(self.per_minute)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision::Refused {
                    retry_after: whole_seconds(wait),
                }
            }
        }
    }

    /// The `RateLimit` member for `decision`.
    fn header_member(&self, decision: &Decision) -> String {
        match decision {
            Decision::Allowed { remaining, reset } => {
                format!("\"{}\";r={remaining};t={reset}", self.name)
            }
            Decision::Refused { retry_after } => format!("\"{}\";r=0;t={retry_after}", self.name),
        }
    }
}

/// Seconds, rounded up, at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

/// Failed logins of one account within the current window.
struct Failures {
    started: Instant,
    count: AtomicU32,
}

struct Inner {
    general: Option<Limit>,
    credentials: Option<Limit>,
    /// Failed logins per lower-cased e-mail; an entry lives one window from its first failure.
    failures: Option<(u32, Duration, Cache<String, Arc<Failures>>)>,
    proxies: TrustedProxies,
}

/// The limits of one keel process, built once from the configuration, and where their
/// refusals are counted.
#[derive(Clone)]
pub struct RateLimits(Arc<Inner>, Option<Arc<Shared>>, Option<Arc<Metrics>>);

/// GCRA over a window of ARGV[1] ms with a quota of ARGV[2]: the key holds the theoretical
/// arrival time. Answers {1, remaining, ms until whole} or {0, ms to wait}.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local period = tonumber(ARGV[1])
local emission = period / tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + emission
if now < next_tat - period then
  return {0, math.ceil(next_tat - period - now)}
end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now))
return {1, math.floor((period - (next_tat - now)) / emission), math.ceil(next_tat - now)}
";

/// Counts one failure; the count expires ARGV[1] ms after the first.
const COUNT_FAILURE: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
";

/// The failure count and the ms it has left.
const READ_FAILURES: &str = r"
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
";

/// The limits' state in Redis.
struct Shared {
    redis: Redis,
    gcra: Script,
    count_failure: Script,
    read_failures: Script,
}

impl Shared {
    async fn check(&self, limit: &Limit, client: IpAddr) -> Result<Decision, String> {
        let mut invocation = self
            .gcra
            .key(self.redis.key(&format!("rl:{}:{client}", limit.name)));
        invocation.arg(60_000).arg(limit.per_minute);
        let answer: Vec<i64> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        match answer.as_slice() {
            [1, remaining, whole] => Ok(Decision::Allowed {
                remaining: u32::try_from(*remaining).unwrap_or(0),
                reset: whole_seconds(millis(*whole)),
            }),
            [0, wait] => Ok(Decision::Refused {
                retry_after: whole_seconds(millis(*wait)),
            }),
            other => Err(format!("unexpected GCRA answer {other:?}")),
        }
    }

    /// The account's key, its name hashed so that no e-mail address is stored in Redis.
    fn account_key(&self, account: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = hex::encode(Sha256::digest(account.as_bytes()));
        self.redis.key(&format!("rl:account:{digest}"))
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("general", &self.0.general.as_ref().map(|l| l.per_minute))
            .field(
                "credentials",
                &self.0.credentials.as_ref().map(|l| l.per_minute),
            )
            .field("shared", &self.1.is_some())
            .finish_non_exhaustive()
    }
}

/// Both limits' answers for one request, and the headers that describe them.
#[derive(Debug)]
pub struct Verdict {
    /// Seconds to wait when a limit refused the request.
    pub refused: Option<u64>,
    /// `RateLimit-Policy` and `RateLimit`, when a limit applied.
    pub headers: Option<(HeaderValue, HeaderValue)>,
}

impl RateLimits {
    /// The limits `config` asks for. Forgets idle clients every minute when a runtime is
    /// running (the sweep stops once the limits are dropped).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let failures = (config.login_failure_limit > 0).then(|| {
            let window = Duration::from_secs(config.login_failure_window_secs);
            let cache = Cache::builder()
                .max_capacity(MAX_ACCOUNTS)
                .time_to_live(window)
                .build();
            (config.login_failure_limit, window, cache)
        });
        let limits = Self(
            Arc::new(Inner {
                general: Limit::new("general", config.rate_limit_per_minute),
                credentials: Limit::new("auth", config.auth_rate_limit_per_minute),
                failures,
                proxies: TrustedProxies::parse(&config.trusted_proxies)?,
            }),
            None,
            None,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&limits.0)));
        }
        Ok(limits)
    }

    /// The same limits, counted in `redis` (when there is one) so that every instance
    /// shares them.
    pub fn shared_through(self, redis: Option<Redis>) -> Self {
        let shared = redis.map(|redis| {
            Arc::new(Shared {
                redis,
                gcra: Script::new(GCRA),
                count_failure: Script::new(COUNT_FAILURE),
                read_failures: Script::new(READ_FAILURES),
            })
        });
        Self(self.0, shared, self.2)
    }

    /// The same limits, their refusals counted in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Option<Arc<Metrics>>) -> Self {
        Self(self.0, self.1, metrics)
    }

    /// The trusted proxies.
    pub fn proxies(&self) -> &TrustedProxies {
        &self.0.proxies
    }

    /// Counts one request of `client` against the general limit and, for a credential
    /// route, against the strict one.
    pub async fn check(&self, client: IpAddr, credential_route: bool) -> Verdict {
        let limits = [
            self.0.general.as_ref(),
            self.0.credentials.as_ref().filter(|_| credential_route),
        ];
        let mut refused: Option<u64> = None;
        let mut policies = Vec::new();
        let mut members = Vec::new();
        for limit in limits.into_iter().flatten() {
            let shared = match &self.1 {
                Some(shared) => shared.check(limit, client).await.ok(),
                None => None,
            };
            let decision = shared.unwrap_or_else(|| limit.check(client));
            if let Decision::Refused { retry_after } = decision {
                refused = Some(refused.map_or(retry_after, |r| r.max(retry_after)));
                if let Some(metrics) = &self.2 {
                    metrics.rate_limited(limit.name);
                }
            }
            policies.push(limit.policy.as_str());
            members.push(limit.header_member(&decision));
        }
        let headers = (!policies.is_empty())
            .then(|| {
                Some((
                    HeaderValue::from_str(&policies.join(", ")).ok()?,
                    HeaderValue::from_str(&members.join(", ")).ok()?,
                ))
            })
            .flatten();
        Verdict { refused, headers }
    }

    /// Refuses while `account` (a lower-cased e-mail) has used up its failed logins.
    pub async fn check_account(&self, account: &str) -> Result<(), ApiError> {
        let Some((limit, window, cache)) = &self.0.failures else {
            return Ok(());
        };
        let (count, left) = match self.shared_failures(account).await {
            Some(found) => found,
            None => {
                let Some(failures) = cache.get(account) else {
                    return Ok(());
                };
                let left = window.saturating_sub(failures.started.elapsed());
                (failures.count.load(Ordering::Acquire), left)
            }
        };
        if count >= *limit && !left.is_zero() {
            if let Some(metrics) = &self.2 {
                metrics.rate_limited("account");
            }
            let retry_after_secs = whole_seconds(left);
            let headers =
                HeaderValue::from_str(&format!("\"account\";q={limit};w={}", window.as_secs()))
                    .ok()
                    .zip(
                        HeaderValue::from_str(&format!("\"account\";r=0;t={retry_after_secs}"))
                            .ok(),
                    );
            return Err(ApiError::TooManyRequests {
                detail: "too many failed logins for this account; try again later",
                retry_after_secs,
                limit: headers.map(Box::new),
            });
        }
        Ok(())
    }

    /// The failures of `account` counted in Redis and the time their window has left;
    /// `None` without Redis or when it does not answer.
    async fn shared_failures(&self, account: &str) -> Option<(u32, Duration)> {
        let shared = self.1.as_ref()?;
        let invocation = shared.read_failures.key(shared.account_key(account));
        let (count, left): (i64, i64) = shared
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
            .ok()?;
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        Some((u32::try_from(count).unwrap_or(u32::MAX), left))
    }

    /// Counts one failed login (or failed password confirmation) against `account`.
    pub async fn record_login_failure(&self, account: &str) {
        let Some((_, window, _)) = &self.0.failures else {
            return;
        };
        if let Some(shared) = &self.1 {
            let mut invocation = shared.count_failure.key(shared.account_key(account));
            invocation.arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
            let counted: Result<i64, String> = shared
                .redis
                .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
                .await;
            if counted.is_ok() {
                return;
            }
        }
        if let Some((_, _, cache)) = &self.0.failures {
            let failures = cache.get_with(account.to_owned(), || {
                Arc::new(Failures {
                    started: Instant::now(),
                    count: AtomicU32::new(0),
                })
            });
            failures.count.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Forgets clients whose quota is whole again, so the maps only hold recent clients.
async fn sweep(limits: Weak<Inner>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        for limit in [&limits.general, &limits.credentials].into_iter().flatten() {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(general: u32, auth: u32, failures: u32) -> RateLimits {
        RateLimits::from_config(&Config {
            rate_limit_per_minute: general,
            auth_rate_limit_per_minute: auth,
            login_failure_limit: failures,
            login_failure_window_secs: 60,
            ..Config::default()
        })
        .unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn header(verdict: &Verdict) -> (String, String) {
        let (policy, state) = verdict.headers.clone().unwrap();
        (
            policy.to_str().unwrap().to_owned(),
            state.to_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn the_quota_counts_down_then_refuses_with_a_wait() {
        let limits = limits(3, 0, 0);
        let first = limits.check(CLIENT, false).await;
        assert_eq!(first.refused, None);
        assert_eq!(
            header(&first),
            (
                "\"general\";q=3;w=60".to_owned(),
                "\"general\";r=2;t=20".to_owned()
            )
        );
        assert_eq!(
            header(&limits.check(CLIENT, false).await).1,
            "\"general\";r=1;t=40"
        );
        assert_eq!(
            header(&limits.check(CLIENT, false).await).1,
            "\"general\";r=0;t=60"
        );
        let refused = limits.check(CLIENT, false).await;
        let wait = refused.refused.expect("the fourth request is refused");
        assert!((19..=20).contains(&wait), "{wait}");
        assert_eq!(header(&refused).1, format!("\"general\";r=0;t={wait}"));
        // Another client has its own quota.
        assert_eq!(limits.check(OTHER, false).await.refused, None);
    }

    #[tokio::test]
    async fn credential_routes_meet_both_limits() {
        let limits = limits(100, 2, 0);
        let verdict = limits.check(CLIENT, true).await;
        assert_eq!(
            header(&verdict),
            (
                "\"general\";q=100;w=60, \"auth\";q=2;w=60".to_owned(),
                "\"general\";r=99;t=1, \"auth\";r=1;t=30".to_owned()
            )
        );
        assert_eq!(limits.check(CLIENT, true).await.refused, None);
        assert!(limits.check(CLIENT, true).await.refused.is_some());
        // Other routes only meet the general limit.
        assert_eq!(limits.check(CLIENT, false).await.refused, None);
    }

    #[tokio::test]
    async fn no_limit_no_headers() {
        let verdict = limits(0, 0, 0).check(CLIENT, true).await;
        assert_eq!(verdict.refused, None);
        assert!(verdict.headers.is_none());
    }

    #[tokio::test]
    async fn failed_logins_lock_the_account_for_the_window() {
        let limits = limits(0, 0, 2);
        assert!(limits.check_account("ada@example.com").await.is_ok());
        limits.record_login_failure("ada@example.com").await;
        assert!(limits.check_account("ada@example.com").await.is_ok());
        limits.record_login_failure("ada@example.com").await;
        match limits.check_account("ada@example.com").await {
            Err(ApiError::TooManyRequests {
                retry_after_secs,
                limit: Some(limit),
                ..
            }) => {
                assert!((59..=60).contains(&retry_after_secs));
                assert_eq!(limit.0, "\"account\";q=2;w=60");
                assert_eq!(
                    limit.1.to_str().unwrap(),
                    format!("\"account\";r=0;t={retry_after_secs}")
                );
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limits.check_account("grace@example.com").await.is_ok());
    }

    #[tokio::test]
    async fn failure_counting_can_be_off() {
        let limits = limits(0, 0, 0);
        for _ in 0..10 {
            limits.record_login_failure("ada@example.com").await;
        }
        assert!(limits.check_account("ada@example.com").await.is_ok());
    }
}
