//! Signing-key lifecycle: `prepared` (published, not signing) → `active` (signs) →
//! `retiring` (published, no longer signing, until the last token it signed has
//! expired) → `retired` (gone from the JWKS); or `revoked` (gone at once, every token it
//! signed revoked by a feed rule on its `kid`).
//!
//! Every transition is a [`KeyChange`] in the state store, so every replica (and a
//! restart) agrees on each key's state; each replica moves only its own keys (the ones
//! whose private half is in its key directory) and follows the others'.
//!
//! The invariant "no token outlives its signing key's presence in the JWKS" is kept by a
//! lease: an active key is guaranteed (durably, in the store) to stay published until
//! `lease_until`, which the service extends ahead of need; the minter caps every `exp`
//! at the lease; a key that stops signing retires at its lease, never earlier.
//!
//! Scheduled rotation (`[signing] rotate_every`) prepares the successor `prepublish`
//! before it activates, which is at least the JWKS `Cache-Control: max-age` verifiers
//! are told, so any verifier's cached JWKS has the new key before it first signs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::keys::{self, Jwks, KeyRing, PublicJwk, Signer, SigningAlgorithm};
use super::pkcs11::Pkcs11Config;
use super::{ActiveKey, Minter, Signing};
use crate::audit::AuditLog;
use crate::audit::event::{AuditEvent, EventKind};
use crate::clock::Clock;
use crate::store::{Event, KeyChange, Selector, StateChange, StateStore, StoreError};

/// The public halves of retired and revoked keys, kept in the key directory so that
/// `broker audit verify` still checks anchors they signed.
pub const RETIRED_KEYS_FILE: &str = "retired-keys.json";

/// Rotation settings (`[signing]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate each active key after this long (`rotate_every`; none: on demand only).
    pub rotate_every: Option<Duration>,
    /// How long a new key is published before it signs (`prepublish`).
    pub prepublish: Duration,
    /// How far ahead an active key's publication is guaranteed (`key_lease`): the
    /// longest a token can live, and how long a retiring key stays published.
    pub lease: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            rotate_every: None,
            prepublish: Duration::from_secs(3600),
            lease: Duration::from_secs(crate::revocation::MAX_TOKEN_LIFETIME_SECS),
        }
    }
}

/// A key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not signing yet.
    Prepared,
    /// Signs.
    Active,
    /// Published, no longer signing.
    Retiring,
    /// Gone from the JWKS.
    Retired,
    /// Gone at once; its tokens revoked.
    Revoked,
}

impl KeyState {
    fn published(self) -> bool {
        matches!(self, Self::Prepared | Self::Active | Self::Retiring)
    }
}

/// One key as `broker keys list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// State.
    pub state: KeyState,
    /// The replica that holds it ("" for a single broker).
    pub replica: String,
    /// When it was prepared.
    pub prepared_at: u64,
    /// When it signs (prepared) or signed from (active and after).
    pub activate_at: u64,
    /// Published at least until then (active keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<u64>,
    /// When it leaves the JWKS (retiring keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<u64>,
}

#[derive(Debug, Clone)]
struct Record {
    jwk: PublicJwk,
    replica: String,
    state: KeyState,
    prepared_at: u64,
    activate_at: u64,
    lease_until: u64,
    retire_at: Option<u64>,
}

impl Record {
    fn alg(&self) -> Option<SigningAlgorithm> {
        self.jwk.alg.as_deref()?.parse().ok()
    }

    fn apply(&mut self, change: &KeyChange) {
        match change {
            KeyChange::Prepared { .. } => {}
            KeyChange::Activated { at, .. } => {
                if self.state == KeyState::Prepared {
                    self.state = KeyState::Active;
                    self.activate_at = *at;
                }
            }
            KeyChange::Lease { until, .. } => self.lease_until = self.lease_until.max(*until),
            KeyChange::Retiring { retire_at, .. } => {
                if matches!(self.state, KeyState::Prepared | KeyState::Active) {
                    self.state = KeyState::Retiring;
                    self.retire_at = Some(*retire_at);
                }
            }
            KeyChange::Retired { .. } => {
                if self.state != KeyState::Revoked {
                    self.state = KeyState::Retired;
                }
            }
            KeyChange::Revoked { .. } => self.state = KeyState::Revoked,
        }
    }
}

