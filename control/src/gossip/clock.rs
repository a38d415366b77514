//! The hybrid clock that versions an origin's changes.

use std::time::Instant;

/// The origin's versions: microseconds since the epoch, taken from the wall clock once at start
/// and advanced by the monotonic clock since (so a wall-clock step during a run cannot send
/// them back), and always at least one more than the last. A restart starts from the wall clock
/// again, which is later than any version of the previous run unless the clock was stepped back
/// by more than the downtime; and if a peer is seen holding a version of ours that is ahead,
/// [`HybridClock::observe`] moves past it.
#[derive(Debug, Clone)]
pub struct HybridClock {
    base_micros: u64,
    start: Instant,
    last: u64,
}

impl HybridClock {
    /// A clock reading `unix_micros` at `start`.
    pub fn new(start: Instant, unix_micros: u64) -> HybridClock {
        HybridClock {
            base_micros: unix_micros,
            start,
            last: 0,
        }
    }

    /// A version later than every one handed out or observed.
    pub fn next(&mut self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.start).as_micros())
            .unwrap_or(u64::MAX);
        let wall = self.base_micros.saturating_add(elapsed);
        self.last = wall.max(self.last + 1);
        self.last
    }

    /// The latest version handed out or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Makes every later version exceed `version`.
    pub fn observe(&mut self, version: u64) {
        self.last = self.last.max(version);
    }
}
