//! The audit log: append-only, hash-chained, group-committed; one JSON record a line.
//!
//! Every record carries `seq`, `ts`, `prev` (the previous record's hash) and its own
//! `hash`, so [`verify`] finds any edit, deletion, reordering or truncation; a signed head
//! anchor (`head.json`) vouches for where the log ends, so removing records from the end is
//! found too. [`AuditLog::append`] returns only once the record and its anchor are durable: the
//! broker answers a request only after its record is, and fails closed when the log cannot
//! be written. Format, fields and the hash rule: `docs/audit-log.md`.
//!
//! This module never logs or records a token or a secret: events carry `jti`s, key ids and
//! certificate fingerprints ([`event`]).
//!
//! - [`event`]: what a record says.
//! - `chain`: the line format and the hash rule.
//! - `segment`: segment file names.
//! - `head`: the signed head anchor.
//! - `writer`: [`AuditLog`], opening with torn-tail repair, the group-commit writer.
//! - `verify`: [`verify`].
//! - `replicas`: [`verify_replicas`], every replica's log against the shared checkpoints.
//! - `stats`: [`AuditStats`], the writer's counters for `/metrics`.
//! - [`checkpoint`]: a replica's signed, chained checkpoints in the shared store.

pub mod event;

mod chain;
pub mod checkpoint;
mod head;
mod replicas;
pub mod search;
mod segment;
mod stats;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use chain::RecordProblem;
pub use checkpoint::Checkpoint;
pub use replicas::{ReplicaReport, ReplicasError, verify_replicas};
pub use stats::AuditStats;
pub use verify::{VerifyError, VerifyReport, verify};
pub use writer::AuditLog;

/// Where and how the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Directory of the segments and `head.json` (created if missing).
    pub dir: PathBuf,
    /// A segment is closed and the next one started when a record would take it past this
    /// size (a single larger record still gets a segment of its own).
    pub segment_max_bytes: u64,
    /// This replica's name, written into every record (`replica`) when set.
    pub replica: Option<String>,
}

/// Why the log could not be opened or a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed while opening the log.
    #[error("audit log: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The batch holding the record could not be made durable; the record was not
    /// acknowledged. Later appends may succeed if the condition (e.g. a full disk) clears.
    #[error("audit record not acknowledged: {op} {path}: {source}")]
    Write {
        /// What failed (`write`, `fdatasync`, `write head anchor`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause (shared by every record of the batch).
        source: Arc<io::Error>,
    },
    /// A failed write could not be undone; every append fails until the broker restarts
    /// (and repairs the tail on open).
    #[error("audit log failed, appends refused until restart: {reason}")]
    Failed {
        /// What went wrong first.
        reason: String,
    },
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// The log on disk fails an integrity check at open (records missing before the head
    /// anchor, a bad anchor signature, a missing segment, a damaged record before the tail).
    #[error("audit log integrity check failed, refusing to open: {0}")]
    Integrity(#[from] VerifyError),
    /// The event could not be serialized.
    #[error("audit event could not be serialized: {0}")]
    Encode(#[from] serde_json::Error),
}
