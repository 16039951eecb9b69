//! `GET /.well-known/jwks.json` (RFC 7517), `GET /.well-known/oauth-authorization-server`
//! (RFC 8414) and `GET /.well-known/openid-configuration` (OIDC Discovery 1.0).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::{GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE};
use serde_json::json;

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
        .map(|k| k.alg.clone())
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

/// Authorization server metadata (RFC 8414 §2): every endpoint the broker serves for
/// OAuth clients and how to authenticate at each. The in-process test
/// `metadata_names_every_oauth_endpoint_the_router_serves` keeps it in step with the router.
pub async fn metadata(State(st): State<AppState>) -> Response {
    let iss = st.minter.issuer().trim_end_matches('/');
    let algs = signing_algs(&st);
    // Callers authenticate with a TLS client certificate (RFC 8705 `tls_client_auth`),
    // an RFC 7523 client assertion (`private_key_jwt`: a workload JWT from a trusted
    // issuer, whose keys come from that issuer's JWKS), or `Authorization: Bearer
    // <workload JWT>`, which has no registered method name. At the token endpoint a
    // token exchange needs no client authentication (`none`): the subject token is the
    // credential.
    let caller_auth = ["tls_client_auth", "private_key_jwt"];
    let assertion_algs = st.authn.algorithms();
    Json(json!({
        "issuer": st.minter.issuer(),
        "token_endpoint": format!("{iss}{}", crate::api::TOKEN_PATH),
        "introspection_endpoint": format!("{iss}{}", crate::api::INTROSPECTION_PATH),
        "revocation_endpoint": format!("{iss}{}", crate::api::REVOCATION_PATH),
        "jwks_uri": format!("{iss}{}", crate::api::JWKS_PATH),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": ["none", "tls_client_auth", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_methods_supported": caller_auth,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint_auth_methods_supported": caller_auth,
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        // RFC 8414 requires the member and validators (authlib) refuse an empty list;
        // the broker has no authorization endpoint, and `none` (OAuth 2.0 Multiple
        // Response Type Encoding Practices §4) is the registered value that returns nothing.
        "response_types_supported": ["none"],
        "scopes_supported": scopes(&st),
        "access_token_signing_alg_values_supported": algs,
        "tls_client_certificate_bound_access_tokens": true,
    }))
    .into_response()
}

/// OpenID Provider metadata (OIDC Discovery 1.0 §3), for relying parties that discover
/// keys that way (cloud workload-identity federation, Vault's `jwt` auth): the issuer,
/// the JWKS, and what the tokens' signatures and subjects are. The broker issues access
/// tokens, not ID tokens; the fields the specification requires are filled truthfully.
pub async fn openid_configuration(State(st): State<AppState>) -> Response {
    let iss = st.minter.issuer().trim_end_matches('/');
    let mut res = Json(json!({
        "issuer": st.minter.issuer(),
        "jwks_uri": format!("{iss}{}", crate::api::JWKS_PATH),
        "token_endpoint": format!("{iss}{}", crate::api::TOKEN_PATH),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": signing_algs(&st),
        "scopes_supported": scopes(&st),
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "task", "env", "cnf"],
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_CLIENT_CREDENTIALS],
    }))
    .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    res
}
