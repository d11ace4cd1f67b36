//! Live events: a page that tails the event stream as it happens. Its script asks this
//! module for a single-use ticket (`POST /events/ticket` for the signed-in admin) and opens
//! the API's own WebSocket with it, so the console needs no stream of its own.

use askama::Template;
use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, header};

use super::{
    ConsoleState,
    error::ConsoleError,
    session::Signed,
    view::{Chrome, ok},
};

#[derive(Template)]
#[template(path = "console/events.html")]
struct Page {
    chrome: Chrome,
}

/// `GET /admin/events`.
pub async fn page(signed: Signed) -> Response {
    ok(&Page {
        chrome: Chrome::signed("Live events", "/admin/events", &signed.session.csrf),
    })
}

/// `POST /admin/events/ticket` (from the page's script, with the CSRF header): a ticket
/// for the event stream, as `{"ticket": ..., "expires_in": ...}`.
pub async fn ticket(
    State(state): State<ConsoleState>,
    signed: Signed,
) -> Result<Response, ConsoleError> {
    let reply = state
        .api
        .act(&signed.caller, Method::POST, "/events/ticket")
        .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        reply.body,
    )
        .into_response())
}
