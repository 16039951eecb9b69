//! Persistent broker state behind one interface: revocations and disabled identities.
//!
//! [`StateStore`] is an append-only journal of [`StateChange`]s: the broker replays it at
//! start and appends each change durably before acknowledging it. The embedded
//! [`file::FileStore`] is the default (no database); [`memory::MemoryStore`] serves tests;
//! [`postgres::PostgresStore`] keeps the journal in PostgreSQL so that several replicas
//! can share it. All three run the same contract tests (`contract`, test-only).
//! [`timed::Timed`] wraps whichever is open and times each call for `/metrics`.

pub mod file;
mod listen;
pub mod memory;
pub mod postgres;
#[cfg(test)]
#[allow(unreachable_pub, dead_code)]
#[path = "../../../tests/src/postgres.rs"]
pub(crate) mod testpg;
pub mod timed;

use serde::{Deserialize, Serialize};

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// I/O failed.
    #[error("state store {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored record is not readable.
    #[error("state store {path} line {line}: {message}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The state database failed or could not be reached (never carries a password).
    #[error("state database: {message}")]
    Database {
        /// What failed, for the operator.
        message: String,
    },
}

/// Which tokens a revocation rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Selector {
    /// Every token of an identity.
    Identity {
        /// NHI id.
        identity: String,
    },
    /// Every token of one task (of one identity, or of every identity with that task name).
    Task {
        /// Task name.
        task: String,
        /// Restrict to one identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
    /// Every token of every identity of an owner.
    Owner {
        /// The owner.
        owner: String,
    },
    /// Every token issued under a break-glass grant.
    Grant {
        /// Grant id.
        grant: String,
    },
    /// Every token signed by a signing key (emergency key revocation).
    Key {
        /// The key id.
        kid: String,
    },
}

