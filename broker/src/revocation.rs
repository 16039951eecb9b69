//! Revocation state: revoked `jti`s, revocation rules, disabled identities, the delta
//! feed for offline verifiers, and counts of live tokens.
//!
//! Revocation works by list (one `jti`) and by rule ("identity X, issued at or before
//! T"), so revoking every token of a workload is one rule, however many tokens it has,
//! and it covers tokens the broker keeps no list of (issued before a restart, or by
//! another replica). Live tokens are *counted*, not listed: per identity, task and grant,
//! a bucket per expiry second, so a revocation can say how many live tokens it covered
//! at O(buckets) cost and constant memory per second of `max_ttl`.
//!
//! Every change goes through the [`StateStore`] before it takes effect in memory, so an
//! acknowledged revocation survives a crash. One `std::sync::Mutex` guards the state; it
//! is never held across an `.await`. Expired entries are swept by [`Revocations::sweep`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use broker_client::types::AccessTokenClaims;
use serde::Serialize;

use crate::store::{Event, Selector, StateChange, StateStore, StoreError};

/// Longest token lifetime the broker can mint (the policy ceiling), seconds: the upper
/// bound of a token's `exp` when only its `jti` is known.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// One revocation in the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedEntry {
    /// Position in the feed; `?since=` takes the last one seen.
    pub cursor: u64,
    /// A revoked token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A revocation rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<FeedRule>,
    /// After this time the entry is irrelevant (every token it covers has expired).
    pub until: u64,
}

/// A rule as published in the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedRule {
    /// Rule id.
    pub id: String,
    /// What it covers.
    #[serde(flatten)]
    pub selector: Selector,
    /// Tokens with `iat` at or before this are revoked.
    pub issued_before: u64,
}

#[derive(Debug, Clone)]
struct RuleEntry {
    id: String,
    selector: Selector,
    issued_before: u64,
    until: u64,
    cursor: u64,
}

#[derive(Debug, Default)]
struct Buckets(BTreeMap<u64, u64>);

impl Buckets {
    fn add(&mut self, exp: u64) {
        *self.0.entry(exp).or_default() += 1;
    }
    fn live(&self, now: u64) -> u64 {
        self.0.range(now + 1..).map(|(_, n)| n).sum()
    }
    fn sweep(&mut self, now: u64) {
        self.0 = self.0.split_off(&(now + 1));
    }
}

#[derive(Debug, Default)]
struct Inner {
    jtis: HashMap<String, (u64, u64)>, // jti -> (until, cursor)
    rules: Vec<RuleEntry>,
    disabled: HashMap<String, String>, // identity -> reason
    /// The feed's cursor: every revocation with an event id up to this one is applied.
    through: u64,
    by_identity: HashMap<String, Buckets>,
    by_task: HashMap<(String, String), Buckets>,
    by_grant: HashMap<String, Buckets>,
    max_iat: u64,
}

