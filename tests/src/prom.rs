//! Reading `/metrics` pages (Prometheus text) and checking them, and the docs' alert
//! rules, with the real `promtool` (Debian package `prometheus`). Without `promtool` a
//! test that needs it skips with a note, and fails under `CI=true`
//! ([`crate::pki::tools_present`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::CmdOutput;

/// The value of the sample whose name and labels are exactly `series` (as the page
/// renders them, e.g. `broker_tokens_issued_total` or
/// `broker_token_request_duration_seconds_count{outcome="issued"}`); `None` if absent.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// [`sample`], or a panic that shows the page.
pub fn sample_of(page: &str, series: &str) -> f64 {
    sample(page, series).unwrap_or_else(|| panic!("{series} in /metrics:\n{page}"))
}

/// The metric family names the page declares (`# TYPE name type`).
pub fn families(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The repository's `docs/` directory.
pub fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("docs")
}

/// `true` when `promtool` runs; otherwise skips `test` with a note, or panics under
/// `CI=true`.
pub fn promtool_present(test: &str) -> bool {
    crate::pki::tools_present(test, &["promtool"])
}

/// `promtool check metrics` with `page` on stdin.
pub fn check_metrics(page: &str) -> CmdOutput {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(page.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `promtool check rules <file>`.
pub fn check_rules(file: &Path) -> CmdOutput {
    CmdOutput::of(Command::new("promtool").args(["check", "rules"]).arg(file))
}
