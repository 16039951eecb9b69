//! The console's OpenID Connect routes: `GET /console/oidc/start` sends the browser to the
//! provider; `GET /console/oidc/callback` takes its answer, records the sign-in (allowed or
//! refused, with the rule and reason) and starts the session ([`super::oidc`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::html::{self, esc};
use super::oidc::{Callback, FLOW_TTL, STATE_COOKIE};
use super::pages::{console, console_evidence, session_cookie, sign_in_page};
use super::{html_response, secure_headers};
use crate::api::record;
use crate::audit::event::{Decision, EventKind};
use crate::state::AppState;

/// The `Set-Cookie` value binding a flow to this browser: `Lax`, because the provider's
/// redirect back is a cross-site navigation, and only sent to `/console/oidc`.
fn state_cookie(secure: bool, state: &str, max_age: u64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{STATE_COOKIE}={state}; Path=/console/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    )
}

fn cookie_named<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `GET /console/oidc/start`.
pub(super) async fn start(State(st): State<AppState>) -> Response {
    let c = console(&st);
    let Some(oidc) = &c.oidc else {
        return sign_in_page(
            &st,
            StatusCode::NOT_FOUND,
            "Sign-in through an identity provider is not configured on this broker ([console.oidc]).",
        );
    };
    match oidc.begin().await {
        Ok(begun) => {
            let mut res = StatusCode::SEE_OTHER.into_response();
            let h = res.headers_mut();
            secure_headers(h);
            if let Ok(v) = HeaderValue::from_str(&begun.authorize_url) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) =
                HeaderValue::from_str(&state_cookie(c.secure_cookie, &begun.state, FLOW_TTL))
            {
                h.insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            tracing::warn!(reason = %e.reason(), "console OIDC sign-in could not start");
            sign_in_page(&st, e.status(), e.page_message())
        }
    }
}

/// `GET /console/oidc/callback?code=…&state=…`.
pub(super) async fn callback(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let c = console(&st);
    let Some(oidc) = &c.oidc else {
        return sign_in_page(
            &st,
            StatusCode::NOT_FOUND,
            "Sign-in through an identity provider is not configured on this broker ([console.oidc]).",
        );
    };
    let cb = query.map(|Query(q)| q).unwrap_or_default();
    let outcome = oidc
        .complete(&cb, cookie_named(&headers, STATE_COOKIE))
        .await;
    let mut ev = record::event(EventKind::ConsoleLogin, peer);
    let mut evidence = console_evidence();
    evidence.kind = "oidc";
    evidence.issuer = Some(oidc.settings.issuer.clone());
    let signed_in = match outcome {
        Ok(s) => s,
        Err(refused) => {
            ev.decision = Some(Decision::Deny);
            ev.rule = Some(refused.rule().into());
            ev.reason = Some(refused.reason());
            ev.evidence = Some(evidence);
            if let Err(e) = st.audit.append(ev).await {
                tracing::error!(error = %e, "could not record a refused console sign-in");
            }
            let mut res = sign_in_page(&st, refused.status(), refused.page_message());
            clear_state_cookie(&mut res, c.secure_cookie);
            return res;
        }
    };
    let admin = signed_in.admin;
    ev.decision = Some(Decision::Allow);
    ev.actor = Some(format!("admin:{}", admin.name));
    ev.reason = Some(format!(
        "signed in through the identity provider with roles {}",
        admin
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    evidence.subject = Some(signed_in.subject);
    evidence.kid = signed_in.kid;
    ev.evidence = Some(evidence);
    // Recorded first: no session without its record.
    if let Err(e) = st.audit.append(ev).await {
        tracing::error!(error = %e, "console sign-in not recorded; refused");
        return sign_in_page(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in could not be recorded in the audit log, so it was refused. Try again later.",
        );
    }
    let now = st.clock.unix_secs();
    let name = admin.name.clone();
    let Ok(cookie) = c.sessions.start_oidc(admin, now) else {
        return sign_in_page(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "No session could be made.",
        );
    };
    // A page, not a redirect: the provider's redirect here was cross-site, and a browser
    // does not send a `SameSite=Strict` cookie on a redirect chain that began on another
    // site; a refresh from this page is a same-site navigation that does.
    let body = format!(
        "<p id=\"signed-in\">Signed in as {}.</p><p><a href=\"/console\" id=\"continue\">Continue to the console</a></p>",
        esc(&name)
    );
    let mut res = html_response(
        StatusCode::OK,
        html::page("Signed in", "", None, None, &body).replacen(
            "<head>",
            "<head><meta http-equiv=\"refresh\" content=\"0;url=/console\">",
            1,
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&session_cookie(c, &cookie)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    clear_state_cookie(&mut res, c.secure_cookie);
    res
}

fn clear_state_cookie(res: &mut Response, secure: bool) {
    if let Ok(v) = HeaderValue::from_str(&state_cookie(secure, "", 0)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}
