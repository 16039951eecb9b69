//! What the revocation tests (issue 4) share: a registry with several owners and a resource
//! server, two configured admins (one with the `revoke` role, one without), and clients for
//! `/oauth2/introspect`, `/oauth2/revoke`, `/v1/revocations` and `/v1/admin/*`.
//!
//! | identity | owner | subject (test issuer) | tasks |
//! | --- | --- | --- | --- |
//! | [`IDENTITY`](crate::IDENTITY) (default policy) | `team-payments` | [`SUBJECT`] | [`TASK`], `ledger-office` |
//! | [`BATCH_IDENTITY`] | [`PAYMENTS_OWNER`] | [`BATCH_SUBJECT`] | [`READ_TASK`] |
//! | [`BILLING_IDENTITY`] | [`BILLING_OWNER`] | [`BILLING_SUBJECT`] | [`TASK`], [`READ_TASK`] |
//! | [`RS_IDENTITY`] (`may_introspect`) | `team-ledger` | [`RS_SUBJECT`] | [`READ_TASK`] |
//!
//! Admins are proven by an RS256 JWT of the test issuer: [`ADMIN`] (`revoke`) by
//! [`ADMIN_SUBJECT`], [`AUDITOR`] (`read_audit` only) by [`AUDITOR_SUBJECT`].

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde_json::Value;

use crate::policy::{Identity, PolicyFile, Task, entries};
use crate::{
    BROKER_ISSUER, ISSUER, Options, PROD_LEDGER, Reply, SUBJECT, TASK, TASK_SCOPES, TestBroker,
    TokenRequest, default_registry, insecure_claims, rs256,
};

/// The owner of [`IDENTITY`](crate::IDENTITY) and [`BATCH_IDENTITY`].
pub const PAYMENTS_OWNER: &str = "team-payments";
/// A second identity of [`PAYMENTS_OWNER`].
pub const BATCH_IDENTITY: &str = "payments-batch";
/// The workload-JWT subject of [`BATCH_IDENTITY`].
pub const BATCH_SUBJECT: &str = "system:serviceaccount:payments:batch";
/// An identity of another owner, with a task named like [`TASK`].
pub const BILLING_IDENTITY: &str = "billing-worker";
/// The owner of [`BILLING_IDENTITY`].
pub const BILLING_OWNER: &str = "team-billing";
/// The workload-JWT subject of [`BILLING_IDENTITY`].
pub const BILLING_SUBJECT: &str = "system:serviceaccount:billing:worker";
/// A resource server (`may_introspect = true`).
pub const RS_IDENTITY: &str = "ledger-rs";
/// The workload-JWT subject of [`RS_IDENTITY`].
pub const RS_SUBJECT: &str = "system:serviceaccount:ledger:rs";
/// `ledger:read` on [`PROD_LEDGER`], 5m: a task of [`BATCH_IDENTITY`], [`BILLING_IDENTITY`]
/// and [`RS_IDENTITY`].
pub const READ_TASK: &str = "ledger-read";

/// The admin with the `revoke` role.
pub const ADMIN: &str = "secops";
/// The JWT subject that proves [`ADMIN`].
pub const ADMIN_SUBJECT: &str = "admin:secops";
/// An admin with only `read_audit`.
pub const AUDITOR: &str = "auditor";
/// The JWT subject that proves [`AUDITOR`].
pub const AUDITOR_SUBJECT: &str = "admin:auditor";

fn revocation_identity(id: &str, owner: &str, subject: &str) -> Identity {
    Identity::prod(
        id,
        owner,
        "carol@example.com",
        "Revocation end-to-end tests",
        "CHG-4000",
    )
    .approved_by("bob@example.com")
    .jwt(subject)
}

fn read_task() -> Task {
    Task::new(READ_TASK, PROD_LEDGER, &["ledger:read"], "5m")
}

