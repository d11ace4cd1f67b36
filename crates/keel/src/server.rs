//! The composition root: the only module that knows every feature. Builds each feature's
//! state from the configuration, composes their routers into the application, binds the
//! listener and serves until SIGTERM/SIGINT (or, in tests, until told to stop).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::FromRef, middleware, serve::ListenerExt};
use tokio::net::TcpListener;
use tower::ServiceExt;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    accounts::{self, AccountsState, bootstrap::bootstrap_admin, email_tokens::EmailTokens},
    audit::{self, AuditLog},
    auth::{Auth, keys::KeyRing},
    compute::{self, CpuPool},
    config::Config,
    console::{self, ConsoleState},
    db::Db,
    docs,
    events::{self, EventHub, EventsState, tickets::Tickets},
    health::{self, HealthState},
    http::{self, listener::StoppableListener, ratelimit::RateLimits, static_files::StaticFiles},
    idempotency::{self, Idempotency},
    jobs::{self, Handlers, Jobs},
    log_filter,
    metrics::{Metrics, MetricsListener, NestedRoute, QueryTimer, recent::RecentTraffic},
    redis_conn::Redis,
    shutdown::Shutdown,
    users::{self, UsersState, cache::UserCache, store::UserStore},
    webhooks::{self, Dispatcher, WebhookStore, WebhooksState},
};

/// How often expired idempotency keys are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How long shutdown waits for the first request of connections accepted just before the
/// listener closed; any still silent then are closed with the idle ones.
const FIRST_REQUEST_PATIENCE: Duration = Duration::from_secs(1);

/// How long a ticket for an event stream may wait to be used.
const EVENT_TICKET_TTL: Duration = Duration::from_secs(30);

/// The routes' state: each feature's own, handed to its router by `FromRef`, so that no
/// handler reaches more than its feature's state.
#[derive(Clone, FromRef)]
struct AppState {
    auth: Arc<Auth>,
    audit: AuditLog,
    accounts: AccountsState,
    users: UsersState,
    jobs: Jobs,
    events: EventsState,
    webhooks: WebhooksState,
    health: HealthState,
    compute: Arc<CpuPool>,
}

/// What a running keel is made of: built once at start-up, from which the routes' state
/// and the background tasks take their parts.
#[derive(Clone)]
struct Services {
    config: Arc<Config>,
    db: Db,
    auth: Arc<Auth>,
    audit: AuditLog,
    users: UserStore,
    jobs: Jobs,
    events: EventHub,
    tickets: Tickets,
    rate_limits: RateLimits,
    compute: Arc<CpuPool>,
    shutdown: Shutdown,
    metrics: Option<Arc<Metrics>>,
    traffic: Arc<RecentTraffic>,
}

impl Services {
    /// Each feature's state.
    fn state(&self) -> AppState {
        AppState {
            auth: Arc::clone(&self.auth),
            audit: self.audit.clone(),
            accounts: AccountsState {
                db: self.db.clone(),
                auth: Arc::clone(&self.auth),
                users: self.users.clone(),
                rate_limits: self.rate_limits.clone(),
                jobs: self.jobs.clone(),
                audit: self.audit.clone(),
            },
            users: UsersState {
                users: self.users.clone(),
                auth: Arc::clone(&self.auth),
                audit: self.audit.clone(),
                jobs: self.jobs.clone(),
                rate_limits: self.rate_limits.clone(),
            },
            jobs: self.jobs.clone(),
            events: EventsState {
                events: self.events.clone(),
                events_tickets: self.tickets.clone(),
                auth: Arc::clone(&self.auth),
                shutdown: self.shutdown.clone(),
                metrics: self.metrics.clone(),
                max_connections: self.config.events_max_connections,
                heartbeat_secs: self.config.events_heartbeat_secs,
            },
            webhooks: WebhooksState {
                db: self.db.clone(),
                jobs: self.jobs.clone(),
                environment: self.config.environment,
            },
            health: HealthState {
                db: self.db.clone(),
                jobs: self.jobs.clone(),
                cache: self.users.cache().clone(),
                shutdown: self.shutdown.clone(),
            },
            compute: Arc::clone(&self.compute),
        }
    }
}

/// Every documented route, before state and middleware are attached.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(accounts::router())
        .merge(users::router())
        .merge(audit::router())
        .merge(log_filter::router())
        .merge(health::router())
        .merge(compute::router())
        .merge(jobs::router())
        .merge(events::router())
        .merge(webhooks::router())
}

/// The users cache the configuration asks for.
fn user_cache(config: &Config, redis: Option<&Redis>) -> UserCache {
    let ttl = Duration::from_secs(config.cache_ttl_secs);
    match redis {
        Some(redis) => UserCache::redis(redis.clone(), ttl),
        None => UserCache::memory(ttl),
    }
}

