//! The tower layer that applies the per-client limits to every request.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, Method, Request};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{error::ApiError, http::security_headers};

use super::{ClientIp, RateLimits};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Routes that take credentials, which the strict limit also applies to (POST only).
const CREDENTIAL_ROUTES: [&str; 7] = [
    "/auth/login",
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
    S: Service<Request<B>, Response = http::Response<RB>>,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LimitedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = ClientIp::peer(request.extensions());
        let client = self.limits.proxies().client(peer, request.headers());
        request.extensions_mut().insert(ClientIp(client));
        let credential_route =
            request.method() == Method::POST && CREDENTIAL_ROUTES.contains(&request.uri().path());
        let verdict = self.limits.check(client, credential_route);
        if let Some(retry_after_secs) = verdict.refused {
            let mut response = ApiError::TooManyRequests {
                detail: "too many requests from this client; slow down",
                retry_after_secs,
                // Both limits' headers are added below.
                limit: None,
            }
            .into_response();
            add(&mut response, verdict.headers);
            return LimitedFuture {
                inner: None,
                refused: Some(security_headers::add(response)),
                headers: None,
            };
        }
        LimitedFuture {
            inner: Some(self.inner.call(request)),
            refused: None,
            headers: verdict.headers,
        }
    }
}

fn add(response: &mut Response, headers: Option<(HeaderValue, HeaderValue)>) {
    if let Some((policy, state)) = headers {
        let map = response.headers_mut();
        map.insert(RATELIMIT_POLICY, policy);
        map.insert(RATELIMIT, state);
    }
}

pin_project! {
    /// The response future of [`Limited`].
    pub struct LimitedFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<Response>,
        headers: Option<(HeaderValue, HeaderValue)>,
    }
}

impl<F, E, RB> Future for LimitedFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(response) = this.refused.take() {
            return Poll::Ready(Ok(response));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => {
                // The problem layer outside takes a plain body anyway; the conversion
                // happens once, here.
                let mut response = ready!(inner.poll(cx))?.map(Body::new);
                add(&mut response, this.headers.take());
                Poll::Ready(Ok(response))
            }
            // Polled again after completion: a bug of the caller; answer something sane.
            None => Poll::Ready(Ok(http::StatusCode::INTERNAL_SERVER_ERROR.into_response())),
        }
    }
}