fn kid_of(change: &KeyChange) -> &str {
    match change {
        KeyChange::Prepared { jwk, .. } => &jwk.kid,
        KeyChange::Activated { kid, .. }
        | KeyChange::Lease { kid, .. }
        | KeyChange::Retiring { kid, .. }
        | KeyChange::Retired { kid, .. }
        | KeyChange::Revoked { kid, .. } => kid,
    }
}

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// No such key.
    #[error("no signing key {0:?}")]
    UnknownKey(String),
    /// The key is another replica's: only the replica holding it can retire it.
    #[error("key {kid} belongs to replica {replica:?}: retire it there")]
    NotOurs {
        /// The key.
        kid: String,
        /// Its replica.
        replica: String,
    },
    /// The key is in a state the operation does not apply to.
    #[error("key {kid} is {state:?}: {what}")]
    WrongState {
        /// The key.
        kid: String,
        /// Its state.
        state: KeyState,
        /// What cannot be done.
        what: &'static str,
    },
    /// The state store refused the change: nothing changed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// A key could not be made or removed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

/// Where this replica's private keys live, and so where a rotation makes the next one
/// and where a retired or revoked one is destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHome {
    /// PEM files in the key directory.
    Files,
    /// A PKCS#11 token (`[signing] pkcs11`): new keys are generated in the token, never
    /// leave it, and are destroyed in it.
    Token(Pkcs11Config),
}

/// A key change this replica plans, not yet made: its state changes (one transaction),
/// the new keys made for it (destroyed if it is not made; nothing publishes or signs
/// with them before), and the retired keys whose private halves go once it is made.
/// [`crate::admin_changes::keys`] records it first, then makes it.
#[derive(Debug, Default)]
#[must_use = "a plan is made (recorded first) or abandoned"]
pub struct KeyPlan {
    changes: Vec<StateChange>,
    made: Vec<String>,
    destroy: Vec<String>,
}

impl KeyPlan {
    /// Nothing to change (nothing due).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.made.is_empty()
    }

    /// The state changes it makes, in one transaction.
    pub fn changes(&self) -> &[StateChange] {
        &self.changes
    }
}

struct Inner {
    records: BTreeMap<String, Record>,
    /// This replica's private keys by kid.
    own: HashMap<String, Arc<dyn Signer>>,
}

/// The key lifecycle of this replica over the shared state.
pub struct KeyService {
    dir: PathBuf,
    home: KeyHome,
    replica: String,
    policy: RotationPolicy,
    store: Arc<dyn StateStore>,
    minter: Arc<Minter>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// The audit log whose head anchors the active key signs ([`KeyService::bind_audit`]).
    audit: std::sync::OnceLock<AuditLog>,
    /// Held from a change's plan until it is made or abandoned, so that two changes on
    /// this replica never plan against the same state.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("dir", &self.dir)
            .field("home", &self.home)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// An audit record of a key transition.
fn key_event(kind: EventKind, info: &KeyInfo, detail: serde_json::Value) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    ev.kid = Some(info.kid.clone());
    let mut d = serde_json::json!({
        "alg": info.alg, "replica": info.replica, "state": info.state,
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (d.as_object_mut(), detail) {
        obj.extend(extra);
    }
    ev.detail = Some(d);
    ev
}

impl KeyService {
    /// The lifecycle over the journal `events` and the private keys in `ring` (loaded
    /// from `dir`): reconciles the two (a new key file an operator made signs at once,
    /// the way `keygen` + restart always did; a key whose file is gone stops signing;
    /// a retired or revoked key's leftover file is removed), records what changed, and
    /// installs what signs into `minter`. Returns the audit records to write. `home`
    /// says where `ring`'s private keys live (files in `dir`, or a PKCS#11 token); the
    /// public halves of retired keys are kept in `dir` either way.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: &Path,
        home: KeyHome,
        replica: &str,
        policy: RotationPolicy,
        ring: &KeyRing,
        events: &[Event],
        store: Arc<dyn StateStore>,
        minter: Arc<Minter>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Self>, Vec<AuditEvent>), LifecycleError> {
        let mut inner = Inner {
            records: BTreeMap::new(),
            own: ring
                .signers()
                .map(|s| (s.kid().to_owned(), Arc::clone(s)))
                .collect(),
        };
        for e in events {
            apply_change(&mut inner.records, &e.change);
        }
        let svc = Arc::new(Self {
            dir: dir.to_path_buf(),
            home,
            replica: replica.to_owned(),
            policy,
            store,
            minter,
            clock,
            inner: Mutex::new(inner),
            audit: std::sync::OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
        });
        let audit = svc.reconcile(ring)?;
        svc.install();
        Ok((svc, audit))
    }

    /// From now on, `audit`'s head anchors are signed by this replica's active key,
    /// switched whenever the active key changes. While none is active the log keeps the
    /// key it signed with last, until a successor signs (docs/keys.md, "Limits").
    pub fn bind_audit(&self, audit: AuditLog) {
        self.anchor_to_active_key(&audit);
        let _ = self.audit.set(audit);
    }

    /// Points `audit`'s head anchors at the active key; with no key active the log keeps
    /// its anchor key until the next tick makes one.
    fn anchor_to_active_key(&self, audit: &AuditLog) {
        if let Some(signer) = self.minter.anchor_signer() {
            audit.set_anchor_signer(signer);
        }
    }

    /// One key change at a time on this replica: hold this from planning a change until
    /// it is made or abandoned.
    pub async fn one_change_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    fn lease_from(&self, now: u64) -> u64 {
        now.saturating_add(self.policy.lease.as_secs())
            .saturating_add(self.lease_step())
    }

    /// When a key published at `now` (whole seconds) may first sign: `prepublish` later,
    /// plus one second, because the key may have been published as late as the end of the
    /// second `now` names; so every verifier gets at least `prepublish` of real time to
    /// refetch its JWKS.
    fn activation_after_prepublish(&self, now: u64) -> u64 {
        now.saturating_add(self.policy.prepublish.as_secs())
            .saturating_add(1)
    }

    /// How much beyond the need a lease is extended, so extensions are rare.
    fn lease_step(&self) -> u64 {
        (self.policy.lease.as_secs() / 4).max(1)
    }

    /// Appends `changes` (one transaction), then applies them here.
    fn commit(&self, changes: &[StateChange]) -> Result<(), LifecycleError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.store.append_all(changes)?;
        let mut inner = self.lock();
        for c in changes {
            apply_change(&mut inner.records, c);
        }
        Ok(())
    }

