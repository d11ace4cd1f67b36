//! HTTP plumbing shared by every feature: the middleware stack, extractors that turn bad
//! input into problem details, conditional-request helpers, and the `/static` file service.

pub mod conditional;
mod db_error;
pub mod extract;
pub mod listener;
pub mod pagination;
pub mod problem;
pub mod ratelimit;
pub mod request_id;
mod request_log;
pub mod security_headers;
mod stack;
pub mod static_files;
mod strict_json;

pub use stack::{NoCompression, apply};
