//! The e-mail flows of an account: the welcome message, address verification and
//! password reset. Requests enqueue jobs; the jobs' handlers (here too) issue the tokens
//! and send the messages, so a slow or failing mail server never slows a request.

use std::{sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    audit::{Audit, AuditKind},
    auth::{Auth, Principal, password::Password},
    config::Config,
    db::Db,
    error::{ApiError, FieldError, Problem},
    http::{
        extract::{FromJson, Invalid, ObjectReader, ValidJson, string},
        ratelimit::ClientIp,
    },
    jobs::{Handlers, JobContext, NewJob},
    mail::{Email, Mailer},
    users::{domain::User, store::UserStore},
};

use super::{
    AccountsState,
    email_tokens::{EmailTokens, Purpose},
};

/// Job kind: the welcome message to a new account.
pub const WELCOME: &str = "email.welcome";
/// Job kind: a verification link to the account's address (which the users feature queues
/// too, when an address changes).
pub const VERIFY: &str = crate::users::VERIFY_ADDRESS_JOB;
/// Job kind: a password-reset link to an address, if an account has it.
pub const PASSWORD_RESET: &str = "email.password_reset";

/// The e-mail routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AccountsState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
}

/// The jobs a new registration enqueues, in its own transaction.
pub fn registration_jobs(user: Uuid) -> [NewJob; 2] {
    [
        NewJob::new(WELCOME, json!({ "user_id": user })),
        NewJob::new(VERIFY, json!({ "user_id": user })),
    ]
}

const INVALID_TOKEN: &str = "the token is invalid, expired or already used; ask for a new one";

fn invalid_token() -> ApiError {
    ApiError::Http {
        status: StatusCode::BAD_REQUEST,
        detail: INVALID_TOKEN.to_owned(),
    }
}

/// Longest token accepted (keel's are 43 characters).
const MAX_TOKEN_CHARS: usize = 256;

fn token(value: Value) -> Result<String, Invalid> {
    string(value).and_then(|token| {
        if token.is_empty() || token.chars().count() > MAX_TOKEN_CHARS {
            Err(Invalid::new(
                "length",
                format!("must be 1–{MAX_TOKEN_CHARS} characters"),
            ))
        } else {
            Ok(token)
        }
    })
}

/// `POST /auth/verify-email` body.
#[derive(Debug, ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The token of the verification e-mail's link.
    #[schema(min_length = 1, max_length = 256)]
    token: String,
}

impl FromJson for VerifyEmailRequest {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["token"])?;
        let token = reader.required("token", token);
        reader.finish()?;
        token.map(|token| Self { token }).ok_or_else(Vec::new)
    }
}

/// `POST /auth/forgot-password` body.
#[derive(Debug, ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com"}))]
pub struct ForgotPasswordRequest {
    /// The account's address (any case).
    #[schema(max_length = 254)]
    email: String,
}

impl FromJson for ForgotPasswordRequest {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["email"])?;
        // Any string may be an address someone typed; an unknown one is answered the same.
        let email = reader.required("email", |value| {
            string(value).and_then(|email| {
                if email.chars().count() > crate::users::domain::EMAIL_MAX_CHARS {
                    Err(Invalid::new("too_long", "must be at most 254 characters"))
                } else {
                    Ok(email)
                }
            })
        });
        reader.finish()?;
        email.map(|email| Self { email }).ok_or_else(Vec::new)
    }
}

/// `POST /auth/reset-password` body, as documented.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; requests are parsed into `ResetPassword`.
pub struct ResetPasswordRequest {
    /// The token of the reset e-mail's link.
    #[schema(min_length = 1, max_length = 256)]
    token: String,
    /// The new password: 12–128 characters.
    #[schema(format = "password", min_length = 12, max_length = 128)]
    password: String,
}

/// A validated `POST /auth/reset-password` body.
#[derive(Debug)]
struct ResetPassword {
    token: String,
    password: Password,
}

