//! A tenant's catalogue, tiers and entitlements.

use super::*;

impl Store {
    pub async fn put_game(&self, tenant_id: &str, game: &CatalogueGame) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        sqlx::query("DELETE FROM games WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(&game.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO games (tenant_id, id, title, description, art_url, runtime, required_tier, max_players, controls, crossplay_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(tenant_id)
            .bind(&game.id)
            .bind(&game.title)
            .bind(&game.description)
            .bind(&game.art_url)
            .bind(&game.runtime)
            .bind(game.required_tier.as_deref())
            .bind(game.max_players as i64)
            .bind(game.controls.join("\n"))
            .bind(game.crossplay_key.as_deref())
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
            crossplay_key: row.try_get("crossplay_key")?,
        })
    }

    pub async fn games(&self, tenant_id: &str) -> Result<Vec<CatalogueGame>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query("SELECT id, title, description, art_url, runtime, required_tier, max_players, controls, crossplay_key FROM games WHERE tenant_id = $1 ORDER BY title, id")
            .bind(tenant_id)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::game_from).collect()
    }

    pub async fn game(&self, tenant_id: &str, id: &str) -> Result<CatalogueGame, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query("SELECT id, title, description, art_url, runtime, required_tier, max_players, controls, crossplay_key FROM games WHERE tenant_id = $1 AND id = $2")
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
}
