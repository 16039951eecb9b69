//! The broker's metrics, kept with the `prometheus-client` crate and rendered at
//! `GET /metrics`: counters of decisions, fixed-bucket latency histograms of the token and
//! introspection endpoints and of the state store's calls, and (registered by
//! [`AuditLog::register_metrics`]) the audit writer's counters and histograms.
//!
//! Cheap on the hot path: a counter is one atomic add; a histogram observation is one
//! short, uncontended lock inside `prometheus-client` over fixed buckets, with no
//! allocation. Label children are resolved once, here, so requests never look a label set
//! up (the per-rule denial and per-kind anomaly counters, which are not on the issuing
//! path, do). Series names and what they mean: `docs/observability.md`.
//!
//! Never a token, key or identity-controlled string in a label: the labels are rule
//! names, anomaly kinds, outcomes and store operations, all `&'static str` from the code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditLog;
use crate::revocation::Revocations;

/// Upper bounds (seconds) of the latency buckets: 100 µs to 2.5 s, with 1, 2.5 and 5 ms
/// edges so that a 5 ms p99 objective reads straight off the buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A histogram of batch sizes: powers of two from 1 to 1024 records.
pub fn batch_size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// How a token request ended (the `outcome` label of
/// `broker_token_request_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// A token was issued (200).
    Issued,
    /// The request was refused (4xx, including 429), and the refusal recorded or counted.
    Denied,
    /// The decision could not be recorded (503: the audit log failed).
    Failed,
}

impl TokenOutcome {
    const ALL: [TokenOutcome; 3] = [Self::Issued, Self::Denied, Self::Failed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// One call of the [`StateStore`](crate::store::StateStore) interface (the `op` label of
/// `broker_store_operation_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each is the trait method of the same name
pub enum StoreOp {
    AppendAll,
    Append,
    AppendDecided,
    Load,
    Poll,
    RecordCheckpoint,
    Checkpoints,
    LastCheckpoint,
    PutUsage,
    Usage,
    FirstUse,
}

impl StoreOp {
    const ALL: [StoreOp; 11] = [
        Self::AppendAll,
        Self::Append,
        Self::AppendDecided,
        Self::Load,
        Self::Poll,
        Self::RecordCheckpoint,
        Self::Checkpoints,
        Self::LastCheckpoint,
        Self::PutUsage,
        Self::Usage,
        Self::FirstUse,
    ];

    /// The label value: the trait method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppendAll => "append_all",
            Self::Append => "append",
            Self::AppendDecided => "append_decided",
            Self::Load => "load",
            Self::Poll => "poll",
            Self::RecordCheckpoint => "record_checkpoint",
            Self::Checkpoints => "checkpoints",
            Self::LastCheckpoint => "last_checkpoint",
            Self::PutUsage => "put_usage",
            Self::Usage => "usage",
            Self::FirstUse => "first_use",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// The store-call histograms, one per [`StoreOp`], shared with the timing wrapper
/// ([`crate::store::timed`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreTimings {
    family: Family<OpLabel, Histogram, fn() -> Histogram>,
    by_op: Arc<[Histogram; StoreOp::ALL.len()]>,
}

impl Default for StoreTimings {
    fn default() -> Self {
        let family: Family<OpLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let by_op = StoreOp::ALL.map(|op| family.get_or_create_owned(&OpLabel { op: op.as_str() }));
        Self {
            family,
            by_op: Arc::new(by_op),
        }
    }
}

impl StoreTimings {
    /// Observes one call of `op` that took `took`.
    pub fn observe(&self, op: StoreOp, took: Duration) {
        // `ALL` lists every variant in declaration order.
        self.by_op[op as usize].observe(took.as_secs_f64());
    }
}

/// The broker's metrics: a `prometheus-client` registry and handles to what it holds.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    issued: Counter,
    audit_failures: Counter,
    denied: Family<RuleLabel, Counter>,
    anomalies: Family<KindLabel, Counter>,
    policy_reloads: Counter,
    policy_reload_failures: Counter,
    introspections: Counter,
    token_seconds: [Histogram; TokenOutcome::ALL.len()],
    introspection_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The broker's own counters and request histograms; the audit writer's, the store's
    /// and the state view's are added with the `register_*` methods.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let issued = Counter::default();
        let audit_failures = Counter::default();
        let denied = Family::<RuleLabel, Counter>::default();
        let anomalies = Family::<KindLabel, Counter>::default();
        // Every kind from 0, so that a rate over the first anomaly of a kind is not lost.
        for kind in crate::anomaly::KINDS {
            let _ = anomalies.get_or_create(&KindLabel { kind });
        }
        let policy_reloads = Counter::default();
        let policy_reload_failures = Counter::default();
        let introspections = Counter::default();
        let token_family: Family<OutcomeLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let token_seconds = TokenOutcome::ALL.map(|o| {
            token_family.get_or_create_owned(&OutcomeLabel {
                outcome: o.as_str(),
            })
        });
        let introspection_seconds = latency_histogram();

        // `prometheus-client` adds the `_total` suffix of counters itself.
        registry.register(
            "broker_tokens_issued",
            "Access tokens issued",
            issued.clone(),
        );
        registry.register(
            "broker_audit_failures",
            "Audit appends that failed (request answered 503)",
            audit_failures.clone(),
        );
        registry.register(
            "broker_policy_reloads",
            "Successful policy reloads",
            policy_reloads.clone(),
        );
        registry.register(
            "broker_policy_reload_failures",
            "Rejected policy reloads (old set kept)",
            policy_reload_failures.clone(),
        );
        registry.register(
            "broker_requests_denied",
            "Token requests denied, by rule",
            denied.clone(),
        );
        registry.register(
            "broker_anomalies",
            "Behavioural anomalies detected, by kind",
            anomalies.clone(),
        );
        registry.register(
            "broker_introspections",
            "Introspection requests answered (active or not)",
            introspections.clone(),
        );
        registry.register(
            "broker_token_request_duration_seconds",
            "Time the token endpoint took, from the request reaching the handler to the response, by outcome",
            token_family,
        );
        registry.register(
            "broker_introspection_duration_seconds",
            "Time the introspection endpoint took, from the request reaching the handler to the response",
            introspection_seconds.clone(),
        );
        Self {
            registry,
            issued,
            audit_failures,
            denied,
            anomalies,
            policy_reloads,
            policy_reload_failures,
            introspections,
            token_seconds,
            introspection_seconds,
        }
    }

