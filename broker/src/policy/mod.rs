//! The NHI registry and task policies: reviewed TOML files under `policies/`, compiled into
//! an immutable [`PolicySet`], and the allow/deny decision for one token request.
//!
//! - [`load_dir`] reads every `*.toml` file of a directory (one identity per file), checks
//!   every rule of the format (see `policies/README.md`) and either returns a compiled
//!   [`PolicySet`] or *every* problem found, each naming its file ([`LintError`]). A set is
//!   never built from a directory with a problem, so a reload that fails keeps the old set.
//! - [`PolicySet::match_jwt`], [`PolicySet::match_spiffe_id`] and [`PolicySet::match_cert`]
//!   map authenticated workload evidence to the one [`Identity`] it proves. The loader
//!   rejects registries in which one caller could prove two identities.
//! - [`PolicySet::evaluate`] is the decision: pure (no IO, no clock; `now` is an input),
//!   deny by default, and never wider than the task. [`PolicySet::explain`] is the same
//!   decision with a trace of every rule checked, for `broker policy explain`.
//!
//! This module never authenticates anyone: it trusts that its inputs (issuer, subject,
//! claims, certificate names) were verified by `authn`.

mod evaluate;
mod load;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use ipnet::IpNet;

pub use self::evaluate::{Decision, Denial, Evaluation, Grant, Request, Rule, RuleCheck};
pub use self::load::{LintError, MAX_TTL_CEILING, from_sources, load_dir};

/// Every certificate matcher bound to a CA (`ca = "..."`) must name a configured
/// `[[client_ca]]`: each one that does not is a lint error naming its file.
pub fn check_client_ca_names(set: &PolicySet, client_cas: &[String]) -> Vec<LintError> {
    let mut errors = Vec::new();
    for i in set.identities() {
        for ca in i.matchers.iter().filter_map(Matcher::ca) {
            if !client_cas.iter().any(|c| c == ca) {
                errors.push(LintError {
                    file: i.file.clone(),
                    message: format!(
                        "identity {}: [[identity.match]] ca = {ca:?} names no [[client_ca]] of the config ({})",
                        i.id,
                        if client_cas.is_empty() {
                            "none configured".to_owned()
                        } else {
                            client_cas.join(", ")
                        }
                    ),
                });
            }
        }
    }
    errors
}

/// Third-party identities may be registered for at most `max` from `now`: each one whose
/// `expires` lies further out is a lint error naming its file.
pub fn check_third_party_registration(
    set: &PolicySet,
    max: Duration,
    now: SystemTime,
) -> Vec<LintError> {
    let limit = now + max;
    set.identities()
        .filter(|i| i.third_party && i.expires_at() > limit)
        .map(|i| LintError {
            file: i.file.clone(),
            message: format!(
                "identity {} is third-party: its registration may run at most {} days, but expires is {}; recertify sooner",
                i.id,
                max.as_secs() / 86_400,
                i.expires
            ),
        })
        .collect()
}

/// A compiled, immutable registry: every identity with its tasks, and lookup tables from
/// workload evidence to identity. Cheap to share (`Arc<PolicySet>`); a reload builds a new
/// set and swaps it in.
#[derive(Debug)]
pub struct PolicySet {
    identities: Vec<Identity>,
    by_id: HashMap<String, usize>,
    by_spiffe: HashMap<String, usize>,
    /// issuer → subject → (required extra claims, identity).
    by_jwt: HashMap<String, HashMap<String, Vec<JwtRule>>>,
    /// Subject CN → identity, and the CA its matcher requires.
    by_cert_subject: HashMap<String, (usize, Option<String>)>,
    /// Lower-case DNS name without a trailing dot → identity, and the CA its matcher
    /// requires.
    by_dns: HashMap<String, (usize, Option<String>)>,
    /// The audience catalogue the set was checked against: URI → environment.
    audience_env: HashMap<String, String>,
}

/// The extra claims a JWT matcher requires, and the identity it proves (an index).
type JwtRule = (BTreeMap<String, String>, usize);

