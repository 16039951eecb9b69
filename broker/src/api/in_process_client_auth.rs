//! In-process tests of client authentication (RFC 7523 client assertions) and of what a
//! workload JWT must be to count as an identity (RFC 8725 explicit typing, unique claim
//! names, bounded lifetimes, single use): one test per refusal, each checking the answer
//! and the `denied` record's rule.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::in_process::{Answer, InProcess};
use crate::authn::CLIENT_ASSERTION_TYPE_JWT_BEARER;
use crate::clock::Clock;
use crate::dev::{DEV_AUDIENCE, DEV_ISSUER, DEV_SUBJECT, DEV_TASK};

/// 2098-10-01: inside the dev registration, outside its recertification window.
const T0: u64 = 4_070_908_800 - 92 * 86_400;
/// The in-process broker's issuer (`serve --dev` on 127.0.0.1:8080).
const BROKER: &str = "http://127.0.0.1:8080";
const PEER: &str = "127.0.0.1:5000";

fn assertion_claims(b: &InProcess, jti: &str) -> Value {
    let now = b.clock.unix_secs();
    json!({
        "iss": DEV_ISSUER, "sub": DEV_SUBJECT, "aud": BROKER,
        "iat": now, "exp": now + 120, "jti": jti,
    })
}

async fn client_credentials(b: &InProcess, assertion: &str) -> Answer {
    b.token_form(
        &[
            ("grant_type", "client_credentials"),
            ("task", DEV_TASK),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
            ("client_assertion", assertion),
        ],
        PEER,
    )
    .await
}

fn exchange(jwt: &str) -> Vec<(&str, &str)> {
    vec![
        (
            "grant_type",
            broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
        ),
        ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
        ("subject_token", jwt),
        ("task", DEV_TASK),
    ]
}

/// The answer is `status`/`error` and the newest `denied` record has `rule`.
fn assert_refused(b: &InProcess, r: &Answer, status: StatusCode, error: &str, rule: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"], error, "{}", r.body);
    let d = b.last_denial();
    assert_eq!(d["rule"], rule, "{d}");
    if status == StatusCode::UNAUTHORIZED {
        assert!(
            r.headers.get("www-authenticate").is_some(),
            "RFC 6749 §5.2: 401 carries WWW-Authenticate"
        );
    }
}

/// `client_credentials` with a client assertion (aud = the issuer, or the token
/// endpoint) issues a token for the identity the assertion proves, recorded with the
/// assertion's issuer and subject.
#[tokio::test]
async fn a_client_assertion_authenticates_client_credentials() {
    let b = InProcess::start_at(T0, "").await;
    let a = b.dev_issuer_jwt(Some("JWT"), &assertion_claims(&b, "a-1"));
    let r = client_credentials(&b, &a).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let issued = b.records_of("issued");
    assert_eq!(issued[0]["identity"], "demo-workload");
    assert_eq!(issued[0]["evidence"]["subject"], DEV_SUBJECT);
    assert_eq!(issued[0]["evidence"]["kind"], "jwt");

    let mut claims = assertion_claims(&b, "a-2");
    claims["aud"] = json!(format!("{BROKER}/oauth2/token"));
    let a = b.dev_issuer_jwt(None, &claims);
    let r = client_credentials(&b, &a).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "token endpoint as aud: {}",
        r.body
    );
}

