//! `GET /v1/revocations?since=<cursor>`: the revocations still relevant (whose tokens can
//! still be live), for verifiers that check tokens offline. Poll with the returned
//! `cursor` to get only newer entries. Entries drop out once every token they cover has
//! expired. Callers authenticate like introspection callers.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use broker_client::types::{RevocationFeed, RevocationFeedEntry};
use serde::Deserialize;

use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState};
use crate::audit::event::EventKind;
use crate::revocation::FeedEntry;

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
    req: CallerRequest,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (caller, ev) = match req.require(&st, EventKind::Denied).await {
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
    let entries = entries.iter().filter_map(|e| published(&st, e)).collect();
    Json(RevocationFeed {
        cursor,
        now,
        entries,
    })
    .into_response()
}

/// A feed entry as published: its rule's selector spelled out, and an owner rule with
/// the owner's identities (offline verifiers cannot map owners to identities).
fn published(st: &AppState, e: &FeedEntry) -> Option<RevocationFeedEntry> {
    let mut out: RevocationFeedEntry = serde_json::to_value(e)
        .and_then(serde_json::from_value)
        .inspect_err(|err| tracing::error!(error = %err, "a feed entry did not convert"))
        .ok()?;
    if let Some(rule) = out.rule.as_mut()
        && let Some(owner) = &rule.owner
    {
        let ids = st
            .policies
            .current()
            .identities()
            .filter(|i| &i.owner == owner)
            .map(|i| i.id.clone())
            .collect();
        rule.identities = Some(ids);
    }
    Some(out)
}