    fn reconcile(&self, ring: &KeyRing) -> Result<Vec<AuditEvent>, LifecycleError> {
        let now = self.now();
        let mut changes = Vec::new();
        let mut audit = Vec::new();
        let mut leftovers = Vec::new();
        {
            let inner = self.lock();
            // Keys in the directory in file order (oldest first), newest last.
            let files: Vec<Arc<dyn Signer>> = ring.signers().cloned().collect();
            for alg in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
                let of_alg: Vec<&Arc<dyn Signer>> =
                    files.iter().filter(|s| s.algorithm() == alg).collect();
                let active = inner.records.values().find(|r| {
                    r.replica == self.replica && r.state == KeyState::Active && r.alg() == Some(alg)
                });
                let newest_unrecorded = of_alg
                    .iter()
                    .rev()
                    .find(|s| !inner.records.contains_key(s.kid()));
                let newest_file = of_alg.last();
                // A new file newer than every recorded key signs now (keygen + restart).
                let promote = match (newest_unrecorded, newest_file, active) {
                    (Some(u), Some(n), _) if u.kid() == n.kid() => Some(*u),
                    (Some(u), _, None) => Some(*u),
                    _ => None,
                };
                let active_has_file =
                    active.is_some_and(|a| files.iter().any(|s| s.kid() == a.jwk.kid));
                let replace = promote.is_some() || (active.is_some() && !active_has_file);
                if replace && let Some(a) = active {
                    changes.push(StateChange::Key(KeyChange::Retiring {
                        kid: a.jwk.kid.clone(),
                        at: now,
                        retire_at: a.lease_until.max(now),
                    }));
                }
                for s in of_alg
                    .iter()
                    .filter(|s| !inner.records.contains_key(s.kid()))
                {
                    changes.push(StateChange::Key(KeyChange::Prepared {
                        jwk: s.public_jwk(),
                        replica: self.replica.clone(),
                        at: now,
                        activate_at: now,
                    }));
                    if promote.is_some_and(|p| p.kid() == s.kid()) {
                        changes.push(StateChange::Key(KeyChange::Activated {
                            kid: s.kid().to_owned(),
                            at: now,
                        }));
                        changes.push(StateChange::Key(KeyChange::Lease {
                            kid: s.kid().to_owned(),
                            until: self.lease_from(now),
                        }));
                    } else {
                        // An older key no record knows (a broker from before key
                        // lifecycles): its tokens may be out, so it retires after a lease.
                        changes.push(StateChange::Key(KeyChange::Retiring {
                            kid: s.kid().to_owned(),
                            at: now,
                            retire_at: self.lease_from(now),
                        }));
                    }
                }
            }
            for r in inner.records.values() {
                if r.replica == self.replica
                    && matches!(r.state, KeyState::Retired | KeyState::Revoked)
                    && inner.own.contains_key(&r.jwk.kid)
                {
                    leftovers.push(r.jwk.kid.clone());
                }
            }
        }
        self.commit(&changes)?;
        for c in &changes {
            if let Some(ev) = self.audit_of(c) {
                audit.push(ev);
            }
        }
        for kid in leftovers {
            self.destroy(&kid)?;
        }
        Ok(audit)
    }

    /// The audit record of a key change, if it is one that is recorded, as the records
    /// stand now.
    fn audit_of(&self, change: &StateChange) -> Option<AuditEvent> {
        audit_of_in(&self.lock().records, change)
    }

    /// Every key the shared state knows, oldest first.
    pub fn list(&self) -> Vec<KeyInfo> {
        let inner = self.lock();
        let mut out: Vec<KeyInfo> = inner.records.values().map(info_of).collect();
        out.sort_by_key(|k| (k.prepared_at, k.kid.clone()));
        out
    }

    /// Installs into the minter: this replica's active keys (with their leases) and
    /// every published key (prepared, active, retiring; any replica's).
    fn install(&self) {
        let inner = self.lock();
        let mut by_alg: HashMap<SigningAlgorithm, ActiveKey> = HashMap::new();
        for r in inner.records.values() {
            if r.replica != self.replica || r.state != KeyState::Active {
                continue;
            }
            let (Some(alg), Some(signer)) = (r.alg(), inner.own.get(&r.jwk.kid)) else {
                continue;
            };
            // Newest activation wins if two are active (a race between replicas' views).
            let newer = by_alg.get(&alg).is_none_or(|a| {
                inner
                    .records
                    .get(a.signer.kid())
                    .is_none_or(|x| x.activate_at <= r.activate_at)
            });
            if newer {
                by_alg.insert(
                    alg,
                    ActiveKey {
                        signer: Arc::clone(signer),
                        lease_until: r.lease_until,
                    },
                );
            }
        }
        let mut published: Vec<PublicJwk> = inner
            .records
            .values()
            .filter(|r| r.state.published())
            .map(|r| r.jwk.clone())
            .collect();
        // Keys other replicas published before key lifecycles existed.
        for k in &self.minter.jwks().keys {
            let known = inner.records.contains_key(&k.kid);
            if !known
                && !published.iter().any(|p| p.kid == k.kid)
                && !inner.own.contains_key(&k.kid)
            {
                published.push(k.clone());
            }
        }
        drop(inner);
        self.minter.install(Signing {
            by_alg,
            published: Arc::new(Jwks { keys: published }),
        });
        if let Some(audit) = self.audit.get() {
            self.anchor_to_active_key(audit);
        }
    }

    /// Applies a change another replica made (or this one, seen again): its keys'
    /// states. A revocation of one of this replica's own keys (another replica's admin
    /// revoked it) is answered at once: the key's private half is destroyed and, if it
    /// was signing, a successor is made and signs at once. Returns the audit records
    /// of that successor, to write after ([`KeyService::record`]): the one key change
    /// not recorded first, because until the successor signs no key may sign the
    /// anchor of its record (a revoked key signs none), and its cause is already
    /// recorded (the other replica's `key_revoked`).
    pub fn apply_remote(&self, change: &StateChange) -> Vec<AuditEvent> {
        let StateChange::Key(k) = change else {
            return Vec::new();
        };
        let (own_revoked, was_signing) = {
            let mut inner = self.lock();
            apply_change(&mut inner.records, change);
            let kid = kid_of(k);
            let own = matches!(k, KeyChange::Revoked { .. }) && inner.own.contains_key(kid);
            let alg = inner.records.get(kid).and_then(Record::alg);
            let signing = own
                && self
                    .minter
                    .signer_for_alg(alg)
                    .is_some_and(|a| a.signer.kid() == kid);
            (own, if signing { alg } else { None })
        };
        let mut audit = Vec::new();
        if own_revoked {
            // The revoked key stops signing before it is destroyed.
            self.install();
            let kid = kid_of(k);
            if let Err(e) = self.destroy(kid) {
                tracing::error!(%kid, error = %e, "could not destroy a revoked key");
            }
            if let Some(alg) = was_signing {
                match self.replace_revoked(alg) {
                    Ok(events) => audit = events,
                    Err(e) => tracing::error!(%kid, error = %e, "could not replace a revoked key"),
                }
            }
        }
        self.install();
        audit
    }

    /// A successor for this replica's revoked signing key of `alg`, made at once; its
    /// records are returned, to write after ([`KeyService::apply_remote`] says why).
    fn replace_revoked(&self, alg: SigningAlgorithm) -> Result<Vec<AuditEvent>, LifecycleError> {
        let plan = self.plan_successors(&[alg], self.now(), KeyPlan::default())?;
        let events = self.events(&plan, Some("broker"));
        if let Err(e) = self.store.append_all(&plan.changes) {
            // The store may have committed it after all (a lost answer): like an admin
            // change's, the key stays, so that it can sign once this replica learns of
            // it. If it did not commit, the next tick makes another
            // ([`KeyService::unsigned`]).
            tracing::error!(
                "a revoked key's successor could not be made durable; its key is kept in case it committed"
            );
            return Err(e.into());
        }
        self.applied(&plan);
        let _ = self.finish(plan);
        Ok(events)
    }

    /// What is due at `now` in `records`: lease extensions, activation of prepared keys
    /// (their predecessors start retiring), retirement of retiring keys whose lease has
    /// passed (their private halves destroyed once it is made). Returns the algorithms
    /// whose scheduled rotation is due.
    fn due(
        &self,
        records: &BTreeMap<String, Record>,
        now: u64,
        plan: &mut KeyPlan,
    ) -> Vec<SigningAlgorithm> {
        let mut prepare: Vec<SigningAlgorithm> = Vec::new();
        let own = |r: &&Record| r.replica == self.replica;
        for r in records.values().filter(own) {
            let kid = r.jwk.kid.clone();
            match r.state {
                KeyState::Active
                    if r.lease_until < now.saturating_add(self.policy.lease.as_secs()) =>
                {
                    plan.changes.push(StateChange::Key(KeyChange::Lease {
                        kid,
                        until: self.lease_from(now),
                    }));
                }
                KeyState::Prepared if r.activate_at <= now => {
                    plan.changes.push(StateChange::Key(KeyChange::Activated {
                        kid: kid.clone(),
                        at: now,
                    }));
                    plan.changes.push(StateChange::Key(KeyChange::Lease {
                        kid,
                        until: self.lease_from(now),
                    }));
                    // Its predecessor of the same algorithm stops signing.
                    for old in records.values().filter(own) {
                        if old.state == KeyState::Active && old.alg() == r.alg() {
                            plan.changes.push(StateChange::Key(KeyChange::Retiring {
                                kid: old.jwk.kid.clone(),
                                at: now,
                                retire_at: old.lease_until.max(now),
                            }));
                        }
                    }
                }
                KeyState::Retiring if r.retire_at.is_some_and(|t| t <= now) => {
                    plan.changes.push(StateChange::Key(KeyChange::Retired {
                        kid: kid.clone(),
                        at: now,
                    }));
                    plan.destroy.push(kid);
                }
                _ => {}
            }
        }
        if let Some(every) = self.policy.rotate_every {
            for r in records.values().filter(own) {
                let due = r
                    .activate_at
                    .saturating_add(every.as_secs())
                    .saturating_sub(self.policy.prepublish.as_secs());
                let successor_pending = records
                    .values()
                    .filter(own)
                    .any(|p| p.state == KeyState::Prepared && p.alg() == r.alg());
                if r.state == KeyState::Active
                    && due <= now
                    && !successor_pending
                    && let Some(alg) = r.alg()
                    && !prepare.contains(&alg)
                {
                    prepare.push(alg);
                }
            }
        }
        prepare
    }

    /// The records with `plan`'s changes applied (what they will be once it is made).
    fn preview(&self, plan: &KeyPlan) -> BTreeMap<String, Record> {
        let mut records = self.lock().records.clone();
        for c in &plan.changes {
            apply_change(&mut records, c);
        }
        records
    }

    /// Plans what is due at the clock's now: lease extensions, activation of prepared
    /// keys (their predecessors start retiring), retirement of retiring keys whose lease
    /// has passed, a successor prepared for each scheduled rotation that is due, and a
    /// key that signs at once for each algorithm no key of this replica signs or is
    /// about to sign (a revocation whose successor could not be made, or a successor
    /// whose transaction failed).
    pub fn plan_tick(&self) -> Result<KeyPlan, LifecycleError> {
        let now = self.now();
        let mut plan = KeyPlan::default();
        let (records, unsigned) = {
            let inner = self.lock();
            (inner.records.clone(), self.unsigned(&inner))
        };
        let scheduled: Vec<SigningAlgorithm> = self
            .due(&records, now, &mut plan)
            .into_iter()
            .filter(|alg| !unsigned.contains(alg))
            .collect();
        let plan = self.plan_successors(&scheduled, self.activation_after_prepublish(now), plan)?;
        if unsigned.is_empty() {
            return Ok(plan);
        }
        tracing::warn!(
            algorithms = ?unsigned,
            "no key of this replica signs these algorithms; making one that signs at once"
        );
        self.plan_successors(&unsigned, now, plan)
    }

    /// The algorithms this replica signs with ([`Minter::algorithms`]) for which none of
    /// its keys whose private half it holds is active or prepared: after a revocation
    /// whose successor could not be made (the key directory or the token failed), or a
    /// successor whose transaction failed. Until the next tick makes one, tokens of that
    /// algorithm are refused.
    fn unsigned(&self, inner: &Inner) -> Vec<SigningAlgorithm> {
        self.minter
            .algorithms()
            .into_iter()
            .filter(|&alg| {
                !inner.records.values().any(|r| {
                    r.replica == self.replica
                        && matches!(r.state, KeyState::Active | KeyState::Prepared)
                        && r.alg() == Some(alg)
                        && inner.own.contains_key(&r.jwk.kid)
                })
            })
            .collect()
    }

    /// Makes a new key of `alg` where this replica's keys live (a file in the key
    /// directory, or a key pair generated in the PKCS#11 token).
    fn make_key(&self, alg: SigningAlgorithm, now: u64) -> Result<Arc<dyn Signer>, LifecycleError> {
        Ok(match &self.home {
            KeyHome::Files => {
                let (path, _) = keys::generate(&self.dir, alg, now)?;
                KeyRing::load_dir_file(&path)?
            }
            KeyHome::Token(config) => {
                super::pkcs11::generate_rotated(config, alg, now).map_err(keys::KeyError::from)?
            }
        })
    }

    /// Makes a new key of `alg` and adds it to `plan` as prepared, to sign from
    /// `activate_at`. Nothing signs with it or publishes it until the plan is made.
    fn make_prepared(
        &self,
        alg: SigningAlgorithm,
        activate_at: u64,
        plan: &mut KeyPlan,
    ) -> Result<(), LifecycleError> {
        let now = self.now();
        let signer = self.make_key(alg, now)?;
        let kid = signer.kid().to_owned();
        plan.changes.push(StateChange::Key(KeyChange::Prepared {
            jwk: signer.public_jwk(),
            replica: self.replica.clone(),
            at: now,
            activate_at,
        }));
        self.lock().own.insert(kid.clone(), signer);
        plan.made.push(kid);
        Ok(())
    }

    /// Adds to `plan` a new key of each algorithm in `algs`, prepared to sign from
    /// `activate_at`; if that is now, its activation (and its predecessor's retirement)
    /// too.
    fn plan_successors(
        &self,
        algs: &[SigningAlgorithm],
        activate_at: u64,
        mut plan: KeyPlan,
    ) -> Result<KeyPlan, LifecycleError> {
        let now = self.now();
        for &alg in algs {
            if let Err(e) = self.make_prepared(alg, activate_at, &mut plan) {
                self.abandon(plan);
                return Err(e);
            }
        }
        if activate_at <= now {
            let records = self.preview(&plan);
            // A scheduled rotation cannot be due: each algorithm has a successor pending.
            let _ = self.due(&records, now, &mut plan);
        }
        Ok(plan)
    }

    /// `broker keys rotate`: plans a successor for each algorithm that signs,
    /// activating `prepublish` from now (or now, with `immediately`).
    pub fn plan_rotate(&self, immediately: bool) -> Result<KeyPlan, LifecycleError> {
        let now = self.now();
        let activate_at = if immediately {
            now
        } else {
            self.activation_after_prepublish(now)
        };
        self.plan_successors(&self.minter.algorithms(), activate_at, KeyPlan::default())
    }

    /// `broker keys revoke KID` as one change: the revocation's `changes`
    /// ([`KeyService::revocation_changes`]) and, if KID is this replica's signing key, a
    /// successor that signs at once (no prepublication: the old key is gone, verifiers
    /// refetch on the unknown `kid`). KID's private half (if this replica holds it) is
    /// destroyed once the change is made. Until then KID still signs, anchors included,
    /// so the change's records are anchored like any other.
    pub fn plan_revocation(
        &self,
        kid: &str,
        changes: Vec<StateChange>,
    ) -> Result<KeyPlan, LifecycleError> {
        let (own, signing_alg) = {
            let inner = self.lock();
            let alg = inner.records.get(kid).and_then(Record::alg);
            let signing = self
                .minter
                .signer_for_alg(alg)
                .is_some_and(|a| a.signer.kid() == kid);
            (
                inner.own.contains_key(kid),
                if signing { alg } else { None },
            )
        };
        let mut plan = KeyPlan {
            changes,
            made: Vec::new(),
            destroy: Vec::new(),
        };
        if own {
            plan.destroy.push(kid.to_owned());
        }
        let Some(alg) = signing_alg else {
            return Ok(plan);
        };
        let revocation_only = KeyPlan {
            changes: plan.changes.clone(),
            made: Vec::new(),
            destroy: plan.destroy.clone(),
        };
        match self.plan_successors(&[alg], self.now(), plan) {
            Ok(plan) => Ok(plan),
            // A compromised key is revoked even when no successor can be made (a failing
            // token or key directory): this replica signs nothing of `alg` until the
            // lifecycle's tick makes a key, which is better than a revoked key signing on.
            Err(e) => {
                tracing::error!(%kid, %alg, error = %e, "no successor could be made for a revoked key; the lifecycle retries until one can be");
                Ok(revocation_only)
            }
        }
    }

    /// `broker keys retire KID`: an active key stops signing now (its successor, made
    /// now, signs at once) and stays published until its lease; a prepared key is
    /// retired at once (it never signed); a retiring key retires at once only if its
    /// lease has passed.
    pub fn plan_retire(&self, kid: &str) -> Result<KeyPlan, LifecycleError> {
        let now = self.now();
        let r = {
            let inner = self.lock();
            inner
                .records
                .get(kid)
                .cloned()
                .ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?
        };
        if r.replica != self.replica {
            return Err(LifecycleError::NotOurs {
                kid: kid.to_owned(),
                replica: r.replica,
            });
        }
        match r.state {
            KeyState::Active => {
                let alg = r
                    .alg()
                    .ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?;
                self.plan_successors(&[alg], now, KeyPlan::default())
            }
            KeyState::Prepared => Ok(KeyPlan {
                changes: vec![StateChange::Key(KeyChange::Retired {
                    kid: kid.to_owned(),
                    at: now,
                })],
                made: Vec::new(),
                destroy: vec![kid.to_owned()],
            }),
            state => Err(LifecycleError::WrongState {
                kid: kid.to_owned(),
                state,
                what: "only a prepared or active key can be retired by hand; a retiring key retires when its last token has expired",
            }),
        }
    }

    /// The audit records of `plan`, each as its change leaves the key (`actor`: the
    /// admin who asked for it, if one did). They are written before the plan is made. A
    /// revocation's own `key_revoked` record is not among them: the admin call writes it,
    /// with its request's context.
    pub fn events(&self, plan: &KeyPlan, actor: Option<&str>) -> Vec<AuditEvent> {
        let mut records = self.lock().records.clone();
        let mut out = Vec::new();
        for c in &plan.changes {
            // Each record shows the key as that change leaves it.
            apply_change(&mut records, c);
            if matches!(c, StateChange::Key(KeyChange::Revoked { .. })) {
                continue;
            }
            if let Some(mut ev) = audit_of_in(&records, c) {
                if ev.actor.is_none() {
                    ev.actor = actor.map(str::to_owned);
                }
                out.push(ev);
            }
        }
        out
    }

    /// After `plan`'s changes were made durable in the state store (one transaction, with
    /// [`crate::revocation::Revocations::commit_all`], which also applies a revocation
    /// among them): applies them to the keys here; [`KeyService::finish`] installs them.
    pub fn applied(&self, plan: &KeyPlan) {
        let mut inner = self.lock();
        for c in &plan.changes {
            apply_change(&mut inner.records, c);
        }
    }

    /// After [`KeyService::applied`]: installs what signs and what is published now,
    /// then destroys the private halves of the keys `plan` retired or revoked.
    pub fn finish(&self, plan: KeyPlan) -> Result<(), LifecycleError> {
        // What signs changes first: a retired or revoked key stops before it is destroyed.
        self.install();
        let mut result = Ok(());
        for kid in plan.destroy {
            if let Err(e) = self.destroy(&kid) {
                tracing::error!(%kid, error = %e, "could not destroy a retired key");
                result = Err(e);
            }
        }
        self.install();
        result
    }

    /// A plan whose records failed, so that it was never appended: the keys made for it
    /// are destroyed, never published. (A plan whose transaction failed is not
    /// abandoned: the store may have committed it after all, so its keys stay.)
    pub fn abandon(&self, plan: KeyPlan) {
        for kid in plan.made {
            if let Err(e) = self.destroy(&kid) {
                tracing::error!(%kid, error = %e, "could not remove a key made for a change that was not made");
            }
        }
    }

    /// The changes that revoke `kid`: its state and the feed rule covering every token
    /// it signed. Appended by the caller in one transaction after the `key_revoked`
    /// record (record first, like every admin change).
    pub fn revocation_changes(
        &self,
        kid: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<StateChange>, LifecycleError> {
        let now = self.now();
        let r = {
            let inner = self.lock();
            inner
                .records
                .get(kid)
                .cloned()
                .ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?
        };
        if r.state == KeyState::Revoked {
            return Err(LifecycleError::WrongState {
                kid: kid.to_owned(),
                state: r.state,
                what: "already revoked",
            });
        }
        let rule_id = crate::ids::random_id("rev-key").map_err(|_| keys::KeyError::Sign)?;
        let until = r
            .lease_until
            .max(r.retire_at.unwrap_or(0))
            .max(now.saturating_add(self.policy.lease.as_secs()));
        Ok(vec![
            StateChange::Key(KeyChange::Revoked {
                kid: kid.to_owned(),
                at: now,
                actor: actor.to_owned(),
                reason: reason.to_owned(),
            }),
            StateChange::RevokeRule {
                id: rule_id,
                selector: Selector::Key {
                    kid: kid.to_owned(),
                },
                // Every token the key signed: it signs until this change is installed
                // (after `now`), and no token it signed outlives its lease (≤ `until`),
                // so none has a later `iat`. A verifier that applies `issued_before` to
                // key rules as to every other rule covers them all too.
                issued_before: until,
                until,
                at: now,
                actor: actor.to_owned(),
                reason: reason.to_owned(),
            },
        ])
    }

    /// Writes each audit record of a change already made (failures logged): start-up's
    /// reconciliation and [`KeyService::apply_remote`].
    pub async fn record(audit: &AuditLog, events: Vec<AuditEvent>) {
        for ev in events {
            if let Err(e) = audit.append(ev).await {
                tracing::error!(error = %e, "could not record a signing-key change");
            }
        }
    }

    /// Destroys `kid`'s private key (its file zeroed and removed, or its key pair
    /// destroyed in the token) and keeps its public half in [`RETIRED_KEYS_FILE`].
    fn destroy(&self, kid: &str) -> Result<(), LifecycleError> {
        let jwk = {
            let mut inner = self.lock();
            inner.own.remove(kid);
            inner.records.get(kid).map(|r| r.jwk.clone())
        };
        if let Some(jwk) = jwk {
            keep_retired_public_key(&self.dir, jwk)?;
        }
        match &self.home {
            KeyHome::Files => keys::remove_key_file(&self.dir, kid)?,
            KeyHome::Token(config) => {
                if !super::pkcs11::destroy_in_token(config, kid).map_err(keys::KeyError::from)? {
                    // A key file (from before the token was configured) may hold it.
                    keys::remove_key_file(&self.dir, kid)?;
                }
            }
        }
        Ok(())
    }
}

