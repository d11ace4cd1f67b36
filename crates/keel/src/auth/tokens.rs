//! Access tokens: EdDSA-signed JWTs, verified once and then remembered until they expire.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header, encode};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::keys::KeyRing;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, on every account.
    Admin,
    /// Reads and changes its own record only.
    User,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// Reads a stored or serialized name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// The claims of a keel access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Token id.
    pub jti: Uuid,
    /// The session (refresh-token family) the token was issued in.
    pub sid: Uuid,
    /// The user's role when the token was issued.
    pub role: Role,
}

/// Who made a request, as proven by a valid access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The user id.
    pub user_id: Uuid,
    /// The role.
    pub role: Role,
    /// The session the token belongs to.
    pub session: Uuid,
    /// Expiry, seconds since the epoch.
    expires: i64,
}

impl Principal {
    /// A principal proven by other means than a token (an event-stream ticket), valid until
    /// `expires` (seconds since the epoch).
    pub(crate) fn new(user_id: Uuid, role: Role, session: Uuid, expires: i64) -> Self {
        Self {
            user_id,
            role,
            session,
            expires,
        }
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// When the proof expires, in seconds since the epoch.
    pub fn expires_at(&self) -> i64 {
        self.expires
    }
}

/// Why a token was refused (the client only learns that it was).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Malformed, badly signed, expired, or for another issuer or audience.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// Signed by a key keel does not know (or without a key id).
    #[error("unknown signing key")]
    UnknownKey,
    /// The session was revoked (logout, password change, refresh-token reuse).
    #[error("the session was revoked")]
    Revoked,
}

/// Tokens verified recently, by their text: verifying a signature costs ~50 µs, a lookup
/// well under one. Entries outlive no token: each is checked against its expiry.
const VERIFIED_CAPACITY: u64 = 100_000;

/// Issues and verifies access tokens.
pub struct Tokens {
    keys: KeyRing,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
    verified: Cache<Arc<str>, Principal>,
    /// Sessions revoked within the last access-token lifetime: their tokens are refused
    /// although their signature is valid.
    revoked: Cache<Uuid, ()>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `keys`, for `issuer` and `audience`, living `ttl`.
    pub fn new(keys: KeyRing, issuer: &str, audience: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // keel checks its own tokens on its own clock.
        validation.leeway = 0;
        Self {
            keys,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
            verified: Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(ttl)
                .build(),
            revoked: Cache::builder().time_to_live(ttl).build(),
        }
    }

    /// The keys, for the JWKS.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Lifetime of an access token.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed access token for `user` in `session`.
    pub fn issue(&self, user: Uuid, role: Role, session: Uuid) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: Uuid::now_v7(),
            sid: session,
            role,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.kid().to_owned());
        Ok(encode(&header, &claims, self.keys.signing())?)
    }

    /// The principal of a valid, unrevoked token.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let principal = match self.verified.get(token) {
            Some(principal) if principal.expires > now => principal,
            _ => {
                let principal = self.verify_signature(token)?;
                self.verified.insert(Arc::from(token), principal);
                principal
            }
        };
        if self.is_revoked(principal.session) {
            return Err(TokenError::Revoked);
        }
        Ok(principal)
    }

    fn verify_signature(&self, token: &str) -> Result<Principal, TokenError> {
        let header = decode_header(token)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.verifying(kid))
            .ok_or(TokenError::UnknownKey)?;
        let claims = decode::<Claims>(token, key, &self.validation)?.claims;
        Ok(Principal {
            user_id: claims.sub,
            role: claims.role,
            session: claims.sid,
            expires: claims.exp,
        })
    }

    /// Whether `session` was revoked within the last access-token lifetime.
    pub fn is_revoked(&self, session: Uuid) -> bool {
        self.revoked.contains_key(&session)
    }

    /// Refuses the tokens of `sessions` from now on.
    pub fn revoke(&self, sessions: impl IntoIterator<Item = Uuid>) {
        for session in sessions {
            self.revoked.insert(session, ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tokens(ttl: u64) -> (Tokens, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let keys = KeyRing::load(&config).unwrap();
        (
            Tokens::new(keys, "keel", "keel-api", Duration::from_secs(ttl)),
            dir,
        )
    }

    #[test]
    fn issued_tokens_verify_until_revoked() {
        let (tokens, _dir) = tokens(900);
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = tokens.issue(user, Role::Admin, session).unwrap();
        let principal = tokens.verify(&token).unwrap();
        assert_eq!((principal.user_id, principal.role), (user, Role::Admin));
        // Again, from the cache.
        assert_eq!(tokens.verify(&token).unwrap(), principal);
        tokens.revoke([session]);
        assert!(matches!(tokens.verify(&token), Err(TokenError::Revoked)));
    }

    #[test]
    fn another_keys_token_is_refused() {
        let (mine, _a) = tokens(900);
        let (theirs, _b) = tokens(900);
        let token = theirs
            .issue(Uuid::now_v7(), Role::User, Uuid::now_v7())
            .unwrap();
        assert!(matches!(mine.verify(&token), Err(TokenError::UnknownKey)));
    }

    #[test]
    fn other_audiences_and_issuers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let ttl = Duration::from_secs(900);
        let ours = Tokens::new(KeyRing::load(&config).unwrap(), "keel", "keel-api", ttl);
        let other_aud = Tokens::new(KeyRing::load(&config).unwrap(), "keel", "billing", ttl);
        let other_iss = Tokens::new(KeyRing::load(&config).unwrap(), "evil", "keel-api", ttl);
        for issuer in [other_aud, other_iss] {
            let token = issuer
                .issue(Uuid::now_v7(), Role::User, Uuid::now_v7())
                .unwrap();
            assert!(matches!(ours.verify(&token), Err(TokenError::Invalid(_))));
        }
    }
}
