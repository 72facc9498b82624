//! Who may do what to a session: the one place the REST API decides it.
//!
//! - The tenant is the first wall: every lookup is scoped by the caller's tenant, so
//!   another tenant's session is simply not found.
//! - A scope says what kind of call a credential may make at all. Signed-in players and
//!   guests hold `catalogue:read`, `sessions:read` and `sessions:write`; an API key holds
//!   the scopes it was created with; `admin` holds every scope.
//! - Ownership says which sessions: a player or guest acts only on sessions they own; an
//!   API key (a tenant's back end, acting for its users) and an admin act on any session
//!   of their tenant. A session someone may not touch answers 404, as if it did not exist.
//! - Watching is a capability of its own: a watch grant from the owner's share link admits
//!   anyone as a viewer, never as a player, until the owner revokes it; a session its
//!   owner made public admits anyone of its tenant as a viewer.
//!
//! `docs/api.md` has the route → scope table; `tests/authorization.rs` runs every route
//! against every kind of caller.

use axum::http::StatusCode;

use crate::api::ApiError;
use crate::auth::Principal;
use crate::store::SessionRecord;

/// What a caller wants to do to an existing session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAction {
    /// Read its state (`GET /sessions/{id}`).
    Read,
    /// Get a viewer ticket without a watch grant.
    Watch,
    /// Get a player ticket: to play, or to rejoin.
    Play,
    /// End it or leave the queue.
    End,
    /// Make or revoke its share link.
    Share,
}

impl SessionAction {
    /// The scope a credential needs for this action.
    pub fn scope(self) -> &'static str {
        match self {
            SessionAction::Read | SessionAction::Watch => "sessions:read",
            SessionAction::Play | SessionAction::End | SessionAction::Share => "sessions:write",
        }
    }
}

/// Refuses a credential that lacks `scope` (403).
pub fn require_scope(who: &Principal, scope: &str) -> Result<(), ApiError> {
    // sessions:write includes reading what one writes; starting or watching sessions
    // needs the catalogue.
    let implied = match scope {
        "sessions:read" => who.allows("sessions:write"),
        "catalogue:read" => who.allows("sessions:read") || who.allows("sessions:write"),
        _ => false,
    };
    if who.allows(scope) || implied {
        return Ok(());
    }
    Err(ApiError(StatusCode::FORBIDDEN, "forbidden", format!("this credential lacks the {scope} scope")))
}

/// Whether `who` may do `action` to `session` (already known to be of `who`'s tenant).
pub fn authorize(who: &Principal, session: &SessionRecord, action: SessionAction) -> Result<(), ApiError> {
    require_scope(who, action.scope())?;
    if who.tenant != session.tenant_id {
        return Err(ApiError::not_found("session"));
    }
    if who.allows("admin") || who.is_api_key() {
        return Ok(());
    }
    let owns = who.owner.as_deref().is_some_and(|owner| !owner.is_empty() && owner == session.owner);
    // A public session is watchable by anyone of its tenant, as a viewer only.
    if owns || (action == SessionAction::Watch && session.public) {
        Ok(())
    } else {
        Err(ApiError::not_found("session"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Credential;

    fn session(owner: &str) -> SessionRecord {
        SessionRecord {
            id: "s".into(),
            tenant_id: "t".into(),
            user_id: None,
            game_id: "g".into(),
            host_id: None,
            state: crate::store::SessionState::Placed,
            options: "{}".into(),
            idempotency_key: None,
            created_at_ms: 0,
            owner: owner.into(),
            public: false,
        }
    }

    fn caller(credential: Credential, scopes: &[&str], owner: Option<&str>) -> Principal {
        Principal {
            tenant: "t".into(),
            user: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            credential,
            owner: owner.map(String::from),
        }
    }

    const PLAYER: [&str; 3] = ["catalogue:read", "sessions:read", "sessions:write"];
    const ACTIONS: [SessionAction; 5] = [
        SessionAction::Read,
        SessionAction::Watch,
        SessionAction::Play,
        SessionAction::End,
        SessionAction::Share,
    ];

    #[test]
    fn owners_may_do_everything_and_others_nothing() {
        let owner = caller(Credential::Guest, &PLAYER, Some("guest:a"));
        let other = caller(Credential::Guest, &PLAYER, Some("guest:b"));
        let cookieless = caller(Credential::Guest, &PLAYER, None);
        for action in ACTIONS {
            assert!(authorize(&owner, &session("guest:a"), action).is_ok());
            assert_eq!(authorize(&other, &session("guest:a"), action).unwrap_err().0, StatusCode::NOT_FOUND);
            assert!(authorize(&cookieless, &session("guest:a"), action).is_err());
        }
    }

    #[test]
    fn a_session_without_an_owner_belongs_to_nobody_but_the_tenant() {
        let nobody = caller(Credential::Guest, &PLAYER, Some(""));
        assert!(authorize(&nobody, &session(""), SessionAction::Play).is_err());
        let admin = caller(Credential::Cookie, &["admin"], Some("user:x"));
        assert!(authorize(&admin, &session(""), SessionAction::Play).is_ok());
    }

    #[test]
    fn api_keys_need_the_matching_scope() {
        let reader = caller(Credential::ApiKey, &["catalogue:read"], Some("key:1"));
        for action in ACTIONS {
            assert_eq!(authorize(&reader, &session("user:u"), action).unwrap_err().0, StatusCode::FORBIDDEN);
        }
        let read_only = caller(Credential::ApiKey, &["sessions:read"], Some("key:2"));
        assert!(authorize(&read_only, &session("user:u"), SessionAction::Read).is_ok());
        assert!(authorize(&read_only, &session("user:u"), SessionAction::Watch).is_ok());
        assert!(authorize(&read_only, &session("user:u"), SessionAction::Play).is_err());
        assert!(authorize(&read_only, &session("user:u"), SessionAction::End).is_err());
        let writer = caller(Credential::ApiKey, &["sessions:write"], Some("key:3"));
        for action in ACTIONS {
            assert!(authorize(&writer, &session("user:u"), action).is_ok());
        }
    }

    #[test]
    fn another_tenant_is_never_authorized() {
        let mut admin = caller(Credential::ApiKey, &["admin"], Some("key:1"));
        admin.tenant = "other".into();
        assert_eq!(
            authorize(&admin, &session("user:u"), SessionAction::Read).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }
}
