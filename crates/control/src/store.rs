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

use crate::placement::HostSnapshot;
use crate::random_id;

/// The ordinary role test and benchmark schemas belong to ([`Store::postgres_schema_url`]).
pub const TEST_ROLE: &str = "cloudplay_tests";

/// Lets a connection see every tenant's rows: the platform's own work (placement, the
/// fleet, credential look-ups that find the tenant).
const ALL_TENANTS: &str = "SELECT set_config('cloudplay.tenant', '*', false)";

/// Numbered migrations, embedded so the binary needs no files at run time.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "platform", include_str!("../migrations/0001_platform.sql")),
    (2, "owners", include_str!("../migrations/0002_owners.sql")),
    (3, "host identity", include_str!("../migrations/0003_host_identity.sql")),
    (4, "sign-up", include_str!("../migrations/0004_signup.sql")),
];

/// Migrations of one database only: (version, name, SQL on PostgreSQL); SQLite, which has
/// no row-level security, records them as done.
const POSTGRES_ONLY: &[(i64, &str, &str)] =
    &[(5, "row-level security", include_str!("../migrations/0005_row_level_security.postgres.sql"))];

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
            Ok(MIGRATIONS
                .iter()
                .copied()
                .chain(postgres_only)
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
                        sqlx::query(ALL_TENANTS).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            // A connection a tenant's request used goes back to the platform's scope.
            .after_release(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Postgres {
                        sqlx::query(ALL_TENANTS).execute(&mut *conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Migrator::new(EmbeddedMigrations(backend)).await?.run(&pool).await?;
        Ok(Store { pool, backend })
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
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
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

    // ------------------------------------------------------------------ tenants

    pub async fn create_tenant(&self, tenant: &Tenant, now_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.scoped(&tenant.id).await?;
        if tenant.id.is_empty()
            || !tenant.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(StoreError::Invalid("tenant ids are lowercase letters, digits and '-'".into()));
        }
        sqlx::query("INSERT INTO tenants (id, name, brand_color, logo_url, max_rtt_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(&tenant.brand_color)
            .bind(&tenant.logo_url)
            .bind(tenant.max_rtt_ms as i64)
            .bind(now_ms as i64)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "tenant"))?;
        Ok(())
    }

    pub async fn tenant(&self, id: &str) -> Result<Tenant, StoreError> {
        let mut conn = self.scoped(id).await?;
        let row =
            sqlx::query("SELECT id, name, brand_color, logo_url, max_rtt_ms FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(StoreError::NotFound)?;
        Ok(Tenant {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            brand_color: row.try_get("brand_color")?,
            logo_url: row.try_get("logo_url")?,
            max_rtt_ms: row.try_get::<i64, _>("max_rtt_ms")? as u32,
        })
    }

    // ------------------------------------------------------------------ users

    pub async fn create_user(
        &self,
        tenant_id: &str,
        email: &str,
        password: &str,
        display_name: &str,
        is_admin: bool,
        now_ms: u64,
    ) -> Result<User, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        if !email.contains('@') || email.len() > 254 {
            return Err(StoreError::Invalid("a valid email address is required".into()));
        }
        if password.len() < 8 || password.len() > 1024 {
            return Err(StoreError::Invalid("passwords are 8 to 1024 characters".into()));
        }
        let password_owned = password.to_string();
        let hash = off_the_runtime(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::default().hash_password(password_owned.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await?
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let user = User {
            id: random_id(),
            tenant_id: tenant_id.into(),
            email,
            display_name: display_name.trim().chars().take(64).collect(),
            is_admin,
        };
        // Hashing first: no connection is held while it runs.
        let mut conn = self.scoped(tenant_id).await?;
        sqlx::query("INSERT INTO users (id, tenant_id, email, password_hash, display_name, is_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&user.id)
            .bind(tenant_id)
            .bind(&user.email)
            .bind(hash)
            .bind(&user.display_name)
            .bind(is_admin as i64)
            .bind(now_ms as i64)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "user"))?;
        Ok(user)
    }

    fn user_from(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
        Ok(User {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        })
    }

    /// The user with this email and password in this tenant, if the password is right.
    pub async fn verify_password(
        &self,
        tenant_id: &str,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, tenant_id, email, display_name, is_admin, password_hash FROM users WHERE tenant_id = $1 AND email = $2")
            .bind(tenant_id)
            .bind(email.trim().to_ascii_lowercase())
            .fetch_optional(&mut *self.scoped(tenant_id).await?)
            .await?;
        // Unknown emails cost a hash check too, so timing does not tell which emails exist.
        let hash: String = match &row {
            Some(row) => row.try_get("password_hash")?,
            None => DUMMY_HASH.clone(),
        };
        let password = password.to_string();
        let matches = off_the_runtime(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await?;
        match row {
            Some(row) if matches => Ok(Some(Self::user_from(&row)?)),
            _ => Ok(None),
        }
    }

    pub async fn user(&self, tenant_id: &str, id: &str) -> Result<User, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query(
            "SELECT id, tenant_id, email, display_name, is_admin FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound)?;
        Self::user_from(&row)
    }

    /// A page of a tenant's users, ordered by email, after `after` (exclusive).
    pub async fn users(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query("SELECT id, tenant_id, email, display_name, is_admin FROM users WHERE tenant_id = $1 AND email > $2 ORDER BY email LIMIT $3")
            .bind(tenant_id)
            .bind(after.unwrap_or(""))
            .bind(limit.min(500) as i64)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::user_from).collect()
    }

    /// Issues a login token for a user (`cpu_…`), valid until `expires_at_ms`. Only its
    /// hash is stored.
    pub async fn create_user_token(&self, user: &User, expires_at_ms: u64) -> Result<String, StoreError> {
        let mut conn = self.scoped(&user.tenant_id).await?;
        let token = format!("cpu_{}{}", random_id(), random_id());
        sqlx::query(
            "INSERT INTO user_tokens (token_hash, tenant_id, user_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash_secret(&token))
        .bind(&user.tenant_id)
        .bind(&user.id)
        .bind(expires_at_ms as i64)
        .execute(&mut *conn)
        .await?;
        Ok(token)
    }

    /// The user a login token belongs to, if it is valid at `now_ms`.
    pub async fn user_by_token(&self, token: &str, now_ms: u64) -> Result<Option<User>, StoreError> {
        if !token.starts_with("cpu_") {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT u.id, u.tenant_id, u.email, u.display_name, u.is_admin FROM user_tokens t \
             JOIN users u ON u.id = t.user_id AND u.tenant_id = t.tenant_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2",
        )
        .bind(hash_secret(token))
        .bind(now_ms as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::user_from).transpose()
    }

    pub async fn revoke_user_token(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_tokens WHERE token_hash = $1")
            .bind(hash_secret(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------------ API keys

    /// Creates an API key and returns it with its secret, which is shown only this once:
    /// only a hash is stored.
    pub async fn create_api_key(
        &self,
        tenant_id: &str,
        scopes: &[&str],
        now_ms: u64,
    ) -> Result<(ApiKeyInfo, String), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let id = random_id();
        let prefix = format!("cpk_{}", &id[..8]);
        let secret = format!("{prefix}_{}", random_id());
        sqlx::query("INSERT INTO api_keys (id, tenant_id, prefix, secret_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(tenant_id)
            .bind(&prefix)
            .bind(hash_secret(&secret))
            .bind(scopes.join(","))
            .bind(now_ms as i64)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "api key"))?;
        let info = ApiKeyInfo {
            id,
            tenant_id: tenant_id.into(),
            prefix,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            revoked: false,
        };
        Ok((info, secret))
    }

    /// The key a secret belongs to, if it exists and is not revoked.
    pub async fn authenticate_api_key(&self, secret: &str) -> Result<Option<ApiKeyInfo>, StoreError> {
        let Some(prefix) = secret.get(..12).filter(|p| p.starts_with("cpk_")) else { return Ok(None) };
        let row = sqlx::query(
            "SELECT id, tenant_id, prefix, secret_hash, scopes, revoked_at FROM api_keys WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_hash")?;
        let revoked = row.try_get::<Option<i64>, _>("revoked_at")?.is_some();
        if revoked || !constant_time_eq(&stored, &hash_secret(secret)) {
            return Ok(None);
        }
        let scopes: String = row.try_get("scopes")?;
        Ok(Some(ApiKeyInfo {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            prefix: row.try_get("prefix")?,
            scopes: scopes.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            revoked: false,
        }))
    }

    pub async fn api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query("SELECT id, tenant_id, prefix, scopes, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id")
            .bind(tenant_id)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|row| {
                let scopes: String = row.try_get("scopes")?;
                Ok(ApiKeyInfo {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    prefix: row.try_get("prefix")?,
                    scopes: scopes.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
                    revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                })
            })
            .collect()
    }

    pub async fn revoke_api_key(&self, tenant_id: &str, id: &str, now_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms as i64)
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    // ------------------------------------------------------------------ catalogue and entitlements

    pub async fn put_game(&self, tenant_id: &str, game: &CatalogueGame) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        sqlx::query("DELETE FROM games WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(&game.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO games (tenant_id, id, title, description, art_url, runtime, required_tier, max_players, controls) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(tenant_id)
            .bind(&game.id)
            .bind(&game.title)
            .bind(&game.description)
            .bind(&game.art_url)
            .bind(&game.runtime)
            .bind(game.required_tier.as_deref())
            .bind(game.max_players as i64)
            .bind(game.controls.join("\n"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    fn game_from(row: &sqlx::any::AnyRow) -> Result<CatalogueGame, StoreError> {
        Ok(CatalogueGame {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            art_url: row.try_get("art_url")?,
            runtime: row.try_get("runtime")?,
            required_tier: row.try_get("required_tier")?,
            max_players: row.try_get::<i64, _>("max_players")?.clamp(1, 255) as u8,
            controls: row.try_get::<String, _>("controls")?.lines().map(String::from).collect(),
        })
    }

    pub async fn games(&self, tenant_id: &str) -> Result<Vec<CatalogueGame>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query("SELECT id, title, description, art_url, runtime, required_tier, max_players, controls FROM games WHERE tenant_id = $1 ORDER BY title, id")
            .bind(tenant_id)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::game_from).collect()
    }

    pub async fn game(&self, tenant_id: &str, id: &str) -> Result<CatalogueGame, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query("SELECT id, title, description, art_url, runtime, required_tier, max_players, controls FROM games WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::game_from(&row)
    }

    pub async fn put_tier(&self, tenant_id: &str, tier: &Tier) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        sqlx::query("DELETE FROM tiers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(&tier.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tiers (tenant_id, id, name, rank) VALUES ($1, $2, $3, $4)")
            .bind(tenant_id)
            .bind(&tier.id)
            .bind(&tier.name)
            .bind(tier.rank)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Grants `user_id` the tier `tier_id` until `expires_at_ms` (or for ever).
    pub async fn grant(
        &self,
        tenant_id: &str,
        user_id: &str,
        tier_id: &str,
        expires_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        // Both must exist in this tenant: a tenant cannot grant another tenant's ids.
        self.user(tenant_id, user_id).await?;
        let tier = sqlx::query("SELECT id FROM tiers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(tier_id)
            .fetch_optional(&mut *self.scoped(tenant_id).await?)
            .await?;
        if tier.is_none() {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.write_scoped(tenant_id).await?;
        sqlx::query("DELETE FROM entitlements WHERE tenant_id = $1 AND user_id = $2 AND tier_id = $3")
            .bind(tenant_id)
            .bind(user_id)
            .bind(tier_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO entitlements (tenant_id, user_id, tier_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(tier_id)
        .bind(expires_at_ms.map(|t| t as i64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `user_id` may play `game`: free games are open to all; otherwise the user
    /// needs an unexpired entitlement to a tier ranked at least as high as the game's.
    pub async fn entitled(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
        game: &CatalogueGame,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let Some(required) = &game.required_tier else { return Ok(true) };
        let Some(user_id) = user_id else { return Ok(false) };
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM entitlements e \
             JOIN tiers held ON held.tenant_id = e.tenant_id AND held.id = e.tier_id \
             JOIN tiers needed ON needed.tenant_id = e.tenant_id AND needed.id = $1 \
             WHERE e.tenant_id = $2 AND e.user_id = $3 AND held.rank >= needed.rank \
             AND (e.expires_at IS NULL OR e.expires_at > $4)",
        )
        .bind(required)
        .bind(tenant_id)
        .bind(user_id)
        .bind(now_ms as i64)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    // ------------------------------------------------------------------ sign-up

    /// How players sign up to `tenant_id`: `open`, `invite` or `closed`.
    pub async fn signup_mode(&self, tenant_id: &str) -> Result<String, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query("SELECT signup FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.try_get("signup")?)
    }

    pub async fn set_signup_mode(&self, tenant_id: &str, mode: &str) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        if !["open", "invite", "closed"].contains(&mode) {
            return Err(StoreError::Invalid("sign-up is open, invite or closed".into()));
        }
        let done = sqlx::query("UPDATE tenants SET signup = $1 WHERE id = $2")
            .bind(mode)
            .bind(tenant_id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Keeps an invite (its hash) to `tenant_id`, valid until `expires_at_ms`.
    pub async fn add_invite(
        &self,
        tenant_id: &str,
        code_hash: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        sqlx::query(
            "INSERT INTO invites (code_hash, tenant_id, expires_at, used_by) VALUES ($1, $2, $3, NULL)",
        )
        .bind(code_hash)
        .bind(tenant_id)
        .bind(expires_at_ms as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Spends an invite to `tenant_id` for `email`: `false` when it is unknown, spent,
    /// expired or another tenant's.
    pub async fn spend_invite(
        &self,
        tenant_id: &str,
        code_hash: &str,
        email: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query(
            "UPDATE invites SET used_by = $1 WHERE code_hash = $2 AND tenant_id = $3 AND used_by IS NULL AND expires_at > $4",
        )
        .bind(email)
        .bind(code_hash)
        .bind(tenant_id)
        .bind(now_ms as i64)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives back an invite whose sign-up failed after all (the email was taken).
    pub async fn return_invite(&self, tenant_id: &str, code_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        sqlx::query("UPDATE invites SET used_by = NULL WHERE code_hash = $1 AND tenant_id = $2")
            .bind(code_hash)
            .bind(tenant_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------------ fleet

    /// Registers or re-registers a host with a fresh lease. Its `used` count is kept.
    pub async fn register_host(
        &self,
        host: &HostRegistration,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let existing = sqlx::query("SELECT used FROM hosts WHERE id = $1")
            .bind(&host.id)
            .fetch_optional(&mut *tx)
            .await?;
        let used: i64 = match existing {
            Some(row) => row.try_get("used")?,
            None => 0,
        };
        sqlx::query("DELETE FROM hosts WHERE id = $1").bind(&host.id).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO hosts (id, region, endpoint, capacity, used, runtimes, lease_expires_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active')")
            .bind(&host.id)
            .bind(&host.region)
            .bind(&host.endpoint)
            .bind(host.capacity as i64)
            .bind(used)
            .bind(host.runtimes.join(","))
            .bind((now_ms + lease_ms) as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps a one-time enrolment token (its hash) valid until `expires_at_ms`.
    pub async fn add_enrolment(&self, token_hash: &str, expires_at_ms: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO host_enrolments (token_hash, expires_at, used_by) VALUES ($1, $2, NULL)")
            .bind(token_hash)
            .bind(expires_at_ms as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The certificate fingerprint host `host_id` enrolled with, if it has.
    pub async fn host_credential(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT fingerprint FROM host_credentials WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("fingerprint")).transpose()?)
    }

    /// Enrols `host_id` with `fingerprint`, spending the enrolment token: `false` (and
    /// nothing changes) when the token is unknown, spent or expired, or the id is taken.
    pub async fn enrol_host(
        &self,
        token_hash: &str,
        host_id: &str,
        fingerprint: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let spent = sqlx::query(
            "UPDATE host_enrolments SET used_by = $1 WHERE token_hash = $2 AND used_by IS NULL AND expires_at > $3",
        )
        .bind(host_id)
        .bind(token_hash)
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await?;
        let taken = sqlx::query("SELECT host_id FROM host_credentials WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if spent.rows_affected() != 1 || taken {
            return Ok(false); // dropping the transaction rolls it back
        }
        sqlx::query("INSERT INTO host_credentials (host_id, fingerprint, enrolled_at) VALUES ($1, $2, $3)")
            .bind(host_id)
            .bind(fingerprint)
            .bind(now_ms as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Extends a host's lease. `false` if the host is unknown or was drained.
    pub async fn heartbeat(&self, host_id: &str, now_ms: u64, lease_ms: u64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE hosts SET lease_expires_at = $1 WHERE id = $2 AND state = 'active'")
            .bind((now_ms + lease_ms) as i64)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drains hosts whose lease lapsed and marks their sessions lost; returns those sessions.
    pub async fn expire_leases(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write().await?;
        let rows = sqlx::query("SELECT s.id FROM sessions s JOIN hosts h ON h.id = s.host_id WHERE h.state = 'active' AND h.lease_expires_at <= $1 AND s.state = 'placed'")
            .bind(now_ms as i64)
            .fetch_all(&mut *tx)
            .await?;
        let lost: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        sqlx::query("UPDATE sessions SET state = 'lost' WHERE state = 'placed' AND host_id IN (SELECT id FROM hosts WHERE state = 'active' AND lease_expires_at <= $1)")
            .bind(now_ms as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE hosts SET state = 'drained', used = 0 WHERE state = 'active' AND lease_expires_at <= $1",
        )
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(lost)
    }

    /// Every active host with a live lease, as placement sees it.
    pub async fn fleet(&self, now_ms: u64) -> Result<Vec<HostSnapshot>, StoreError> {
        let rows = sqlx::query("SELECT id, region, capacity, used, runtimes FROM hosts WHERE state = 'active' AND lease_expires_at > $1 ORDER BY id")
            .bind(now_ms as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let runtimes: String = row.try_get("runtimes")?;
                Ok(HostSnapshot {
                    id: row.try_get("id")?,
                    region: row.try_get("region")?,
                    capacity: row.try_get::<i64, _>("capacity")?.max(0) as u32,
                    used: row.try_get::<i64, _>("used")?.max(0) as u32,
                    runtimes: runtimes.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
                })
            })
            .collect()
    }

    /// Takes one slot on a host, atomically: `false` when it is full, drained or unknown.
    /// Safe under any number of concurrent callers on either backend.
    pub async fn claim_slot(&self, host_id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE hosts SET used = used + 1 WHERE id = $1 AND state = 'active' AND used < capacity AND lease_expires_at > $2")
            .bind(host_id)
            .bind(now_ms as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_slot(&self, host_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET used = used - 1 WHERE id = $1 AND used > 0")
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// After a host restarts, its sessions are gone: mark them lost and free its slots.
    pub async fn host_restarted(&self, host_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE sessions SET state = 'lost' WHERE host_id = $1 AND state = 'placed'")
            .bind(host_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE hosts SET used = 0 WHERE id = $1").bind(host_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    // ------------------------------------------------------------------ sessions

    /// Stores a new session. A session with the same tenant and idempotency key is a
    /// conflict: the caller returns the existing one instead.
    pub async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut conn = self.scoped(&session.tenant_id).await?;
        sqlx::query("INSERT INTO sessions (id, tenant_id, user_id, game_id, host_id, state, options, idempotency_key, created_at, owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&session.id)
            .bind(&session.tenant_id)
            .bind(session.user_id.as_deref())
            .bind(&session.game_id)
            .bind(session.host_id.as_deref())
            .bind(session.state.as_str())
            .bind(&session.options)
            .bind(session.idempotency_key.as_deref())
            .bind(session.created_at_ms as i64)
            .bind(&session.owner)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "session"))?;
        Ok(())
    }

    fn session_from(row: &sqlx::any::AnyRow) -> Result<SessionRecord, StoreError> {
        Ok(SessionRecord {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            user_id: row.try_get("user_id")?,
            game_id: row.try_get("game_id")?,
            host_id: row.try_get("host_id")?,
            state: SessionState::parse(row.try_get("state")?)?,
            options: row.try_get("options")?,
            idempotency_key: row.try_get("idempotency_key")?,
            created_at_ms: row.try_get::<i64, _>("created_at")?.max(0) as u64,
            owner: row.try_get("owner")?,
        })
    }

    const SESSION_COLUMNS: &str =
        "id, tenant_id, user_id, game_id, host_id, state, options, idempotency_key, created_at, owner";

    pub async fn session(&self, tenant_id: &str, id: &str) -> Result<SessionRecord, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!("SELECT {} FROM sessions WHERE tenant_id = $1 AND id = $2", Self::SESSION_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::session_from(&row)
    }

    pub async fn session_by_idempotency_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {} FROM sessions WHERE tenant_id = $1 AND idempotency_key = $2",
            Self::SESSION_COLUMNS
        );
        let row = sqlx::query(&sql).bind(tenant_id).bind(key).fetch_optional(&mut *conn).await?;
        row.as_ref().map(Self::session_from).transpose()
    }

    /// A tenant's sessions in `state`, oldest first.
    pub async fn sessions(
        &self,
        tenant_id: &str,
        state: SessionState,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {} FROM sessions WHERE tenant_id = $1 AND state = $2 ORDER BY created_at, id LIMIT $3",
            Self::SESSION_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(state.as_str())
            .bind(limit.min(1000) as i64)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::session_from).collect()
    }

    /// An owner's queued and placed sessions, oldest first.
    pub async fn sessions_of(&self, tenant_id: &str, owner: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {} FROM sessions WHERE tenant_id = $1 AND owner = $2 AND state IN ('queued', 'placed') \
             ORDER BY created_at, id LIMIT 100",
            Self::SESSION_COLUMNS
        );
        let rows = sqlx::query(&sql).bind(tenant_id).bind(owner).fetch_all(&mut *conn).await?;
        rows.iter().map(Self::session_from).collect()
    }

    /// Sets (`Some(secret)`) or revokes (`None`) the session's watch grant; only its hash
    /// is stored.
    pub async fn set_watch_grant(
        &self,
        tenant_id: &str,
        id: &str,
        secret: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE sessions SET watch_grant_hash = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(secret.map(hash_secret))
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound) }
    }

    /// The session whose current watch grant is `secret`. The grant is the capability,
    /// so it is looked up without a tenant: share links work for guests of any tenant.
    pub async fn session_by_watch_grant(&self, id: &str, secret: &str) -> Result<SessionRecord, StoreError> {
        let sql =
            format!("SELECT {} FROM sessions WHERE id = $1 AND watch_grant_hash = $2", Self::SESSION_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(hash_secret(secret))
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::session_from(&row)
    }

    /// Live and queued sessions of one owner, for the per-caller limit.
    pub async fn count_live_sessions_of(&self, tenant_id: &str, owner: &str) -> Result<u32, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = $1 AND owner = $2 AND state IN ('queued', 'placed')",
        )
        .bind(tenant_id)
        .bind(owner)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u32)
    }

    /// Moves a session from `from` to `to`; `false` if it was not in `from`.
    pub async fn set_session_state(
        &self,
        tenant_id: &str,
        id: &str,
        from: SessionState,
        to: SessionState,
    ) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done =
            sqlx::query("UPDATE sessions SET state = $1 WHERE tenant_id = $2 AND id = $3 AND state = $4")
                .bind(to.as_str())
                .bind(tenant_id)
                .bind(id)
                .bind(from.as_str())
                .execute(&mut *conn)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sessions placed on a host, for reconciliation with what the host runs.
    pub async fn placed_sessions_on(&self, host_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let sql =
            format!("SELECT {} FROM sessions WHERE host_id = $1 AND state = 'placed'", Self::SESSION_COLUMNS);
        let rows = sqlx::query(&sql).bind(host_id).fetch_all(&self.pool).await?;
        rows.iter().map(Self::session_from).collect()
    }

    /// Where a queued session stands in its tenant's queue (1 = next), first in, first out.
    pub async fn queue_position(&self, session: &SessionRecord) -> Result<u32, StoreError> {
        let mut conn = self.scoped(&session.tenant_id).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS ahead FROM sessions WHERE tenant_id = $1 AND state = 'queued' \
             AND (created_at < $2 OR (created_at = $2 AND id < $3))",
        )
        .bind(&session.tenant_id)
        .bind(session.created_at_ms as i64)
        .bind(&session.id)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get::<i64, _>("ahead")?.max(0) as u32 + 1)
    }

    /// The oldest queued sessions across tenants, at most `per_tenant` of each tenant.
    pub async fn queue_heads(&self, per_tenant: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT tenant_id FROM sessions WHERE state = 'queued' ORDER BY tenant_id")
                .fetch_all(&self.pool)
                .await?;
        let mut heads = Vec::new();
        for row in rows {
            let tenant: String = row.try_get("tenant_id")?;
            heads.extend(self.sessions(&tenant, SessionState::Queued, per_tenant).await?);
        }
        Ok(heads)
    }

    /// Places a queued session on a host (whose slot the caller claimed). `false` if it
    /// was no longer queued.
    pub async fn assign_session(&self, tenant_id: &str, id: &str, host_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE sessions SET state = 'placed', host_id = $1 WHERE tenant_id = $2 AND id = $3 AND state = 'queued'")
            .bind(host_id)
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Each region with live hosts and one host endpoint in it (for RTT probes).
    pub async fn regions(&self, now_ms: u64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT region, MIN(endpoint) AS endpoint FROM hosts WHERE state = 'active' AND lease_expires_at > $1 GROUP BY region ORDER BY region")
            .bind(now_ms as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("region")?, row.try_get("endpoint")?))).collect()
    }

    /// Puts a placed session back in its queue (its host failed to start it); its place
    /// in line is kept, since the queue orders by creation time.
    pub async fn requeue_session(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE sessions SET state = 'queued', host_id = NULL WHERE tenant_id = $1 AND id = $2 AND state = 'placed'")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
