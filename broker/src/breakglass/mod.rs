//! Emergency break-glass access that revokes itself.
//!
//! A grant is requested (justification and incident ticket required), approved by as
//! many other people as its policy demands (a requester never approves their own), and is
//! then active for its duration: the target identity may request the break-glass task
//! through the normal token endpoint, and those tokens carry `bg` and never outlive the
//! grant. When the grant ends (its time passes, or someone closes it) every token issued
//! under it is revoked at once by a grant revocation rule; at start the broker closes
//! overdue grants before serving. Every step is audited and sent to the webhook.
//!
//! The name says it: nothing here is a normal path. State lives in the same journal as
//! revocations ([`crate::store`]), so grants survive restarts.

pub mod policy;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::store::{Event, GrantChange, StateChange, StateStore, StoreError};

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Waiting for approvals.
    Pending,
    /// Usable.
    Active,
    /// Ended (closed, expired, or never approved in time).
    Closed,
}

/// A token issued under a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantToken {
    /// Token id.
    pub jti: String,
    /// Audience.
    pub audience: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub issued_at: u64,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Who.
    pub approver: String,
    /// When.
    pub at: u64,
}

/// A break-glass grant and its full account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Grant id (`bg` claim of its tokens).
    pub id: String,
    /// Target identity.
    pub identity: String,
    /// Break-glass task.
    pub task: String,
    /// Policy name.
    pub policy: String,
    /// Duration once active, seconds.
    pub duration: u64,
    /// Why.
    pub justification: String,
    /// Incident ticket.
    pub ticket: String,
    /// Who asked.
    pub requester: String,
    /// When asked.
    pub requested_at: u64,
    /// Approvals needed.
    pub approvals_needed: u32,
    /// Approvals given.
    pub approvals: Vec<Approval>,
    /// Status.
    pub status: GrantStatus,
    /// Unapproved grants expire at this time.
    pub pending_until: u64,
    /// When it became active.
    pub activated_at: Option<u64>,
    /// When its access ends (or ended); `None` for a grant that never became active.
    pub ends_at: Option<u64>,
    /// When it was closed.
    pub closed_at: Option<u64>,
    /// Who closed it (`broker` when by time).
    pub closed_by: Option<String>,
    /// Why it was closed.
    pub close_reason: Option<String>,
    /// Tokens issued under it.
    pub tokens: Vec<GrantToken>,
}

/// Why a grant operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRefusal {
    /// Stable rule.
    pub rule: &'static str,
    /// HTTP status.
    pub status: u16,
    /// Reason.
    pub reason: String,
}

fn refusal(rule: &'static str, status: u16, reason: String) -> GrantRefusal {
    GrantRefusal {
        rule,
        status,
        reason,
    }
}

/// Every grant, replayed from the journal.
pub struct Grants {
    map: Mutex<HashMap<String, Grant>>,
    store: Arc<dyn StateStore>,
    /// Every journal change up to this event id is applied here (the point a checked
    /// append reads on from).
    through: std::sync::atomic::AtomicU64,
    /// Held across a recorded-first step (plan, records, transaction), so that steps on
    /// this replica never race each other's records.
    steps: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants").finish_non_exhaustive()
    }
}

/// A new grant id.
pub fn new_grant_id() -> Result<String, crate::ids::RandomError> {
    crate::ids::random_id("bg")
}

impl Grants {
    /// Replays the journal.
    pub fn open(store: Arc<dyn StateStore>) -> Result<Self, StoreError> {
        let events = store.load()?;
        Ok(Self::from_events(store, &events))
    }

    /// Builds the grants from `events` (the journal as loaded once at start).
    pub fn from_events(store: Arc<dyn StateStore>, events: &[Event]) -> Self {
        let me = Self {
            map: Mutex::new(HashMap::new()),
            store,
            through: std::sync::atomic::AtomicU64::new(events.last().map_or(0, |e| e.id)),
            steps: tokio::sync::Mutex::new(()),
        };
        {
            let mut map = me.lock();
            for e in events {
                if let StateChange::Grant(g) = &e.change {
                    apply(&mut map, g);
                }
            }
        }
        me
    }

