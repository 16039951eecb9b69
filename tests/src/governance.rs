//! What the NHI-governance tests (issue 7) share: a registry of watched identities, the
//! `[governance]` config, token requests that keep the response headers
//! (`Retry-After`, `Registration-Expires`) and may come from another loopback source
//! network, and clients for the inventory, anomaly acknowledgement and `/metrics`.
//!
//! The registry is [`crate::default_registry`] ([`IDENTITY`](crate::IDENTITY), and the expired
//! [`EXPIRED_IDENTITY`](crate::EXPIRED_IDENTITY)) plus:
//!
//! | identity | `anomaly_action` | expires | tasks |
//! | --- | --- | --- | --- |
//! | [`WATCHED`] | (the config's) | 2099-01-01 | [`SYNC_READ`], [`SYNC_WRITE`] |
//! | [`GUARDED`] | `deny` | 2099-01-01 | [`SYNC_READ`], [`SYNC_WRITE`] |
//! | [`ALERTING`] | `alert` | 2099-01-01 | [`SYNC_READ`], [`SYNC_WRITE`] |
//! | [`EXPIRING`] | (the config's) | in [`EXPIRING_IN_DAYS`] days | [`SYNC_READ`] |
//!
//! [`SYNC_READ`] is `ledger:read`, [`SYNC_WRITE`] `ledger:read ledger:write`, both on
//! [`PROD_LEDGER`] from `127.0.0.0/8`, so a client bound to [`ALT_SOURCE`] (another /24)
//! may ask too. Admins: the revocation tests' [`ADMIN`](crate::admin::ADMIN) (`revoke`: may
//! acknowledge) and [`AUDITOR`](crate::admin::AUDITOR) (`read_audit`: may read the
//! inventory), plus [`GOV_ADMIN`] (`admin`: both).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::{admin_toml, auditor_bearer};
use crate::break_glass::WebhookReceiver;
use crate::policy::{Identity, PolicyFile, Task, entries};
use crate::{
    ISSUER, Options, PROD_LEDGER, Reply, TestBroker, TokenRequest, default_registry, now_secs,
    rs256,
};

/// An identity whose anomaly action is the config's default (`alert` unless configured).
pub const WATCHED: &str = "ledger-sync";
/// The workload-JWT subject of [`WATCHED`].
pub const WATCHED_SUBJECT: &str = "system:serviceaccount:ledger:sync";
/// An identity with `anomaly_action = "deny"`.
pub const GUARDED: &str = "ledger-guard";
/// The workload-JWT subject of [`GUARDED`].
pub const GUARDED_SUBJECT: &str = "system:serviceaccount:ledger:guard";
/// An identity with `anomaly_action = "alert"` (overrides a `deny` default).
pub const ALERTING: &str = "ledger-report";
/// The workload-JWT subject of [`ALERTING`].
pub const ALERTING_SUBJECT: &str = "system:serviceaccount:ledger:report";
/// An identity whose registration expires in [`EXPIRING_IN_DAYS`] days.
pub const EXPIRING: &str = "ledger-expiring";
/// The workload-JWT subject of [`EXPIRING`].
pub const EXPIRING_SUBJECT: &str = "system:serviceaccount:ledger:expiring";
/// The owner of [`EXPIRING`].
pub const EXPIRING_OWNER: &str = "team-ledger";
/// How many days from today [`EXPIRING`]'s registration runs.
pub const EXPIRING_IN_DAYS: u64 = 10;

/// `ledger:read` on [`PROD_LEDGER`], 5m, from `127.0.0.0/8`.
pub const SYNC_READ: &str = "sync-read";
/// `ledger:read ledger:write` on [`PROD_LEDGER`], 10m, from `127.0.0.0/8`.
pub const SYNC_WRITE: &str = "sync-write";

/// An admin with the `admin` role (every role).
pub const GOV_ADMIN: &str = "governor";
/// The JWT subject that proves [`GOV_ADMIN`].
pub const GOV_ADMIN_SUBJECT: &str = "admin:governor";

