//! Creators and their channels: who may go live, each channel's stream key (its hash) and
//! the broadcast it carries now.

use sqlx::Row;

use super::{Store, StoreError, conflict_or};

/// Channels one creator may have.
pub const MAX_CHANNELS_PER_CREATOR: u32 = 5;

/// A creator's channel as stored (never its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub tenant_id: String,
    pub owner_id: String,
    /// The creator's display name.
    pub owner_name: String,
    pub title: String,
    /// The broadcast it carries, on which host, since when; `None` when off the air.
    pub broadcast_id: Option<String>,
    pub host_id: Option<String>,
    pub live_since_ms: Option<u64>,
    pub created_at_ms: u64,
}

const CHANNEL_COLUMNS: &str = "c.id, c.tenant_id, c.owner_id, u.display_name, c.title, c.broadcast_id, \
     c.host_id, c.live_since, c.created_at";

fn channel_from(row: &sqlx::any::AnyRow) -> Result<Channel, StoreError> {
    Ok(Channel {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        owner_id: row.try_get(2)?,
        owner_name: row.try_get(3)?,
        title: row.try_get(4)?,
        broadcast_id: row.try_get(5)?,
        host_id: row.try_get(6)?,
        live_since_ms: row.try_get::<Option<i64>, _>(7)?.map(|t| t as u64),
        created_at_ms: row.try_get::<i64, _>(8)? as u64,
    })
}

impl Store {
    /// Makes a user of the tenant a creator, or bans them (`banned`).
    pub async fn set_creator(
        &self,
        tenant_id: &str,
        user_id: &str,
        banned: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.user(tenant_id, user_id).await?;
        let mut conn = self.scoped(tenant_id).await?;
        sqlx::query(
            "INSERT INTO creators (tenant_id, user_id, banned, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET banned = excluded.banned, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(banned as i64)
        .bind(now_ms as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Whether the user may go live: `Some(true)` a creator, `Some(false)` banned, `None`
    /// never made one.
    pub async fn creator_standing(&self, tenant_id: &str, user_id: &str) -> Result<Option<bool>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let banned: Option<i64> =
            sqlx::query_scalar("SELECT banned FROM creators WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant_id)
                .bind(user_id)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(banned.map(|banned| banned == 0))
    }

    /// A new channel of `owner_id`; at most [`MAX_CHANNELS_PER_CREATOR`] each.
    pub async fn create_channel(
        &self,
        tenant_id: &str,
        owner_id: &str,
        id: &str,
        title: &str,
        key_hash: &str,
        now_ms: u64,
    ) -> Result<Channel, StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        // The count and the insert are one step: concurrent requests cannot both pass.
        self.serialise_on(&mut tx, &format!("channels:{tenant_id}:{owner_id}")).await?;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM channels WHERE tenant_id = $1 AND owner_id = $2")
                .bind(tenant_id)
                .bind(owner_id)
                .fetch_one(&mut *tx)
                .await?;
        if count >= MAX_CHANNELS_PER_CREATOR as i64 {
            return Err(StoreError::TooLarge(format!("at most {MAX_CHANNELS_PER_CREATOR} channels each")));
        }
        sqlx::query(
            "INSERT INTO channels (id, tenant_id, owner_id, title, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(tenant_id)
        .bind(owner_id)
        .bind(title)
        .bind(key_hash)
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, "channel"))?;
        tx.commit().await?;
        self.channel(tenant_id, id).await
    }

    pub async fn channel(&self, tenant_id: &str, id: &str) -> Result<Channel, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c JOIN users u ON u.id = c.owner_id \
             WHERE c.tenant_id = $1 AND c.id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
        channel_from(&row)
    }

    /// A channel whatever its tenant, with its key's hash: for a publisher, who names the
    /// channel and presents the key, and nothing else.
    pub async fn channel_for_publishing(&self, id: &str) -> Result<(Channel, String), StoreError> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS}, c.key_hash FROM channels c JOIN users u ON u.id = c.owner_id WHERE c.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.platform().await?)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((channel_from(&row)?, row.try_get(9)?))
    }

    /// A creator's channels, oldest first.
    pub async fn channels_of(&self, tenant_id: &str, owner_id: &str) -> Result<Vec<Channel>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c JOIN users u ON u.id = c.owner_id \
             WHERE c.tenant_id = $1 AND c.owner_id = $2 ORDER BY c.created_at, c.id"
        );
        let rows = sqlx::query(&sql).bind(tenant_id).bind(owner_id).fetch_all(&mut *conn).await?;
        rows.iter().map(channel_from).collect()
    }

    /// The tenant's channels on the air, longest live first.
    pub async fn live_channels(&self, tenant_id: &str, limit: u32) -> Result<Vec<Channel>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c JOIN users u ON u.id = c.owner_id \
             WHERE c.tenant_id = $1 AND c.broadcast_id IS NOT NULL ORDER BY c.live_since, c.id LIMIT $2"
        );
        let rows = sqlx::query(&sql).bind(tenant_id).bind(limit as i64).fetch_all(&mut *conn).await?;
        rows.iter().map(channel_from).collect()
    }

    /// Broadcasts on the air per host, every tenant's together (placement spreads them).
    pub async fn broadcasts_by_host(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, COUNT(*) AS n FROM channels WHERE broadcast_id IS NOT NULL AND host_id IS NOT NULL \
             GROUP BY host_id",
        )
        .fetch_all(&mut *self.platform().await?)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>("host_id")?, row.try_get::<i64, _>("n")? as u64)))
            .collect()
    }

    pub async fn set_channel_key(&self, tenant_id: &str, id: &str, key_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE channels SET key_hash = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .bind(key_hash)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Puts broadcast `broadcast_id` on the channel if it carries none: `false` when
    /// another publisher was first.
    pub async fn claim_channel(
        &self,
        tenant_id: &str,
        id: &str,
        broadcast_id: &str,
        host_id: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query(
            "UPDATE channels SET broadcast_id = $3, host_id = $4, live_since = $5 \
             WHERE tenant_id = $1 AND id = $2 AND broadcast_id IS NULL",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(broadcast_id)
        .bind(host_id)
        .bind(now_ms as i64)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes broadcast `broadcast_id` off the channel (if it is still the one on it).
    pub async fn release_channel(
        &self,
        tenant_id: &str,
        id: &str,
        broadcast_id: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        sqlx::query(
            "UPDATE channels SET broadcast_id = NULL, host_id = NULL, live_since = NULL \
             WHERE tenant_id = $1 AND id = $2 AND broadcast_id = $3",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(broadcast_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn delete_channel(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("DELETE FROM channels WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
