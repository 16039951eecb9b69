//! Loading and linting: registry files → [`PolicySet`], or every problem found.
//!
//! Each file is parsed (unknown keys are errors), then checked field by field, then the
//! identities are checked against each other (duplicate ids, two identities provable by
//! the same caller). Problems are collected across all files before anything is returned,
//! so an operator fixes a broken directory in one pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use ipnet::{IpNet, Ipv4Net};

use super::model::{IdentityFile, MatchFile, PolicyFile, TaskFile};
use super::{Identity, Matcher, PolicySet, Task};
use crate::config::{AudienceEntry, parse_duration};

/// The longest `max_ttl` a task may declare: just-in-time tokens are for one task, not for
/// a shift.
pub const MAX_TTL_CEILING: Duration = Duration::from_secs(24 * 3600);

/// One problem in the registry, naming its file (or the directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintError {
    /// The file (or, for directory-level problems, the directory).
    pub file: PathBuf,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for LintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for LintError {}

/// Loads every `*.toml` file directly inside `dir` (one identity per file; other files,
/// sub-directories and names starting with `.` are ignored), checks them against the
/// audience catalogue and, when `trust_domains` is not empty, the SPIFFE trust domains,
/// and compiles them. Returns every problem found, in file-name order.
pub fn load_dir(
    dir: &Path,
    audiences: &[AudienceEntry],
    trust_domains: &[String],
) -> Result<PolicySet, Vec<LintError>> {
    let dir_error = |message: String| {
        vec![LintError {
            file: dir.to_path_buf(),
            message,
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot read the policy directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| dir_error(format!("cannot list the policy directory: {e}")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (Kubernetes ConfigMap mounts are symlinks into `..data/`).
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(dir_error(
            "no identities: the policy directory holds no *.toml registry files".into(),
        ));
    }

    let mut errors = Vec::new();
    let mut texts = Vec::with_capacity(paths.len());
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => texts.push((path, text)),
            Err(e) => errors.push(LintError {
                file: path,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    match from_sources(
        texts.iter().map(|(p, t)| (p.as_path(), t.as_str())),
        audiences,
        trust_domains,
    ) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            errors.sort_by(|a, b| a.file.cmp(&b.file));
            Err(errors)
        }
    }
}

/// Like [`load_dir`], from `(file name, text)` pairs already in memory (tests, tools).
/// The names are used in messages and as [`Identity::file`].
pub fn from_sources<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
    audiences: &[AudienceEntry],
    trust_domains: &[String],
) -> Result<PolicySet, Vec<LintError>> {
    let catalogue: HashMap<String, String> = audiences
        .iter()
        .map(|a| (a.uri.clone(), a.environment.clone()))
        .collect();
    let trust_domains: Vec<&str> = trust_domains
        .iter()
        .map(|t| {
            let t = t.strip_prefix("spiffe://").unwrap_or(t);
            t.strip_suffix('/').unwrap_or(t)
        })
        .collect();
    let ctx = Ctx {
        catalogue: &catalogue,
        trust_domains: &trust_domains,
    };

    let mut errors = Vec::new();
    let mut identities = Vec::new();
    let mut any = false;
    for (path, text) in sources {
        any = true;
        let mut problems = Vec::new();
        match toml::from_str::<PolicyFile>(text) {
            Ok(file) => identities.push(ctx.compile(file, path, &mut problems)),
            Err(e) => problems.push(toml_message(&e, text)),
        }
        errors.extend(problems.into_iter().map(|message| LintError {
            file: path.to_path_buf(),
            message,
        }));
    }
    if !any {
        return Err(vec![LintError {
            file: PathBuf::new(),
            message: "no identities: no registry files were given".into(),
        }]);
    }

    let set = index(identities, catalogue, &mut errors);
    if errors.is_empty() {
        Ok(set)
    } else {
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        Err(errors)
    }
}

/// A serde/TOML error as one line: `line N (`the line`): message`.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(start) = e.span().map(|s| s.start) else {
        return msg;
    };
    let Some(before) = text.get(..start) else {
        return msg;
    };
    let line_no = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let line: String = if line.chars().count() > 80 {
        format!("{}...", line.chars().take(80).collect::<String>())
    } else {
        line.to_owned()
    };
    if line.is_empty() {
        format!("line {line_no}: {msg}")
    } else {
        format!("line {line_no} (`{line}`): {msg}")
    }
}

