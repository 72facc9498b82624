//! One storage test suite, run against embedded SQLite and against PostgreSQL.
//! PostgreSQL runs when `CLOUDPLAY_TEST_POSTGRES_URL` is set (CI sets it); each test gets
//! its own schema. Without it the PostgreSQL cases say so and pass, except under CI.

use std::sync::Arc;

use cloudplay_control::store::{
    CatalogueGame, HostRegistration, MAX_CHANNELS_PER_CREATOR, Moment, MomentQuota, SaveKind, SavePolicy,
    SavePrecondition, Store, StoreError, Tenant, Tier,
};

const NOW: u64 = 1_800_000_000_000;

/// A session of `tenant` waiting in its queue, as `POST /sessions` stores it first.
fn queued(tenant: &str, id: String) -> cloudplay_control::store::SessionRecord {
    cloudplay_control::store::SessionRecord {
        id,
        tenant_id: tenant.into(),
        user_id: None,
        game_id: "g".into(),
        host_id: None,
        state: cloudplay_control::store::SessionState::Queued,
        options: "{}".into(),
        idempotency_key: None,
        created_at_ms: NOW,
        owner: "guest:abc".into(),
        public: false,
    }
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: id.to_uppercase(),
        brand_color: "#00e6ff".into(),
        logo_url: String::new(),
        max_rtt_ms: 80,
    }
}

async fn sqlite() -> Option<Store> {
    Some(Store::connect("sqlite::memory:").await.expect("in-memory SQLite"))
}

/// A file database with a real connection pool, for the concurrency case.
async fn sqlite_file() -> Option<Store> {
    let path = std::env::temp_dir().join(format!("cloudplay-test-{}.db", cloudplay_control::random_id()));
    Some(Store::connect(&format!("sqlite://{}", path.display())).await.expect("SQLite file"))
}

async fn postgres() -> Option<Store> {
    let Ok(base) = std::env::var("CLOUDPLAY_TEST_POSTGRES_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set CLOUDPLAY_TEST_POSTGRES_URL");
        eprintln!("SKIPPED: CLOUDPLAY_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("t_{}", cloudplay_control::random_id());
    let url = Store::postgres_schema_url(&base, &schema).await.expect("PostgreSQL reachable");
    Some(Store::connect(&url).await.expect("PostgreSQL store"))
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(store) = super::sqlite().await { super::$name(store).await }
            })*
        }
        mod on_sqlite_file {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(store) = super::sqlite_file().await { super::$name(store).await }
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(store) = super::postgres().await { super::$name(store).await }
            })*
        }
    };
}

suite!(
    tenants_and_users_are_isolated,
    api_keys_are_hashed_scoped_and_revocable,
    catalogue_and_entitlements,
    crossplay_agreements_bind_their_two_tenants_only,
    saves_are_versioned_conditional_and_within_quota,
    fleet_leases_and_slots,
    the_last_slot_goes_to_exactly_one_of_a_hundred,
    channels_belong_to_their_creator_and_carry_one_broadcast,
    moments_stay_within_their_quotas_even_when_captured_at_once,
    per_owner_limits_hold_under_concurrent_requests,
    a_host_reaches_only_sessions_it_runs_or_just_ended,
    a_tenants_share_holds_when_its_players_arrive_at_once,
);

/// What a host may commit saves for: a session placed on it, or one that ended there a
/// moment ago — not another host's, and not one that ended long before.
async fn a_host_reaches_only_sessions_it_runs_or_just_ended(store: Store) {
    use cloudplay_control::store::{SessionRecord, SessionState};
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    let session = SessionRecord {
        id: "s1".into(),
        tenant_id: "acme".into(),
        user_id: None,
        game_id: "g".into(),
        host_id: Some("host-a".into()),
        state: SessionState::Placed,
        options: "{}".into(),
        idempotency_key: None,
        created_at_ms: NOW,
        owner: "guest:abc".into(),
        public: false,
    };
    store.insert_session(&session, None).await.unwrap();
    let far_future = cloudplay_control::unix_ms() + 3_600_000;
    assert!(store.session_on_host("host-a", "s1", far_future).await.is_ok(), "running: always");
    assert!(matches!(store.session_on_host("host-b", "s1", 0).await, Err(StoreError::NotFound)));
    assert!(store.set_session_state("acme", "s1", SessionState::Placed, SessionState::Ended).await.unwrap());
    let a_minute_ago = cloudplay_control::unix_ms() - 60_000;
    assert!(store.session_on_host("host-a", "s1", a_minute_ago).await.is_ok(), "ended just now");
    let ended_before = store.session_on_host("host-a", "s1", far_future).await;
    assert!(
        matches!(ended_before, Err(StoreError::NotFound)),
        "ended before the grace began: {ended_before:?}"
    );
}

