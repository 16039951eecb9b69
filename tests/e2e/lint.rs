//! `broker policy lint`: every load-time error of issue 2 exits 1 and prints a
//! `FILE: message` line naming the broken file and saying what is wrong; a clean
//! directory exits 0. Issue 3: a `spiffe_id` outside every configured `[[client_ca]]`
//! trust domain is such an error (the config's CAs are made by `openssl`).

use std::path::PathBuf;

use broker_tests::mtls::{Mtls, PROD_TRUST_DOMAIN, reports_file};
use broker_tests::pki::tools_present;
use broker_tests::policy::{Identity, Matcher, PolicyFile, Task};
use broker_tests::{CmdOutput, DEV_LEDGER, Options, SUBJECT, TestBroker, lint, write_config};
use tempfile::TempDir;

/// A temp dir with a broker config (for its audience catalogue) and `policies/` holding the
/// default policies plus `extra`; returns the lint output.
fn lint_with(extra: &[(&str, String)]) -> (TempDir, PathBuf, CmdOutput) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.policies
        .extend(extra.iter().map(|(n, t)| ((*n).to_owned(), t.clone())));
    let config = write_config(dir.path(), &opts);
    let policies = dir.path().join("policies");
    let out = lint(&policies, Some(&config));
    (dir, policies, out)
}

/// The error lines that name `file` (a `FILE: message` line whose FILE ends in it).
fn lines_naming<'a>(out: &'a CmdOutput, file: &str) -> Vec<&'a str> {
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.split_once(": ").is_some_and(|(f, _)| f.ends_with(file)))
        .collect()
}

/// Asserts exit code 1 and one error line for `file` whose message has every word of
/// `gist` (case-insensitive); returns that line.
fn assert_lint_error<'a>(out: &'a CmdOutput, file: &str, gist: &[&str]) -> &'a str {
    assert_eq!(out.code, Some(1), "lint exits 1 on an error: {out}");
    let lines = lines_naming(out, file);
    let hit = lines.iter().find(|l| {
        let l = l.to_lowercase();
        gist.iter().all(|g| l.contains(&g.to_lowercase()))
    });
    match hit {
        Some(l) => l,
        None => panic!("no `{file}: ...` line mentioning {gist:?}: {out}"),
    }
}

fn lint_identity(id: &str, env: &str) -> Identity {
    Identity::prod(id, "team-x", "x@example.com", "lint test", "CHG-9").environment(env)
}

/// A valid single-identity policy file, `replace`d for the test at hand.
fn identity(id: &str, subject: &str, env: &str, audience: &str) -> String {
    PolicyFile::new(lint_identity(id, env).jwt(subject))
        .task(Task::new("t", audience, &["a:read"], "5m"))
        .render()
}

const PROD: &str = broker_tests::PROD_LEDGER;

#[test]
fn clean_directory_passes() {
    let (_d, _p, out) = lint_with(&[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("ok: 2 identities"), "{out}");
}

#[test]
fn missing_required_field_is_reported() {
    let text =
        identity("no-owner", "sa:no-owner", "prod", PROD).replace("owner = \"team-x\"\n", "");
    assert!(!text.contains("owner "));
    let (_d, _p, out) = lint_with(&[("no-owner.toml", text)]);
    assert_lint_error(&out, "no-owner.toml", &["missing", "owner"]);
}

#[test]
fn duplicate_ids_across_files_are_reported() {
    let (_d, _p, out) = lint_with(&[
        ("dup-a.toml", identity("twin-id", "sa:dup-a", "prod", PROD)),
        ("dup-b.toml", identity("twin-id", "sa:dup-b", "prod", PROD)),
    ]);
    assert_eq!(out.code, Some(1), "{out}");
    let line = both_files_line(&out, "dup-a.toml", "dup-b.toml")
        .unwrap_or_else(|| panic!("no line naming both files: {out}"));
    assert!(
        line.to_lowercase().contains("duplicate"),
        "says duplicate: {line}"
    );
    assert!(line.contains("twin-id"), "names the id: {line}");
}

#[test]
fn two_identities_matching_the_same_caller_are_reported() {
    let (_d, _p, out) =
        lint_with(&[("impostor.toml", identity("impostor", SUBJECT, "prod", PROD))]);
    assert_eq!(out.code, Some(1), "{out}");
    // Either file may carry the error (load order); the line names both files and the caller.
    let line = both_files_line(&out, "impostor.toml", "payments-api.toml")
        .unwrap_or_else(|| panic!("no line naming both identities' files: {out}"));
    assert!(line.contains(SUBJECT), "names the caller: {line}");
    assert!(line.to_lowercase().contains("identit"), "says why: {line}");
}

/// A `FILE: message` line whose FILE is `a` or `b` and whose message names the other.
fn both_files_line<'a>(out: &'a CmdOutput, a: &str, b: &str) -> Option<&'a str> {
    lines_naming(out, a)
        .into_iter()
        .chain(lines_naming(out, b))
        .find(|l| l.contains(a) && l.contains(b))
}