impl FromJson for ResetPassword {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["token", "password"])?;
        let token = reader.required("token", token);
        let password = reader.required("password", |value| string(value).and_then(Password::parse));
        reader.finish()?;
        match (token, password) {
            (Some(token), Some(password)) => Ok(Self { token, password }),
            _ => Err(Vec::new()),
        }
    }
}

/// An accepted request whose effect happens in the background.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// What happens next.
    pub detail: &'static str,
}

/// Verify an e-mail address with the token e-mailed to it.
///
/// The token works once. Answers the account, with `email_verified_at` set.
#[utoipa::path(
    post,
    path = "/auth/verify-email",
    tag = "auth",
    request_body(content = VerifyEmailRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The address is verified", body = User),
        (status = 400, description = "The token is invalid, expired or already used", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn verify_email(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    ValidJson(request): ValidJson<VerifyEmailRequest>,
) -> Result<Json<User>, ApiError> {
    let tokens = EmailTokens::new(state.db.clone());
    let mut tx = state.db.begin().await?;
    let holder = tokens
        .consume(&mut tx, &request.token, Purpose::VerifyEmail)
        .await?
        .ok_or_else(invalid_token)?;
    // A token sent to an address the account no longer has verifies nothing.
    let user = state
        .users
        .mark_verified_in(&mut tx, holder.user_id, &holder.email)
        .await?
        .ok_or_else(invalid_token)?;
    tx.commit().await?;
    state.users.written(&user).await;
    state
        .audit
        .record(
            Audit::new(AuditKind::EmailVerified, Some(user.id), Some(ip))
                .detail(user.email.clone()),
        )
        .await;
    Ok(Json(user))
}

/// Send the verification e-mail again, to the caller's current address.
#[utoipa::path(
    post,
    path = "/auth/verify-email/resend",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A verification e-mail will be sent (none when the address is verified already)", body = Accepted),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn resend_verification(
    State(state): State<AccountsState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    accepted(
        &state,
        NewJob::new(VERIFY, json!({ "user_id": principal.user_id })),
        "unless the address is verified already, a verification e-mail is on its way",
    )
    .await
}

/// Queues the e-mail `job` and answers 202 with `detail`.
async fn accepted(
    state: &AccountsState,
    job: NewJob,
    detail: &'static str,
) -> Result<Response, ApiError> {
    state.jobs.enqueue(job).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { detail })).into_response())
}

/// Ask for a password-reset e-mail.
///
/// Always answers 202, whether or not an account has the address, so that the answer
/// reveals nothing; when one does (and it is not deactivated), a single-use link is
/// e-mailed to it.
#[utoipa::path(
    post,
    path = "/auth/forgot-password",
    tag = "auth",
    request_body(content = ForgotPasswordRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "If an account has this address, a reset e-mail is on its way", body = Accepted),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn forgot_password(
    State(state): State<AccountsState>,
    ValidJson(request): ValidJson<ForgotPasswordRequest>,
) -> Result<Response, ApiError> {
    // The job looks the address up, so that this answer takes the same time either way.
    accepted(
        &state,
        NewJob::new(PASSWORD_RESET, json!({ "email": request.email })),
        "if an account has this address, an e-mail with a reset link is on its way",
    )
    .await
}

