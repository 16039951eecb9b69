//! Time, behind a trait so that tests can drive it ([`ManualClock`]).
//!
//! Every timestamp the broker writes (`iat`, `nbf`, `exp`, audit `ts`) comes from a
//! [`Clock`]. Nothing in the library calls `SystemTime::now` directly (clippy enforces it).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// Monotonic time (rate-limit buckets): never moved by wall-clock jumps.
    fn monotonic(&self) -> Instant {
        Instant::now()
    }

    /// The current time in whole seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place the system clock is read
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
    /// Monotonic time: where it started, and how far [`ManualClock::advance`] moved it.
    origin: Instant,
    advanced: Mutex<Duration>,
}

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
            origin: Instant::now(),
            advanced: Mutex::new(Duration::ZERO),
        }
    }

    /// A clock frozen at `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock (wall and monotonic) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
        *self.advanced.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// Sets the wall clock to `to` (a jump: monotonic time does not move).
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn monotonic(&self) -> Instant {
        self.origin + *self.advanced.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix(1_000);
        assert_eq!(c.unix_secs(), 1_000);
        c.advance(Duration::from_secs(61));
        assert_eq!(c.unix_secs(), 1_061);
    }

    #[test]
    fn manual_monotonic_time_moves_with_advance_not_with_set() {
        let c = ManualClock::at_unix(1_000);
        let t0 = c.monotonic();
        c.set(UNIX_EPOCH + Duration::from_secs(5_000));
        assert_eq!(c.monotonic(), t0, "a wall-clock jump");
        c.advance(Duration::from_secs(3));
        assert_eq!(c.monotonic() - t0, Duration::from_secs(3));
    }
}