/// One refusal per way a client assertion fails: missing, replayed, expired, for
/// another audience, from an untrusted issuer, without `jti`, of an unknown type.
#[tokio::test]
async fn each_client_assertion_failure_is_invalid_client_with_its_rule() {
    let b = InProcess::start_at(T0, "").await;
    let now = b.clock.unix_secs();
    let unauthorized = StatusCode::UNAUTHORIZED;

    // Missing: client_credentials with no client authentication at all.
    let r = b
        .token_form(
            &[("grant_type", "client_credentials"), ("task", DEV_TASK)],
            PEER,
        )
        .await;
    assert_refused(
        &b,
        &r,
        unauthorized,
        "invalid_client",
        "client_certificate_required",
    );
    // Missing: the type without the assertion.
    let r = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("task", DEV_TASK),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
            ],
            PEER,
        )
        .await;
    assert_refused(
        &b,
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "malformed_request",
    );

    // Replayed.
    let a = b.dev_issuer_jwt(Some("JWT"), &assertion_claims(&b, "once"));
    assert_eq!(client_credentials(&b, &a).await.status, StatusCode::OK);
    let r = client_credentials(&b, &a).await;
    assert_refused(&b, &r, unauthorized, "invalid_client", "token_replayed");

    // Expired.
    let mut c = assertion_claims(&b, "old");
    c["iat"] = json!(now - 600);
    c["exp"] = json!(now - 300);
    let r = client_credentials(&b, &b.dev_issuer_jwt(Some("JWT"), &c)).await;
    assert_refused(&b, &r, unauthorized, "invalid_client", "token_expired");

    // Wrong audience: the subject-token audience is not this broker's identifier.
    let mut c = assertion_claims(&b, "aud");
    c["aud"] = json!(DEV_AUDIENCE);
    let r = client_credentials(&b, &b.dev_issuer_jwt(Some("JWT"), &c)).await;
    assert_refused(&b, &r, unauthorized, "invalid_client", "wrong_audience");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains(BROKER),
        "names what aud must be: {}",
        r.body
    );

    // Untrusted issuer.
    let mut c = assertion_claims(&b, "iss");
    c["iss"] = json!("https://evil.example");
    let r = client_credentials(&b, &b.dev_issuer_jwt(Some("JWT"), &c)).await;
    assert_refused(&b, &r, unauthorized, "invalid_client", "untrusted_issuer");

    // No jti: a client assertion must be single-use, so it needs one.
    let mut c = assertion_claims(&b, "x");
    c.as_object_mut().unwrap().remove("jti");
    let r = client_credentials(&b, &b.dev_issuer_jwt(Some("JWT"), &c)).await;
    assert_refused(&b, &r, unauthorized, "invalid_client", "missing_claim");

    // Another assertion type.
    let r = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("task", DEV_TASK),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
                ),
                ("client_assertion", "x"),
            ],
            PEER,
        )
        .await;
    assert_refused(
        &b,
        &r,
        unauthorized,
        "invalid_client",
        "client_assertion_type_unsupported",
    );
    assert!(
        b.records_of("issued").len() == 1,
        "only the first use issued"
    );
}

/// A token exchange whose client assertion proves another identity than the subject
/// token is refused (acting for another identity is delegation); the same identity
/// passes.
#[tokio::test]
async fn a_client_assertion_and_subject_token_must_prove_one_identity() {
    let b = InProcess::start_at(T0, "").await;
    let subject = b.jwt(DEV_SUBJECT);
    let mut form = exchange(&subject);
    let a = b.dev_issuer_jwt(Some("JWT"), &assertion_claims(&b, "same"));
    form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER));
    form.push(("client_assertion", &a));
    let r = b.token_form(&form, PEER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // An assertion for a subject no identity is registered for.
    let mut c = assertion_claims(&b, "other");
    c["sub"] = json!("system:serviceaccount:dev:other");
    let other = b.dev_issuer_jwt(Some("JWT"), &c);
    let mut form = exchange(&subject);
    form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER));
    form.push(("client_assertion", &other));
    let r = b.token_form(&form, PEER).await;
    assert_refused(
        &b,
        &r,
        StatusCode::FORBIDDEN,
        "unauthorized_client",
        "unknown_identity",
    );
}