/// What every file is checked against.
struct Ctx<'a> {
    catalogue: &'a HashMap<String, String>,
    trust_domains: &'a [&'a str],
}

impl Ctx<'_> {
    /// Checks one parsed file, pushing every problem to `problems`; returns the identity
    /// as far as it could be compiled (for the cross-file checks).
    fn compile(&self, file: PolicyFile, path: &Path, problems: &mut Vec<String>) -> Identity {
        let PolicyFile { identity, task } = file;
        let IdentityFile {
            id,
            owner,
            steward,
            purpose,
            environment,
            ticket,
            approved_by,
            expires,
            third_party,
            may_introspect,
            anomaly_action,
            matchers,
        } = identity;
        let anomaly_action = match anomaly_action.as_deref() {
            None => None,
            Some(a) => match crate::anomaly::AnomalyAction::parse(a) {
                Some(x) => Some(x),
                None => {
                    problems.push(format!(
                        "identity.anomaly_action {a:?} must be \"alert\" or \"deny\""
                    ));
                    None
                }
            },
        };

        check_name("identity.id", &id, problems);
        check_name("identity.environment", &environment, problems);
        for (key, value) in [
            ("owner", &owner),
            ("steward", &steward),
            ("purpose", &purpose),
            ("ticket", &ticket),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("identity.{key} must not be empty"));
            }
        }
        if approved_by.as_deref().is_some_and(|a| a.trim().is_empty()) {
            problems.push("identity.approved_by must not be empty when given (or omit it)".into());
        }

        let expires = match NaiveDate::parse_from_str(&expires.0, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => {
                problems.push(format!(
                    "identity.expires: invalid date {:?}: write the recertification date as YYYY-MM-DD",
                    expires.0
                ));
                NaiveDate::MIN
            }
        };

        if matchers.is_empty() {
            problems.push(
                "identity has no [[identity.match]]: nothing could prove it; add a spiffe_id, \
                 issuer+subject, cert_subject or dns_name matcher"
                    .into(),
            );
        }
        let matchers = matchers
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| self.matcher(i + 1, m, problems))
            .collect();

        let mut tasks: Vec<Task> = Vec::with_capacity(task.len());
        for (i, t) in task.into_iter().enumerate() {
            if let Some(t) = self.task(i + 1, t, &environment, &id, problems) {
                if tasks.iter().any(|x| x.name == t.name) {
                    problems.push(format!(
                        "task {} is declared twice: task names must be unique within an identity",
                        t.name
                    ));
                } else {
                    tasks.push(t);
                }
            }
        }

        Identity {
            id,
            owner,
            steward,
            purpose,
            environment,
            ticket,
            approved_by,
            expires,
            third_party,
            may_introspect,
            anomaly_action,
            matchers,
            tasks,
            file: path.to_path_buf(),
            expires_at: date_start_utc(expires),
        }
    }

    fn matcher(&self, n: usize, m: MatchFile, problems: &mut Vec<String>) -> Option<Matcher> {
        let at = format!("[[identity.match]] #{n}");
        let MatchFile {
            spiffe_id,
            issuer,
            subject,
            claims,
            cert_subject,
            dns_name,
            ca,
        } = m;
        let cert_matcher = cert_subject.is_some() || dns_name.is_some();
        if let Some(c) = &ca {
            if !cert_matcher {
                problems.push(format!(
                    "{at}: ca applies only to cert_subject and dns_name matchers (a SPIFFE ID is tied to its CA by the trust domain)"
                ));
                return None;
            }
            if c.trim().is_empty() {
                problems.push(format!("{at}: ca must not be empty"));
                return None;
            }
        }
        let jwt = issuer.is_some() || subject.is_some() || claims.is_some();
        let kinds: Vec<&str> = [
            (spiffe_id.is_some(), "spiffe_id"),
            (jwt, "issuer+subject"),
            (cert_subject.is_some(), "cert_subject"),
            (dns_name.is_some(), "dns_name"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        match kinds.len() {
            0 => {
                problems.push(format!(
                    "{at} sets none of spiffe_id, issuer+subject, cert_subject, dns_name: set exactly one"
                ));
                return None;
            }
            1 => {}
            _ => {
                problems.push(format!(
                    "{at} mixes {}: set exactly one kind per matcher (add another [[identity.match]] for another kind)",
                    kinds.join(" and ")
                ));
                return None;
            }
        }

        if let Some(id) = spiffe_id {
            match spiffe_trust_domain(&id) {
                Err(why) => {
                    problems.push(format!("{at}: spiffe_id {id:?} {why}"));
                    None
                }
                Ok(td) if !self.trust_domains.is_empty() && !self.trust_domains.contains(&td) => {
                    problems.push(format!(
                        "{at}: spiffe_id {id:?} is outside the configured trust domains ({}): \
                         the broker would never accept an SVID for it",
                        self.trust_domains.join(", ")
                    ));
                    None
                }
                Ok(_) => Some(Matcher::SpiffeId(id)),
            }
        } else if jwt {
            let claims = claims.unwrap_or_default();
            let mut ok = true;
            match (&issuer, &subject) {
                (Some(_), Some(_)) => {}
                (None, _) => {
                    problems.push(format!("{at}: a JWT matcher needs issuer (and subject)"));
                    ok = false;
                }
                (_, None) => {
                    problems.push(format!("{at}: a JWT matcher needs subject (and issuer)"));
                    ok = false;
                }
            }
            for (key, value) in [("issuer", &issuer), ("subject", &subject)] {
                if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    problems.push(format!("{at}: {key} must not be empty"));
                    ok = false;
                }
            }
            for reserved in ["iss", "sub"] {
                if claims.contains_key(reserved) {
                    problems.push(format!(
                        "{at}: claims.{reserved} duplicates {}: use the {} key",
                        if reserved == "iss" {
                            "issuer"
                        } else {
                            "subject"
                        },
                        if reserved == "iss" {
                            "issuer"
                        } else {
                            "subject"
                        },
                    ));
                    ok = false;
                }
            }
            match (ok, issuer, subject) {
                (true, Some(issuer), Some(subject)) => Some(Matcher::Jwt {
                    issuer,
                    subject,
                    claims,
                }),
                _ => None,
            }
        } else if let Some(cn) = cert_subject {
            if cn.trim().is_empty() {
                problems.push(format!("{at}: cert_subject must not be empty"));
                return None;
            }
            Some(Matcher::CertSubject { cn, ca })
        } else if let Some(name) = dns_name {
            let norm = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
            let valid = !norm.is_empty()
                && norm.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                problems.push(format!(
                    "{at}: dns_name {name:?} is not a DNS name (letters, digits and '-' in dot-separated labels; no wildcards)"
                ));
                return None;
            }
            Some(Matcher::DnsName { name: norm, ca })
        } else {
            None
        }
    }

    fn task(
        &self,
        n: usize,
        t: TaskFile,
        environment: &str,
        identity: &str,
        problems: &mut Vec<String>,
    ) -> Option<Task> {
        let TaskFile {
            name,
            audience,
            scopes,
            max_ttl,
            source_cidrs,
            require_binding,
            rate_limit,
            delegation,
        } = t;
        let at = if name.is_empty() {
            format!("task #{n}")
        } else {
            format!("task {name}")
        };
        let before = problems.len();
        check_name(&format!("{at}: name"), &name, problems);

        match self.catalogue.get(&audience) {
            None => {
                let mut known: Vec<&str> = self.catalogue.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "the broker config has no [[audience]] entries".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                };
                problems.push(format!(
                    "{at}: audience {audience:?} is not in the audience catalogue ({known}): \
                     add it to the broker config's [[audience]] or fix the URI"
                ));
            }
            Some(env) if env != environment => problems.push(format!(
                "{at}: audience {audience:?} belongs to environment {env}, but identity {identity} \
                 is in {environment}: a token never spans two environments"
            )),
            Some(_) => {}
        }

        if scopes.is_empty() {
            problems.push(format!(
                "{at}: scopes is empty: name at least one scope (a token with no scope grants nothing)"
            ));
        }
        for (i, s) in scopes.iter().enumerate() {
            if !is_scope_token(s) {
                problems.push(format!(
                    "{at}: scope {s:?} is not an OAuth scope token (printable ASCII, no spaces, '\"' or '\\')"
                ));
            } else if scopes[..i].contains(s) {
                problems.push(format!("{at}: scope {s} is listed twice"));
            }
        }

        let max_ttl = match parse_duration(&max_ttl) {
            Err(e) => {
                problems.push(format!("{at}: max_ttl: {e}"));
                Duration::ZERO
            }
            Ok(d) if d.is_zero() => {
                problems.push(format!("{at}: max_ttl must be greater than zero"));
                d
            }
            Ok(d) if d.subsec_nanos() != 0 => {
                problems.push(format!(
                    "{at}: max_ttl {max_ttl:?} is not a whole number of seconds (token lifetimes are in seconds)"
                ));
                d
            }
            Ok(d) if d > MAX_TTL_CEILING => {
                problems.push(format!(
                    "{at}: max_ttl {max_ttl:?} exceeds the ceiling of 24h: just-in-time tokens are for one task, \
                     not standing access"
                ));
                d
            }
            Ok(d) => d,
        };

        let source_cidrs = match source_cidrs {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                problems.push(format!(
                    "{at}: source_cidrs is empty, so no caller could ever use this task: omit it to allow any source"
                ));
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|c| match parse_cidr(c) {
                    Ok(net) => Some(net),
                    Err(why) => {
                        problems.push(format!("{at}: source_cidrs: {why}"));
                        None
                    }
                })
                .collect(),
        };

        let rate_limit = match rate_limit.as_deref().map(crate::ratelimit::Rate::parse) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                problems.push(format!("{at}: rate_limit: {e}"));
                None
            }
        };
        let (require_binding, require_dpop) = match require_binding {
            super::model::BindingFile::Unset | super::model::BindingFile::Flag(false) => {
                (false, false)
            }
            super::model::BindingFile::Flag(true) => (true, false),
            super::model::BindingFile::Kind(k) if k == "mtls" => (true, false),
            super::model::BindingFile::Kind(k) if k == "dpop" => (false, true),
            super::model::BindingFile::Kind(k) => {
                problems.push(format!(
                    "{at}: require_binding {k:?} is not one of true, false, \"mtls\", \"dpop\""
                ));
                (false, false)
            }
        };
        let delegation = delegation
            .into_iter()
            .enumerate()
            .filter_map(|(i, d)| delegation_rule(&at, i, d, &scopes, max_ttl, problems))
            .collect();
        (problems.len() == before).then_some(Task {
            name,
            audience,
            scopes,
            max_ttl,
            source_cidrs,
            require_binding,
            require_dpop,
            rate_limit,
            delegation,
        })
    }
}

