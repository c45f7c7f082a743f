//! POST forms: check origin and CSRF token, read the form, call the staff
//! operation (the same one the JSON API calls), then redirect back with a
//! fixed confirmation code — or render the answer at once when it holds
//! something shown only once (a client secret, an approval token).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use admin_ui::model::{self as m, Flash, FlashKind, Nav};

use super::{Page, StaffSession, html_response, safe_return_to};
use crate::admin_api::{self, Justification};
use crate::app::AppState;
use crate::error::AppError;
use crate::web::form::Params;

fn justification(form: &Params) -> Justification {
    Justification {
        reason: form.field("reason").map(str::to_string),
        ticket_id: form.field("ticket_id").map(str::to_string),
    }
}

/// 303 to a local page with `done=<code>`.
fn back(to: &str, done: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let target = format!("{to}{sep}done={done}");
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&target) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn fail(session: &StaffSession, title: &str, nav: Nav, e: AppError) -> Page {
    Page::error(Some(&session.layout(title, nav)), e)
}

pub async fn terminate_session(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    admin_api::sessions::terminate_one(&state, &session.staff, &id, &justification(&form))
        .await
        .map_err(|e| fail(&session, "Sessions", Nav::Sessions, e))?;
    Ok(back(&safe_return_to(form.field("return_to")), "terminated"))
}

pub async fn terminate_user_sessions(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    admin_api::sessions::terminate_all_of_user(
        &state,
        &session.staff,
        &username,
        &justification(&form),
    )
    .await
    .map_err(|e| fail(&session, "Sessions", Nav::Sessions, e))?;
    Ok(back(
        &safe_return_to(form.field("return_to")),
        "terminated_all",
    ))
}

async fn set_locked(
    state: AppState,
    session: StaffSession,
    headers: HeaderMap,
    username: String,
    body: Bytes,
    locked: bool,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    admin_api::users::set_locked(
        &state,
        &session.staff,
        &username,
        locked,
        &justification(&form),
    )
    .await
    .map_err(|e| fail(&session, "Users", Nav::Users, e))?;
    Ok(back(
        &format!("/users/{username}"),
        if locked { "locked" } else { "unlocked" },
    ))
}

pub async fn lock_user(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    set_locked(state, session, headers, username, body, true).await
}

pub async fn unlock_user(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    set_locked(state, session, headers, username, body, false).await
}

pub async fn reset_mfa(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    if form.field("confirm") != Some("yes") {
        return Err(fail(
            &session,
            "Users",
            Nav::Users,
            AppError::BadRequest(
                "tick the box to confirm you verified the person's identity".into(),
            ),
        ));
    }
    admin_api::users::reset_second_factors(
        &state,
        &session.staff,
        &username,
        &justification(&form),
    )
    .await
    .map_err(|e| fail(&session, "Users", Nav::Users, e))?;
    Ok(back(&format!("/users/{username}"), "mfa_reset"))
}

