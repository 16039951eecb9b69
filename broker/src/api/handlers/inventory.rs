//! `GET /v1/admin/inventory` (admins with `read_audit`): every identity with its owner,
//! steward, purpose, environment, third-party flag, ticket, expiry, status (`active`,
//! `dormant`, `expiring`, `expired`, `disabled`), last issuance, tokens in the last 24 h,
//! tasks used and never used. `?due=30d` keeps identities whose registration expires
//! within that window (recertification review); `?unused=30d` adds, per identity, the
//! tasks and scopes granted but not used in that window (least-privilege review).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::api::caller::Caller;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, caller, record};
use crate::audit::event::EventKind;
use crate::authn::mtls::ClientCert;
use crate::config::{Role, parse_duration};

/// Inventory filters.
#[derive(Debug, Deserialize)]
pub struct InventoryQuery {
    /// Only identities expiring within this window.
    due: Option<String>,
    /// Report tasks and scopes unused within this window.
    unused: Option<String>,
}

/// The inventory.
pub async fn inventory(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    query: Result<Query<InventoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut ev = record::event(EventKind::Denied, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
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
    let mut out = Vec::new();
    for id in policies.identities() {
        let expires_at = id
            .expires_at()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(w) = due
            && expires_at > now.saturating_add(w)
        {
            continue;
        }
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
        let granted_tasks: Vec<&str> = id.tasks.iter().map(|t| t.name.as_str()).collect();
        let used: Vec<&str> = granted_tasks
            .iter()
            .copied()
            .filter(|t| usage.tasks.contains_key(*t))
            .collect();
        let never: Vec<&str> = granted_tasks
            .iter()
            .copied()
            .filter(|t| !usage.tasks.contains_key(*t))
            .collect();
        let mut entry = json!({
            "id": id.id, "owner": id.owner, "steward": id.steward, "purpose": id.purpose,
            "environment": id.environment, "third_party": id.third_party, "ticket": id.ticket,
            "expires": id.expires.to_string(), "status": status,
            "last_issued": usage.last_issued, "tokens_24h": usage.tokens_24h(now),
            "tasks_used": used, "tasks_never_used": never, "anomalies": st.governance.monitor.open_for(&id.id),
        });
        if let Some(w) = unused {
            let since = now.saturating_sub(w);
            let stale_tasks: Vec<&str> = granted_tasks
                .iter()
                .copied()
                .filter(|t| usage.tasks.get(*t).is_none_or(|last| *last < since))
                .collect();
            let mut stale_scopes: Vec<&str> = id
                .tasks
                .iter()
                .flat_map(|t| t.scopes.iter().map(String::as_str))
                .filter(|s| usage.scopes.get(*s).is_none_or(|last| *last < since))
                .collect();
            stale_scopes.sort_unstable();
            stale_scopes.dedup();
            entry["unused_tasks"] = json!(stale_tasks);
            entry["unused_scopes"] = json!(stale_scopes);
        }
        out.push(entry);
    }
    Json(json!({ "now": now, "identities": out })).into_response()
}
