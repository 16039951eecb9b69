//! Whether one of the broker's own tokens is active (RFC 7662): signed by a key this
//! broker (or a replica) publishes, issued by it, inside its time window, and not revoked.
//! The introspection handler translates the answer; this knows nothing of HTTP.

use broker_client::types::{AccessTokenClaims, IntrospectionResponse};

use crate::mint::verify;
use crate::state::AppState;

/// Clock-skew allowance for `nbf`, seconds.
pub const NBF_LEEWAY_SECS: u64 = 5;

/// The claims of `token` if it is active now, else `None` (never why: RFC 7662 §2.2).
pub fn active_claims(st: &AppState, token: &str) -> Option<AccessTokenClaims> {
    let claims = verify::verify_signature(token, &st.minter.jwks(), st.minter.issuer()).ok()?;
    verify::check_time(&claims, st.clock.unix_secs(), NBF_LEEWAY_SECS).ok()?;
    let policies = st.policies.current();
    let owner_of = |id: &str| policies.identity(id).map(|i| i.owner.clone());
    if st.revocations.revoked(&claims, &owner_of).is_some() {
        return None;
    }
    Some(claims)
}

/// The RFC 7662 answer for `token`.
pub fn introspect(st: &AppState, token: &str) -> IntrospectionResponse {
    match active_claims(st, token) {
        Some(claims) => IntrospectionResponse {
            active: true,
            token_type: Some(
                if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                    "DPoP"
                } else {
                    "Bearer"
                }
                .into(),
            ),
            claims: Some(claims),
        },
        None => IntrospectionResponse {
            active: false,
            token_type: None,
            claims: None,
        },
    }
}
