//! `broker policy explain`: the dry run prints every rule it checked (`pass`/`FAIL`) and the
//! decision, and exits 0 on ALLOW and 1 on DENY. The identity is found by id, or by issuer
//! and subject (plus `--claim`s for identities that match on exact claims) as the token
//! path would find it.

use std::path::{Path, PathBuf};

use broker_tests::{
    CI_IDENTITY, CI_SUBJECT, CmdOutput, EXPIRED_IDENTITY, IDENTITY, ISSUER, Options, PROD_LEDGER,
    SUBJECT, TASK, TASK_MAX_TTL, ci_policy, run_broker, write_config,
};
use tempfile::TempDir;

/// A config with the default policies plus the CI identity.
fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.policies.push(("payments-ci.toml".into(), ci_policy()));
    let config = write_config(dir.path(), &opts);
    (dir, config)
}

fn explain(config: &Path, args: &[&str]) -> CmdOutput {
    let mut all = vec!["policy", "explain", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_broker(all)
}

/// The `pass`/`FAIL` lines, as (passed, rule).
fn trace(out: &CmdOutput) -> Vec<(bool, String)> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let (mark, rest) = l.split_once("  ")?;
            let passed = match mark {
                "pass" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some((passed, rest.split_whitespace().next()?.to_owned()))
        })
        .collect()
}

#[test]
fn allowed_request_passes_every_rule_and_prints_the_grant() {
    let (_d, config) = setup();
    let out = explain(&config, &["--identity", IDENTITY, "--task", TASK]);
    assert_eq!(out.code, Some(0), "{out}");
    let trace = trace(&out);
    assert!(trace.len() >= 4, "every rule is listed: {out}");
    assert!(trace.iter().all(|(passed, _)| *passed), "{out}");
    for rule in ["registration_expired", "unknown_task", "scope_not_allowed"] {
        assert!(trace.iter().any(|(_, r)| r == rule), "{rule} listed: {out}");
    }
    let allow = out
        .stdout
        .lines()
        .find(|l| l.starts_with("ALLOW"))
        .unwrap_or_else(|| panic!("an ALLOW line: {out}"));
    assert!(allow.contains(&format!("identity={IDENTITY}")), "{allow}");
    assert!(allow.contains(&format!("aud={PROD_LEDGER}")), "{allow}");
    assert!(
        allow.contains("scope=\"ledger:read ledger:write\""),
        "{allow}"
    );
    assert!(allow.contains(&format!("ttl={TASK_MAX_TTL}s")), "{allow}");
    assert!(allow.contains("env=prod"), "{allow}");
}

#[test]
fn narrowing_is_granted_exactly() {
    let (_d, config) = setup();
    let out = explain(
        &config,
        &[
            "--identity",
            IDENTITY,
            "--task",
            TASK,
            "--scope",
            "ledger:read",
            "--ttl",
            "60",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("scope=\"ledger:read\" ttl=60s"),
        "{out}"
    );
}

#[test]
fn denials_name_the_failed_rule_and_exit_1() {
    let (_d, config) = setup();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "--identity",
                IDENTITY,
                "--task",
                TASK,
                "--scope",
                "ledger:admin",
            ],
            "scope_not_allowed",
            "invalid_scope",
        ),
        (
            &["--identity", IDENTITY, "--task", TASK, "--ttl", "601"],
            "ttl_too_long",
            "invalid_request",
        ),
        (
            &["--identity", IDENTITY, "--task", "no-such-task"],
            "unknown_task",
            "invalid_request",
        ),
        (
            &[
                "--identity",
                IDENTITY,
                "--task",
                "ledger-office",
                "--source",
                "192.0.2.7",
            ],
            "source_not_allowed",
            "access_denied",
        ),
        (
            &["--identity", EXPIRED_IDENTITY, "--task", "ledger-read"],
            "registration_expired",
            "access_denied",
        ),
    ];
    for (args, rule, code) in cases {
        let out = explain(&config, args);
        assert_eq!(out.code, Some(1), "{args:?}: {out}");
        let trace = trace(&out);
        assert!(
            trace.iter().any(|(passed, r)| !passed && r == rule),
            "{args:?}: a FAIL line for {rule}: {out}"
        );
        let deny = out
            .stdout
            .lines()
            .find(|l| l.starts_with("DENY"))
            .unwrap_or_else(|| panic!("{args:?}: a DENY line: {out}"));
        assert!(deny.contains(rule), "{deny}");
        assert!(deny.contains(code), "{deny}");
        assert!(!out.stdout.contains("ALLOW"), "{out}");
    }
}

#[test]
fn issuer_and_subject_find_the_identity_as_the_token_path_does() {
    let (_d, config) = setup();
    let out = explain(
        &config,
        &["--issuer", ISSUER, "--subject", SUBJECT, "--task", TASK],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains(&format!("is identity {IDENTITY}")),
        "{out}"
    );

    let out = explain(
        &config,
        &[
            "--issuer",
            "https://other.test",
            "--subject",
            SUBJECT,
            "--task",
            TASK,
        ],
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("DENY  unknown_identity"), "{out}");
}

#[test]
fn claim_matched_identities_need_their_claims() {
    let (_d, config) = setup();
    let base = [
        "--issuer",
        ISSUER,
        "--subject",
        CI_SUBJECT,
        "--task",
        "deploy",
    ];

    let with_claims = |claims: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        for c in claims {
            args.extend(["--claim", c]);
        }
        explain(&config, &args)
    };

    let without = with_claims(&[]);
    assert_eq!(without.code, Some(1), "{without}");
    assert!(
        without.stdout.contains("DENY  unknown_identity"),
        "{without}"
    );

    let out = with_claims(&["repository=acme/payments", "ref=refs/heads/main"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains(&format!("is identity {CI_IDENTITY}")),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("ALLOW identity={CI_IDENTITY}")),
        "{out}"
    );

    let out = with_claims(&["repository=acme/payments", "ref=refs/heads/dev"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("DENY  unknown_identity"), "{out}");

    let bad = with_claims(&["no-equals"]);
    assert_eq!(
        bad.code,
        Some(2),
        "a malformed --claim is a usage error: {bad}"
    );
}
