//! Unit tests: one per lint and one per decision rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::AudienceEntry;

const PAYMENTS: &str = r#"
[identity]
id          = "payments-api"
owner       = "team-payments"
steward     = "alice@example.com"
purpose     = "Charge cards through the ledger API"
environment = "prod"
ticket      = "CHG-1234"
approved_by = "bob@example.com"
expires     = "2027-02-01"
third_party = false

[[identity.match]]
spiffe_id = "spiffe://prod.example.org/ns/payments/sa/api"

[[identity.match]]
issuer  = "https://kubernetes.default.svc.cluster.local"
subject = "system:serviceaccount:payments:api"

[[task]]
name        = "ledger-write"
audience    = "https://ledger.prod.example.org"
scopes      = ["ledger:read", "ledger:write"]
max_ttl     = "10m"
source_cidrs = ["10.20.0.0/16", "127.0.0.0/8"]

[[task]]
name        = "ledger-read"
audience    = "https://ledger.prod.example.org"
scopes      = ["ledger:read"]
max_ttl     = "5m"
"#;

/// A second, unrelated identity; `{MATCH}` is replaced by its matcher lines.
const OTHER: &str = r#"
[identity]
id          = "other"
owner       = "team-other"
steward     = "o@example.com"
purpose     = "Other things"
environment = "prod"
ticket      = "CHG-9"
expires     = "2099-01-01"

{MATCH}

[[task]]
name     = "read"
audience = "https://ledger.prod.example.org"
scopes   = ["ledger:read"]
max_ttl  = "1m"
"#;

fn catalogue() -> Vec<AudienceEntry> {
    [
        ("https://ledger.prod.example.org", "prod"),
        ("https://ledger.dev.example.org", "dev"),
        ("https://reports.prod.example.org", "prod"),
    ]
    .into_iter()
    .map(|(uri, env)| AudienceEntry {
        uri: uri.into(),
        environment: env.into(),
        algorithm: None,
    })
    .collect()
}

fn load(files: &[(&str, &str)]) -> Result<PolicySet, Vec<LintError>> {
    from_sources(
        files.iter().map(|(n, t)| (Path::new(*n), *t)),
        &catalogue(),
        &[],
    )
}

fn other(matchers: &str) -> String {
    OTHER.replace("{MATCH}", matchers)
}

