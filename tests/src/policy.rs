//! Typed policy fixtures: every registry file and break-glass policy the tests write is
//! built here and rendered to TOML by `toml` (no hand-written TOML templates to copy and
//! patch). A test that needs a variant changes the typed value — adds a task, drops
//! `max_duration` — instead of editing text.
//!
//! The shapes follow the broker's policy files (`broker/src/policy/model.rs`,
//! `broker/src/breakglass/policy.rs`, docs in DESIGN.md); fields a fixture leaves unset are
//! left out of the file, so the broker's defaults apply.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ISSUER;

/// A registry file: `[identity]` with its matchers, and its `[[task]]`s.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyFile {
    /// `[identity]`.
    pub identity: Identity,
    /// `[[task]]`.
    #[serde(rename = "task", skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Task>,
}

/// `[identity]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// Registry id (also the file name: `{id}.toml`).
    pub id: String,
    /// Owning team.
    pub owner: String,
    /// The person answerable for it.
    pub steward: String,
    /// What it is for.
    pub purpose: String,
    /// `prod`, `dev`, ...
    pub environment: String,
    /// Change ticket.
    pub ticket: String,
    /// Who approved the registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Registration end date (`YYYY-MM-DD`).
    pub expires: String,
    /// A third party's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_party: Option<bool>,
    /// A resource server that may introspect and read the revocation feed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub may_introspect: bool,
    /// `alert` or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly_action: Option<String>,
    /// `[[identity.match]]`.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<Matcher>,
}

/// `[[identity.match]]`: set exactly one kind (a JWT `issuer` + `subject`, a `spiffe_id`,
/// a `cert_subject` or a `dns_name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Matcher {
    /// SPIFFE ID of an X.509-SVID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Workload-JWT issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Workload-JWT subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Exact extra claims the JWT must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, String>>,
    /// Certificate subject CN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// Certificate DNS SAN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// For `cert_subject` / `dns_name`: the `[[client_ca]]` the certificate must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// `require_binding` of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `true`: certificate-bound (RFC 8705).
    Certificate,
    /// `"dpop"`: DPoP-bound (RFC 9449).
    Dpop,
}

impl Serialize for Binding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Certificate => s.serialize_bool(true),
            Self::Dpop => s.serialize_str("dpop"),
        }
    }
}

/// `[[task]]` (also `[[break_glass.task]]`, which uses the first four fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// Task name.
    pub name: String,
    /// The audience tokens are for.
    pub audience: String,
    /// The scopes it may be granted.
    pub scopes: Vec<String>,
    /// Longest token lifetime (`5m`).
    pub max_ttl: String,
    /// Source networks the request must come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_cidrs: Option<Vec<String>>,
    /// Token binding the task requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_binding: Option<Binding>,
    /// Token bucket, e.g. `2/s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// `[[task.delegation]]`.
    #[serde(rename = "delegation", skip_serializing_if = "Vec::is_empty")]
    pub delegations: Vec<Delegation>,
}

/// `[[task.delegation]]`: who may act for the identity on the task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delegation {
    /// Registry ids of the actors.
    pub actors: Vec<String>,
    /// Narrower scopes for delegated tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Shorter lifetime for delegated tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// Longest actor chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

/// A break-glass policy file (`<policy dir>/break-glass/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakGlassFile {
    /// `[break_glass]`.
    pub break_glass: BreakGlass,
}

/// `[break_glass]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakGlass {
    /// Policy name.
    pub name: String,
    /// The identities a grant may be for.
    pub identities: Vec<String>,
    /// Workloads that may request a grant themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requesters: Option<Vec<String>>,
    /// Longest grant (required by the broker; `None` makes an invalid file on purpose).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
    /// Approvals needed besides the requester.
    pub approvals: u32,
    /// `[[break_glass.task]]`.
    #[serde(rename = "task")]
    pub tasks: Vec<Task>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn render<T: Serialize>(value: &T) -> String {
    toml::to_string(value).expect("a policy fixture renders as TOML")
}

impl PolicyFile {
    /// `identity` without tasks.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            tasks: Vec::new(),
        }
    }

    /// With `task` added last.
    pub fn task(mut self, task: Task) -> Self {
        self.tasks.push(task);
        self
    }

    /// The task named `name`; panics if there is none (a fixture mistake).
    pub fn task_mut(&mut self, name: &str) -> &mut Task {
        self.tasks
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name} in {}", self.identity.id))
    }

    /// The file's TOML text.
    pub fn render(&self) -> String {
        render(self)
    }

    /// `({id}.toml, text)`, as the harness's policy lists hold files.
    pub fn entry(&self) -> (String, String) {
        (format!("{}.toml", self.identity.id), self.render())
    }
}

