//! Passwords: a [`Password`] can only exist within the length rules and cannot be printed;
//! hashing and verification (Argon2id) run on a bounded thread pool, never on the runtime.

use std::{
    cell::RefCell,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    compute::{CpuPool, PoolError},
    config::Config,
    http::extract::Invalid,
};

/// Shortest password accepted, in characters.
pub const PASSWORD_MIN_CHARS: usize = 12;
/// Longest password accepted, in characters.
pub const PASSWORD_MAX_CHARS: usize = 128;

/// A password within the length rules. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

impl Password {
    /// Validates a new password: 12–128 characters.
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(Invalid::new(
                "too_short",
                format!("must be at least {PASSWORD_MIN_CHARS} characters"),
            ));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            ));
        }
        Ok(Self(raw.into()))
    }

    /// A password offered to log in or to confirm a change: it is compared with a stored
    /// hash, not with today's rules, so only its size is bounded (hashing is the cost).
    pub fn current(raw: String) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::new("too_short", "must not be empty"));
        }
        if raw.chars().count() > PASSWORD_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            ));
        }
        Ok(Self(raw.into()))
    }

    fn bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

/// Why a hash could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing thread is busy and the queue is full.
    #[error("the password hashing pool is saturated")]
    Busy,
    /// The hash function failed (or its job panicked).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

impl From<PoolError> for HashError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Busy => Self::Busy,
            PoolError::Panicked => Self::Failed("the hashing job panicked".to_owned()),
        }
    }
}

/// Hashes and verifies passwords with Argon2id on its own bounded pool.
pub struct PasswordHasher {
    argon: Argon2<'static>,
    pool: CpuPool,
    /// A hash of a random password, verified when the account does not exist so that an
    /// unknown e-mail costs the same time as a wrong password. Made in the background at
    /// start-up, so that it does not delay readiness.
    dummy: Arc<OnceLock<String>>,
    /// Hash jobs admitted and not finished; the last one to finish frees its memory.
    active: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

/// Waiting hash jobs beyond the running ones; more are refused with 503.
const HASH_QUEUE: usize = 64;

impl PasswordHasher {
    /// A hasher with the configured cost, running on one thread per core.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let params = Params::new(
            config.password_hash_memory_kib,
            config.password_hash_iterations,
            1,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid password hashing parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        map_large_allocations();
        let dummy = Arc::new(OnceLock::new());
        let (slot, dummy_argon) = (dummy.clone(), argon.clone());
        std::thread::Builder::new()
            .name("keel-dummy-hash".to_owned())
            .spawn(move || {
                let _ = slot.get_or_init(|| make_dummy(&dummy_argon));
            })
            .context("cannot start a thread")?;
        Ok(Self {
            argon,
            pool: CpuPool::new(config.compute_threads(), HASH_QUEUE)?,
            dummy,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `job` on the hashing pool. The last job of a burst frees the Argon2 memory of
    /// its thread, so an idle server holds none; a lone login then pays for fresh memory
    /// (about 35 instead of 52 logins/s one at a time on one core), a burst does not.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.active.fetch_add(1, Ordering::AcqRel);
        // Counts the job as finished however it ends (run, refused, or skipped because
        // the client left); a skipped job is dropped on the pool thread too.
        let finished = Finished(self.active.clone());
        Ok(self
            .pool
            .run(move || {
                let value = job();
                drop(finished);
                value
            })
            .await?)
    }

    /// A PHC string (`$argon2id$v=19$m=...`) for `password`, with a fresh salt.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let argon = self.argon.clone();
        let password = password.clone();
        self.run(move || hash_with(&argon, password.bytes()))
            .await?
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Whether `password` matches `stored`. Without a stored hash (no such account, or one
    /// without a password) a dummy hash is verified, so both answers take the same time.
    pub async fn verify(
        &self,
        stored: Option<&str>,
        password: &Password,
    ) -> Result<bool, HashError> {
        let known = stored.is_some();
        let stored = stored.map(str::to_owned);
        let (dummy, argon) = (self.dummy.clone(), self.argon.clone());
        let password = password.clone();
        let matches = self
            .run(move || {
                let stored =
                    stored.unwrap_or_else(|| dummy.get_or_init(|| make_dummy(&argon)).clone());
                verify_with(password.bytes(), &stored)
            })
            .await?;
        Ok(known && matches)
    }
}

/// Makes glibc serve every allocation of 4 MiB or more with its own mapping, returned to the
/// system when freed. By default glibc raises that threshold to the size of the largest
/// block freed so far, so after the first hash the Argon2 memory came from the heap arenas
/// and stayed there: RSS grew to 100-230 MiB under logins and never came back down.
fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes a tuning parameter of the allocator; glibc documents
        // it as safe to call at any time, from any thread.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
            // A fixed mmap threshold also freezes the trim threshold at its 128 KiB default,
            // and glibc then gives the heap top back (and faults it in again) on nearly every
            // request: listing users ran at half speed. 64 MiB is where the dynamic
            // threshold would have ended up.
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        });
    }
}

