//! Hosts: registration, enrolment, leases and slots.

use super::*;

impl Store {
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
            .execute(&mut *self.platform().await?)
            .await?;
        Ok(())
    }

    /// The certificate fingerprint host `host_id` enrolled with, if it has.
    pub async fn host_credential(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT fingerprint FROM host_credentials WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(&mut *self.platform().await?)
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
            .execute(&mut *self.platform().await?)
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
        sqlx::query("UPDATE sessions SET state = 'lost', ended_at = $1 WHERE state = 'placed' AND host_id IN (SELECT id FROM hosts WHERE state = 'active' AND lease_expires_at <= $1)")
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
            .fetch_all(&mut *self.platform().await?)
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
            .execute(&mut *self.platform().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_slot(&self, host_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET used = used - 1 WHERE id = $1 AND used > 0")
            .bind(host_id)
            .execute(&mut *self.platform().await?)
            .await?;
        Ok(())
    }

    /// After a host restarts, its sessions are gone: mark them lost and free its slots.
    pub async fn host_restarted(&self, host_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE sessions SET state = 'lost', ended_at = $2 WHERE host_id = $1 AND state = 'placed'",
        )
        .bind(host_id)
        .bind(crate::unix_ms() as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE hosts SET used = 0 WHERE id = $1").bind(host_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