/// The default registry plus [`BATCH_IDENTITY`], [`BILLING_IDENTITY`] and [`RS_IDENTITY`]
/// (a resource server: `may_introspect`).
pub fn revocation_registry() -> Vec<PolicyFile> {
    let mut r = default_registry();
    r.push(
        PolicyFile::new(revocation_identity(
            BATCH_IDENTITY,
            PAYMENTS_OWNER,
            BATCH_SUBJECT,
        ))
        .task(read_task()),
    );
    r.push(
        PolicyFile::new(revocation_identity(
            BILLING_IDENTITY,
            BILLING_OWNER,
            BILLING_SUBJECT,
        ))
        .task(Task::new(TASK, PROD_LEDGER, TASK_SCOPES, "10m"))
        .task(read_task()),
    );
    r.push(
        PolicyFile::new(
            revocation_identity(RS_IDENTITY, "team-ledger", RS_SUBJECT).may_introspect(),
        )
        .task(read_task()),
    );
    r
}

/// [`revocation_registry`]'s files.
pub fn revocation_policies() -> Vec<(String, String)> {
    entries(&revocation_registry())
}

/// `[state]` and the two `[[admin]]`s.
pub fn admin_toml() -> String {
    format!(
        r#"
[state]
dir = "state"

[[admin]]
name    = "{ADMIN}"
roles   = ["revoke"]
issuer  = "{ISSUER}"
subject = "{ADMIN_SUBJECT}"

[[admin]]
name    = "{AUDITOR}"
roles   = ["read_audit"]
issuer  = "{ISSUER}"
subject = "{AUDITOR_SUBJECT}"
"#
    )
}

/// A plain-HTTP broker with [`revocation_policies`] and [`admin_toml`].
pub fn revocation_options() -> Options {
    Options {
        policies: revocation_policies(),
        extra_toml: admin_toml(),
        ..Options::default()
    }
}

/// A bearer credential for [`ADMIN`].
pub fn admin_bearer() -> String {
    rs256(ADMIN_SUBJECT)
}

/// A bearer credential for [`AUDITOR`].
pub fn auditor_bearer() -> String {
    rs256(AUDITOR_SUBJECT)
}

/// The `jti` of a broker token (decoded, not verified).
pub fn jti_of(token: &str) -> String {
    insecure_claims(token)["jti"]
        .as_str()
        .expect("a jti claim")
        .to_owned()
}

/// A token of the broker's own issuer with arbitrary claims, signed with the broker's
/// signing key (read from its key dir) under the `kid` of `like` (a real broker token):
/// for tokens the broker would never mint, such as one valid only in the future.
pub fn forge_with_broker_key(b: &TestBroker, like: &str, claims: &Value) -> String {
    let mut claims = claims.clone();
    claims["iss"] = Value::from(BROKER_ISSUER);
    sign_with_broker_key(b, like, &claims)
}

/// `claims` exactly as given (any `iss`), signed like [`forge_with_broker_key`].
pub fn sign_with_broker_key(b: &TestBroker, like: &str, claims: &Value) -> String {
    let kid = jsonwebtoken::decode_header(like)
        .expect("a JWS header")
        .kid
        .expect("a kid");
    let key_file: PathBuf = std::fs::read_dir(b.key_dir())
        .expect("reading the key dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "pem"))
        .expect("a PEM key in the key dir");
    let pem = std::fs::read(&key_file).expect("reading the signing key");
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).expect("an Ed25519 PKCS#8 key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid);
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, claims, &key).expect("signing a forged token")
}

/// Writes `contents` to `dir/name` and returns the path (bearer files for the CLI).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("writing a file");
    p
}

async fn reply_of(res: reqwest::Response) -> Reply {
    Reply::from(res).await
}

impl TestBroker {
    /// Exchanges a fresh workload JWT of `subject` for a token of `task` (with
    /// `requested_ttl` if given); panics unless it is issued.
    pub async fn issue(&self, subject: &str, task: &str, ttl: Option<u64>) -> String {
        let mut req = TokenRequest::exchange(&rs256(subject), task);
        if let Some(t) = ttl {
            req = req.ttl(t);
        }
        let reply = self.token(&req).await;
        assert_eq!(
            reply.status, 200,
            "issuing {task} to {subject}: {}",
            reply.text
        );
        reply.access_token().expect("access_token").to_owned()
    }

    /// A token of [`IDENTITY`](crate::IDENTITY) for [`TASK`].
    pub async fn issue_payments(&self) -> String {
        self.issue(SUBJECT, TASK, None).await
    }

