//! What the break-glass tests (issue 6) share: break-glass policy files, the admins who
//! request, approve and close grants, an on-call workload allowed to request, clients for
//! `/v1/break-glass/...`, and webhook receivers (a recording one, a hanging one, a closed
//! port).
//!
//! The registry is the revocation tests' one ([`revocation_registry`]: the resource server
//! [`RS_IDENTITY`](crate::admin::RS_IDENTITY) judges "revoked" by introspection) plus the
//! on-call identity [`ONCALL_IDENTITY`]. Break-glass policies live in
//! `<policy dir>/break-glass/`:
//!
//! | policy | identities | requesters | max_duration | approvals | task |
//! | --- | --- | --- | --- | --- | --- |
//! | [`BG_POLICY`] | [`IDENTITY`] | [`ONCALL_IDENTITY`] | [`BG_MAX_DURATION_SECS`] | 1 | [`BG_TASK`] |
//! | [`SELF_SERVICE_POLICY`] | [`BATCH_IDENTITY`] | none | 30m | 0 | [`SELF_SERVICE_TASK`] |
//! | [`TWO_PERSON_POLICY`] | [`IDENTITY`] | none | 10m | 2 | [`TWO_PERSON_TASK`] |
//!
//! Admins (all proven by an RS256 JWT of the test issuer): [`COMMANDER`] and [`APPROVER`]
//! (`break_glass_approve`), [`SUPERVISOR`] (`admin`), plus the revocation tests' [`ADMIN`](crate::admin::ADMIN)
//! (`revoke`) and [`AUDITOR`](crate::admin::AUDITOR) (`read_audit`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

use crate::admin::{BATCH_IDENTITY, READ_TASK, admin_toml, revocation_registry};
use crate::policy::{BreakGlassFile, Identity, PolicyFile, Task, entries};
use crate::sdk_support::{free_port, serve};
use crate::{
    IDENTITY, ISSUER, Options, PROD_LEDGER, Reply, SUBJECT, TestBroker, TokenRequest, rs256,
    write_policies,
};

/// The break-glass policy of [`IDENTITY`]: one approval, `max_duration` 10m.
pub const BG_POLICY: &str = "ledger-emergency";
/// The break-glass task of [`BG_POLICY`] (not in [`IDENTITY`]'s normal policy).
pub const BG_TASK: &str = "ledger-admin";
/// The scopes of [`BG_TASK`], in policy order.
pub const BG_SCOPES: &[&str] = &["ledger:read", "ledger:write", "ledger:admin"];
/// `max_ttl` of [`BG_TASK`], seconds.
pub const BG_MAX_TTL_SECS: u64 = 900;
/// `max_duration` of [`BG_POLICY`], seconds.
pub const BG_MAX_DURATION_SECS: u64 = 600;

/// The self-service break-glass policy (`approvals = 0`) of [`BATCH_IDENTITY`].
pub const SELF_SERVICE_POLICY: &str = "batch-self-service";
/// The break-glass task of [`SELF_SERVICE_POLICY`].
pub const SELF_SERVICE_TASK: &str = "ledger-repair";

/// A break-glass policy of [`IDENTITY`] that needs two approvals.
pub const TWO_PERSON_POLICY: &str = "ledger-purge-two-person";
/// The break-glass task of [`TWO_PERSON_POLICY`].
pub const TWO_PERSON_TASK: &str = "ledger-purge";

/// A registered on-call workload, named in [`BG_POLICY`]'s `requesters`.
pub const ONCALL_IDENTITY: &str = "oncall-bot";
/// The workload-JWT subject of [`ONCALL_IDENTITY`].
pub const ONCALL_SUBJECT: &str = "system:serviceaccount:sre:oncall-bot";

/// An admin with `break_glass_approve` who requests grants in the tests.
pub const COMMANDER: &str = "incident-commander";
/// The JWT subject that proves [`COMMANDER`].
pub const COMMANDER_SUBJECT: &str = "admin:incident-commander";
/// A second admin with `break_glass_approve`: the one who approves.
pub const APPROVER: &str = "security-lead";
/// The JWT subject that proves [`APPROVER`].
pub const APPROVER_SUBJECT: &str = "admin:security-lead";
/// An admin with the `admin` role (every role).
pub const SUPERVISOR: &str = "ciso";
/// The JWT subject that proves [`SUPERVISOR`].
pub const SUPERVISOR_SUBJECT: &str = "admin:ciso";

/// The justification the tests give.
pub const JUSTIFICATION: &str = "INC-4242: ledger writes stuck, need admin to drain the queue";
/// The incident ticket the tests give.
pub const TICKET: &str = "INC-4242";

