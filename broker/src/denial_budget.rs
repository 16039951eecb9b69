//! Audit-flood bounds for refused token requests: each source address may have its
//! refusals recorded one by one at `rate` per second (with a `burst`); past that, its
//! refusals are answered 429 without a record each, and counted into one
//! `denials_summarized` record per source (count, first and last time, count per rule),
//! written when the source is back within its budget or has been quiet for a flush
//! interval. Issued, revoked and admin records are never summarized.
//!
//! So an anonymous client cannot grow the audit log (and its syncs) at its own rate, nor
//! starve issuance: at most `rate` records per second per source, plus one summary per
//! source per flush. Memory is bounded: at most [`MAX_SOURCES`] sources are tracked; past
//! that, every new source shares one bucket (`*`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::audit::event::{AuditEvent, EventKind};

/// Most source addresses tracked one by one.
pub const MAX_SOURCES: usize = 10_000;

/// The budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenialBudgetConfig {
    /// Refusals recorded one by one per second per source, on average.
    pub rate: f64,
    /// How many may be recorded in a row before the rate applies.
    pub burst: f64,
}

impl Default for DenialBudgetConfig {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 100.0,
        }
    }
}

/// What to do with one refusal.
#[derive(Debug)]
pub enum Admit {
    /// Record it; first record `summary` (refusals counted while over budget), if any.
    Record {
        /// The summary of the suppressed refusals before this one.
        summary: Option<Box<AuditEvent>>,
    },
    /// Over budget: answer 429 with `Retry-After: retry_after`, do not record it (it is
    /// counted into the source's summary).
    Suppress {
        /// Seconds until the source may be recorded again.
        retry_after: u64,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: f64,
    suppressed: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    count: u64,
    first: u64,
    last: u64,
    rules: BTreeMap<&'static str, u64>,
}

/// The per-source budgets.
#[derive(Debug, Default)]
pub struct DenialBudget {
    config: DenialBudgetConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl DenialBudget {
    /// Budgets with `config`.
    pub fn new(config: DenialBudgetConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Decides for one refusal from `source` with `rule`, at `now` (seconds, with
    /// fractions).
    pub fn admit(&self, source: IpAddr, rule: &'static str, now: f64) -> Admit {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = source.to_string();
        if !buckets.contains_key(&key) && buckets.len() >= MAX_SOURCES {
            key = "*".into();
        }
        let c = self.config;
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: c.burst,
            at: now,
            suppressed: None,
        });
        b.tokens = (b.tokens + (now - b.at).max(0.0) * c.rate).min(c.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let summary = b.suppressed.take().map(|p| Box::new(summary(&key, &p)));
            return Admit::Record { summary };
        }
        let secs = now as u64;
        let p = b.suppressed.get_or_insert(Pending {
            count: 0,
            first: secs,
            last: secs,
            rules: BTreeMap::new(),
        });
        p.count += 1;
        p.last = secs;
        *p.rules.entry(rule).or_default() += 1;
        let retry_after = ((1.0 - b.tokens) / c.rate).ceil().max(1.0) as u64;
        Admit::Suppress { retry_after }
    }

    /// The summaries of sources quiet since `quiet_before` (their counts are written and
    /// forgotten), and drops full, idle buckets so memory stays bounded.
    pub fn flush(&self, now: f64, quiet_for: f64) -> Vec<AuditEvent> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (key, b) in buckets.iter_mut() {
            if now - b.at >= quiet_for
                && let Some(p) = b.suppressed.take()
            {
                out.push(summary(key, &p));
            }
        }
        let c = self.config;
        buckets.retain(|_, b| {
            b.suppressed.is_some() || b.tokens + (now - b.at).max(0.0) * c.rate < c.burst
        });
        out
    }
}

impl DenialBudget {
    /// Every summary still pending, whatever the sources' quiet time (at shutdown, so that
    /// no counted refusal is lost); the buckets themselves are kept.
    pub fn drain(&self) -> Vec<AuditEvent> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .iter_mut()
            .filter_map(|(key, b)| b.suppressed.take().map(|p| summary(key, &p)))
            .collect()
    }
}

fn summary(source: &str, p: &Pending) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::DenialsSummarized);
    ev.source = Some(source.to_owned());
    ev.detail = Some(serde_json::json!({
        "count": p.count,
        "first": p.first,
        "last": p.last,
        "rules": p.rules,
    }));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_past_its_burst_is_suppressed_then_summarized_once_back() {
        let b = DenialBudget::new(DenialBudgetConfig {
            rate: 1.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(matches!(
                b.admit(ip("10.0.0.1"), "bad_signature", 100.0),
                Admit::Record { summary: None }
            ));
        }
        for _ in 0..5 {
            assert!(matches!(
                b.admit(ip("10.0.0.1"), "token_malformed", 100.0),
                Admit::Suppress { retry_after: 1 }
            ));
        }
        // Another source has its own budget.
        assert!(matches!(
            b.admit(ip("10.0.0.2"), "bad_signature", 100.0),
            Admit::Record { summary: None }
        ));
        // A second later one refusal may be recorded: the summary of the five comes first.
        match b.admit(ip("10.0.0.1"), "bad_signature", 101.0) {
            Admit::Record { summary: Some(s) } => {
                let d = s.detail.unwrap();
                assert_eq!(d["count"], 5);
                assert_eq!(d["rules"]["token_malformed"], 5);
                assert_eq!(d["first"], 100);
                assert_eq!(s.source.as_deref(), Some("10.0.0.1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drain_writes_every_pending_summary_at_once() {
        let b = DenialBudget::new(DenialBudgetConfig {
            rate: 1.0,
            burst: 1.0,
        });
        for src in ["10.0.0.1", "10.0.0.2"] {
            assert!(matches!(b.admit(ip(src), "r", 100.0), Admit::Record { .. }));
            for _ in 0..3 {
                assert!(matches!(
                    b.admit(ip(src), "r", 100.0),
                    Admit::Suppress { .. }
                ));
            }
        }
        assert!(b.flush(100.0, 10.0).is_empty(), "not quiet long enough");
        let mut drained = b.drain();
        drained.sort_by(|x, y| x.source.cmp(&y.source));
        assert_eq!(drained.len(), 2);
        for (ev, src) in drained.iter().zip(["10.0.0.1", "10.0.0.2"]) {
            assert_eq!(ev.source.as_deref(), Some(src));
            assert_eq!(ev.detail.as_ref().unwrap()["count"], 3);
        }
        assert!(b.drain().is_empty(), "each count is written once");
    }

    #[test]
    fn quiet_sources_are_flushed_and_memory_stays_bounded() {
        let b = DenialBudget::new(DenialBudgetConfig {
            rate: 1.0,
            burst: 1.0,
        });
        b.admit(ip("10.0.0.1"), "r", 0.0);
        b.admit(ip("10.0.0.1"), "r", 0.0);
        assert!(b.flush(5.0, 10.0).is_empty(), "not quiet long enough");
        let s = b.flush(20.0, 10.0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].detail.as_ref().unwrap()["count"], 1);
        // Refilled and nothing pending: forgotten.
        assert!(b.buckets.lock().unwrap().is_empty());
        for i in 0..(MAX_SOURCES + 50) {
            let a = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            b.admit(a, "r", 30.0);
        }
        assert!(b.buckets.lock().unwrap().len() <= MAX_SOURCES + 1);
    }
}
