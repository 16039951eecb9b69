//! The decision for one token request: pure, deny by default, never wider than the task.
//!
//! Rules are checked in a fixed order (the order of [`Rule`]'s variants); the first one
//! that fails decides the denial. [`PolicySet::evaluate`] stops there and builds no
//! trace, so the hot path allocates only the grant. [`PolicySet::explain`] runs the same
//! code with a tracer that records every rule checked, and keeps checking after a failure
//! where it still can, so that an operator sees everything that is wrong at once.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::{Identity, PolicySet, Task};

/// One token request, after authentication: which identity asks, for which task, and how
/// it narrows the task.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The identity the caller proved (from a `match_*` lookup).
    pub identity: &'a str,
    /// The `task` parameter.
    pub task: &'a str,
    /// The `audience` (or `resource`) parameter; `None` means the task's audience.
    pub audience: Option<&'a str>,
    /// The `scope` parameter split on spaces; `None` means the task's scopes. An empty
    /// list is denied (it is neither "the task's scopes" nor a useful token).
    pub scopes: Option<Vec<&'a str>>,
    /// The `requested_ttl` parameter; `None` means the task's `max_ttl`.
    pub requested_ttl: Option<Duration>,
    /// The caller's address (IPv4-mapped IPv6 is treated as IPv4).
    pub source: IpAddr,
    /// The current time (from [`crate::clock::Clock`]).
    pub now: SystemTime,
    /// Whether the token will be bound to a client certificate (mTLS request).
    pub cert_bound: bool,
}

/// The outcome of [`PolicySet::evaluate`] or [`PolicySet::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Allow with the grant, or deny with the deciding rule.
    pub decision: Decision,
    /// Every rule checked, in order, with its outcome. Empty from
    /// [`PolicySet::evaluate`]; filled by [`PolicySet::explain`].
    pub trace: Vec<RuleCheck>,
}

/// One rule checked while evaluating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck {
    /// The rule.
    pub rule: Rule,
    /// Whether the request satisfied it.
    pub passed: bool,
    /// What was checked and found (or, when failed, the denial reason).
    pub detail: String,
}

/// Allow or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Issue a token with exactly this content.
    Allow(Grant),
    /// Refuse, because of this rule.
    Deny(Denial),
}

/// What a token may carry: already narrowed to the request and capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The identity (`sub`, `client_id`).
    pub identity: String,
    /// The identity's environment (`env`).
    pub environment: String,
    /// The task (`task`).
    pub task: String,
    /// The one audience (`aud`).
    pub audience: String,
    /// The scopes, deduplicated, in the task's order (`scope`).
    pub scopes: Vec<String>,
    /// The lifetime: whole seconds, at least 1s, at most the task's `max_ttl`, and never
    /// past the registration's expiry.
    pub ttl: Duration,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The rule that decided.
    pub rule: Rule,
    /// An operator-actionable sentence. Safe as an OAuth `error_description`: printable
    /// ASCII without `"` or `\` (RFC 6749 §5.2; other characters become `?`), request
    /// values shortened, and never a credential.
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.reason)
    }
}

