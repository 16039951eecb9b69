//! The workload JWT path: `broker::authn::jws::parse` (compact split, header, strict claims
//! object), `strict_object`, `check_algorithm`, `KeySet::from_jwks_json`, and the whole
//! `Authenticator` (issuer lookup, algorithm allow-list, `typ`, key lookup in a file JWKS,
//! signature, then the time, audience, `sub` and `jti` claim checks) as identity and as a
//! client assertion.
//!
//! Input: the first byte picks the mode.
//! - `0..=127`: the rest is a compact JWS as sent (signature almost never valid: this
//!   fuzzes everything before and at the signature check).
//! - `128..=255`: the rest is `header JSON` `\0` `claims JSON`, which the target signs
//!   ES256 with the test issuer's key, so the claim checks after the signature are
//!   reached with arbitrary headers and claims.
#![no_main]

use std::sync::{Arc, OnceLock};

use broker::authn::{Authenticator, Presentation, jws};
use broker::clock::ManualClock;
use broker::config::{JwksSource, TrustedIssuer};
use broker_fuzz::{NOW, TEST_AUDIENCE, TEST_ISSUER, runtime, sign_es256, test_fixtures};
use libfuzzer_sys::fuzz_target;

fn authenticator() -> &'static Authenticator {
    static A: OnceLock<Authenticator> = OnceLock::new();
    A.get_or_init(|| {
        let jwks = JwksSource::File(test_fixtures().join("issuer-jwks.json"));
        let mut issuer = TrustedIssuer::with_defaults(
            TEST_ISSUER,
            &[TEST_AUDIENCE],
            &["RS256", "PS256", "ES256", "ES384", "EdDSA"],
            jwks.clone(),
        );
        issuer.max_age = Some(std::time::Duration::from_secs(3600));
        // A second issuer whose tokens are single-use (needs `jti`).
        let mut single = TrustedIssuer::with_defaults(
            "https://single.test",
            &[TEST_AUDIENCE],
            &["ES256", "RS256"],
            jwks,
        );
        single.single_use = true;
        let clock = Arc::new(ManualClock::at_unix(NOW));
        let a = Authenticator::new(&[issuer, single], clock).expect("authenticator");
        let failed = runtime().block_on(a.preload());
        assert!(failed.is_empty(), "fixture JWKS must load: {failed:?}");
        a
    })
}

fn check(token: &str, assertion: bool) {
    // The pure parser on its own (what every path calls first).
    if let Ok(p) = jws::parse(token) {
        let _ = jws::check_algorithm(&p.header.alg, &[jws::JwsAlgorithm::ES256]);
        let _ = p.claims.len();
    }
    let a = authenticator();
    let how = if assertion {
        Presentation::ClientAssertion {
            audiences: &[String::from("https://broker.test/oauth2/token")],
        }
    } else {
        Presentation::Identity
    };
    let r = runtime().block_on(a.authenticate(token, how));
    if let Err(e) = r {
        // What the handlers do with a refusal: its message and rule.
        let _ = (e.public_message(), e.rule(), e.is_unavailable());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = jws::strict_object(rest);
    let _ = jws::KeySet::from_jwks_json(rest);
    if mode < 128 {
        if let Ok(token) = std::str::from_utf8(rest) {
            check(token, mode & 1 == 1);
        }
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&br#"{"alg":"ES256","kid":"test-ec-1","typ":"JWT"}"#[..], rest),
        };
        let token = sign_es256(header, claims);
        check(&token, mode & 1 == 1);
    }
});
