//! `GET /.well-known/jwks.json` (RFC 7517) and
//! `GET /.well-known/oauth-authorization-server` (RFC 8414).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::{GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE};
use serde_json::json;

use crate::api::AppState;

/// The published signing keys.
pub async fn jwks(State(st): State<AppState>) -> Response {
    let mut res = Json(st.minter.jwks()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    res
}

/// Authorization server metadata.
pub async fn metadata(State(st): State<AppState>) -> Response {
    let iss = st.minter.issuer().trim_end_matches('/');
    let algs: Vec<&str> = st
        .minter
        .key_ring()
        .jwks()
        .keys
        .iter()
        .map(|k| if k.alg == "EdDSA" { "EdDSA" } else { "ES256" })
        .collect();
    Json(json!({
        "issuer": st.minter.issuer(),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": ["none", "tls_client_auth"],
        "response_types_supported": [],
        "access_token_signing_alg_values_supported": algs,
        "tls_client_certificate_bound_access_tokens": true,
    }))
    .into_response()
}
