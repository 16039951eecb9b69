//! Stages 3 and 4, admission and decision: may this identity have a token now (kill
//! switch, break-glass, rate limits, anomaly holds, each consulted once), and for what
//! (the policy's grant, or a break-glass task's under an active grant).

use std::net::SocketAddr;
use std::time::Duration;

use super::authenticate::ActingParty;
use super::parse::{Params, clip};
use super::refusal::Refusal;
use crate::anomaly::{Anomaly, AnomalyAction};
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::Grant as BreakGlassGrant;
use crate::policy::{self, Decision, Identity, PolicySet};
use crate::state::AppState;

/// The kill switch.
pub fn not_disabled(st: &AppState, identity: &Identity) -> Result<(), Refusal> {
    match st.revocations.disabled(&identity.id) {
        Some(why) => Err(Refusal::identity_disabled(&identity.id, &why)),
        None => Ok(()),
    }
}

/// What the request is granted: the policy's decision, or, for a task the identity's
/// policy does not have, a break-glass task under an active grant (then the grant too).
/// Every other denial stands.
pub fn decide(
    st: &AppState,
    policies: &PolicySet,
    identity: &Identity,
    params: &Params,
    peer: SocketAddr,
    cert_bound: bool,
) -> Result<(policy::Grant, Option<BreakGlassGrant>), Refusal> {
    let scopes: Option<Vec<&str>> = params
        .scopes
        .as_ref()
        .map(|s| s.iter().map(String::as_str).collect());
    let evaluation = policies.evaluate(&policy::Request {
        identity: &identity.id,
        task: &params.task,
        audience: params.audience.as_deref(),
        scopes: scopes.clone(),
        requested_ttl: params.requested_ttl,
        source: peer.ip(),
        now: st.clock.now(),
        cert_bound,
    });
    let now = st.clock.unix_secs();
    let break_glass = match &evaluation.decision {
        Decision::Deny(d) if d.rule == policy::Rule::UnknownTask => {
            st.break_glass
                .grants
                .active(&identity.id, &params.task, now)
        }
        _ => None,
    };
    match (evaluation.decision, break_glass) {
        (_, Some(bg)) => {
            let grant = break_glass_grant(st, identity, &bg, params, scopes.as_deref(), now)?;
            Ok((grant, Some(bg)))
        }
        (Decision::Allow(g), None) => Ok((g, None)),
        (Decision::Deny(d), None) => Err(Refusal::policy(&d)),
    }
}

/// A delegated request's grant: the subject's grant narrowed by the delegation rule of
/// its task that names the actor (scopes, lifetime, chain depth). Asking beyond the rule
/// is refused, never silently narrowed; break-glass is never delegated.
pub fn delegate(
    identity: &Identity,
    mut grant: policy::Grant,
    actor: &ActingParty<'_>,
    params: &Params,
    break_glass: bool,
) -> Result<policy::Grant, Refusal> {
    if break_glass {
        return Err(Refusal::DelegationBreakGlass);
    }
    let not_allowed =
        || Refusal::delegation_not_allowed(&actor.identity.id, &identity.id, &grant.task);
    let rule = identity
        .task(&grant.task)
        .and_then(|t| t.delegation_for(&actor.identity.id))
        .ok_or_else(not_allowed)?;
    let depth = actor.act.depth();
    if depth > rule.max_depth {
        return Err(Refusal::DelegationChainTooDeep {
            depth,
            max: rule.max_depth,
        });
    }
    if let Some(asked) = &params.scopes
        && let Some(beyond) = asked.iter().find(|s| !rule.scopes.contains(s))
    {
        return Err(Refusal::DelegationScope {
            scope: clip(beyond),
            actor: actor.identity.id.clone(),
            task: grant.task.clone(),
        });
    }
    if let Some(asked) = params.requested_ttl
        && asked > rule.max_ttl
    {
        return Err(Refusal::DelegationTtl {
            asked: asked.as_secs(),
            max: rule.max_ttl.as_secs(),
        });
    }
    grant.scopes.retain(|s| rule.scopes.contains(s));
    grant.ttl = grant.ttl.min(rule.max_ttl);
    Ok(grant)
}

/// The task's binding rule: a task that requires DPoP gets only DPoP-bound tokens.
pub fn binding(
    identity: &Identity,
    grant: &policy::Grant,
    dpop_jkt: Option<&str>,
) -> Result<(), Refusal> {
    let requires = identity.task(&grant.task).is_some_and(|t| t.require_dpop);
    if requires && dpop_jkt.is_none() {
        return Err(Refusal::DpopRequired {
            task: grant.task.clone(),
        });
    }
    Ok(())
}

