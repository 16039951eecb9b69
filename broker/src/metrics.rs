//! Process counters rendered as Prometheus text at `GET /metrics`.
//!
//! Deliberately small and lock-light: the hot path touches one atomic per issuance.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The broker's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    issued: AtomicU64,
    audit_failures: AtomicU64,
    denied: Mutex<BTreeMap<&'static str, u64>>,
    policy_reloads: AtomicU64,
    introspections: AtomicU64,
    anomalies: Mutex<BTreeMap<&'static str, u64>>,
    policy_reload_failures: AtomicU64,
}

impl Metrics {
    /// One token issued.
    pub fn issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }
    /// One denial by `rule`.
    pub fn denied(&self, rule: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(rule)
            .or_default() += 1;
    }
    /// One anomaly of `kind`.
    pub fn anomaly(&self, kind: &'static str) {
        *self
            .anomalies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
    /// One introspection answered.
    pub fn introspected(&self) {
        self.introspections.fetch_add(1, Ordering::Relaxed);
    }
    /// One audit append failure.
    pub fn audit_failure(&self) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// One policy reload, successful or not.
    pub fn policy_reload(&self, ok: bool) {
        if ok {
            self.policy_reloads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.policy_reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        c(
            &mut s,
            "broker_tokens_issued_total",
            "Access tokens issued.",
            self.issued.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "broker_audit_failures_total",
            "Audit appends that failed (request answered 503).",
            self.audit_failures.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "broker_policy_reloads_total",
            "Successful policy reloads.",
            self.policy_reloads.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "broker_policy_reload_failures_total",
            "Rejected policy reloads (old set kept).",
            self.policy_reload_failures.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP broker_requests_denied_total Token requests denied, by rule.\n# TYPE broker_requests_denied_total counter"
        );
        for (rule, n) in self.denied.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "broker_requests_denied_total{{rule=\"{rule}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP broker_anomalies_total Behavioural anomalies detected, by kind.\n# TYPE broker_anomalies_total counter"
        );
        for (kind, n) in self
            .anomalies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(s, "broker_anomalies_total{{kind=\"{kind}\"}} {n}");
        }
        s
    }
}
