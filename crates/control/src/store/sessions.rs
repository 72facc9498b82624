//! Play sessions: created, found, queued, placed, ended.

use super::*;

/// A tenant's placed sessions, and other tenants' queued ones.
const SHARE_OF_FLEET: &str = "SELECT COALESCE(SUM(CASE WHEN tenant_id = $1 AND state = 'placed' THEN 1 ELSE 0 END), 0) AS mine, \
     COALESCE(SUM(CASE WHEN tenant_id <> $1 AND state = 'queued' THEN 1 ELSE 0 END), 0) AS waiting \
     FROM sessions WHERE state IN ('placed', 'queued')";

/// How [`Store::place_session`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placing {
    Placed,
    /// The host had no free slot (or no longer a lease): try another.
    HostFull,
    /// The tenant holds its share while others wait: it waits too.
    OverShare,
    /// The session is no longer queued (ended meanwhile).
    NotQueued,
}

impl Store {
    /// Stores a new session. A session with the same tenant and idempotency key is a
    /// conflict: the caller returns the existing one instead. With `owner_limit`, the
    /// owner may have at most that many live or queued sessions, this one included
    /// ([`StoreError::QuotaFull`] otherwise), counted and inserted in one step.
    pub async fn insert_session(
        &self,
        session: &SessionRecord,
        owner_limit: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut conn = self.write_scoped(&session.tenant_id).await?;
        if let Some(limit) = owner_limit {
            self.serialise_on(&mut conn, &format!("sessions:{}:{}", session.tenant_id, session.owner))
                .await?;
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = $1 AND owner = $2 AND state IN ('queued', 'placed')",
            )
            .bind(&session.tenant_id)
            .bind(&session.owner)
            .fetch_one(&mut *conn)
            .await?;
            if row.try_get::<i64, _>("n")? >= i64::from(limit) {
                return Err(StoreError::QuotaFull(format!(
                    "at most {limit} live or queued sessions each; end one first"
                )));
            }
        }
        sqlx::query("INSERT INTO sessions (id, tenant_id, user_id, game_id, host_id, state, options, idempotency_key, created_at, owner, public) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
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
            .bind(session.public as i64)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "session"))?;
        conn.commit().await?;
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
            public: row.try_get::<i64, _>("public")? != 0,
        })
    }

    const SESSION_COLUMNS: &str = "id, tenant_id, user_id, game_id, host_id, state, options, idempotency_key, created_at, owner, public";

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
            .fetch_optional(&mut *self.platform().await?)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::session_from(&row)
    }

    /// Places queued session `id` of `tenant_id` on `host_id` in one step: unless the
    /// tenant holds `share` placed sessions or more while another's players wait, a slot of
    /// the host is claimed and the session marked placed there. Serialised per tenant, so
    /// requests at the same moment never pass the share between them.
    pub async fn place_session(
        &self,
        tenant_id: &str,
        id: &str,
        host_id: &str,
        share: u32,
        now_ms: u64,
    ) -> Result<Placing, StoreError> {
        let mut tx = self.write().await?;
        self.serialise_on(&mut tx, &format!("placement:{tenant_id}")).await?;
        let row = sqlx::query(SHARE_OF_FLEET).bind(tenant_id).fetch_one(&mut *tx).await?;
        let count =
            |name: &str| -> Result<u32, StoreError> { Ok(row.try_get::<i64, _>(name)?.max(0) as u32) };
        if count("mine")? >= share && count("waiting")? > 0 {
            return Ok(Placing::OverShare);
        }
        let claimed = sqlx::query("UPDATE hosts SET used = used + 1 WHERE id = $1 AND state = 'active' AND used < capacity AND lease_expires_at > $2")
            .bind(host_id)
            .bind(now_ms as i64)
            .execute(&mut *tx)
            .await?;
        if claimed.rows_affected() != 1 {
            return Ok(Placing::HostFull);
        }
        let assigned = sqlx::query("UPDATE sessions SET state = 'placed', host_id = $1 WHERE tenant_id = $2 AND id = $3 AND state = 'queued'")
            .bind(host_id)
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if assigned.rows_affected() != 1 {
            return Ok(Placing::NotQueued); // the slot's claim goes with the transaction
        }
        tx.commit().await?;
        Ok(Placing::Placed)
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
        let done = sqlx::query(
            "UPDATE sessions SET state = $1, ended_at = $5 WHERE tenant_id = $2 AND id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(tenant_id)
        .bind(id)
        .bind(from.as_str())
        .bind(matches!(to, SessionState::Ended | SessionState::Lost).then(|| crate::unix_ms() as i64))
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sessions placed on a host, for reconciliation with what the host runs.
    pub async fn placed_sessions_on(&self, host_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let sql =
            format!("SELECT {} FROM sessions WHERE host_id = $1 AND state = 'placed'", Self::SESSION_COLUMNS);
        let rows = sqlx::query(&sql).bind(host_id).fetch_all(&mut *self.platform().await?).await?;
        rows.iter().map(Self::session_from).collect()
    }

    /// Makes a session public (listed as live, watchable by anyone of its tenant) or
    /// private again.
    pub async fn set_session_public(
        &self,
        tenant_id: &str,
        id: &str,
        public: bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE sessions SET public = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(public as i64)
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    /// A tenant's public sessions that are playing, newest first.
    pub async fn public_sessions(
        &self,
        tenant_id: &str,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let sql = format!(
            "SELECT {} FROM sessions WHERE tenant_id = $1 AND public = 1 AND state = 'placed' \
             ORDER BY created_at DESC, id LIMIT $2",
            Self::SESSION_COLUMNS
        );
        let rows = sqlx::query(&sql).bind(tenant_id).bind(limit as i64).fetch_all(&mut *conn).await?;
        rows.iter().map(Self::session_from).collect()
    }

    /// The session `id` if it is, or was, placed on `host_id` (whatever its state now):
    /// what a host may act for.
    /// Session `id` as placed on `host_id`, if it runs there or ended there at `since_ms`
    /// or later (a host's last commits arrive just after a session ends, never long after).
    pub async fn session_on_host(
        &self,
        host_id: &str,
        id: &str,
        since_ms: u64,
    ) -> Result<SessionRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE host_id = $1 AND id = $2 AND (state = 'placed' OR ended_at >= $3)",
            Self::SESSION_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(host_id)
            .bind(id)
            .bind(since_ms as i64)
            .fetch_optional(&mut *self.platform().await?)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::session_from(&row)
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
                .fetch_all(&mut *self.platform().await?)
                .await?;
        let mut heads = Vec::new();
        for row in rows {
            let tenant: String = row.try_get("tenant_id")?;
            heads.extend(self.sessions(&tenant, SessionState::Queued, per_tenant).await?);
        }
        Ok(heads)
    }

    /// Each region with live hosts and one host endpoint in it (for RTT probes).
    pub async fn regions(&self, now_ms: u64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT region, MIN(endpoint) AS endpoint FROM hosts WHERE state = 'active' AND lease_expires_at > $1 GROUP BY region ORDER BY region")
            .bind(now_ms as i64)
            .fetch_all(&mut *self.platform().await?)
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
