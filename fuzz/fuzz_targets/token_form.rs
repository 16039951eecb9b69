//! The token-request form: `broker::issuance::parse::parse` (content type, the
//! urlencoded form, grant type, token-exchange and client-credentials parameters, client
//! assertion, task, audience/resource, scope splitting and its bounded record,
//! `requested_ttl`), plus `client_assertion` and `clip`.
//!
//! Input: the content type up to the first `\n`, then the body.
#![no_main]

use axum::body::Bytes;
use broker::audit::event::{AuditEvent, EventKind};
use broker::issuance::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (Some("application/x-www-form-urlencoded"), data),
    };
    let mut ev = AuditEvent::new(EventKind::Denied);
    match parse::parse(ct, Ok(Bytes::copy_from_slice(body)), &mut ev) {
        Ok(p) => {
            let _ = parse::clip(&p.task);
            let _ = p.scopes.as_ref().map(|s| s.len());
        }
        Err(r) => {
            let _ = (r.rule(), r.error());
        }
    }
    // The record a refusal writes must serialize.
    serde_json::to_vec(&ev).expect("audit event serializes");
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = parse::clip(s);
        let _ = parse::client_assertion(Some(s), Some(s));
        let _ = parse::client_assertion(
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            Some(s),
        );
    }
});
