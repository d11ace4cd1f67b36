//! The admin console: server-rendered pages at `/admin/` for the people who run keel and
//! will not write curl commands. Sign in with an admin account; find, create, edit and
//! delete users; watch and retry jobs; manage webhooks and replay deliveries; read the
//! audit trail; tail the live events; change the log filter.
//!
//! The console is a client of keel's own API, called in process ([`api::Api`]) with the
//! signed-in admin's token: every change goes through the same extractors, validation,
//! audit and domain code as a request from any other client, and the API's problem
//! documents come back as messages beside the fields they concern. Only the overview
//! reads a few counts straight from the features' public types. Pages are askama
//! templates (`templates/console/`); one stylesheet and one small script, embedded and
//! served under content-hashed names, are all the browser loads, so the strict
//! Content-Security-Policy holds (no inline script or style).

mod api;
mod assets;
mod audit;
mod error;
mod events;
mod form;
mod jobs;
mod login;
mod overview;
mod session;
mod settings;
mod users;
mod view;
mod webhooks;

use std::{sync::Arc, time::Duration};

use axum::{
    Router, middleware,
    response::Redirect,
    routing::{get, post},
};

use crate::{auth::Auth, config::Config, shutdown::Shutdown};

pub use api::Api;
pub use overview::Sources;

/// What the console's pages reach.
#[derive(Clone)]
pub struct ConsoleState {
    api: Api,
    auth: Arc<Auth>,
    cookies: session::CookiePolicy,
    renewals: session::Renewals,
    overview: Arc<overview::Overview>,
}

impl ConsoleState {
    /// The console over `api` (the API routes with their state), signing in with `auth`,
    /// its overview drawn from `sources`.
    pub fn new(api: Api, auth: Arc<Auth>, config: &Config, sources: Sources) -> Self {
        Self {
            api,
            auth,
            cookies: session::CookiePolicy {
                secure: config.environment != crate::config::Environment::Development,
                max_age: Duration::from_secs(config.refresh_token_ttl_secs),
            },
            renewals: session::Renewals::default(),
            overview: Arc::new(overview::Overview::new(sources)),
        }
    }

    /// Samples the queue and the live connections for the overview's charts until
    /// shutdown.
    pub async fn sample(self, shutdown: Shutdown) {
        self.overview.sample(shutdown).await;
    }
}

/// The console's routes: the sign-in page and the assets are public, every other page sits
/// behind [`session::guard`].
pub fn router(state: ConsoleState) -> Router {
    let guarded = Router::new()
        .route("/admin/", get(overview::page))
        .route("/admin/logout", post(login::sign_out))
        .route("/admin/users", get(users::list).post(users::create))
        .route("/admin/users/new", get(users::new_form))
        .route("/admin/users/{id}", get(users::show).post(users::save))
        .route(
            "/admin/users/{id}/delete",
            get(users::confirm_delete).post(users::delete),
        )
        .route("/admin/users/{id}/logout", post(users::force_logout))
        .route("/admin/users/{id}/password-reset", post(users::send_reset))
        .route("/admin/jobs", get(jobs::list))
        .route("/admin/jobs/{id}", get(jobs::show))
        .route("/admin/jobs/{id}/retry", post(jobs::retry))
        .route("/admin/jobs/{id}/cancel", post(jobs::cancel))
        .route(
            "/admin/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/admin/webhooks/new", get(webhooks::new_form))
        .route(
            "/admin/webhooks/{id}",
            get(webhooks::show).post(webhooks::switch),
        )
        .route("/admin/webhooks/{id}/rotate", post(webhooks::rotate))
        .route(
            "/admin/webhooks/{id}/delete",
            get(webhooks::confirm_delete).post(webhooks::delete),
        )
        .route(
            "/admin/webhooks/{id}/deliveries/{delivery_id}",
            get(webhooks::delivery),
        )
        .route(
            "/admin/webhooks/{id}/deliveries/{delivery_id}/replay",
            post(webhooks::replay),
        )
        .route("/admin/audit", get(audit::page))
        .route("/admin/events", get(events::page))
        .route("/admin/events/ticket", post(events::ticket))
        .route("/admin/settings", get(settings::page).post(settings::save))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            session::guard,
        ));
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/login", get(login::page).post(login::sign_in))
        .route("/admin/assets/{file}", get(assets::serve))
        .merge(guarded)
        .with_state(state)
}
