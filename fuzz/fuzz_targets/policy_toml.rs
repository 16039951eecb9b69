//! The policy loader: `broker::policy::load::from_sources` (TOML registry files: identity,
//! matchers, tasks, durations, CIDRs, rate limits, expiry dates) and, for a set that
//! loads, the lookups and `evaluate`/`explain` of every task with fixed and hostile
//! request values, and `load_dir` over the same text written to a file.
//!
//! Input: one policy file's text, or two separated by a line `#--next-file--`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker::config::AudienceEntry;
use broker::policy::Request;
use broker::policy::{PolicySet, from_sources, load_dir};
use broker_fuzz::{NOW, fuzz_dir, scratch};
use libfuzzer_sys::fuzz_target;

fn audiences() -> Vec<AudienceEntry> {
    let text =
        std::fs::read_to_string(fuzz_dir().join("fixtures/audiences.json")).expect("audiences");
    serde_json::from_str(&text).expect("audiences.json")
}

fn exercise(set: &PolicySet) {
    let _ = (set.len(), set.is_empty());
    let claims = serde_json::Map::new();
    let _ = set.match_jwt("https://issuer.test", "system:serviceaccount:a:b", &claims);
    let _ = set.match_spiffe_id("spiffe://prod.example.org/ns/payments/sa/api");
    let _ = set.match_cert(Some("x"), &["a.example.org".into()], Some("internal"));
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    for id in set.identities() {
        let _ = (id.expires_at(), id.matchers.iter().map(|m| m.ca()).count(), id.task("x"));
        for task in &id.tasks {
            for (source, ttl, scopes, at) in [
                (IpAddr::V4(Ipv4Addr::new(10, 20, 1, 2)), None, None, now),
                (
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    Some(Duration::from_secs(u64::MAX)),
                    Some(vec![""]),
                    SystemTime::UNIX_EPOCH,
                ),
                (
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Some(Duration::from_secs(1)),
                    Some(task.scopes.iter().map(String::as_str).collect()),
                    now + Duration::from_secs(100 * 365 * 86400),
                ),
            ] {
                let req = Request {
                    identity: &id.id,
                    task: &task.name,
                    audience: Some(task.audience.as_str()),
                    scopes,
                    requested_ttl: ttl,
                    source,
                    now: at,
                    cert_bound: false,
                };
                let e = set.evaluate(&req);
                let _ = set.explain(&req);
                let _ = format!("{e:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Known crash (reported, `fuzz/regressions/config_toml/`): a `max_ttl` whose parts sum
    // past `Duration::MAX` panics in `broker::config::parse_duration`. Masked.
    if broker_fuzz::has_known_duration_overflow(text) {
        return;
    }
    let auds = audiences();
    let tds = ["prod.example.org".to_owned(), "spiffe://dev.example.org/".to_owned()];
    let files: Vec<&str> = text.split("\n#--next-file--\n").take(4).collect();
    let names: Vec<String> = (0..files.len()).map(|i| format!("p{i}.toml")).collect();
    let r = from_sources(
        names.iter().map(|n| Path::new(n.as_str())).zip(files.iter().copied()),
        &auds,
        &tds,
    );
    match r {
        Ok(set) => {
            exercise(&set);
            let _ = broker::policy::check_client_ca_names(&set, &["internal".into()]);
        }
        Err(errors) => {
            for e in errors {
                let _ = e.to_string();
            }
        }
    }
    // The directory loader reads the same bytes from disk (one file).
    if files.len() == 1 {
        let dir = scratch();
        std::fs::write(dir.path().join("a.toml"), data).expect("write");
        let _ = load_dir(dir.path(), &auds, &[]);
    }
});
