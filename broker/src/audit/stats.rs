//! Counters and histograms of the group-commit writer: how many batches, how many
//! records, where a batch's time goes, and how long records wait. Read by `GET /metrics`
//! (through [`AuditCollector`](super::writer::AuditCollector) and the histograms
//! registered by [`AuditLog::register_metrics`](super::AuditLog::register_metrics));
//! relaxed atomics and fixed-bucket histograms, a few per batch and one per append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{batch_size_histogram, latency_histogram};

/// The writer's histograms (shared handles: a clone observes into the same buckets).
#[derive(Debug, Clone)]
pub(crate) struct AuditHistograms {
    /// Append queued → the caller's durable answer (acknowledged appends only).
    commit: Histogram,
    /// One batch's segment `fdatasync`.
    log_sync: Histogram,
    /// One batch's head anchor: sign, write, sync.
    anchor_sync: Histogram,
    /// Records per group commit.
    batch_records: Histogram,
}

impl Default for AuditHistograms {
    fn default() -> Self {
        Self {
            commit: latency_histogram(),
            log_sync: latency_histogram(),
            anchor_sync: latency_histogram(),
            batch_records: batch_size_histogram(),
        }
    }
}

impl AuditHistograms {
    /// Registers the histograms in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "broker_audit_commit_duration_seconds",
            "Time from queueing an audit record to its durable (synced and anchored) answer, per acknowledged append",
            self.commit.clone(),
        );
        registry.register(
            "broker_audit_log_sync_duration_seconds",
            "Duration of one group commit's audit segment fdatasync",
            self.log_sync.clone(),
        );
        registry.register(
            "broker_audit_anchor_sync_duration_seconds",
            "Duration of one group commit's head anchor: sign, write and sync (overlaps the log sync)",
            self.anchor_sync.clone(),
        );
        registry.register(
            "broker_audit_batch_records",
            "Audit records per group commit (one log fdatasync and one anchor write each)",
            self.batch_records.clone(),
        );
    }
}