/// Loads `PAYMENTS` with `from` replaced by `to` and expects exactly one problem in it,
/// containing every needle.
fn lint_one(from: &str, to: &str, needles: &[&str]) -> LintError {
    assert!(
        PAYMENTS.contains(from),
        "test setup: {from:?} not in PAYMENTS"
    );
    let text = PAYMENTS.replacen(from, to, 1);
    let errs = load(&[("pay.toml", &text)]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!(e.file, PathBuf::from("pay.toml"));
    let shown = e.to_string();
    assert!(shown.starts_with("pay.toml: "), "{shown}");
    for n in needles {
        assert!(e.message.contains(n), "{n:?} not in {:?}", e.message);
    }
    e
}

fn payments() -> PolicySet {
    load(&[("pay.toml", PAYMENTS)]).unwrap()
}

fn at(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .into()
}

fn req<'a>(identity: &'a str, task: &'a str) -> Request<'a> {
    Request {
        identity,
        task,
        audience: None,
        scopes: None,
        requested_ttl: None,
        source: IpAddr::V4(Ipv4Addr::new(10, 20, 1, 2)),
        now: at("2026-06-01T12:00:00Z"),
        cert_bound: false,
    }
}

fn grant(set: &PolicySet, r: &Request<'_>) -> Grant {
    match set.evaluate(r).decision {
        Decision::Allow(g) => g,
        Decision::Deny(d) => panic!("denied: {d}"),
    }
}

fn denial(set: &PolicySet, r: &Request<'_>) -> Denial {
    match set.evaluate(r).decision {
        Decision::Deny(d) => {
            // explain agrees with evaluate on the decision.
            assert_eq!(set.explain(r).decision, Decision::Deny(d.clone()));
            d
        }
        Decision::Allow(g) => panic!("allowed: {g:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Loading and lint
// ---------------------------------------------------------------------------------------

#[test]
fn the_design_sample_loads() {
    let set = payments();
    assert_eq!(set.len(), 1);
    assert!(!set.is_empty());
    let id = set.identity("payments-api").unwrap();
    assert_eq!(id.owner, "team-payments");
    assert_eq!(id.approved_by.as_deref(), Some("bob@example.com"));
    assert_eq!(
        id.expires,
        chrono::NaiveDate::from_ymd_opt(2027, 2, 1).unwrap()
    );
    assert_eq!(id.expires_at(), at("2027-02-01T00:00:00Z"));
    assert_eq!(id.file, PathBuf::from("pay.toml"));
    assert_eq!(id.matchers.len(), 2);
    let t = id.task("ledger-write").unwrap();
    assert_eq!(t.max_ttl, Duration::from_secs(600));
    assert_eq!(t.source_cidrs.len(), 2);
    assert!(!t.require_binding);
    assert_eq!(set.identities().count(), 1);
}

#[test]
fn the_shipped_samples_load_against_the_documented_catalogue() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let domains = vec!["prod.example.org".to_owned(), "dev.example.org".to_owned()];
    let set = load_dir(&dir, &catalogue(), &domains).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(set.len(), 4);
    for id in [
        "payments-api",
        "ci-deployer",
        "reports-batch",
        "vendor-analytics",
    ] {
        assert!(set.identity(id).is_some(), "{id}");
    }
}

#[test]
fn lint_missing_required_field() {
    for field in [
        "owner",
        "steward",
        "purpose",
        "environment",
        "ticket",
        "expires",
    ] {
        let line = PAYMENTS
            .lines()
            .find(|l| l.starts_with(&format!("{field} ")))
            .unwrap();
        lint_one(line, "", &["missing field", field]);
    }
    // Present but blank is no better.
    lint_one(
        r#""team-payments""#,
        r#""  ""#,
        &["identity.owner must not be empty"],
    );
    // approved_by is optional.
    let text = PAYMENTS.replace("approved_by = \"bob@example.com\"\n", "");
    assert!(
        load(&[("a.toml", &text)])
            .unwrap()
            .identity("payments-api")
            .unwrap()
            .approved_by
            .is_none()
    );
}

#[test]
fn lint_unknown_keys_everywhere() {
    lint_one(
        "third_party = false",
        "colour = \"red\"",
        &["unknown field `colour`", "line "],
    );
    lint_one(
        "max_ttl     = \"5m\"",
        "max_ttl     = \"5m\"\nmax_tll = \"1m\"",
        &["unknown field `max_tll`"],
    );
    lint_one(
        "subject = \"system:serviceaccount:payments:api\"",
        "subject = \"system:serviceaccount:payments:api\"\naudience = \"x\"",
        &["unknown field `audience`"],
    );
    lint_one(
        "[identity]",
        "[identiti]\n[identity]",
        &["unknown field `identiti`"],
    );
}

#[test]
fn lint_duplicate_identity_ids_name_both_files() {
    let errs = load(&[
        ("a.toml", PAYMENTS),
        (
            "b.toml",
            &PAYMENTS
                .replace(
                    "prod.example.org/ns/payments/sa/api",
                    "prod.example.org/ns/payments/sa/api2",
                )
                .replace("payments:api", "payments:api2"),
        ),
    ])
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, PathBuf::from("b.toml"));
    assert!(
        errs[0]
            .message
            .contains("duplicate identity id payments-api"),
        "{}",
        errs[0]
    );
    assert!(errs[0].message.contains("a.toml"), "{}", errs[0]);
}

fn conflict(matchers: &str) -> LintError {
    let o = other(matchers);
    let errs = load(&[("a.toml", PAYMENTS), ("b.toml", &o)]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!(e.file, PathBuf::from("b.toml"));
    assert!(
        e.message
            .contains("also proves identity payments-api (a.toml)"),
        "{e}"
    );
    e
}

#[test]
fn lint_two_identities_for_the_same_spiffe_id() {
    let e = conflict(
        "[[identity.match]]\nspiffe_id = \"spiffe://prod.example.org/ns/payments/sa/api\"",
    );
    assert!(e.message.contains("spiffe_id"), "{e}");
}

#[test]
fn lint_two_identities_for_the_same_issuer_subject_with_overlapping_claims() {
    let m = |claims: &str| {
        format!(
            "[[identity.match]]\nissuer = \"https://kubernetes.default.svc.cluster.local\"\n\
             subject = \"system:serviceaccount:payments:api\"\n{claims}"
        )
    };
    // No claims on either side: same caller.
    conflict(&m(""));
    // One's claims a superset of the other's (empty) set: still the same caller.
    conflict(&m("claims = { repository = \"acme/payments\" }"));

    // Two claim sets that cannot both hold are fine, and select by claim value.
    let a = PAYMENTS.replace(
        "subject = \"system:serviceaccount:payments:api\"",
        "subject = \"system:serviceaccount:payments:api\"\nclaims = { ref = \"refs/heads/main\" }",
    );
    let b = other(&m("claims = { ref = \"refs/heads/dev\" }"));
    let set = load(&[("a.toml", &a), ("b.toml", &b)]).unwrap();
    let claims = |r: &str| serde_json::json!({ "ref": r }).as_object().unwrap().clone();
    let iss = "https://kubernetes.default.svc.cluster.local";
    let sub = "system:serviceaccount:payments:api";
    assert_eq!(
        set.match_jwt(iss, sub, &claims("refs/heads/main"))
            .unwrap()
            .id,
        "payments-api"
    );
    assert_eq!(
        set.match_jwt(iss, sub, &claims("refs/heads/dev"))
            .unwrap()
            .id,
        "other"
    );
    assert!(set.match_jwt(iss, sub, &claims("refs/heads/x")).is_none());

    // Claims on different keys could both hold for one token: a conflict too.
    let b = other(&m("claims = { workflow = \"deploy\" }"));
    let errs = load(&[("a.toml", &a), ("b.toml", &b)]).unwrap_err();
    assert!(
        errs[0]
            .message
            .contains("also proves identity payments-api"),
        "{errs:?}"
    );
}

#[test]
fn lint_two_identities_for_the_same_certificate() {
    let base = PAYMENTS.replace(
        "[[task]]\nname        = \"ledger-write\"",
        "[[identity.match]]\ncert_subject = \"payments.prod\"\n\n[[identity.match]]\ndns_name = \"Payments.Prod.Example.org.\"\n\n[[task]]\nname        = \"ledger-write\"",
    );
    let one = |m: &str, needle: &str| {
        let errs = load(&[("a.toml", &base), ("b.toml", &other(m))]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].file, PathBuf::from("b.toml"));
        assert!(errs[0].message.contains(needle), "{}", errs[0]);
        assert!(errs[0].message.contains("a.toml"), "{}", errs[0]);
    };
    one(
        "[[identity.match]]\ncert_subject = \"payments.prod\"",
        "cert_subject \"payments.prod\"",
    );
    // DNS names compare case-insensitively and without the trailing dot.
    one(
        "[[identity.match]]\ndns_name = \"payments.prod.example.org\"",
        "dns_name",
    );
    // A certificate CN equal to another identity's DNS SAN.
    one(
        "[[identity.match]]\ncert_subject = \"payments.prod.example.org\"",
        "CN equals a DNS SAN",
    );
}

#[test]
fn lint_jwt_svid_subject_claimed_as_another_identitys_spiffe_id() {
    let e = conflict(
        "[[identity.match]]\nissuer = \"https://spire.example.org\"\nsubject = \"spiffe://prod.example.org/ns/payments/sa/api\"",
    );
    assert!(e.message.contains("JWT-SVID"), "{e}");
}

#[test]
fn lint_audience_not_in_catalogue() {
    lint_one(
        "audience    = \"https://ledger.prod.example.org\"\nscopes      = [\"ledger:read\", \"ledger:write\"]",
        "audience    = \"https://ledger.example.org\"\nscopes      = [\"ledger:read\", \"ledger:write\"]",
        &[
            "task ledger-write",
            "\"https://ledger.example.org\" is not in the audience catalogue",
            "https://ledger.prod.example.org",
        ],
    );
    let errs = from_sources([(Path::new("p.toml"), PAYMENTS)], &[], &[]).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(
        errs[0].message.contains("no [[audience]] entries"),
        "{}",
        errs[0]
    );
}

#[test]
fn lint_audience_of_another_environment() {
    lint_one(
        "audience    = \"https://ledger.prod.example.org\"\nscopes      = [\"ledger:read\", \"ledger:write\"]",
        "audience    = \"https://ledger.dev.example.org\"\nscopes      = [\"ledger:read\", \"ledger:write\"]",
        &[
            "task ledger-write",
            "belongs to environment dev",
            "identity payments-api is in prod",
        ],
    );
}

#[test]
fn lint_duplicate_task_names() {
    lint_one(
        "name        = \"ledger-read\"",
        "name        = \"ledger-write\"",
        &["task ledger-write is declared twice"],
    );
}

#[test]
fn lint_empty_and_malformed_scopes() {
    lint_one(
        "scopes      = [\"ledger:read\"]",
        "scopes      = []",
        &["task ledger-read", "scopes is empty"],
    );
    lint_one(
        "scopes      = [\"ledger:read\"]",
        "scopes      = [\"ledger read\"]",
        &["scope \"ledger read\" is not an OAuth scope token"],
    );
    lint_one(
        "scopes      = [\"ledger:read\"]",
        "scopes      = [\"ledger:read\", \"ledger:read\"]",
        &["scope ledger:read is listed twice"],
    );
}

#[test]
fn lint_max_ttl() {
    let from = "max_ttl     = \"5m\"";
    lint_one(
        from,
        "max_ttl = \"0s\"",
        &["task ledger-read", "max_ttl must be greater than zero"],
    );
    lint_one(
        from,
        "max_ttl = \"5 minutes\"",
        &["task ledger-read: max_ttl: invalid duration"],
    );
    lint_one(from, "max_ttl = \"10\"", &["missing unit"]);
    lint_one(from, "max_ttl = \"2d\"", &["exceeds the ceiling of 24h"]);
    lint_one(from, "max_ttl = \"1500ms\"", &["whole number of seconds"]);
    lint_one(from, "max_ttl = 300", &["invalid type", "max_ttl"]);
}

#[test]
fn lint_invalid_cidr() {
    let from = "\"10.20.0.0/16\"";
    lint_one(
        from,
        "\"10.20.0.0/33\"",
        &["task ledger-write: source_cidrs: invalid CIDR \"10.20.0.0/33\""],
    );
    lint_one(from, "\"ten/8\"", &["invalid CIDR \"ten/8\""]);
    lint_one(
        from,
        "\"10.20.1.0/16\"",
        &["10.20.1.0/16 has host bits set: did you mean 10.20.0.0/16?"],
    );
    lint_one(
        "source_cidrs = [\"10.20.0.0/16\", \"127.0.0.0/8\"]",
        "source_cidrs = []",
        &["source_cidrs is empty", "omit it"],
    );
    // Single addresses and IPv4-mapped networks are accepted and normalised.
    let text = PAYMENTS.replace(
        from,
        "\"::ffff:10.20.0.0/112\", \"192.0.2.7\", \"fd00::/8\"",
    );
    let set = load(&[("p.toml", &text)]).unwrap();
    let nets: Vec<String> = set.identity("payments-api").unwrap().tasks[0]
        .source_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        nets,
        ["10.20.0.0/16", "192.0.2.7/32", "fd00::/8", "127.0.0.0/8"]
    );
}

#[test]
fn lint_invalid_date() {
    lint_one(
        "\"2027-02-01\"",
        "\"2027-02-30\"",
        &[
            "identity.expires: invalid date \"2027-02-30\"",
            "YYYY-MM-DD",
        ],
    );
    lint_one(
        "\"2027-02-01\"",
        "\"next year\"",
        &["invalid date \"next year\""],
    );
    // A TOML datetime is not a date.
    lint_one(
        "\"2027-02-01\"",
        "2027-02-01T10:00:00Z",
        &["invalid date \"2027-02-01T10:00:00Z\""],
    );
    // A native TOML date is accepted.
    let set = load(&[("p.toml", &PAYMENTS.replace("\"2027-02-01\"", "2027-02-01"))]).unwrap();
    assert_eq!(
        set.identity("payments-api").unwrap().expires.to_string(),
        "2027-02-01"
    );
}

#[test]
fn lint_matcher_with_none_or_several_kinds() {
    let spiffe = "spiffe_id = \"spiffe://prod.example.org/ns/payments/sa/api\"";
    lint_one(
        spiffe,
        "",
        &["[[identity.match]] #1 sets none of spiffe_id, issuer+subject, cert_subject, dns_name"],
    );
    lint_one(
        spiffe,
        &format!("{spiffe}\ndns_name = \"api.example.org\""),
        &[
            "[[identity.match]] #1 mixes spiffe_id and dns_name",
            "exactly one kind",
        ],
    );
    lint_one(
        "subject = \"system:serviceaccount:payments:api\"",
        "claims = { a = \"b\" }",
        &["[[identity.match]] #2: a JWT matcher needs subject"],
    );
    lint_one(
        "issuer  = \"https://kubernetes.default.svc.cluster.local\"",
        "",
        &["#2: a JWT matcher needs issuer"],
    );
    lint_one(
        "subject = \"system:serviceaccount:payments:api\"",
        "subject = \"system:serviceaccount:payments:api\"\nclaims = { sub = \"x\" }",
        &["claims.sub duplicates subject"],
    );
    lint_one(
        spiffe,
        "dns_name = \"*.example.org\"",
        &["dns_name \"*.example.org\" is not a DNS name"],
    );
    // No matcher at all.
    let text: String = PAYMENTS
        .replace("[[identity.match]]\n", "")
        .replace(&format!("{spiffe}\n"), "")
        .replace(
            "issuer  = \"https://kubernetes.default.svc.cluster.local\"\n",
            "",
        )
        .replace("subject = \"system:serviceaccount:payments:api\"\n", "");
    let errs = load(&[("p.toml", &text)]).unwrap_err();
    assert!(
        errs[0].message.contains("no [[identity.match]]"),
        "{errs:?}"
    );
}

#[test]
fn lint_spiffe_id_syntax_and_trust_domain() {
    let from = "\"spiffe://prod.example.org/ns/payments/sa/api\"";
    lint_one(
        from,
        "\"https://prod.example.org/ns/payments\"",
        &["is not a spiffe:// URI"],
    );
    lint_one(
        from,
        "\"spiffe://prod.example.org\"",
        &["names a trust domain, not a workload"],
    );
    lint_one(
        from,
        "\"spiffe://Prod.example.org/x\"",
        &["invalid trust domain"],
    );
    lint_one(
        from,
        "\"spiffe://prod.example.org/a//b\"",
        &["empty, '.' or '..' path segment"],
    );
    lint_one(from, "\"spiffe://prod.example.org/a/../b\"", &["'..'"]);

    let domains = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let f = [(Path::new("p.toml"), PAYMENTS)];
    let errs = from_sources(f, &catalogue(), &domains(&["dev.example.org"])).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .message
            .contains("outside the configured trust domains (dev.example.org)"),
        "{}",
        errs[0]
    );
    // Trust domains may be given as spiffe:// URIs too.
    assert!(from_sources(f, &catalogue(), &domains(&["spiffe://prod.example.org"])).is_ok());
    assert!(from_sources(f, &catalogue(), &domains(&["prod.example.org"])).is_ok());
}