/// Ends a hash job: the last of a burst frees the Argon2 memory of the thread it ends on.
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            MEMORY.with(|memory| *memory.borrow_mut() = Vec::new());
        }
    }
}

/// The hash of a random password, for [`PasswordHasher::verify`] of unknown accounts.
fn make_dummy(argon: &Argon2<'_>) -> String {
    let mut random = [0u8; 32];
    // Without system randomness this is a fixed password; it is never one anyone has.
    let _ = getrandom::fill(&mut random);
    hash_with(argon, &random).unwrap_or_default()
}

thread_local! {
    /// The Argon2 memory of this hashing thread, reused from one hash to the next while hashes
    /// keep coming and freed when they stop. A fresh 19 MiB allocation per hash left glibc's
    /// per-thread arenas holding some 200 MiB after a burst of logins.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` into `out`, in this thread's reusable memory.
fn argon2_into(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = argon.params().block_count();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
    })
}

/// A PHC string (`$argon2id$v=19$m=...$salt$hash`) for `password` with a fresh salt.
fn hash_with(argon: &Argon2<'_>, password: &[u8]) -> anyhow::Result<String> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("argon2: {e}");
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).context("no system randomness")?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(argon, password, &salt, &mut out).map_err(|e| fail(&e))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| fail(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| fail(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| fail(&e))?),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored`, with the parameters stored in it;
/// the comparison takes constant time.
fn verify_with(password: &[u8], stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(hash.algorithm),
        Params::try_from(&hash),
        hash.salt,
        hash.hash,
    ) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    argon2_into(&argon, password, salt, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> PasswordHasher {
        let config = Config {
            password_hash_memory_kib: 1024,
            password_hash_iterations: 1,
            compute_threads: 1,
            ..Config::default()
        };
        PasswordHasher::new(&config).unwrap()
    }

    #[test]
    fn length_rules_count_characters() {
        assert_eq!(
            Password::parse("é".repeat(11))
                .map(drop)
                .map_err(|e| e.code),
            Err("too_short")
        );
        assert!(Password::parse("é".repeat(12)).is_ok());
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert_eq!(
            Password::parse("é".repeat(129))
                .map(drop)
                .map_err(|e| e.code),
            Err("too_long")
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let password = Password::parse("Zebra-Quartz-7781".into()).unwrap();
        assert!(!format!("{password:?}").contains("Zebra"));
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let hasher = hasher();
        let password = Password::parse("correct horse battery".into()).unwrap();
        let first = hasher.hash(&password).await.unwrap();
        let second = hasher.hash(&password).await.unwrap();
        assert!(
            first.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "each hash has its own salt");
        assert!(hasher.verify(Some(&first), &password).await.unwrap());
        let wrong = Password::parse("correct horse battery!".into()).unwrap();
        assert!(!hasher.verify(Some(&first), &wrong).await.unwrap());
        assert!(!hasher.verify(None, &password).await.unwrap());
        assert!(!hasher.verify(Some("not a hash"), &password).await.unwrap());
        // A hash made elsewhere with other parameters verifies with its own.
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(2048, 2, 1, None).unwrap(),
        );
        let foreign = argon2::password_hash::PasswordHasher::hash_password(
            &other,
            b"correct horse battery",
            &SaltString::encode_b64(b"sixteen byte salt").unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(hasher.verify(Some(&foreign), &password).await.unwrap());
        assert!(!hasher.verify(Some(&foreign), &wrong).await.unwrap());
    }

    #[test]
    fn default_cost_is_owasps() {
        let config = Config::default();
        assert_eq!(config.password_hash_memory_kib, 19 * 1024);
        assert_eq!(config.password_hash_iterations, 2);
    }
}
