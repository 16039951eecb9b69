//! Examples and benchmark tooling for the JIT token broker.
//!
//! The `loadgen` binary (`cargo run --release -p broker-examples --bin loadgen -- --help`)
//! drives `POST /oauth2/token` over loopback and reports issuances per second and latency
//! percentiles. The small, dependency-free pieces it needs live here so they can be tested:
//! form encoding, duration parsing, percentile maths, and reading a process's peak RSS and
//! CPU time from `/proc`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

/// Percent-encodes `value` for an `application/x-www-form-urlencoded` body.
///
/// Everything except the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded
/// as `%XX`, so `+`, `=`, `&` and spaces in a value can never change the form's structure.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / 4);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Builds a form body from `(name, value)` pairs, percent-encoding names and values.
pub fn form_body<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&form_encode(name));
        out.push('=');
        out.push_str(&form_encode(value));
    }
    out
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad duration {text:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1_000.0,
        "us" | "µs" => n / 1_000_000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3_600.0,
        other => bail!("bad duration unit {other:?} in {text:?}: use ms, s, m or h"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {text:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Latency summary, in microseconds, of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: u32,
    /// 90th percentile.
    pub p90: u32,
    /// 99th percentile.
    pub p99: u32,
    /// 99.9th percentile.
    pub p999: u32,
    /// Largest sample.
    pub max: u32,
    /// Smallest sample.
    pub min: u32,
    /// Arithmetic mean.
    pub mean: u32,
}

/// Sorts `samples` in place and returns the nearest-rank percentiles.
pub fn percentiles(samples: &mut [u32]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |q: f64| -> u32 {
        // Nearest-rank: the smallest value with at least q of the samples at or below it.
        let r = (q * n as f64).ceil() as usize;
        samples[r.clamp(1, n) - 1]
    };
    let sum: u64 = samples.iter().map(|&v| u64::from(v)).sum();
    Percentiles {
        count: n,
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        p999: rank(0.999),
        max: samples[n - 1],
        min: samples[0],
        mean: u32::try_from(sum / n as u64).unwrap_or(u32::MAX),
    }
}

/// CPU time and memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
}

/// Reads CPU time (`/proc/PID/stat`) and RSS (`/proc/PID/status`) of `pid`
/// (`"self"` for this process). `ticks_per_sec` is the kernel's `USER_HZ`.
pub fn proc_sample(pid: &str, ticks_per_sec: f64) -> anyhow::Result<ProcSample> {
    let base = Path::new("/proc").join(pid);
    let stat = std::fs::read_to_string(base.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(base.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    Ok(ProcSample {
        cpu_secs: ticks as f64 / ticks_per_sec,
        peak_rss_kib: parse_status_kib(&status, "VmHWM").unwrap_or(0),
        rss_kib: parse_status_kib(&status, "VmRSS").unwrap_or(0),
    })
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': skip past
    // the last ')'. What follows starts at field 3 (state); utime is field 14, stime 15.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/PID/stat")?
            .parse::<u64>()
            .context("malformed /proc/PID/stat field")
    };
    Ok(field(14)? + field(15)?)
}

/// `(flags, utime + stime)` from the text of `/proc/PID/stat`.
pub fn parse_stat_flags_and_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/PID/stat")?;
    let flags = rest
        .split_whitespace()
        .nth(9 - 3)
        .context("short /proc/PID/stat")?
        .parse::<u64>()
        .context("malformed /proc/PID/stat flags")?;
    Ok((flags, parse_stat_cpu_ticks(stat)?))
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// CPU seconds used so far by all kernel threads (kworkers doing writeback, ksoftirqd, ...).
/// Kernel threads live for the whole run, so the difference of two readings is their share.
pub fn kernel_threads_cpu_secs(ticks_per_sec: f64) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Ok((flags, t)) = parse_stat_flags_and_ticks(&stat)
            && flags & PF_KTHREAD != 0
        {
            ticks += t;
        }
    }
    ticks as f64 / ticks_per_sec
}