#[test]
fn lint_names() {
    lint_one(
        "\"payments-api\"",
        "\"payments api\"",
        &["identity.id \"payments api\" may only contain"],
    );
    lint_one(
        "\"ledger-read\"",
        "\"\"",
        &["task #2: name must not be empty"],
    );
}

#[test]
fn lint_collects_every_problem_in_every_file() {
    let a = PAYMENTS
        .replace("\"10m\"", "\"0s\"")
        .replace("\"127.0.0.0/8\"", "\"nope\"")
        .replace("\"2027-02-01\"", "\"soon\"");
    let b = other("[[identity.match]]\ndns_name = \"x.example.org\"").replace("\"1m\"", "\"1y\"");
    let c = "[identity]\nid = \"c\"";
    let errs = load(&[("a.toml", &a), ("b.toml", &b), ("c.toml", c)]).unwrap_err();
    let files: Vec<&str> = errs.iter().map(|e| e.file.to_str().unwrap()).collect();
    assert_eq!(
        files,
        ["a.toml", "a.toml", "a.toml", "b.toml", "c.toml"],
        "{errs:#?}"
    );
}

#[test]
fn load_dir_reads_only_toml_files_and_rejects_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "# not a policy").unwrap();
    std::fs::write(dir.path().join(".hidden.toml"), "garbage").unwrap();
    let errs = load_dir(dir.path(), &catalogue(), &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, dir.path());
    assert!(errs[0].message.starts_with("no identities"), "{}", errs[0]);

    std::fs::write(dir.path().join("pay.toml"), PAYMENTS).unwrap();
    let set = load_dir(dir.path(), &catalogue(), &[]).unwrap();
    assert_eq!(
        set.identity("payments-api").unwrap().file,
        dir.path().join("pay.toml")
    );

    std::fs::write(dir.path().join("bad.toml"), "[identity]\nid = 1").unwrap();
    let errs = load_dir(dir.path(), &catalogue(), &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, dir.path().join("bad.toml"));
    assert!(
        errs[0]
            .to_string()
            .contains("bad.toml: line 2 (`id = 1`): invalid type"),
        "{}",
        errs[0]
    );

    let errs = load_dir(&dir.path().join("missing"), &catalogue(), &[]).unwrap_err();
    assert!(
        errs[0].message.contains("cannot read the policy directory"),
        "{}",
        errs[0]
    );
}