fn lines(text: Option<&str>) -> Vec<String> {
    text.unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn words(text: Option<&str>) -> Vec<String> {
    text.unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Checkbox groups repeat their name; `Params` keeps one value per name,
/// so the grant list is read from the raw form.
fn all_values(body: &[u8], name: &str) -> Vec<String> {
    form_urlencoded::parse(body)
        .filter(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn client_page(
    session: &StaffSession,
    client: &admin_api::clients::ClientView,
    secret: Option<String>,
    flash: &str,
) -> Response {
    let mut layout = session.layout(&format!("Client {}", client.client_id), Nav::Clients);
    layout.flash = Some(Flash {
        kind: FlashKind::Success,
        message: flash.to_string(),
    });
    let view = m::ClientDetailView {
        client: super::pages::client_row(client),
        new_secret: secret,
    };
    html_response(StatusCode::OK, admin_ui::client_page(&layout, view))
}

pub async fn register_client(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    let reg = admin_api::clients::ClientRegistration {
        client_id: form.field("client_id").unwrap_or("").trim().to_string(),
        redirect_uris: lines(form.field("redirect_uris")),
        scopes: words(form.field("scopes")),
        grant_types: all_values(&body, "grant_types"),
        public: form.field("public") == Some("yes"),
        may_introspect: form.field("may_introspect") == Some("yes"),
        reason: form.field("reason").map(str::to_string),
        ticket_id: form.field("ticket_id").map(str::to_string),
    };
    let (client, secret) = admin_api::clients::register(&state, &session.staff, reg)
        .await
        .map_err(|e| fail(&session, "Clients", Nav::Clients, e))?;
    Ok(client_page(&session, &client, secret, "Client registered."))
}

pub async fn update_client(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    let upd = admin_api::clients::ClientUpdate {
        redirect_uris: lines(form.field("redirect_uris")),
        scopes: words(form.field("scopes")),
        reason: form.field("reason").map(str::to_string),
        ticket_id: form.field("ticket_id").map(str::to_string),
    };
    admin_api::clients::update(&state, &session.staff, &id, upd)
        .await
        .map_err(|e| fail(&session, "Clients", Nav::Clients, e))?;
    Ok(back(&format!("/clients/{id}"), "client_updated"))
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    let (client, secret) =
        admin_api::clients::rotate_secret(&state, &session.staff, &id, &justification(&form))
            .await
            .map_err(|e| fail(&session, "Clients", Nav::Clients, e))?;
    Ok(client_page(
        &session,
        &client,
        Some(secret),
        "Secret rotated; the old one no longer works.",
    ))
}

pub async fn revoke_tokens(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    if form.field("confirm").map(str::trim) != Some(id.as_str()) {
        return Err(fail(
            &session,
            "Clients",
            Nav::Clients,
            AppError::BadRequest(format!(
                "type the client id {id:?} into the confirmation field to revoke its tokens"
            )),
        ));
    }
    admin_api::clients::revoke_all_tokens(&state, &session.staff, &id, &justification(&form))
        .await
        .map_err(|e| fail(&session, "Clients", Nav::Clients, e))?;
    Ok(back(&format!("/clients/{id}"), "tokens_revoked"))
}

pub async fn request_refund(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    let title = "Refunds";
    // The form's fields become the same JSON body the API validates; an
    // amount that is not a whole number is passed on as text so the domain
    // names the problem.
    let amount = form.field("amount_minor").unwrap_or("").trim();
    let amount = match amount.parse::<i64>() {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::from(amount),
    };
    let mut json = serde_json::json!({
        "payment_id": form.field("payment_id").unwrap_or("").trim(),
        "amount_minor": amount,
        "currency": form.field("currency").unwrap_or("").trim().to_uppercase(),
        "reason": form.field("reason").unwrap_or("").trim(),
    });
    if let Some(t) = form
        .field("ticket_id")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        json["ticket_id"] = t.into();
    }
    let key = form.field("idempotency_key").map(str::as_bytes);
    let answer =
        admin_api::refunds::request(&state, &session.staff, key, json.to_string().as_bytes())
            .await
            .map_err(|e| fail(&session, title, Nav::Refunds, e))?;
    let id = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .ok_or_else(|| {
            fail(
                &session,
                title,
                Nav::Refunds,
                AppError::Internal("refund answer without id".into()),
            )
        })?;
    Ok(back(&format!("/refunds/{id}"), "refund_requested"))
}

pub async fn approve_refund(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    let title = "Refund";
    let (refund, token) =
        admin_api::refunds::approve_refund(&state, &session.staff, &id, &justification(&form))
            .await
            .map_err(|e| match e {
                // Step up and come back to this refund.
                AppError::StepUpRequired { message, .. } => {
                    let here = format!("/refunds/{id}");
                    let href = format!(
                        "/auth/login?step_up=1&return_to={}",
                        form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
                    );
                    Page::message(
                        StatusCode::UNAUTHORIZED,
                        Some(&session.layout(title, Nav::Refunds)),
                        "Confirm it is you",
                        &message,
                        Some((&href, "Confirm with your second factor")),
                    )
                }
                e => fail(&session, title, Nav::Refunds, e),
            })?;
    let view = super::pages::refund_view(&state, &session, &refund, Some(token)).await;
    let mut layout = session.layout(title, Nav::Refunds);
    layout.flash = Some(Flash {
        kind: FlashKind::Success,
        message: "Refund approved.".into(),
    });
    Ok(html_response(
        StatusCode::OK,
        admin_ui::refund_page(&layout, view),
    ))
}

pub async fn reject_refund(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    admin_api::refunds::reject_refund(&state, &session.staff, &id, &justification(&form))
        .await
        .map_err(|e| fail(&session, "Refund", Nav::Refunds, e))?;
    Ok(back(&format!("/refunds/{id}"), "refund_rejected"))
}

pub async fn cancel_refund(
    State(state): State<AppState>,
    session: StaffSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Page> {
    let form = session.check_post(&state, &headers, &body)?;
    admin_api::refunds::cancel_refund(&state, &session.staff, &id, &justification(&form))
        .await
        .map_err(|e| fail(&session, "Refund", Nav::Refunds, e))?;
    Ok(back(&format!("/refunds/{id}"), "refund_cancelled"))
}
