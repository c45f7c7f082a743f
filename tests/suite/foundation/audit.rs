use crate::support::{Backend, TestEnv};

backend_tests!(
    audit_verify_passes_on_untouched_log,
    audit_verify_names_an_edited_row,
    audit_verify_names_a_deleted_row,
    database_refuses_update_and_delete_on_audit_log,
    concurrent_appends_keep_one_unbroken_chain,
    export_filters_and_formats,
);

/// A few audited CLI actions.
async fn seed(env: &TestEnv) {
    env.create_user("alice", "a long enough password").await;
    env.create_user("bob", "a long enough password").await;
    env.cli(&["role", "grant", "--username", "alice", "--role", "auditor"])
        .await
        .assert_ok();
    env.cli(&[
        "user",
        "lock",
        "--username",
        "bob",
        "--reason",
        "left the company",
    ])
    .await
    .assert_ok();
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
}

/// Disables the append-only guard, as an attacker with database access could.
async fn drop_guard(env: &TestEnv) {
    if env.backend.is_postgres() {
        env.raw_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
            .await
            .unwrap();
    } else {
        env.raw_sql("DROP TRIGGER audit_log_no_update")
            .await
            .unwrap();
        env.raw_sql("DROP TRIGGER audit_log_no_delete")
            .await
            .unwrap();
    }
}

async fn audit_verify_passes_on_untouched_log(backend: Backend) {
    let env = TestEnv::new(backend).await;
    seed(&env).await;
    let out = env.cli(&["audit", "verify"]).await;
    out.assert_ok();
    assert!(
        out.stdout.contains("audit chain OK: 5 rows"),
        "{}",
        out.stdout
    );
    let report = env.cli(&["audit", "verify", "--json"]).await.json();
    assert_eq!(report["rows_checked"], 5);
    assert!(report["first_break"].is_null());
}

async fn audit_verify_names_an_edited_row(backend: Backend) {
    let env = TestEnv::new(backend).await;
    seed(&env).await;
    drop_guard(&env).await;
    // Rewrite history: the lock was "routine".
    let n = env
        .raw_sql("UPDATE audit_log SET reason = 'routine' WHERE seq = 4")
        .await
        .unwrap();
    assert_eq!(n, 1);
    let out = env.cli(&["audit", "verify"]).await;
    out.assert_err("audit chain broken at row 4");
    assert!(out.stderr.contains("altered"), "{}", out.stderr);

    // Recomputing the edited row's own hash does not help: the next row's link breaks.
    let store = env.store().await;
    let rows = portcullis::store::audit::page(&store, 3, 1).await.unwrap();
    let new_hash = portcullis::audit::compute_hash(&rows[0]);
    env.raw_sql(&format!(
        "UPDATE audit_log SET hash = '{new_hash}' WHERE seq = 4"
    ))
    .await
    .unwrap();
    let out = env.cli(&["audit", "verify"]).await;
    out.assert_err("audit chain broken at row 5");
    assert!(out.stderr.contains("prev_hash"), "{}", out.stderr);
}

async fn audit_verify_names_a_deleted_row(backend: Backend) {
    let env = TestEnv::new(backend).await;
    seed(&env).await;
    drop_guard(&env).await;
    env.raw_sql("DELETE FROM audit_log WHERE seq = 2")
        .await
        .unwrap();
    let out = env.cli(&["audit", "verify"]).await;
    out.assert_err("audit chain broken at row 2");
    assert!(out.stderr.contains("missing"), "{}", out.stderr);
}

async fn database_refuses_update_and_delete_on_audit_log(backend: Backend) {
    let env = TestEnv::new(backend.clone()).await;
    seed(&env).await;
    let err = env
        .raw_sql("UPDATE audit_log SET reason = 'x' WHERE seq = 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = env
        .raw_sql("DELETE FROM audit_log WHERE seq = 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    if backend.is_postgres() {
        let err = env.raw_sql("TRUNCATE audit_log").await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    env.cli(&["audit", "verify"]).await.assert_ok();
}

async fn concurrent_appends_keep_one_unbroken_chain(backend: Backend) {
    use portcullis::audit::{AuditContext, AuditEvent};
    let env = TestEnv::new(backend).await;
    env.cli(&["migrate"]).await.assert_ok();
    let store = env.store().await;
    let clock = portcullis::clock::SystemClock;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            portcullis::audit::record_alone(
                &store,
                portcullis::clock::Clock::now_ms(&clock),
                &AuditContext::system("test"),
                AuditEvent::new("test.event", format!("n:{i}")),
            )
            .await
            .unwrap()
            .seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<i64>>());
    let report = portcullis::audit::verify(&store).await.unwrap();
    assert_eq!(report.rows_checked, 40);
    assert!(report.first_break.is_none());
}

async fn export_filters_and_formats(backend: Backend) {
    let env = TestEnv::new(backend).await;
    seed(&env).await;
    let jsonl = env.cli(&["audit", "export", "--format", "jsonl"]).await;
    jsonl.assert_ok();
    let rows: Vec<serde_json::Value> = jsonl
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["seq"], 1);
    assert_eq!(rows[0]["prev_hash"], portcullis::audit::GENESIS_HASH);
    assert_eq!(rows[1]["prev_hash"], rows[0]["hash"]);

    let csv = env.cli(&["audit", "export", "--format", "csv"]).await;
    csv.assert_ok();
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert!(lines[0].starts_with("seq,time,actor_kind"));
    assert_eq!(lines.len(), 6);

    let future = env
        .cli(&["audit", "export", "--since", "2999-01-01T00:00:00Z"])
        .await;
    future.assert_ok();
    assert!(future.stdout.trim().is_empty());
    env.cli(&["audit", "export", "--since", "yesterday"])
        .await
        .assert_err("invalid --since");
}
