//! HTTP plumbing shared by every feature: the middleware stack, extractors that turn bad
//! input into problem details, and conditional-request helpers.

pub mod conditional;
pub mod extract;
pub mod pagination;
pub mod problem;
pub mod request_id;
pub mod security_headers;
mod stack;

pub use stack::apply;