/// A loopback source address in another /24 than `127.0.0.1` (Linux accepts connections
/// from it to a `127.0.0.1` listener when the client binds it).
pub const ALT_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1));
/// The source network of [`ALT_SOURCE`] as the broker names it.
pub const ALT_NETWORK: &str = "127.0.1.0/24";

/// `YYYY-MM-DD` (UTC) `days` days from today.
pub fn date_in_days(days: u64) -> String {
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (all positive here).
    let z = now_secs() / 86_400 + days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One task on [`PROD_LEDGER`] from `127.0.0.0/8`, with a `rate_limit` if given.
pub fn sync_task(name: &str, scopes: &[&str], max_ttl: &str, rate_limit: Option<&str>) -> Task {
    Task::new(name, PROD_LEDGER, scopes, max_ttl)
        .source_cidrs(&["127.0.0.0/8"])
        .rate_limit(rate_limit)
}

/// [`SYNC_READ`] (5m) and [`SYNC_WRITE`] (10m), no rate limits.
pub fn sync_tasks() -> Vec<Task> {
    vec![
        sync_task(SYNC_READ, &["ledger:read"], "5m", None),
        sync_task(SYNC_WRITE, &["ledger:read", "ledger:write"], "10m", None),
    ]
}

/// A registry file: `id` proven by `subject` of the test issuer, with `anomaly_action` if
/// given, registration valid until `expires`, and `tasks`. Only [`EXPIRING`] is
/// `third_party` (its registration is short, as a third party's should be).
pub fn governed_file(
    id: &str,
    subject: &str,
    anomaly_action: Option<&str>,
    expires: &str,
    tasks: &[Task],
) -> PolicyFile {
    let identity = Identity::prod(
        id,
        "team-ledger",
        "grace@example.com",
        "Governance end-to-end tests",
        "CHG-7000",
    )
    .approved_by("bob@example.com")
    .expires(expires)
    .third_party(id == EXPIRING)
    .anomaly_action(anomaly_action)
    .jwt(subject);
    PolicyFile {
        identity,
        tasks: tasks.to_vec(),
    }
}

/// The file of [`WATCHED`] with `tasks`.
pub fn watched_file(tasks: &[Task]) -> PolicyFile {
    governed_file(WATCHED, WATCHED_SUBJECT, None, "2099-01-01", tasks)
}

/// The file of [`GUARDED`] with `tasks`.
pub fn guarded_file(tasks: &[Task]) -> PolicyFile {
    governed_file(GUARDED, GUARDED_SUBJECT, Some("deny"), "2099-01-01", tasks)
}

/// The file of [`ALERTING`] with `tasks`.
pub fn alerting_file(tasks: &[Task]) -> PolicyFile {
    governed_file(
        ALERTING,
        ALERTING_SUBJECT,
        Some("alert"),
        "2099-01-01",
        tasks,
    )
}

/// [`default_registry`] plus [`WATCHED`], [`GUARDED`], [`ALERTING`] and [`EXPIRING`]
/// (each with [`sync_tasks`], [`EXPIRING`] with [`SYNC_READ`] only).
pub fn governance_policies() -> Vec<(String, String)> {
    governance_policies_with(&sync_tasks())
}

/// [`governance_policies`] with `tasks` for [`WATCHED`], [`GUARDED`] and [`ALERTING`].
pub fn governance_policies_with(tasks: &[Task]) -> Vec<(String, String)> {
    let mut r = default_registry();
    r.push(watched_file(tasks));
    r.push(guarded_file(tasks));
    r.push(alerting_file(tasks));
    r.push(governed_file(
        EXPIRING,
        EXPIRING_SUBJECT,
        None,
        &date_in_days(EXPIRING_IN_DAYS),
        &[sync_task(SYNC_READ, &["ledger:read"], "5m", None)],
    ));
    entries(&r)
}

/// How a governance test broker is set up.
#[derive(Debug, Clone)]
pub struct GovOptions {
    /// The lines of `[governance]` (empty: the section is left out).
    pub governance: String,
    /// `[break_glass] webhook_url` (where anomaly events go).
    pub webhook_url: Option<String>,
    /// The registry.
    pub policies: Vec<(String, String)>,
}

impl Default for GovOptions {
    fn default() -> Self {
        Self {
            governance: String::new(),
            webhook_url: None,
            policies: governance_policies(),
        }
    }
}

impl GovOptions {
    /// With `[governance]` holding `lines` (e.g. `identity_rate_limit = "2/s"`).
    pub fn with(lines: &str) -> Self {
        Self {
            governance: lines.to_owned(),
            ..Self::default()
        }
    }

    /// Sends anomaly events to `hook`.
    pub fn webhook(mut self, hook: &WebhookReceiver) -> Self {
        self.webhook_url = Some(hook.url().to_owned());
        self
    }

    /// With this registry instead.
    pub fn policies(mut self, policies: Vec<(String, String)>) -> Self {
        self.policies = policies;
        self
    }

    /// The config additions: `[state]`, the revocation tests' admins, [`GOV_ADMIN`],
    /// `[governance]` and `[break_glass]`.
    pub fn extra_toml(&self) -> String {
        let mut t = admin_toml();
        t.push_str(&format!(
            r#"
[[admin]]
name    = "{GOV_ADMIN}"
roles   = ["admin"]
issuer  = "{ISSUER}"
subject = "{GOV_ADMIN_SUBJECT}"
"#
        ));
        if !self.governance.is_empty() {
            t.push_str(&format!("\n[governance]\n{}\n", self.governance));
        }
        if let Some(u) = &self.webhook_url {
            t.push_str(&format!("\n[break_glass]\nwebhook_url = {u:?}\n"));
        }
        t
    }

    /// The harness options.
    pub fn options(&self) -> Options {
        Options {
            policies: self.policies.clone(),
            extra_toml: self.extra_toml(),
            ..Options::default()
        }
    }

    /// A started broker; panics with its stderr if it does not come up.
    pub fn start(&self) -> TestBroker {
        TestBroker::start(self.options())
    }
}

/// A bearer credential for [`GOV_ADMIN`].
pub fn gov_admin_bearer() -> String {
    rs256(GOV_ADMIN_SUBJECT)
}

/// A token-endpoint answer with its response headers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status and body.
    pub reply: Reply,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Deref for Answer {
    type Target = Reply;

    fn deref(&self) -> &Reply {
        &self.reply
    }
}

async fn reply_of(res: reqwest::Response) -> Reply {
    Reply::from(res).await
}

/// A plain-HTTP client whose connections come from `local` (e.g. [`ALT_SOURCE`]).
pub fn client_from(local: IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .local_address(local)
        .build()
        .expect("building the HTTP client")
}

/// The `broker_anomalies_total{kind="…"}` value in a Prometheus text page (0 if absent).
pub fn anomaly_metric_in(page: &str, kind: &str) -> u64 {
    let prefix = format!("broker_anomalies_total{{kind=\"{kind}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("metric value {v:?}: {e}")) as u64
        })
}

