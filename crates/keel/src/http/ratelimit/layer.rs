//! The tower layer that applies the per-client limits to every request.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, Request};
use tower::{Layer, Service};

use crate::{
    error::{ApiError, RATELIMIT, RATELIMIT_POLICY},
    http::security_headers,
};

use super::{ClientIp, RateLimits};

/// Routes that take credentials, which the strict limit also applies to (POST only).
const CREDENTIAL_ROUTES: [&str; 8] = [
    "/auth/login",
    "/admin/login",
    "/auth/register",
    "/auth/refresh",
    "/auth/verify-email",
    "/auth/verify-email/resend",
    "/auth/forgot-password",
    "/auth/reset-password",
];

/// Applies [`RateLimits`] and records the client address ([`ClientIp`]) for handlers.
#[derive(Debug, Clone)]
pub struct RateLimitLayer(RateLimits);

impl RateLimitLayer {
    /// A layer applying `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self(limits)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: RateLimits,
}

impl<S, B, RB> Service<Request<B>> for Limited<S>
where
    S: Service<Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = ClientIp::peer(request.extensions());
        let client = self.limits.proxies().client(peer, request.headers());
        request.extensions_mut().insert(ClientIp(client));
        let credential_route =
            request.method() == Method::POST && CREDENTIAL_ROUTES.contains(&request.uri().path());
        let limits = self.limits.clone();
        // The service that was made ready goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // With Redis the counts are shared by every instance, hence the await.
            let verdict = limits.check(client, credential_route).await;
            if let Some(retry_after_secs) = verdict.refused {
                let mut response = ApiError::TooManyRequests {
                    detail: "too many requests from this client; slow down",
                    retry_after_secs,
                    // Both limits' headers are added below.
                    limit: None,
                }
                .into_response();
                add(&mut response, verdict.headers);
                return Ok(security_headers::add(response));
            }
            // The problem layer outside takes a plain body anyway; the conversion happens
            // once, here.
            let mut response = inner.call(request).await?.map(Body::new);
            add(&mut response, verdict.headers);
            Ok(response)
        })
    }
}

fn add(response: &mut Response, headers: Option<(HeaderValue, HeaderValue)>) {
    if let Some((policy, state)) = headers {
        let map = response.headers_mut();
        map.insert(RATELIMIT_POLICY, policy);
        map.insert(RATELIMIT, state);
    }
}