/// Every event kind of a grant's life, in order (`break_glass_closed` instead of
/// `break_glass_expired` when closed early).
pub const LIFECYCLE_EVENTS: &[&str] = &[
    "break_glass_requested",
    "break_glass_approved",
    "break_glass_activated",
    "break_glass_token_issued",
    "break_glass_expired",
];

/// The audit actor of admin `name`.
pub fn actor_admin(name: &str) -> String {
    format!("admin:{name}")
}

/// [`BG_POLICY`]: a two-person rule (one approval) for [`IDENTITY`], requested by
/// [`ONCALL_IDENTITY`]; [`BG_TASK`] with [`BG_SCOPES`].
pub fn ledger_emergency_file() -> BreakGlassFile {
    BreakGlassFile::new(
        BG_POLICY,
        &[IDENTITY],
        "10m",
        1,
        Task::new(BG_TASK, PROD_LEDGER, BG_SCOPES, "15m"),
    )
    .requesters(&[ONCALL_IDENTITY])
}

/// [`ledger_emergency_file`]'s text.
pub fn ledger_emergency_policy() -> String {
    ledger_emergency_file().render()
}

/// [`SELF_SERVICE_POLICY`]: self-service (no approvals) for [`BATCH_IDENTITY`], but loud.
pub fn self_service_file() -> BreakGlassFile {
    BreakGlassFile::new(
        SELF_SERVICE_POLICY,
        &[BATCH_IDENTITY],
        "30m",
        0,
        Task::new(
            SELF_SERVICE_TASK,
            PROD_LEDGER,
            &["ledger:read", "ledger:write"],
            "5m",
        ),
    )
}

/// [`TWO_PERSON_POLICY`]: two approvers.
pub fn two_person_file() -> BreakGlassFile {
    BreakGlassFile::new(
        TWO_PERSON_POLICY,
        &[IDENTITY],
        "10m",
        2,
        Task::new(TWO_PERSON_TASK, PROD_LEDGER, &["ledger:admin"], "5m"),
    )
}

/// The files of `<policy dir>/break-glass/`: [`BG_POLICY`], [`SELF_SERVICE_POLICY`] and
/// [`TWO_PERSON_POLICY`].
pub fn break_glass_policies() -> Vec<(String, String)> {
    [
        ledger_emergency_file(),
        self_service_file(),
        two_person_file(),
    ]
    .iter()
    .map(BreakGlassFile::entry)
    .collect()
}

/// The registry file of [`ONCALL_IDENTITY`] (a `ledger-read` task of its own).
pub fn oncall_file() -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            ONCALL_IDENTITY,
            "team-sre",
            "dave@example.com",
            "On-call automation",
            "CHG-6000",
        )
        .approved_by("bob@example.com")
        .jwt(ONCALL_SUBJECT),
    )
    .task(Task::new(READ_TASK, PROD_LEDGER, &["ledger:read"], "5m"))
}

/// How a break-glass test broker is set up. `Default`: no webhook, the default
/// `pending_ttl`, [`break_glass_policies`].
#[derive(Debug, Clone)]
pub struct BreakGlassOptions {
    /// `[break_glass] webhook_url`.
    pub webhook_url: Option<String>,
    /// `[break_glass] pending_ttl`.
    pub pending_ttl: Option<String>,
    /// The files of `<policy dir>/break-glass/`.
    pub files: Vec<(String, String)>,
}

impl Default for BreakGlassOptions {
    fn default() -> Self {
        Self {
            webhook_url: None,
            pending_ttl: None,
            files: break_glass_policies(),
        }
    }
}

impl BreakGlassOptions {
    /// With `[break_glass] webhook_url = url`.
    pub fn webhook(url: &str) -> Self {
        Self {
            webhook_url: Some(url.to_owned()),
            ..Self::default()
        }
    }

    /// The config additions: the revocation tests' `[state]` and admins, [`COMMANDER`],
    /// [`APPROVER`] and `[break_glass]`.
    pub fn extra_toml(&self) -> String {
        let mut t = admin_toml();
        t.push_str(&format!(
            r#"
[[admin]]
name    = "{COMMANDER}"
roles   = ["break_glass_approve"]
issuer  = "{ISSUER}"
subject = "{COMMANDER_SUBJECT}"

[[admin]]
name    = "{APPROVER}"
roles   = ["break_glass_approve"]
issuer  = "{ISSUER}"
subject = "{APPROVER_SUBJECT}"

[[admin]]
name    = "{SUPERVISOR}"
roles   = ["admin"]
issuer  = "{ISSUER}"
subject = "{SUPERVISOR_SUBJECT}"
"#
        ));
        if self.webhook_url.is_some() || self.pending_ttl.is_some() {
            t.push_str("\n[break_glass]\n");
            if let Some(u) = &self.webhook_url {
                t.push_str(&format!("webhook_url = {}\n", toml_str(u)));
            }
            if let Some(p) = &self.pending_ttl {
                t.push_str(&format!("pending_ttl = {}\n", toml_str(p)));
            }
        }
        t
    }

