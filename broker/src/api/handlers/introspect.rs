//! `POST /oauth2/introspect` (RFC 7662) for authenticated resource servers (identities
//! with `may_introspect = true`) and admins. `active` is false for foreign, expired,
//! not-yet-valid and revoked tokens. Successful introspections are counted, not audited
//! (resource servers call this on every request); refused callers are audited.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState};
use crate::audit::event::EventKind;

#[derive(Deserialize)]
struct IntrospectForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The introspection endpoint, timed in `broker_introspection_duration_seconds`.
#[tracing::instrument(skip_all, fields(source = %req.peer.ip()))]
pub async fn introspect(State(st): State<AppState>, req: CallerRequest, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let res = answer(&st, req, body).await;
    st.metrics.introspection_request(started);
    res
}

async fn answer(st: &AppState, req: CallerRequest, body: Bytes) -> Response {
    let path = crate::api::INTROSPECTION_PATH;
    let (caller, ev) = match req.require_form(st, EventKind::Denied, &body, path).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    if !caller.may_introspect() {
        return refusal::deny(
            st,
            ev,
            CallRefusal::IntrospectionNotAllowed {
                actor: caller.actor(),
            },
        )
        .await;
    }
    let form: IntrospectForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => {
            return ApiError::invalid_request(format!("malformed form body: {e}")).into_response();
        }
    };
    let Some(token) = form.token.filter(|t| !t.is_empty()) else {
        return ApiError::invalid_request("token is required").into_response();
    };
    if st.revocations.is_stale() {
        return ApiError::state_stale().into_response();
    }
    st.metrics.introspected();
    no_store(Json(crate::introspection::introspect(st, &token)).into_response())
}