/// Twenty requests at once for one owner: exactly the limit's worth of channels and of
/// live sessions are made (the check and the insert are one step on both databases).
async fn per_owner_limits_hold_under_concurrent_requests(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    let cleo = store.create_user("acme", "cleo@acme.io", "password123", "Cleo", false, NOW).await.unwrap();
    store.set_creator("acme", &cleo.id, false, NOW).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, owner) = (store.clone(), cleo.id.clone());
            tokio::spawn(async move {
                store.create_channel("acme", &owner, &format!("c{i}"), "t", "h", NOW).await.is_ok()
            })
        })
        .collect();
    let mut made = 0;
    for task in tasks {
        made += task.await.unwrap() as u32;
    }
    assert_eq!(made, MAX_CHANNELS_PER_CREATOR, "channels of one creator");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                match store.insert_session(&queued("acme", format!("s{i}")), Some(2)).await {
                    Ok(()) => true,
                    Err(StoreError::QuotaFull(_)) => false,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let mut live = 0;
    for task in tasks {
        live += task.await.unwrap() as u32;
    }
    assert_eq!(live, 2, "live sessions of one owner");
}

/// Twelve of one tenant's queued sessions placed at once on a roomy host while another
/// tenant's player waits: exactly the share's worth are placed (the share's check, the
/// slot and the session's state are one step), every other is told to wait, and the host
/// counts only the placed ones.
async fn a_tenants_share_holds_when_its_players_arrive_at_once(store: Store) {
    use cloudplay_control::store::Placing;
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    let registration = HostRegistration {
        id: "big".into(),
        region: "eu".into(),
        endpoint: "http://big".into(),
        capacity: 20,
        runtimes: vec![],
    };
    store.register_host(&registration, NOW, 60_000).await.unwrap();
    store.insert_session(&queued("globex", "waiting".into()), None).await.unwrap();
    for i in 0..12 {
        store.insert_session(&queued("acme", format!("s{i}")), None).await.unwrap();
    }
    let store = Arc::new(store);
    const SHARE: u32 = 3;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.place_session("acme", &format!("s{i}"), "big", SHARE, NOW).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let placed = outcomes.iter().filter(|o| **o == Placing::Placed).count() as u32;
    assert_eq!(placed, SHARE, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Placing::Placed | Placing::OverShare)), "{outcomes:?}");
    assert_eq!(store.fleet(NOW).await.unwrap()[0].used, SHARE, "no slot claimed for a refused placement");
    // Placing one twice does nothing the second time, and leaves the slot free.
    let again = store.place_session("globex", "waiting", "big", SHARE, NOW).await.unwrap();
    assert_eq!(again, Placing::Placed);
    let twice = store.place_session("globex", "waiting", "big", SHARE, NOW).await.unwrap();
    assert_eq!(twice, Placing::NotQueued);
    assert_eq!(store.fleet(NOW).await.unwrap()[0].used, SHARE + 1);
}

fn moment(id: &str, bytes: usize, expires_at_ms: u64) -> Moment {
    let data = vec![7u8; bytes];
    Moment {
        id: id.into(),
        game: "g".into(),
        sha256: cloudplay_control::store::sha256_hex(&data),
        data,
        session_id: "s".into(),
        expires_at_ms,
    }
}

