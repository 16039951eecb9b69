//! DPoP (RFC 9449, issue 14) through the real binary: proofs made by an outside JOSE
//! library (Python authlib, the pinned conformance venv) bind tokens (`cnf.jkt`,
//! `token_type: DPoP`) at the token endpoint; a replayed proof, a proof for another URL or
//! method, a stale `iat`, and a task that requires DPoP without a proof are refused; at a
//! resource server the SDK verifier accepts the holder's proof and refuses a replay,
//! another URL, another key, and the token presented as a bearer token.

use std::path::Path;
use std::sync::Arc;

use broker_client::dpop::{DpopError, DpopKey};
use broker_client::{Credential, DpopRequest, TokenSource, Verifier, VerifyError};
use broker_tests::admin::{revocation_options, revocation_registry};
use broker_tests::policy::{Binding, Task, entries, identity_mut};
use broker_tests::{
    BROKER_ISSUER, IDENTITY, PROD_LEDGER, Reply, SUBJECT, TASK, TestBroker, TokenRequest,
    insecure_claims, rs256,
};
use serde_json::{Value, json};

use crate::conformance::{PYTHON_SRC, python_env, python_json};

/// A task of the payments identity that issues only DPoP-bound tokens.
const DPOP_TASK: &str = "ledger-dpop";
/// The resource URL the resource-side proofs are for.
const RESOURCE_URL: &str = "http://ledger.test/v1/entries";

/// The revocation registry with [`DPOP_TASK`] added to [`IDENTITY`].
fn start() -> TestBroker {
    let mut registry = revocation_registry();
    identity_mut(&mut registry, IDENTITY).tasks.push(
        Task::new(DPOP_TASK, PROD_LEDGER, &["ledger:read"], "5m").require_binding(Binding::Dpop),
    );
    let mut opts = revocation_options();
    opts.policies = entries(&registry);
    // The widest window the broker allows: the proofs below are made up front, and on a
    // loaded CI machine the requests that use them can come well after their `iat`.
    opts.extra_toml.push_str("\n[dpop]\nmax_age = \"5m\"\n");
    TestBroker::start(opts)
}

/// Proofs from authlib: `specs` as `tests/conformance/python/dpop.py` takes them, with
/// the key `key` (a private JWK from an earlier call) or a new one of `alg`.
fn authlib_proofs(venv: &Path, alg: &str, key: Option<&Value>, specs: &Value) -> Value {
    let script = Path::new(PYTHON_SRC).join("dpop.py");
    let input = json!({ "alg": alg, "key": key, "proofs": specs });
    python_json(venv, &[script.as_os_str()], &input, "dpop.py")
}

async fn token_with_proof(b: &TestBroker, task: &str, proof: Option<&str>) -> Reply {
    b.token_with_dpop(&TokenRequest::exchange(&rs256(SUBJECT), task), proof)
        .await
}

/// The SDK verifier of the ledger's tokens.
fn verifier(b: &TestBroker) -> Verifier {
    Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer(BROKER_ISSUER)
        .build()
        .unwrap()
}

/// A token source for the DPoP-only task, binding its tokens to `key`.
fn dpop_source(b: &TestBroker, key: &Arc<DpopKey>) -> TokenSource {
    let jwt = rs256(SUBJECT);
    TokenSource::builder(b.base_url(), DPOP_TASK)
        .credential(Credential::provider(move || Ok(jwt.clone())))
        .dpop(Arc::clone(key))
        .build()
        .unwrap()
}