/// RFC 7009 revocation authenticated by a client assertion whose `aud` is the
/// revocation endpoint: the workload revokes its own token.
#[tokio::test]
async fn a_client_assertion_authenticates_revocation() {
    let b = InProcess::start_at(T0, "").await;
    let r = b.token(PEER).await;
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let mut c = assertion_claims(&b, "rev");
    c["aud"] = json!(format!("{BROKER}/oauth2/revoke"));
    let a = b.dev_issuer_jwt(Some("JWT"), &c);
    let r = b
        .post_form(
            "/oauth2/revoke",
            &[
                ("token", &token),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
                ("client_assertion", &a),
            ],
            PEER,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let revoked = b.records_of("revoked");
    assert_eq!(revoked.len(), 1, "{revoked:#?}");
    assert_eq!(revoked[0]["actor"], "identity:demo-workload");

    // The same assertion again: replayed.
    let r = b
        .post_form(
            "/oauth2/revoke",
            &[
                ("token", &token),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
                ("client_assertion", &a),
            ],
            PEER,
        )
        .await;
    assert_refused(
        &b,
        &r,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "token_replayed",
    );
}

/// RFC 8725 §3.11 / RFC 9068 §4: a JWT typed as an access token is never an identity,
/// nor is a type the issuer's tokens do not carry; a broker access token presented as a
/// subject token is refused.
#[tokio::test]
async fn access_tokens_and_foreign_types_are_not_identities() {
    let b = InProcess::start_at(T0, "").await;
    let now = b.clock.unix_secs();
    let claims = json!({
        "iss": DEV_ISSUER, "sub": DEV_SUBJECT, "aud": DEV_AUDIENCE,
        "iat": now, "exp": now + 300,
    });
    for typ in ["at+jwt", "application/at+JWT", "secevent+jwt"] {
        let t = b.dev_issuer_jwt(Some(typ), &claims);
        let r = b.token_form(&exchange(&t), PEER).await;
        assert_refused(
            &b,
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "token_type_not_allowed",
        );
    }
    // Without typ, and as application/jwt: accepted.
    for typ in [None, Some("application/jwt")] {
        let t = b.dev_issuer_jwt(typ, &claims);
        let r = b.token_form(&exchange(&t), PEER).await;
        assert_eq!(r.status, StatusCode::OK, "{typ:?}: {}", r.body);
    }
    // The broker's own access token as a subject token: not from a trusted issuer.
    let access = b.token(PEER).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b.token_form(&exchange(&access), PEER).await;
    assert_refused(
        &b,
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "untrusted_issuer",
    );
}

/// Duplicate claim names (a parser differential), lifetimes past the issuer's maximum,
/// and NumericDates out of range are refused, each with its rule.
#[tokio::test]
async fn duplicate_claims_long_lifetimes_and_absurd_dates_are_refused() {
    let b = InProcess::start_at(T0, "").await;
    let now = b.clock.unix_secs();
    let dup = format!(
        r#"{{"iss":"{DEV_ISSUER}","sub":"system:serviceaccount:dev:evil","aud":"{DEV_AUDIENCE}","iat":{now},"exp":{},"sub":"{DEV_SUBJECT}"}}"#,
        now + 300
    );
    let r = b
        .token_form(&exchange(&b.dev_issuer_jwt_raw(&dup)), PEER)
        .await;
    assert_refused(
        &b,
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "token_malformed",
    );
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("\"sub\" appears twice"),
        "{}",
        r.body
    );

    let ten_years = 10 * 365 * 86_400;
    for (iat, exp) in [(Some(now), now + ten_years), (None, now + ten_years)] {
        let mut c = json!({"iss": DEV_ISSUER, "sub": DEV_SUBJECT, "aud": DEV_AUDIENCE, "exp": exp});
        if let Some(iat) = iat {
            c["iat"] = json!(iat);
        }
        let r = b
            .token_form(&exchange(&b.dev_issuer_jwt(Some("JWT"), &c)), PEER)
            .await;
        assert_refused(
            &b,
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "lifetime_too_long",
        );
    }
    for exp in ["1e300", "1180591620717411303424", "-5", "\"soon\""] {
        let raw = format!(
            r#"{{"iss":"{DEV_ISSUER}","sub":"{DEV_SUBJECT}","aud":"{DEV_AUDIENCE}","iat":{now},"exp":{exp}}}"#
        );
        let r = b
            .token_form(&exchange(&b.dev_issuer_jwt_raw(&raw)), PEER)
            .await;
        assert_refused(
            &b,
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "invalid_claim",
        );
        assert!(
            !r.body["error_description"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "exp {exp} is not described as expired: {}",
            r.body
        );
    }
}

/// An issuer marked `single_use`: each of its tokens (by `jti`, then required) is
/// exchanged once.
#[tokio::test]
async fn a_single_use_issuers_tokens_are_exchanged_once() {
    let b = InProcess::start_edited(T0, |_, text| {
        assert!(text.contains("jwks_file = \"dev-issuer-jwks.json\""));
        text.replace(
            "jwks_file = \"dev-issuer-jwks.json\"",
            "jwks_file = \"dev-issuer-jwks.json\"\nsingle_use = true",
        )
    })
    .await;
    let now = b.clock.unix_secs();
    let mut c = json!({
        "iss": DEV_ISSUER, "sub": DEV_SUBJECT, "aud": DEV_AUDIENCE,
        "iat": now, "exp": now + 300, "jti": "w-1",
    });
    let t = b.dev_issuer_jwt(Some("JWT"), &c);
    let r = b.token_form(&exchange(&t), PEER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = b.token_form(&exchange(&t), PEER).await;
    assert_refused(
        &b,
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "token_replayed",
    );
    c.as_object_mut().unwrap().remove("jti");
    let r = b
        .token_form(&exchange(&b.dev_issuer_jwt(Some("JWT"), &c)), PEER)
        .await;
    assert_refused(
        &b,
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "missing_claim",
    );
}
