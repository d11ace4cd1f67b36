//! The console's error type, rendered as a page for a person rather than a problem
//! document for a program.

use askama::Template;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::error::Problem;

use super::view::{Chrome, html};

/// Why a console page cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// An API call failed; its problem says why.
    #[error("{}", .0.title)]
    Api(Box<Problem>),
    /// Refused (a form from another site, a stale CSRF token).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Something broke inside keel; logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The page of an error.
#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    detail: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            Self::Api(problem) => (
                problem.status_code(),
                problem.title.to_owned(),
                problem.detail.clone().unwrap_or_default(),
            ),
            Self::Forbidden(detail) => (
                StatusCode::FORBIDDEN,
                "Forbidden".to_owned(),
                detail.to_owned(),
            ),
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong".to_owned(),
                    "keel could not show this page; the error is in its log, with this \
                     request's id (the x-request-id header)"
                        .to_owned(),
                )
            }
        };
        let page = ErrorPage {
            chrome: Chrome::bare(&title),
            status: status.as_u16(),
            detail,
        };
        html(status, &page)
    }
}
