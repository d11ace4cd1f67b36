//! The first admin: from `keel admin create` or from the bootstrap settings at start-up.

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use crate::{
    audit::{Audit, AuditKind, AuditLog},
    auth::{
        Role,
        password::{Password, PasswordHasher},
    },
    config::Config,
    users::{
        domain::{Email, NewUser, User, UserName},
        store::{StoreError, UserStore},
    },
};

/// Why an admin could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAdminError {
    /// An input breaks a rule; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// An account with this e-mail address exists.
    #[error("an account with this e-mail address already exists")]
    Exists,
    /// Anything else.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Creates an admin account from raw inputs, checking them like the API does.
pub async fn create_admin(
    users: &UserStore,
    passwords: &PasswordHasher,
    audit: &AuditLog,
    email: String,
    name: String,
    password: String,
) -> Result<User, CreateAdminError> {
    let invalid =
        |field: &str, detail: String| CreateAdminError::Invalid(format!("{field}: {detail}"));
    let email = Email::parse(email).map_err(|e| invalid("e-mail", e.detail))?;
    let name = UserName::parse(name).map_err(|e| invalid("name", e.detail))?;
    let password = Password::parse(password).map_err(|e| invalid("password", e.detail))?;
    let hash = passwords
        .hash(&password)
        .await
        .context("cannot hash the password")?;
    let new = NewUser {
        email,
        name,
        password: Some(password),
        role: Role::Admin,
        active: true,
    };
    let user = match users.insert(&new, Some(hash)).await {
        Ok(user) => user,
        Err(StoreError::EmailTaken) => return Err(CreateAdminError::Exists),
        Err(error) => return Err(anyhow::Error::from(error).into()),
    };
    audit
        .record(Audit::new(AuditKind::Created, Some(user.id), None).detail("admin"))
        .await;
    Ok(user)
}

/// Creates the configured bootstrap admin unless its e-mail already has an account.
pub async fn bootstrap_admin(
    config: &Config,
    users: &UserStore,
    passwords: &PasswordHasher,
    audit: &AuditLog,
) -> anyhow::Result<()> {
    let Some(email) = &config.bootstrap_admin_email else {
        return Ok(());
    };
    let Some(password) = &config.bootstrap_admin_password else {
        bail!("KEEL_BOOTSTRAP_ADMIN_PASSWORD: must be set with KEEL_BOOTSTRAP_ADMIN_EMAIL");
    };
    // Hashing costs tens of milliseconds: not on every start, only on the first.
    if users
        .credentials(email)
        .await
        .context("bootstrap admin")?
        .is_some()
    {
        return Ok(());
    }
    match create_admin(
        users,
        passwords,
        audit,
        email.clone(),
        config.bootstrap_admin_name.clone(),
        password.expose_secret().to_owned(),
    )
    .await
    {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "bootstrap admin created");
            Ok(())
        }
        Err(CreateAdminError::Exists) => Ok(()),
        Err(CreateAdminError::Invalid(why)) => bail!("bootstrap admin: {why}"),
        Err(CreateAdminError::Failed(error)) => Err(error.context("bootstrap admin")),
    }
}