    async fn form_post(&self, path: &str, bearer: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut rb = self
            .client()
            .post(format!("{}{path}", self.base_url()))
            .form(form);
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

    /// `POST /oauth2/introspect` `token=…`, authenticated by `bearer` (if any).
    pub async fn introspect_with(&self, bearer: Option<&str>, token: &str) -> Reply {
        self.form_post("/oauth2/introspect", bearer, &[("token", token)])
            .await
    }

    /// Introspects `token` as the resource server [`RS_IDENTITY`]; panics unless 200.
    pub async fn introspect(&self, token: &str) -> Value {
        let r = self.introspect_with(Some(&rs256(RS_SUBJECT)), token).await;
        assert_eq!(r.status, 200, "introspection: {}", r.text);
        r.body
    }

    /// Whether introspection (as [`RS_IDENTITY`]) says `token` is active; checks that an
    /// inactive answer is exactly `{"active":false}` (RFC 7662 §2.2: nothing else leaks).
    pub async fn is_active(&self, token: &str) -> bool {
        let body = self.introspect(token).await;
        match body["active"].as_bool() {
            Some(true) => true,
            Some(false) => {
                assert_eq!(
                    body,
                    serde_json::json!({"active": false}),
                    "an inactive answer carries nothing else"
                );
                false
            }
            None => panic!("introspection without a boolean active: {body}"),
        }
    }

    /// `POST /oauth2/revoke` `token=…`, authenticated by `bearer` (if any).
    pub async fn revoke_with(&self, bearer: Option<&str>, token: &str) -> Reply {
        self.form_post("/oauth2/revoke", bearer, &[("token", token)])
            .await
    }

    /// `POST /v1/admin/{path}` with a JSON body, authenticated by `bearer` (if any).
    pub async fn admin_post(&self, bearer: Option<&str>, path: &str, body: &Value) -> Reply {
        let mut rb = self
            .client()
            .post(format!("{}/v1/admin/{path}", self.base_url()))
            .json(body);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(
            rb.send()
                .await
                .unwrap_or_else(|e| panic!("POST /v1/admin/{path}: {e}")),
        )
        .await
    }

    /// `POST /v1/admin/revocations` as [`ADMIN`]; panics unless 200.
    pub async fn admin_revoke(&self, body: &Value) -> Value {
        let r = self
            .admin_post(Some(&admin_bearer()), "revocations", body)
            .await;
        assert_eq!(r.status, 200, "admin revocation {body}: {}", r.text);
        r.body
    }

    /// `GET /v1/revocations[?since=…]`, authenticated by `bearer` (if any).
    pub async fn feed_with(&self, bearer: Option<&str>, since: Option<u64>) -> Reply {
        let url = match since {
            Some(s) => format!("{}/v1/revocations?since={s}", self.base_url()),
            None => format!("{}/v1/revocations", self.base_url()),
        };
        let mut rb = self.client().get(url);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        reply_of(rb.send().await.expect("GET /v1/revocations")).await
    }

    /// The feed as [`RS_IDENTITY`]; panics unless 200.
    pub async fn feed(&self, since: Option<u64>) -> Value {
        let r = self.feed_with(Some(&rs256(RS_SUBJECT)), since).await;
        assert_eq!(r.status, 200, "revocation feed: {}", r.text);
        r.body
    }

    /// Stops the broker with SIGKILL (no graceful shutdown) and waits for it; the temp dir
    /// stays, so the broker can be relaunched.
    pub fn sigkill(&mut self) -> ExitStatus {
        let mut r = self.running.take().expect("the broker is not running");
        r.child.kill().expect("SIGKILL the broker");
        let status = r.child.wait().expect("waiting for the killed broker");
        if let Some(t) = r.stderr_thread.take() {
            let _ = t.join();
        }
        self.last_stderr = Some(r.stderr.lock().expect("stderr lock").clone());
        status
    }
}

/// The feed entries of a feed answer.
pub fn feed_entries(feed: &Value) -> &Vec<Value> {
    feed["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("the feed has entries: {feed}"))
}

/// The feed entry revoking `jti`, if any.
pub fn feed_jti<'a>(feed: &'a Value, jti: &str) -> Option<&'a Value> {
    feed_entries(feed).iter().find(|e| e["jti"] == jti)
}

/// The feed entry of rule `id`, if any.
pub fn feed_rule<'a>(feed: &'a Value, id: &str) -> Option<&'a Value> {
    feed_entries(feed).iter().find(|e| e["rule"]["id"] == id)
}
