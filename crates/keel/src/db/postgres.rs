//! PostgreSQL through tokio-postgres.
//!
//! Single statements are pipelined over a few shared connections: a tokio-postgres client
//! takes `&self`, so many requests write their queries onto one socket without waiting for
//! each other's answers. Measured on one core, this ran 51k–94k statements/s over 1–4
//! connections where a pool lending each statement a connection of its own (sqlx) ran 19k
//! (see "Choosing the PostgreSQL client" in bench/README.md). The connections come
//! from a deadpool pool, which reconnects when one dies, and each keeps a cache of prepared
//! statements, so a query is parsed and planned once per connection.

use std::{
    str::FromStr,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Row, config::SslMode, types::ToSql};

use super::DbError;

/// Connections that single statements share at most; more add little once the database's
/// cores are busy (the benchmark saw 51k statements/s on one, 81k on two, 94k on four).
const SHARED_CONNECTIONS: usize = 4;

/// How long a request waits for a connection before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL database: a pool and the connections single statements share.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    shared: Box<[RwLock<Option<Arc<Object>>>]>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("pool", &self.inner.pool.status())
            .field("shared", &self.inner.shared.len())
            .finish()
    }
}

impl Postgres {
    /// Connects to `url` with at most `max_connections` connections, and checks that one
    /// can be opened.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let config = tokio_postgres::Config::from_str(url)
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        } else {
            Manager::from_config(config, tls::unverified()?, manager_config)
        };
        let max = usize::try_from(max_connections)
            .unwrap_or(usize::MAX)
            .max(1);
        let pool = Pool::builder(manager)
            .max_size(max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .context("cannot build the PostgreSQL pool")?;
        let shared = (0..SHARED_CONNECTIONS.min(max))
            .map(|_| RwLock::new(None))
            .collect();
        let db = Self {
            inner: Arc::new(Inner {
                pool,
                shared,
                next: AtomicUsize::new(0),
            }),
        };
        db.client()
            .await
            .context("cannot connect to PostgreSQL at DATABASE_URL")?;
        Ok(db)
    }

    /// The pool's connections right now (the shared ones count as in use).
    pub fn pool_status(&self) -> super::PoolStatus {
        let status = self.inner.pool.status();
        super::PoolStatus {
            open: status.size,
            idle: status.available,
            max: status.max_size,
            waiting: status.waiting,
        }
    }

    /// How many connections single statements share.
    pub fn shared_connections(&self) -> usize {
        self.inner.shared.len()
    }

    /// One of the shared connections, round robin; a dead one is replaced on the way.
    async fn client(&self) -> Result<Arc<Object>, DbError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.shared.len();
        let slot = &self.inner.shared[i];
        let current = slot.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(client) = current.filter(|c| !c.is_closed()) {
            return Ok(client);
        }
        // Two requests may both replace a dead connection; the loser's goes back to the
        // pool when its statement is done.
        let fresh = Arc::new(self.inner.pool.get().await?);
        *slot.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Runs `sql` and returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    /// Runs `sql` and returns how many rows it changed.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }

    /// A connection of its own, inside `BEGIN`, for a transaction.
    pub(super) async fn begin(&self) -> Result<Object, DbError> {
        let client = self.inner.pool.get().await?;
        client.batch_execute("BEGIN").await?;
        Ok(client)
    }

    /// Closes the pool; connections still lent out close when they come back.
    pub fn close(&self) {
        for slot in &self.inner.shared {
            *slot.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.inner.pool.close();
    }
}

mod tls {
    //! TLS as libpq does it for `sslmode=prefer` (the default) and `sslmode=require`: the
    //! connection is encrypted, and the server's certificate is not checked (libpq checks it
    //! only for `verify-ca` and `verify-full`, which keel does not support yet).

    use std::sync::Arc;

    use rustls::{
        ClientConfig, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
        pki_types::{CertificateDer, ServerName, UnixTime},
    };
    use tokio_postgres_rustls::MakeRustlsConnect;

    /// A connector that encrypts without verifying the server's certificate.
    pub(super) fn unverified() -> anyhow::Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// Accepts any certificate, but still checks that the server holds its key.
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
