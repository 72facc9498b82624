//! Cloud saves: versioned blobs per player, game and kind, with a checksum, a per-player
//! quota and the last few versions kept. A write names the version it replaces (or that
//! there is none): a writer that read an older version loses instead of overwriting newer
//! progress.

use super::*;

/// What a save holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveKind {
    /// A game's own battery-backed save memory (libretro SRAM).
    Sram,
    /// A whole machine state of the moment it was taken.
    State,
}

impl SaveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SaveKind::Sram => "sram",
            SaveKind::State => "state",
        }
    }

    pub fn parse(text: &str) -> Option<SaveKind> {
        match text {
            "sram" => Some(SaveKind::Sram),
            "state" => Some(SaveKind::State),
            _ => None,
        }
    }
}

/// One version of a save, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SaveInfo {
    pub game: String,
    pub kind: SaveKind,
    pub version: u64,
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    pub created_at_ms: u64,
}

/// What a write expects to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavePrecondition {
    /// There is no save yet (`If-None-Match: *`).
    None,
    /// The newest version is this one (`If-Match`).
    Version(u64),
}

/// Limits of one tenant's saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavePolicy {
    /// Versions kept per player, game and kind.
    pub keep: u64,
    /// Bytes of all of one player's kept versions.
    pub quota_bytes: u64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

const INFO_COLUMNS: &str = "game_id, kind, version, size, sha256, created_at";

fn info_from(row: &sqlx::any::AnyRow) -> Result<SaveInfo, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(SaveInfo {
        game: row.try_get("game_id")?,
        kind: SaveKind::parse(&kind)
            .ok_or_else(|| StoreError::Invalid(format!("unknown save kind {kind:?}")))?,
        version: row.try_get::<i64, _>("version")? as u64,
        size: row.try_get::<i64, _>("size")? as u64,
        sha256: row.try_get("sha256")?,
        created_at_ms: row.try_get::<i64, _>("created_at")? as u64,
    })
}

impl Store {
    /// Writes a new version of a save if `expected` still holds (`Stale` otherwise), within
    /// the player's quota (`TooLarge` otherwise), and drops versions beyond `policy.keep`.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_save(
        &self,
        tenant_id: &str,
        user_id: &str,
        game_id: &str,
        kind: SaveKind,
        expected: SavePrecondition,
        bytes: &[u8],
        policy: SavePolicy,
        now_ms: u64,
    ) -> Result<SaveInfo, StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        let newest = Self::newest_version(&mut tx, tenant_id, user_id, game_id, kind).await?;
        let holds = match expected {
            SavePrecondition::None => newest.is_none(),
            SavePrecondition::Version(v) => newest == Some(v),
        };
        if !holds {
            let now = newest.map_or("no save".into(), |v| format!("version {v}"));
            return Err(StoreError::Stale(format!("the newest is {now}: someone saved since")));
        }
        let version = newest.unwrap_or(0) + 1;
        // Versions that stay once this one is in, and what the player holds elsewhere.
        let dropped_below = version.saturating_sub(policy.keep.max(1)) + 1;
        let used = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM saves WHERE tenant_id = $1 AND user_id = $2 \
             AND NOT (game_id = $3 AND kind = $4 AND version < $5)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .bind(dropped_below as i64)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("used")? as u64;
        if used + bytes.len() as u64 > policy.quota_bytes {
            return Err(StoreError::TooLarge(format!(
                "saves are limited to {} bytes per player; {used} are in use",
                policy.quota_bytes
            )));
        }
        let info = SaveInfo {
            game: game_id.into(),
            kind,
            version,
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            created_at_ms: now_ms,
        };
        sqlx::query(
            "INSERT INTO saves (tenant_id, user_id, game_id, kind, version, size, sha256, data, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .bind(version as i64)
        .bind(info.size as i64)
        .bind(&info.sha256)
        .bind(bytes)
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await
        // Two writers that both saw the same newest version: one insert wins.
        .map_err(|e| match conflict_or(e, "save") {
            StoreError::Conflict(_) => StoreError::Stale("someone saved at the same moment".into()),
            other => other,
        })?;
        sqlx::query(
            "DELETE FROM saves WHERE tenant_id = $1 AND user_id = $2 AND game_id = $3 AND kind = $4 AND version < $5",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .bind(dropped_below as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Every kept version of a player's saves, by game, kind and newest first.
    pub async fn saves(&self, tenant_id: &str, user_id: &str) -> Result<Vec<SaveInfo>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {INFO_COLUMNS} FROM saves WHERE tenant_id = $1 AND user_id = $2 \
             ORDER BY game_id, kind, version DESC"
        ))
        .bind(tenant_id)
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(info_from).collect()
    }

    /// One version of a save (the newest without `version`) and its bytes, checked
    /// against its checksum.
    pub async fn save(
        &self,
        tenant_id: &str,
        user_id: &str,
        game_id: &str,
        kind: SaveKind,
        version: Option<u64>,
    ) -> Result<(SaveInfo, Vec<u8>), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {INFO_COLUMNS}, data FROM saves WHERE tenant_id = $1 AND user_id = $2 AND game_id = $3 \
             AND kind = $4 AND ($5 < 0 OR version = $5) ORDER BY version DESC LIMIT 1"
        ))
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .bind(version.map_or(-1, |v| v as i64))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound)?;
        let info = info_from(&row)?;
        let bytes: Vec<u8> = row.try_get("data")?;
        if sha256_hex(&bytes) != info.sha256 {
            return Err(StoreError::Invalid(format!(
                "save version {} does not match its checksum",
                info.version
            )));
        }
        Ok((info, bytes))
    }

    /// The newest version of a save, inside a write transaction.
    async fn newest_version(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        tenant_id: &str,
        user_id: &str,
        game_id: &str,
        kind: SaveKind,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT MAX(version) AS v FROM saves WHERE tenant_id = $1 AND user_id = $2 AND game_id = $3 AND kind = $4",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.map(|v| v as u64))
    }

    /// Deletes every version of a save; `NotFound` if there was none. With `newest`, only
    /// while that is still the newest version (`Stale` when someone saved since).
    pub async fn delete_save(
        &self,
        tenant_id: &str,
        user_id: &str,
        game_id: &str,
        kind: SaveKind,
        newest: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        if let Some(expected) = newest {
            match Self::newest_version(&mut tx, tenant_id, user_id, game_id, kind).await? {
                None => return Err(StoreError::NotFound),
                Some(v) if v != expected => {
                    return Err(StoreError::Stale(format!(
                        "version {v} is the newest now; it was saved since"
                    )));
                }
                Some(_) => {}
            }
        }
        let done = sqlx::query(
            "DELETE FROM saves WHERE tenant_id = $1 AND user_id = $2 AND game_id = $3 AND kind = $4",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(game_id)
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }
}