/// The handlers of every job kind keel runs.
pub fn job_handlers(config: &Config, users: &UserStore, db: &Db) -> anyhow::Result<Handlers> {
    let mut handlers = Handlers::default();
    accounts::email_flows::register_handlers(&mut handlers, config, users.clone(), db)?;
    webhooks::register_handler(&mut handlers, config, db)?;
    Ok(handlers)
}

/// The migrated database and, when `config` asks for metrics, their bound listener; the
/// database's statements are timed into those metrics and its pool read at every scrape.
pub async fn database_and_metrics(
    config: &Config,
) -> anyhow::Result<(Db, Option<MetricsListener>)> {
    let metrics_listener = MetricsListener::bind(config).await?;
    let metrics = metrics_listener.as_ref().map(|l| l.metrics().as_ref());
    let db = Db::connect(config)
        .await?
        .with_query_timer(QueryTimer::of(metrics));
    if let Some(metrics) = metrics {
        db.register_metrics(metrics);
    }
    db.migrate().await?;
    Ok((db, metrics_listener))
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut document) = api().split_for_parts();
    docs::complete(&mut document);
    document
}

/// The whole HTTP application: the features' routes with their state, the idempotency
/// layer, the docs, the admin console (a client of those routes), `/static` (answered by
/// `static_files`) and the middleware stack; and the console's state, whose sampler runs
/// beside the server.
fn app(services: &Services, static_files: StaticFiles) -> (Router, ConsoleState) {
    let idempotency = Idempotency::new(
        services.db.clone(),
        Arc::clone(&services.auth),
        &services.config,
    );
    let (api, mut document) = api()
        .layer(middleware::from_fn_with_state(
            idempotency,
            idempotency::middleware,
        ))
        .split_for_parts();
    docs::complete(&mut document);
    let api = api.with_state(services.state());
    let console = ConsoleState::new(
        console::Api::new(api.clone()),
        Arc::clone(&services.auth),
        &services.config,
        console::Sources {
            users: services.users.clone(),
            jobs: services.jobs.clone(),
            webhooks: WebhookStore::new(services.db.clone()),
            events: services.events.clone(),
            traffic: Arc::clone(&services.traffic),
        },
    );
    let router = api
        .merge(docs::router(&document))
        .merge(console::router(console.clone()))
        .nest_service(
            "/static",
            static_files.map_response(|response| NestedRoute("/static/{*path}").mark(response)),
        )
        .fallback(|| async { ::http::StatusCode::NOT_FOUND })
        .method_not_allowed_fallback(|| async { ::http::StatusCode::METHOD_NOT_ALLOWED });
    let router = http::apply(
        router,
        &services.config,
        &services.rate_limits,
        &services.shutdown,
        services.metrics.as_ref(),
        &services.traffic,
    );
    (router, console)
}

/// A bound, migrated, ready-to-run keel.
pub struct Server {
    listener: TcpListener,
    router: Router,
    /// The handlers the in-process workers run; `None` when they are off.
    handlers: Option<Handlers>,
    /// Where `/metrics` is served, when it is.
    metrics_listener: Option<MetricsListener>,
    services: Services,
    console: ConsoleState,
}

impl Server {
    /// Connects to the database, applies migrations and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Settings that features parse are checked before anything is touched too.
        let rate_limits = RateLimits::from_config(&config)?;
        // Keys first: a production start without them touches nothing.
        let keys = KeyRing::load(&config)?;
        let (db, metrics_listener) = database_and_metrics(&config).await?;
        let metrics = metrics_listener
            .as_ref()
            .map(|listener| Arc::clone(listener.metrics()));
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let compute = Arc::new(CpuPool::new(
            config.compute_threads(),
            config.compute_queue,
        )?);
        let auth = Auth::new(&config, keys, db.clone()).await?;
        let redis = config
            .redis_url
            .as_ref()
            .map(|url| Redis::connect(url, &config.redis_key_prefix))
            .transpose()
            .context("REDIS_URL cannot be used")?;
        let users = UserStore::new(db.clone())
            .with_cache(user_cache(&config, redis.as_ref()).with_metrics(metrics.clone()));
        let audit = AuditLog::new(db.clone());
        bootstrap_admin(&config, &users, &auth.passwords, &audit).await?;
        let handlers = if config.jobs_in_server {
            Some(job_handlers(&config, &users, &db)?)
        } else {
            None
        };
        let jobs = Jobs::new(&config, db.clone()).with_metrics(metrics.clone());
        let services = Services {
            jobs,
            events: EventHub::new(db.clone(), config.events_buffer),
            tickets: Tickets::new(db.clone(), EVENT_TICKET_TTL),
            users,
            auth,
            audit,
            rate_limits: rate_limits
                .shared_through(redis)
                .with_metrics(metrics.clone()),
            metrics,
            traffic: Arc::default(),
            db,
            compute,
            config: Arc::new(config),
            shutdown: Shutdown::default(),
        };
        let static_files = StaticFiles::start(
            services.config.static_dir.clone(),
            services.shutdown.clone(),
        )
        .await;
        let (router, console) = app(&services, static_files);
        Ok(Self {
            listener,
            router,
            handlers,
            metrics_listener,
            services,
            console,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address `/metrics` is served on, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Which database backend is in use.
    pub fn database_backend(&self) -> &'static str {
        self.services.db.backend()
    }

    /// A handle that starts the shutdown when [`Shutdown::begin`] is called.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.services.shutdown.clone()
    }

