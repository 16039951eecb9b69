//! `GET /.well-known/jwks.json` (RFC 7517), `GET /.well-known/oauth-authorization-server`
//! (RFC 8414) and `GET /.well-known/openid-configuration` (OIDC Discovery 1.0).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::{
    AuthorizationServerMetadata, GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE,
    OpenIdConfiguration,
};

use crate::api::AppState;

/// The published signing keys.
pub async fn jwks(State(st): State<AppState>) -> Response {
    let jwks = st.minter.jwks();
    let mut res = Json(&*jwks).into_response();
    // Never longer than `prepublish` (checked at config load): a verifier's cached copy
    // holds a new key before it signs.
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", st.jwks_max_age.as_secs()))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    res
}

/// The algorithms of the keys this broker (and its replicas) sign with.
fn signing_algs(st: &AppState) -> Vec<String> {
    let mut algs: Vec<String> = st
        .minter
        .jwks()
        .keys
        .iter()
        .filter_map(|k| k.alg.clone())
        .collect();
    algs.sort();
    algs.dedup();
    algs
}

/// Every scope a loaded policy grants.
fn scopes(st: &AppState) -> Vec<String> {
    let policies = st.policies.current();
    let mut scopes: Vec<String> = policies
        .identities()
        .flat_map(|i| i.tasks.iter().flat_map(|t| t.scopes.iter().cloned()))
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// Owned copies of `items`, for the metadata's lists.
fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The grant types the token endpoint takes.
fn grant_types() -> Vec<String> {
    strings(&[GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_CLIENT_CREDENTIALS])
}

/// How callers authenticate at the introspection and revocation endpoints: a TLS client
/// certificate (RFC 8705 `tls_client_auth`), an RFC 7523 client assertion
/// (`private_key_jwt`: a workload JWT from a trusted issuer, whose keys come from that
/// issuer's JWKS), or `Authorization: Bearer <workload JWT>`, which has no registered
/// method name.
const CALLER_AUTH: &[&str] = &["tls_client_auth", "private_key_jwt"];

/// How callers authenticate at the token endpoint: as at the others, and a token exchange
/// needs no client authentication (`none`): the subject token is the credential.
const TOKEN_ENDPOINT_AUTH: &[&str] = &["none", "tls_client_auth", "private_key_jwt"];

/// Authorization server metadata (RFC 8414 §2): every endpoint the broker serves for
/// OAuth clients and how to authenticate at each. The in-process test
/// `metadata_names_every_oauth_endpoint_the_router_serves` keeps it in step with the router.
pub async fn metadata(State(st): State<AppState>) -> Response {
    let iss = st.minter.issuer().trim_end_matches('/');
    let caller_auth = strings(CALLER_AUTH);
    let assertion_algs = st.authn.algorithms();
    Json(AuthorizationServerMetadata {
        access_token_signing_alg_values_supported: signing_algs(&st),
        dpop_signing_alg_values_supported: strings(broker_client::dpop::DPOP_SIGNING_ALGS),
        grant_types_supported: grant_types(),
        introspection_endpoint: format!("{iss}{}", crate::api::INTROSPECTION_PATH),
        introspection_endpoint_auth_methods_supported: caller_auth.clone(),
        introspection_endpoint_auth_signing_alg_values_supported: assertion_algs.clone(),
        issuer: st.minter.issuer().to_owned(),
        jwks_uri: format!("{iss}{}", crate::api::JWKS_PATH),
        // RFC 8414 requires the member and validators (authlib) refuse an empty list;
        // the broker has no authorization endpoint, and `none` (OAuth 2.0 Multiple
        // Response Type Encoding Practices §4) is the registered value that returns nothing.
        response_types_supported: strings(&["none"]),
        revocation_endpoint: format!("{iss}{}", crate::api::REVOCATION_PATH),
        revocation_endpoint_auth_methods_supported: caller_auth,
        revocation_endpoint_auth_signing_alg_values_supported: assertion_algs.clone(),
        scopes_supported: scopes(&st),
        tls_client_certificate_bound_access_tokens: true,
        token_endpoint: format!("{iss}{}", crate::api::TOKEN_PATH),
        token_endpoint_auth_methods_supported: strings(TOKEN_ENDPOINT_AUTH),
        token_endpoint_auth_signing_alg_values_supported: assertion_algs,
    })
    .into_response()
}

/// The claims of the broker's access tokens, as OIDC discovery lists them.
const CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "task",
    "env",
    "cnf",
];

/// OpenID Provider metadata (OIDC Discovery 1.0 §3), for relying parties that discover
/// keys that way (cloud workload-identity federation, Vault's `jwt` auth): the issuer,
/// the JWKS, and what the tokens' signatures and subjects are. The broker issues access
/// tokens, not ID tokens; the fields the specification requires are filled truthfully.
pub async fn openid_configuration(State(st): State<AppState>) -> Response {
    let iss = st.minter.issuer().trim_end_matches('/');
    let mut res = Json(OpenIdConfiguration {
        claims_supported: strings(CLAIMS),
        grant_types_supported: grant_types(),
        id_token_signing_alg_values_supported: signing_algs(&st),
        issuer: st.minter.issuer().to_owned(),
        jwks_uri: format!("{iss}{}", crate::api::JWKS_PATH),
        response_types_supported: strings(&["id_token"]),
        scopes_supported: scopes(&st),
        subject_types_supported: strings(&["public"]),
        token_endpoint: format!("{iss}{}", crate::api::TOKEN_PATH),
    })
    .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    res
}