    /// The harness options: [`revocation_registry`] plus [`oncall_file`], and
    /// [`BreakGlassOptions::extra_toml`].
    pub fn options(&self) -> Options {
        let mut registry = revocation_registry();
        registry.push(oncall_file());
        Options {
            policies: entries(&registry),
            extra_toml: self.extra_toml(),
            ..Options::default()
        }
    }

    /// A prepared (not started) broker with the break-glass files written.
    pub fn prepare(&self) -> TestBroker {
        let b = TestBroker::prepare(self.options());
        write_break_glass_files(&b.dir().join("policies"), &self.files);
        b
    }

    /// A started broker; panics with its stderr if it does not come up.
    pub fn start(&self) -> TestBroker {
        let mut b = self.prepare();
        if let Err(e) = b.launch() {
            panic!("{e}");
        }
        b
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Writes `files` into `<policy_dir>/break-glass/` (created if missing).
pub fn write_break_glass_files(policy_dir: &Path, files: &[(String, String)]) {
    write_policies(&policy_dir.join("break-glass"), files);
}

/// A bearer credential for [`COMMANDER`].
pub fn commander_bearer() -> String {
    rs256(COMMANDER_SUBJECT)
}

/// A bearer credential for [`APPROVER`].
pub fn approver_bearer() -> String {
    rs256(APPROVER_SUBJECT)
}

/// A bearer credential for [`SUPERVISOR`].
pub fn supervisor_bearer() -> String {
    rs256(SUPERVISOR_SUBJECT)
}

/// A complete request body: [`JUSTIFICATION`] and [`TICKET`] for `identity`, `task` and
/// `duration` (tests remove or change fields to build bad ones).
pub fn grant_body(identity: &str, task: &str, duration: &str) -> Value {
    json!({
        "identity": identity,
        "task": task,
        "duration": duration,
        "justification": JUSTIFICATION,
        "ticket": TICKET,
    })
}

/// [`grant_body`] for [`IDENTITY`] and [`BG_TASK`].
pub fn ledger_grant_body(duration: &str) -> Value {
    grant_body(IDENTITY, BG_TASK, duration)
}

/// The `id` of a grant answer.
pub fn grant_id(grant: &Value) -> String {
    grant["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a grant id: {grant}"))
        .to_owned()
}

/// The grant id an audit record is about (`detail.grant`).
pub fn record_grant(rec: &Value) -> Option<&str> {
    rec["detail"]["grant"].as_str()
}

/// The audit records of `event` about grant `id`.
pub fn grant_records(b: &TestBroker, event: &str, id: &str) -> Vec<Value> {
    b.records_of(event)
        .into_iter()
        .filter(|r| record_grant(r) == Some(id))
        .collect()
}

/// The `denied` records with `rule`.
pub fn denied_with_rule(b: &TestBroker, rule: &str) -> Vec<Value> {
    b.records_of("denied")
        .into_iter()
        .filter(|r| r["rule"] == rule)
        .collect()
}

/// Polls `check` (every 50 ms) until it holds or `timeout` passes; whether it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reply_of(res: reqwest::Response) -> Reply {
    Reply::from(res).await
}

impl TestBroker {
    /// `POST {path}` with a JSON body (or none), authenticated by `bearer` (if any).
    pub async fn bg_post(&self, bearer: Option<&str>, path: &str, body: Option<&Value>) -> Reply {
        let mut rb = self.client().post(format!("{}{path}", self.base_url()));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(
            rb.send()
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
        .await
    }

    /// `GET {path}`, authenticated by `bearer` (if any).
    pub async fn bg_get(&self, bearer: Option<&str>, path: &str) -> Reply {
        let mut rb = self.client().get(format!("{}{path}", self.base_url()));
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(
            rb.send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}")),
        )
        .await
    }

    /// `POST /v1/break-glass` with `body`.
    pub async fn request_grant(&self, bearer: Option<&str>, body: &Value) -> Reply {
        self.bg_post(bearer, "/v1/break-glass", Some(body)).await
    }

    /// `POST /v1/break-glass/{id}/approve`.
    pub async fn approve_grant(&self, bearer: Option<&str>, id: &str) -> Reply {
        self.bg_post(bearer, &format!("/v1/break-glass/{id}/approve"), None)
            .await
    }

    /// `POST /v1/break-glass/{id}/close`.
    pub async fn close_grant(&self, bearer: Option<&str>, id: &str) -> Reply {
        self.bg_post(bearer, &format!("/v1/break-glass/{id}/close"), None)
            .await
    }

