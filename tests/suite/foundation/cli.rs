use crate::support::{Backend, TestEnv};

backend_tests!(
    duplicate_username_is_refused,
    client_create_prints_secret_once_and_stores_only_its_hash,
    duplicate_client_id_and_bad_registrations_are_refused,
    roles_grant_revoke_list,
    lock_and_unlock_are_audited_with_before_after,
    password_never_comes_from_arguments,
);

async fn duplicate_username_is_refused(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.create_user("alice", "a long enough password").await;
    let out = env
        .cli_stdin(
            &["user", "create", "--username", "Alice", "--password-stdin"],
            "another long password",
        )
        .await;
    out.assert_err("a user named \"alice\" already exists");
    let out = env
        .cli_stdin(
            &["user", "create", "--username", "bob", "--password-stdin"],
            "short",
        )
        .await;
    out.assert_err("at least 12 characters");
    let out = env
        .cli_stdin(
            &[
                "user",
                "create",
                "--username",
                "bad name!",
                "--password-stdin",
            ],
            "a long enough password",
        )
        .await;
    out.assert_err("invalid username");
}

async fn client_create_prints_secret_once_and_stores_only_its_hash(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let out = env
        .cli(&[
            "client",
            "create",
            "--name",
            "Shop",
            "--id",
            "shop",
            "--redirect-uri",
            "https://shop.example/cb",
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--scope",
            "openid profile",
            "--json",
        ])
        .await;
    out.assert_ok();
    let json = out.json();
    assert_eq!(json["client_id"], "shop");
    let secret = json["client_secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("pcs_") && secret.len() >= 4 + 43,
        "{secret}"
    );

    let pool = crate::support::raw_pool(&env.database_url()).await;
    let (hash,): (String,) = sqlx::query_as("SELECT secret_hash FROM clients WHERE id = 'shop'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(hash, secret);
    assert_eq!(hash, portcullis::crypto::sha256_hex(&secret));
    pool.close().await;

    let store = env.store().await;
    let client = portcullis::oauth::clients::find(&store, "shop")
        .await
        .unwrap();
    assert!(client.secret_matches(&secret));
    assert!(!client.secret_matches("pcs_wrong"));
    assert_eq!(client.scopes, vec!["openid", "profile"]);

    // A public client gets no secret.
    let out = env
        .cli(&[
            "client",
            "create",
            "--name",
            "App",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1:9999/cb",
            "--json",
        ])
        .await;
    out.assert_ok();
    let json = out.json();
    assert!(json.get("client_secret").is_none(), "{json}");
    // The audit row records the client, never the secret.
    let export = env.cli(&["audit", "export"]).await;
    assert!(export.stdout.contains("\"client.create\""));
    assert!(!export.stdout.contains(&secret));
}

async fn duplicate_client_id_and_bad_registrations_are_refused(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.cli(&[
        "client",
        "create",
        "--name",
        "Svc",
        "--id",
        "svc",
        "--grant",
        "client_credentials",
    ])
    .await
    .assert_ok();
    env.cli(&[
        "client",
        "create",
        "--name",
        "Svc2",
        "--id",
        "svc",
        "--grant",
        "client_credentials",
    ])
    .await
    .assert_err("a client with id \"svc\" already exists");
    env.cli(&[
        "client",
        "create",
        "--name",
        "X",
        "--redirect-uri",
        "http://evil.example/cb",
    ])
    .await
    .assert_err("http is allowed only for loopback");
    env.cli(&[
        "client",
        "create",
        "--name",
        "X",
        "--redirect-uri",
        "https://a.example/cb#frag",
    ])
    .await
    .assert_err("fragment");
    env.cli(&["client", "create", "--name", "X", "--grant", "password"])
        .await
        .assert_err("unknown grant type \"password\"");
    env.cli(&[
        "client",
        "create",
        "--name",
        "X",
        "--public",
        "--grant",
        "client_credentials",
    ])
    .await
    .assert_err("public client cannot use client_credentials");
    env.cli(&[
        "client",
        "create",
        "--name",
        "X",
        "--grant",
        "authorization_code",
    ])
    .await
    .assert_err("needs at least one --redirect-uri");
}

async fn roles_grant_revoke_list(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let roles = env.cli(&["role", "list", "--json"]).await;
    roles.assert_ok();
    let roles = roles.json();
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "auditor",
            "refund_approver",
            "security_admin",
            "support",
            "support_viewer"
        ]
    );
    // No role holds every permission.
    for role in roles.as_array().unwrap() {
        assert!(
            role["permissions"].as_array().unwrap().len()
                < portcullis::permissions::Permission::ALL.len()
        );
    }

    env.create_user("sam", "a long enough password").await;
    env.cli(&["role", "grant", "--username", "sam", "--role", "support"])
        .await
        .assert_ok();
    env.cli(&["role", "grant", "--username", "sam", "--role", "support"])
        .await
        .assert_err("already holds role");
    env.cli(&["role", "grant", "--username", "sam", "--role", "root"])
        .await
        .assert_err("unknown role \"root\"");
    env.cli(&["role", "grant", "--username", "nobody", "--role", "support"])
        .await
        .assert_err("no user named \"nobody\"");

    let store = env.store().await;
    let sam = portcullis::users::find_by_username(&store, "sam")
        .await
        .unwrap();
    let perms = portcullis::permissions::permissions_of(&store, &sam.id)
        .await
        .unwrap();
    let perms: Vec<&str> = perms.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        perms,
        vec![
            "sessions:read",
            "sessions:terminate",
            "users:read",
            "refunds:request"
        ]
    );

    env.cli(&["role", "revoke", "--username", "sam", "--role", "support"])
        .await
        .assert_ok();
    env.cli(&["role", "revoke", "--username", "sam", "--role", "support"])
        .await
        .assert_err("does not hold role");
    assert!(
        portcullis::permissions::permissions_of(&store, &sam.id)
            .await
            .unwrap()
            .is_empty()
    );

    let export = env.cli(&["audit", "export"]).await.stdout;
    let rows: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let grant = rows.iter().find(|r| r["action"] == "role.grant").unwrap();
    assert_eq!(grant["target"], "user:sam");
    assert_eq!(grant["actor"]["kind"], "cli");
    assert_eq!(grant["actor"]["id"], "test-operator");
    assert_eq!(grant["before"]["roles"], serde_json::json!([]));
    assert_eq!(grant["after"]["roles"], serde_json::json!(["support"]));
    let revoke = rows.iter().find(|r| r["action"] == "role.revoke").unwrap();
    assert_eq!(revoke["after"]["roles"], serde_json::json!([]));
}