/// One durable change of broker state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum StateChange {
    /// One token revoked by `jti`.
    RevokeJti {
        /// Token id.
        jti: String,
        /// The token's expiry (or a safe upper bound when unknown).
        exp: u64,
        /// When (unix seconds).
        at: u64,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Every token matching `selector` issued at or before `issued_before` is revoked.
    RevokeRule {
        /// Rule id.
        id: String,
        /// What it covers.
        selector: Selector,
        /// Covers tokens with `iat <= issued_before`.
        issued_before: u64,
        /// After this, no token it covers can still be live (so it can be dropped).
        until: u64,
        /// When.
        at: u64,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The kill switch: the identity gets no new tokens.
    Disable {
        /// NHI id.
        identity: String,
        /// When.
        at: u64,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The identity may get tokens again (old ones stay revoked).
    Enable {
        /// NHI id.
        identity: String,
        /// When.
        at: u64,
        /// Who.
        actor: String,
    },
    /// A break-glass grant change.
    Grant(GrantChange),
    /// A behavioural-monitoring change.
    Anomaly(AnomalyChange),
    /// A signing-key lifecycle change.
    Key(KeyChange),
    /// A replica's public signing key, so that every replica verifies and serves it
    /// (the private key never leaves the replica). Written by brokers before key
    /// lifecycles; read as a key that is active.
    KeyPublished {
        /// The key.
        jwk: crate::mint::keys::PublicJwk,
        /// The replica that signs with it.
        replica: String,
        /// When.
        at: u64,
    },
}

/// A signing key's life (`mint::lifecycle`): prepared (published, not signing), active
/// (signs), retiring (published until `retire_at`, no longer signing), retired (gone),
/// revoked (gone at once, its tokens revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "key_change", rename_all = "snake_case")]
pub enum KeyChange {
    /// A new key is published; it signs from `activate_at`.
    Prepared {
        /// The public key.
        jwk: crate::mint::keys::PublicJwk,
        /// The replica that holds the private key ("" for a single broker).
        replica: String,
        /// When.
        at: u64,
        /// When it starts signing.
        activate_at: u64,
    },
    /// The key signs.
    Activated {
        /// The key id.
        kid: String,
        /// When.
        at: u64,
    },
    /// The key is guaranteed to stay published until `until`: no token it signs may
    /// expire later (extended ahead of need while the key signs).
    Lease {
        /// The key id.
        kid: String,
        /// Published at least until then.
        until: u64,
    },
    /// The key no longer signs; it stays published until `retire_at`, when the last
    /// token it signed has expired.
    Retiring {
        /// The key id.
        kid: String,
        /// When.
        at: u64,
        /// When it leaves the JWKS.
        retire_at: u64,
    },
    /// The key left the JWKS (its public half is kept for `audit verify`).
    Retired {
        /// The key id.
        kid: String,
        /// When.
        at: u64,
    },
    /// The key left the JWKS at once and every token it signed is revoked.
    Revoked {
        /// The key id.
        kid: String,
        /// When.
        at: u64,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
}

/// An anomaly change (so that `deny` holds survive restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "anomaly_change", rename_all = "snake_case")]
pub enum AnomalyChange {
    /// An anomaly was detected.
    Raised {
        /// Anomaly id.
        id: String,
        /// The identity.
        identity: String,
        /// Kind.
        kind: String,
        /// Evidence.
        evidence: serde_json::Value,
        /// When.
        at: u64,
        /// `alert` or `deny`.
        action: String,
    },
    /// An admin acknowledged it.
    Acknowledged {
        /// Anomaly id.
        id: String,
        /// Who.
        by: String,
        /// When.
        at: u64,
    },
}

/// A break-glass change (grants live in the same journal as revocations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "grant_change", rename_all = "snake_case")]
pub enum GrantChange {
    /// A grant was requested.
    Requested {
        /// Grant id.
        id: String,
        /// Target identity.
        identity: String,
        /// Break-glass task.
        task: String,
        /// The policy that allows it.
        policy: String,
        /// Requested duration, seconds.
        duration: u64,
        /// Why.
        justification: String,
        /// Incident ticket.
        ticket: String,
        /// Who asked (actor).
        requester: String,
        /// Approvals needed.
        approvals_needed: u32,
        /// When (unix seconds).
        at: u64,
        /// An unapproved grant expires at this time.
        pending_until: u64,
    },
    /// An approval.
    Approved {
        /// Grant id.
        id: String,
        /// Approver (actor).
        approver: String,
        /// When.
        at: u64,
    },
    /// The grant became usable.
    Activated {
        /// Grant id.
        id: String,
        /// When.
        at: u64,
        /// When it ends.
        ends_at: u64,
    },
    /// A token was issued under the grant.
    TokenIssued {
        /// Grant id.
        id: String,
        /// Token id.
        jti: String,
        /// Audience.
        audience: String,
        /// Scopes.
        scopes: Vec<String>,
        /// Expiry.
        exp: u64,
        /// When.
        at: u64,
    },
    /// The grant ended.
    Closed {
        /// Grant id.
        id: String,
        /// When.
        at: u64,
        /// Who (actor, or `broker` when it expired).
        by: String,
        /// Why.
        reason: String,
        /// Whether it ended by time rather than by a close call.
        expired: bool,
    },
}

/// A change at its place in the journal: `id` is 1 for the first change and the same on
/// every replica (the revocation feed's cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the journal.
    pub id: u64,
    /// The change.
    pub change: StateChange,
}

/// What a [`StateStore::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Polled {
    /// Changes other handles made, oldest first.
    pub events: Vec<Event>,
    /// Every change with an id up to this one is now known to this handle: applied
    /// when it was made here, at load, or returned by this or an earlier poll.
    pub through: u64,
}

/// An append-only journal of state changes.
pub trait StateStore: Send + Sync {
    /// Appends `changes` durably as one unit (in the PostgreSQL store one transaction,
    /// so that no replica ever sees only part of them: the kill switch is a `Disable` and
    /// a `RevokeRule`); returns only once they would survive a crash, with their ids.
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError>;
    /// Appends one change durably; returns its id.
    fn append(&self, change: &StateChange) -> Result<u64, StoreError> {
        self.append_all(std::slice::from_ref(change))?
            .first()
            .copied()
            .ok_or_else(|| StoreError::Database {
                message: "an append returned no event id".into(),
            })
    }
    /// A check-then-append decided against the newest shared state: `decide` is called
    /// once with every change after event `after` (the newest the caller has applied
    /// all changes up to; in a shared store read while holding the journal's lock, and
    /// possibly including changes the caller made itself, which apply idempotently), and
    /// what it returns is appended as one unit before any other append. An empty
    /// decision appends nothing. Returns what was appended. The callers keep their own
    /// lock around this call, so within one process the check is atomic too; the
    /// default (one process: the caller has seen everything) decides on an empty list.
    fn append_decided(
        &self,
        after: u64,
        decide: &mut dyn FnMut(&[StateChange]) -> Vec<StateChange>,
    ) -> Result<Vec<Event>, StoreError> {
        let _ = after;
        let changes = decide(&[]);
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.append_all(&changes)?;
        Ok(zip_events(ids, changes))
    }
    /// Every change, oldest first. Also where [`StateStore::poll`] starts from.
    fn load(&self) -> Result<Vec<Event>, StoreError>;
    /// Whether other processes (replicas) append to the same journal, so that
    /// [`StateStore::poll`] must be called to see their changes.
    fn shared(&self) -> bool {
        false
    }
    /// The changes other handles appended since the last `load` or `poll`, oldest
    /// first; this handle's own appends are not returned (they were applied when made).
    /// A successful call also confirms that this handle's view is current.
    fn poll(&self) -> Result<Polled, StoreError> {
        Ok(Polled::default())
    }
    /// Notified when another handle may have appended (a hint: call
    /// [`StateStore::poll`] then). `None`: no wake-up, poll on a timer.
    fn wakeup(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Keeps an audit checkpoint (insert-only: a second one with the same replica and
    /// number is refused). Stores of one process keep none: their broker's own anchor is
    /// the whole story, so the default discards it.
    fn record_checkpoint(&self, checkpoint: &crate::audit::Checkpoint) -> Result<(), StoreError> {
        let _ = checkpoint;
        Ok(())
    }
    /// Every kept checkpoint, by replica then number.
    fn checkpoints(&self) -> Result<Vec<crate::audit::Checkpoint>, StoreError> {
        Ok(Vec::new())
    }
    /// `replica`'s newest checkpoint (where its chain continues after a restart).
    fn last_checkpoint(
        &self,
        replica: &str,
    ) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        Ok(self
            .checkpoints()?
            .into_iter()
            .filter(|c| c.replica == replica)
            .max_by_key(|c| c.n))
    }
    /// Replaces `replica`'s usage snapshot (write-behind: the inventory and behavioural
    /// monitoring of every replica merge all snapshots). The default keeps none.
    fn put_usage(&self, replica: &str, snapshot: &serde_json::Value) -> Result<(), StoreError> {
        let _ = (replica, snapshot);
        Ok(())
    }
    /// Every replica's usage snapshot.
    fn usage(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        Ok(Vec::new())
    }
    /// Records the use of a single-use credential for every handle of this store (all
    /// replicas): `kind` is its namespace (`jwt`, `dpop`), `key` a digest naming it (never
    /// the credential itself), `until` the second after which it is refused as expired
    /// anyway. `Ok(true)` the first time, and again once an earlier use's `until` is
    /// before `now`; `Ok(false)` while another use is on record. Concurrent first uses
    /// from several replicas: exactly one gets `true`. A store of one process has no
    /// other handle: its broker's own memory already decided, so the default says `true`.
    fn first_use(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let _ = (kind, key, until, now);
        Ok(true)
    }
    /// [`StateStore::first_use`] awaited without holding a thread, where the store can;
    /// `None`: call `first_use` from a blocking thread.
    fn first_use_async(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Option<FirstUseFuture> {
        let _ = (kind, key, until, now);
        None
    }
}

/// The answer of [`StateStore::first_use_async`].
pub type FirstUseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, StoreError>> + Send>>;

/// Pairs appended changes with the ids the store gave them.
pub(crate) fn zip_events(ids: Vec<u64>, changes: Vec<StateChange>) -> Vec<Event> {
    ids.into_iter()
        .zip(changes)
        .map(|(id, change)| Event { id, change })
        .collect()
}

/// The contract every [`StateStore`] must meet; run it against each implementation.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    fn sample(i: u64) -> StateChange {
        match i % 4 {
            0 => StateChange::RevokeJti {
                jti: format!("j{i}"),
                exp: 100 + i,
                at: i,
                actor: "a".into(),
                reason: "r".into(),
            },
            1 => StateChange::RevokeRule {
                id: format!("r{i}"),
                selector: Selector::Task {
                    task: "t".into(),
                    identity: Some("x".into()),
                },
                issued_before: i,
                until: i + 10,
                at: i,
                actor: "a".into(),
                reason: "r".into(),
            },
            2 => StateChange::Disable {
                identity: "x".into(),
                at: i,
                actor: "a".into(),
                reason: "r".into(),
            },
            _ => StateChange::Enable {
                identity: "x".into(),
                at: i,
                actor: "a".into(),
            },
        }
    }

    /// Appended changes come back in order, across reopen (`reopen` builds a new handle
    /// on the same storage).
    pub(crate) fn run(make: impl Fn() -> Box<dyn StateStore>) {
        let changes_of = |events: Vec<Event>| -> Vec<StateChange> {
            events.into_iter().map(|e| e.change).collect()
        };
        let store = make();
        assert_eq!(store.load().unwrap(), vec![]);
        let changes: Vec<StateChange> = (0..20).map(sample).collect();
        for (i, c) in changes.iter().enumerate() {
            assert_eq!(store.append(c).unwrap(), i as u64 + 1, "ids count from 1");
        }
        assert_eq!(changes_of(store.load().unwrap()), changes);
        drop(store);
        let again = make();
        let loaded = again.load().unwrap();
        assert_eq!(
            loaded.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>(),
            "ids survive reopening"
        );
        assert_eq!(changes_of(loaded), changes, "changes survive reopening");
        assert_eq!(again.append(&sample(99)).unwrap(), 21);
        assert_eq!(again.load().unwrap().len(), 21);
        let pair = [sample(100), sample(102)];
        assert_eq!(again.append_all(&pair).unwrap(), vec![22, 23]);
        let all = changes_of(again.load().unwrap());
        assert_eq!(all.len(), 23);
        assert_eq!(all[21..], pair, "append_all keeps the order");
        let decided = again
            .append_decided(23, &mut |fresh| {
                assert!(fresh.is_empty(), "nothing else appended: {fresh:?}");
                vec![sample(104)]
            })
            .unwrap();
        assert_eq!(
            decided,
            vec![Event {
                id: 24,
                change: sample(104)
            }]
        );
        assert_eq!(
            again.append_decided(24, &mut |_| Vec::new()).unwrap(),
            vec![]
        );
        assert_eq!(
            again.load().unwrap().len(),
            24,
            "an empty decision appends nothing"
        );
    }
}
