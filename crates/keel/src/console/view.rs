//! What every console page shares: the frame around it (title, navigation, the CSRF token
//! its forms carry, a notice after a change) and the answer it goes out as.

use askama::Template;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::assets;

/// The policy of console pages: keel's own scripts and styles only (no inline code), the
/// API and event stream on the same origin, forms posting only to keel, never framed.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// The sections of the navigation, in order: (path, label).
pub const SECTIONS: [(&str, &str); 7] = [
    ("/admin/", "Overview"),
    ("/admin/users", "Users"),
    ("/admin/jobs", "Jobs"),
    ("/admin/webhooks", "Webhooks"),
    ("/admin/audit", "Audit log"),
    ("/admin/events", "Live events"),
    ("/admin/settings", "Settings"),
];

/// The frame of a page.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The page's title (and its `h1`).
    pub title: String,
    /// The navigation entry it belongs to (a path of [`SECTIONS`]), when signed in.
    pub section: Option<&'static str>,
    /// The session's CSRF token, which every form sends back.
    pub csrf: String,
    /// A message about what the previous request did.
    pub notice: Option<&'static str>,
    /// The stylesheet's URL (with its content hash).
    pub css: &'static str,
    /// The script's URL (with its content hash).
    pub js: &'static str,
}

impl Chrome {
    /// A page of `section` for a signed-in admin.
    pub fn signed(title: impl Into<String>, section: &'static str, csrf: &str) -> Self {
        Self {
            title: title.into(),
            section: Some(section),
            csrf: csrf.to_owned(),
            notice: None,
            css: assets::css_url(),
            js: assets::js_url(),
        }
    }

    /// A page outside the navigation (sign-in, errors).
    pub fn bare(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            section: None,
            csrf: String::new(),
            notice: None,
            css: assets::css_url(),
            js: assets::js_url(),
        }
    }

    /// With the notice `code` names (from the `notice` query parameter after a redirect).
    pub fn notice(mut self, code: Option<&str>) -> Self {
        self.notice = code.and_then(notice_text);
        self
    }

    /// The navigation, with whether each entry is the current one.
    pub fn nav(&self) -> Vec<(&'static str, &'static str, bool)> {
        SECTIONS
            .iter()
            .map(|(path, label)| (*path, *label, self.section == Some(*path)))
            .collect()
    }
}

/// The fixed messages a redirect may ask a page to show (never text from the URL).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "created" => "Created.",
        "saved" => "Saved.",
        "deleted" => "Deleted.",
        "logged-out" => "Every session of this user has ended.",
        "reset-sent" => "A password-reset e-mail is on its way (if the account can receive one).",
        "retried" => "The job is queued again.",
        "cancelled" => "The job is cancelled.",
        "replayed" => "The delivery is queued again.",
        "enabled" => "The webhook is enabled.",
        "disabled" => "The webhook is disabled.",
        "signed-out" => "You are signed out.",
        _ => return None,
    })
}

/// Renders `page` as the answer, with the console's security policy; pages show private
/// data, so no cache keeps them. The referrer is sent to keel itself only.
pub fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CONSOLE_CSP),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                // The guard reads where a form came from to return there after signing in.
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("same-origin"),
                ),
            ],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render a console page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A page answered 200.
pub fn ok(page: &impl Template) -> Response {
    html(StatusCode::OK, page)
}