/// The audit record of a key change as `records` stand, if it is one that is recorded
/// (a lease extension is not).
fn audit_of_in(records: &BTreeMap<String, Record>, change: &StateChange) -> Option<AuditEvent> {
    let StateChange::Key(k) = change else {
        return None;
    };
    let info = records.get(kid_of(k)).map(info_of)?;
    Some(match k {
        KeyChange::Prepared { activate_at, .. } => key_event(
            EventKind::KeyPrepared,
            &info,
            serde_json::json!({ "activate_at": activate_at }),
        ),
        KeyChange::Activated { .. } => {
            key_event(EventKind::KeyActivated, &info, serde_json::json!({}))
        }
        KeyChange::Retiring { retire_at, .. } => key_event(
            EventKind::KeyRetiring,
            &info,
            serde_json::json!({ "retire_at": retire_at }),
        ),
        KeyChange::Retired { .. } => key_event(EventKind::KeyRetired, &info, serde_json::json!({})),
        KeyChange::Revoked { actor, reason, .. } => {
            let mut ev = key_event(
                EventKind::KeyRevoked,
                &info,
                serde_json::json!({ "reason": reason }),
            );
            ev.actor = Some(actor.clone());
            ev
        }
        KeyChange::Lease { .. } => return None,
    })
}