/// Choose a new password with the token of a reset e-mail.
///
/// The token works once. Every session of the account ends (its refresh tokens stop
/// working, and so do its access tokens).
#[utoipa::path(
    post,
    path = "/auth/reset-password",
    tag = "auth",
    request_body(content = ResetPasswordRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "The password is changed; every session ended"),
        (status = 400, description = "The token is invalid, expired or already used", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many password hashes running", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reset_password(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    ValidJson(request): ValidJson<ResetPassword>,
) -> Result<StatusCode, ApiError> {
    let tokens = EmailTokens::new(state.db.clone());
    // Checked before the costly hash; spent below, where a concurrent use loses.
    if tokens
        .peek(&request.token, Purpose::ResetPassword)
        .await?
        .is_none()
    {
        return Err(invalid_token());
    }
    let hash = state.auth.passwords.hash(&request.password).await?;
    let mut tx = state.db.begin().await?;
    let holder = tokens
        .consume(&mut tx, &request.token, Purpose::ResetPassword)
        .await?
        .ok_or_else(invalid_token)?;
    let user = state
        .users
        .set_password_in(&mut tx, holder.user_id, hash)
        .await?
        .ok_or_else(invalid_token)?;
    tokens
        .spend_all(&mut tx, user.id, Purpose::ResetPassword)
        .await?;
    tx.commit().await?;
    state.users.written(&user).await;
    let families = state.auth.sessions.revoke_user(user.id, None).await?;
    state.auth.tokens.revoke(families);
    state
        .audit
        .record(Audit::new(
            AuditKind::PasswordReset,
            Some(user.id),
            Some(ip),
        ))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// What the e-mail jobs need.
struct Deps {
    users: UserStore,
    tokens: EmailTokens,
    mailer: Mailer,
    public_url: String,
    site: String,
    verify_ttl: Duration,
    reset_ttl: Duration,
}

/// Adds the handlers of the e-mail jobs to `handlers`.
pub fn register_handlers(
    handlers: &mut Handlers,
    config: &Config,
    users: UserStore,
    db: &Db,
) -> anyhow::Result<()> {
    let public_url = config.public_url.trim_end_matches('/').to_owned();
    let site = url::Url::parse(&public_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_else(|| "keel".to_owned());
    let deps = Arc::new(Deps {
        users,
        tokens: EmailTokens::new(db.clone()),
        mailer: Mailer::from_config(config)?,
        public_url,
        site,
        verify_ttl: Duration::from_secs(config.verify_email_ttl_secs),
        reset_ttl: Duration::from_secs(config.password_reset_ttl_secs),
    });
    let welcome = Arc::clone(&deps);
    handlers.register(WELCOME, move |job| {
        let deps = Arc::clone(&welcome);
        async move { deps.welcome(job).await }
    });
    let verify = Arc::clone(&deps);
    handlers.register(VERIFY, move |job| {
        let deps = Arc::clone(&verify);
        async move { deps.verify(job).await }
    });
    handlers.register(PASSWORD_RESET, move |job| {
        let deps = Arc::clone(&deps);
        async move { deps.reset(job).await }
    });
    Ok(())
}

#[derive(Deserialize)]
struct ForUser {
    user_id: Uuid,
}

#[derive(Deserialize)]
struct ForAddress {
    email: String,
}

#[derive(Template)]
#[template(path = "email/welcome.txt")]
struct WelcomeText<'a> {
    name: &'a str,
    email: &'a str,
    site: &'a str,
}

#[derive(Template)]
#[template(path = "email/welcome.html")]
struct WelcomeHtml<'a> {
    name: &'a str,
    email: &'a str,
    site: &'a str,
}

/// The fields of the link e-mails (verification, reset).
#[derive(Template)]
#[template(path = "email/verify.txt")]
struct VerifyText<'a> {
    name: &'a str,
    email: &'a str,
    link: &'a str,
    expires: &'a str,
}

#[derive(Template)]
#[template(path = "email/verify.html")]
struct VerifyHtml<'a> {
    name: &'a str,
    email: &'a str,
    link: &'a str,
    expires: &'a str,
    site: &'a str,
}

#[derive(Template)]
#[template(path = "email/reset.txt")]
struct ResetText<'a> {
    name: &'a str,
    email: &'a str,
    link: &'a str,
    expires: &'a str,
}

#[derive(Template)]
#[template(path = "email/reset.html")]
struct ResetHtml<'a> {
    name: &'a str,
    email: &'a str,
    link: &'a str,
    expires: &'a str,
    site: &'a str,
}

