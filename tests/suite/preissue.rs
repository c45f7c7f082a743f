//! Issue 4, `tokens::preissue`: client-credentials tokens stored ahead of
//! demand for a bursting client are fresh, distinct, of the scope asked
//! for and accounted for row by row; and none of them outlives a
//! revocation of every token of its client, on the server that revoked
//! and on a replica that only hears of it through NOTIFY.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::gateway::{gateway, introspect, service};
use crate::oauth::flow::{Client, Oidc, metric_at};
use crate::oauth::staff::staff;
use crate::support::{Backend, eventually, unix_ms};

backend_tests!(
    held_tokens_are_fresh_distinct_and_of_the_scope_asked,
    revoking_every_token_of_a_client_reaches_tokens_held_ahead,
    a_staff_change_to_the_client_empties_its_pool,
);

const TTL_S: i64 = 600;
/// Bursts of requests from one client are the point here, so the token
/// endpoint's rate limits are off.
const ENV: [(&str, &str); 4] = [
    ("PORTCULLIS_TOKENS_PREISSUE", "64"),
    ("PORTCULLIS_TOKENS_ACCESS_TTL", "600s"),
    ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_IP", "0"),
    ("PORTCULLIS_RATE_LIMITS_TOKEN_PER_CLIENT", "0"),
];
const HELD: &str = "portcullis_token_preissue_held";
const HITS: &str = "portcullis_token_preissue_hits_total";
const PREISSUED: &str = "portcullis_token_preissued_total";
const DISCARDED: &str = "portcullis_token_preissue_discarded_total";
const ROWS: &str = "portcullis_token_batch_rows_total";