/// One registered non-human identity (`[identity]` and its `[[task]]`s).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The NHI id; `sub` and `client_id` of its tokens.
    pub id: String,
    /// The accountable business owner.
    pub owner: String,
    /// The technical owner.
    pub steward: String,
    /// Why the identity exists.
    pub purpose: String,
    /// The trust zone; all of its tasks' audiences live in it.
    pub environment: String,
    /// The approval trail.
    pub ticket: String,
    /// Who approved the registration, when recorded.
    pub approved_by: Option<String>,
    /// Recertify before this date: the registration is valid until 00:00:00 UTC of this
    /// date and is expired *on* it.
    pub expires: NaiveDate,
    /// Whether the workload is run by a third party.
    pub third_party: bool,
    /// A resource server: may call `/oauth2/introspect` and read `/v1/revocations`.
    pub may_introspect: bool,
    /// What anomalies do for this identity (`None`: the config's default).
    pub anomaly_action: Option<crate::anomaly::AnomalyAction>,
    /// What proves this identity; any one matcher suffices.
    pub matchers: Vec<Matcher>,
    /// Its tasks, in file order.
    pub tasks: Vec<Task>,
    /// The file the identity was loaded from.
    pub file: PathBuf,
    expires_at: SystemTime,
}

/// One `[[identity.match]]`: a piece of verified workload evidence that proves an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Matcher {
    /// The SPIFFE ID of an X.509-SVID (URI SAN) or a JWT-SVID (`sub`).
    SpiffeId(String),
    /// A workload JWT from `issuer` with `sub` = `subject` and, for each entry of `claims`,
    /// a string claim of exactly that value.
    Jwt {
        /// Expected `iss`.
        issuer: String,
        /// Expected `sub`.
        subject: String,
        /// Extra claims that must be present with exactly these string values.
        claims: BTreeMap<String, String>,
    },
    /// The common name (CN) of a client certificate's subject, exactly.
    CertSubject {
        /// The CN.
        cn: String,
        /// The `[[client_ca]]` the certificate must chain to (`None`: any configured CA).
        ca: Option<String>,
    },
    /// A DNS name among a client certificate's SANs (ASCII case-insensitive; stored
    /// lower-case without a trailing dot).
    DnsName {
        /// The DNS name.
        name: String,
        /// The `[[client_ca]]` the certificate must chain to (`None`: any configured CA).
        ca: Option<String>,
    },
}

impl Matcher {
    /// The `[[client_ca]]` a certificate matcher is bound to.
    pub fn ca(&self) -> Option<&str> {
        match self {
            Self::CertSubject { ca, .. } | Self::DnsName { ca, .. } => ca.as_deref(),
            _ => None,
        }
    }
}

/// One `[[task]]`: what an identity may ask a token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task name (the `task` request parameter and token claim).
    pub name: String,
    /// The one audience its tokens are for.
    pub audience: String,
    /// The widest scope set; requests may narrow it.
    pub scopes: Vec<String>,
    /// The longest token lifetime (whole seconds, at least 1s, at most [`MAX_TTL_CEILING`]).
    pub max_ttl: Duration,
    /// Source networks allowed to ask; empty means any source. IPv4-mapped IPv6 networks
    /// are stored as IPv4.
    pub source_cidrs: Vec<IpNet>,
    /// Whether tokens must be certificate-bound (requested over mTLS).
    pub require_binding: bool,
    /// Whether tokens must be DPoP-bound (`require_binding = "dpop"`).
    pub require_dpop: bool,
    /// Issuance rate limit of this task (per identity), if any.
    pub rate_limit: Option<crate::ratelimit::Rate>,
    /// Who may act for the identity on this task (RFC 8693 delegation), and how far.
    pub delegation: Vec<Delegation>,
}

/// The longest delegation chain any rule may allow.
pub const MAX_DELEGATION_DEPTH: usize = 4;