#[test]
fn unknown_key_is_reported() {
    let text = identity("typo", "sa:typo", "prod", PROD)
        .replace("[[task]]\n", "[[task]]\nmax_tll = \"5m\"\n");
    let (_d, _p, out) = lint_with(&[("typo.toml", text)]);
    assert_lint_error(&out, "typo.toml", &["unknown", "max_tll"]);
}

#[test]
fn task_audience_not_in_the_catalogue_is_reported() {
    let (_d, _p, out) = lint_with(&[(
        "stray.toml",
        identity("stray", "sa:stray", "prod", "https://nowhere.example.org"),
    )]);
    assert_lint_error(
        &out,
        "stray.toml",
        &["https://nowhere.example.org", "catalogue"],
    );
}

#[test]
fn task_audience_of_another_environment_is_reported() {
    let (_d, _p, out) = lint_with(&[(
        "crossing.toml",
        identity("crossing", "sa:crossing", "prod", DEV_LEDGER),
    )]);
    let line = assert_lint_error(&out, "crossing.toml", &[DEV_LEDGER, "environment"]);
    assert!(
        line.contains("dev") && line.contains("prod"),
        "names both environments: {line}"
    );
}

/// A single-identity policy proved by `spiffe_id`.
fn spiffe_identity(id: &str, spiffe_id: &str) -> String {
    PolicyFile::new(lint_identity(id, "prod").matcher(Matcher::spiffe(spiffe_id)))
        .task(Task::new("t", PROD, &["a:read"], "5m"))
        .render()
}

#[test]
fn spiffe_id_outside_every_configured_trust_domain_is_reported() {
    if !tools_present(
        "spiffe_id_outside_every_configured_trust_domain_is_reported",
        &["openssl"],
    ) {
        return;
    }
    // A TLS config with the mTLS registry: client CAs prod-spiffe (trust domain
    // prod.example.org) and corp (none).
    let m = Mtls::new();
    let clean = tempfile::tempdir().unwrap();
    let config = write_config(clean.path(), &m.options());
    let out = lint(&clean.path().join("policies"), Some(&config));
    assert_eq!(out.code, Some(0), "the mTLS registry lints clean: {out}");
    assert!(out.stdout.starts_with("ok: 4 identities"), "{out}");

    // Inside the trust domain: fine. Outside every configured one: an error naming it.
    let outsider = "spiffe://evil.example.org/ns/x/sa/y";
    let mut opts = m.options();
    opts.policies.push((
        "insider.toml".to_owned(),
        spiffe_identity("insider", "spiffe://prod.example.org/ns/x/sa/y"),
    ));
    opts.policies.push((
        "outsider.toml".to_owned(),
        spiffe_identity("outsider", outsider),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &opts);
    let out = lint(&dir.path().join("policies"), Some(&config));
    let line = assert_lint_error(&out, "outsider.toml", &[outsider, "trust domain"]);
    assert!(
        line.contains(PROD_TRUST_DOMAIN),
        "names the configured domains: {line}"
    );
    assert!(
        lines_naming(&out, "insider.toml").is_empty(),
        "a SPIFFE ID inside the trust domain is fine: {out}"
    );

    // The broker will not serve such a registry either.
    let mut b = TestBroker::prepare(opts);
    let err = b
        .launch()
        .expect_err("the broker must not start with a SPIFFE ID outside every trust domain");
    assert!(err.stderr.contains("outsider.toml"), "{err}");
}

#[test]
fn certificate_matcher_naming_an_unconfigured_ca_is_reported() {
    if !tools_present(
        "certificate_matcher_naming_an_unconfigured_ca_is_reported",
        &["openssl"],
    ) {
        return;
    }
    let m = Mtls::new();
    let mut opts = m.options();
    let mut reports = reports_file();
    reports.identity.matchers[0].ca = Some("no-such-ca".to_owned());
    let (file, text) = reports.entry();
    let slot = opts
        .policies
        .iter_mut()
        .find(|(name, _)| *name == file)
        .expect("the mTLS registry has reports-batch.toml");
    slot.1 = text;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &opts);
    let out = lint(&dir.path().join("policies"), Some(&config));
    let line = assert_lint_error(
        &out,
        "reports-batch.toml",
        &["ca = \"no-such-ca\"", "names no [[client_ca]]"],
    );
    assert!(line.contains("corp"), "names the configured CAs: {line}");

    // The broker will not serve such a registry either.
    let mut b = TestBroker::prepare(opts);
    let err = b
        .launch()
        .expect_err("the broker must not start with a matcher naming an unknown CA");
    assert!(err.stderr.contains("reports-batch.toml"), "{err}");
}