// ---------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------

#[test]
fn match_jwt_by_issuer_subject_and_exact_string_claims() {
    let text = PAYMENTS.replace(
        "subject = \"system:serviceaccount:payments:api\"",
        "subject = \"system:serviceaccount:payments:api\"\nclaims = { repository = \"acme/payments\", ref = \"refs/heads/main\" }",
    );
    let set = load(&[("p.toml", &text)]).unwrap();
    let iss = "https://kubernetes.default.svc.cluster.local";
    let sub = "system:serviceaccount:payments:api";
    let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
    let good = claims(
        serde_json::json!({"iss": iss, "sub": sub, "repository": "acme/payments", "ref": "refs/heads/main", "extra": 1}),
    );
    assert_eq!(set.match_jwt(iss, sub, &good).unwrap().id, "payments-api");
    // A missing claim, another value, or a non-string value proves nothing.
    for bad in [
        serde_json::json!({"repository": "acme/payments"}),
        serde_json::json!({"repository": "acme/payments", "ref": "refs/heads/evil"}),
        serde_json::json!({"repository": ["acme/payments"], "ref": "refs/heads/main"}),
    ] {
        assert!(set.match_jwt(iss, sub, &claims(bad)).is_none());
    }
    assert!(set.match_jwt("https://evil", sub, &good).is_none());
    assert!(
        set.match_jwt(iss, "system:serviceaccount:payments:other", &good)
            .is_none()
    );
}