    /// Waits for this replica's other grant steps: a step planned, recorded and made
    /// under the guard is not raced here (only by other replicas).
    pub async fn one_step_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.steps.lock().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The grant a `Requested` change creates, before it is made (so that its record
    /// can be written first).
    pub fn preview(change: &GrantChange) -> Option<Grant> {
        let mut map = HashMap::new();
        apply(&mut map, change);
        map.remove(grant_id(change))
    }

    /// Makes `change` durable, then applies it; returns the grant after it.
    pub fn commit(&self, change: GrantChange) -> Result<Option<Grant>, StoreError> {
        let id = grant_id(&change).to_owned();
        let wrapped = StateChange::Grant(change);
        self.store.append(&wrapped)?;
        let mut map = self.lock();
        if let StateChange::Grant(c) = &wrapped {
            apply(&mut map, c);
        }
        Ok(map.get(&id).cloned())
    }

    /// `base` after `changes` (the grant changes among them), before they are made: what
    /// a step's record says the grant will be.
    pub fn preview_after(base: &Grant, changes: &[StateChange]) -> Grant {
        let mut map = HashMap::from([(base.id.clone(), base.clone())]);
        for c in changes {
            if let StateChange::Grant(g) = c {
                apply(&mut map, g);
            }
        }
        map.remove(&base.id).unwrap_or_else(|| base.clone())
    }

    /// Grant `id` as the shared store has it now: reads (and applies) what other
    /// replicas committed that this one has not applied yet; appends nothing.
    pub fn catch_up(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        Ok(self.decide(id, |_| Err::<Vec<StateChange>, ()>(()))?.grant)
    }

    /// Appends `changes` in one transaction if grant `id`'s newest state (read under the
    /// journal's lock, with what other replicas committed) is still `expected`, and
    /// applies them; `Ok(None)` (nothing appended) if it changed. Returns the grant after
    /// and the appended events.
    pub fn commit_if(
        &self,
        id: &str,
        expected: &Grant,
        changes: &[StateChange],
    ) -> Result<Option<(Grant, Vec<Event>)>, StoreError> {
        let d = self.decide(id, |g| {
            if g == Some(expected) {
                Ok(changes.to_vec())
            } else {
                Err(())
            }
        })?;
        Ok(match (d.verdict, d.grant) {
            (Ok(()), Some(g)) => Some((g, d.appended)),
            _ => None,
        })
    }

    /// Decides a change to grant `id` against its newest state (this replica's view plus
    /// what other replicas committed that it has not applied yet, read under the
    /// journal's lock), appends what `rule` returns in one transaction, and applies it.
    /// Returns `rule`'s verdict, the grant after, and the appended events.
    fn decide<R>(
        &self,
        id: &str,
        mut rule: impl FnMut(Option<&Grant>) -> Result<Vec<StateChange>, R>,
    ) -> Result<Decided<R>, StoreError> {
        let mut map = self.lock();
        let mut verdict = None;
        let mut fresh_grants = Vec::new();
        let after = self.through.load(std::sync::atomic::Ordering::Acquire);
        let appended = self.store.append_decided(after, &mut |fresh| {
            fresh_grants = fresh
                .iter()
                .filter_map(|c| match c {
                    StateChange::Grant(g) if grant_id(g) == id => Some(g.clone()),
                    _ => None,
                })
                .collect();
            let mut scratch: HashMap<String, Grant> = map
                .get(id)
                .map(|g| (id.to_owned(), g.clone()))
                .into_iter()
                .collect();
            for g in &fresh_grants {
                apply(&mut scratch, g);
            }
            match rule(scratch.get(id)) {
                Ok(changes) => {
                    verdict = Some(Ok(()));
                    changes
                }
                Err(r) => {
                    verdict = Some(Err(r));
                    Vec::new()
                }
            }
        })?;
        // Applying early is safe: every grant change applies idempotently, so the same
        // changes arriving again from the poll change nothing.
        for g in &fresh_grants {
            apply(&mut map, g);
        }
        for e in &appended {
            if let StateChange::Grant(g) = &e.change {
                apply(&mut map, g);
            }
        }
        Ok(Decided {
            verdict: verdict.unwrap_or(Ok(())),
            grant: map.get(id).cloned(),
            appended,
        })
    }

    /// Approves grant `id`: the checks (pending, not the requester, not twice) run
    /// against the newest shared state inside the append's transaction, so racing
    /// approvals on any replicas count once and the quorum is completed exactly once.
    /// When this approval completes the quorum the grant is activated in the same
    /// transaction; the returned flag says so.
    pub fn approve(
        &self,
        id: &str,
        approver: &str,
        now: u64,
    ) -> Result<(Grant, bool), ApproveError> {
        let mut ready = false;
        let d = self.decide(id, |g| {
            ready = false;
            let g = g.ok_or_else(|| {
                refusal("unknown_grant", 404, format!("no break-glass grant {id}"))
            })?;
            check_approval(g, approver, now)?;
            let mut out = vec![StateChange::Grant(GrantChange::Approved {
                id: id.to_owned(),
                approver: approver.to_owned(),
                at: now,
            })];
            if g.approvals.len() as u32 + 1 >= g.approvals_needed {
                ready = true;
                out.push(StateChange::Grant(GrantChange::Activated {
                    id: id.to_owned(),
                    at: now,
                    ends_at: now + g.duration,
                }));
            }
            Ok::<_, GrantRefusal>(out)
        })?;
        d.verdict?;
        let g = d
            .grant
            .ok_or_else(|| refusal("unknown_grant", 404, id.to_owned()))?;
        Ok((g, ready))
    }

    /// Closes grant `id` in one transaction with `also` (the revocation rule covering
    /// its tokens); `Ok(None)` if it was already closed, on any replica (so racing closes
    /// close once). Returns the grant and the appended events.
    pub fn close_once(
        &self,
        id: &str,
        at: u64,
        by: &str,
        reason: &str,
        expired: bool,
        also: &[StateChange],
    ) -> Result<Option<(Grant, Vec<Event>)>, StoreError> {
        let d = self.decide(id, |g| match g {
            Some(g) if g.status != GrantStatus::Closed => {
                let mut out = also.to_vec();
                out.push(StateChange::Grant(GrantChange::Closed {
                    id: id.to_owned(),
                    at,
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                    expired,
                }));
                Ok(out)
            }
            _ => Err(()),
        })?;
        Ok(match (d.verdict, d.grant) {
            (Ok(()), Some(g)) => Some((g, d.appended)),
            _ => None,
        })
    }

    /// Activates a pending grant whose quorum is already met (0 approvals needed).
    pub fn activate_if_ready(&self, id: &str, now: u64) -> Result<Option<Grant>, StoreError> {
        let d = self.decide(id, |g| match g {
            Some(g)
                if g.status == GrantStatus::Pending
                    && g.approvals.len() as u32 >= g.approvals_needed =>
            {
                Ok(vec![StateChange::Grant(GrantChange::Activated {
                    id: id.to_owned(),
                    at: now,
                    ends_at: now + g.duration,
                })])
            }
            _ => Err(()),
        })?;
        Ok(d.verdict.ok().and(d.grant))
    }

    /// Records that every journal change up to event `id` has been applied (after a
    /// poll's changes were).
    pub fn confirm_through(&self, id: u64) {
        self.through
            .fetch_max(id, std::sync::atomic::Ordering::AcqRel);
    }

    /// Applies a grant change another replica made (already durable in the shared store).
    pub fn apply_remote(&self, change: &StateChange) {
        if let StateChange::Grant(g) = change {
            apply(&mut self.lock(), g);
        }
    }

    /// A grant by id.
    pub fn get(&self, id: &str) -> Option<Grant> {
        self.lock().get(id).cloned()
    }

    /// Every grant, newest request first (the console's list).
    pub fn all(&self) -> Vec<Grant> {
        let mut all: Vec<Grant> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            b.requested_at
                .cmp(&a.requested_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        all
    }

    /// The active grant letting `identity` request `task` at `now`.
    pub fn active(&self, identity: &str, task: &str, now: u64) -> Option<Grant> {
        self.lock()
            .values()
            .find(|g| {
                g.status == GrantStatus::Active
                    && g.identity == identity
                    && g.task == task
                    && g.ends_at.is_some_and(|e| now < e)
            })
            .cloned()
    }

    /// Grants that must be closed at `now`: active past their end, pending past their
    /// approval window.
    pub fn due(&self, now: u64) -> Vec<Grant> {
        self.lock()
            .values()
            .filter(|g| match g.status {
                GrantStatus::Active => g.ends_at.is_some_and(|e| now >= e),
                GrantStatus::Pending => now >= g.pending_until,
                GrantStatus::Closed => false,
            })
            .cloned()
            .collect()
    }
}

/// The outcome of [`Grants::decide`].
struct Decided<R> {
    verdict: Result<(), R>,
    grant: Option<Grant>,
    appended: Vec<Event>,
}

/// Why an approval failed.
#[derive(Debug)]
pub enum ApproveError {
    /// Refused by a rule.
    Refused(GrantRefusal),
    /// The journal could not be written.
    Store(StoreError),
}

impl From<GrantRefusal> for ApproveError {
    fn from(r: GrantRefusal) -> Self {
        ApproveError::Refused(r)
    }
}

impl From<StoreError> for ApproveError {
    fn from(e: StoreError) -> Self {
        ApproveError::Store(e)
    }
}

/// Whether `approver` may approve `g` at `now`: pending, not the requester, not twice.
pub fn check_approval(g: &Grant, approver: &str, now: u64) -> Result<(), GrantRefusal> {
    let id = &g.id;
    if g.status != GrantStatus::Pending || now >= g.pending_until {
        return Err(refusal(
            "grant_not_pending",
            409,
            format!("grant {id} is not waiting for approval"),
        ));
    }
    if g.requester == approver {
        return Err(refusal(
            "self_approval",
            403,
            format!("{approver} requested grant {id} and cannot approve it: a second person must"),
        ));
    }
    if g.approvals.iter().any(|a| a.approver == approver) {
        return Err(refusal(
            "duplicate_approval",
            409,
            format!("{approver} already approved grant {id}"),
        ));
    }
    Ok(())
}

fn grant_id(c: &GrantChange) -> &str {
    match c {
        GrantChange::Requested { id, .. }
        | GrantChange::Approved { id, .. }
        | GrantChange::Activated { id, .. }
        | GrantChange::TokenIssued { id, .. }
        | GrantChange::Closed { id, .. } => id,
    }
}

fn apply(map: &mut HashMap<String, Grant>, c: &GrantChange) {
    match c {
        GrantChange::Requested {
            id,
            identity,
            task,
            policy,
            duration,
            justification,
            ticket,
            requester,
            approvals_needed,
            at,
            pending_until,
        } => {
            // A request applies once (a replica may see it early, then from the journal).
            map.entry(id.clone()).or_insert_with(|| Grant {
                id: id.clone(),
                identity: identity.clone(),
                task: task.clone(),
                policy: policy.clone(),
                duration: *duration,
                justification: justification.clone(),
                ticket: ticket.clone(),
                requester: requester.clone(),
                requested_at: *at,
                approvals_needed: *approvals_needed,
                approvals: Vec::new(),
                status: GrantStatus::Pending,
                pending_until: *pending_until,
                activated_at: None,
                ends_at: None,
                closed_at: None,
                closed_by: None,
                close_reason: None,
                tokens: Vec::new(),
            });
        }
        GrantChange::Approved { id, approver, at } => {
            // One person counts once, even when two replicas both appended their approval.
            if let Some(g) = map.get_mut(id)
                && !g.approvals.iter().any(|a| a.approver == *approver)
            {
                g.approvals.push(Approval {
                    approver: approver.clone(),
                    at: *at,
                });
            }
        }
        GrantChange::Activated { id, at, ends_at } => {
            // The first activation counts (two replicas may both complete the quorum).
            if let Some(g) = map.get_mut(id)
                && g.status == GrantStatus::Pending
            {
                g.status = GrantStatus::Active;
                g.activated_at = Some(*at);
                g.ends_at = Some(*ends_at);
            }
        }
        GrantChange::TokenIssued {
            id,
            jti,
            audience,
            scopes,
            exp,
            at,
        } => {
            if let Some(g) = map.get_mut(id)
                && !g.tokens.iter().any(|t| t.jti == *jti)
            {
                g.tokens.push(GrantToken {
                    jti: jti.clone(),
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                    exp: *exp,
                    issued_at: *at,
                });
            }
        }
        GrantChange::Closed {
            id, at, by, reason, ..
        } => {
            // The first close counts; a second one (another replica's) changes nothing.
            if let Some(g) = map.get_mut(id)
                && g.status != GrantStatus::Closed
            {
                g.status = GrantStatus::Closed;
                g.closed_at = Some(*at);
                g.closed_by = Some(by.clone());
                g.close_reason = Some(reason.clone());
                // Access ends early at the close; a grant closed (or expired) while still
                // pending never gave access, so it has no end.
                if g.activated_at.is_some() && g.ends_at.is_none_or(|e| e > *at) {
                    g.ends_at = Some(*at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn request(id: &str, needed: u32) -> GrantChange {
        GrantChange::Requested {
            id: id.into(),
            identity: "payments-api".into(),
            task: "ledger-admin".into(),
            policy: "p".into(),
            duration: 600,
            justification: "incident".into(),
            ticket: "INC-1".into(),
            requester: "admin:alice".into(),
            approvals_needed: needed,
            at: 100,
            pending_until: 400,
        }
    }

    #[test]
    fn lifecycle_survives_replay() {
        let store = MemoryStore::default();
        let g = Grants::open(Arc::new(store.clone())).unwrap();
        g.commit(request("bg-1", 1)).unwrap();
        assert!(g.active("payments-api", "ledger-admin", 150).is_none());
        assert!(matches!(
            g.approve("bg-1", "admin:alice", 150),
            Err(ApproveError::Refused(GrantRefusal {
                rule: "self_approval",
                ..
            }))
        ));
        let (_, activated) = g.approve("bg-1", "admin:bob", 150).unwrap();
        assert!(activated, "one approval completes the quorum");
        assert!(
            g.approve("bg-1", "admin:carol", 150).is_err(),
            "no longer pending"
        );
        assert_eq!(g.get("bg-1").unwrap().ends_at, Some(750));
        assert!(g.active("payments-api", "ledger-admin", 200).is_some());
        assert!(g.due(749).is_empty());
        assert_eq!(g.due(750).len(), 1);
        let again = Grants::open(Arc::new(store)).unwrap();
        assert_eq!(
            again.get("bg-1").unwrap().approvals[0].approver,
            "admin:bob"
        );
        assert_eq!(again.get("bg-1").unwrap().status, GrantStatus::Active);
    }

    #[test]
    fn changes_appended_twice_by_two_replicas_count_once() {
        let store = MemoryStore::default();
        let g = Grants::open(Arc::new(store.clone())).unwrap();
        g.commit(request("bg-3", 2)).unwrap();
        let approved = |by: &str| {
            StateChange::Grant(GrantChange::Approved {
                id: "bg-3".into(),
                approver: by.into(),
                at: 150,
            })
        };
        // The same approver's approval arrives twice (appended on two replicas).
        g.apply_remote(&approved("admin:bob"));
        g.apply_remote(&approved("admin:bob"));
        assert_eq!(g.get("bg-3").unwrap().approvals.len(), 1);
        // A request seen again (early while deciding, then from the journal) keeps
        // what was applied since.
        g.apply_remote(&StateChange::Grant(request("bg-3", 2)));
        assert_eq!(g.get("bg-3").unwrap().approvals.len(), 1);
        assert_eq!(g.get("bg-3").unwrap().status, GrantStatus::Pending);
        let activated = |at: u64| {
            StateChange::Grant(GrantChange::Activated {
                id: "bg-3".into(),
                at,
                ends_at: at + 600,
            })
        };
        g.apply_remote(&activated(160));
        g.apply_remote(&activated(170));
        assert_eq!(
            g.get("bg-3").unwrap().ends_at,
            Some(760),
            "the first activation"
        );
        let closed = |at: u64| {
            StateChange::Grant(GrantChange::Closed {
                id: "bg-3".into(),
                at,
                by: "admin:carol".into(),
                reason: "done".into(),
                expired: false,
            })
        };
        let token = StateChange::Grant(GrantChange::TokenIssued {
            id: "bg-3".into(),
            jti: "j1".into(),
            audience: "a".into(),
            scopes: vec![],
            exp: 900,
            at: 180,
        });
        g.apply_remote(&token);
        g.apply_remote(&token);
        assert_eq!(g.get("bg-3").unwrap().tokens.len(), 1);
        g.apply_remote(&closed(200));
        g.apply_remote(&closed(300));
        let after = g.get("bg-3").unwrap();
        assert_eq!((after.closed_at, after.ends_at), (Some(200), Some(200)));
    }

    #[test]
    fn unapproved_grants_come_due_at_their_window() {
        let g = Grants::open(Arc::new(MemoryStore::default())).unwrap();
        g.commit(request("bg-2", 1)).unwrap();
        assert!(g.due(399).is_empty());
        assert_eq!(g.due(400)[0].id, "bg-2");
        // Expired while pending: closed, and it never had an end of access.
        let closed = g
            .close_once("bg-2", 400, "broker", "not approved in time", true, &[])
            .unwrap()
            .unwrap()
            .0;
        assert!(
            g.close_once("bg-2", 401, "broker", "again", true, &[])
                .unwrap()
                .is_none(),
            "a grant closes once"
        );
        assert_eq!(closed.status, GrantStatus::Closed);
        assert_eq!(closed.closed_at, Some(400));
        assert_eq!(closed.ends_at, None, "{closed:?}");
    }

    /// Two replicas on one PostgreSQL, neither following the other's journal: each
    /// decision still sees the other's committed changes.
    #[test]
    fn approvals_racing_on_two_replicas_are_decided_by_the_database() {
        use crate::store::postgres::{PostgresStore, test_options};
        let Some(pg) = crate::store::testpg::TestPostgres::start() else {
            return;
        };
        let opts = test_options(&pg);
        let a = Grants::open(Arc::new(PostgresStore::connect(&opts).unwrap())).unwrap();
        let b = Grants::open(Arc::new(PostgresStore::connect(&opts).unwrap())).unwrap();
        a.commit(request("bg-9", 2)).unwrap();
        // B has never seen the request: its approval is decided against the database.
        let (g, activated) = b.approve("bg-9", "admin:bob", 150).unwrap();
        assert!(!activated);
        assert_eq!(g.approvals.len(), 1);
        // The same person again on A (which has not seen B's approval): refused.
        assert!(matches!(
            a.approve("bg-9", "admin:bob", 151),
            Err(ApproveError::Refused(r)) if r.rule == "duplicate_approval"
        ));
        // A second person on A completes the quorum B's approval started.
        let (g, activated) = a.approve("bg-9", "admin:carol", 152).unwrap();
        assert!(activated, "{g:?}");
        assert_eq!(g.status, GrantStatus::Active);
        // Closing on B (which has not seen the activation) closes the active grant once.
        let (closed, events) = b
            .close_once("bg-9", 160, "admin:carol", "done", false, &[])
            .unwrap()
            .unwrap();
        assert_eq!(closed.status, GrantStatus::Closed);
        assert_eq!(closed.ends_at, Some(160), "access ended at the close");
        assert_eq!(events.len(), 1);
        assert!(
            a.close_once("bg-9", 161, "admin:bob", "again", false, &[])
                .unwrap()
                .is_none()
        );
        let journal = PostgresStore::connect(&opts).unwrap().load().unwrap();
        let count = |f: &dyn Fn(&GrantChange) -> bool| {
            journal
                .iter()
                .filter(|e| matches!(&e.change, StateChange::Grant(g) if f(g)))
                .count()
        };
        assert_eq!(count(&|g| matches!(g, GrantChange::Approved { .. })), 2);
        assert_eq!(count(&|g| matches!(g, GrantChange::Activated { .. })), 1);
        assert_eq!(count(&|g| matches!(g, GrantChange::Closed { .. })), 1);
    }
}