/// The revocation state of the broker.
pub struct Revocations {
    inner: Mutex<Inner>,
    store: Arc<dyn StateStore>,
    /// Whether other replicas append to the store (then the feed's cursor advances only
    /// as far as the store confirms it has delivered everything).
    shared: bool,
    /// Serialises this process's revocation commits, so that with a store of its own the
    /// newest applied id is also the feed's cursor. Issuance never takes it.
    commit_lock: Mutex<()>,
    /// Seconds added to a rule's cut-off when replicas share the store.
    skew_margin: std::sync::atomic::AtomicU64,
    stale: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

/// What a token's owner is, for owner rules (from the live policy set).
pub type OwnerOf<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Revocations {
    /// Replays the store's journal.
    pub fn open(store: Arc<dyn StateStore>) -> Result<Self, StoreError> {
        let events = store.load()?;
        Ok(Self::from_events(store, &events))
    }

    /// Builds the state from `events` (the journal as loaded once at start).
    pub fn from_events(store: Arc<dyn StateStore>, events: &[Event]) -> Self {
        let me = Self {
            inner: Mutex::new(Inner::default()),
            shared: store.shared(),
            store,
            commit_lock: Mutex::new(()),
            skew_margin: std::sync::atomic::AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
        };
        {
            let mut inner = me.lock();
            for e in events {
                inner.apply(e);
            }
            inner.through = events.last().map_or(0, |e| e.id);
        }
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `change` durable, then applies it.
    pub fn commit(&self, change: &StateChange) -> Result<(), StoreError> {
        self.commit_all(std::slice::from_ref(change))
    }

    /// Makes all of `changes` durable as one unit (one transaction in a shared store),
    /// then applies them.
    pub fn commit_all(&self, changes: &[StateChange]) -> Result<(), StoreError> {
        self.commit_with(|| {
            let ids = self.store.append_all(changes)?;
            Ok(((), crate::store::zip_events(ids, changes.to_vec())))
        })
    }

    /// Runs `append` (which makes changes durable, possibly with other modules' changes
    /// in the same transaction) in this module's commit order, then applies the
    /// revocations among the events it returns.
    pub fn commit_with<T, E>(
        &self,
        append: impl FnOnce() -> Result<(T, Vec<Event>), E>,
    ) -> Result<T, E> {
        let _serial = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (out, events) = append()?;
        let mut inner = self.lock();
        for e in &events {
            inner.apply(e);
            if !self.shared {
                inner.through = inner.through.max(e.id);
            }
        }
        Ok(out)
    }

    /// Applies a change another replica made (already durable in the shared store).
    pub fn apply_remote(&self, event: &Event) {
        self.lock().apply(event);
    }

    /// Records that the shared store has delivered every change up to `id` (its
    /// [`crate::store::Polled::through`]): the feed's cursor may advance to it.
    pub fn confirm_through(&self, id: u64) {
        let mut inner = self.lock();
        inner.through = inner.through.max(id);
    }

    /// Sets how far past `now` a rule's cut-off reaches when replicas share the store: a
    /// token another replica mints before it sees the rule, stamped by a clock up to
    /// this far ahead, is still covered. Tokens minted after the rule is seen get an
    /// `iat` past the cut-off (see [`Revocations::latest_rule_second`]).
    pub fn set_clock_skew_margin(&self, secs: u64) {
        self.skew_margin
            .store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks this replica's view of the shared state as stale (not confirmed current
    /// within the allowed staleness) or current again.
    pub fn set_stale(&self, stale: bool) {
        self.stale
            .store(stale, std::sync::atomic::Ordering::Release);
    }

    /// Whether the view is stale: then no token is issued and none is said to be active,
    /// since a revocation made on another replica might be missing.
    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a token just issued (after its audit record is durable).
    pub fn record_issued(&self, claims: &AccessTokenClaims) {
        let mut inner = self.lock();
        inner.max_iat = inner.max_iat.max(claims.iat);
        inner
            .by_identity
            .entry(claims.sub.clone())
            .or_default()
            .add(claims.exp);
        inner
            .by_task
            .entry((claims.sub.clone(), claims.task.clone()))
            .or_default()
            .add(claims.exp);
        if let Some(bg) = &claims.bg {
            inner
                .by_grant
                .entry(bg.clone())
                .or_default()
                .add(claims.exp);
        }
    }

    /// Why the token is revoked, or `None` if it is not.
    pub fn revoked(&self, claims: &AccessTokenClaims, owner_of: OwnerOf<'_>) -> Option<String> {
        let inner = self.lock();
        if inner.jtis.contains_key(&claims.jti) {
            return Some(format!("token {} was revoked", claims.jti));
        }
        inner
            .rules
            .iter()
            .find(|r| {
                claims.iat <= r.issued_before
                    && covers(
                        &r.selector,
                        &claims.sub,
                        &claims.task,
                        claims.bg.as_deref(),
                        owner_of,
                    )
            })
            .map(|r| format!("revoked by rule {}", r.id))
    }

    /// The `issued_before` of a rule made at `now`: it must cover every token already
    /// minted, including ones whose `iat` was moved past an earlier rule's second.
    /// With a shared store the cut-off also reaches the clock-skew margin past `now`,
    /// since other replicas' recent tokens are not counted here.
    pub fn rule_cutoff(&self, now: u64) -> u64 {
        let margin = if self.shared {
            self.skew_margin.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            0
        };
        now.saturating_add(margin).max(self.lock().max_iat)
    }

    /// The reason an identity is disabled, if it is.
    pub fn disabled(&self, identity: &str) -> Option<String> {
        self.lock().disabled.get(identity).cloned()
    }

    /// The latest second at which a rule covering tokens of `identity`/`task` was made:
    /// a token minted in that same second must carry a later `iat` to stay outside it.
    pub fn latest_rule_second(&self, identity: &str, task: &str, owner: &str) -> Option<u64> {
        let owner_of = |_: &str| Some(owner.to_owned());
        self.lock()
            .rules
            .iter()
            .filter(|r| covers(&r.selector, identity, task, None, &owner_of))
            .map(|r| r.issued_before)
            .max()
    }

    /// Live tokens a selector covers right now (issued since this process started).
    pub fn live_count(&self, selector: &Selector, now: u64, identities_of_owner: &[String]) -> u64 {
        let inner = self.lock();
        match selector {
            Selector::Identity { identity } => {
                inner.by_identity.get(identity).map_or(0, |b| b.live(now))
            }
            Selector::Task { task, identity } => inner
                .by_task
                .iter()
                .filter(|((i, t), _)| t == task && identity.as_ref().is_none_or(|x| x == i))
                .map(|(_, b)| b.live(now))
                .sum(),
            Selector::Owner { .. } => identities_of_owner
                .iter()
                .map(|i| inner.by_identity.get(i).map_or(0, |b| b.live(now)))
                .sum(),
            Selector::Grant { grant } => inner.by_grant.get(grant).map_or(0, |b| b.live(now)),
            // Not counted by key: a revoked key's tokens stop verifying with it anyway.
            Selector::Key { .. } => 0,
        }
    }

    /// The feed entries after `since` that are still relevant at `now`, and the latest cursor.
    pub fn feed(&self, since: u64, now: u64) -> (Vec<FeedEntry>, u64) {
        let inner = self.lock();
        let mut out: Vec<FeedEntry> = inner
            .jtis
            .iter()
            .filter(|(_, (until, cursor))| *cursor > since && *until > now)
            .map(|(jti, (until, cursor))| FeedEntry {
                cursor: *cursor,
                jti: Some(jti.clone()),
                rule: None,
                until: *until,
            })
            .chain(
                inner
                    .rules
                    .iter()
                    .filter(|r| r.cursor > since && r.until > now)
                    .map(|r| FeedEntry {
                        cursor: r.cursor,
                        jti: None,
                        rule: Some(FeedRule {
                            id: r.id.clone(),
                            selector: r.selector.clone(),
                            issued_before: r.issued_before,
                        }),
                        until: r.until,
                    }),
            )
            .collect();
        out.sort_by_key(|e| e.cursor);
        (out, inner.through)
    }

    /// Drops entries and counts that can no longer matter.
    pub fn sweep(&self, now: u64) {
        let mut inner = self.lock();
        inner.jtis.retain(|_, (until, _)| *until > now);
        inner.rules.retain(|r| r.until > now);
        for b in inner.by_identity.values_mut() {
            b.sweep(now);
        }
        inner.by_identity.retain(|_, b| !b.0.is_empty());
        for b in inner.by_task.values_mut() {
            b.sweep(now);
        }
        inner.by_task.retain(|_, b| !b.0.is_empty());
        for b in inner.by_grant.values_mut() {
            b.sweep(now);
        }
        inner.by_grant.retain(|_, b| !b.0.is_empty());
    }
}

/// Whether `selector` covers a token of identity `sub`, task `task`, grant `bg`.
fn covers(
    selector: &Selector,
    sub: &str,
    task: &str,
    bg: Option<&str>,
    owner_of: OwnerOf<'_>,
) -> bool {
    match selector {
        Selector::Identity { identity } => sub == identity,
        Selector::Task { task: t, identity } => {
            t == task && identity.as_deref().is_none_or(|i| i == sub)
        }
        Selector::Owner { owner } => owner_of(sub).is_some_and(|o| &o == owner),
        Selector::Grant { grant } => bg == Some(grant.as_str()),
        // A revoked key leaves every replica's JWKS, so the broker refuses its tokens at
        // signature verification; the rule is for offline verifiers (the feed).
        Selector::Key { .. } => false,
    }
}

impl Inner {
    /// Applies a revocation change; its event id is its feed cursor. Idempotent.
    fn apply(&mut self, event: &Event) {
        let cursor = event.id;
        match &event.change {
            StateChange::RevokeJti { jti, exp, .. } => {
                self.jtis.entry(jti.clone()).or_insert((*exp, cursor));
            }
            StateChange::RevokeRule {
                id,
                selector,
                issued_before,
                until,
                ..
            } => {
                if self.rules.iter().any(|r| r.id == *id) {
                    return;
                }
                self.rules.push(RuleEntry {
                    id: id.clone(),
                    selector: selector.clone(),
                    issued_before: *issued_before,
                    until: *until,
                    cursor,
                });
            }
            StateChange::Disable {
                identity, reason, ..
            } => {
                self.disabled.insert(identity.clone(), reason.clone());
            }
            StateChange::Enable { identity, .. } => {
                self.disabled.remove(identity);
            }
            StateChange::Grant(_)
            | StateChange::Anomaly(_)
            | StateChange::Key(_)
            | StateChange::KeyPublished { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn claims(sub: &str, task: &str, jti: &str, iat: u64, exp: u64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "i".into(),
            sub: sub.into(),
            client_id: sub.into(),
            aud: "a".into(),
            scope: "s".into(),
            jti: jti.into(),
            iat,
            nbf: iat,
            exp,
            task: task.into(),
            env: "e".into(),
            cnf: None,
            bg: None,
            act: None,
        }
    }

    fn rule(id: &str, selector: Selector, issued_before: u64) -> StateChange {
        StateChange::RevokeRule {
            id: id.into(),
            selector,
            issued_before,
            until: issued_before + 600,
            at: issued_before,
            actor: "admin".into(),
            reason: "test".into(),
        }
    }

    #[test]
    fn rules_cover_only_tokens_issued_before_them() {
        let r = Revocations::open(Arc::new(MemoryStore::default())).unwrap();
        let none = |_: &str| None;
        let old = claims("x", "t", "1", 100, 700);
        let new = claims("x", "t", "2", 201, 800);
        r.commit(&rule(
            "r1",
            Selector::Identity {
                identity: "x".into(),
            },
            200,
        ))
        .unwrap();
        assert!(r.revoked(&old, &none).is_some());
        assert!(r.revoked(&new, &none).is_none());
        assert!(r.revoked(&claims("y", "t", "3", 100, 700), &none).is_none());
    }

    #[test]
    fn owner_task_and_grant_selectors() {
        let r = Revocations::open(Arc::new(MemoryStore::default())).unwrap();
        let owner_of = |s: &str| (s == "x").then(|| "team".to_string());
        r.commit(&rule(
            "o",
            Selector::Owner {
                owner: "team".into(),
            },
            50,
        ))
        .unwrap();
        assert!(
            r.revoked(&claims("x", "t", "1", 10, 700), &owner_of)
                .is_some()
        );
        assert!(
            r.revoked(&claims("y", "t", "1", 10, 700), &owner_of)
                .is_none()
        );
        r.commit(&rule(
            "t",
            Selector::Task {
                task: "deploy".into(),
                identity: None,
            },
            50,
        ))
        .unwrap();
        assert!(
            r.revoked(&claims("y", "deploy", "1", 10, 700), &owner_of)
                .is_some()
        );
        let mut bg = claims("y", "t", "9", 10, 700);
        bg.bg = Some("g1".into());
        r.commit(&rule("g", Selector::Grant { grant: "g1".into() }, 50))
            .unwrap();
        assert!(r.revoked(&bg, &owner_of).is_some());
    }

    #[test]
    fn state_survives_reopen_and_the_feed_drops_expired_entries() {
        let store = MemoryStore::default();
        let r = Revocations::open(Arc::new(store.clone())).unwrap();
        r.commit(&StateChange::RevokeJti {
            jti: "a".into(),
            exp: 100,
            at: 1,
            actor: "x".into(),
            reason: "y".into(),
        })
        .unwrap();
        r.commit(&rule(
            "r",
            Selector::Identity {
                identity: "x".into(),
            },
            10,
        ))
        .unwrap();
        r.commit(&StateChange::Disable {
            identity: "x".into(),
            at: 1,
            actor: "a".into(),
            reason: "incident".into(),
        })
        .unwrap();
        let again = Revocations::open(Arc::new(store)).unwrap();
        assert_eq!(again.disabled("x").as_deref(), Some("incident"));
        let (all, cursor) = again.feed(0, 50);
        assert_eq!(all.len(), 2);
        assert_eq!(cursor, 3, "the cursor is the journal's newest event id");
        let (newer, _) = again.feed(1, 50);
        assert_eq!(newer.len(), 1);
        assert!(newer[0].rule.is_some());
        let (later, _) = again.feed(0, 200);
        assert_eq!(later.len(), 1, "the jti entry expired at 100");
        again.sweep(700);
        assert!(again.feed(0, 0).0.is_empty());
    }

    #[test]
    fn live_counts_cover_only_unexpired_tokens() {
        let r = Revocations::open(Arc::new(MemoryStore::default())).unwrap();
        for i in 0..100_000u64 {
            r.record_issued(&claims("x", "t", &i.to_string(), 10, 1000 + i % 600));
        }
        r.record_issued(&claims("y", "t", "y", 10, 1000));
        let sel = Selector::Identity {
            identity: "x".into(),
        };
        assert_eq!(r.live_count(&sel, 0, &[]), 100_000);
        let expected = (0..100_000u64).filter(|i| 1000 + i % 600 > 1299).count() as u64;
        assert_eq!(r.live_count(&sel, 1299, &[]), expected);
        let task = Selector::Task {
            task: "t".into(),
            identity: None,
        };
        assert_eq!(r.live_count(&task, 0, &[]), 100_001);
        r.sweep(1299);
        assert_eq!(r.live_count(&sel, 1299, &[]), expected);
        assert_eq!(r.live_count(&sel, 1599, &[]), 0);
    }

    /// The feed's cursor is the journal's event id, the same on every replica, and it
    /// advances on a replica only as far as it has applied everything.
    #[test]
    fn feed_cursors_are_shared_event_ids() {
        use crate::store::postgres::{PostgresStore, test_options};
        let Some(pg) = crate::store::testpg::TestPostgres::start() else {
            return;
        };
        let opts = test_options(&pg);
        let store_b = Arc::new(PostgresStore::connect(&opts).unwrap());
        let a = Revocations::open(Arc::new(PostgresStore::connect(&opts).unwrap())).unwrap();
        let b = Revocations::open(store_b.clone()).unwrap();
        let jti = |j: &str| StateChange::RevokeJti {
            jti: j.into(),
            exp: 1000,
            at: 1,
            actor: "x".into(),
            reason: "y".into(),
        };
        a.commit(&jti("one")).unwrap();
        b.commit(&jti("two")).unwrap();
        // B made event 2 but has not seen event 1: its cursor stays behind event 1, and
        // its feed lists event 2 (a client will see it again later, never miss one).
        let (entries, cursor) = b.feed(0, 10);
        assert_eq!(cursor, 0);
        assert_eq!(entries.len(), 1);
        let polled = store_b.poll().unwrap();
        for e in &polled.events {
            b.apply_remote(e);
        }
        b.confirm_through(polled.through);
        let (entries, cursor) = b.feed(0, 10);
        assert_eq!(cursor, 2);
        let ids: Vec<(u64, Option<String>)> =
            entries.into_iter().map(|e| (e.cursor, e.jti)).collect();
        assert_eq!(
            ids,
            vec![(1, Some("one".into())), (2, Some("two".into()))],
            "each entry carries its event id"
        );
        // The rule cut-off reaches the skew margin past `now` on a shared store.
        b.set_clock_skew_margin(2);
        assert_eq!(b.rule_cutoff(100), 102);
    }
}