#[test]
fn match_jwt_svid_by_spiffe_id() {
    let set = payments();
    let none = serde_json::Map::new();
    let id = "spiffe://prod.example.org/ns/payments/sa/api";
    assert_eq!(
        set.match_jwt("https://spire.example.org", id, &none)
            .unwrap()
            .id,
        "payments-api"
    );
    assert_eq!(set.match_spiffe_id(id).unwrap().id, "payments-api");
    assert!(
        set.match_spiffe_id("spiffe://prod.example.org/ns/payments/sa/api/x")
            .is_none()
    );
    assert!(
        set.match_jwt(
            "https://spire.example.org",
            "spiffe://prod.example.org/ns/other",
            &none
        )
        .is_none()
    );
    // Only spiffe:// subjects are looked up as SPIFFE IDs.
    assert!(
        set.match_spiffe_id("prod.example.org/ns/payments/sa/api")
            .is_none()
    );
}

#[test]
fn match_cert_by_cn_or_dns_name_and_never_ambiguously() {
    let a = PAYMENTS.replace(
        "[[task]]\nname        = \"ledger-write\"",
        "[[identity.match]]\ncert_subject = \"payments.prod\"\n\n[[identity.match]]\ndns_name = \"payments.prod.example.org\"\n\n[[task]]\nname        = \"ledger-write\"",
    );
    let b = other("[[identity.match]]\ndns_name = \"other.prod.example.org\"");
    let set = load(&[("a.toml", &a), ("b.toml", &b)]).unwrap();
    assert_eq!(
        set.match_cert(Some("payments.prod"), &[], None).unwrap().id,
        "payments-api"
    );
    let dns = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        set.match_cert(None, &dns(&["PAYMENTS.prod.example.org."]), None)
            .unwrap()
            .id,
        "payments-api"
    );
    assert_eq!(
        set.match_cert(Some("x"), &dns(&["nope", "other.prod.example.org"]), None)
            .unwrap()
            .id,
        "other"
    );
    // Both of one identity's names: fine.
    assert_eq!(
        set.match_cert(
            Some("payments.prod"),
            &dns(&["payments.prod.example.org"]),
            None
        )
        .unwrap()
        .id,
        "payments-api"
    );
    // Names of two identities: proves nothing.
    assert!(
        set.match_cert(
            Some("payments.prod"),
            &dns(&["other.prod.example.org"]),
            None
        )
        .is_none()
    );
    assert!(set.match_cert(None, &[], None).is_none());
}