/// A captured moment of a running game (its whole state), to start sessions from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    pub id: String,
    pub game: String,
    pub sha256: String,
    pub data: Vec<u8>,
    pub session_id: String,
    pub expires_at_ms: u64,
}

/// How many moments, and how many bytes of them, one capturer and one tenant may keep
/// (until they expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MomentQuota {
    pub per_owner: u32,
    pub bytes_per_owner: u64,
    pub bytes_per_tenant: u64,
}

impl Default for MomentQuota {
    fn default() -> Self {
        MomentQuota { per_owner: 20, bytes_per_owner: 32 << 20, bytes_per_tenant: 1 << 30 }
    }
}

impl Store {
    /// Keeps `moment`, captured by `owner`, if it fits `quota` (expired moments are swept
    /// first). The check and the write are one step on both databases: concurrent captures
    /// never go over a quota together.
    pub async fn create_moment(
        &self,
        tenant_id: &str,
        owner: &str,
        moment: &Moment,
        quota: MomentQuota,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        self.serialise_on(&mut tx, &format!("moments:{tenant_id}")).await?;
        sqlx::query("DELETE FROM moments WHERE tenant_id = $1 AND expires_at <= $2")
            .bind(tenant_id)
            .bind(now_ms as i64)
            .execute(&mut *tx)
            .await?;
        let mine = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM moments WHERE tenant_id = $1 AND owner = $2",
        )
        .bind(tenant_id)
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
        let (count, bytes) = (mine.try_get::<i64, _>("n")? as u64, mine.try_get::<i64, _>("bytes")? as u64);
        let size = moment.data.len() as u64;
        if count >= u64::from(quota.per_owner) {
            return Err(StoreError::QuotaFull(format!(
                "you keep {count} moments, the most one may; older ones expire after a week"
            )));
        }
        if bytes + size > quota.bytes_per_owner {
            return Err(StoreError::QuotaFull(format!(
                "your moments would hold {} bytes, over the {} one may keep",
                bytes + size,
                quota.bytes_per_owner
            )));
        }
        let tenant = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM moments WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if tenant.try_get::<i64, _>("bytes")? as u64 + size > quota.bytes_per_tenant {
            return Err(StoreError::QuotaFull("this platform's moments are full for now".into()));
        }
        sqlx::query(
            "INSERT INTO moments (id, tenant_id, game_id, sha256, data, session_id, created_at, expires_at, owner, size) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&moment.id)
        .bind(tenant_id)
        .bind(&moment.game)
        .bind(&moment.sha256)
        .bind(&moment.data)
        .bind(&moment.session_id)
        .bind(now_ms as i64)
        .bind(moment.expires_at_ms as i64)
        .bind(owner)
        .bind(size as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes every tenant's expired moments; answers how many went.
    pub async fn sweep_moments(&self, now_ms: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM moments WHERE expires_at <= $1")
            .bind(now_ms as i64)
            .execute(&mut *self.platform().await?)
            .await?;
        Ok(done.rows_affected())
    }

    /// A tenant's moment that has not expired, checked against its checksum.
    pub async fn moment(&self, tenant_id: &str, id: &str, now_ms: u64) -> Result<Moment, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query(
            "SELECT id, game_id, sha256, data, session_id, expires_at FROM moments \
             WHERE tenant_id = $1 AND id = $2 AND expires_at > $3",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(now_ms as i64)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound)?;
        let moment = Moment {
            id: row.try_get("id")?,
            game: row.try_get("game_id")?,
            sha256: row.try_get("sha256")?,
            data: row.try_get("data")?,
            session_id: row.try_get("session_id")?,
            expires_at_ms: row.try_get::<i64, _>("expires_at")? as u64,
        };
        if sha256_hex(&moment.data) != moment.sha256 {
            return Err(StoreError::Invalid("the moment does not match its checksum".into()));
        }
        Ok(moment)
    }
}
