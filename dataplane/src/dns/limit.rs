//! Per-client rate limiting of queries: a token bucket per source address (a bounded table,
//! [`crate::ratelimit::PerSource`]), shared by a server's UDP workers and TCP connections.
//! Queries over the limit are dropped unanswered (UDP; a TCP connection is closed) and counted,
//! so one client flooding the server costs it little and leaves the others served.
//!
//! The numbers: a stub resolver asks one to three questions per lookup (A, AAAA, a search
//! domain) and retries after seconds; even an application resolving a few hundred names at
//! start stays well within a burst of [`BURST`] and a sustained [`QUERIES_PER_SEC`] per
//! source. A task's processes share its namespace's source address (127.0.0.1), so the limit
//! is in effect per task: the server is the task's own, and its rate is what one task may ask
//! of meshd.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::ratelimit::{PerSource, Rate};

/// Queries per second a source may sustain.
pub const QUERIES_PER_SEC: f64 = 1000.0;
/// Queries a source may send at once above the rate.
pub const BURST: f64 = 2000.0;
/// Sources with a bucket of their own; past that, new sources share one.
pub const MAX_SOURCES: usize = 1024;

const RATE: Rate = Rate {
    per_sec: QUERIES_PER_SEC,
    burst: BURST,
};

/// A server's limit and its count of dropped queries.
#[derive(Debug)]
pub struct QueryLimit {
    table: Mutex<PerSource<IpAddr>>,
    limited: AtomicU64,
}

impl QueryLimit {
    pub fn new() -> QueryLimit {
        QueryLimit {
            table: Mutex::new(PerSource::new(RATE, MAX_SOURCES, Instant::now())),
            limited: AtomicU64::new(0),
        }
    }

    /// Decides for each source of a batch at once (one lock), in order: `allowed[i]` for
    /// `sources[i]`; a missing source (an address the kernel gave in a form we do not read) is
    /// allowed.
    pub fn allow_batch(&self, sources: &[Option<IpAddr>], allowed: &mut [bool]) {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        for (source, ok) in sources.iter().zip(allowed.iter_mut()) {
            *ok = source.is_none_or(|ip| table.allow(&ip, now));
            dropped += u64::from(!*ok);
        }
        drop(table);
        if dropped > 0 {
            self.limited.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Whether one query from `source` may be served now.
    pub fn allow(&self, source: IpAddr) -> bool {
        let mut allowed = [false];
        self.allow_batch(&[Some(source)], &mut allowed);
        allowed[0]
    }

    /// Queries dropped so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

impl Default for QueryLimit {
    fn default() -> Self {
        QueryLimit::new()
    }
}