    /// Adds the audit writer's counters, histograms and write-failure gauge.
    pub fn register_audit(&mut self, audit: &AuditLog) {
        audit.register_metrics(&mut self.registry);
    }

    /// Adds the state-store call histograms.
    pub fn register_store(&mut self, timings: &StoreTimings) {
        self.registry.register(
            "broker_store_operation_duration_seconds",
            "Time one call of the state store took (the embedded journal or PostgreSQL), by operation",
            timings.family.clone(),
        );
    }

    /// Adds `broker_state_store_stale`, read at each scrape from `revocations`.
    pub fn register_state_view(&mut self, revocations: Arc<Revocations>) {
        self.registry
            .register_collector(Box::new(StateView { revocations }));
    }

    /// One token issued.
    pub fn issued(&self) {
        self.issued.inc();
    }
    /// One denial by `rule`.
    pub fn denied(&self, rule: &'static str) {
        self.denied.get_or_create(&RuleLabel { rule }).inc();
    }
    /// One anomaly of `kind`.
    pub fn anomaly(&self, kind: &'static str) {
        self.anomalies.get_or_create(&KindLabel { kind }).inc();
    }
    /// One introspection answered.
    pub fn introspected(&self) {
        self.introspections.inc();
    }
    /// One audit append failure.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }
    /// One policy reload, successful or not.
    pub fn policy_reload(&self, ok: bool) {
        if ok {
            self.policy_reloads.inc();
        } else {
            self.policy_reload_failures.inc();
        }
    }

    /// One token request that ended with `outcome`, begun at `started`.
    pub fn token_request(&self, outcome: TokenOutcome, started: Instant) {
        // `ALL` lists every variant in declaration order.
        self.token_seconds[outcome as usize].observe(started.elapsed().as_secs_f64());
    }

    /// One introspection request (answered or refused), begun at `started`.
    pub fn introspection_request(&self, started: Instant) {
        self.introspection_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4, `text/plain; version=0.0.4`), which
    /// every scraper and `promtool check metrics` read.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut s = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)?;
        Ok(s)
    }

    /// The OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`),
    /// for scrapers that ask for it.
    pub fn render_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut s = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut s, &self.registry)?;
        Ok(s)
    }
}

