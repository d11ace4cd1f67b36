//! The users resource: domain types, storage and routes.

pub mod domain;
mod routes;
pub mod store;

pub use routes::{UserPage, router};
