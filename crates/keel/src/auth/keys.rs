//! The Ed25519 keys that sign and verify access tokens, and their public JWKS.
//!
//! The current key signs; keys of earlier rotations only verify, so that rotating the key
//! logs nobody out. Each key's id (`kid`) is its RFC 7638 JWK thumbprint, so the same key
//! has the same id on every instance without any setting.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, spki::der::pem::LineEnding},
};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, Environment};

/// Where the development key is kept, under `data_dir`.
const DEV_KEY_FILE: &str = "jwt-ed25519.pem";

/// One public key as published in the JWKS (RFC 8037 `OKP` key).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Jwk {
    /// Key type: `OKP`.
    pub kty: &'static str,
    /// Curve: `Ed25519`.
    pub crv: &'static str,
    /// The public key, base64url.
    pub x: String,
    /// The key id, as in the tokens' `kid` header.
    pub kid: String,
    /// Algorithm: `EdDSA`.
    pub alg: &'static str,
    /// Use: `sig`.
    #[serde(rename = "use")]
    pub usage: &'static str,
}

/// A JSON Web Key Set (RFC 7517).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Jwks {
    /// Every key that may have signed a token keel still accepts, current first.
    pub keys: Vec<Jwk>,
}

/// The signing key and every key accepted for verification.
pub struct KeyRing {
    kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: Jwks,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.kid)
            .field("accepted", &self.verifying.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the configured keys. Without a configured key, development keeps a generated
    /// one under `data_dir` (made on first start); production refuses to start.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let current = match &config.jwt_private_key_file {
            Some(path) => read_private(path)?,
            None if config.environment == Environment::Production => bail!(
                "KEEL_JWT_PRIVATE_KEY_FILE: must be set in production \
                 (an Ed25519 private key in PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`)"
            ),
            None => development_key(&config.data_dir)?,
        };
        let mut previous = Vec::new();
        for path in &config.jwt_previous_key_files {
            previous.push(read_public(path)?);
        }
        Self::new(&current, &previous)
    }

    fn new(current: &SigningKey, previous: &[VerifyingKey]) -> anyhow::Result<Self> {
        let pem = current
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the signing key: {e}"))?;
        let signing = EncodingKey::from_ed_pem(pem.as_bytes()).context("signing key")?;
        let mut ring = Self {
            kid: String::new(),
            signing,
            verifying: HashMap::new(),
            jwks: Jwks { keys: Vec::new() },
        };
        ring.kid = ring.accept(&current.verifying_key())?;
        for key in previous {
            ring.accept(key)?;
        }
        Ok(ring)
    }

    /// Adds `key` to the accepted keys and the JWKS; returns its id.
    fn accept(&mut self, key: &VerifyingKey) -> anyhow::Result<String> {
        let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
        let kid = thumbprint(&x);
        if !self.verifying.contains_key(&kid) {
            self.verifying
                .insert(kid.clone(), DecodingKey::from_ed_components(&x)?);
            self.jwks.keys.push(Jwk {
                kty: "OKP",
                crv: "Ed25519",
                x,
                kid: kid.clone(),
                alg: "EdDSA",
                usage: "sig",
            });
        }
        Ok(kid)
    }

    /// The id of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing key.
    pub fn signing(&self) -> &EncodingKey {
        &self.signing
    }

    /// The accepted key with id `kid`.
    pub fn verifying(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid)
    }

    /// The public keys, as `/.well-known/jwks.json` serves them.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK: SHA-256 over its required members in
/// lexicographic order, base64url.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn read_pem(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))
}

fn read_private(path: &Path) -> anyhow::Result<SigningKey> {
    SigningKey::from_pkcs8_pem(&read_pem(path)?).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM: {e}",
            path.display()
        )
    })
}

/// A public key, read from a public (SPKI) or a private (PKCS#8) PEM file.
fn read_public(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = read_pem(path)?;
    if let Ok(key) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(key);
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|key| key.verifying_key())
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is neither an Ed25519 public key nor a private key in PEM",
                path.display()
            )
        })
}

/// The key under `data_dir`, generated (readable by the owner only) when absent.
fn development_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let path: PathBuf = data_dir.join(DEV_KEY_FILE);
    if path.exists() {
        return read_private(&path);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).context("no system randomness")?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the generated key: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(pem.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a token signing key");
            Ok(key)
        }
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_private(&path),
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let first = KeyRing::load(&config).unwrap();
        let second = KeyRing::load(&config).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.jwks().keys.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
    }

    #[test]
    fn production_needs_a_configured_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            environment: Environment::Production,
            ..Config::default()
        };
        let error = KeyRing::load(&config).unwrap_err().to_string();
        assert!(error.contains("KEEL_JWT_PRIVATE_KEY_FILE"), "{error}");
        assert!(!dir.path().join(DEV_KEY_FILE).exists());
    }

    #[test]
    fn previous_keys_are_accepted_and_published() {
        let old = SigningKey::from_bytes(&[7; 32]);
        let new = SigningKey::from_bytes(&[9; 32]);
        let ring = KeyRing::new(&new, &[old.verifying_key()]).unwrap();
        assert_eq!(ring.jwks().keys.len(), 2);
        assert_eq!(ring.jwks().keys[0].kid, ring.kid());
        let old_kid = &ring.jwks().keys[1].kid;
        assert_ne!(old_kid, ring.kid());
        assert!(ring.verifying(old_kid).is_some());
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
