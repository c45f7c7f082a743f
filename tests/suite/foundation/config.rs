use std::time::Duration;

use portcullis::config::{Config, parse_duration};

use crate::support::{Backend, TestEnv};

#[test]
fn durations_parse_in_the_documented_units() {
    assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
    assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(parse_duration("12h"), Some(Duration::from_secs(12 * 3600)));
    assert_eq!(
        parse_duration("30d"),
        Some(Duration::from_secs(30 * 86_400))
    );
    for bad in ["10", "m", "1.5h", "-3s", "3 s", "99999999999999999999d", ""] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn defaults_match_the_design() {
    let c = Config::defaults().unwrap();
    assert_eq!(c.database.url, "sqlite://data/portcullis.db?mode=rwc");
    assert_eq!(c.http.public_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(c.http.admin_addr.to_string(), "127.0.0.1:8081");
    assert_eq!(c.issuer, "http://127.0.0.1:8080");
    assert_eq!(c.tokens.access_ttl, Duration::from_secs(600));
    assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(c.sessions.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.sessions.absolute_timeout, Duration::from_secs(12 * 3600));
    assert_eq!(c.refunds.default_threshold, 10_000);
}

#[test]
fn environment_overrides_file_and_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        "issuer = \"https://auth.example.com/\"\n[tokens]\naccess_ttl = \"5m\"\n[refunds.four_eyes_threshold]\nEUR = 5000\nJPY = 1000\n",
    )
    .unwrap();
    let env = vec![("PORTCULLIS_TOKENS_ACCESS_TTL".to_string(), "2m".to_string())];
    let c = Config::load_with_env(Some(&file), env).unwrap();
    assert_eq!(c.issuer, "https://auth.example.com");
    assert_eq!(
        c.tokens.access_ttl,
        Duration::from_secs(120),
        "environment wins"
    );
    assert_eq!(c.refunds.four_eyes_threshold.get("EUR"), Some(&5000));
    assert_eq!(c.refunds.four_eyes_threshold.get("JPY"), Some(&1000));

    let cases: &[(&str, &str, &str)] = &[
        (
            "PORTCULLIS_SESSIONS_IDLE_TIMEOUT",
            "soon",
            "sessions.idle_timeout",
        ),
        (
            "PORTCULLIS_HTTP_PUBLIC_ADDR",
            "localhost",
            "http.public_addr",
        ),
        ("PORTCULLIS_ISSUER", "auth.example.com", "issuer"),
        ("PORTCULLIS_DATABASE_URL", "mysql://x", "database.url"),
        (
            "PORTCULLIS_REFUNDS_FOUR_EYES_THRESHOLD",
            "EURO=5",
            "refunds.four_eyes_threshold",
        ),
        (
            "PORTCULLIS_HTTP_PUBLIC_ADR",
            "x",
            "PORTCULLIS_HTTP_PUBLIC_ADR",
        ),
    ];
    for (var, value, named) in cases {
        let err = Config::load_with_env(None, vec![(var.to_string(), value.to_string())])
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{var}={value}: {err}");
    }
    std::fs::write(&file, "[tokens]\naccess_ttl = 10\n").unwrap();
    let err = Config::load_with_env(Some(&file), vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokens.access_ttl") && err.contains("duration"),
        "{err}"
    );
    std::fs::write(&file, "[tokens\n").unwrap();
    let err = Config::load_with_env(Some(&file), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid TOML"), "{err}");
}

backend_tests!(bad_config_value_stops_startup_with_the_key_named);

async fn bad_config_value_stops_startup_with_the_key_named(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let out = env
        .cli_with(
            &["serve"],
            None,
            &[("PORTCULLIS_TOKENS_ACCESS_TTL", "ten minutes")],
        )
        .await;
    out.assert_err("tokens.access_ttl");
    assert!(
        out.stderr.contains("ten minutes") && out.stderr.contains("10m"),
        "{}",
        out.stderr
    );

    std::fs::write(
        env.dir.path().join("bad.toml"),
        "[sessions]\nabsolute_timeout = \"forever\"\n",
    )
    .unwrap();
    let out = env.cli(&["--config", "bad.toml", "serve"]).await;
    out.assert_err("sessions.absolute_timeout");
    let out = env.cli(&["--config", "missing.toml", "migrate"]).await;
    out.assert_err("cannot read configuration file missing.toml");
}

#[test]
fn every_documented_key_is_settable_from_the_environment() {
    // A section missing from the environment mapping would silently ignore
    // its variables; each override must take effect or be refused.
    let cases: &[(&str, &str)] = &[
        ("PORTCULLIS_OUTBOX_RETRY_BASE", "7s"),
        ("PORTCULLIS_OUTBOX_MAX_ATTEMPTS", "3"),
        ("PORTCULLIS_MFA_STEP_UP_MAX_AGE", "2m"),
        ("PORTCULLIS_TOKENS_INTROSPECTION_CACHE_TTL", "4s"),
        ("PORTCULLIS_KEYS_DIR", "elsewhere"),
    ];
    let env: Vec<(String, String)> = cases
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = Config::load_with_env(None, env).unwrap();
    assert_eq!(c.outbox.retry_base, Duration::from_secs(7));
    assert_eq!(c.outbox.max_attempts, 3);
    assert_eq!(c.mfa.step_up_max_age, Duration::from_secs(120));
    assert_eq!(c.tokens.introspection_cache_ttl, Duration::from_secs(4));
    assert_eq!(c.keys.dir, std::path::PathBuf::from("elsewhere"));
    let err = Config::load_with_env(None, vec![("PORTCULLIS_NOSUCH_THING".into(), "1".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("PORTCULLIS_NOSUCH_THING"), "{err}");
}