/// A `Key:   1234 kB` value from the text of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// The kernel's `USER_HZ` (clock ticks per second in `/proc/PID/stat`), from
/// `getconf CLK_TCK`; 100 (the value on every mainstream Linux port) if that fails.
pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&v| v > 0.0)
        .unwrap_or(100.0)
}

/// Machine-wide CPU time from the first line of `/proc/stat`, seconds summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SystemCpu {
    /// Time spent in processes and kernel threads (user, nice, system).
    pub busy_secs: f64,
    /// Time spent in interrupt and softirq handlers (on loopback, mostly the benchmark's own
    /// TCP traffic), which no process is charged for.
    pub irq_secs: f64,
    /// Time the hypervisor gave to someone else (`steal`).
    pub steal_secs: f64,
    /// Idle and I/O wait.
    pub idle_secs: f64,
}

/// Reads [`SystemCpu`] from `/proc/stat`.
pub fn system_cpu(ticks_per_sec: f64) -> anyhow::Result<SystemCpu> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_system_cpu(&text, ticks_per_sec)
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_system_cpu(text: &str, ticks_per_sec: f64) -> anyhow::Result<SystemCpu> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed /proc/stat")?;
    let get = |i: usize| v.get(i).copied().unwrap_or(0) as f64 / ticks_per_sec;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    Ok(SystemCpu {
        busy_secs: get(0) + get(1) + get(2),
        irq_secs: get(5) + get(6),
        steal_secs: get(7),
        idle_secs: get(3) + get(4),
    })
}

/// Where to send requests: parsed from `http[s]://host:port[/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to and to send as the `Host` header.
    pub authority: String,
    /// Path prefix (no trailing slash), usually empty.
    pub base_path: String,
    /// Whether to speak TLS.
    pub tls: bool,
}

impl Target {
    /// Parses an `http://` or `https://` base URL.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => bail!("--url {url:?}: use an http:// or https:// URL"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--url {url:?}: missing host");
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(Self {
            authority,
            base_path: path.trim_end_matches('/').to_owned(),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_structure() {
        assert_eq!(form_encode("a b+c&d=e/f"), "a%20b%2Bc%26d%3De%2Ff");
        assert_eq!(form_encode("eyJ.abc-_~"), "eyJ.abc-_~");
        assert_eq!(
            form_body([("grant_type", "urn:x:y"), ("task", "demo")]),
            "grant_type=urn%3Ax%3Ay&task=demo"
        );
        assert_eq!(form_encode("é"), "%C3%A9");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!(
            (p.p50, p.p99, p.p999, p.max, p.min),
            (500, 990, 999, 1000, 1)
        );
        assert_eq!(p.mean, 500);
        assert_eq!(percentiles(&mut []), Percentiles::default());
        let mut one = [7];
        assert_eq!(percentiles(&mut one).p999, 7);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 300);
        assert_eq!(parse_stat_flags_and_ticks(stat).unwrap(), (4_194_560, 300));
        assert!(kernel_threads_cpu_secs(100.0) >= 0.0);
        let status = "Name:\tbroker\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmPeak"), None);
        let me = proc_sample("self", clock_ticks_per_sec()).unwrap();
        assert!(me.peak_rss_kib > 0);
    }

    #[test]
    fn system_cpu_parsing() {
        let text = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n";
        let c = parse_system_cpu(text, 100.0).unwrap();
        assert!((c.busy_secs - 1.55).abs() < 1e-9);
        assert!((c.irq_secs - 0.05).abs() < 1e-9);
        assert!((c.steal_secs - 0.07).abs() < 1e-9);
        assert!((c.idle_secs - 10.20).abs() < 1e-9);
        assert!(system_cpu(clock_ticks_per_sec()).is_ok());
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.base_path.as_str()),
            ("127.0.0.1:8080", "")
        );
        let t = Target::parse("http://localhost/prefix/").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.base_path.as_str()),
            ("localhost:80", "/prefix")
        );
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        assert!(t.tls);
        assert_eq!(t.authority, "127.0.0.1:8443");
        assert!(Target::parse("ftp://x:1").is_err());
        assert!(Target::parse("http:///x").is_err());
    }
}
