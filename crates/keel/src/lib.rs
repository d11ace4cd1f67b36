//! keel: a production backend service.
//!
//! The modules form layers, each importing only those below it (`ARCHITECTURE.md` has the
//! map, and `tests/architecture.rs` enforces it):
//!
//! - settings: `config`;
//! - plumbing: `shutdown`, `telemetry`, `metrics`, `db`, `redis_conn`, `mail`;
//! - the HTTP toolkit: `error`, `http` (middleware, extractors, rate limits, static files);
//! - features, each with its routes, domain types, storage and state: `compute`, `auth`,
//!   `audit`, `jobs`, `events`, `idempotency`, `log_filter`, `users`, `health`, `webhooks`,
//!   `accounts`, `docs`, `console`;
//! - composition: `server` (the application) and `cli` (the command line), the only
//!   modules that know every feature.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod compute;
pub mod config;
pub mod console;
pub mod db;
pub mod docs;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod log_filter;
pub mod mail;
pub mod metrics;
pub mod redis_conn;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod users;
pub mod webhooks;
