//! Counters of the group-commit writer: how many batches, how many records, and where a
//! batch's time goes. Read by `GET /metrics`; the writer thread is the only one that
//! updates them (relaxed atomics, a few per batch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Updated by the writer thread.
#[derive(Debug, Default)]
pub(crate) struct CommitCounters {
    batches: AtomicU64,
    records: AtomicU64,
    commit_nanos: AtomicU64,
    log_sync_nanos: AtomicU64,
    head_nanos: AtomicU64,
}

impl CommitCounters {
    /// One acknowledged-or-failed batch of `records`, that took `commit` in all, of which
    /// the segment's `fdatasync` took `log_sync` and signing, writing and syncing the
    /// anchor took `head` (the two overlap).
    pub(crate) fn batch(
        &self,
        records: usize,
        commit: Duration,
        log_sync: Duration,
        head: Duration,
    ) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.commit_nanos
            .fetch_add(nanos(commit), Ordering::Relaxed);
        self.log_sync_nanos
            .fetch_add(nanos(log_sync), Ordering::Relaxed);
        self.head_nanos.fetch_add(nanos(head), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AuditStats {
        AuditStats {
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            commit_time: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
            log_sync_time: Duration::from_nanos(self.log_sync_nanos.load(Ordering::Relaxed)),
            head_time: Duration::from_nanos(self.head_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// What the audit writer has done since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// Group commits (batches), including failed ones.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Time spent committing batches (encode, write, sync, anchor).
    pub commit_time: Duration,
    /// Of which in the segments' `fdatasync`.
    pub log_sync_time: Duration,
    /// Of which signing, writing and syncing the head anchor (overlapping the log sync).
    pub head_time: Duration,
}

impl AuditStats {
    /// Prometheus text exposition of these counters.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, value: String| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        };
        counter(
            "broker_audit_batches_total",
            "Audit group commits (one log fdatasync and one anchor write each).",
            self.batches.to_string(),
        );
        counter(
            "broker_audit_records_total",
            "Audit records written in group commits.",
            self.records.to_string(),
        );
        counter(
            "broker_audit_commit_seconds_total",
            "Time the audit writer spent committing batches.",
            self.commit_time.as_secs_f64().to_string(),
        );
        counter(
            "broker_audit_log_sync_seconds_total",
            "Time spent in the audit segments' fdatasync.",
            self.log_sync_time.as_secs_f64().to_string(),
        );
        counter(
            "broker_audit_head_seconds_total",
            "Time spent signing, writing and syncing the audit head anchor (overlaps the log sync).",
            self.head_time.as_secs_f64().to_string(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_render() {
        let c = CommitCounters::default();
        c.batch(
            3,
            Duration::from_millis(2),
            Duration::from_millis(1),
            Duration::from_micros(500),
        );
        c.batch(
            5,
            Duration::from_millis(1),
            Duration::from_micros(500),
            Duration::from_micros(250),
        );
        let s = c.snapshot();
        assert_eq!((s.batches, s.records), (2, 8));
        assert_eq!(s.commit_time, Duration::from_millis(3));
        let text = s.render();
        assert!(text.contains("broker_audit_batches_total 2\n"), "{text}");
        assert!(text.contains("broker_audit_records_total 8\n"), "{text}");
        assert!(
            text.contains("broker_audit_commit_seconds_total 0.003\n"),
            "{text}"
        );
        assert!(
            text.contains("broker_audit_log_sync_seconds_total 0.0015\n"),
            "{text}"
        );
        assert!(
            text.contains("broker_audit_head_seconds_total 0.00075\n"),
            "{text}"
        );
    }
}
