//! Lobbies: players gathered, possibly across tenants, to play one session. Looking a
//! lobby up by its code and listing its members cross tenants by nature, so those run as
//! the platform; the API checks membership and agreements before it shows or changes
//! anything.

use std::collections::BTreeMap;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LobbyState {
    /// Gathering members.
    Open,
    /// Its session has been started; members get tickets for it.
    Started,
}

impl LobbyState {
    fn as_str(self) -> &'static str {
        match self {
            LobbyState::Open => "open",
            LobbyState::Started => "started",
        }
    }

    fn parse(text: &str) -> Result<LobbyState, StoreError> {
        match text {
            "open" => Ok(LobbyState::Open),
            "started" => Ok(LobbyState::Started),
            other => Err(StoreError::Invalid(format!("unknown lobby state {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lobby {
    pub id: String,
    /// The owner's tenant: the session runs there.
    pub tenant_id: String,
    pub owner_user_id: String,
    /// The owner's tenant's catalogue entry.
    pub game_id: String,
    /// The game's cross-play title key; `None`: the owner's tenant only.
    pub title_key: Option<String>,
    /// What others join with.
    pub code: String,
    pub state: LobbyState,
    pub session_id: Option<String>,
    pub max_members: u8,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LobbyMember {
    pub tenant_id: String,
    pub user_id: String,
    pub display_name: String,
    /// What the member measured, milliseconds per region.
    pub rtt_ms: BTreeMap<String, u32>,
    /// 1 for the owner, then in order of joining.
    pub seat: u8,
    pub joined_at_ms: u64,
}

const LOBBY_COLUMNS: &str = "id, tenant_id, owner_user_id, game_id, title_key, code, state, session_id, max_members, created_at, expires_at";
const MEMBER_COLUMNS: &str = "tenant_id, user_id, display_name, rtt_ms, seat, joined_at";

fn lobby_from(row: &sqlx::any::AnyRow) -> Result<Lobby, StoreError> {
    Ok(Lobby {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        owner_user_id: row.try_get("owner_user_id")?,
        game_id: row.try_get("game_id")?,
        title_key: row.try_get("title_key")?,
        code: row.try_get("code")?,
        state: LobbyState::parse(&row.try_get::<String, _>("state")?)?,
        session_id: row.try_get("session_id")?,
        max_members: row.try_get::<i64, _>("max_members")?.clamp(1, 255) as u8,
        created_at_ms: row.try_get::<i64, _>("created_at")? as u64,
        expires_at_ms: row.try_get::<i64, _>("expires_at")? as u64,
    })
}

fn member_from(row: &sqlx::any::AnyRow) -> Result<LobbyMember, StoreError> {
    Ok(LobbyMember {
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        display_name: row.try_get("display_name")?,
        rtt_ms: serde_json::from_str(&row.try_get::<String, _>("rtt_ms")?).unwrap_or_default(),
        seat: row.try_get::<i64, _>("seat")?.clamp(0, 255) as u8,
        joined_at_ms: row.try_get::<i64, _>("joined_at")? as u64,
    })
}

async fn insert_member(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    lobby_id: &str,
    member: &LobbyMember,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO lobby_members (lobby_id, {MEMBER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(lobby_id)
    .bind(&member.tenant_id)
    .bind(&member.user_id)
    .bind(&member.display_name)
    .bind(serde_json::to_string(&member.rtt_ms).unwrap_or_else(|_| "{}".into()))
    .bind(member.seat as i64)
    .bind(member.joined_at_ms as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Opens `lobby` with its owner in seat 1.
    pub async fn create_lobby(&self, lobby: &Lobby, owner: &LobbyMember) -> Result<(), StoreError> {
        let mut tx = self.write_scoped(&lobby.tenant_id).await?;
        sqlx::query(&format!(
            "INSERT INTO lobbies ({LOBBY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&lobby.id)
        .bind(&lobby.tenant_id)
        .bind(&lobby.owner_user_id)
        .bind(&lobby.game_id)
        .bind(lobby.title_key.as_deref())
        .bind(&lobby.code)
        .bind(lobby.state.as_str())
        .bind(lobby.session_id.as_deref())
        .bind(lobby.max_members as i64)
        .bind(lobby.created_at_ms as i64)
        .bind(lobby.expires_at_ms as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, "lobby"))?;
        insert_member(&mut tx, &lobby.id, owner).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The lobby whose code is `code` (the platform's look-up: the code is what a player of
    /// any tenant holds).
    pub async fn lobby_by_code(&self, code: &str) -> Result<Lobby, StoreError> {
        let mut platform = self.platform().await?;
        let row = sqlx::query(&format!("SELECT {LOBBY_COLUMNS} FROM lobbies WHERE code = $1"))
            .bind(code)
            .fetch_optional(&mut *platform)
            .await?
            .ok_or(StoreError::NotFound)?;
        lobby_from(&row)
    }

    pub async fn lobby(&self, id: &str) -> Result<Lobby, StoreError> {
        let mut platform = self.platform().await?;
        let row = sqlx::query(&format!("SELECT {LOBBY_COLUMNS} FROM lobbies WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *platform)
            .await?
            .ok_or(StoreError::NotFound)?;
        lobby_from(&row)
    }

    /// The lobby's members, by seat.
    pub async fn lobby_members(&self, lobby_id: &str) -> Result<Vec<LobbyMember>, StoreError> {
        let mut platform = self.platform().await?;
        let rows = sqlx::query(&format!(
            "SELECT {MEMBER_COLUMNS} FROM lobby_members WHERE lobby_id = $1 ORDER BY seat"
        ))
        .bind(lobby_id)
        .fetch_all(&mut *platform)
        .await?;
        rows.iter().map(member_from).collect()
    }

    /// Adds `member` to an open lobby in the next seat and returns it; a member joining
    /// again keeps their seat. `NotFound` for a lobby that is not open or has expired;
    /// `Conflict` when it is full.
    pub async fn join_lobby(
        &self,
        lobby_id: &str,
        member: &LobbyMember,
        now_ms: u64,
    ) -> Result<LobbyMember, StoreError> {
        let mut tx = self.write().await?;
        let lobby = sqlx::query(&format!("SELECT {LOBBY_COLUMNS} FROM lobbies WHERE id = $1"))
            .bind(lobby_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)
            .and_then(|row| lobby_from(&row))?;
        if lobby.state != LobbyState::Open || lobby.expires_at_ms <= now_ms {
            return Err(StoreError::NotFound);
        }
        let rows = sqlx::query(&format!(
            "SELECT {MEMBER_COLUMNS} FROM lobby_members WHERE lobby_id = $1 ORDER BY seat"
        ))
        .bind(lobby_id)
        .fetch_all(&mut *tx)
        .await?;
        let members = rows.iter().map(member_from).collect::<Result<Vec<_>, _>>()?;
        if let Some(existing) =
            members.iter().find(|m| m.tenant_id == member.tenant_id && m.user_id == member.user_id)
        {
            return Ok(existing.clone());
        }
        if members.len() >= lobby.max_members as usize {
            return Err(StoreError::Conflict(format!("the lobby is full ({} players)", lobby.max_members)));
        }
        let seat = members.iter().map(|m| m.seat).max().unwrap_or(0).saturating_add(1);
        let joined = LobbyMember { seat, joined_at_ms: now_ms, ..member.clone() };
        insert_member(&mut tx, lobby_id, &joined).await?;
        tx.commit().await?;
        Ok(joined)
    }

    /// Marks an open lobby started with its session; `Conflict` if it was not open.
    pub async fn start_lobby(&self, lobby_id: &str, session_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE lobbies SET state = 'started', session_id = $1 WHERE id = $2 AND state = 'open'",
        )
        .bind(session_id)
        .bind(lobby_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict("the lobby has started already".into()));
        }
        tx.commit().await?;
        Ok(())
    }
}