fn info_of(r: &Record) -> KeyInfo {
    KeyInfo {
        kid: r.jwk.kid.clone(),
        alg: r.jwk.alg.clone().unwrap_or_default(),
        state: r.state,
        replica: r.replica.clone(),
        prepared_at: r.prepared_at,
        activate_at: r.activate_at,
        lease_until: (r.state == KeyState::Active).then_some(r.lease_until),
        retire_at: r.retire_at.filter(|_| r.state == KeyState::Retiring),
    }
}

fn apply_change(records: &mut BTreeMap<String, Record>, change: &StateChange) {
    let StateChange::Key(k) = change else {
        return;
    };
    match k {
        KeyChange::Prepared {
            jwk,
            replica,
            at,
            activate_at,
        } => {
            records.entry(jwk.kid.clone()).or_insert_with(|| Record {
                jwk: jwk.clone(),
                replica: replica.clone(),
                state: KeyState::Prepared,
                prepared_at: *at,
                activate_at: *activate_at,
                lease_until: 0,
                retire_at: None,
            });
        }
        other => {
            if let Some(r) = records.get_mut(kid_of(other)) {
                r.apply(other);
            }
        }
    }
}

/// Adds `jwk` to the key directory's [`RETIRED_KEYS_FILE`] (a JWKS), written whole and
/// synced.
fn keep_retired_public_key(dir: &Path, jwk: PublicJwk) -> Result<(), keys::KeyError> {
    let path = dir.join(RETIRED_KEYS_FILE);
    let mut set = retired_public_keys(dir);
    if !set.keys.iter().any(|k| k.kid == jwk.kid) {
        set.keys.push(jwk);
    }
    let io = |source| keys::KeyError::Io {
        path: path.clone(),
        source,
    };
    let tmp = dir.join(format!("{RETIRED_KEYS_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&set).unwrap_or_default();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// The public halves of the retired and revoked keys kept in `dir` (empty if none).
pub fn retired_public_keys(dir: &Path) -> Jwks {
    std::fs::read(dir.join(RETIRED_KEYS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Jwks { keys: Vec::new() })
}