/// One value from the `/metrics` page at `metrics_url` (any replica).
async fn scrape(metrics_url: &str, name: &str) -> f64 {
    metric_at(metrics_url, name)
        .await
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// A client-credentials token for `scope` from the server at `base`;
/// asserts 200 and returns the token response.
async fn issue(http: &reqwest::Client, base: &str, client: &Client, scope: &str) -> Value {
    let resp = http
        .post(format!("{base}/token"))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Asks back to back (a burst) until the server at `base` holds tokens
/// for `client` and `scope`, then until no refill is still landing; the
/// tokens handed out meanwhile and the number held.
async fn warm(base: &str, client: &Client, scope: &str) -> (Vec<String>, f64) {
    let http = reqwest::Client::new();
    let metrics = format!("{base}/metrics");
    let mut issued = Vec::new();
    for _ in 0..100 {
        for _ in 0..5 {
            let body = issue(&http, base, client, scope).await;
            issued.push(body["access_token"].as_str().unwrap().to_string());
        }
        if scrape(&metrics, HELD).await > 0.0 {
            break;
        }
    }
    let mut held = scrape(&metrics, HELD).await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = scrape(&metrics, HELD).await;
        if now == held {
            break;
        }
        held = now;
    }
    assert!(
        held > 0.0,
        "a burst of {} requests left nothing held",
        issued.len()
    );
    (issued, held)
}

/// Every request gets its own token, of the scope it asked for, as fresh as
/// promised (`iat` at most 1 s early, `expires_in` at most 1 s short);
/// and every stored row is either a token handed out directly or one
/// stored ahead: rows = direct + pre-issued, pre-issued = hits + discarded
/// + held.
async fn held_tokens_are_fresh_distinct_and_of_the_scope_asked(backend: Backend) {
    let oidc = Oidc::start_with(backend, &ENV).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let metrics = oidc.url("/metrics");
    let rows_before = scrape(&metrics, ROWS).await;
    // Two scopes interleaved: a pool that mixed them up would show.
    let scopes = ["api", "read write"];
    let mut issued = Vec::new();
    for i in 0..600 {
        let scope = scopes[i % 2];
        let before_ms = unix_ms();
        let body = issue(&oidc.http, &oidc.issuer, &svc, scope).await;
        let after_ms = unix_ms();
        issued.push((scope, body, before_ms, after_ms));
        if i % 20 == 19 && scrape(&metrics, HITS).await >= 60.0 {
            break;
        }
    }
    let hits = scrape(&metrics, HITS).await;
    assert!(
        hits >= 60.0,
        "{} back-to-back requests, {hits} served from tokens stored ahead",
        issued.len()
    );

    let distinct: std::collections::HashSet<_> = issued
        .iter()
        .map(|(_, b, _, _)| b["access_token"].to_string())
        .collect();
    assert_eq!(
        distinct.len(),
        issued.len(),
        "every request gets its own token"
    );
    for (scope, body, before_ms, after_ms) in &issued {
        assert_eq!(body["scope"], *scope, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        let expires_in = body["expires_in"].as_i64().unwrap();
        assert!(
            (TTL_S - 1..=TTL_S).contains(&expires_in),
            "expires_in {expires_in} for a {TTL_S} s lifetime"
        );
        let token = body["access_token"].as_str().unwrap();
        let claims = introspect(&oidc, &gw, token).await;
        assert_eq!(claims["active"], true, "{claims}");
        assert_eq!(claims["client_id"], svc.id.as_str());
        assert_eq!(claims["scope"], *scope, "{claims}");
        let iat = claims["iat"].as_i64().unwrap();
        assert!(
            (before_ms / 1000 - 1..=after_ms / 1000).contains(&iat),
            "iat {iat}, asked at {before_ms} ms, answered at {after_ms} ms"
        );
        assert_eq!(claims["exp"].as_i64().unwrap() - iat, TTL_S);
    }

    // A refill may still be committing: the books balance once it lands.
    let balanced = eventually(Duration::from_secs(10), || async {
        let rows = scrape(&metrics, ROWS).await - rows_before;
        let hits = scrape(&metrics, HITS).await;
        let preissued = scrape(&metrics, PREISSUED).await;
        let discarded = scrape(&metrics, DISCARDED).await;
        let held = scrape(&metrics, HELD).await;
        rows == issued.len() as f64 - hits + preissued && preissued == hits + discarded + held
    })
    .await;
    assert!(
        balanced,
        "stored rows do not add up to tokens handed out and held"
    );
}

/// `POST {admin}/admin/api/clients/{id}{action}` with `body` as
/// `staff_token`; asserts 200 and returns the response.
async fn staff_post(
    admin: &str,
    staff_token: &str,
    client: &Client,
    action: &str,
    body: Value,
) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{admin}/admin/api/clients/{}{action}", client.id))
        .bearer_auth(staff_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Revokes every token of `client` through the admin API on `admin`: the
/// number of tokens it revoked.
async fn revoke_all(admin: &str, staff_token: &str, client: &Client) -> i64 {
    let why = json!({"reason": "client breach", "ticket_id": "SEC-42"});
    staff_post(admin, staff_token, client, "/tokens/revoke", why).await["revoked"]
        .as_i64()
        .unwrap()
}

/// A server with pre-issue on, its gateway and service clients, a
/// security admin's token, and where its metrics and admin API are.
struct Desk {
    oidc: Oidc,
    gw: Client,
    svc: Client,
    sec: String,
    metrics: String,
    admin: String,
}

async fn desk(backend: Backend) -> Desk {
    let oidc = Oidc::start_with(backend, &ENV).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let ui = oidc
        .code_client("console", "openid", &["--first-party"])
        .await;
    let sec = staff(&oidc, &ui, "sec", &["security_admin"])
        .await
        .access_token;
    let metrics = oidc.url("/metrics");
    let admin = oidc.server.admin_url("");
    Desk {
        oidc,
        gw,
        svc,
        sec,
        metrics,
        admin,
    }
}

/// A staff update that takes a scope away, and a secret rotation, each
/// empty the pool before they answer: no token held from before is handed
/// out for a scope the client lost or to a caller with the old secret,
/// and the client's next tokens (new scope, new secret) are live.
async fn a_staff_change_to_the_client_empties_its_pool(backend: Backend) {
    let Desk {
        oidc,
        gw,
        svc,
        sec,
        metrics,
        admin,
    } = desk(backend).await;
    let token_of = |body: &Value| body["access_token"].as_str().unwrap().to_string();

    // Scope "api" taken away while tokens for it are held.
    warm(&oidc.issuer, &svc, "api").await;
    let discarded_before = scrape(&metrics, DISCARDED).await;
    let held = scrape(&metrics, HELD).await;
    let update = json!({
        "redirect_uris": [],
        "scopes": ["read", "write"],
        "reason": "least privilege",
        "ticket_id": "SEC-43",
    });
    staff_post(&admin, &sec, &svc, "", update).await;
    assert_eq!(scrape(&metrics, HELD).await, 0.0, "update: pool emptied");
    assert!(scrape(&metrics, DISCARDED).await - discarded_before >= held);
    let refused = oidc.client_credentials(&svc, Some("api")).await;
    refused.assert_error(400, "invalid_scope");
    let read = issue(&oidc.http, &oidc.issuer, &svc, "read").await;
    assert!(oidc.is_active(&gw, &token_of(&read)).await);

    // Secret rotated while tokens for "read" are held.
    warm(&oidc.issuer, &svc, "read").await;
    let why = json!({"reason": "secret in a log", "ticket_id": "SEC-44"});
    let rotated = staff_post(&admin, &sec, &svc, "/secret/rotate", why).await;
    assert_eq!(scrape(&metrics, HELD).await, 0.0, "rotation: pool emptied");
    oidc.client_credentials(&svc, Some("read"))
        .await
        .assert_error(401, "invalid_client");
    let svc = Client {
        secret: Some(rotated["client_secret"].as_str().unwrap().to_string()),
        ..svc
    };
    let body = issue(&oidc.http, &oidc.issuer, &svc, "read").await;
    assert_eq!(body["scope"], "read");
    assert!(oidc.is_active(&gw, &token_of(&body)).await);
}

/// Incident response while the client is bursting: tokens stored ahead
/// before the revocation die with the rest and are never handed out
/// afterwards; every request that starts after the revocation answered
/// gets a live token. Once quiet, the revocation empties the pool before it
/// answers.
async fn revoking_every_token_of_a_client_reaches_tokens_held_ahead(backend: Backend) {
    let Desk {
        oidc,
        gw,
        svc,
        sec,
        metrics,
        admin,
    } = desk(backend).await;

    let (old, held) = warm(&oidc.issuer, &svc, "api").await;
    let revoked = revoke_all(&admin, &sec, &svc).await;
    assert_eq!(
        scrape(&metrics, HELD).await,
        0.0,
        "the pool is empty at once"
    );
    assert!(
        revoked as f64 >= old.len() as f64 + held,
        "{revoked} revoked: {} handed out and {held} held were live",
        old.len()
    );
    for token in &old {
        assert!(
            !oidc.is_active(&gw, token).await,
            "a token from before is dead"
        );
    }
    let fresh = issue(&oidc.http, &oidc.issuer, &svc, "api").await;
    assert!(
        oidc.is_active(&gw, fresh["access_token"].as_str().unwrap())
            .await
    );

    // Again, with four callers bursting through the revocation.
    let (_, _) = warm(&oidc.issuer, &svc, "api").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, seen, svc, base) =
            (stop.clone(), seen.clone(), svc.clone(), oidc.issuer.clone());
        callers.spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let body = issue(&http, &base, &svc, "api").await;
                let token = body["access_token"].as_str().unwrap().to_string();
                seen.lock().unwrap().push((asked, token));
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits_before = scrape(&metrics, HITS).await;
    revoke_all(&admin, &sec, &svc).await;
    let answered = Instant::now();
    let hits_at_revocation = scrape(&metrics, HITS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    assert!(
        hits_at_revocation > hits_before,
        "the burst was served from the pool"
    );
    assert!(
        scrape(&metrics, HITS).await > hits_at_revocation,
        "the pool refilled after the revocation"
    );
    let seen = seen.lock().unwrap().clone();
    let after: Vec<_> = seen.iter().filter(|(asked, _)| *asked > answered).collect();
    assert!(
        after.len() >= 10,
        "{} requests after the revocation",
        after.len()
    );
    for (_, token) in after {
        assert!(
            oidc.is_active(&gw, token).await,
            "a token asked for after the revocation answered is dead: it was held from before"
        );
    }
}

/// Two replicas on one PostgreSQL database: B holds tokens for a bursting
/// client; a revocation of all its tokens through A empties B's pool with
/// no request to B (only the NOTIFY can tell it), and B's next token is
/// live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_through_one_replica_empties_the_pool_of_the_other() {
    let Some(pg) = Backend::postgres() else {
        return;
    };
    let a = Oidc::start_with(pg, &ENV).await;
    let gw = gateway(&a).await;
    let svc = service(&a).await;
    let ui = a.code_client("console", "openid", &["--first-party"]).await;
    let sec = staff(&a, &ui, "sec", &["security_admin"]).await;
    let b = a.replica(&ENV).await;
    let b_base = b.url("");
    let b_metrics = b.url("/metrics");

    let (old, held) = warm(&b_base, &svc, "api").await;
    let discarded_before = scrape(&b_metrics, DISCARDED).await;
    assert_eq!(
        scrape(&a.url("/metrics"), HELD).await,
        0.0,
        "A was not asked"
    );
    revoke_all(&a.server.admin_url(""), &sec.access_token, &svc).await;
    let emptied = eventually(Duration::from_secs(10), || async {
        scrape(&b_metrics, HELD).await == 0.0
    })
    .await;
    assert!(
        emptied,
        "replica B still holds tokens from before the revocation"
    );
    assert!(scrape(&b_metrics, DISCARDED).await - discarded_before >= held);
    for token in &old {
        assert!(!a.is_active(&gw, token).await);
    }
    let fresh = issue(&reqwest::Client::new(), &b_base, &svc, "api").await;
    assert!(
        a.is_active(&gw, fresh["access_token"].as_str().unwrap())
            .await
    );
    b.stop().await;
}

/// The revocation listener's connection dies (a failover, a killed
/// backend): until it listens again this replica could miss a client
/// change made elsewhere, so it drops what it holds at once — with no
/// request to it, since held tokens are only aged out by a request — and
/// serves again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_revocation_listener_empties_the_pool() {
    let Some(Backend::Postgres(admin)) = Backend::postgres() else {
        return;
    };
    let oidc = Oidc::start_with(Backend::Postgres(admin.clone()), &ENV).await;
    let gw = gateway(&oidc).await;
    let svc = service(&oidc).await;
    let metrics = oidc.url("/metrics");
    let (_, held) = warm(&oidc.issuer, &svc, "api").await;
    let discarded_before = scrape(&metrics, DISCARDED).await;

    let killed = oidc
        .env
        .terminate_backends(&admin, "query ILIKE 'LISTEN%'")
        .await;
    assert_eq!(killed, 1, "one revocation listener per server");

    let emptied = eventually(Duration::from_secs(10), || async {
        scrape(&metrics, HELD).await == 0.0
    })
    .await;
    assert!(emptied, "tokens still held after the listener was lost");
    assert!(scrape(&metrics, DISCARDED).await - discarded_before >= held);
    // Listening again (the listener reconnects): the pool fills again.
    let (fresh, _) = warm(&oidc.issuer, &svc, "api").await;
    assert!(oidc.is_active(&gw, fresh.last().unwrap()).await);
}