#[test]
fn certificate_matchers_bound_to_a_ca_match_only_certificates_of_that_ca() {
    let a = PAYMENTS.replace(
        "[[task]]\nname        = \"ledger-write\"",
        "[[identity.match]]\ncert_subject = \"payments.prod\"\nca = \"prod-ca\"\n\n[[identity.match]]\ndns_name = \"payments.prod.example.org\"\nca = \"prod-ca\"\n\n[[task]]\nname        = \"ledger-write\"",
    );
    let set = load(&[("a.toml", &a)]).unwrap();
    let dns = vec!["payments.prod.example.org".to_string()];
    assert_eq!(
        set.match_cert(Some("payments.prod"), &[], Some("prod-ca"))
            .unwrap()
            .id,
        "payments-api"
    );
    assert_eq!(
        set.match_cert(None, &dns, Some("prod-ca")).unwrap().id,
        "payments-api"
    );
    // The same names from another configured CA prove nothing.
    assert!(
        set.match_cert(Some("payments.prod"), &[], Some("partner-ca"))
            .is_none()
    );
    assert!(set.match_cert(None, &dns, Some("partner-ca")).is_none());
    assert!(set.match_cert(Some("payments.prod"), &dns, None).is_none());

    // The config must have that CA.
    let errs = crate::policy::check_client_ca_names(&set, &["partner-ca".to_string()]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].to_string().contains("a.toml"), "{}", errs[0]);
    assert!(
        errs[0]
            .message
            .contains("ca = \"prod-ca\" names no [[client_ca]]"),
        "{}",
        errs[0]
    );
    assert!(crate::policy::check_client_ca_names(&set, &["prod-ca".to_string()]).is_empty());

    // `ca` only on certificate matchers, and not empty.
    lint_one(
        "spiffe_id = \"spiffe://prod.example.org/ns/payments/sa/api\"",
        "spiffe_id = \"spiffe://prod.example.org/ns/payments/sa/api\"\nca = \"prod-ca\"",
        &["ca applies only to cert_subject and dns_name"],
    );
    let empty = a.replacen("ca = \"prod-ca\"", "ca = \" \"", 1);
    let errs = load(&[("a.toml", &empty)]).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.message.contains("ca must not be empty")),
        "{errs:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------------------

#[test]
fn allow_with_the_tasks_defaults() {
    let set = payments();
    let g = grant(&set, &req("payments-api", "ledger-write"));
    assert_eq!(
        g,
        Grant {
            identity: "payments-api".into(),
            environment: "prod".into(),
            task: "ledger-write".into(),
            audience: "https://ledger.prod.example.org".into(),
            scopes: vec!["ledger:read".into(), "ledger:write".into()],
            ttl: Duration::from_secs(600),
        }
    );
    // evaluate builds no trace.
    assert!(
        set.evaluate(&req("payments-api", "ledger-write"))
            .trace
            .is_empty()
    );
}

#[test]
fn deny_unknown_identity() {
    let d = denial(&payments(), &req("ghost", "ledger-write"));
    assert_eq!(d.rule, Rule::UnknownIdentity);
    assert!(
        d.reason.contains("identity ghost is not in the registry"),
        "{d}"
    );
}

#[test]
fn deny_expired_registration_on_its_date() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    for now in [
        "2027-02-01T00:00:00Z",
        "2027-02-01T13:00:00Z",
        "2030-01-01T00:00:00Z",
    ] {
        r.now = at(now);
        let d = denial(&set, &r);
        assert_eq!(d.rule, Rule::RegistrationExpired);
        assert_eq!(
            d.reason,
            "registration payments-api expired on 2027-02-01: recertify it (owner team-payments)"
        );
    }
    // The last full second before the date is still valid.
    r.now = at("2027-01-31T23:59:59Z");
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(1));
    // Less than one second left counts as expired (no zero-lifetime tokens).
    r.now = at("2027-01-31T23:59:59.5Z");
    assert_eq!(denial(&set, &r).rule, Rule::RegistrationExpired);
}

#[test]
fn ttl_is_capped_by_the_registration_expiry() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    r.now = at("2027-01-31T23:58:00Z");
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(120));
    r.now = at("2027-01-31T23:58:00.700Z");
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(119)); // whole seconds, rounded down
    r.requested_ttl = Some(Duration::from_secs(60));
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(60));
    let trace = set.explain(&{
        let mut r = r.clone();
        r.requested_ttl = None;
        r
    });
    assert!(
        trace
            .trace
            .iter()
            .any(|c| c.detail.contains("capped to 119s")),
        "{trace:#?}"
    );
}

#[test]
fn deny_unknown_task_listing_the_identitys_tasks() {
    let d = denial(&payments(), &req("payments-api", "ledger-admin"));
    assert_eq!(d.rule, Rule::UnknownTask);
    assert_eq!(
        d.reason,
        "identity payments-api has no task ledger-admin: its tasks are ledger-write ledger-read"
    );
}

#[test]
fn audience_given_must_be_the_tasks() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    r.audience = Some("https://ledger.prod.example.org");
    assert_eq!(grant(&set, &r).audience, "https://ledger.prod.example.org");

    r.audience = Some("https://reports.prod.example.org");
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::AudienceNotAllowed);
    assert_eq!(
        d.reason,
        "audience https://reports.prod.example.org is not allowed for task ledger-write: \
         it grants only https://ledger.prod.example.org"
    );
}

#[test]
fn audience_of_another_environment_is_named_as_such() {
    let mut r = req("payments-api", "ledger-write");
    r.audience = Some("https://ledger.dev.example.org");
    let d = denial(&payments(), &r);
    assert_eq!(d.rule, Rule::AudienceEnvironment);
    assert!(
        d.reason
            .contains("is in environment dev, but identity payments-api is in prod"),
        "{d}"
    );
    assert!(d.reason.contains("never spans two environments"), "{d}");
}