/// A policy rule, in the order they are checked. The OAuth mapping (for the token
/// endpoint's error body) is:
///
/// | rule | HTTP | `error` |
/// | --- | --- | --- |
/// | [`UnknownIdentity`](Rule::UnknownIdentity) | 403 | `unauthorized_client` |
/// | [`RegistrationExpired`](Rule::RegistrationExpired) | 403 | `access_denied` |
/// | [`UnknownTask`](Rule::UnknownTask) | 400 | `invalid_request` |
/// | [`AudienceNotAllowed`](Rule::AudienceNotAllowed) | 400 | `invalid_target` |
/// | [`AudienceEnvironment`](Rule::AudienceEnvironment) | 400 | `invalid_target` |
/// | [`ScopeNotAllowed`](Rule::ScopeNotAllowed) | 400 | `invalid_scope` |
/// | [`TtlInvalid`](Rule::TtlInvalid) | 400 | `invalid_request` |
/// | [`TtlTooLong`](Rule::TtlTooLong) | 400 | `invalid_request` |
/// | [`SourceNotAllowed`](Rule::SourceNotAllowed) | 403 | `access_denied` |
/// | [`BindingRequired`](Rule::BindingRequired) | 403 | `access_denied` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The identity is not in the registry (403 `unauthorized_client`).
    UnknownIdentity,
    /// The registration's `expires` date has been reached (403 `access_denied`).
    RegistrationExpired,
    /// The identity has no task of that name (400 `invalid_request`).
    UnknownTask,
    /// The requested audience is not the task's (400 `invalid_target`).
    AudienceNotAllowed,
    /// The audience lives in another environment than the identity (400 `invalid_target`).
    AudienceEnvironment,
    /// A requested scope is not granted by the task, or the scope list is empty
    /// (400 `invalid_scope`).
    ScopeNotAllowed,
    /// The requested lifetime is below one second (400 `invalid_request`).
    TtlInvalid,
    /// The requested lifetime exceeds the task's `max_ttl` (400 `invalid_request`).
    TtlTooLong,
    /// The caller's address is outside the task's `source_cidrs` (403 `access_denied`).
    SourceNotAllowed,
    /// The task needs a certificate-bound token and the request is not over mTLS
    /// (403 `access_denied`).
    BindingRequired,
}