/// The grant for a break-glass task under an active grant: the break-glass policy's task,
/// narrowed as asked (never widened), and never outliving the grant.
fn break_glass_grant(
    st: &AppState,
    identity: &Identity,
    bg: &BreakGlassGrant,
    params: &Params,
    scopes: Option<&[&str]>,
    now: u64,
) -> Result<policy::Grant, Refusal> {
    let policies = st.policies.break_glass();
    let Some((_, task)) = policies.find(&identity.id, &bg.task) else {
        return Err(Refusal::no_break_glass_policy(&bg.id, &bg.task));
    };
    if let Some(a) = params.audience.as_deref()
        && a != task.audience
    {
        return Err(Refusal::break_glass_audience(&task.name, &task.audience, a));
    }
    let granted: Vec<String> = match scopes {
        None => task.scopes.clone(),
        Some(asked) => {
            if let Some(extra) = asked.iter().find(|s| !task.scopes.iter().any(|t| t == *s)) {
                return Err(Refusal::break_glass_scope(&task.name, extra));
            }
            task.scopes
                .iter()
                .filter(|t| asked.contains(&t.as_str()))
                .cloned()
                .collect()
        }
    };
    let left = bg.ends_at.unwrap_or(now).saturating_sub(now);
    let max = task.max_ttl.as_secs().min(left);
    let ttl = match params.requested_ttl {
        Some(t) if t.as_secs() > task.max_ttl.as_secs() => {
            return Err(Refusal::break_glass_ttl(
                t.as_secs(),
                &task.name,
                task.max_ttl.as_secs(),
            ));
        }
        Some(t) => t.as_secs().min(max),
        None => max,
    };
    Ok(policy::Grant {
        identity: identity.id.clone(),
        environment: identity.environment.clone(),
        task: task.name.clone(),
        audience: task.audience.clone(),
        scopes: granted,
        ttl: Duration::from_secs(ttl.max(1)),
    })
}

/// Takes a token from the identity's bucket (config) and the task's (policy).
pub fn rate_limit(st: &AppState, identity: &Identity, task: &str) -> Result<(), Refusal> {
    let now = st.clock.monotonic();
    if let Some(rate) = st.governance.identity_rate_limit {
        st.governance
            .rate_limiter
            .check(&format!("identity\u{0}{}", identity.id), rate, now)
            .map_err(|w| {
                Refusal::rate_limited(
                    &format!(
                        "identity {} is over its issuance rate limit ({}/{}s)",
                        identity.id,
                        rate.count,
                        rate.period.as_secs()
                    ),
                    w,
                )
            })?;
    }
    if let Some(rate) = identity.task(task).and_then(|t| t.rate_limit) {
        st.governance
            .rate_limiter
            .check(&format!("task\u{0}{}\u{0}{task}", identity.id), rate, now)
            .map_err(|w| {
                Refusal::rate_limited(
                    &format!(
                        "task {task} of identity {} is over its rate limit ({}/{}s)",
                        identity.id,
                        rate.count,
                        rate.period.as_secs()
                    ),
                    w,
                )
            })?;
    }
    Ok(())
}

/// Behavioural monitoring: refuses while a `deny` anomaly is open; compares the issuance
/// with the identity's history and reports what is new (a metric, a record and a webhook event each); refuses if one of
/// the new anomalies holds.
pub async fn monitor(
    st: &AppState,
    identity: &Identity,
    grant: &policy::Grant,
    peer: SocketAddr,
    ev: &AuditEvent,
) -> Result<(), Refusal> {
    if !st.governance.monitoring {
        return Ok(());
    }
    if let Some(a) = st.governance.monitor.blocking(&identity.id) {
        return Err(Refusal::held_by_anomaly(&identity.id, &a));
    }
    let now = st.clock.unix_secs();
    let network = crate::usage::source_network(peer.ip());
    let obs = st.governance.usage.observe(
        &identity.id,
        &grant.task,
        &grant.scopes,
        Some(&network),
        now,
    );
    let action = identity
        .anomaly_action
        .unwrap_or(st.governance.anomaly_action);
    // Fail closed: an anomaly that cannot be given an id is not silently skipped.
    let found = st
        .governance
        .monitor
        .observe(&identity.id, &grant.task, &obs, now, action)
        .map_err(|e| {
            tracing::error!(error = %e, "could not raise an anomaly");
            Refusal::internal("internal_error")
        })?;
    report(st, &found, ev).await?;
    match found.iter().find(|a| a.action == AnomalyAction::Deny) {
        Some(a) => Err(Refusal::held_by_anomaly(&identity.id, a)),
        None => Ok(()),
    }
}

/// Each new anomaly: a metric, an `anomaly` record (durable, or the request fails) and a
/// webhook event.
async fn report(st: &AppState, found: &[Anomaly], ev: &AuditEvent) -> Result<(), Refusal> {
    for a in found {
        st.metrics.anomaly(a.kind);
        let mut rec = ev.clone();
        rec.event = EventKind::Anomaly;
        rec.decision = None;
        rec.rule = Some(a.kind.to_owned());
        rec.reason = Some(format!(
            "{} for identity {} (action {:?})",
            a.kind, a.identity, a.action
        ));
        rec.detail = Some(
            serde_json::json!({ "anomaly": a.id, "evidence": a.evidence, "action": a.action }),
        );
        if let Err(e) = st.audit.append(rec).await {
            tracing::error!(error = %e, "could not audit an anomaly");
            return Err(Refusal::audit_unavailable());
        }
        st.webhook
            .send(serde_json::json!({ "event": "anomaly", "anomaly": a }));
    }
    Ok(())
}
