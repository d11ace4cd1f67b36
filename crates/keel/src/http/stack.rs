//! The middleware stack, in the order a request meets it.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
};
use http::{HeaderValue, Method, StatusCode, Version, header};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::{
        CompressionLayer, Predicate,
        predicate::{NotForContentType, SizeAbove},
    },
    cors::{AllowOrigin, CorsLayer},
    limit::RequestBodyLimitLayer,
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
};

use crate::{
    config::Config,
    error::ApiError,
    metrics::{Metrics, MetricsLayer, recent::RecentTraffic},
    shutdown::Shutdown,
};

use super::{
    problem::ProblemLayer,
    ratelimit::{RateLimitLayer, RateLimits},
    request_id,
    request_log::RequestLogLayer,
    security_headers,
};

/// Wraps every route of `router` in keel's middleware, outermost first:
/// metrics (when on) → connection closing while draining → request id → request log →
/// problem rendering → rate limits → security headers → CORS → compression → panic
/// catcher → body limit → timeout.
pub fn apply(
    router: Router,
    config: &Config,
    limits: &RateLimits,
    shutdown: &Shutdown,
    metrics: Option<&Arc<Metrics>>,
    traffic: &Arc<RecentTraffic>,
) -> Router {
    // One `Router::layer` call: each call boxes every route once more, and a boxed
    // route is cloned and its future boxed again on every request.
    let stack = ServiceBuilder::new()
        .option_layer(metrics.map(|metrics| MetricsLayer::new(Arc::clone(metrics))))
        .layer(middleware::from_fn_with_state(
            shutdown.clone(),
            close_connections_while_draining,
        ))
        .map_request(request_id::drop_insane)
        .layer(SetRequestIdLayer::new(
            request_id::X_REQUEST_ID,
            request_id::MakeUuidV7,
        ))
        .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
        .layer(RequestLogLayer(Arc::clone(traffic)))
        .layer(ProblemLayer)
        .layer(RateLimitLayer::new(limits.clone()))
        .map_response(security_headers::add)
        .option_layer(cors(config))
        .layer(CompressionLayer::new().compress_when(compressible()))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout(),
        ))
        .layer(DefaultBodyLimit::max(config.body_limit));
    router.layer(stack)
}

/// Once shutdown has begun, answers every HTTP/1 request with `Connection: close`, so that
/// the client (a proxy's pool of keep-alive connections above all) sends its next request on
/// a new connection. Otherwise the connections left idle when the drain ends are closed
/// under a client that may be sending a request on one at that very moment: a request lost
/// that a proxy cannot safely send again if it is not idempotent (nginx answers it 502).
/// A refused new connection, by contrast, is retried on another instance. Upgrades
/// (WebSockets) keep their `Connection: upgrade`; HTTP/2 has its own `GOAWAY`.
async fn close_connections_while_draining(
    State(shutdown): State<Shutdown>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = matches!(request.version(), Version::HTTP_10 | Version::HTTP_11);
    let mut response = next.run(request).await;
    if http1 && shutdown.is_draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A response extension telling the compression layer to send the body as it is: set by a
/// handler whose body is already encoded (or not worth encoding), so no request pays for
/// compressing it again.
#[derive(Debug, Clone, Copy)]
pub struct NoCompression;

/// Bodies shorter than this go out as they are: compressing them saves a few bytes at the
/// price of an encoder set-up per response (brotli's alone costs more than the request).
const MIN_COMPRESSED_SIZE: u16 = 1024;

/// tower-http's default predicate (no gRPC, images or event streams) with a higher size
/// floor, and never for responses marked [`NoCompression`].
fn compressible() -> impl Predicate {
    SizeAbove::new(MIN_COMPRESSED_SIZE)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
        .and(Unmarked)
}

/// Compresses only responses without [`NoCompression`].
#[derive(Debug, Clone, Copy)]
struct Unmarked;

impl Predicate for Unmarked {
    fn should_compress<B>(&self, response: &http::Response<B>) -> bool
    where
        B: http_body::Body,
    {
        response.extensions().get::<NoCompression>().is_none()
    }
}

fn panic_to_problem(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    axum::response::IntoResponse::into_response(ApiError::internal(anyhow::anyhow!(
        "handler panicked: {message}"
    )))
}

fn cors(config: &Config) -> Option<CorsLayer> {
    if config.cors_allowed_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = config
        .cors_allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                http::HeaderName::from_static("idempotency-key"),
                request_id::X_REQUEST_ID,
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::LINK,
                header::RETRY_AFTER,
                crate::error::RATELIMIT,
                crate::error::RATELIMIT_POLICY,
                request_id::X_REQUEST_ID,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::get};
    use http::Request;
    use tower::ServiceExt;

    use super::*;

    fn limits() -> RateLimits {
        RateLimits::from_config(&Config::default()).unwrap()
    }

    async fn call(router: Router, path: &str) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_problem_without_the_cause() {
        async fn boom() -> &'static str {
            panic!("secret detail: SELECT * FROM users")
        }
        let router = Router::new().route("/boom", get(boom));
        let (status, headers, body) = call(
            apply(
                router,
                &Config::default(),
                &limits(),
                &Shutdown::default(),
                None,
                &Arc::default(),
            ),
            "/boom",
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["status"], 500);
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
        assert!(!body.to_string().contains("secret"), "{body}");
        assert!(!body.to_string().contains("SELECT"), "{body}");
    }

    #[tokio::test]
    async fn responses_close_the_connection_once_shutdown_has_begun() {
        let shutdown = Shutdown::default();
        let router = apply(
            Router::new().route("/", get(|| async { "hello" })),
            &Config::default(),
            &limits(),
            &shutdown,
            None,
            &Arc::default(),
        );
        let connection = |router: Router| async move {
            let response = router
                .oneshot(Request::get("/").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.headers().get(header::CONNECTION).cloned()
        };
        assert_eq!(connection(router.clone()).await, None);
        shutdown.begin();
        assert_eq!(connection(router).await.unwrap(), "close");
    }

    #[tokio::test]
    async fn a_slow_handler_is_cut_off_with_a_408_problem() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let config = Config {
            request_timeout_secs: 1,
            ..Config::default()
        };
        let (status, headers, body) = call(
            apply(
                router,
                &config,
                &limits(),
                &Shutdown::default(),
                None,
                &Arc::default(),
            ),
            "/slow",
        )
        .await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["title"], "Request Timeout");
    }
}
