//! Persistent broker state behind one interface: revocations and disabled identities.
//!
//! [`StateStore`] is an append-only journal of [`StateChange`]s: the broker replays it at
//! start and appends each change durably before acknowledging it. The embedded
//! [`file::FileStore`] is the default (no database); [`memory::MemoryStore`] serves tests;
//! [`postgres::PostgresStore`] keeps the journal in PostgreSQL so that several replicas
//! can share it. All three run the same contract tests ([`contract`]).

pub mod file;
pub mod memory;
pub mod postgres;
#[cfg(test)]
#[allow(unreachable_pub, dead_code)]
#[path = "../../../tests/src/postgres.rs"]
mod testpg;

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

/// An append-only journal of state changes.
pub trait StateStore: Send + Sync {
    /// Appends `change` durably; returns only once it would survive a crash.
    fn append(&self, change: &StateChange) -> Result<(), StoreError>;
    /// Every change, oldest first. Also where [`StateStore::poll`] starts from.
    fn load(&self) -> Result<Vec<StateChange>, StoreError>;
    /// Whether other processes (replicas) append to the same journal, so that
    /// [`StateStore::poll`] must be called to see their changes.
    fn shared(&self) -> bool {
        false
    }
    /// The changes other handles appended since the last `load` or `poll`, oldest
    /// first; this handle's own appends are not returned (they were applied when made).
    /// A successful call also confirms that this handle's view is current.
    fn poll(&self) -> Result<Vec<StateChange>, StoreError> {
        Ok(Vec::new())
    }
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
        let store = make();
        assert_eq!(store.load().unwrap(), vec![]);
        let changes: Vec<StateChange> = (0..20).map(sample).collect();
        for c in &changes {
            store.append(c).unwrap();
        }
        assert_eq!(store.load().unwrap(), changes);
        drop(store);
        let again = make();
        assert_eq!(again.load().unwrap(), changes, "changes survive reopening");
        again.append(&sample(99)).unwrap();
        assert_eq!(again.load().unwrap().len(), 21);
    }
}
