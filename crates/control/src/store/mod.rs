//! Storage of the control plane, with sqlx on SQLite (embedded, the default) or
//! PostgreSQL (a fleet). One portable schema, numbered migrations embedded in the binary,
//! and every query scoped by tenant: a tenant's id is part of every key a caller can name.

use cloudplay_proto::constant_time_eq;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use thiserror::Error;

pub use accounts::Devices;
pub use channels::{Channel, MAX_CHANNELS_PER_CREATOR};
pub use crossplay::{Agreement, AgreementState};
pub use lobbies::{Lobby, LobbyMember, LobbyState};
pub use saves::{Moment, MomentQuota, SaveInfo, SaveKind, SavePolicy, SavePrecondition, sha256_hex};
pub use sessions::Placing;

use crate::placement::HostSnapshot;
use crate::random_id;

mod accounts;
mod catalogue;
mod channels;
mod crossplay;
mod fleet;
mod lobbies;
mod saves;
mod sessions;

/// The ordinary role test and benchmark schemas belong to ([`Store::postgres_schema_url`]).
pub const TEST_ROLE: &str = "cloudplay_tests";

/// Lets a connection see every tenant's rows: the platform's own work (placement, the
/// fleet, credential look-ups that find the tenant), asked for by [`Store::platform`].
const ALL_TENANTS: &str = "SELECT set_config('cloudplay.tenant', '*', false)";
/// What every pooled connection starts with, and goes back to: no tenant, no rows. A
/// query on a connection that never said whom it works for fails closed.
const NO_TENANT: &str = "SELECT set_config('cloudplay.tenant', '', false)";

/// Numbered migrations, embedded so the binary needs no files at run time.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "platform", include_str!("../../migrations/0001_platform.sql")),
    (2, "owners", include_str!("../../migrations/0002_owners.sql")),
    (3, "host identity", include_str!("../../migrations/0003_host_identity.sql")),
    (4, "sign-up", include_str!("../../migrations/0004_signup.sql")),
    (6, "cross-play", include_str!("../../migrations/0006_crossplay.sql")),
    (8, "lobbies", include_str!("../../migrations/0008_lobbies.sql")),
    (10, "saves", include_str!("../../migrations/0010_saves.sql")),
    (12, "public sessions", include_str!("../../migrations/0012_public_sessions.sql")),
    (13, "moments", include_str!("../../migrations/0013_moments.sql")),
    (15, "channels", include_str!("../../migrations/0015_channels.sql")),
    (17, "moment quotas", include_str!("../../migrations/0017_moment_quotas.sql")),
    (18, "session ends", include_str!("../../migrations/0018_session_ends.sql")),
    (19, "devices", include_str!("../../migrations/0019_devices.sql")),
    (20, "clipboard", include_str!("../../migrations/0020_clipboard.sql")),
];

/// Migrations of one database only: (version, name, SQL on PostgreSQL); SQLite, which has
/// no row-level security, records them as done.
const POSTGRES_ONLY: &[(i64, &str, &str)] = &[
    (5, "row-level security", include_str!("../../migrations/0005_row_level_security.postgres.sql")),
    (
        7,
        "cross-play row-level security",
        include_str!("../../migrations/0007_crossplay_row_level_security.postgres.sql"),
    ),
    (
        9,
        "lobby row-level security",
        include_str!("../../migrations/0009_lobbies_row_level_security.postgres.sql"),
    ),
    (
        11,
        "save row-level security",
        include_str!("../../migrations/0011_saves_row_level_security.postgres.sql"),
    ),
    (
        14,
        "moment row-level security",
        include_str!("../../migrations/0014_moments_row_level_security.postgres.sql"),
    ),
    (
        16,
        "channel row-level security",
        include_str!("../../migrations/0016_channels_row_level_security.postgres.sql"),
    ),
];

#[derive(Debug)]
struct EmbeddedMigrations(Backend);

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>> {
        let backend = self.0;
        Box::pin(async move {
            let postgres_only = POSTGRES_ONLY.iter().map(move |&(version, name, sql)| {
                (version, name, if backend == Backend::Postgres { sql } else { "SELECT 1;" })
            });
            let mut all: Vec<_> = MIGRATIONS.iter().copied().chain(postgres_only).collect();
            all.sort_by_key(|&(version, _, _)| version);
            Ok(all
                .into_iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// A write that would go over a quota.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A count quota is full (`429`): something has to go, or expire, first.
    #[error("quota full: {0}")]
    QuotaFull(String),
    /// A conditional write whose condition no longer holds (someone wrote since).
    #[error("precondition failed: {0}")]
    Stale(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)))
    }
}