#[test]
fn scopes_narrow_and_never_widen() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");

    // A subset, with duplicates and in another order: deduplicated, in task order.
    r.scopes = Some(vec!["ledger:write", "ledger:read", "ledger:write"]);
    assert_eq!(grant(&set, &r).scopes, ["ledger:read", "ledger:write"]);
    r.scopes = Some(vec!["ledger:write"]);
    assert_eq!(grant(&set, &r).scopes, ["ledger:write"]);

    // One scope too many: denied, never silently dropped.
    r.scopes = Some(vec!["ledger:read", "ledger:admin"]);
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::ScopeNotAllowed);
    assert_eq!(
        d.reason,
        "scope ledger:admin is not granted by task ledger-write (allowed: ledger:read ledger:write)"
    );
    r.scopes = Some(vec!["a", "ledger:read", "b", "a"]);
    assert!(
        denial(&set, &r)
            .reason
            .starts_with("scopes a b are not granted")
    );

    // An explicitly empty list is not "everything".
    r.scopes = Some(vec![]);
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::ScopeNotAllowed);
    assert!(d.reason.contains("an empty scope was requested"), "{d}");
}

#[test]
fn requested_ttl_is_bounded_by_max_ttl() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    r.requested_ttl = Some(Duration::from_secs(30));
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(30));
    r.requested_ttl = Some(Duration::from_secs(600));
    assert_eq!(grant(&set, &r).ttl, Duration::from_secs(600));

    r.requested_ttl = Some(Duration::from_secs(601));
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::TtlTooLong);
    assert_eq!(
        d.reason,
        "requested_ttl 601s exceeds task ledger-write's max_ttl of 10m (600s): ask for at most 600s"
    );

    r.requested_ttl = Some(Duration::ZERO);
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::TtlInvalid);
    assert_eq!(d.rule.oauth_error(), "invalid_request");
}

#[test]
fn source_must_be_in_the_tasks_networks() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    r.source = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::SourceNotAllowed);
    assert!(
        d.reason.starts_with("source address 192.0.2.1 is not in task ledger-write's source_cidrs (10.20.0.0/16 127.0.0.0/8)"),
        "{d}"
    );

    // IPv4-mapped IPv6 (a dual-stack listener) is the IPv4 address.
    r.source = IpAddr::V6(Ipv4Addr::new(10, 20, 3, 4).to_ipv6_mapped());
    grant(&set, &r);
    r.source = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    assert_eq!(denial(&set, &r).rule, Rule::SourceNotAllowed);
    r.source = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(denial(&set, &r).rule, Rule::SourceNotAllowed);

    // A task without source_cidrs accepts any source.
    let mut r = req("payments-api", "ledger-read");
    r.source = IpAddr::V6(Ipv6Addr::LOCALHOST);
    grant(&set, &r);
}

#[test]
fn binding_required_tasks_need_a_certificate_bound_request() {
    let text = PAYMENTS.replace(
        "max_ttl     = \"5m\"",
        "max_ttl     = \"5m\"\nrequire_binding = true",
    );
    let set = load(&[("p.toml", &text)]).unwrap();
    let mut r = req("payments-api", "ledger-read");
    let d = denial(&set, &r);
    assert_eq!(d.rule, Rule::BindingRequired);
    assert!(
        d.reason.contains("requires a certificate-bound token"),
        "{d}"
    );
    r.cert_bound = true;
    grant(&set, &r);
}

#[test]
fn explain_traces_every_rule_and_keeps_going_after_a_failure() {
    let set = payments();
    let mut r = req("payments-api", "ledger-write");
    let e = set.explain(&r);
    let rules: Vec<Rule> = e.trace.iter().map(|c| c.rule).collect();
    assert_eq!(
        rules,
        [
            Rule::UnknownIdentity,
            Rule::RegistrationExpired,
            Rule::UnknownTask,
            Rule::AudienceNotAllowed,
            Rule::AudienceEnvironment,
            Rule::ScopeNotAllowed,
            Rule::TtlTooLong,
            Rule::SourceNotAllowed,
            Rule::BindingRequired,
        ]
    );
    assert!(
        e.trace.iter().all(|c| c.passed && !c.detail.is_empty()),
        "{e:#?}"
    );
    assert_eq!(e.decision, set.evaluate(&r).decision);

    // Expired, too wide and from the wrong network: the first failure decides, all show.
    r.now = at("2028-01-01T00:00:00Z");
    r.scopes = Some(vec!["ledger:admin"]);
    r.source = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let e = set.explain(&r);
    let failed: Vec<Rule> = e
        .trace
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.rule)
        .collect();
    assert_eq!(
        failed,
        [
            Rule::RegistrationExpired,
            Rule::ScopeNotAllowed,
            Rule::SourceNotAllowed
        ]
    );
    match e.decision {
        Decision::Deny(d) => assert_eq!(d.rule, Rule::RegistrationExpired),
        Decision::Allow(_) => panic!("allowed"),
    }
}

