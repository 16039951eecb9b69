//! The SDK's JWKS and token parsing on the resource side: `broker_client::Verifier`
//! fetching `/.well-known/jwks.json` from a loopback server (the JWKS parser: key types,
//! curves, base64url points), then `verify` (compact split, `typ at+jwt`, the claims
//! object, `kid` lookup, signature, `iss`/`aud`/`exp`/`nbf`/scope/`cnf` checks).
//!
//! Input: the first byte picks the mode (`% 3`):
//! - 0: the rest is the JWKS document; a valid broker token is then verified with it.
//! - 1: the rest is a token, verified with the real JWKS.
//! - 2: the rest is a claims object, signed (ES256, `typ at+jwt`) with the real key and
//!   verified, so the claim checks after the signature are reached.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::mint::keys::Signer as _;
use broker_client::Verifier;
use broker_fuzz::{Answer, CannedServer, access_claims, broker_key, broker_token};
use libfuzzer_sys::fuzz_target;

const AUD: &str = "https://ledger.prod.example.org";

fn server() -> &'static CannedServer {
    static S: OnceLock<CannedServer> = OnceLock::new();
    S.get_or_init(CannedServer::start)
}

fn good_token() -> &'static String {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| broker_token(&access_claims(&server().url, AUD)))
}

fn sign_raw_claims(claims: &[u8]) -> String {
    let k = broker_key();
    let header = serde_json::json!({"alg": "ES256", "kid": k.signer.kid(), "typ": "at+jwt"});
    let mut s = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("json"));
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let sig = k.signer.sign(s.as_bytes()).expect("sign");
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(sig));
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let srv = server();
    let (jwks, token) = match mode % 3 {
        0 => (rest.to_vec(), good_token().clone()),
        1 => match std::str::from_utf8(rest) {
            Ok(t) => (broker_key().jwks_json.clone(), t.to_owned()),
            Err(_) => return,
        },
        _ => (broker_key().jwks_json.clone(), sign_raw_claims(rest)),
    };
    srv.set(
        "/.well-known/jwks.json",
        Answer {
            status: 200,
            headers: vec![],
            body: jwks,
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let v = Verifier::builder(srv.url.as_str(), AUD)
            .require_scope("ledger:read")
            .build()
            .expect("verifier builds");
        let _ = v.refetch_keys(true).await;
        let _ = v.verify(&token, None).await;
        let _ = v.verify(&token, Some(b"not a certificate")).await;
    });
    let _ = Duration::ZERO;
});
