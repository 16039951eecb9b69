//! The client-certificate identity extraction: `broker::authn::mtls::PeerCert::from_der`
//! (X.509 DER, SAN URIs and DNS names, subject CN, thumbprints), then `spiffe_id` (one
//! SPIFFE ID, trust domain) and `identity` against the repository's `policies/`.
//!
//! Input: a DER certificate (what the TLS layer hands over after chain verification).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use broker::authn::mtls::PeerCert;
use broker::config::AudienceEntry;
use broker::policy::PolicySet;
use broker_fuzz::fuzz_dir;
use libfuzzer_sys::fuzz_target;

fn policies() -> &'static PolicySet {
    static P: OnceLock<PolicySet> = OnceLock::new();
    P.get_or_init(|| {
        let dir = fuzz_dir().join("../policies");
        let mut texts = Vec::new();
        for e in std::fs::read_dir(&dir).expect("policies/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                texts.push((p.clone(), std::fs::read_to_string(&p).expect("read")));
            }
        }
        let audiences = broker_fuzz_audiences();
        broker::policy::from_sources(
            texts.iter().map(|(p, t)| (p.as_path(), t.as_str())),
            &audiences,
            &["prod.example.org".into(), "staging.example.org".into()],
        )
        .unwrap_or_else(|e| panic!("policies/ must load: {:?}", e.iter().map(|x| x.to_string()).collect::<Vec<_>>()))
    })
}

fn broker_fuzz_audiences() -> Vec<AudienceEntry> {
    let text = std::fs::read_to_string(fuzz_dir().join("fixtures/audiences.json")).expect("audiences");
    serde_json::from_str(&text).expect("audiences.json")
}

fuzz_target!(|data: &[u8]| {
    for (ca, td) in [
        (Some("spiffe-prod"), Some("prod.example.org")),
        (Some("internal"), None),
        (None, None),
    ] {
        let Ok(pc) = PeerCert::from_der(data, ca.map(String::from), td.map(String::from)) else {
            return;
        };
        let _ = pc.spiffe_id();
        let _ = pc.identity(policies());
    }
    let _ = Path::new("");
});
