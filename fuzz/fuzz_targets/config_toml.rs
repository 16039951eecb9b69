//! The config loader: `broker::config::Config::from_toml` (TOML, then every validation:
//! listen address, TLS files, durations, trusted issuers and their JWKS sources and URLs,
//! audiences, client CAs, store, admins, break-glass, HTTP limits, anomaly settings), and
//! the small parsers it uses (`parse_duration`, `normalized_typ`, `key_fetch_url_allowed`).
//!
//! Input: the config file's text. Relative paths resolve in an empty scratch directory.
#![no_main]

use std::sync::OnceLock;

use broker::config::{self, Config};
use broker_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let base = BASE.get_or_init(scratch);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A config naming a device or a FIFO as a file to read (store.password_file) is the
    // operator's doing, not outside input: keep the fuzzer off character devices.
    if text.contains("/dev/") || text.contains("/proc/") || text.contains("/sys/") {
        return;
    }
    // Known crash (reported, `fuzz/regressions/config_toml/`): a duration whose parts sum
    // past `Duration::MAX` panics in `parse_duration`. Masked so the run looks for others.
    if broker_fuzz::has_known_duration_overflow(text) {
        return;
    }
    let path = base.path().join("broker.toml");
    match Config::from_toml(text, &path, base.path()) {
        Ok(c) => {
            let _ = (c.client_ca_names(), c.trust_domains());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for line in text.lines().take(8) {
        let _ = config::parse_duration(line);
        let _ = config::normalized_typ(line);
        let _ = config::key_fetch_url_allowed(line);
    }
});
