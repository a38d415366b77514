//! A simulated network for the simulator: virtual time, per-datagram latency drawn uniformly
//! from a range, random loss, dead nodes and partitions. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How the simulated network behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Smallest one-way latency.
    pub latency_min: Duration,
    /// Largest one-way latency.
    pub latency_max: Duration,
    /// Probability that a datagram is lost (streams are reliable).
    pub loss: f64,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(1),
            loss: 0.0,
            seed: 1,
        }
    }
}

/// Virtual time, a queue of future events and the network's faults.
pub struct Net<E> {
    config: NetConfig,
    start: Instant,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, E>,
    /// Node pairs that cannot reach each other (smaller index first).
    cuts: BTreeSet<(usize, usize)>,
    /// Nodes that are dead.
    pub(super) dead: BTreeSet<usize>,
    pub(super) rng: SmallRng,
    /// Datagrams handed to the network.
    pub datagrams: u64,
    /// Datagrams lost or cut.
    pub lost: u64,
}

impl<E> Net<E> {
    /// A network at virtual time `start`.
    pub fn new(config: NetConfig, start: Instant) -> Net<E> {
        Net {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            start,
            now: start,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            cuts: BTreeSet::new(),
            dead: BTreeSet::new(),
            datagrams: 0,
            lost: 0,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// A latency drawn from the configured range.
    pub fn latency(&mut self) -> Duration {
        let (min, max) = (self.config.latency_min, self.config.latency_max);
        if max <= min {
            return min;
        }
        min + (max - min).mul_f64(self.rng.random::<f64>())
    }

    /// Whether `a` and `b` can talk now.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        !self.dead.contains(&a)
            && !self.dead.contains(&b)
            && !self.cuts.contains(&(a.min(b), a.max(b)))
    }

    /// Queues `event` at `at`.
    pub fn at(&mut self, at: Instant, event: E) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    /// Queues a datagram's delivery from `from` to `to` after a latency, unless it is lost or
    /// the pair is cut; returns whether it was queued.
    pub fn datagram(&mut self, from: usize, to: usize, event: E) -> bool {
        self.datagrams += 1;
        let lost = self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss;
        if lost || !self.reachable(from, to) {
            self.lost += 1;
            return false;
        }
        let at = self.now + self.latency();
        self.at(at, event);
        true
    }

    /// The time of the next queued event.
    pub fn peek(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the next event and advances time to it.
    pub fn pop(&mut self) -> Option<E> {
        let Reverse((at, seq)) = self.queue.pop()?;
        self.now = self.now.max(at);
        self.events.remove(&seq)
    }

    /// Advances time without an event (to a timer's deadline).
    pub fn advance(&mut self, to: Instant) {
        self.now = self.now.max(to);
    }

    /// Cuts every pair between `a` and `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                self.cuts.insert(((*x).min(*y), (*x).max(*y)));
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }
}
