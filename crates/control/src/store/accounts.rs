//! Tenants, their users and login tokens, API keys, and who may sign up.

use super::*;

impl Store {
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
        .fetch_optional(&mut *self.platform().await?)
        .await?;
        row.as_ref().map(Self::user_from).transpose()
    }

    pub async fn revoke_user_token(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_tokens WHERE token_hash = $1")
            .bind(hash_secret(token))
            .execute(&mut *self.platform().await?)
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
        .fetch_optional(&mut *self.platform().await?)
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

    /// What `tenant_id`'s players' devices may bring into a game.
    pub async fn devices(&self, tenant_id: &str) -> Result<Devices, StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let row = sqlx::query("SELECT microphone, clipboard FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Devices {
            microphone: row.try_get::<i64, _>("microphone")? != 0,
            clipboard: row.try_get::<i64, _>("clipboard")? != 0,
        })
    }

    pub async fn set_devices(&self, tenant_id: &str, devices: Devices) -> Result<(), StoreError> {
        let mut conn = self.scoped(tenant_id).await?;
        let done = sqlx::query("UPDATE tenants SET microphone = $1, clipboard = $2 WHERE id = $3")
            .bind(devices.microphone as i64)
            .bind(devices.clipboard as i64)
            .bind(tenant_id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
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
    /// Invites of `tenant_id` that can still be used at `now_ms`.
    pub async fn open_invites(&self, tenant_id: &str, now_ms: u64) -> Result<u32, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM invites WHERE tenant_id = $1 AND used_by IS NULL AND expires_at > $2",
        )
        .bind(tenant_id)
        .bind(now_ms as i64)
        .fetch_one(&mut *self.scoped(tenant_id).await?)
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u32)
    }

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
}

/// What a platform lets its players' devices bring into a game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// A player may turn their microphone on, and the game hears it (default on).
    pub microphone: bool,
    /// A player may paste into a native game's clipboard and copy from it (default on).
    pub clipboard: bool,
}