/// `Content-Type` of [`Metrics::render`].
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `broker_state_store_stale`, read at each scrape.
struct StateView {
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for StateView {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = ConstGauge::new(i64::from(self.revocations.is_stale()));
        g.encode(encoder.encode_descriptor(
            "broker_state_store_stale",
            "1 while this replica's view of the shared state store is not confirmed current within store_max_staleness (no token is issued or said active)",
            None,
            g.metric_type(),
        )?)
    }
}

/// The Prometheus text of a registry that `fill` sets up (for unit tests elsewhere).
#[cfg(test)]
pub(crate) fn encode_for_test(fill: impl FnOnce(&mut Registry)) -> String {
    let mut r = Registry::default();
    fill(&mut r);
    let mut s = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut s, &r).unwrap();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (name and labels as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_keep_their_series_names() {
        let m = Metrics::new();
        m.issued();
        m.issued();
        m.denied("unknown_task");
        m.anomaly("new_task");
        m.anomaly("new_task");
        m.audit_failure();
        m.policy_reload(true);
        m.policy_reload(false);
        m.introspected();
        let text = m.render().unwrap();
        for (series, v) in [
            ("broker_tokens_issued_total", 2.0),
            ("broker_requests_denied_total{rule=\"unknown_task\"}", 1.0),
            ("broker_anomalies_total{kind=\"new_task\"}", 2.0),
            ("broker_audit_failures_total", 1.0),
            ("broker_policy_reloads_total", 1.0),
            ("broker_policy_reload_failures_total", 1.0),
            ("broker_introspections_total", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(v), "{series} in {text}");
        }
        assert!(
            text.contains("# TYPE broker_anomalies_total counter\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_series_are_rendered_for_every_label_before_any_observation() {
        let mut m = Metrics::new();
        m.register_store(&StoreTimings::default());
        let text = m.render().unwrap();
        for o in TokenOutcome::ALL {
            let s = format!(
                "broker_token_request_duration_seconds_count{{outcome=\"{}\"}}",
                o.as_str()
            );
            assert_eq!(sample(&text, &s), Some(0.0), "{s} in {text}");
        }
        for op in StoreOp::ALL {
            let s = format!(
                "broker_store_operation_duration_seconds_count{{op=\"{}\"}}",
                op.as_str()
            );
            assert_eq!(sample(&text, &s), Some(0.0), "{s} in {text}");
        }
        assert!(
            text.contains("# TYPE broker_introspection_duration_seconds histogram\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "broker_introspection_duration_seconds_count"),
            Some(0.0)
        );
    }

    #[test]
    fn an_observation_lands_in_its_bucket() {
        let mut m = Metrics::new();
        let store = StoreTimings::default();
        m.register_store(&store);
        // 3 ms: above the 2.5 ms edge, within 5 ms.
        store.observe(StoreOp::Poll, Duration::from_millis(3));
        m.introspection_seconds.observe(0.0002);
        let text = m.render().unwrap();
        let poll = |le: &str| {
            sample(
                &text,
                &format!(
                    "broker_store_operation_duration_seconds_bucket{{le=\"{le}\",op=\"poll\"}}"
                ),
            )
            .or_else(|| {
                sample(
                    &text,
                    &format!(
                        "broker_store_operation_duration_seconds_bucket{{op=\"poll\",le=\"{le}\"}}"
                    ),
                )
            })
        };
        assert_eq!(poll("0.0025"), Some(0.0), "{text}");
        assert_eq!(poll("0.005"), Some(1.0), "{text}");
        assert_eq!(poll("+Inf"), Some(1.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "broker_store_operation_duration_seconds_count{op=\"poll\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "broker_store_operation_duration_seconds_count{op=\"load\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "broker_introspection_duration_seconds_bucket{le=\"0.0001\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "broker_introspection_duration_seconds_bucket{le=\"0.00025\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn token_requests_are_observed_by_outcome() {
        let m = Metrics::new();
        let t = Instant::now();
        m.token_request(TokenOutcome::Issued, t);
        m.token_request(TokenOutcome::Issued, t);
        m.token_request(TokenOutcome::Denied, t);
        let text = m.render().unwrap();
        let count = |o: &str| {
            sample(
                &text,
                &format!("broker_token_request_duration_seconds_count{{outcome=\"{o}\"}}"),
            )
        };
        assert_eq!(count("issued"), Some(2.0));
        assert_eq!(count("denied"), Some(1.0));
        assert_eq!(count("failed"), Some(0.0));
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let m = Metrics::new();
        m.issued();
        let text = m.render_openmetrics().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("broker_tokens_issued_total 1\n"), "{text}");
    }
}
