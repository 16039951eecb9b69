//! The audit segment reader and `audit verify`: `broker::audit::verify` over a directory
//! whose files come from the input (record lines, the hash chain, seqs, segment order,
//! the signed head anchor and its points), and `AuditLog::open`, which reads the same
//! segments at start-up and repairs a torn tail.
//!
//! The fixed files come from a real log (`fuzz/fixtures/audit/`, made by `gen-seeds` with
//! `fuzz/fixtures/broker-es256.pk8`), so a mutated segment still meets a valid, signed
//! head anchor and the checks past the anchor are reached.
//!
//! Input: the first byte picks the mode (`% 4`):
//! - 0: the rest is `audit-000001.log`; `head.json` is the real anchor. `verify`.
//! - 1: the rest is `head.json`; the segment is the real one. `verify`.
//! - 2: the rest is `audit-000001.log`; `AuditLog::open` (recovery, repair), close, `verify`.
//! - 3: the second byte splits the rest into `audit-000001.log` and `audit-000002.log`.
#![no_main]

use std::sync::{Arc, OnceLock};

use broker::audit::{AuditLog, AuditOptions, verify};
use broker::clock::ManualClock;
use broker::mint::keys::{Jwks, LocalSigner, Signer};
use broker_fuzz::{NOW, fuzz_dir, runtime, scratch};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    head: Vec<u8>,
    segment: Vec<u8>,
    jwks: Jwks,
    signer: Arc<dyn Signer>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = fuzz_dir().join("fixtures/audit");
        let der = std::fs::read(fuzz_dir().join("fixtures/broker-es256.pk8")).expect("key");
        let signer: Arc<dyn Signer> = Arc::new(LocalSigner::from_pkcs8(&der).expect("key"));
        Fixture {
            head: std::fs::read(d.join("head.json")).expect("head.json"),
            segment: std::fs::read(d.join("audit-000001.log")).expect("segment"),
            jwks: Jwks {
                keys: vec![signer.public_jwk()],
            },
            signer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let dir = scratch();
    let p = dir.path();
    let write = |name: &str, bytes: &[u8]| std::fs::write(p.join(name), bytes).expect("write");
    match mode % 4 {
        0 => {
            write("head.json", &f.head);
            write("audit-000001.log", rest);
        }
        1 => {
            write("head.json", rest);
            write("audit-000001.log", &f.segment);
        }
        2 => {
            write("head.json", &f.head);
            write("audit-000001.log", rest);
            let opts = AuditOptions {
                dir: p.to_path_buf(),
                segment_max_bytes: 1 << 20,
                replica: None,
            };
            let clock = Arc::new(ManualClock::at_unix(NOW));
            if let Ok(log) = AuditLog::open(opts, Arc::clone(&f.signer), clock) {
                runtime().block_on(log.close());
                // What start-up leaves must verify (a repair is a record, not a break).
                if let Err(e) = verify(p, &f.jwks) {
                    panic!("log opened (and repaired) by AuditLog::open does not verify: {e}");
                }
            }
            return;
        }
        _ => {
            let Some((&cut, segs)) = rest.split_first() else {
                return;
            };
            let at = segs.len() * usize::from(cut) / 256;
            write("head.json", &f.head);
            write("audit-000001.log", &segs[..at]);
            write("audit-000002.log", &segs[at..]);
        }
    }
    match verify(p, &f.jwks) {
        Ok(report) => {
            let _ = report.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
