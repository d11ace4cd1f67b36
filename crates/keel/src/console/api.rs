//! keel's own API, called in process: every change the console makes, and most of what it
//! shows, goes through the same routes, extractors and domain code as a client's request,
//! with the signed-in admin's access token. No rule is written twice, and the console can
//! do nothing the admin's token could not.

use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::{error::Problem, http::ratelimit::ClientIp};

use super::error::ConsoleError;

/// The largest API answer the console reads (a page of a hundred items is far smaller).
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// The API routes with their state and the idempotency layer, without the outer middleware
/// (the console's own request already passed it: rate limits, request id, timeout).
#[derive(Clone)]
pub struct Api(Router);

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

/// Who a call is made for: the admin's access token, and what the API needs to know of the
/// console's own request (the client's address for rate limits and the audit trail, the
/// request id for the log).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The access token, when signed in.
    pub token: Option<String>,
    /// The browser's address.
    pub ip: ClientIp,
    /// The console request's id, carried into the API call's log lines.
    pub request_id: Option<HeaderValue>,
}

/// An API answer.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body (empty for an error: the problem is in `problem`).
    pub body: Bytes,
    /// The problem of an error answer, as the API would have rendered it.
    pub problem: Option<Problem>,
}

impl Reply {
    /// Whether the call succeeded (2xx).
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The JSON body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConsoleError> {
        serde_json::from_slice(&self.body).map_err(|e| ConsoleError::Internal(e.into()))
    }

    /// The JSON body of a success as `T`, or the problem as an error.
    pub fn into_json<T: DeserializeOwned>(self) -> Result<T, ConsoleError> {
        if self.ok() {
            self.json()
        } else {
            Err(self.into_error())
        }
    }

    /// The problem of a failed call (a bare status's, when the API gave none).
    pub fn into_problem(self) -> Problem {
        self.problem
            .unwrap_or_else(|| Problem::from_status(self.status))
    }

    /// The answer as a console error (for a failed call).
    pub fn into_error(self) -> ConsoleError {
        ConsoleError::Api(Box::new(self.into_problem()))
    }

    /// The `ETag` header, when there is one.
    pub fn etag(&self) -> Option<String> {
        self.headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Api {
    /// Calls into `router`.
    pub fn new(router: Router) -> Self {
        Self(router)
    }

    /// `GET path` (with its query string).
    pub async fn get(&self, caller: &Caller, path: &str) -> Result<Reply, ConsoleError> {
        self.call(caller, Method::GET, path, None, &[]).await
    }

    /// `method path` without a body, which must succeed: a failure is the page's error.
    pub async fn act(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
    ) -> Result<Reply, ConsoleError> {
        self.call_ok(caller, method, path, None, &[]).await
    }

    /// [`Api::call`], which must succeed: a failure is the page's error.
    pub async fn call_ok(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, ConsoleError> {
        let reply = self.call(caller, method, path, body, headers).await?;
        if reply.ok() {
            Ok(reply)
        } else {
            Err(reply.into_error())
        }
    }

    /// `method path` with a JSON body and extra headers.
    pub async fn call(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, ConsoleError> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = &caller.token {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|e| ConsoleError::Internal(e.into()))?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        if let Some(id) = &caller.request_id {
            builder = builder.header(crate::http::request_id::X_REQUEST_ID, id.clone());
        }
        for (name, value) in headers {
            builder = builder.header(name, value.clone());
        }
        let body = match body {
            Some(json) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(json).map_err(|e| ConsoleError::Internal(e.into()))?)
            }
            None => Body::empty(),
        };
        let mut request = builder
            .body(body)
            .map_err(|e| ConsoleError::Internal(e.into()))?;
        request.extensions_mut().insert(caller.ip);
        let response = match self.0.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (mut parts, body) = response.into_parts();
        let problem = parts.extensions.remove::<Problem>();
        let body = axum::body::to_bytes(body, MAX_REPLY)
            .await
            .map_err(|e| ConsoleError::Internal(anyhow::anyhow!("reading an API answer: {e}")))?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            problem,
        })
    }
}