impl Rule {
    /// The stable snake_case name (audit `rule`, metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::UnknownIdentity => "unknown_identity",
            Rule::RegistrationExpired => "registration_expired",
            Rule::UnknownTask => "unknown_task",
            Rule::AudienceNotAllowed => "audience_not_allowed",
            Rule::AudienceEnvironment => "audience_environment",
            Rule::ScopeNotAllowed => "scope_not_allowed",
            Rule::TtlInvalid => "ttl_invalid",
            Rule::TtlTooLong => "ttl_too_long",
            Rule::SourceNotAllowed => "source_not_allowed",
            Rule::BindingRequired => "binding_required",
        }
    }

    /// The OAuth 2.0 `error` code (RFC 6749 §5.2, RFC 8693 §2.2.2).
    pub fn oauth_error(&self) -> &'static str {
        match self {
            Rule::UnknownIdentity => "unauthorized_client",
            Rule::RegistrationExpired | Rule::SourceNotAllowed | Rule::BindingRequired => {
                "access_denied"
            }
            Rule::UnknownTask | Rule::TtlInvalid | Rule::TtlTooLong => "invalid_request",
            Rule::AudienceNotAllowed | Rule::AudienceEnvironment => "invalid_target",
            Rule::ScopeNotAllowed => "invalid_scope",
        }
    }

    /// The HTTP status of the token endpoint's error response.
    pub fn http_status(&self) -> u16 {
        match self {
            Rule::UnknownIdentity
            | Rule::RegistrationExpired
            | Rule::SourceNotAllowed
            | Rule::BindingRequired => 403,
            Rule::UnknownTask
            | Rule::AudienceNotAllowed
            | Rule::AudienceEnvironment
            | Rule::ScopeNotAllowed
            | Rule::TtlInvalid
            | Rule::TtlTooLong => 400,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PolicySet {
    /// The decision for `req`: pure (no IO; time is `req.now`), deny by default. The
    /// returned [`Evaluation::trace`] is empty; use [`PolicySet::explain`] for the trace.
    pub fn evaluate(&self, req: &Request<'_>) -> Evaluation {
        Evaluation {
            decision: self.decide(req, &mut NoTrace),
            trace: Vec::new(),
        }
    }

    /// The same decision as [`PolicySet::evaluate`], with the trace of every rule checked
    /// (for `broker policy explain`). After the first failure it keeps checking the rules
    /// it still can; the decision is always the first failure.
    pub fn explain(&self, req: &Request<'_>) -> Evaluation {
        let mut trace = Vec::with_capacity(12);
        let decision = self.decide(req, &mut trace);
        Evaluation { decision, trace }
    }

    fn decide<T: Tracer>(&self, req: &Request<'_>, tracer: &mut T) -> Decision {
        let mut run = Run {
            tracer,
            denial: None,
        };

        // Who.
        let Some(ident) = self.identity(req.identity) else {
            run.fail(
                Rule::UnknownIdentity,
                format!(
                    "identity {} is not in the registry: register it under policies/ (or it was removed)",
                    shown(req.identity)
                ),
            );
            return run.deny();
        };
        run.pass(Rule::UnknownIdentity, || {
            format!(
                "identity {} is registered in {}",
                ident.id,
                ident.file.display()
            )
        });

        // Registration still valid, with at least one second left.
        let remaining = ident
            .expires_at
            .duration_since(req.now)
            .ok()
            .filter(|d| d.as_secs() >= 1);
        match remaining {
            Some(left) => run.pass(Rule::RegistrationExpired, || {
                format!(
                    "registration valid until {} 00:00 UTC ({} left)",
                    ident.expires,
                    human(Duration::from_secs(left.as_secs()))
                )
            }),
            None => {
                if !run.fail(
                    Rule::RegistrationExpired,
                    format!(
                        "registration {} expired on {}: recertify it (owner {})",
                        ident.id, ident.expires, ident.owner
                    ),
                ) {
                    return run.deny();
                }
            }
        }

        // Which task.
        let Some(task) = ident.task(req.task) else {
            let known: Vec<&str> = ident.tasks.iter().map(|t| t.name.as_str()).collect();
            run.fail(
                Rule::UnknownTask,
                if known.is_empty() {
                    format!(
                        "identity {} has no tasks, so no task {}",
                        ident.id,
                        shown(req.task)
                    )
                } else {
                    format!(
                        "identity {} has no task {}: its tasks are {}",
                        ident.id,
                        shown(req.task),
                        known.join(" ")
                    )
                },
            );
            return run.deny();
        };
        run.pass(Rule::UnknownTask, || format!("task {} found", task.name));

        if !self.check_audience(ident, task, req, &mut run) {
            return run.deny();
        }
        let Some(scopes) = check_scopes(task, req, &mut run) else {
            return run.deny();
        };
        let Some(ttl) = check_ttl(task, req, remaining, &mut run) else {
            return run.deny();
        };

        // Where from.
        if task.source_cidrs.is_empty() {
            run.pass(Rule::SourceNotAllowed, || {
                "task sets no source_cidrs: any source".to_owned()
            });
        } else {
            let ip = req.source.to_canonical();
            if task.source_cidrs.iter().any(|n| n.contains(&ip)) {
                run.pass(Rule::SourceNotAllowed, || {
                    format!("source {ip} is in {}", cidrs(task))
                });
            } else if !run.fail(
                Rule::SourceNotAllowed,
                format!(
                    "source address {ip} is not in task {}'s source_cidrs ({}): call from an allowed network \
                     or ask the owner to widen the task",
                    task.name,
                    cidrs(task)
                ),
            ) {
                return run.deny();
            }
        }

        // Binding.
        if task.require_binding && !req.cert_bound {
            run.fail(
                Rule::BindingRequired,
                format!(
                    "task {} requires a certificate-bound token: request it over mTLS with the workload's \
                     client certificate",
                    task.name
                ),
            );
        } else {
            run.pass(Rule::BindingRequired, || {
                if task.require_binding {
                    "certificate-bound as required".to_owned()
                } else {
                    "task does not require binding".to_owned()
                }
            });
        }

        match run.denial {
            Some(d) => Decision::Deny(d),
            None => Decision::Allow(Grant {
                identity: ident.id.clone(),
                environment: ident.environment.clone(),
                task: task.name.clone(),
                audience: task.audience.clone(),
                scopes,
                ttl,
            }),
        }
    }

    /// The audience: the task's, requested or defaulted, and in the identity's environment.
    fn check_audience<T: Tracer>(
        &self,
        ident: &Identity,
        task: &Task,
        req: &Request<'_>,
        run: &mut Run<'_, T>,
    ) -> bool {
        match req.audience {
            Some(a) if a != task.audience => {
                let reason = match self.audience_env.get(a) {
                    Some(env) if *env != ident.environment => (
                        Rule::AudienceEnvironment,
                        format!(
                            "audience {} is in environment {env}, but identity {} is in {}: a token never spans \
                             two environments (task {} grants {})",
                            shown(a),
                            ident.id,
                            ident.environment,
                            task.name,
                            task.audience
                        ),
                    ),
                    _ => (
                        Rule::AudienceNotAllowed,
                        format!(
                            "audience {} is not allowed for task {}: it grants only {}",
                            shown(a),
                            task.name,
                            task.audience
                        ),
                    ),
                };
                return run.fail(reason.0, reason.1);
            }
            Some(_) => run.pass(Rule::AudienceNotAllowed, || {
                format!("audience {} is the task's", task.audience)
            }),
            None => run.pass(Rule::AudienceNotAllowed, || {
                format!("audience defaults to the task's, {}", task.audience)
            }),
        }
        // Checked at load; checked again so that a catalogue change can never mint across
        // environments.
        match self.audience_env.get(&task.audience) {
            Some(env) if *env == ident.environment => {
                run.pass(Rule::AudienceEnvironment, || {
                    format!("audience {} is in {env}, like the identity", task.audience)
                });
                true
            }
            other => run.fail(
                Rule::AudienceEnvironment,
                format!(
                    "audience {} of task {} is in environment {}, not {}: fix the audience catalogue or the task",
                    task.audience,
                    task.name,
                    other.map_or("(not catalogued)", String::as_str),
                    ident.environment
                ),
            ),
        }
    }
}

/// The scopes: the task's, or the requested subset of them (never wider).
fn check_scopes<T: Tracer>(
    task: &Task,
    req: &Request<'_>,
    run: &mut Run<'_, T>,
) -> Option<Vec<String>> {
    let Some(asked) = &req.scopes else {
        run.pass(Rule::ScopeNotAllowed, || {
            format!("scopes default to the task's: {}", task.scopes.join(" "))
        });
        return Some(task.scopes.clone());
    };
    if asked.is_empty() {
        let go_on = run.fail(
            Rule::ScopeNotAllowed,
            format!(
                "an empty scope was requested: omit scope for task {}'s scopes ({}) or name some of them",
                task.name,
                task.scopes.join(" ")
            ),
        );
        return go_on.then(Vec::new);
    }
    if asked.iter().all(|a| task.scopes.iter().any(|s| s == a)) {
        let granted: Vec<String> = task
            .scopes
            .iter()
            .filter(|s| asked.contains(&s.as_str()))
            .cloned()
            .collect();
        run.pass(Rule::ScopeNotAllowed, || {
            format!(
                "requested scopes {} are within the task's",
                granted.join(" ")
            )
        });
        return Some(granted);
    }
    let mut extra: Vec<String> = Vec::new();
    for a in asked {
        if !task.scopes.iter().any(|s| s == a) {
            let a = shown(a);
            if !extra.contains(&a) {
                extra.push(a);
            }
        }
    }
    let (noun, verb) = if extra.len() == 1 {
        ("scope", "is")
    } else {
        ("scopes", "are")
    };
    // The reason goes into the `denied` record: a caller must not grow it at will.
    const SHOWN_EXTRA: usize = 8;
    if extra.len() > SHOWN_EXTRA {
        let more = extra.len() - SHOWN_EXTRA;
        extra.truncate(SHOWN_EXTRA);
        extra.push(format!("(and {more} more)"));
    }
    let go_on = run.fail(
        Rule::ScopeNotAllowed,
        format!(
            "{noun} {} {verb} not granted by task {} (allowed: {})",
            extra.join(" "),
            task.name,
            task.scopes.join(" ")
        ),
    );
    go_on.then(Vec::new)
}

/// The lifetime: requested (1s ..= max_ttl) or max_ttl, in whole seconds, capped by the
/// registration's expiry.
fn check_ttl<T: Tracer>(
    task: &Task,
    req: &Request<'_>,
    remaining: Option<Duration>,
    run: &mut Run<'_, T>,
) -> Option<Duration> {
    let max = task.max_ttl;
    let mut ttl = match req.requested_ttl {
        None => {
            run.pass(Rule::TtlTooLong, || {
                format!("lifetime defaults to max_ttl {}", human(max))
            });
            max
        }
        Some(r) if r < Duration::from_secs(1) => {
            if !run.fail(
                Rule::TtlInvalid,
                "requested_ttl must be at least 1 second".to_owned(),
            ) {
                return None;
            }
            max
        }
        Some(r) if r > max => {
            if !run.fail(
                Rule::TtlTooLong,
                format!(
                    "requested_ttl {}s exceeds task {}'s max_ttl of {} ({}s): ask for at most {}s",
                    r.as_secs(),
                    task.name,
                    human(max),
                    max.as_secs(),
                    max.as_secs()
                ),
            ) {
                return None;
            }
            max
        }
        Some(r) => {
            run.pass(Rule::TtlTooLong, || {
                format!(
                    "requested {}s is within max_ttl {}",
                    r.as_secs(),
                    human(max)
                )
            });
            Duration::from_secs(r.as_secs())
        }
    };
    if let Some(left) = remaining {
        let left = Duration::from_secs(left.as_secs());
        if ttl > left {
            ttl = left;
            run.pass(Rule::TtlTooLong, || {
                format!(
                    "lifetime capped to {}s so the token does not outlive the registration",
                    ttl.as_secs()
                )
            });
        }
    }
    Some(ttl)
}

/// Where the trace goes: nowhere ([`NoTrace`]) or a `Vec<RuleCheck>`.
trait Tracer {
    /// Whether checks are recorded (and evaluation continues after a failure).
    const FULL: bool;
    fn record(&mut self, rule: Rule, passed: bool, detail: String);
}

struct NoTrace;

impl Tracer for NoTrace {
    const FULL: bool = false;
    fn record(&mut self, _: Rule, _: bool, _: String) {}
}

impl Tracer for Vec<RuleCheck> {
    const FULL: bool = true;
    fn record(&mut self, rule: Rule, passed: bool, detail: String) {
        self.push(RuleCheck {
            rule,
            passed,
            detail,
        });
    }
}

/// One evaluation in progress: the tracer and the first failure.
struct Run<'t, T: Tracer> {
    tracer: &'t mut T,
    denial: Option<Denial>,
}

impl<T: Tracer> Run<'_, T> {
    /// Records a passed rule; `detail` is only built when tracing.
    fn pass(&mut self, rule: Rule, detail: impl FnOnce() -> String) {
        if T::FULL {
            self.tracer.record(rule, true, detail());
        }
    }

    /// Records a failed rule (the first failure decides); returns whether to go on
    /// checking (only when tracing).
    fn fail(&mut self, rule: Rule, reason: String) -> bool {
        let reason = sanitize(reason);
        if T::FULL {
            self.tracer.record(rule, false, reason.clone());
        }
        if self.denial.is_none() {
            self.denial = Some(Denial { rule, reason });
        }
        T::FULL
    }

    fn deny(self) -> Decision {
        match self.denial {
            Some(d) => Decision::Deny(d),
            // Unreachable by construction; deny by default all the same.
            None => Decision::Deny(Denial {
                rule: Rule::UnknownIdentity,
                reason: "denied by default".into(),
            }),
        }
    }
}

/// A request-supplied value, shortened for messages.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}...", &s[..i]),
    }
}

/// Keeps only the RFC 6749 `error_description` characters (%x20-21 / %x23-5B / %x5D-7E).
fn sanitize(s: String) -> String {
    let ok = |c: char| c == ' ' || c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
    if s.chars().all(ok) {
        s
    } else {
        s.chars().map(|c| if ok(c) { c } else { '?' }).collect()
    }
}

fn cidrs(task: &Task) -> String {
    task.source_cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `10m`, `1h30m`, `45s`, `3d2h`.
fn human(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}