async fn moments_stay_within_their_quotas_even_when_captured_at_once(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    let quota = MomentQuota { per_owner: 3, bytes_per_owner: 10_000, bytes_per_tenant: 16_000 };
    let later = NOW + 60_000;
    // Twenty captures by one player at once: exactly three are kept.
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_moment("acme", "user:ann", &moment(&format!("a{i}"), 1000, later), quota, NOW)
                    .await
            })
        })
        .collect();
    let mut kept = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => kept += 1,
            Err(StoreError::QuotaFull(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(kept, 3, "the count quota holds under concurrent captures");
    // Bytes per owner: 3 kept of 1000, one more of 7001 would make 10 001.
    let bob = |id: &str, bytes| moment(id, bytes, later);
    store.create_moment("acme", "user:bob", &bob("b1", 9000), quota, NOW).await.unwrap();
    let over = store.create_moment("acme", "user:bob", &bob("b2", 1001), quota, NOW).await;
    assert!(matches!(over, Err(StoreError::QuotaFull(_))), "{over:?}");
    // Bytes per tenant: 12 000 kept; 4001 more is over 16 000, for anyone of the tenant.
    let over = store.create_moment("acme", "user:cy", &bob("c1", 4001), quota, NOW).await;
    assert!(matches!(over, Err(StoreError::QuotaFull(_))), "{over:?}");
    store.create_moment("globex", "user:cy", &bob("g1", 4001), quota, NOW).await.unwrap();
    // Expired moments no longer count, and the sweep removes them.
    let after = later + 1;
    store
        .create_moment("acme", "user:ann", &moment("a-new", 1000, after + 60_000), quota, after)
        .await
        .unwrap();
    assert!(matches!(store.moment("acme", "a0", after).await, Err(StoreError::NotFound)));
    store.create_moment("globex", "user:dee", &moment("g2", 10, later), quota, NOW).await.unwrap();
    assert_eq!(store.sweep_moments(after).await.unwrap(), 2, "globex's two expired moments");
}

async fn channels_belong_to_their_creator_and_carry_one_broadcast(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    let cleo = store.create_user("acme", "cleo@acme.io", "password123", "Cleo", false, NOW).await.unwrap();
    assert_eq!(store.creator_standing("acme", &cleo.id).await.unwrap(), None);
    assert!(matches!(store.set_creator("globex", &cleo.id, false, NOW).await, Err(StoreError::NotFound)));
    store.set_creator("acme", &cleo.id, false, NOW).await.unwrap();
    assert_eq!(store.creator_standing("acme", &cleo.id).await.unwrap(), Some(true));
    assert_eq!(store.creator_standing("globex", &cleo.id).await.unwrap(), None, "a standing is its tenant's");

    let channel = store.create_channel("acme", &cleo.id, "c1", "Cleo live", "hash-1", NOW).await.unwrap();
    assert_eq!((channel.owner_name.as_str(), channel.broadcast_id.as_deref()), ("Cleo", None));
    for i in 2..=MAX_CHANNELS_PER_CREATOR {
        store.create_channel("acme", &cleo.id, &format!("c{i}"), "more", "h", NOW).await.unwrap();
    }
    let over = store.create_channel("acme", &cleo.id, "c-over", "one too many", "h", NOW).await;
    assert!(matches!(over, Err(StoreError::TooLarge(_))), "{over:?}");
    assert!(matches!(store.channel("globex", "c1").await, Err(StoreError::NotFound)), "another tenant's");
    assert_eq!(store.channel_for_publishing("c1").await.unwrap().1, "hash-1");

    // One broadcast at a time: of two publishers claiming at once, one wins.
    let (a, b) = tokio::join!(
        store.claim_channel("acme", "c1", "b-1", "host-a", NOW),
        store.claim_channel("acme", "c1", "b-2", "host-a", NOW),
    );
    assert!(a.unwrap() ^ b.unwrap(), "exactly one claim wins");
    assert!(!store.claim_channel("globex", "c1", "b-3", "host-a", NOW).await.unwrap(), "not across tenants");
    let live = store.live_channels("acme", 10).await.unwrap();
    assert_eq!(live.len(), 1);
    let on_air = live[0].broadcast_id.clone().unwrap();
    assert!(store.live_channels("globex", 10).await.unwrap().is_empty());
    // Releasing another broadcast than the one on the air changes nothing.
    store.release_channel("acme", "c1", "b-old").await.unwrap();
    assert_eq!(store.channel("acme", "c1").await.unwrap().broadcast_id.as_deref(), Some(on_air.as_str()));
    store.release_channel("acme", "c1", &on_air).await.unwrap();
    assert!(store.live_channels("acme", 10).await.unwrap().is_empty());

    store.set_channel_key("acme", "c1", "hash-2").await.unwrap();
    assert_eq!(store.channel_for_publishing("c1").await.unwrap().1, "hash-2");
    assert!(matches!(store.set_channel_key("globex", "c1", "x").await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete_channel("globex", "c1").await, Err(StoreError::NotFound)));
    store.delete_channel("acme", "c1").await.unwrap();
    assert_eq!(store.channels_of("acme", &cleo.id).await.unwrap().len() as u32, MAX_CHANNELS_PER_CREATOR - 1);
    store.set_creator("acme", &cleo.id, true, NOW).await.unwrap();
    assert_eq!(store.creator_standing("acme", &cleo.id).await.unwrap(), Some(false), "banned");
}

async fn tenants_and_users_are_isolated(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    assert!(matches!(store.create_tenant(&tenant("acme"), NOW).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.create_tenant(&tenant("Bad Id"), NOW).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.tenant("acme").await.unwrap().max_rtt_ms, 80);

    let alice =
        store.create_user("acme", "Alice@Example.com", "correct horse", "Alice", false, NOW).await.unwrap();
    assert_eq!(alice.email, "alice@example.com");
    assert!(store.verify_password("acme", "alice@example.com", "correct horse").await.unwrap().is_some());
    assert!(store.verify_password("acme", "alice@example.com", "wrong horse!").await.unwrap().is_none());
    // The same address is a different account in another tenant, and passwords do not cross.
    assert!(store.verify_password("globex", "alice@example.com", "correct horse").await.unwrap().is_none());
    store.create_user("globex", "alice@example.com", "another pass", "Alice G", false, NOW).await.unwrap();
    let again = store.create_user("acme", "alice@example.com", "whatever12", "A", false, NOW).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    assert!(matches!(
        store.create_user("acme", "nobody", "whatever12", "A", false, NOW).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_user("acme", "b@x.io", "short", "B", false, NOW).await,
        Err(StoreError::Invalid(_))
    ));

    // Another tenant's id is indistinguishable from an id that does not exist.
    assert!(matches!(store.user("globex", &alice.id).await, Err(StoreError::NotFound)));
    assert!(matches!(store.user("acme", "no-such-id").await, Err(StoreError::NotFound)));
    assert_eq!(store.user("acme", &alice.id).await.unwrap(), alice);

    for i in 0..5 {
        store.create_user("acme", &format!("user{i}@acme.io"), "password123", "U", false, NOW).await.unwrap();
    }
    let first = store.users("acme", None, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = store.users("acme", Some(&first[2].email), 10).await.unwrap();
    assert_eq!(first.len() + rest.len(), 6);
    assert!(rest.iter().all(|u| u.tenant_id == "acme"));
}

async fn api_keys_are_hashed_scoped_and_revocable(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    let (key, secret) =
        store.create_api_key("acme", &["sessions:write", "catalogue:write"], NOW).await.unwrap();
    assert!(secret.starts_with(&key.prefix) && key.prefix.starts_with("cpk_"));
    let found = store.authenticate_api_key(&secret).await.unwrap().expect("valid key");
    assert_eq!((found.tenant_id.as_str(), found.scopes.len()), ("acme", 2));
    let mut wrong = secret.clone();
    wrong.push('x');
    assert!(store.authenticate_api_key(&wrong).await.unwrap().is_none());
    assert!(store.authenticate_api_key("").await.unwrap().is_none());
    assert!(store.authenticate_api_key("cpk_").await.unwrap().is_none());
    assert!(matches!(store.revoke_api_key("globex", &key.id, NOW).await, Err(StoreError::NotFound)));
    store.revoke_api_key("acme", &key.id, NOW).await.unwrap();
    assert!(store.authenticate_api_key(&secret).await.unwrap().is_none(), "revoked keys stop working");
}

async fn catalogue_and_entitlements(store: Store) {
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_tenant(&tenant("globex"), NOW).await.unwrap();
    let game = |id: &str, tier: Option<&str>| CatalogueGame {
        id: id.into(),
        title: id.to_uppercase(),
        description: String::new(),
        art_url: String::new(),
        runtime: r#"{"kind":"builtin","game":"neon-cycles"}"#.into(),
        required_tier: tier.map(String::from),
        max_players: 4,
        controls: vec!["Steer: arrows".into()],
        crossplay_key: Some("neon-cycles".into()),
    };
    store.put_game("acme", &game("free-game", None)).await.unwrap();
    store.put_game("acme", &game("premium-game", Some("premium"))).await.unwrap();
    store.put_game("globex", &game("their-game", None)).await.unwrap();
    assert_eq!(store.games("acme").await.unwrap().len(), 2);
    assert!(matches!(store.game("globex", "premium-game").await, Err(StoreError::NotFound)));

    store.put_tier("acme", &Tier { id: "basic".into(), name: "Basic".into(), rank: 1 }).await.unwrap();
    store.put_tier("acme", &Tier { id: "premium".into(), name: "Premium".into(), rank: 2 }).await.unwrap();
    store.put_tier("acme", &Tier { id: "ultimate".into(), name: "Ultimate".into(), rank: 3 }).await.unwrap();
    let bob = store.create_user("acme", "bob@acme.io", "password123", "Bob", false, NOW).await.unwrap();
    let premium = store.game("acme", "premium-game").await.unwrap();
    let free = store.game("acme", "free-game").await.unwrap();
    assert!(store.entitled("acme", None, &free, NOW).await.unwrap());
    assert!(!store.entitled("acme", None, &premium, NOW).await.unwrap());
    assert!(!store.entitled("acme", Some(&bob.id), &premium, NOW).await.unwrap());
    store.grant("acme", &bob.id, "basic", None).await.unwrap();
    assert!(!store.entitled("acme", Some(&bob.id), &premium, NOW).await.unwrap(), "basic is below premium");
    store.grant("acme", &bob.id, "ultimate", Some(NOW + 1_000)).await.unwrap();
    assert!(
        store.entitled("acme", Some(&bob.id), &premium, NOW).await.unwrap(),
        "a higher tier includes lower ones"
    );
    assert!(
        !store.entitled("acme", Some(&bob.id), &premium, NOW + 1_000).await.unwrap(),
        "entitlements expire"
    );
    // Another tenant can neither grant to this user nor see through.
    assert!(matches!(store.grant("globex", &bob.id, "basic", None).await, Err(StoreError::NotFound)));
}

async fn crossplay_agreements_bind_their_two_tenants_only(store: Store) {
    for id in ["acme", "globex", "initech"] {
        store.create_tenant(&tenant(id), NOW).await.unwrap();
    }
    let allowed = |a: &'static str, b: &'static str| {
        let store = store.clone();
        async move { store.crossplay_allowed(a, b, "neon-cycles").await.unwrap() }
    };
    assert!(!allowed("acme", "globex").await, "nothing crosses without an agreement");
    assert!(allowed("acme", "acme").await);
    assert!(matches!(
        store.offer_crossplay("acme", "acme", "neon-cycles", NOW).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.offer_crossplay("acme", "nobody", "neon-cycles", NOW).await,
        Err(StoreError::NotFound)
    ));

    let offer = store.offer_crossplay("acme", "globex", "neon-cycles", NOW).await.unwrap();
    assert!(!allowed("acme", "globex").await, "an offer is not an agreement");
    assert!(
        matches!(
            store.offer_crossplay("globex", "acme", "neon-cycles", NOW).await,
            Err(StoreError::Conflict(_))
        ),
        "one live agreement per pair and title, whoever offers"
    );
    // A third tenant sees nothing of it and can do nothing with it, as with a missing id.
    assert!(store.crossplay_agreements("initech").await.unwrap().is_empty());
    for result in [
        store.accept_crossplay("initech", &offer.id, NOW).await.map(|_| ()),
        store.revoke_crossplay("initech", &offer.id, NOW).await,
    ] {
        assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    }
    assert!(
        matches!(store.accept_crossplay("acme", &offer.id, NOW).await, Err(StoreError::Conflict(_))),
        "the offering side cannot accept its own offer"
    );
    let accepted = store.accept_crossplay("globex", &offer.id, NOW + 1).await.unwrap();
    assert_eq!((accepted.offered_by.as_str(), accepted.partner("globex")), ("acme", "acme"));
    assert!(allowed("acme", "globex").await && allowed("globex", "acme").await, "both ways");
    assert!(!store.crossplay_allowed("acme", "globex", "other-game").await.unwrap(), "that title only");
    assert!(!allowed("acme", "initech").await);
    assert_eq!(
        store.crossplay_agreements("acme").await.unwrap(),
        store.crossplay_agreements("globex").await.unwrap()
    );

    // Either side revokes, at once; then it can be offered anew.
    store.revoke_crossplay("globex", &offer.id, NOW + 2).await.unwrap();
    assert!(!allowed("acme", "globex").await);
    assert!(matches!(store.accept_crossplay("globex", &offer.id, NOW).await, Err(StoreError::Conflict(_))));
    store.revoke_crossplay("acme", &offer.id, NOW + 3).await.unwrap();
    store.offer_crossplay("globex", "acme", "neon-cycles", NOW + 4).await.unwrap();
    assert_eq!(store.crossplay_agreements("acme").await.unwrap().len(), 2);
    assert_eq!(store.tenant_name("globex").await.unwrap(), "GLOBEX");
}

async fn saves_are_versioned_conditional_and_within_quota(store: Store) {
    for id in ["acme", "globex"] {
        store.create_tenant(&tenant(id), NOW).await.unwrap();
    }
    let pat = store.create_user("acme", "pat@acme.io", "password123", "Pat", false, NOW).await.unwrap();
    let sam = store.create_user("acme", "sam@acme.io", "password123", "Sam", false, NOW).await.unwrap();
    let policy = SavePolicy { keep: 2, quota_bytes: 100 };
    let put = |user: &str, game: &'static str, expected, bytes: &'static [u8]| {
        let (store, user) = (store.clone(), user.to_string());
        async move { store.put_save("acme", &user, game, SaveKind::Sram, expected, bytes, policy, NOW).await }
    };
    use SavePrecondition::{None as Fresh, Version};
    assert_eq!(put(&pat.id, "zelda", Fresh, b"one").await.unwrap().version, 1);
    assert!(
        matches!(put(&pat.id, "zelda", Fresh, b"again").await, Err(StoreError::Stale(_))),
        "not a first save"
    );
    assert_eq!(put(&pat.id, "zelda", Version(1), b"two").await.unwrap().version, 2);
    // A writer that read version 1 loses: version 2 stays the newest.
    assert!(matches!(put(&pat.id, "zelda", Version(1), b"stale").await, Err(StoreError::Stale(_))));
    let (info, bytes) = store.save("acme", &pat.id, "zelda", SaveKind::Sram, None).await.unwrap();
    assert_eq!((info.version, bytes.as_slice()), (2, &b"two"[..]));
    assert_eq!(info.sha256, cloudplay_control::store::sha256_hex(b"two"));
    // Two versions kept: a third drops the first.
    put(&pat.id, "zelda", Version(2), b"three").await.unwrap();
    let versions: Vec<u64> = store.saves("acme", &pat.id).await.unwrap().iter().map(|s| s.version).collect();
    assert_eq!(versions, [3, 2]);
    assert!(matches!(
        store.save("acme", &pat.id, "zelda", SaveKind::Sram, Some(1)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.save("acme", &pat.id, "zelda", SaveKind::Sram, Some(2)).await.unwrap().1, b"two");

    // The quota counts every kept version; a version about to be dropped does not.
    static BIG: [u8; 95] = [7; 95];
    assert!(
        matches!(put(&pat.id, "metroid", Fresh, &BIG).await, Err(StoreError::TooLarge(_))),
        "8 + 95 > 100"
    );
    let just_one = SavePolicy { keep: 1, quota_bytes: 100 };
    let sram = SaveKind::Sram;
    store.put_save("acme", &sam.id, "metroid", sram, Fresh, &BIG, just_one, NOW).await.unwrap();
    let replaced =
        store.put_save("acme", &sam.id, "metroid", sram, Version(1), &BIG[..40], just_one, NOW).await;
    assert_eq!(replaced.unwrap().version, 2, "the 95 bytes it replaces do not count");
    // Nobody else reads them: another player, another tenant.
    assert!(store.saves("acme", &sam.id).await.unwrap().iter().all(|s| s.game == "metroid"));
    assert!(matches!(
        store.save("acme", &sam.id, "zelda", SaveKind::Sram, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.save("globex", &pat.id, "zelda", SaveKind::Sram, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.saves("globex", &pat.id).await.unwrap().is_empty());

    // Two sessions of one player write the same version at once: one wins, one is told.
    let policy = SavePolicy { keep: 5, quota_bytes: 1 << 20 };
    let write = |bytes: &'static [u8]| {
        let (store, user) = (store.clone(), pat.id.clone());
        async move { store.put_save("acme", &user, "zelda", SaveKind::Sram, Version(3), bytes, policy, NOW).await }
    };
    let (a, b) = tokio::join!(write(b"from host a"), write(b"from host b"));
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    assert!(matches!(a.err().or(b.err()), Some(StoreError::Stale(_))));
    store.delete_save("acme", &pat.id, "zelda", SaveKind::Sram, None).await.unwrap();
    assert!(matches!(
        store.delete_save("acme", &pat.id, "zelda", SaveKind::Sram, None).await,
        Err(StoreError::NotFound)
    ));
}

async fn fleet_leases_and_slots(store: Store) {
    let host = |id: &str, region: &str, capacity| HostRegistration {
        id: id.into(),
        region: region.into(),
        endpoint: format!("http://{id}"),
        capacity,
        runtimes: vec!["builtin".into()],
    };
    store.register_host(&host("h1", "eu", 2), NOW, 10_000).await.unwrap();
    store.register_host(&host("h2", "us", 1), NOW, 10_000).await.unwrap();
    assert_eq!(store.fleet(NOW).await.unwrap().len(), 2);
    assert!(store.claim_slot("h1", NOW).await.unwrap());
    assert!(store.claim_slot("h1", NOW).await.unwrap());
    assert!(!store.claim_slot("h1", NOW).await.unwrap(), "never over capacity");
    store.release_slot("h1").await.unwrap();
    assert!(store.claim_slot("h1", NOW).await.unwrap());
    assert!(!store.claim_slot("nope", NOW).await.unwrap());

    assert!(store.heartbeat("h1", NOW + 9_000, 10_000).await.unwrap());
    // h2 misses its heartbeat: after its lease it is drained and leaves the fleet.
    store.expire_leases(NOW + 12_000).await.unwrap();
    let fleet = store.fleet(NOW + 12_000).await.unwrap();
    assert_eq!(fleet.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["h1"]);
    assert!(!store.heartbeat("h2", NOW + 12_000, 10_000).await.unwrap());
    assert!(!store.claim_slot("h2", NOW + 12_000).await.unwrap());
    // It may register again and come back.
    store.register_host(&host("h2", "us", 1), NOW + 13_000, 10_000).await.unwrap();
    assert!(store.claim_slot("h2", NOW + 13_000).await.unwrap());
}

async fn the_last_slot_goes_to_exactly_one_of_a_hundred(store: Store) {
    let registration = HostRegistration {
        id: "solo".into(),
        region: "eu".into(),
        endpoint: "http://solo".into(),
        capacity: 1,
        runtimes: vec![],
    };
    store.register_host(&registration, NOW, 60_000).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_slot("solo", NOW).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        won += task.await.unwrap() as usize;
    }
    assert_eq!(won, 1);
    assert_eq!(store.fleet(NOW).await.unwrap()[0].used, 1);
}

/// PostgreSQL's row-level security, the second line of defence: every table with tenant
/// rows has it forced, with a policy (a new table without one fails here), and a
/// connection working for one tenant sees and writes that tenant's rows only, even with a
/// query that names no tenant at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_confines_every_tenant_table_to_its_tenant() {
    use sqlx::Row;
    let Ok(base) = std::env::var("CLOUDPLAY_TEST_POSTGRES_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set CLOUDPLAY_TEST_POSTGRES_URL");
        eprintln!("SKIPPED: CLOUDPLAY_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = format!("t_{}", cloudplay_control::random_id());
    let url = Store::postgres_schema_url(&base, &schema).await.unwrap();
    let store = Store::connect(&url).await.unwrap();
    for id in ["acme", "globex"] {
        store.create_tenant(&tenant(id), NOW).await.unwrap();
        store
            .create_user(id, &format!("pat@{id}.example"), "hunter2hunter2", "Pat", false, NOW)
            .await
            .unwrap();
        store.create_api_key(id, &["admin"], NOW).await.unwrap();
    }

    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    let role: String = sqlx::query("SELECT current_user::text AS r").fetch_one(&raw).await.unwrap().get("r");
    assert_eq!(
        role,
        cloudplay_control::store::TEST_ROLE,
        "tests run as an ordinary role, as deployments should"
    );

    // The meta-test: every table with tenant rows (a tenant_id column, a cross-play
    // agreement's two tenants, or tenants itself).
    let tables = sqlx::query(
        "SELECT c.relname::text AS name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, \
         EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND (c.relname = 'tenants' OR EXISTS \
         (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname IN ('tenant_id', 'offered_by') AND NOT a.attisdropped))",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    assert!(tables.len() >= 10, "found the tenant tables: {}", tables.len());
    for table in &tables {
        let name: String = table.get("name");
        let (enabled, forced, has_policy): (bool, bool, bool) =
            (table.get("enabled"), table.get("forced"), table.get("has_policy"));
        assert!(
            enabled && forced && has_policy,
            "{name}: row-level security enabled {enabled}, forced {forced}, policy {has_policy}"
        );
    }

    // A connection working for acme: queries that forget the tenant still see acme alone.
    let mut conn = raw.acquire().await.unwrap();
    sqlx::query("SELECT set_config('cloudplay.tenant', 'acme', false)").execute(&mut *conn).await.unwrap();
    for table in ["users", "api_keys", "tenants"] {
        let column = if table == "tenants" { "id" } else { "tenant_id" };
        let seen: Vec<String> = sqlx::query(&format!("SELECT DISTINCT {column}::text AS t FROM {table}"))
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("t"))
            .collect();
        assert_eq!(seen, ["acme"], "{table}");
    }
    let smuggled =
        sqlx::query("INSERT INTO tiers (tenant_id, id, name, rank) VALUES ('globex', 'gold', 'Gold', 1)")
            .execute(&mut *conn)
            .await;
    assert!(smuggled.is_err(), "a row for another tenant is refused");
    let moved = sqlx::query("UPDATE users SET tenant_id = 'globex'").execute(&mut *conn).await;
    assert!(moved.is_err(), "rows cannot be moved to another tenant");

    // A connection that never said whom it works for sees nothing.
    sqlx::query("SELECT set_config('cloudplay.tenant', '', false)").execute(&mut *conn).await.unwrap();
    let count: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&mut *conn).await.unwrap().get("n");
    assert_eq!(count, 0);
    drop(conn);
    raw.close().await;
    // And the store, working per tenant, still finds everything it should.
    assert_eq!(store.api_keys("globex").await.unwrap().len(), 1);
    assert!(store.verify_password("acme", "pat@acme.example", "hunter2hunter2").await.unwrap().is_some());
    Store::drop_postgres_schema(&base, &schema).await.unwrap();
}

/// Log-in timing says nothing about which emails have accounts: an unknown email costs a
/// password hash check too (without it: 0.3 ms against 24 ms). Medians of five, compared
/// loosely: both sides do the same Argon2 work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_take_as_long_as_known_ones() {
    let store = sqlite().await.unwrap();
    store.create_tenant(&tenant("acme"), NOW).await.unwrap();
    store.create_user("acme", "pat@acme.example", "hunter2hunter2", "Pat", false, NOW).await.unwrap();
    let median = |mut times: Vec<std::time::Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert!(store.verify_password("acme", "pat@acme.example", "wrong-password").await.unwrap().is_none());
        known.push(started.elapsed());
        let started = std::time::Instant::now();
        assert!(
            store.verify_password("acme", "nobody@acme.example", "wrong-password").await.unwrap().is_none()
        );
        unknown.push(started.elapsed());
    }
    let (known, unknown) = (median(known), median(unknown));
    assert!(unknown * 3 >= known, "unknown {unknown:?} vs known {known:?}");
}
