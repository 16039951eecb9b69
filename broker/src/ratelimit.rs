//! Issuance rate limits: token buckets per identity (config) and per identity and task
//! (policy). A request that finds its bucket empty is answered 429 with `Retry-After`
//! and a `denied` record.
//!
//! Buckets refill continuously at `count / period`, up to `count` (the burst). Time is
//! monotonic (an `Instant` from the broker's [`crate::clock::Clock::monotonic`], so that a
//! [`crate::clock::ManualClock`] drives it in tests), and wall-clock jumps never refill
//! or drain a bucket. Idle full
//! buckets are dropped by [`RateLimiter::sweep`] so memory tracks active callers only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `count` per `period`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per period, and the burst size.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses `"10/s"`, `"600/m"`, `"1000/h"`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a rate such as \"10/s\" or \"600/m\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{s:?}: the count must be a positive integer"))?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unknown period {other:?} (use s, m or h)")),
        };
        Ok(Rate { count, period })
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(rate.count);
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_sec()).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_sec()))
        }
    }

    /// Drops buckets idle for longer than `idle`.
    pub fn sweep(&self, now: Instant, idle: Duration) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, b| now.saturating_duration_since(b.last) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rates() {
        assert_eq!(Rate::parse("10/s").unwrap().count, 10);
        assert_eq!(
            Rate::parse("600/m").unwrap().period,
            Duration::from_secs(60)
        );
        for bad in ["10", "0/s", "x/s", "5/d"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn burst_then_refusal_then_recovery() {
        let rl = RateLimiter::default();
        let rate = Rate::parse("2/s").unwrap();
        let t0 = Instant::now();
        assert!(rl.check("a", rate, t0).is_ok());
        assert!(rl.check("a", rate, t0).is_ok());
        let wait = rl.check("a", rate, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(rl.check("b", rate, t0).is_ok(), "buckets are per key");
        assert!(rl.check("a", rate, t0 + Duration::from_millis(500)).is_ok());
        rl.sweep(t0 + Duration::from_secs(100), Duration::from_secs(10));
        assert!(rl.buckets.lock().unwrap().is_empty());
    }
}
