//! keel: a production backend service.
//!
//! Features live in their own folders (`users`, `auth`, `audit`, `ratelimit`, `compute`, `health`,
//! `docs`, `idempotency`, `jobs`), each with
//! its routes, domain types and storage; shared plumbing is in `config`, `error`, `http`,
//! `db`, `mail`, `metrics` and `telemetry`. `server` puts them together.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod compute;
pub mod config;
pub mod db;
pub mod docs;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod mail;
pub mod metrics;
pub mod ratelimit;
pub mod redis_conn;
pub mod server;
pub mod telemetry;
pub mod users;
pub mod webhooks;
