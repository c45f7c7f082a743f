//! Issue 8: the Leptos admin UI in a real headless Chromium. The browser
//! part is `tests/browser/admin_ui.mjs` (playwright-core driving Debian's
//! `/usr/bin/chromium`, TOTP codes from otplib); this test creates the
//! people, runs it against the real binary, and then checks from outside
//! the UI what the clicks did: the terminated user's token is inactive at
//! `/introspect`, the refund was approved by the other person, the forged
//! POST changed nothing, and the audit chain still verifies.
//!
//! `.ci/run` installs Chromium and the npm packages; run them yourself with
//! `apt-get install chromium` and `npm ci --prefix tests/browser`.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::oauth::flow::{Oidc, PASSWORD};
use crate::oauth::staff::enrol_totp;
use crate::support::Backend;

backend_tests!(staff_work_in_the_admin_ui_through_a_real_browser);

/// Seconds a second factor counts as fresh in this test (the default is 5
/// minutes; the browser waits this long to see the step-up prompt).
const STEP_UP_SECS: u64 = 15;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Chromium and the npm packages are there; otherwise a notice (an error
/// under `CI`, where `.ci/run` installs both).
fn browser_available() -> bool {
    let chromium = std::env::var("PC_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = repo_root().join("tests/browser/node_modules/playwright-core");
    let missing = match (std::path::Path::new(&chromium).exists(), modules.exists()) {
        (true, true) => return true,
        (false, _) => format!("{chromium} (apt-get install chromium)"),
        (true, false) => "tests/browser/node_modules (npm ci --prefix tests/browser)".to_string(),
    };
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the browser test cannot run: missing {missing}");
    }
    eprintln!("skipped: the admin UI browser test needs {missing}");
    false
}

async fn staff_work_in_the_admin_ui_through_a_real_browser(backend: Backend) {
    if !browser_available() {
        return;
    }
    let step_up = format!("{STEP_UP_SECS}s");
    let postgres = backend.is_postgres();
    let oidc = Oidc::start_with(backend, &[("PORTCULLIS_MFA_STEP_UP_MAX_AGE", &step_up)]).await;
    let mut users = serde_json::Map::new();
    for (name, roles) in [
        ("ann", &["support", "auditor"][..]),
        ("ben", &["refund_approver"][..]),
        ("val", &["support_viewer"][..]),
        ("sam", &["security_admin"][..]),
    ] {
        oidc.user(name).await;
        for role in roles {
            oidc.env
                .cli(&["role", "grant", "--username", name, "--role", role])
                .await
                .assert_ok();
        }
        let (_browser, secret) = enrol_totp(&oidc, name).await;
        // Enrolment used this step's code; the browser starts after it.
        let step = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 30;
        users.insert(
            name.to_string(),
            json!({ "secret": secret, "used_step": step }),
        );
    }
    oidc.user("carol").await;
    let shop = oidc.code_client("shop", "openid", &[]).await;
    let gw = oidc
        .client("gw", &["--grant", "client_credentials", "--may-introspect"])
        .await;
    let (carol_sid, carol_token) = oidc.customer_session(&shop, "carol").await;
    let (carol_sid2, carol_token2) = oidc.customer_session(&shop, "carol").await;
    assert!(oidc.is_active(&gw, &carol_token).await);

    // Screenshots go to a scratch directory unless
    // PORTCULLIS_TEST_SCREENSHOTS names one (the README's pictures come from
    // `PORTCULLIS_TEST_SCREENSHOTS=docs/screenshots`), so a test run does
    // not rewrite tracked files.
    let scratch = tempfile::tempdir().unwrap();
    let screenshots = match std::env::var("PORTCULLIS_TEST_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => repo_root().join(dir),
        _ => scratch.path().to_path_buf(),
    };
    std::fs::create_dir_all(&screenshots).unwrap();
    let input = json!({
        "admin": oidc.server.admin,
        "issuer": oidc.issuer,
        "password": PASSWORD,
        "users": users,
        "carol_session": carol_sid,
        "carol_session2": carol_sid2,
        "step_up_max_age": STEP_UP_SECS,
        // One backend's run is enough for the README's pictures.
        "screenshots": if postgres { Value::Null } else { json!(screenshots) },
    });
    let script = repo_root().join("tests/browser/admin_ui.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("PC_BROWSER_INPUT", input.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("node runs (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        oidc.server.stderr()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("browser result: {e}\n{stdout}"));
    assert_eq!(result["ok"], true, "{result}");

    // The session staff A terminated is dead at the gateway; the one the
    // viewer tried to terminate with a forged POST is not.
    assert!(
        !oidc.is_active(&gw, &carol_token).await,
        "terminated session's token"
    );
    assert!(
        oidc.is_active(&gw, &carol_token2).await,
        "forged terminate changed nothing"
    );
    assert_eq!(result["viewer_forged_status"], 403);
    assert_eq!(result["own_approval_status"], 403);

    // The refund: requested by A, approved by B, seen through the store.
    let refund_id = result["refund_id"].as_str().unwrap();
    let row: (String, String, Option<String>) =
        sqlx::query_as("SELECT status, requested_by, approved_by FROM refunds WHERE id = $1")
            .bind(refund_id)
            .fetch_one(&crate::support::raw_pool(&oidc.env.database_url()).await)
            .await
            .unwrap();
    assert_eq!(row.0, "approved");
    assert_ne!(Some(row.1.clone()), row.2, "two different people");
    assert!(result["approval_token"].as_str().unwrap().contains('.'));

    // The client registered through the UI works with the secret it showed once.
    let token = oidc
        .http
        .post(oidc.url("/token"))
        .basic_auth("partner-app", result["partner_secret"].as_str())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    // partner-app has only the code grant: the secret authenticates (not
    // invalid_client) and the grant is refused.
    let status = token.status().as_u16();
    let body: Value = token.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client", "{body}");

    if !postgres {
        for page in [
            "home",
            "sessions",
            "audit",
            "refund-requested",
            "refund-step-up",
            "refund-approved",
            "user",
            "client-registered",
        ] {
            let shot = screenshots.join(format!("{page}.png"));
            assert!(
                std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
                "screenshot {shot:?}"
            );
        }
    }
    let verify = oidc.env.cli(&["audit", "verify"]).await;
    verify.assert_ok();
    oidc.server.stop().await;
}