/// The files of `registry`, each as [`PolicyFile::entry`].
pub fn entries(registry: &[PolicyFile]) -> Vec<(String, String)> {
    registry.iter().map(PolicyFile::entry).collect()
}

/// The file of identity `id` in `registry`; panics if there is none.
pub fn identity_mut<'a>(registry: &'a mut [PolicyFile], id: &str) -> &'a mut PolicyFile {
    registry
        .iter_mut()
        .find(|p| p.identity.id == id)
        .unwrap_or_else(|| panic!("no identity {id} in the registry"))
}

impl Identity {
    /// A `prod` registration valid until 2099-01-01, without matchers.
    pub fn prod(id: &str, owner: &str, steward: &str, purpose: &str, ticket: &str) -> Self {
        Self {
            id: id.to_owned(),
            owner: owner.to_owned(),
            steward: steward.to_owned(),
            purpose: purpose.to_owned(),
            environment: "prod".to_owned(),
            ticket: ticket.to_owned(),
            approved_by: None,
            expires: "2099-01-01".to_owned(),
            third_party: None,
            may_introspect: false,
            anomaly_action: None,
            matchers: Vec::new(),
        }
    }

    /// `approved_by = who`.
    pub fn approved_by(mut self, who: &str) -> Self {
        self.approved_by = Some(who.to_owned());
        self
    }

    /// `expires = date`.
    pub fn expires(mut self, date: &str) -> Self {
        self.expires = date.to_owned();
        self
    }

    /// `environment = env`.
    pub fn environment(mut self, env: &str) -> Self {
        self.environment = env.to_owned();
        self
    }

    /// `third_party = yes`.
    pub fn third_party(mut self, yes: bool) -> Self {
        self.third_party = Some(yes);
        self
    }

    /// `may_introspect = true`.
    pub fn may_introspect(mut self) -> Self {
        self.may_introspect = true;
        self
    }

    /// `anomaly_action = action`, if given.
    pub fn anomaly_action(mut self, action: Option<&str>) -> Self {
        self.anomaly_action = action.map(str::to_owned);
        self
    }

    /// Proved by a workload JWT of the test issuer ([`ISSUER`]) for `subject`.
    pub fn jwt(self, subject: &str) -> Self {
        self.matcher(Matcher::jwt(subject))
    }

    /// With `m` added last.
    pub fn matcher(mut self, m: Matcher) -> Self {
        self.matchers.push(m);
        self
    }
}

impl Matcher {
    /// A workload JWT of [`ISSUER`] for `subject`.
    pub fn jwt(subject: &str) -> Self {
        Self {
            issuer: Some(ISSUER.to_owned()),
            subject: Some(subject.to_owned()),
            ..Self::default()
        }
    }

    /// With the exact extra claims `claims`.
    pub fn claims(mut self, claims: &[(&str, &str)]) -> Self {
        let map = claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.claims = Some(map);
        self
    }

    /// An X.509-SVID with `spiffe_id`.
    pub fn spiffe(spiffe_id: &str) -> Self {
        Self {
            spiffe_id: Some(spiffe_id.to_owned()),
            ..Self::default()
        }
    }

    /// A company-CA certificate with subject CN `cn`.
    pub fn cert_subject(cn: &str) -> Self {
        Self {
            cert_subject: Some(cn.to_owned()),
            ..Self::default()
        }
    }

    /// A company-CA certificate with DNS SAN `name`.
    pub fn dns_name(name: &str) -> Self {
        Self {
            dns_name: Some(name.to_owned()),
            ..Self::default()
        }
    }
}

impl Task {
    /// `name` on `audience` with `scopes`, tokens of at most `max_ttl`.
    pub fn new(name: &str, audience: &str, scopes: &[&str], max_ttl: &str) -> Self {
        Self {
            name: name.to_owned(),
            audience: audience.to_owned(),
            scopes: strings(scopes),
            max_ttl: max_ttl.to_owned(),
            source_cidrs: None,
            require_binding: None,
            rate_limit: None,
            delegations: Vec::new(),
        }
    }

