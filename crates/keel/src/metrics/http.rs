//! The tower layer that times every request into `http_server_request_duration_seconds`
//! and counts the ones in flight.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::{Method, Request, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Metrics, RequestLabels};

/// The `route` of requests that matched no route: their paths are never labels.
const UNMATCHED: &str = "<unmatched>";

/// The route template of a service mounted with `Router::nest_service`, for which axum
/// records no [`MatchedPath`]: the service marks its responses with it ([`NestedRoute::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedRoute(pub &'static str);

impl NestedRoute {
    /// `response`, marked as answered by this route.
    pub fn mark<B>(self, mut response: http::Response<B>) -> http::Response<B> {
        response.extensions_mut().insert(self);
        response
    }
}

/// Records every request of the wrapped routes in [`Metrics`].
///
/// Applied with `Router::layer`, it runs after routing, so the route template
/// ([`MatchedPath`]) is known. Hand-written rather than `axum::middleware::from_fn`, which
/// boxes a future per request.
#[derive(Debug, Clone)]
pub struct MetricsLayer(Arc<Metrics>);

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self(metrics)
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<Request<B>> for Measured<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|path| path.as_str().to_owned());
        let method = method_label(request.method());
        self.metrics.active_requests.inc();
        MeasuredFuture {
            inner: self.inner.call(request),
            request: InFlight {
                metrics: Arc::clone(&self.metrics),
                method,
                route,
                started: Instant::now(),
            },
        }
    }
}

/// A request being handled: counted in `http_server_active_requests` until dropped.
struct InFlight {
    metrics: Arc<Metrics>,
    method: &'static str,
    /// The matched route's template; `None` for a nested service or no route at all.
    route: Option<String>,
    started: Instant,
}

impl InFlight {
    /// Records the response's status and the time it took.
    fn answered<B>(&mut self, response: &http::Response<B>) {
        let route = self.route.take().unwrap_or_else(|| {
            response
                .extensions()
                .get::<NestedRoute>()
                .map_or(UNMATCHED, |nested| nested.0)
                .to_owned()
        });
        let labels = RequestLabels {
            method: self.method,
            route,
            status_class: status_class(response.status()),
        };
        self.metrics
            .requests
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.active_requests.dec();
    }
}

pin_project! {
    /// The response future of [`Measured`].
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        request: InFlight,
    }
}

impl<F, RB, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.request.answered(response);
        }
        Poll::Ready(result)
    }
}

/// The method as a label: the standard ones by name, any other as `_OTHER` (so that
/// clients cannot invent label values).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "_OTHER",
    }
}

/// `2xx`, `4xx`, ...
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    async fn call(router: &Router, method: Method, path: &str) -> StatusCode {
        router
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn requests_are_labelled_by_route_template_and_status_class() {
        let metrics = Arc::new(Metrics::new());
        let files = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("file")))
        })
        .map_response(|response| NestedRoute("/files/{*path}").mark(response));
        let router = Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .nest_service("/files", files)
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(MetricsLayer::new(Arc::clone(&metrics)));
        for id in ["0193a1b2", "0193c3d4"] {
            assert_eq!(
                call(&router, Method::GET, &format!("/users/{id}")).await,
                200
            );
        }
        assert_eq!(call(&router, Method::GET, "/nowhere/42").await, 404);
        assert_eq!(call(&router, Method::GET, "/files/a/b.css").await, 200);
        let brew = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(call(&router, brew, "/users/x").await, 405);
        let text = metrics.encode();
        for series in [
            r#"_count{method="GET",route="/users/{id}",status_class="2xx"} 2"#,
            r#"_count{method="GET",route="<unmatched>",status_class="4xx"} 1"#,
            r#"_count{method="GET",route="/files/{*path}",status_class="2xx"} 1"#,
            r#"_count{method="_OTHER",route="/users/{id}",status_class="4xx"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        assert!(!text.contains("0193"), "{text}");
        assert!(!text.contains("nowhere"), "{text}");
        assert!(!text.contains("b.css"), "{text}");
        assert_eq!(metrics.active_requests.get(), 0);
    }
}