/// One `[[task.delegation]]` of the task `at`: actors named, scopes within the task's,
/// `max_ttl` within the task's, `max_depth` from 1 to [`super::MAX_DELEGATION_DEPTH`].
fn delegation_rule(
    at: &str,
    i: usize,
    d: super::model::DelegationFile,
    task_scopes: &[String],
    task_ttl: Duration,
    problems: &mut Vec<String>,
) -> Option<super::Delegation> {
    let at = format!("{at}: delegation #{}", i + 1);
    let before = problems.len();
    if d.actors.is_empty() {
        problems.push(format!(
            "{at}: actors is empty: name the identities that may act for this one"
        ));
    }
    for a in &d.actors {
        check_name(&format!("{at}: actor"), a, problems);
    }
    let scopes = d.scopes.unwrap_or_else(|| task_scopes.to_vec());
    for s in &scopes {
        if !task_scopes.contains(s) {
            problems.push(format!(
                "{at}: scope {s:?} is not one of the task's scopes: a delegated token is never wider than the task"
            ));
        }
    }
    if scopes.is_empty() {
        problems.push(format!(
            "{at}: scopes is empty: a delegated token would grant nothing"
        ));
    }
    let max_ttl = match d.max_ttl.as_deref().map(parse_duration) {
        None => task_ttl,
        Some(Ok(t)) if !t.is_zero() && t.subsec_nanos() == 0 && t <= task_ttl => t,
        Some(Ok(_)) => {
            problems.push(format!(
                "{at}: max_ttl must be a whole number of seconds, more than 0 and at most the task's max_ttl"
            ));
            task_ttl
        }
        Some(Err(e)) => {
            problems.push(format!("{at}: max_ttl: {e}"));
            task_ttl
        }
    };
    let max_depth = d.max_depth.unwrap_or(1);
    if !(1..=super::MAX_DELEGATION_DEPTH).contains(&max_depth) {
        problems.push(format!(
            "{at}: max_depth must be from 1 to {}",
            super::MAX_DELEGATION_DEPTH
        ));
    }
    (problems.len() == before).then_some(super::Delegation {
        actors: d.actors,
        scopes,
        max_ttl,
        max_depth,
    })
}