async fn lock_and_unlock_are_audited_with_before_after(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.create_user("carol", "a long enough password").await;
    env.cli(&[
        "user",
        "lock",
        "--username",
        "carol",
        "--reason",
        "stolen laptop",
        "--ticket-id",
        "INC-7",
    ])
    .await
    .assert_ok();
    let again = env.cli(&["user", "lock", "--username", "carol"]).await;
    again.assert_ok();
    assert!(again.stdout.contains("already locked"));
    env.cli(&["user", "lock", "--username", "nobody"])
        .await
        .assert_err("no user named");

    let store = env.store().await;
    assert!(
        portcullis::users::find_by_username(&store, "carol")
            .await
            .unwrap()
            .locked
    );
    env.cli(&["user", "unlock", "--username", "carol"])
        .await
        .assert_ok();
    assert!(
        !portcullis::users::find_by_username(&store, "carol")
            .await
            .unwrap()
            .locked
    );

    let export = env.cli(&["audit", "export"]).await.stdout;
    let rows: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let locks: Vec<_> = rows.iter().filter(|r| r["action"] == "user.lock").collect();
    assert_eq!(locks.len(), 1, "a no-op lock writes no row");
    assert_eq!(locks[0]["reason"], "stolen laptop");
    assert_eq!(locks[0]["ticket_id"], "INC-7");
    assert_eq!(locks[0]["before"]["locked"], false);
    assert_eq!(locks[0]["after"]["locked"], true);
    assert!(locks[0]["request_id"].as_str().unwrap().starts_with("cli-"));
    assert!(rows.iter().any(|r| r["action"] == "user.unlock"));
    // The password hash is never in the audit log.
    assert!(!export.contains("argon2"));
}

async fn password_never_comes_from_arguments(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.cli(&["user", "create", "--username", "dave"])
        .await
        .assert_err("--password-stdin");
    env.cli_stdin(
        &["user", "create", "--username", "dave", "--password-stdin"],
        "",
    )
    .await
    .assert_err("no password on standard input");
    // The stored hash is argon2id.
    env.create_user("dave", "a long enough password\n").await;
    let pool = crate::support::raw_pool(&env.database_url()).await;
    let (hash,): (String,) =
        sqlx::query_as("SELECT password_hash FROM users WHERE username = 'dave'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    // The trailing newline of `echo` is not part of the password.
    assert!(portcullis::users::verify_password(
        "a long enough password",
        &hash
    ));
    pool.close().await;
}