fn payload<T: serde::de::DeserializeOwned>(job: &JobContext) -> anyhow::Result<T> {
    serde_json::from_value(job.payload.clone())
        .map_err(|e| anyhow::anyhow!("malformed {} payload: {e}", job.kind))
}

impl Deps {
    /// The account of a job's `user_id`; `None` when it was deleted since (nothing to send).
    async fn user(&self, job: &JobContext) -> anyhow::Result<Option<User>> {
        let ForUser { user_id } = payload(job)?;
        let user = self.users.get(user_id).await?;
        if user.is_none() {
            tracing::info!(%user_id, kind = %job.kind, "the account is gone; nothing to send");
        }
        Ok(user)
    }

    /// A new token of `purpose` for `user`, as a link to `<public_url>/<page>`, and when it
    /// expires.
    async fn link(
        &self,
        user: &User,
        purpose: Purpose,
        page: &str,
    ) -> anyhow::Result<(String, String)> {
        let ttl = match purpose {
            Purpose::VerifyEmail => self.verify_ttl,
            Purpose::ResetPassword => self.reset_ttl,
        };
        let (token, expires) = self
            .tokens
            .issue(user.id, purpose, &user.email, ttl)
            .await?;
        Ok((
            format!("{}/{page}?token={token}", self.public_url),
            expires.format("%Y-%m-%d %H:%M UTC").to_string(),
        ))
    }

    async fn welcome(&self, job: JobContext) -> anyhow::Result<()> {
        let Some(user) = self.user(&job).await? else {
            return Ok(());
        };
        let fields = (user.name.as_str(), user.email.as_str(), self.site.as_str());
        let email = Email::render(
            user.email.parse()?,
            format!("Welcome to {}", self.site),
            &WelcomeText {
                name: fields.0,
                email: fields.1,
                site: fields.2,
            },
            &WelcomeHtml {
                name: fields.0,
                email: fields.1,
                site: fields.2,
            },
        )?;
        self.mailer.send(&job.id.to_string(), email).await
    }

    async fn verify(&self, job: JobContext) -> anyhow::Result<()> {
        let Some(user) = self.user(&job).await? else {
            return Ok(());
        };
        if user.email_verified_at.is_some() {
            tracing::info!(user_id = %user.id, "the address is verified already; nothing to send");
            return Ok(());
        }
        let (link, expires) = self
            .link(&user, Purpose::VerifyEmail, "verify-email")
            .await?;
        let email = Email::render(
            user.email.parse()?,
            "Confirm your e-mail address",
            &VerifyText {
                name: &user.name,
                email: &user.email,
                link: &link,
                expires: &expires,
            },
            &VerifyHtml {
                name: &user.name,
                email: &user.email,
                link: &link,
                expires: &expires,
                site: &self.site,
            },
        )?;
        self.mailer.send(&job.id.to_string(), email).await
    }

    async fn reset(&self, job: JobContext) -> anyhow::Result<()> {
        let ForAddress { email } = payload(&job)?;
        let Some((user, _)) = self.users.credentials(&email).await? else {
            tracing::info!("no account has the address; no reset e-mail sent");
            return Ok(());
        };
        if !user.active {
            tracing::info!(user_id = %user.id, "the account is deactivated; no reset e-mail sent");
            return Ok(());
        }
        let (link, expires) = self
            .link(&user, Purpose::ResetPassword, "reset-password")
            .await?;
        let email = Email::render(
            user.email.parse()?,
            "Reset your password",
            &ResetText {
                name: &user.name,
                email: &user.email,
                link: &link,
                expires: &expires,
            },
            &ResetHtml {
                name: &user.name,
                email: &user.email,
                link: &link,
                expires: &expires,
                site: &self.site,
            },
        )?;
        self.mailer.send(&job.id.to_string(), email).await
    }
}
