use crate::support::{Backend, TestEnv};

backend_tests!(
    serve_on_fresh_directory_migrates_generates_keys_and_is_ready,
    bootstrap_code_creates_first_admin_once,
    request_ids_are_assigned_and_propagated,
    sigterm_stops_the_server_cleanly,
);

async fn serve_on_fresh_directory_migrates_generates_keys_and_is_ready(backend: Backend) {
    let env = TestEnv::new(backend.clone()).await;
    let server = env.serve().await;

    let (status, body) = server.get_json(&server.url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = server.get_json(&server.url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["signing_keys"], "ok");
    // The admin listener is a separate socket with its own probes.
    assert_ne!(server.public, server.admin);
    let (status, _) = server.get_json(&server.admin_url("/readyz")).await;
    assert_eq!(status, 200);
    // JWKS is public only.
    let resp = server
        .http
        .get(server.admin_url("/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_http_responses_total{listener=\"public\",class=\"2xx\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_database_up 1"), "{metrics}");

    // Migrations are recorded on the backend in use.
    let pool = crate::support::raw_pool(&env.database_url()).await;
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(applied >= 1);
    pool.close().await;

    if !backend.is_postgres() {
        assert!(
            env.dir.path().join("data/portcullis.db").exists(),
            "default SQLite file"
        );
    }
    // Private keys exist, mode 0600.
    let mut pems = 0;
    for entry in std::fs::read_dir(env.keys_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem") {
            pems += 1;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    assert_eq!(pems, 2, "one ES256 and one RS256 key");

    // Start-up key generation is audited.
    let out = env.cli(&["audit", "export"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("\"keys.generate\""), "{}", out.stdout);
    assert_eq!(server.stop().await, 0);

    // A second start reuses the keys and the schema.
    let server = env.serve().await;
    let (_, jwks) = server.get_json(&server.url("/jwks.json")).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    server.stop().await;
}

async fn bootstrap_code_creates_first_admin_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let server = env.serve().await;
    let stderr = server.stderr();
    let code = stderr
        .split_whitespace()
        .find(|w| w.starts_with("pcb_"))
        .unwrap_or_else(|| panic!("no bootstrap code on stderr: {stderr}"))
        .to_string();
    // The code is printed for the operator, never written to the JSON log.
    assert!(server.stdout().iter().all(|l| !l.contains(&code)));

    let wrong = env
        .cli_stdin(
            &[
                "user",
                "create",
                "--username",
                "admin",
                "--password-stdin",
                "--bootstrap-code",
                "pcb_wrong",
            ],
            "correct horse battery staple",
        )
        .await;
    wrong.assert_err("bootstrap code is wrong");

    env.cli_stdin(
        &[
            "user",
            "create",
            "--username",
            "admin",
            "--password-stdin",
            "--bootstrap-code",
            &code,
        ],
        "correct horse battery staple",
    )
    .await
    .assert_ok();

    let store = env.store().await;
    let admin = portcullis::users::find_by_username(&store, "admin")
        .await
        .unwrap();
    let roles = portcullis::permissions::roles_of(&store, &admin.id)
        .await
        .unwrap();
    assert_eq!(roles, vec!["security_admin".to_string()]);

    // Used once: a second account cannot ride the same code.
    env.cli_stdin(
        &[
            "user",
            "create",
            "--username",
            "mallory",
            "--password-stdin",
            "--bootstrap-code",
            &code,
        ],
        "correct horse battery staple",
    )
    .await
    .assert_err("bootstrap is closed");
    assert!(
        portcullis::users::find_by_username(&store, "mallory")
            .await
            .is_err()
    );
    server.stop().await;

    // A restart with users present prints no code.
    let server = env.serve().await;
    assert!(!server.stderr().contains("pcb_"));
    server.stop().await;
}

async fn request_ids_are_assigned_and_propagated(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let server = env.serve().await;
    let resp = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let resp = server
        .http
        .get(server.url("/healthz"))
        .header("x-request-id", "gw-42.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "gw-42.abc");

    // A hostile id (log injection) is replaced, not echoed.
    let resp = server
        .http
        .get(server.url("/healthz"))
        .header("x-request-id", "a\"}{\"level\":\"fake")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "a\"}{\"level\":\"fake");
    server.stop().await;
}

async fn sigterm_stops_the_server_cleanly(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let server = env.serve().await;
    let (status, _) = server.get_json(&server.url("/healthz")).await;
    assert_eq!(status, 200);
    let lines_before = server.stdout().len();
    assert!(lines_before > 0);
    let code = server.stop().await;
    assert_eq!(code, 0, "SIGTERM drains and exits 0");
}

/// Router test: the public router on in-memory SQLite, no sockets.
#[tokio::test]
async fn router_serves_jwks_and_probes_in_memory() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let mut config = portcullis::config::Config::defaults().unwrap();
    config.database.url = format!(
        "sqlite:file:{}?mode=memory&cache=shared",
        uuid::Uuid::new_v4().simple()
    );
    config.keys.dir = dir.path().join("keys");
    let clock = std::sync::Arc::new(portcullis::clock::ManualClock::new(1_800_000_000_000));
    let startup = portcullis::app::start(config, clock).await.unwrap();
    assert!(startup.bootstrap_code.is_some());
    let app = portcullis::app::public_router(startup.state.clone());

    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::get("/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/jwk-set+json");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let algs: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    assert!(
        algs.contains(&"ES256") && algs.contains(&"RS256"),
        "{algs:?}"
    );

    let resp = app
        .oneshot(
            axum::http::Request::get("/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
}
