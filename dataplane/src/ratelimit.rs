//! Token buckets: one ([`TokenBucket`]) for a responder as a whole, and one per source with a
//! bounded table ([`PerSource`]) for servers that must not let one client starve the others.
//! Pure: the caller passes the time, so tests run on an injected clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate and a burst: `burst` events at once, then `per_sec` a second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// How long an empty bucket takes to fill up again: after that long untouched, a bucket is
    /// no different from a new one.
    pub fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_sec)
    }
}

/// A token bucket, full when new.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }

    /// Whether the bucket has refilled by `now` (so forgetting it changes nothing).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= rate.refill_time() || self.tokens >= rate.burst
    }
}

/// One bucket per source, at most `max_sources` of them. Buckets that have refilled are
/// forgotten when the table is full (at most once per refill time, so a flood of new sources
/// costs no sweep per event); sources that find the table full of active ones share one
/// overflow bucket, so a flood from many (spoofed) sources is limited as a whole and cannot
/// grow the table.
#[derive(Debug)]
pub struct PerSource<K> {
    rate: Rate,
    max_sources: usize,
    buckets: HashMap<K, TokenBucket>,
    overflow: TokenBucket,
    last_sweep: Instant,
}

impl<K: Hash + Eq + Clone> PerSource<K> {
    pub fn new(rate: Rate, max_sources: usize, now: Instant) -> PerSource<K> {
        PerSource {
            rate,
            max_sources,
            buckets: HashMap::new(),
            overflow: TokenBucket::new(rate, now),
            last_sweep: now,
        }
    }

    /// Whether `source` may have one more event at `now`.
    pub fn allow(&mut self, source: &K, now: Instant) -> bool {
        let rate = self.rate;
        if let Some(bucket) = self.buckets.get_mut(source) {
            return bucket.allow(rate, now);
        }
        if self.buckets.len() >= self.max_sources
            && now.saturating_duration_since(self.last_sweep) >= rate.refill_time()
        {
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            self.last_sweep = now;
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.allow(rate, now);
        }
        let mut bucket = TokenBucket::new(rate, now);
        let allowed = bucket.allow(rate, now);
        self.buckets.insert(source.clone(), bucket);
        allowed
    }

    /// Sources with a bucket now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_sec: 100.0,
        burst: 10.0,
    };

    fn allowed(limit: &mut PerSource<u32>, source: u32, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| limit.allow(&source, at)).count()
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RATE, t0);
        assert_eq!((0..50).filter(|_| bucket.allow(RATE, t0)).count(), 10);
        // 100 a second: 5 tokens after 50 ms, never more than the burst.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!((0..50).filter(|_| bucket.allow(RATE, t1)).count(), 5);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| bucket.allow(RATE, t2)).count(), 10);
    }

    #[test]
    fn one_flooding_source_does_not_limit_another() {
        let t0 = Instant::now();
        let mut limit = PerSource::new(RATE, 16, t0);
        assert_eq!(allowed(&mut limit, 1, t0, 1000), 10);
        assert_eq!(allowed(&mut limit, 2, t0, 5), 5);
        // One second of flooding at 1000 events per ms: the rate, plus nothing extra.
        let mut flood = 0;
        for ms in 1..=1000 {
            flood += allowed(&mut limit, 1, t0 + Duration::from_millis(ms), 1000);
        }
        // 1000 refills of 0.1 token each add up to a hair under 100 in floating point.
        assert!((99..=100).contains(&flood), "{flood}");
        assert_eq!(allowed(&mut limit, 2, t0 + Duration::from_secs(1), 5), 5);
    }

    #[test]
    fn the_table_is_bounded_and_new_sources_share_the_overflow_bucket() {
        let t0 = Instant::now();
        let mut limit = PerSource::new(RATE, 4, t0);
        for source in 0..4 {
            assert_eq!(allowed(&mut limit, source, t0, 1), 1);
        }
        // The table is full of active sources: the next ones share one bucket.
        let overflow: usize = (4..1000).map(|s| allowed(&mut limit, s, t0, 1)).sum();
        assert_eq!(overflow, 10);
        assert_eq!(limit.sources(), 4);
        // Once the first ones have refilled, they are forgotten and newcomers get buckets.
        let later = t0 + RATE.refill_time();
        assert_eq!(allowed(&mut limit, 2000, later, 3), 3);
        assert_eq!(limit.sources(), 1);
    }

    #[test]
    fn a_sweep_happens_at_most_once_per_refill_time() {
        let t0 = Instant::now();
        let mut limit = PerSource::new(RATE, 2, t0);
        let t1 = t0 + RATE.refill_time();
        assert_eq!(allowed(&mut limit, 1, t1, 1), 1);
        assert_eq!(allowed(&mut limit, 2, t1, 1), 1);
        // By t2 both have refilled: the sweep forgets them; the next newcomer that finds the
        // table full again at t2 gets no second sweep, only the overflow bucket.
        let t2 = t1 + RATE.refill_time();
        assert_eq!(allowed(&mut limit, 3, t2, 1), 1);
        assert_eq!(limit.sources(), 1);
        assert_eq!(allowed(&mut limit, 4, t2, 1), 1);
        assert_eq!(allowed(&mut limit, 5, t2, 1), 1); // full again: overflow bucket
        assert_eq!(limit.sources(), 2);
    }
}