/// The anomaly id of an `anomaly` record (`detail.anomaly`).
pub fn anomaly_id(rec: &Value) -> String {
    rec["detail"]["anomaly"]
        .as_str()
        .unwrap_or_else(|| panic!("an anomaly record names its anomaly: {rec}"))
        .to_owned()
}

/// The inventory entry of `id`, if listed.
pub fn entry<'a>(inventory: &'a Value, id: &str) -> Option<&'a Value> {
    inventory["identities"]
        .as_array()
        .unwrap_or_else(|| panic!("the inventory lists identities: {inventory}"))
        .iter()
        .find(|e| e["id"] == id)
}

/// The ids the inventory lists, sorted.
pub fn listed_ids(inventory: &Value) -> Vec<String> {
    let mut ids: Vec<String> = inventory["identities"]
        .as_array()
        .unwrap_or_else(|| panic!("the inventory lists identities: {inventory}"))
        .iter()
        .map(|e| e["id"].as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The string items of a JSON array field, in order.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("a string: {s}"))
                .to_owned()
        })
        .collect()
}

/// Waits for the first wall-clock second of the next `window_secs`-second window (the
/// broker's volume windows are `unix_secs / window_secs`).
pub async fn next_window(window_secs: u64) {
    let current = now_secs() / window_secs;
    while now_secs() / window_secs == current {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the wall clock has passed `secs` (unix seconds).
pub async fn wait_past(secs: u64) {
    while now_secs() <= secs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The webhook's `anomaly` events about anomaly `id`.
pub fn anomaly_events(hook: &WebhookReceiver, id: &str) -> Vec<Value> {
    hook.events()
        .into_iter()
        .filter(|e| e["event"] == "anomaly" && e["anomaly"]["id"] == id)
        .collect()
}

impl TestBroker {
    /// `POST /oauth2/token` with `req`, from `local` if given (else `127.0.0.1`); keeps the
    /// response headers.
    pub async fn token_from(&self, req: &TokenRequest, local: Option<IpAddr>) -> Answer {
        let client = match local {
            Some(ip) => client_from(ip),
            None => self.client().clone(),
        };
        let res = client
            .post(format!("{}/oauth2/token", self.base_url()))
            .form(&req.params)
            .send()
            .await
            .expect("POST /oauth2/token");
        let headers = res.headers().clone();
        Answer {
            reply: reply_of(res).await,
            headers,
        }
    }

    /// Sends every request at once (one connection each, so they race for the same
    /// rate-limit bucket) and returns the answers in request order.
    pub async fn token_burst(&self, reqs: Vec<TokenRequest>) -> Vec<Answer> {
        let mut set = tokio::task::JoinSet::new();
        for (i, req) in reqs.into_iter().enumerate() {
            let client = self.client().clone();
            let url = format!("{}/oauth2/token", self.base_url());
            set.spawn(async move {
                let res = client
                    .post(url)
                    .form(&req.params)
                    .send()
                    .await
                    .expect("POST /oauth2/token");
                let headers = res.headers().clone();
                (
                    i,
                    Answer {
                        reply: reply_of(res).await,
                        headers,
                    },
                )
            });
        }
        let mut out = set.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// A fresh workload JWT of `subject` exchanged for `task` (narrowed to `scope` if
    /// given), from `127.0.0.1`.
    pub async fn ask(&self, subject: &str, task: &str, scope: Option<&str>) -> Answer {
        self.ask_from(None, subject, task, scope).await
    }

    /// [`TestBroker::ask`] from `local` (e.g. [`ALT_SOURCE`]) if given.
    pub async fn ask_from(
        &self,
        local: Option<IpAddr>,
        subject: &str,
        task: &str,
        scope: Option<&str>,
    ) -> Answer {
        let mut req = TokenRequest::exchange(&rs256(subject), task);
        if let Some(s) = scope {
            req = req.scope(s);
        }
        self.token_from(&req, local).await
    }

    /// [`TestBroker::ask`]; panics unless a token is issued. Returns the answer.
    pub async fn ask_ok(&self, subject: &str, task: &str, scope: Option<&str>) -> Answer {
        let a = self.ask(subject, task, scope).await;
        assert_eq!(
            a.status, 200,
            "{subject} asks for {task} (scope {scope:?}): {}",
            a.text
        );
        a
    }

    /// `GET /v1/admin/inventory{query}` (`query` is `""` or starts with `?`).
    pub async fn inventory_with(&self, bearer: Option<&str>, query: &str) -> Reply {
        let mut rb = self
            .client()
            .get(format!("{}/v1/admin/inventory{query}", self.base_url()));
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(rb.send().await.expect("GET /v1/admin/inventory")).await
    }

    /// The inventory as [`AUDITOR`](crate::admin::AUDITOR); panics unless 200.
    pub async fn inventory(&self, query: &str) -> Value {
        let r = self.inventory_with(Some(&auditor_bearer()), query).await;
        assert_eq!(r.status, 200, "GET /v1/admin/inventory{query}: {}", r.text);
        r.body
    }

    /// The inventory entry of `id` (no filters); panics if it is not listed.
    pub async fn inventory_entry(&self, id: &str) -> Value {
        let inv = self.inventory("").await;
        entry(&inv, id)
            .unwrap_or_else(|| panic!("the inventory lists {id}: {inv:#}"))
            .clone()
    }

    /// `POST /v1/admin/anomalies/{id}/ack`, authenticated by `bearer` (if any).
    pub async fn ack_with(&self, bearer: Option<&str>, id: &str) -> Reply {
        let mut rb = self
            .client()
            .post(format!("{}/v1/admin/anomalies/{id}/ack", self.base_url()));
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(rb.send().await.expect("POST /v1/admin/anomalies/{id}/ack")).await
    }

    /// `GET /metrics` (Prometheus text); panics unless 200.
    pub async fn metrics_page(&self) -> String {
        let res = self
            .client()
            .get(format!("{}/metrics", self.base_url()))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200, "GET /metrics");
        res.text().await.expect("reading /metrics")
    }

    /// `broker_anomalies_total{kind}` now.
    pub async fn anomaly_metric(&self, kind: &str) -> u64 {
        anomaly_metric_in(&self.metrics_page().await, kind)
    }

    /// The `anomaly` records of `identity` (of `kind` if given), in order.
    pub fn anomaly_records(&self, identity: &str, kind: Option<&str>) -> Vec<Value> {
        self.records_of("anomaly")
            .into_iter()
            .filter(|r| r["identity"] == identity && kind.is_none_or(|k| r["rule"] == k))
            .collect()
    }

    /// Polls (every 50 ms, up to `timeout`) for an `anomaly` record of `identity` and
    /// `kind`; panics with every record on timeout.
    pub async fn wait_for_anomaly(&self, identity: &str, kind: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.anomaly_records(identity, Some(kind)).pop() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} anomaly of {identity} within {timeout:?}; records: {:#?}",
                self.records()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `denied` records of `identity` with `rule`.
    pub fn denied_of(&self, identity: &str, rule: &str) -> Vec<Value> {
        self.records_of("denied")
            .into_iter()
            .filter(|r| r["identity"] == identity && r["rule"] == rule)
            .collect()
    }

    /// The `issued` records of `identity`.
    pub fn issued_of(&self, identity: &str) -> Vec<Value> {
        self.records_of("issued")
            .into_iter()
            .filter(|r| r["identity"] == identity)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_metrics_parse() {
        let today = date_in_days(0);
        assert_eq!(today.len(), 10, "{today}");
        assert!(today.as_str() > "2024-01-01", "{today}");
        assert!(date_in_days(366).as_str() > today.as_str());
        let page =
            "# TYPE broker_anomalies_total counter\nbroker_anomalies_total{kind=\"new_task\"} 2\n";
        assert_eq!(anomaly_metric_in(page, "new_task"), 2);
        assert_eq!(anomaly_metric_in(page, "new_scope"), 0);
    }

    #[test]
    fn a_sync_task_has_the_rate_limit_and_the_loopback_source() {
        let t = sync_task("t", &["a", "b"], "5m", Some("2/s"));
        assert_eq!(t.scopes, ["a", "b"]);
        assert_eq!(t.rate_limit.as_deref(), Some("2/s"));
        assert_eq!(t.source_cidrs, Some(vec!["127.0.0.0/8".to_owned()]));
    }
}
