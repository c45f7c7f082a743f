//! Consents a user gave to third-party clients: listed at
//! `/account/consents` and revocable there. Revoking a consent also revokes
//! every token the client holds for the user.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::error::AppError;
use crate::sessions::account::{check_csrf, require_session, self_ctx, wants_json};
use crate::sessions::{self, Session};
use crate::store::StoreError;
use crate::web::csrf;
use crate::web::form::Params;
use crate::web::html::{self, escape};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account/consents", get(list))
        .route("/account/consents/{client_id}/revoke", post(revoke))
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let consents = match crate::store::oauth::list_consents(&state.store, &session.user_id).await {
        Ok(c) => c,
        Err(e) => return AppError::from(e).into_response(),
    };
    if wants_json(&headers) {
        let items: Vec<_> = consents
            .iter()
            .map(|(client, scopes, at)| serde_json::json!({"client_id": client, "scopes": scopes, "granted_at": at}))
            .collect();
        return axum::Json(serde_json::json!({ "items": items })).into_response();
    }
    let policy = sessions::cookie_policy(&state);
    let (token, set_cookie) = csrf::token_for_form(&policy, &headers);
    let mut body = String::from("<ul>");
    for (client, scopes, _) in &consents {
        body.push_str(&format!(
            "<li><strong>{}</strong>: {} <form method=\"post\" action=\"/account/consents/{}/revoke\">{}\
             <button type=\"submit\" class=\"secondary\">Revoke</button></form></li>",
            escape(client),
            escape(scopes),
            escape(client),
            html::hidden(csrf::CSRF_FIELD, &token)
        ));
    }
    body.push_str("</ul>");
    if consents.is_empty() {
        body = "<p>You have not granted any application access.</p>".to_string();
    }
    let mut resp = html::page(StatusCode::OK, "Applications with access", &body);
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let session = match require_session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&state, &headers, &params) {
        return e.into_response();
    }
    match revoke_consent(&state, &session, &client_id, &self_ctx(&session, &headers)).await {
        Ok(true) if wants_json(&headers) => {
            axum::Json(serde_json::json!({"revoked": client_id})).into_response()
        }
        Ok(true) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/account/consents")],
        )
            .into_response(),
        Ok(false) => {
            AppError::NotFound(format!("no consent for client {client_id}")).into_response()
        }
        Err(e) => AppError::from(e).into_response(),
    }
}

pub async fn revoke_consent(
    state: &AppState,
    session: &Session,
    client_id: &str,
    ctx: &AuditContext,
) -> Result<bool, StoreError> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    if !crate::store::oauth::delete_consent(&mut tx, &session.user_id, client_id).await? {
        return Ok(false);
    }
    crate::store::tokens::revoke_families_of(
        &state.store,
        &mut tx,
        &session.user_id,
        client_id,
        now,
        "consent revoked",
    )
    .await?;
    audit::record(
        &state.store,
        &mut tx,
        state.clock.now_ms(),
        ctx,
        AuditEvent::new("consent.revoke", format!("client:{client_id}")),
    )
    .await?;
    tx.commit().await?;
    state.introspection_cache.clear();
    Ok(true)
}
