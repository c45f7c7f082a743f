//! The token janitor (`tokens::janitor`): what is dead is deleted, what can
//! still be used — or still proves reuse — is kept whole.

use std::time::Duration;

use portcullis::tokens::janitor::{Purged, purge};

use crate::gateway::{gateway, service, standalone_token};
use crate::oauth::flow::{AuthRequest, Oidc, PASSWORD};
use crate::support::{Backend, eventually, raw_pool, unix_now};

backend_tests!(
    purge_removes_only_what_nothing_can_use,
    purge_drains_more_than_one_batch,
    janitor_runs_in_the_background,
    purge_removes_expired_login_challenges,
);

const TABLES: [&str; 5] = [
    "access_tokens",
    "refresh_tokens",
    "token_families",
    "authorization_codes",
    "authorization_requests",
];

/// Row counts of [`TABLES`], in that order.
async fn counts(oidc: &Oidc) -> [i64; 5] {
    let pool = raw_pool(&oidc.env.database_url()).await;
    let mut out = [0; 5];
    for (i, table) in TABLES.iter().enumerate() {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        out[i] = n;
    }
    pool.close().await;
    out
}

async fn purge_removes_only_what_nothing_can_use(backend: Backend) {
    let oidc = Oidc::start(backend).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let app = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;

    let cc = oidc
        .client_credentials(&svc, None)
        .await
        .str("access_token");
    // Family 1: rotated once, so it holds a used refresh token and a live one.
    let first = oidc.login_and_redeem(&app, "alice", "openid").await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    let rt2 = oidc.refresh(&app, &rt1).await.str("refresh_token");
    // Family 2: revoked by its client.
    let second = oidc.login_and_redeem(&app, "alice", "openid").await;
    let revoked_rt = second["refresh_token"].as_str().unwrap().to_string();
    let resp = oidc
        .http
        .post(oidc.url("/revoke"))
        .basic_auth(&app.id, app.secret.as_deref())
        .form(&[("token", revoked_rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A code never redeemed, and a request nobody signed in to.
    let browser = oidc.browser();
    let unredeemed = AuthRequest::new(&app, "openid");
    browser
        .authorize(&unredeemed, Some(("alice", PASSWORD)))
        .await
        .code();
    let pending = AuthRequest::new(&app, "openid");
    let page = oidc.browser().get(&pending.url(&oidc.issuer)).await;
    assert!(
        page.location().is_some_and(|l| l.contains("/login")),
        "sent to sign in: {} {:?}",
        page.status,
        page.location()
    );

    let before = counts(&oidc).await;
    // access: cc + 2 in family 1 + 1 in family 2; refresh: 2 + 1;
    // families 2; codes 3; requests 4.
    assert_eq!(before, [4, 3, 2, 3, 4], "{TABLES:?}");

    let store = oidc.env.store().await;
    // Nothing died a minute ago: nothing goes, the revoked family included
    // (it is kept `purge_after` beyond its revocation).
    assert_eq!(
        purge(&store, unix_now() - 60, unix_now()).await.unwrap(),
        Purged::default()
    );
    assert_eq!(counts(&oidc).await, before);

    // Past the access-token lifetime (10m) but well inside the refresh
    // token's (30d): every access token, the revoked family's refresh
    // token and code, the unredeemed code and every request go; family 1
    // stays whole, rotated token included.
    let purged = purge(&store, unix_now() + 11 * 60, unix_now())
        .await
        .unwrap();
    assert_eq!(
        purged,
        Purged {
            families: 1,
            access_tokens: 3,
            codes: 1,
            requests: 4,
            login_challenges: 0,
        }
    );
    assert_eq!(counts(&oidc).await, [0, 2, 2, 1, 0], "{TABLES:?}");
    // (Not introspected before, so no cached answer stands in for the row.)
    assert!(!oidc.is_active(&gw, &cc).await, "its row is gone");
    oidc.refresh(&app, &revoked_rt)
        .await
        .assert_error(400, "invalid_grant");
    // The rotated token of the kept family is still recognised as reuse:
    // presenting it revokes the live one.
    let reuse = oidc.refresh(&app, &rt1).await;
    reuse.assert_error(400, "invalid_grant");
    assert!(
        reuse.str("error_description").contains("already used"),
        "{}",
        reuse.str("error_description")
    );
    oidc.refresh(&app, &rt2)
        .await
        .assert_error(400, "invalid_grant");

    // Beyond the refresh lifetime every token and code is gone; a second
    // pass finds nothing more.
    let purged = purge(&store, unix_now() + 31 * 86_400, unix_now())
        .await
        .unwrap();
    assert_eq!(purged.families, 1);
    assert_eq!(counts(&oidc).await, [0, 0, 2, 0, 0], "{TABLES:?}");
    // The family rows stay, marked: they record which clients each
    // session gave tokens to (admin session view, back-channel logout).
    let pool = raw_pool(&oidc.env.database_url()).await;
    let families: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT session_id, purged_at FROM token_families")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    for (sid, purged_at) in families {
        assert!(purged_at.is_some());
        assert_eq!(
            portcullis::store::sessions::client_ids(&store, &sid)
                .await
                .unwrap(),
            vec!["shop".to_string()]
        );
    }
    assert_eq!(
        purge(&store, unix_now() + 31 * 86_400, unix_now())
            .await
            .unwrap(),
        Purged::default()
    );
}

/// More than one batch of expired access tokens, and old tokens that have
/// not expired yet (issued long ago with a long lifetime) survive.
async fn purge_drains_more_than_one_batch(backend: Backend) {
    use portcullis::tokens::AccessTokenRecord;

    let oidc = Oidc::start(backend).await;
    service(&oidc).await;
    let store = oidc.env.store().await;
    let now = unix_now();
    let record = |issued_at, expires_at| standalone_token("svc", issued_at, expires_at);
    let batch = usize::try_from(portcullis::store::tokens::PURGE_BATCH).unwrap();
    let expired = 2 * batch + 17;
    let mut records: Vec<(AccessTokenRecord, String)> = (0..expired)
        .map(|i| {
            let issued = now - 7200 + i as i64 % 600;
            (record(issued, issued + 600), format!("expired-{i}"))
        })
        .collect();
    // Issued two hours ago like the others, but valid for a day.
    records.push((record(now - 7200, now + 86_400), "long-lived".into()));
    for chunk in records.chunks(200) {
        let rows: Vec<_> = chunk.iter().map(|(r, h)| (r, h.as_str())).collect();
        portcullis::store::tokens::insert_access_batch(&store, &rows)
            .await
            .unwrap();
    }
    let purged = purge(&store, now, unix_now()).await.unwrap();
    assert_eq!(purged.access_tokens, expired as u64);
    assert_eq!(counts(&oidc).await[0], 1);
    assert!(
        portcullis::store::tokens::find_access(&store, "long-lived")
            .await
            .unwrap()
            .is_some()
    );
}

/// The server purges by itself every `tokens.purge_interval`, counting
/// what it deleted in `/metrics`, and leaves the refresh family usable.
async fn janitor_runs_in_the_background(backend: Backend) {
    let oidc = Oidc::start_with(
        backend,
        &[
            ("PORTCULLIS_TOKENS_ACCESS_TTL", "1s"),
            ("PORTCULLIS_TOKENS_PURGE_AFTER", "1s"),
            ("PORTCULLIS_TOKENS_PURGE_INTERVAL", "1s"),
        ],
    )
    .await;
    let svc = service(&oidc).await;
    let app = oidc.code_client("shop", "openid", &["--first-party"]).await;
    oidc.user("alice").await;
    oidc.client_credentials(&svc, None).await.ok();
    let tokens = oidc.login_and_redeem(&app, "alice", "openid").await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();

    assert!(
        eventually(Duration::from_secs(20), || async {
            counts(&oidc).await[0] == 0
        })
        .await,
        "expired access tokens were not purged: {:?}",
        counts(&oidc).await
    );
    let purged = oidc.metric("portcullis_tokens_purged_total").await.unwrap();
    assert!(purged >= 2.0, "{purged}");
    let pool = raw_pool(&oidc.env.database_url()).await;
    let (unpurged,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM token_families WHERE purged_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(unpurged, 1, "the live family stays whole");
    oidc.refresh(&app, &rt).await.ok();
}

/// Replicas sharing one PostgreSQL take turns: while one janitor holds the
/// purge lock (a transaction-level advisory lock), another one's pass
/// deletes nothing and fails nothing; once it is released, it purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_take_turns_purging() {
    use sqlx::Connection;

    let Some(backend) = Backend::postgres() else {
        return;
    };
    let oidc = Oidc::start(backend).await;
    service(&oidc).await;
    let store = oidc.env.store().await;
    let now = unix_now();
    let expired = standalone_token("svc", now - 7200, now - 6600);
    portcullis::store::tokens::insert_access_batch(&store, &[(&expired, "expired-1")])
        .await
        .unwrap();

    // The other replica, in the middle of a batch.
    let mut other = sqlx::AnyConnection::connect(&oidc.env.database_url())
        .await
        .unwrap();
    let mut other_tx = other.begin().await.unwrap();
    let (held,): (i32,) =
        sqlx::query_as("SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 1 ELSE 0 END")
            .bind(portcullis::store::tokens::PURGE_LOCK)
            .fetch_one(&mut *other_tx)
            .await
            .unwrap();
    assert_eq!(held, 1);
    assert_eq!(
        purge(&store, now, unix_now()).await.unwrap(),
        Purged::default()
    );
    assert_eq!(counts(&oidc).await[0], 1);

    other_tx.rollback().await.unwrap();
    assert_eq!(
        purge(&store, now, unix_now()).await.unwrap().access_tokens,
        1
    );
    assert_eq!(counts(&oidc).await[0], 0);
}

/// Login challenges (the second-factor step after a password) go once
/// expired `purge_after` ago, used or not; a live one stays usable.
async fn purge_removes_expired_login_challenges(backend: Backend) {
    use portcullis::store::mfa::{find_login_challenge, insert_login_challenge};

    let oidc = Oidc::start(backend).await;
    oidc.user("alice").await;
    let pool = raw_pool(&oidc.env.database_url()).await;
    let (alice,): (String,) = sqlx::query_as("SELECT id FROM users WHERE username = 'alice'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let store = oidc.env.store().await;
    let now = unix_now();
    // (hash, created, expires, used)
    let rows = [
        ("old-unused", now - 7200, now - 7000, false),
        ("old-used", now - 7200, now - 7000, true),
        ("recent", now - 900, now - 600, false),
        ("live", now, now + 300, false),
    ];
    for (hash, created, expires, used) in rows {
        insert_login_challenge(&store, hash, &alice, None, None, None, created, expires)
            .await
            .unwrap();
        if used {
            let mut tx = store.begin().await.unwrap();
            assert!(
                portcullis::store::mfa::consume_login_challenge(&mut tx, hash, created)
                    .await
                    .unwrap()
            );
            tx.commit().await.unwrap();
        }
    }
    let remaining = || async {
        let hashes: Vec<(String,)> =
            sqlx::query_as("SELECT secret_hash FROM login_challenges ORDER BY secret_hash")
                .fetch_all(&pool)
                .await
                .unwrap();
        hashes.into_iter().map(|(h,)| h).collect::<Vec<_>>()
    };

    // Kept an hour beyond expiry: only the two that died two hours ago go.
    let purged = purge(&store, now - 3600, now).await.unwrap();
    assert_eq!(purged.login_challenges, 2, "{purged:?}");
    assert_eq!(remaining().await, ["live", "recent"]);
    // A purged challenge cannot be redeemed, even at an instant when it
    // was still live: the row is gone, not just expired.
    let mut tx = store.begin().await.unwrap();
    assert!(
        !portcullis::store::mfa::consume_login_challenge(&mut tx, "old-unused", now - 7100)
            .await
            .unwrap(),
        "a purged challenge was redeemed"
    );
    tx.rollback().await.unwrap();
    assert!(
        find_login_challenge(&store, "live", now)
            .await
            .unwrap()
            .is_some(),
        "the live challenge still works"
    );

    // Once the live one has expired too, everything goes.
    let purged = purge(&store, now + 301, now).await.unwrap();
    assert_eq!(purged.login_challenges, 2, "{purged:?}");
    assert!(remaining().await.is_empty());
    pool.close().await;
}