fn last_rule(b: &TestBroker) -> String {
    b.records_of("denied").pop().expect("a denied record")["rule"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dpop_proofs_from_an_outside_library_bind_tokens_and_bad_ones_are_refused() {
    let test = "dpop::dpop_proofs_from_an_outside_library_bind_tokens_and_bad_ones_are_refused";
    let Some(venv) = python_env(test) else {
        return;
    };
    let b = start();
    let md: Value = b
        .client()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            b.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        md["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"]),
        "{md}"
    );
    let htu = format!("{}/oauth2/token", b.base_url());
    let a = authlib_proofs(
        &venv,
        "ES256",
        None,
        &json!([
            { "htm": "POST", "htu": htu },
            { "htm": "POST", "htu": format!("{}/oauth2/introspect", b.base_url()) },
            { "htm": "GET", "htu": htu },
            { "htm": "POST", "htu": htu, "iat_offset": -600 },
            { "htm": "POST", "htu": htu },
        ]),
    );
    let made = std::time::Instant::now();
    let jkt = a["jkt"].as_str().unwrap().to_owned();
    let proofs: Vec<String> = a["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();

    // Bound: token_type DPoP, cnf.jkt the proof key's thumbprint, in introspection too.
    let r = token_with_proof(&b, TASK, Some(&proofs[0])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token_type"], "DPoP");
    let token = r.access_token().unwrap().to_owned();
    assert_eq!(insecure_claims(&token)["cnf"], json!({ "jkt": jkt }));
    let intro = b.introspect(&token).await;
    assert_eq!(intro["token_type"], "DPoP", "{intro}");
    assert_eq!(intro["cnf"]["jkt"], jkt.as_str());
    let rec = b.records_of("issued").pop().unwrap();
    assert_eq!(rec["dpop_jkt"], jkt.as_str());

    // Refused at the token endpoint, each with its rule.
    for (proof, rule) in [
        (&proofs[0], "dpop_replayed"),
        (&proofs[1], "dpop_url"),
        (&proofs[2], "dpop_method"),
        (&proofs[3], "dpop_stale"),
    ] {
        let r = token_with_proof(&b, TASK, Some(proof)).await;
        let age = made.elapsed();
        assert_eq!(
            r.status, 400,
            "{rule} ({age:?} after the proofs): {}",
            r.text
        );
        assert_eq!(r.error(), Some("invalid_dpop_proof"), "{rule}");
        assert_eq!(last_rule(&b), rule, "{age:?} after the proofs");
    }
    // A task that requires DPoP: refused without a proof, issued with one.
    let r = token_with_proof(&b, DPOP_TASK, None).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(last_rule(&b), "dpop_required");
    let r = token_with_proof(&b, DPOP_TASK, Some(&proofs[4])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // An EdDSA proof from authlib.
    let ed = authlib_proofs(
        &venv,
        "EdDSA",
        None,
        &json!([{ "htm": "POST", "htu": htu }]),
    );
    let r = token_with_proof(&b, TASK, ed["proofs"][0].as_str()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        insecure_claims(r.access_token().unwrap())["cnf"]["jkt"],
        ed["jkt"]
    );

    // The resource side, with the SDK verifier: the holder's proof for this request. The
    // verifier keeps the SDK's 60 s window, so its proofs are made last, just before use.
    let other_key = authlib_proofs(
        &venv,
        "ES256",
        None,
        &json!([{ "htm": "GET", "htu": RESOURCE_URL, "ath_of": token }]),
    );
    let rs = authlib_proofs(
        &venv,
        "ES256",
        Some(&a["key"]),
        &json!([
            { "htm": "GET", "htu": RESOURCE_URL, "ath_of": token },
            { "htm": "GET", "htu": "http://ledger.test/v1/other", "ath_of": token },
            { "htm": "GET", "htu": RESOURCE_URL },
            { "htm": "POST", "htu": RESOURCE_URL, "ath_of": token },
            { "htm": "GET", "htu": RESOURCE_URL, "ath_of": token, "iat_offset": -600 },
        ]),
    );
    assert_eq!(rs["jkt"], jkt.as_str(), "the same key");
    let v = verifier(&b);
    fn req(proof: &Value) -> DpopRequest<'_> {
        DpopRequest {
            proof: proof.as_str().unwrap(),
            method: "GET",
            url: RESOURCE_URL,
        }
    }
    let claims = v
        .verify_dpop(&token, req(&rs["proofs"][0]), None)
        .await
        .unwrap();
    assert_eq!(claims.cnf.unwrap().jkt.as_deref(), Some(jkt.as_str()));
    assert_eq!(
        v.verify_dpop(&token, req(&rs["proofs"][0]), None).await,
        Err(VerifyError::Dpop(DpopError::Replayed))
    );
    assert_eq!(
        v.verify_dpop(&token, req(&rs["proofs"][1]), None).await,
        Err(VerifyError::Dpop(DpopError::Url))
    );
    assert_eq!(
        v.verify_dpop(&token, req(&rs["proofs"][2]), None).await,
        Err(VerifyError::Dpop(DpopError::AccessTokenHash)),
        "a proof without ath"
    );
    assert_eq!(
        v.verify_dpop(&token, req(&rs["proofs"][3]), None).await,
        Err(VerifyError::Dpop(DpopError::Method)),
        "a proof for another method"
    );
    assert_eq!(
        v.verify_dpop(&token, req(&rs["proofs"][4]), None).await,
        Err(VerifyError::Dpop(DpopError::Stale)),
        "a stale iat"
    );
    assert_eq!(
        v.verify_dpop(&token, req(&other_key["proofs"][0]), None)
            .await,
        Err(VerifyError::Dpop(DpopError::WrongKey))
    );
    assert_eq!(
        v.verify(&token, None).await,
        Err(VerifyError::DpopRequired),
        "a DPoP-bound token is no bearer token"
    );
}

/// The SDK end to end: a `TokenSource` with a DPoP key gets bound tokens, and the
/// verifier accepts the SDK's own proofs for a request.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_makes_dpop_bound_tokens_and_proofs() {
    let b = start();
    let key = Arc::new(DpopKey::generate_ed25519().unwrap());
    let source = dpop_source(&b, &key);
    let t = source.token().await.unwrap();
    assert_eq!(insecure_claims(t.expose())["cnf"]["jkt"], key.thumbprint());
    let v = verifier(&b);
    let proof = key
        .proof("GET", RESOURCE_URL, Some(t.expose()), None)
        .unwrap();
    let req = DpopRequest {
        proof: &proof,
        method: "GET",
        url: RESOURCE_URL,
    };
    v.verify_dpop(t.expose(), req, None).await.unwrap();
}

async fn whoami(
    broker_client::axum_extract::Authenticated(c): broker_client::axum_extract::Authenticated,
) -> String {
    c.sub
}

/// The axum extractor on the resource side: `AuthorizedClient` with a DPoP token source
/// is served (it sends `Authorization: DPoP` and a fresh proof per request); the same
/// token as `Bearer`, or with a proof for another URL, gets 401 with a `DPoP` challenge.
#[tokio::test(flavor = "multi_thread")]
async fn the_axum_extractor_checks_dpop_proofs() {
    let b = start();
    let v = verifier(&b);
    let app = axum::Router::new()
        .route("/whoami", axum::routing::get(whoami))
        .with_state(v);
    let base = broker_tests::sdk_support::serve(app).await;
    let url = format!("{base}/whoami");
    let key = Arc::new(DpopKey::generate_es256().unwrap());
    let source = dpop_source(&b, &key);
    let client = broker_client::AuthorizedClient::new(reqwest::Client::new(), source.clone());
    for _ in 0..2 {
        let req = client.client().get(&url).build().unwrap();
        let res = client.execute(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), broker_tests::IDENTITY);
    }
    let token = source.token().await.unwrap();
    let http = reqwest::Client::new();
    let challenge = |res: &reqwest::Response| {
        res.headers()
            .get("www-authenticate")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // As a bearer token.
    let res = http
        .get(&url)
        .header("authorization", format!("Bearer {}", token.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(challenge(&res).starts_with("DPoP "), "{}", challenge(&res));
    // With a proof for another URL.
    let proof = key
        .proof("GET", &format!("{base}/other"), Some(token.expose()), None)
        .unwrap();
    let res = http
        .get(&url)
        .header("authorization", format!("DPoP {}", token.expose()))
        .header("dpop", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        challenge(&res).contains("error=\"invalid_dpop_proof\""),
        "{}",
        challenge(&res)
    );
    // Without a DPoP header.
    let res = http
        .get(&url)
        .header("authorization", format!("DPoP {}", token.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(challenge(&res).contains("invalid_dpop_proof"));
}
