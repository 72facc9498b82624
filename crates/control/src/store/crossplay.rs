//! Cross-play agreements between two tenants for one title key: offered by one, accepted
//! by the other, revoked by either. An agreement is visible to its two tenants only.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgreementState {
    Offered,
    Accepted,
    Revoked,
}

impl AgreementState {
    fn as_str(self) -> &'static str {
        match self {
            AgreementState::Offered => "offered",
            AgreementState::Accepted => "accepted",
            AgreementState::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<AgreementState, StoreError> {
        match text {
            "offered" => Ok(AgreementState::Offered),
            "accepted" => Ok(AgreementState::Accepted),
            "revoked" => Ok(AgreementState::Revoked),
            other => Err(StoreError::Invalid(format!("unknown agreement state {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub id: String,
    pub offered_by: String,
    pub offered_to: String,
    pub title_key: String,
    pub state: AgreementState,
    pub created_at_ms: u64,
    pub changed_at_ms: u64,
}

impl Agreement {
    /// The other tenant of the agreement, seen from `tenant_id`.
    pub fn partner(&self, tenant_id: &str) -> &str {
        if self.offered_by == tenant_id { &self.offered_to } else { &self.offered_by }
    }
}

const COLUMNS: &str = "id, offered_by, offered_to, title_key, state, created_at, changed_at";

fn agreement_from(row: &sqlx::any::AnyRow) -> Result<Agreement, StoreError> {
    Ok(Agreement {
        id: row.try_get("id")?,
        offered_by: row.try_get("offered_by")?,
        offered_to: row.try_get("offered_to")?,
        title_key: row.try_get("title_key")?,
        state: AgreementState::parse(&row.try_get::<String, _>("state")?)?,
        created_at_ms: row.try_get::<i64, _>("created_at")? as u64,
        changed_at_ms: row.try_get::<i64, _>("changed_at")? as u64,
    })
}

impl Store {
    /// `tenant_id` offers cross-play in `title_key` to `partner`. At most one live
    /// (offered or accepted) agreement per pair and title, whichever side offered it.
    pub async fn offer_crossplay(
        &self,
        tenant_id: &str,
        partner: &str,
        title_key: &str,
        now_ms: u64,
    ) -> Result<Agreement, StoreError> {
        if partner == tenant_id {
            return Err(StoreError::Invalid("a tenant plays with itself without an agreement".into()));
        }
        // The partner is looked up as the platform: a tenant's own scope cannot see it.
        let mut platform = self.platform().await?;
        sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(partner)
            .fetch_optional(&mut *platform)
            .await?
            .ok_or(StoreError::NotFound)?;
        drop(platform);
        let mut tx = self.write_scoped(tenant_id).await?;
        let live = sqlx::query(
            "SELECT COUNT(*) AS n FROM crossplay_agreements WHERE title_key = $1 AND state <> 'revoked' \
             AND ((offered_by = $2 AND offered_to = $3) OR (offered_by = $3 AND offered_to = $2))",
        )
        .bind(title_key)
        .bind(tenant_id)
        .bind(partner)
        .fetch_one(&mut *tx)
        .await?;
        if live.try_get::<i64, _>("n")? > 0 {
            return Err(StoreError::Conflict(format!(
                "an agreement for {title_key:?} with {partner} is already offered or accepted"
            )));
        }
        let agreement = Agreement {
            id: crate::random_id(),
            offered_by: tenant_id.into(),
            offered_to: partner.into(),
            title_key: title_key.into(),
            state: AgreementState::Offered,
            created_at_ms: now_ms,
            changed_at_ms: now_ms,
        };
        sqlx::query(&format!(
            "INSERT INTO crossplay_agreements ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&agreement.id)
        .bind(&agreement.offered_by)
        .bind(&agreement.offered_to)
        .bind(&agreement.title_key)
        .bind(agreement.state.as_str())
        .bind(now_ms as i64)
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(agreement)
    }

    /// The agreements `tenant_id` is a party to, oldest first.
    pub async fn crossplay_agreements(&self, tenant_id: &str) -> Result<Vec<Agreement>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM crossplay_agreements WHERE offered_by = $1 OR offered_to = $1 \
             ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(agreement_from).collect()
    }

    /// The tenant an offer was made to accepts it. Not a party: `NotFound`, as for an id
    /// that does not exist; the offering side, or an agreement no longer offered:
    /// `Conflict`.
    pub async fn accept_crossplay(
        &self,
        tenant_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Agreement, StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        let mut agreement = Self::party_to(&mut tx, tenant_id, id).await?;
        if agreement.offered_to != tenant_id {
            return Err(StoreError::Conflict(format!("only {} can accept this offer", agreement.offered_to)));
        }
        if agreement.state != AgreementState::Offered {
            return Err(StoreError::Conflict(format!("the agreement is {}", agreement.state.as_str())));
        }
        Self::set_state(&mut tx, id, AgreementState::Accepted, now_ms).await?;
        tx.commit().await?;
        agreement.state = AgreementState::Accepted;
        agreement.changed_at_ms = now_ms;
        Ok(agreement)
    }

    /// Either party ends an agreement (an offer or an accepted one), at once: no new
    /// cross-play joins from now on. Revoking a revoked agreement changes nothing.
    pub async fn revoke_crossplay(&self, tenant_id: &str, id: &str, now_ms: u64) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(tenant_id).await?;
        let agreement = Self::party_to(&mut tx, tenant_id, id).await?;
        if agreement.state != AgreementState::Revoked {
            Self::set_state(&mut tx, id, AgreementState::Revoked, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether players of `a` and `b` may meet in `title_key`: an accepted agreement,
    /// whichever side offered it. The same tenant always may.
    pub async fn crossplay_allowed(&self, a: &str, b: &str, title_key: &str) -> Result<bool, StoreError> {
        if a == b {
            return Ok(true);
        }
        let mut conn = self.scoped(a).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM crossplay_agreements WHERE title_key = $1 AND state = 'accepted' \
             AND ((offered_by = $2 AND offered_to = $3) OR (offered_by = $3 AND offered_to = $2))",
        )
        .bind(title_key)
        .bind(a)
        .bind(b)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The state of the newest agreement between `a` and `b` for `title_key`, if they
    /// ever had one.
    pub async fn crossplay_state(
        &self,
        a: &str,
        b: &str,
        title_key: &str,
    ) -> Result<Option<AgreementState>, StoreError> {
        let mut conn = self.scoped(a).await?;
        let row = sqlx::query(
            "SELECT state FROM crossplay_agreements WHERE title_key = $1 \
             AND ((offered_by = $2 AND offered_to = $3) OR (offered_by = $3 AND offered_to = $2)) \
             ORDER BY changed_at DESC, created_at DESC LIMIT 1",
        )
        .bind(title_key)
        .bind(a)
        .bind(b)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|row| AgreementState::parse(&row.try_get::<String, _>("state")?)).transpose()
    }

    /// The display name of tenant `id` (what another tenant is shown of it).
    pub async fn tenant_name(&self, id: &str) -> Result<String, StoreError> {
        let mut platform = self.platform().await?;
        let row = sqlx::query("SELECT name FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *platform)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.try_get("name")?)
    }

    async fn party_to(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        tenant_id: &str,
        id: &str,
    ) -> Result<Agreement, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM crossplay_agreements WHERE id = $1 AND (offered_by = $2 OR offered_to = $2)"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        agreement_from(&row)
    }

    async fn set_state(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        state: AgreementState,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE crossplay_agreements SET state = $1, changed_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now_ms as i64)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