fn conflict_or(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what.into()),
        _ => StoreError::Database(e),
    }
}

/// Password hashing runs on the blocking pool, a few at a time, so a flood of log-ins
/// cannot stall the async workers or take every core.
static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(2));

/// A real hash of nothing anyone knows: checked against when an email is unknown.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default().hash_password(random_id().as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
});

async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    let _permit = HASHING.acquire().await.map_err(|e| StoreError::Invalid(e.to_string()))?;
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Invalid(format!("password hashing: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub brand_color: String,
    pub logo_url: String,
    /// Players are not placed in regions slower than this.
    pub max_rtt_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub display_name: String,
    pub is_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: String,
    pub tenant_id: String,
    /// The visible part of the key, e.g. `cpk_1a2b3c4d`.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueGame {
    pub id: String,
    pub title: String,
    pub description: String,
    pub art_url: String,
    /// Runtime spec as JSON, e.g. `{"kind":"builtin","game":"neon-cycles"}`.
    pub runtime: String,
    /// Tier needed to play; `None` = free.
    pub required_tier: Option<String>,
    pub max_players: u8,
    /// How to play, one line per control.
    pub controls: Vec<String>,
    /// The game's title key for cross-play: entries of several tenants with one key are
    /// the same game ([`Store::crossplay_allowed`]).
    pub crossplay_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub id: String,
    pub name: String,
    /// A higher tier includes every lower one.
    pub rank: i64,
}

/// A play session as stored.
/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Waiting for room on a host.
    Queued,
    /// Running on its host.
    Placed,
    /// Over: stopped, idle, or its game ended.
    Ended,
    /// Its host was lost.
    Lost,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Queued => "queued",
            SessionState::Placed => "placed",
            SessionState::Ended => "ended",
            SessionState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Result<SessionState, StoreError> {
        Ok(match text {
            "queued" => SessionState::Queued,
            "placed" => SessionState::Placed,
            "ended" => SessionState::Ended,
            "lost" => SessionState::Lost,
            other => return Err(StoreError::Invalid(format!("unknown session state {other:?}"))),
        })
    }
}

impl serde::Serialize for SessionState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub game_id: String,
    pub host_id: Option<String>,
    pub state: SessionState,
    /// The session options as JSON.
    pub options: String,
    /// Per caller: the owner's id, a space, and the key the caller sent.
    pub idempotency_key: Option<String>,
    pub created_at_ms: u64,
    /// Who may act on the session: `user:<id>`, `guest:<hash>` or `key:<id>`.
    pub owner: String,
    /// Listed as live and watchable by anyone of its tenant.
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRegistration {
    pub id: String,
    pub region: String,
    pub endpoint: String,
    pub capacity: u32,
    pub runtimes: Vec<String>,
}

