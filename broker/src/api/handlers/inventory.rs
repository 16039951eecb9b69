//! `GET /v1/admin/inventory` (admins with `read_audit`): every identity with its owner,
//! steward, purpose, environment, third-party flag, ticket, expiry, status (`active`,
//! `dormant`, `expiring`, `expired`, `disabled`), last issuance, tokens in the last 24 h,
//! tasks used and never used. `?due=30d` keeps identities whose registration expires
//! within that window (recertification review); `?unused=30d` adds, per identity, the
//! tasks and scopes granted but not used in that window (least-privilege review).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use broker_client::types::{InventoryEntry, InventoryResponse};
use serde::Deserialize;

use crate::api::caller::Caller;
use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState};
use crate::audit::event::EventKind;
use crate::config::{Role, parse_duration};
use crate::policy::Identity;

/// Inventory filters.
#[derive(Debug, Deserialize)]
pub struct InventoryQuery {
    /// Only identities expiring within this window.
    due: Option<String>,
    /// Report tasks and scopes unused within this window.
    unused: Option<String>,
}

impl InventoryQuery {
    /// Every identity, with tasks and scopes unused within `window` (e.g. `30d`).
    pub fn unused_within(window: &str) -> Self {
        Self {
            due: None,
            unused: Some(window.to_owned()),
        }
    }
}

/// The inventory.
pub async fn inventory(
    State(st): State<AppState>,
    req: CallerRequest,
    query: Result<Query<InventoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (caller, ev) = match req.require(&st, EventKind::Denied).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    if !caller.has_role(Role::ReadAudit) {
        let what = format!("{} lacks the read_audit role", caller.actor());
        let refusal = if matches!(caller, Caller::Workload { .. }) {
            CallRefusal::AdminRequired { what }
        } else {
            CallRefusal::RoleRequired { what }
        };
        return refusal::deny(&st, ev, refusal).await;
    }
    let Ok(Query(q)) = query else {
        return ApiError::invalid_request("bad query").into_response();
    };
    let window = |v: &Option<String>| -> Result<Option<u64>, String> {
        v.as_deref()
            .map(|s| parse_duration(s).map(|d| d.as_secs()))
            .transpose()
    };
    let (due, unused) = match (window(&q.due), window(&q.unused)) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(e), _) | (_, Err(e)) => return ApiError::invalid_request(e).into_response(),
    };
    let now = st.clock.unix_secs();
    let policies = st.policies.current();
    let identities = policies
        .identities()
        .filter(|id| due.is_none_or(|w| expires_at(id) <= now.saturating_add(w)))
        .map(|id| entry(&st, id, now, unused))
        .collect();
    Json(InventoryResponse { now, identities }).into_response()
}

/// When `id`'s registration expires (unix seconds).
fn expires_at(id: &Identity) -> u64 {
    id.expires_at()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Names of `tasks` for which `keep` holds.
fn task_names(id: &Identity, keep: impl Fn(&str) -> bool) -> Vec<String> {
    id.tasks
        .iter()
        .map(|t| t.name.clone())
        .filter(|t| keep(t))
        .collect()
}

/// `id`'s inventory entry at `now`; with `unused` (a window, seconds), the tasks and
/// scopes not used in it.
fn entry(st: &AppState, id: &Identity, now: u64, unused: Option<u64>) -> InventoryEntry {
    let expires_at = expires_at(id);
    let usage = st.governance.usage.get(&id.id);
    let status = if st.revocations.disabled(&id.id).is_some() {
        "disabled"
    } else if expires_at <= now {
        "expired"
    } else if expires_at - now < st.governance.expiring_window_secs {
        "expiring"
    } else if usage
        .last_issued
        .is_none_or(|t| now.saturating_sub(t) >= st.governance.dormant_after_secs)
    {
        "dormant"
    } else {
        "active"
    };
    let mut out = InventoryEntry {
        id: id.id.clone(),
        owner: id.owner.clone(),
        steward: id.steward.clone(),
        purpose: id.purpose.clone(),
        environment: id.environment.clone(),
        third_party: id.third_party,
        ticket: id.ticket.clone(),
        expires: id.expires.to_string(),
        status: status.to_owned(),
        last_issued: usage.last_issued,
        tokens_24h: usage.tokens_24h(now),
        tasks_used: task_names(id, |t| usage.tasks.contains_key(t)),
        tasks_never_used: task_names(id, |t| !usage.tasks.contains_key(t)),
        anomalies: st
            .governance
            .monitor
            .open_for(&id.id)
            .iter()
            .map(crate::anomaly::Anomaly::report)
            .collect(),
        unused_tasks: None,
        unused_scopes: None,
    };
    if let Some(w) = unused {
        let since = now.saturating_sub(w);
        out.unused_tasks = Some(task_names(id, |t| {
            usage.tasks.get(t).is_none_or(|last| *last < since)
        }));
        let mut stale_scopes: Vec<String> = id
            .tasks
            .iter()
            .flat_map(|t| t.scopes.iter().cloned())
            .filter(|s| usage.scopes.get(s).is_none_or(|last| *last < since))
            .collect();
        stale_scopes.sort_unstable();
        stale_scopes.dedup();
        out.unused_scopes = Some(stale_scopes);
    }
    out
}
