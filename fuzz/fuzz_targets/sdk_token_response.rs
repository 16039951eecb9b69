//! The SDK's token response: `broker_client::TokenSource::token` against a loopback
//! server answering `POST /oauth2/token` with the input (status, `Retry-After`, body):
//! the `TokenResponse` and `ErrorResponse` parsing, the expiry and renewal arithmetic,
//! the error mapping. Also every public wire type of `broker_client::types` parsed
//! directly from the body.
//!
//! Input: byte 0 picks the status, byte 1 the `Retry-After` header, the rest is the body.
//!
//! A crash it found, now fixed (the SDK cuts `expires_in` to 24 h; regression tests in
//! `client-sdk/src/source.rs`; inputs in `fuzz/regressions/sdk_token_response/`); the
//! mask that let the first runs look for others is off unless `FUZZ_MASK_KNOWN=1`: a 2xx answer whose
//! `expires_in` is near `u64::MAX` panics in `client-sdk/src/source.rs` (`sent_at +
//! tr.expires_in` overflows, line 488, with debug assertions; `Instant::now() + renew_in`
//! panics "overflow when adding duration to instant", line 499, in release builds too).
//! The mask skips bodies whose `expires_in` is above 10^15 s (30 million years).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use broker_client::types::{
    ErrorResponse, IdentityStateResponse, IntrospectionResponse, RevocationResponse,
    TokenResponse,
};
use broker_client::{Credential, TokenSource};
use broker_fuzz::{Answer, CannedServer};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 200, 400, 401, 429, 500, 503, 201];

fn server() -> &'static CannedServer {
    static S: OnceLock<CannedServer> = OnceLock::new();
    S.get_or_init(CannedServer::start)
}

fuzz_target!(|data: &[u8]| {
    let [s, h, body @ ..] = data else {
        return;
    };
    let tr = serde_json::from_slice::<TokenResponse>(body);
    if let Ok(tr) = &tr
        && tr.expires_in > 1_000_000_000_000_000
        && std::env::var_os("FUZZ_MASK_KNOWN").is_some()
    {
        return;
    }
    let _ = serde_json::from_slice::<ErrorResponse>(body);
    let _ = serde_json::from_slice::<IntrospectionResponse>(body);
    let _ = serde_json::from_slice::<RevocationResponse>(body);
    let _ = serde_json::from_slice::<IdentityStateResponse>(body);
    let headers = match h % 4 {
        0 => vec![],
        1 => vec!["retry-after: 2".to_owned()],
        2 => vec![format!("retry-after: {}", u64::MAX)],
        _ => vec!["retry-after: soon".to_owned()],
    };
    let srv = server();
    srv.set(
        "/oauth2/token",
        Answer {
            status: STATUSES[usize::from(*s) % STATUSES.len()],
            headers,
            body: body.to_vec(),
        },
    );
    // A runtime per input: the source's renewer task ends with it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let source = TokenSource::builder(srv.url.as_str(), "ledger-write")
            .credential(Credential::provider(|| Ok("a.b.c".to_owned())))
            .scope("ledger:read")
            .timeout(Duration::from_secs(5))
            .build()
            .expect("source builds");
        match source.token().await {
            Ok(t) => {
                let _ = (t.expose().len(), t.expires_at(), t.scope().len());
                // A second call is served from the cache (or fetches again).
                let _ = source.token().await;
            }
            Err(e) => {
                let _ = (e.to_string(), e.is_retryable());
            }
        }
    });
});