/// The control plane's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub(crate) fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    /// `sqlite://path/to/file.db`, `sqlite::memory:` or `postgres://user@host/db`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL {url:?} (sqlite: or postgres:)"
            )));
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite && !url.contains(":memory:") && !url.contains("mode=") {
            url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            // SQLite has one writer: one connection queues requests fairly in the pool
            // instead of letting them sleep-poll on the database lock (and an in-memory
            // database lives in one connection anyway).
            .max_connections(if backend == Backend::Sqlite { 1 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            // Safe with WAL: a crash loses nothing committed; only power loss may.
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    } else {
                        sqlx::query(NO_TENANT).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            // A connection a tenant's request used goes back to the platform's scope.
            .after_release(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Postgres {
                        sqlx::query(NO_TENANT).execute(&mut *conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        let store = Store { pool, backend };
        // Migrations that move rows see every tenant's.
        let mut conn = store.platform().await?;
        Migrator::new(EmbeddedMigrations(backend)).await?.run(&mut *conn).await?;
        drop(conn);
        Ok(store)
    }

    /// PostgreSQL only: creates `schema` and returns a URL whose connections work in it,
    /// for isolated test and benchmark runs on a shared database. The URL connects as
    /// [`TEST_ROLE`], an ordinary role that owns the schema: not a superuser, so row-level
    /// security binds it as it binds a real deployment (needs trust or peer auth).
    pub async fn postgres_schema_url(url: &str, schema: &str) -> Result<String, StoreError> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Invalid("schema names are letters, digits and '_'".into()));
        }
        sqlx::any::install_default_drivers();
        let admin = AnyPool::connect(url).await?;
        // Tests start side by side: a role another one just made is fine.
        sqlx::query(&format!(
            "DO $$ BEGIN CREATE ROLE {TEST_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .execute(&admin)
        .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema} AUTHORIZATION {TEST_ROLE}")).execute(&admin).await?;
        admin.close().await;
        let (scheme, rest) = url.split_once("://").ok_or_else(|| StoreError::Invalid("not a URL".into()))?;
        // The user goes; host, database and parameters stay.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let host_and_path = match rest[..authority_end].rfind('@') {
            Some(at) => &rest[at + 1..],
            None => rest,
        };
        let separator = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{scheme}://{TEST_ROLE}@{host_and_path}{separator}options=-c%20search_path%3D{schema}"))
    }

    /// Removes a schema made by [`Store::postgres_schema_url`].
    pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Invalid("schema names are letters, digits and '_'".into()));
        }
        let admin = AnyPool::connect(url).await?;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction. SQLite takes its write lock up front (`BEGIN IMMEDIATE`), so
    /// two writers never deadlock upgrading read locks.
    /// On PostgreSQL it works for the platform (every tenant) until
    /// [`Store::write_scoped`] narrows it.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT set_config('cloudplay.tenant', '*', true)").execute(&mut *tx).await?;
                tx
            }
        })
    }

    /// A connection for the platform's own work, which sees every tenant's rows (on
    /// SQLite, a plain connection); it goes back to the pool seeing none.
    async fn platform(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query(ALL_TENANTS).execute(&mut *conn).await?;
        }
        Ok(conn)
    }

    /// A connection confined to `tenant_id`'s rows by PostgreSQL's row-level security (on
    /// SQLite, a plain connection): every query of a tenant's request runs on one.
    async fn scoped(&self, tenant_id: &str) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT set_config('cloudplay.tenant', $1, false)")
                .bind(tenant_id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(conn)
    }

    /// Serialises the transaction `tx` with every other one that takes the same `key`
    /// until it ends, so a quota's check and its write are one step: PostgreSQL's
    /// transaction-scoped advisory lock. (SQLite's write transactions already run one at a
    /// time: `BEGIN IMMEDIATE`.)
    pub(crate) async fn serialise_on(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        key: &str,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// A write transaction confined to `tenant_id`'s rows (see [`Store::scoped`]).
    async fn write_scoped(
        &self,
        tenant_id: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT set_config('cloudplay.tenant', $1, true)")
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL fails closed: a pooled connection that never said whom it works for sees
    /// no tenant's rows, while the platform's own connections and each tenant's scoped ones
    /// see what they should. (Runs where `CLOUDPLAY_TEST_POSTGRES_URL` is set, as in CI.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_names_no_tenant_sees_no_rows() {
        let Ok(base) = std::env::var("CLOUDPLAY_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("CI").is_none(), "CI must set CLOUDPLAY_TEST_POSTGRES_URL");
            return;
        };
        let schema = format!("t_{}", crate::random_id());
        let url = Store::postgres_schema_url(&base, &schema).await.unwrap();
        let store = Store::connect(&url).await.unwrap();
        let tenant = |id: &str| Tenant {
            id: id.into(),
            name: id.into(),
            brand_color: "#fff".into(),
            logo_url: String::new(),
            max_rtt_ms: 80,
        };
        for id in ["acme", "globex"] {
            store.create_tenant(&tenant(id), 1).await.unwrap();
        }
        let count = |rows: Vec<sqlx::any::AnyRow>| rows.len();
        let mut pooled = store.pool.acquire().await.unwrap();
        let seen = sqlx::query("SELECT id FROM tenants").fetch_all(&mut *pooled).await.unwrap();
        assert_eq!(count(seen), 0, "a plain pooled connection sees nothing");
        drop(pooled);
        let mut platform = store.platform().await.unwrap();
        assert_eq!(count(sqlx::query("SELECT id FROM tenants").fetch_all(&mut *platform).await.unwrap()), 2);
        drop(platform);
        // The platform's connection went back to the pool seeing nothing again.
        let mut pooled = store.pool.acquire().await.unwrap();
        assert_eq!(count(sqlx::query("SELECT id FROM tenants").fetch_all(&mut *pooled).await.unwrap()), 0);
        drop(pooled);
        let mut acme = store.scoped("acme").await.unwrap();
        assert_eq!(count(sqlx::query("SELECT id FROM tenants").fetch_all(&mut *acme).await.unwrap()), 1);
        drop(acme);
        store.pool.close().await;
        Store::drop_postgres_schema(&base, &schema).await.unwrap();
    }
}