    /// `source_cidrs = cidrs`.
    pub fn source_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.source_cidrs = Some(strings(cidrs));
        self
    }

    /// `require_binding`.
    pub fn require_binding(mut self, binding: Binding) -> Self {
        self.require_binding = Some(binding);
        self
    }

    /// `rate_limit = limit`, if given.
    pub fn rate_limit(mut self, limit: Option<&str>) -> Self {
        self.rate_limit = limit.map(str::to_owned);
        self
    }

    /// With `d` added last.
    pub fn delegation(mut self, d: Delegation) -> Self {
        self.delegations.push(d);
        self
    }
}

impl Delegation {
    /// `actors` may act, with the task's own scopes, lifetime and a direct chain.
    pub fn to(actors: &[&str]) -> Self {
        Self {
            actors: strings(actors),
            scopes: None,
            max_ttl: None,
            max_depth: None,
        }
    }

    /// Delegated tokens carry at most `scopes`.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = Some(strings(scopes));
        self
    }

    /// Delegated tokens live at most `ttl`.
    pub fn max_ttl(mut self, ttl: &str) -> Self {
        self.max_ttl = Some(ttl.to_owned());
        self
    }

    /// Chains of up to `depth` actors.
    pub fn max_depth(mut self, depth: u32) -> Self {
        self.max_depth = Some(depth);
        self
    }
}

impl BreakGlassFile {
    /// Policy `name` for `identities`, grants of at most `max_duration` with `approvals`
    /// approvals, one `task`.
    pub fn new(
        name: &str,
        identities: &[&str],
        max_duration: &str,
        approvals: u32,
        task: Task,
    ) -> Self {
        Self {
            break_glass: BreakGlass {
                name: name.to_owned(),
                identities: strings(identities),
                requesters: None,
                max_duration: Some(max_duration.to_owned()),
                approvals,
                tasks: vec![task],
            },
        }
    }

    /// Workloads `who` may request a grant themselves.
    pub fn requesters(mut self, who: &[&str]) -> Self {
        self.break_glass.requesters = Some(strings(who));
        self
    }

    /// The file's TOML text.
    pub fn render(&self) -> String {
        render(self)
    }

    /// `({name}.toml, text)`.
    pub fn entry(&self) -> (String, String) {
        (format!("{}.toml", self.break_glass.name), self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_file_renders_every_set_field_and_nothing_else() {
        let p = PolicyFile::new(
            Identity::prod("svc", "team", "a@example.com", "why", "CHG-1")
                .approved_by("b@example.com")
                .jwt("sa:svc")
                .matcher(Matcher::spiffe("spiffe://td/x")),
        )
        .task(
            Task::new("t", "https://aud", &["a:read"], "5m")
                .require_binding(Binding::Dpop)
                .delegation(Delegation::to(&["agent"]).max_depth(2)),
        );
        let v: toml::Value = toml::from_str(&p.render()).expect("valid TOML");
        let id = &v["identity"];
        assert_eq!(id["approved_by"].as_str(), Some("b@example.com"));
        assert!(id.get("third_party").is_none() && id.get("may_introspect").is_none());
        let m = id["match"].as_array().expect("matchers");
        assert_eq!(m[0]["issuer"].as_str(), Some(ISSUER));
        assert_eq!(m[1]["spiffe_id"].as_str(), Some("spiffe://td/x"));
        assert!(m[1].get("issuer").is_none());
        let t = &v["task"][0];
        assert_eq!(t["require_binding"].as_str(), Some("dpop"));
        assert!(t.get("rate_limit").is_none() && t.get("source_cidrs").is_none());
        assert_eq!(t["delegation"][0]["max_depth"].as_integer(), Some(2));
        assert!(t["delegation"][0].get("scopes").is_none());
    }

    #[test]
    fn a_certificate_binding_is_true_and_a_missing_max_duration_is_left_out() {
        let t = Task::new("t", "a", &[], "5m").require_binding(Binding::Certificate);
        let v: toml::Value = toml::from_str(&render(&t)).expect("valid TOML");
        assert_eq!(v["require_binding"].as_bool(), Some(true));
        let mut bg = BreakGlassFile::new("bg", &["svc"], "10m", 1, t);
        bg.break_glass.max_duration = None;
        let v: toml::Value = toml::from_str(&bg.render()).expect("valid TOML");
        assert!(v["break_glass"].get("max_duration").is_none());
        assert_eq!(v["break_glass"]["task"][0]["name"].as_str(), Some("t"));
    }
}
