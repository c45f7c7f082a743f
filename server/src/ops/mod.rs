//! Liveness, readiness and metrics.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers and a signing key is loaded for every
/// algorithm we sign with.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.store.ping().await.is_ok();
    let keys = state.keys.current();
    let keys_ok = crate::keys::SigningAlg::ALL
        .iter()
        .all(|alg| keys.active(*alg).is_some());
    let status = if db && keys_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
        "checks": {"database": if db { "ok" } else { "unreachable" }, "signing_keys": if keys_ok { "ok" } else { "missing" }},
    });
    (status, axum::Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.store.ping().await.is_ok();
    let keys = state.keys.current().metas().len();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(db, keys, state.preissued.held()),
    )
}
