//! Interoperability: the real binary driven by authlib, an independent,
//! certified OAuth 2.0 / OpenID Connect client library
//! (`tests/interop/authlib_flow.py`).
//!
//! The interpreter is `PORTCULLIS_TEST_PYTHON` (default `python3`); `.ci/run`
//! points it at a venv with `tests/interop/requirements.txt`. Without authlib
//! the test is skipped with a notice, except under `CI`, where that fails.

use std::time::Duration;

use tokio::process::Command;

use crate::support::{Backend, Server, TestEnv};

backend_tests!(authlib_code_flow_pkce_refresh_and_reuse);

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/authlib_flow.py"
);
const REDIRECT_URI: &str = "http://127.0.0.1:8976/cb";
const PASSWORD: &str = "correct horse battery staple";

/// The Python interpreter with authlib, or `None` (test skipped) outside CI.
async fn python_with_authlib() -> Option<String> {
    let python = std::env::var("PORTCULLIS_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let probe = Command::new(&python)
        .args(["-c", "import authlib, joserfc, requests"])
        .output()
        .await;
    let problem = match probe {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let msg = format!(
        "{python} cannot import authlib ({problem}); install tests/interop/requirements.txt \
         and set PORTCULLIS_TEST_PYTHON"
    );
    if std::env::var_os("CI").is_some() {
        panic!("CI is set: {msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// Starts the server on a port chosen up front so that `PORTCULLIS_ISSUER`
/// is its real public URL (the issuer must match what clients see).
async fn serve_at_own_issuer(env: &TestEnv) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let issuer = format!("http://{addr}");
    let server = env
        .serve_with(&[
            ("PORTCULLIS_HTTP_PUBLIC_ADDR", &addr),
            ("PORTCULLIS_ISSUER", &issuer),
        ])
        .await;
    assert_eq!(server.public, issuer);
    (server, issuer)
}

async fn authlib_code_flow_pkce_refresh_and_reuse(backend: Backend) {
    let Some(python) = python_with_authlib().await else {
        return;
    };
    let env = TestEnv::new(backend).await;
    env.cli_stdin(
        &[
            "user",
            "create",
            "--username",
            "alice",
            "--email",
            "alice@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .await
    .assert_ok();
    // Not first-party: the consent screen is part of the flow.
    let client = env
        .cli(&[
            "client",
            "create",
            "--name",
            "Authlib RP",
            "--id",
            "authlib-rp",
            "--redirect-uri",
            REDIRECT_URI,
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--scope",
            "openid profile email",
            "--json",
        ])
        .await;
    client.assert_ok();
    let client = client.json();
    let secret = client["client_secret"].as_str().unwrap().to_string();
    let (server, issuer) = serve_at_own_issuer(&env).await;

    let run = Command::new(&python)
        .arg(SCRIPT)
        .env("ISSUER", &issuer)
        .env("CLIENT_ID", "authlib-rp")
        .env("CLIENT_SECRET", &secret)
        .env("REDIRECT_URI", REDIRECT_URI)
        .env("USERNAME", "alice")
        .env("PASSWORD", PASSWORD)
        .env("EMAIL", "alice@example.com")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("authlib script did not finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "authlib flow failed ({}):\nstderr: {stderr}\nstdout: {stdout}\nserver log:\n{}",
        out.status,
        server.stdout().join("\n")
    );
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary line:\n{stdout}"));
    assert_eq!(summary["result"], "ok", "{summary}");
    assert_eq!(summary["issuer"], issuer.as_str());
    assert_eq!(summary["consent_shown"], true, "{summary}");
    assert_eq!(summary["id_token_alg"], "RS256", "{summary}");
    let checks: Vec<&str> = summary["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for expected in [
        "authorization response iss equals issuer (RFC 9207)",
        "id_token validated by authlib (signature, iss, aud, exp, nonce)",
        "userinfo email",
        "refresh rotates the refresh token",
        "old refresh token reuse gives invalid_grant",
        "newest refresh token after reuse gives invalid_grant",
        "access token of the revoked family is refused at userinfo",
    ] {
        assert!(
            checks.contains(&expected),
            "missing check {expected:?}: {summary}"
        );
    }
    server.stop().await;
}