/// Updated by the writer thread.
#[derive(Debug, Default)]
pub(crate) struct CommitCounters {
    batches: AtomicU64,
    records: AtomicU64,
    commit_nanos: AtomicU64,
    log_sync_nanos: AtomicU64,
    head_nanos: AtomicU64,
    queue_nanos: AtomicU64,
    acknowledged: AtomicU64,
    append_nanos: AtomicU64,
    histograms: AuditHistograms,
    /// The newest acknowledged (durable and anchored) record: seq and hash.
    durable: std::sync::Mutex<(u64, [u8; 32])>,
    /// Why the last batch could not be written (cleared by the next one that is).
    write_error: std::sync::Mutex<Option<String>>,
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
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.commit_nanos
            .fetch_add(nanos(commit), Ordering::Relaxed);
        self.log_sync_nanos
            .fetch_add(nanos(log_sync), Ordering::Relaxed);
        self.head_nanos.fetch_add(nanos(head), Ordering::Relaxed);
        let h = &self.histograms;
        h.batch_records.observe(records as f64);
        h.log_sync.observe(log_sync.as_secs_f64());
        h.anchor_sync.observe(head.as_secs_f64());
    }

    /// The records of one batch waited `waited` in the queue, together.
    pub(crate) fn queued(&self, waited: Duration) {
        self.queue_nanos.fetch_add(nanos(waited), Ordering::Relaxed);
    }

    /// One append answered `took` after it was queued; `durable`: acknowledged (not
    /// failed), and then also observed in the commit-latency histogram.
    pub(crate) fn acknowledged(&self, took: Duration, durable: bool) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        self.append_nanos.fetch_add(nanos(took), Ordering::Relaxed);
        if durable {
            self.histograms.commit.observe(took.as_secs_f64());
        }
    }

    /// The histograms, for registration.
    pub(crate) fn histograms(&self) -> &AuditHistograms {
        &self.histograms
    }

    /// Records that every record up to `seq` (whose hash is `hash`) is acknowledged.
    pub(crate) fn set_durable(&self, seq: u64, hash: [u8; 32]) {
        *self.durable.lock().unwrap_or_else(|e| e.into_inner()) = (seq, hash);
    }

    /// The last batch failed with `why` (`None`: it was written).
    pub(crate) fn set_write_error(&self, why: Option<String>) {
        *self.write_error.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the last batch could not be written, if it could not.
    pub(crate) fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The newest acknowledged record's seq and hash (0 and zeros before the first).
    pub(crate) fn durable(&self) -> (u64, [u8; 32]) {
        *self.durable.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn snapshot(&self) -> AuditStats {
        AuditStats {
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            commit_time: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
            log_sync_time: Duration::from_nanos(self.log_sync_nanos.load(Ordering::Relaxed)),
            head_time: Duration::from_nanos(self.head_nanos.load(Ordering::Relaxed)),
            queue_time: Duration::from_nanos(self.queue_nanos.load(Ordering::Relaxed)),
            appends: self.acknowledged.load(Ordering::Relaxed),
            append_time: Duration::from_nanos(self.append_nanos.load(Ordering::Relaxed)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    /// Time records spent queued before their batch started, summed over records.
    pub queue_time: Duration,
    /// Appends answered (acknowledged or failed).
    pub appends: u64,
    /// Time from queueing to the caller having its answer, summed over those appends:
    /// queue wait + commit + the caller being scheduled again.
    pub append_time: Duration,
}

impl AuditStats {
    /// Encodes these counters (one scrape's snapshot) as Prometheus counters.
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let counts = [
            (
                "broker_audit_batches",
                "Audit group commits (one log fdatasync and one anchor write each)",
                self.batches,
            ),
            (
                "broker_audit_records",
                "Audit records written in group commits",
                self.records,
            ),
            (
                "broker_audit_appends",
                "Audit appends answered (acknowledged or failed)",
                self.appends,
            ),
        ];
        for (name, help, v) in counts {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let times = [
            (
                "broker_audit_commit_seconds",
                "Time the audit writer spent committing batches",
                self.commit_time,
            ),
            (
                "broker_audit_log_sync_seconds",
                "Time spent in the audit segments' fdatasync",
                self.log_sync_time,
            ),
            (
                "broker_audit_head_seconds",
                "Time spent signing, writing and syncing the audit head anchor (overlaps the log sync)",
                self.head_time,
            ),
            (
                "broker_audit_queue_seconds",
                "Time audit records waited in the queue before their batch started, summed over records",
                self.queue_time,
            ),
            (
                "broker_audit_append_seconds",
                "Time from queueing an audit record to the caller resuming with the answer, summed over appends",
                self.append_time,
            ),
        ];
        for (name, help, d) in times {
            let c = ConstCounter::new(d.as_secs_f64());
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
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
        c.queued(Duration::from_micros(300));
        c.acknowledged(Duration::from_millis(1), true);
        c.acknowledged(Duration::from_millis(3), true);
        let s = c.snapshot();
        assert_eq!((s.batches, s.records, s.appends), (2, 8, 2));
        assert_eq!(s.append_time, Duration::from_millis(4));
        assert_eq!(s.commit_time, Duration::from_millis(3));
        let text = crate::metrics::encode_for_test(|r| {
            r.register_collector(Box::new(Snapshot(s)));
            c.histograms().register(r);
        });
        assert!(text.contains("broker_audit_batches_total 2\n"), "{text}");
        assert!(text.contains("broker_audit_records_total 8\n"), "{text}");
        for line in [
            "broker_audit_commit_seconds_total 0.003\n",
            "broker_audit_log_sync_seconds_total 0.0015\n",
            "broker_audit_head_seconds_total 0.00075\n",
            "broker_audit_queue_seconds_total 0.0003\n",
            "broker_audit_appends_total 2\n",
            "broker_audit_append_seconds_total 0.004\n",
            // Two batches of 3 and 5 records: both in the `le="8"` bucket, one in `le="4"`.
            "broker_audit_batch_records_bucket{le=\"4\"} 1\n",
            "broker_audit_batch_records_bucket{le=\"8\"} 2\n",
            "broker_audit_batch_records_count 2\n",
            "broker_audit_log_sync_duration_seconds_count 2\n",
            "broker_audit_anchor_sync_duration_seconds_count 2\n",
            "broker_audit_commit_duration_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    /// A fixed snapshot as a collector.
    #[derive(Debug)]
    struct Snapshot(AuditStats);

    impl prometheus_client::collector::Collector for Snapshot {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            self.0.encode(&mut encoder)
        }
    }
}
