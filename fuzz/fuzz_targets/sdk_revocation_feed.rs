//! The SDK's revocation feed: `broker_client::Verifier::sync_revocations` against a
//! loopback server answering `GET /v1/revocations?since=` with the input (the page, its
//! cursor, entries, rules; the resync when the cursor goes back; error answers), then
//! `verify` of valid broker tokens, which checks them against every rule the page left
//! (`FeedRule::covers`).
//!
//! Input: byte 0 picks the status; the rest is the first page (`since=0`), and after a
//! line `--` the page answered for any other `since` (default: the same page).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use broker_client::{Credential, Verifier};
use broker_fuzz::{Answer, CannedServer, access_claims, broker_key, broker_token};
use libfuzzer_sys::fuzz_target;

const AUD: &str = "https://ledger.prod.example.org";
const STATUSES: [u16; 6] = [200, 200, 200, 401, 403, 503];

fn server() -> &'static CannedServer {
    static S: OnceLock<CannedServer> = OnceLock::new();
    S.get_or_init(|| {
        let s = CannedServer::start();
        s.set(
            "/.well-known/jwks.json",
            Answer {
                status: 200,
                headers: vec![],
                body: broker_key().jwks_json.clone(),
            },
        );
        s
    })
}

fn tokens() -> &'static [String; 2] {
    static T: OnceLock<[String; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let url = &server().url;
        let a = access_claims(url, AUD);
        let mut b = a.clone();
        b["sub"] = "reports-batch".into();
        b["jti"] = "fuzz-jti-2".into();
        b["task"] = "report".into();
        b["iat"] = 0.into();
        b.as_object_mut().expect("object").remove("bg");
        [broker_token(&a), broker_token(&b)]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&s, rest)) = data.split_first() else {
        return;
    };
    let (first, later) = match rest.windows(4).position(|w| w == b"\n--\n") {
        Some(i) => (&rest[..i], &rest[i + 4..]),
        None => (rest, rest),
    };
    let srv = server();
    let status = STATUSES[usize::from(s) % STATUSES.len()];
    srv.set(
        "/v1/revocations?since=0",
        Answer {
            status,
            headers: vec![],
            body: first.to_vec(),
        },
    );
    srv.set(
        "/v1/revocations",
        Answer {
            status,
            headers: vec![],
            body: later.to_vec(),
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let v = Verifier::builder(srv.url.as_str(), AUD)
            .revocation_feed(
                Credential::provider(|| Ok("a.b.c".to_owned())),
                Duration::from_secs(3600),
            )
            .build()
            .expect("verifier builds");
        let _ = v.refetch_keys(true).await;
        let _ = v.sync_revocations().await;
        let _ = v.sync_revocations().await;
        for t in tokens() {
            let _ = v.verify(t, None).await;
        }
    });
});