    /// Serves until shutdown begins, then lets in-flight requests finish within the
    /// configured bound and closes the pool.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            services: state,
            handlers,
            metrics_listener,
            console,
        } = self;
        // Served until the API has stopped, so that the drain can be watched.
        let metrics_server = metrics_listener.map(|listener| listener.serve());
        let purge = tokio::spawn(purge_expired(state.clone()));
        let sample = tokio::spawn(console.sample(state.shutdown.clone()));
        let poll = Duration::from_millis(state.config.events_poll_ms);
        let hub = tokio::spawn(state.events.clone().run(poll, state.shutdown.clone()));
        let follow = tokio::spawn(
            state
                .users
                .cache()
                .clone()
                .follow_changes(state.events.clone(), state.shutdown.clone()),
        );
        let dispatch = tokio::spawn(webhooks::dispatch(Dispatcher {
            db: state.db.clone(),
            events: state.events.clone(),
            jobs: state.jobs.clone(),
            shutdown: state.shutdown.clone(),
        }));
        let workers = handlers.map(|handlers| {
            let (jobs, config, shutdown) = (
                state.jobs.clone(),
                Arc::clone(&state.config),
                state.shutdown.clone(),
            );
            tokio::spawn(async move { jobs::worker::run(jobs, handlers, &config, shutdown).await })
        });
        let shutdown = state.shutdown.clone();
        let drain = Duration::from_secs(state.config.shutdown_drain_secs);
        let (listener, listener_stop) = StoppableListener::new(listener);
        let stop_accepting = async move {
            shutdown.started().await;
            // Keep serving (with /readyz failing) so a load balancer stops sending first.
            tokio::time::sleep(drain).await;
            // Connections already made are served: what the kernel has queued is accepted
            // before the listener closes, and a new connection's first request is read
            // before idle connections are closed.
            listener_stop.stop(FIRST_REQUEST_PATIENCE).await;
        };
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.get_ref().set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_accepting);
        let grace = state.config.shutdown_timeout() + drain;
        let shutdown = state.shutdown.clone();
        tokio::select! {
            result = server => result.context("server failed")?,
            () = async { shutdown.started().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("in-flight requests did not finish within the shutdown timeout");
            }
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.stop().await;
        }
        purge.abort();
        sample.abort();
        hub.abort();
        follow.abort();
        dispatch.abort();
        if let Some(workers) = workers {
            // They stop taking jobs when shutdown begins and have the same grace as requests.
            if let Err(error) = workers.await {
                tracing::warn!(%error, "the job workers failed");
            }
        }
        state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long spent and revoked refresh tokens are kept after they expire (for the audit of
/// late reuse attempts).
const EXPIRED_SESSIONS_KEPT: chrono::Duration = chrono::Duration::days(7);

/// How long webhook deliveries stay in the delivery log.
const DELIVERIES_KEPT: chrono::Duration = chrono::Duration::days(30);

/// How long succeeded jobs stay listed in `/jobs`.
const SUCCEEDED_JOBS_KEPT: chrono::Duration = chrono::Duration::days(7);

/// Deletes expired idempotency keys, long-expired sessions and e-mail tokens, and old
/// succeeded jobs, periodically.
async fn purge_expired(state: Services) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        interval.tick().await;
        match idempotency::purge_expired(&state.db).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge idempotency keys"),
        }
        let before = chrono::Utc::now() - EXPIRED_SESSIONS_KEPT;
        match state.auth.sessions.purge_expired(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired sessions deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge sessions"),
        }
        let tokens = EmailTokens::new(state.db.clone());
        match tokens.purge_expired(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired e-mail tokens deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge e-mail tokens"),
        }
        match state.tickets.purge_expired(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired event tickets deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge event tickets"),
        }
        let retention = Duration::from_secs(state.config.events_retention_secs);
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(1));
        match state.events.log().purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "events past their retention deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge events"),
        }
        let before = chrono::Utc::now() - DELIVERIES_KEPT;
        match webhooks::WebhookStore::new(state.db.clone())
            .purge(before)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "old webhook deliveries deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge webhook deliveries"),
        }
        let before = chrono::Utc::now() - SUCCEEDED_JOBS_KEPT;
        match state.jobs.store().purge_succeeded(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "old succeeded jobs deleted"),
            Err(error) => tracing::warn!(%error, "cannot purge succeeded jobs"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
