//! The users resource: domain types, storage and routes.

pub mod cache;
pub mod domain;
mod routes;
pub mod store;

pub use routes::{UserPage, router};