/// Ids, environments and task names: 1 to 128 of `A-Z a-z 0-9 . _ -`.
fn check_name(what: &str, value: &str, problems: &mut Vec<String>) {
    if value.is_empty() {
        problems.push(format!("{what} must not be empty"));
    } else if value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        problems.push(format!(
            "{what} {value:?} may only contain letters, digits, '.', '_' and '-' (at most 128)"
        ));
    }
}

/// RFC 6749 `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Checks a SPIFFE ID and returns its trust domain.
fn spiffe_trust_domain(id: &str) -> Result<&str, &'static str> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("is not a spiffe:// URI (e.g. spiffe://prod.example.org/ns/payments/sa/api)")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.is_empty() {
        return Err("has no trust domain");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("has an invalid trust domain (lower-case letters, digits, '.', '-', '_')");
    }
    if path.is_empty() || path == "/" {
        return Err("names a trust domain, not a workload: add the workload path");
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("has an empty, '.' or '..' path segment (or a trailing '/')");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(
                "has a path segment with characters other than letters, digits, '.', '-', '_'",
            );
        }
    }
    Ok(td)
}

/// A network (`10.20.0.0/16`, `fd00::/8`) or a single address; IPv4-mapped IPv6 networks
/// become IPv4. Host bits must be clear.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.addr() != net.network() {
            return Err(format!(
                "{s} has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        if let IpNet::V6(v6) = net
            && let Some(v4) = v6.addr().to_ipv4_mapped()
            && v6.prefix_len() >= 96
        {
            return Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .map_err(|e| format!("{s}: {e}"));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    Err(format!(
        "invalid CIDR {s:?}: write a network such as 10.20.0.0/16 or fd00::/8, or a single address"
    ))
}

/// 00:00:00 UTC on `date`.
fn date_start_utc(date: NaiveDate) -> SystemTime {
    let secs = date
        .and_hms_opt(0, 0, 0)
        .map_or(i64::MIN, |dt| dt.and_utc().timestamp());
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Whether two claim requirements could both be met by one token (they agree on every
/// claim they both name). A subset is the simplest case.
fn claims_compatible(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// Builds the lookup tables, reporting duplicate ids and callers that would prove two
/// identities.
fn index(
    identities: Vec<Identity>,
    audience_env: HashMap<String, String>,
    errors: &mut Vec<LintError>,
) -> PolicySet {
    let mut set = PolicySet {
        identities: Vec::new(),
        by_id: HashMap::new(),
        by_spiffe: HashMap::new(),
        by_jwt: HashMap::new(),
        by_cert_subject: HashMap::new(),
        by_dns: HashMap::new(),
        audience_env,
    };
    let mut err = |file: &Path, message: String| {
        errors.push(LintError {
            file: file.to_path_buf(),
            message,
        })
    };
    let conflict = |what: String, other: &Identity| {
        format!(
            "{what} also proves identity {} ({}): a caller must map to exactly one identity",
            other.id,
            other.file.display()
        )
    };

    for (idx, ident) in identities.iter().enumerate() {
        if let Some(&prev) = set.by_id.get(&ident.id) {
            err(
                &ident.file,
                format!(
                    "duplicate identity id {}: already declared in {}",
                    ident.id,
                    identities[prev].file.display()
                ),
            );
        } else {
            set.by_id.insert(ident.id.clone(), idx);
        }

        for m in &ident.matchers {
            match m {
                Matcher::SpiffeId(id) => match set.by_spiffe.get(id) {
                    Some(&o) if o != idx => err(
                        &ident.file,
                        conflict(format!("spiffe_id {id:?}"), &identities[o]),
                    ),
                    Some(_) => {}
                    None => {
                        set.by_spiffe.insert(id.clone(), idx);
                    }
                },
                Matcher::Jwt {
                    issuer,
                    subject,
                    claims,
                } => {
                    let rules = set
                        .by_jwt
                        .entry(issuer.clone())
                        .or_default()
                        .entry(subject.clone())
                        .or_default();
                    if let Some((_, o)) = rules
                        .iter()
                        .find(|(c, o)| *o != idx && claims_compatible(c, claims))
                    {
                        let what = format!("issuer {issuer:?} subject {subject:?}");
                        err(
                            &ident.file,
                            format!(
                                "{} (claims only tell two identities apart when they require different \
                                 values for the same claim)",
                                conflict(what, &identities[*o])
                            ),
                        );
                    } else {
                        rules.push((claims.clone(), idx));
                    }
                }
                Matcher::CertSubject { cn, ca } => match set.by_cert_subject.get(cn) {
                    Some(&(o, _)) if o != idx => err(
                        &ident.file,
                        conflict(format!("cert_subject {cn:?}"), &identities[o]),
                    ),
                    Some(_) => {}
                    None => {
                        set.by_cert_subject.insert(cn.clone(), (idx, ca.clone()));
                    }
                },
                Matcher::DnsName { name, ca } => match set.by_dns.get(name) {
                    Some(&(o, _)) if o != idx => err(
                        &ident.file,
                        conflict(format!("dns_name {name:?}"), &identities[o]),
                    ),
                    Some(_) => {}
                    None => {
                        set.by_dns.insert(name.clone(), (idx, ca.clone()));
                    }
                },
            }
        }
    }

    // Evidence that proves two identities through different matcher kinds: a JWT-SVID
    // subject that another identity claims as its spiffe_id, and a certificate whose CN
    // equals a DNS SAN that another identity claims.
    for (subject, rules) in set.by_jwt.values().flatten() {
        if let Some(&o) = set.by_spiffe.get(subject) {
            for (_, idx) in rules.iter().filter(|(_, i)| *i != o) {
                err(
                    &identities[*idx].file,
                    conflict(format!("subject {subject:?} (a JWT-SVID)"), &identities[o]),
                );
            }
        }
    }
    for (cn, &(idx, _)) in &set.by_cert_subject {
        if let Some(&(o, _)) = set.by_dns.get(&cn.to_ascii_lowercase())
            && o != idx
        {
            err(
                &identities[idx].file,
                conflict(
                    format!("cert_subject {cn:?} (a certificate whose CN equals a DNS SAN)"),
                    &identities[o],
                ),
            );
        }
    }

    set.identities = identities;
    set
}