/// One `[[task.delegation]]` rule: these actors may get tokens for this task on the
/// identity's behalf, with at most these scopes and this lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The identity ids that may act.
    pub actors: Vec<String>,
    /// The scopes a delegated token may carry (a subset of the task's; default: all).
    pub scopes: Vec<String>,
    /// The longest lifetime of a delegated token (at most the task's `max_ttl`).
    pub max_ttl: Duration,
    /// The most actors in the chain (1: the actor acts directly for the identity).
    pub max_depth: usize,
}

impl Task {
    /// The delegation rule that lets `actor` act on this task, if any.
    pub fn delegation_for(&self, actor: &str) -> Option<&Delegation> {
        self.delegation
            .iter()
            .find(|d| d.actors.iter().any(|a| a == actor))
    }
}

impl Identity {
    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The instant the registration expires: 00:00:00 UTC on [`Identity::expires`].
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl PolicySet {
    /// The number of identities.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether the set has no identity (never true for a set returned by [`load_dir`]).
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The identity with this id.
    pub fn identity(&self, id: &str) -> Option<&Identity> {
        self.by_id.get(id).map(|&i| &self.identities[i])
    }

    /// Every identity, in file-name order.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.iter()
    }

    /// Which identity a validated workload JWT proves; `claims` is the JWT's full claim
    /// object. An `issuer`+`subject` matcher matches when every one of its `claims` is a
    /// string claim of exactly that value. When `subject` is a SPIFFE ID (a JWT-SVID),
    /// `spiffe_id` matchers match it too; `authn` must therefore trust only SPIFFE issuers
    /// to assert `spiffe://` subjects.
    pub fn match_jwt(
        &self,
        issuer: &str,
        subject: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<&Identity> {
        if let Some(rules) = self.by_jwt.get(issuer).and_then(|m| m.get(subject)) {
            for (want, idx) in rules {
                if want
                    .iter()
                    .all(|(k, v)| claims.get(k).and_then(|c| c.as_str()) == Some(v.as_str()))
                {
                    return Some(&self.identities[*idx]);
                }
            }
        }
        if subject.starts_with("spiffe://") {
            return self.match_spiffe_id(subject);
        }
        None
    }

    /// Which identity a verified SPIFFE ID proves (exact match).
    pub fn match_spiffe_id(&self, id: &str) -> Option<&Identity> {
        self.by_spiffe.get(id).map(|&i| &self.identities[i])
    }

    /// Which identity a verified client certificate proves, from its subject CN
    /// (`cert_subject` matchers) and its DNS SANs (`dns_name` matchers); `ca` is the
    /// configured CA that verified its chain, which a matcher bound to a CA must equal.
    /// When the certificate's names point at two different identities the answer is
    /// `None` (ambiguous evidence proves nothing) and a warning is logged.
    pub fn match_cert(
        &self,
        subject_cn: Option<&str>,
        dns_names: &[String],
        ca: Option<&str>,
    ) -> Option<&Identity> {
        let mut found: Option<usize> = None;
        let mut ambiguous = false;
        let mut consider = |&(idx, ref required): &(usize, Option<String>)| {
            if required.as_deref().is_some_and(|r| Some(r) != ca) {
                return;
            }
            match found {
                None => found = Some(idx),
                Some(f) if f == idx => {}
                Some(_) => ambiguous = true,
            }
        };
        if let Some(m) = subject_cn.and_then(|cn| self.by_cert_subject.get(cn)) {
            consider(m);
        }
        for name in dns_names {
            let name = name.strip_suffix('.').unwrap_or(name);
            let idx = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_dns.get(&name.to_ascii_lowercase())
            } else {
                self.by_dns.get(name)
            };
            if let Some(m) = idx {
                consider(m);
            }
        }
        if ambiguous {
            tracing::warn!(
                subject_cn = subject_cn.unwrap_or(""),
                dns_names = ?dns_names,
                "client certificate names match more than one identity; proving none"
            );
            return None;
        }
        found.map(|i| &self.identities[i])
    }
}

#[cfg(test)]
mod tests;
