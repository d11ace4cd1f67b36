//! API documentation: the OpenAPI 3.1 document generated from the code, and an interactive
//! Swagger UI page whose assets are served by keel itself (no CDN).

use axum::{
    Router,
    body::Bytes,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderValue, header};
use utoipa::{
    OpenApi,
    openapi::{
        self, ContentBuilder, ObjectBuilder, OpenApi as Document, RefOr, Required, ResponseBuilder,
        path::{Operation, ParameterBuilder, ParameterIn},
        schema::{Schema, SchemaType, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    error::{FieldError, InputLocation, PROBLEM_JSON, Problem},
    users::UserPage,
};

/// The policy of the docs page: only keel's own scripts, styles and the document itself;
/// Swagger UI's icons are `data:` images.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The root of the generated document; routes add their paths to it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keel",
        description = "A production backend service. Every error is an RFC 9457 problem \
            document (`application/problem+json`) carrying the request id; validation errors \
            list every failing input with a JSON pointer, a code and a message.",
    ),
    tags(
        (name = "auth", description = "Accounts and sessions: register, log in, refresh, log out, and the keys that verify access tokens"),
        (name = "users", description = "The users resource"),
        (name = "admin", description = "Administration: the audit trail"),
        (name = "compute", description = "CPU-bound work on a bounded thread pool"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "webhooks", description = "Endpoints that receive events as signed POSTs (Standard Webhooks), and their delivery logs"),
    ),
    components(schemas(Problem, FieldError, InputLocation, UserPage))
)]
pub struct ApiDoc;

/// Finishes the generated document: the `bearer` security scheme, header parameters are
/// never `null`, and every operation lists the answers any operation can give (500, 429,
/// 408, and for those with a body 400, 413 and 415) so that every documented operation
/// lists every error it may return.
pub fn complete(document: &mut Document) {
    let components = document.components.get_or_insert_with(Default::default);
    // JSON Schema 2020-12's `dependentRequired`, which utoipa has no attribute for.
    if let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut("UpdateMeRequest") {
        body.extensions.get_or_insert_with(Default::default).insert(
            "dependentRequired".to_owned(),
            serde_json::json!({"email": ["current_password"], "password": ["current_password"]}),
        );
    }
    if let Some(RefOr::T(Schema::Object(pattern))) = components.schemas.get_mut("EventTypePattern")
    {
        pattern.max_length = Some(100);
    }
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from /auth/login, /auth/register or /auth/refresh \
                         (EdDSA JWT; keys at /.well-known/jwks.json)",
                ))
                .build(),
        ),
    );
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("Problem"))))
                    .build(),
            )
            .build()
    };
    for item in document.paths.paths.values_mut() {
        // The idempotency middleware honours the header on every POST.
        if let Some(post) = &mut item.post {
            idempotency_key(post);
            let responses = &mut post.responses.responses;
            responses.entry("409".to_owned()).or_insert_with(|| {
                RefOr::T(problem(
                    "A request with this Idempotency-Key is still being processed",
                ))
            });
            responses.entry("422".to_owned()).or_insert_with(|| {
                RefOr::T(problem(
                    "Invalid input, or an Idempotency-Key reused with another request",
                ))
            });
        }
        let operations: [&mut Option<Operation>; 5] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            non_nullable_headers(operation);
            let has_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::T(problem(description)));
            };
            add("408", "The request took longer than the configured timeout");
            add(
                "429",
                "Too many requests from this client; see Retry-After and RateLimit",
            );
            add(
                "500",
                "Internal error; the body carries the request id to quote",
            );
            if has_body {
                add("400", "The body is not well-formed JSON");
                add("413", "The body is larger than the configured limit");
                add("415", "The body is not sent as application/json");
            }
        }
    }
}

/// Documents `Idempotency-Key` on `operation` unless it already is.
fn idempotency_key(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    if parameters.iter().any(|p| p.name == "Idempotency-Key") {
        return;
    }
    parameters.push(
        ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes retries safe: the same key and request return the first answer \
                 (1–255 visible ASCII characters)",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[\x21-\x7E]{1,255}$")),
            ))
            .build(),
    );
}

/// A header is absent or a string, never `null`; utoipa marks every optional non-query
/// parameter nullable, which would invite clients (and fuzzers) to send the text `null`.
fn non_nullable_headers(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in != ParameterIn::Header {
            continue;
        }
        if let Some(RefOr::T(Schema::Object(object))) = &mut parameter.schema {
            if let SchemaType::Array(types) = &object.schema_type {
                let types: Vec<Type> = types
                    .iter()
                    .filter(|t| **t != Type::Null)
                    .cloned()
                    .collect();
                if let [only] = types.as_slice() {
                    object.schema_type = SchemaType::Type(only.clone());
                }
            }
        }
    }
}

/// Routes serving the document and the docs page.
pub fn router(document: &Document) -> Router {
    let json: Bytes = serde_json::to_vec(document).unwrap_or_default().into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move { asset("application/json", json) }
            }),
        )
        .route(
            "/docs",
            get(|| async { page(include_bytes!("../../assets/docs/index.html")) }),
        )
        .route(
            "/docs/swagger-initializer.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    Bytes::from_static(include_bytes!("../../assets/docs/swagger-initializer.js")),
                )
            }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    Bytes::from_static(include_bytes!(
                        "../../assets/swagger-ui/swagger-ui-bundle.js"
                    )),
                )
            }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async {
                asset(
                    "text/css; charset=utf-8",
                    Bytes::from_static(include_bytes!("../../assets/swagger-ui/swagger-ui.css")),
                )
            }),
        )
        .route(
            "/docs/favicon-32x32.png",
            get(|| async {
                asset(
                    "image/png",
                    Bytes::from_static(include_bytes!("../../assets/swagger-ui/favicon-32x32.png")),
                )
            }),
        )
}

fn page(html: &'static [u8]) -> Response {
    let mut response = asset("text/html; charset=utf-8", Bytes::from_static(html));
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    response
}

fn asset(content_type: &'static str, body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