    /// `GET /v1/break-glass/{id}/report`.
    pub async fn grant_report(&self, bearer: Option<&str>, id: &str) -> Reply {
        self.bg_get(bearer, &format!("/v1/break-glass/{id}/report"))
            .await
    }

    /// The report of grant `id` as [`COMMANDER`]; panics unless 200.
    pub async fn report_of(&self, id: &str) -> Value {
        let r = self.grant_report(Some(&commander_bearer()), id).await;
        assert_eq!(r.status, 200, "report of {id}: {}", r.text);
        r.body
    }

    /// [`COMMANDER`] requests a grant of [`BG_TASK`] for [`IDENTITY`] and [`APPROVER`]
    /// approves it; returns the active grant (panics otherwise).
    pub async fn open_grant(&self, duration: &str) -> Value {
        let r = self
            .request_grant(Some(&commander_bearer()), &ledger_grant_body(duration))
            .await;
        assert_eq!(r.status, 201, "requesting a grant: {}", r.text);
        assert_eq!(r.body["status"], "pending", "{}", r.text);
        let id = grant_id(&r.body);
        let r = self.approve_grant(Some(&approver_bearer()), &id).await;
        assert_eq!(r.status, 200, "approving {id}: {}", r.text);
        assert_eq!(r.body["status"], "active", "{}", r.text);
        r.body
    }

    /// `POST /oauth2/token`: [`IDENTITY`] asks for [`BG_TASK`] with `extra` form
    /// parameters (`scope`, `requested_ttl`, ...).
    pub async fn bg_token(&self, extra: &[(&str, &str)]) -> Reply {
        let mut req = TokenRequest::exchange(&rs256(SUBJECT), BG_TASK);
        for (k, v) in extra {
            req = req.param(k, v);
        }
        self.token(&req).await
    }

    /// A token of [`BG_TASK`] for [`IDENTITY`]; panics unless issued.
    pub async fn issue_bg(&self) -> String {
        let r = self.bg_token(&[]).await;
        assert_eq!(r.status, 200, "a break-glass token: {}", r.text);
        r.access_token().expect("access_token").to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Hook {
    events: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<AtomicUsize>,
    refuse_first: usize,
}

async fn hook(State(h): State<Hook>, Json(event): Json<Value>) -> StatusCode {
    let n = h.attempts.fetch_add(1, Ordering::SeqCst);
    if n < h.refuse_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    h.events.lock().expect("events lock").push(event);
    StatusCode::NO_CONTENT
}

/// A webhook receiver on a free loopback port (`POST /hook`) that records every JSON event
/// it accepts; it runs until the test's runtime ends.
#[derive(Clone)]
pub struct WebhookReceiver {
    url: String,
    hook: Hook,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Starts a receiver that accepts every event.
    pub async fn start() -> Self {
        Self::refusing_first(0).await
    }

    /// Starts a receiver that answers 503 to its first `n` deliveries, then accepts.
    pub async fn refusing_first(n: usize) -> Self {
        let h = Hook {
            refuse_first: n,
            ..Hook::default()
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(h.clone());
        let base = serve(app).await;
        Self {
            url: format!("{base}/hook"),
            hook: h,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every event accepted so far, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.hook.events.lock().expect("events lock").clone()
    }

    /// Every delivery attempt so far (refused ones included).
    pub fn attempts(&self) -> usize {
        self.hook.attempts.load(Ordering::SeqCst)
    }

    /// The accepted events about grant `id`.
    pub fn events_of(&self, id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| event_grant(e) == Some(id))
            .collect()
    }

    /// Waits (up to `timeout`) until events of every kind in `kinds` about grant `id`
    /// arrived; returns the events about `id` either way.
    pub async fn wait_for_kinds(&self, id: &str, kinds: &[&str], timeout: Duration) -> Vec<Value> {
        let _ = eventually(timeout, async || {
            let got = self.events_of(id);
            kinds.iter().all(|k| got.iter().any(|e| e["event"] == *k))
        })
        .await;
        self.events_of(id)
    }
}

/// The grant id a webhook event is about: `grant` is the grant object (its `id`) or the id.
pub fn event_grant(event: &Value) -> Option<&str> {
    match &event["grant"] {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// A webhook URL on a loopback port nobody listens on (connections are refused).
pub fn closed_port_webhook() -> String {
    format!("http://127.0.0.1:{}/hook", free_port())
}

/// A webhook that accepts TCP connections and never answers; returns its URL and a
/// counter of the connections it accepted.
pub async fn hanging_webhook() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    (format!("http://{addr}/hook"), accepted)
}