#[test]
fn denial_reasons_are_safe_error_descriptions() {
    let set = payments();
    let long = "x".repeat(500);
    for task in ["l\u{e9}dger\"\\\n", long.as_str()] {
        let d = denial(&set, &req("payments-api", task));
        assert!(
            d.reason.bytes().all(|b| b == 0x20
                || b == 0x21
                || (0x23..=0x5B).contains(&b)
                || (0x5D..=0x7E).contains(&b)),
            "{:?}",
            d.reason
        );
        assert!(d.reason.len() < 200, "{}", d.reason.len());
    }
}

#[test]
fn rule_names_and_oauth_mapping() {
    let table = [
        (
            Rule::UnknownIdentity,
            "unknown_identity",
            "unauthorized_client",
            403,
        ),
        (
            Rule::RegistrationExpired,
            "registration_expired",
            "access_denied",
            403,
        ),
        (Rule::UnknownTask, "unknown_task", "invalid_request", 400),
        (
            Rule::AudienceNotAllowed,
            "audience_not_allowed",
            "invalid_target",
            400,
        ),
        (
            Rule::AudienceEnvironment,
            "audience_environment",
            "invalid_target",
            400,
        ),
        (
            Rule::ScopeNotAllowed,
            "scope_not_allowed",
            "invalid_scope",
            400,
        ),
        (Rule::TtlInvalid, "ttl_invalid", "invalid_request", 400),
        (Rule::TtlTooLong, "ttl_too_long", "invalid_request", 400),
        (
            Rule::SourceNotAllowed,
            "source_not_allowed",
            "access_denied",
            403,
        ),
        (
            Rule::BindingRequired,
            "binding_required",
            "access_denied",
            403,
        ),
    ];
    for (rule, name, error, status) in table {
        assert_eq!(rule.as_str(), name);
        assert_eq!(rule.to_string(), name);
        assert_eq!(rule.oauth_error(), error, "{name}");
        assert_eq!(rule.http_status(), status, "{name}");
    }
}

#[test]
fn policy_set_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySet>();
}

#[test]
fn third_party_registrations_are_capped_at_lint_time() {
    // PAYMENTS expires on 2027-02-01; as a third party that is over a 30-day cap.
    let third = PAYMENTS.replace("third_party = false", "third_party = true");
    let set = load(&[("pay.toml", &third)]).unwrap();
    let now = at("2026-11-23T00:00:00Z");
    let errs =
        crate::policy::check_third_party_registration(&set, Duration::from_secs(30 * 86_400), now);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains("pay.toml"), "{}", errs[0]);
    assert!(errs[0].to_string().contains("third-party"), "{}", errs[0]);
    // First-party identities are not capped.
    let set = load(&[("pay.toml", PAYMENTS)]).unwrap();
    assert!(
        crate::policy::check_third_party_registration(&set, Duration::from_secs(86_400), now)
            .is_empty()
    );
}

/// `[[task.delegation]]` loads with its defaults (the task's scopes and `max_ttl`, a
/// direct delegation), and each bad rule is a precise problem.
#[test]
fn delegation_rules_load_and_lint() {
    let from = "max_ttl     = \"5m\"\n";
    let with =
        |rule: &str| PAYMENTS.replacen(from, &format!("{from}\n[[task.delegation]]\n{rule}\n"), 1);
    let set = load(&[("pay.toml", &with("actors = [\"agent\"]"))]).unwrap();
    let task = set
        .identity("payments-api")
        .and_then(|i| i.task("ledger-read"))
        .unwrap();
    let rule = task.delegation_for("agent").expect("a rule for the agent");
    assert_eq!(rule.scopes, vec!["ledger:read".to_owned()]);
    assert_eq!(rule.max_ttl, Duration::from_secs(300));
    assert_eq!(rule.max_depth, 1);
    assert!(task.delegation_for("someone-else").is_none());
    let set = load(&[(
        "pay.toml",
        &with("actors = [\"a\", \"b\"]\nmax_ttl = \"1m\"\nmax_depth = 3"),
    )])
    .unwrap();
    let rule = set
        .identity("payments-api")
        .unwrap()
        .task("ledger-read")
        .unwrap()
        .delegation_for("b")
        .unwrap()
        .clone();
    assert_eq!((rule.max_ttl, rule.max_depth), (Duration::from_secs(60), 3));

    for (rule, needle) in [
        ("actors = []", "actors is empty"),
        ("actors = [\"bad name!\"]", "actor"),
        (
            "actors = [\"a\"]\nscopes = [\"ledger:write\"]",
            "not one of the task's scopes",
        ),
        (
            "actors = [\"a\"]\nmax_ttl = \"10m\"",
            "at most the task's max_ttl",
        ),
        ("actors = [\"a\"]\nmax_ttl = \"soon\"", "max_ttl"),
        (
            "actors = [\"a\"]\nmax_depth = 0",
            "max_depth must be from 1 to 4",
        ),
        (
            "actors = [\"a\"]\nmax_depth = 9",
            "max_depth must be from 1 to 4",
        ),
        ("actors = [\"a\"]\ncolour = \"red\"", "colour"),
    ] {
        let errs = load(&[("pay.toml", &with(rule))]).unwrap_err();
        assert_eq!(errs.len(), 1, "{rule}: {errs:#?}");
        assert!(
            errs[0].message.contains(needle),
            "{rule}: {}",
            errs[0].message
        );
        if !rule.contains("colour") {
            assert!(
                errs[0].message.contains("task ledger-read: delegation #1"),
                "{}",
                errs[0].message
            );
        }
    }
}
