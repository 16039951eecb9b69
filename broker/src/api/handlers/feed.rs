//! `GET /v1/revocations?since=<cursor>`: the revocations still relevant (whose tokens can
//! still be live), for verifiers that check tokens offline. Poll with the returned
//! `cursor` to get only newer entries. Entries drop out once every token they cover has
//! expired. Callers authenticate like introspection callers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, caller, record};
use crate::audit::event::EventKind;
use crate::authn::mtls::ClientCert;

/// Query of the feed.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Last cursor seen (0 or absent: everything still relevant).
    #[serde(default)]
    since: Option<u64>,
}

/// The revocation feed.
pub async fn revocations(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut ev = record::event(EventKind::Denied, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
            Ok(c) => c,
            Err(res) => return res,
        };
    if !caller.may_introspect() {
        return refusal::deny(
            &st,
            ev,
            CallRefusal::FeedNotAllowed {
                actor: caller.actor(),
            },
        )
        .await;
    }
    let Ok(Query(q)) = query else {
        return ApiError::invalid_request("since must be a non-negative integer cursor")
            .into_response();
    };
    let now = st.clock.unix_secs();
    let (entries, cursor) = st.revocations.feed(q.since.unwrap_or(0), now);
    let policies = st.policies.current();
    let mut entries = serde_json::to_value(&entries).unwrap_or_else(|_| json!([]));
    // Offline verifiers cannot map owners to identities: list them with owner rules.
    if let Some(list) = entries.as_array_mut() {
        for e in list {
            let owner = e
                .pointer("/rule/owner")
                .and_then(|o| o.as_str())
                .map(str::to_owned);
            if let (Some(owner), Some(rule)) =
                (owner, e.get_mut("rule").and_then(|r| r.as_object_mut()))
            {
                let ids: Vec<String> = policies
                    .identities()
                    .filter(|i| i.owner == owner)
                    .map(|i| i.id.clone())
                    .collect();
                rule.insert("identities".into(), json!(ids));
            }
        }
    }
    Json(json!({ "cursor": cursor, "now": now, "entries": entries })).into_response()
}
