//! The baseline the benchmark compares the scoped push against: foca's own dissemination of
//! a custom broadcast, piggy-backed on SWIM's probes and periodic gossip with the same timing
//! as ours, on the same simulated network. This is what the endpoint table would get without
//! its own push: a change rides along `max_transmissions` messages per node.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::sim::{index_of, sim_addr, NetConfig};
use super::sim_net::Net;
use super::swim::{self, NodeIdentity};
use super::Tuning;

/// A broadcast's key: the first 8 bytes of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64);

impl Invalidates for Key {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

/// The broadcast's data was shorter than its key.
#[derive(Debug, thiserror::Error)]
#[error("broadcast shorter than its 8-byte key")]
pub struct ShortBroadcast;

/// Records which keys each node has received.
struct Handler {
    node: usize,
    received: Rc<RefCell<Vec<BTreeSet<u64>>>>,
}

impl BroadcastHandler<NodeIdentity> for Handler {
    type Key = Key;
    type Error = ShortBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<Key>, ShortBroadcast> {
        let key: [u8; 8] = data
            .get(..8)
            .and_then(|k| k.try_into().ok())
            .ok_or(ShortBroadcast)?;
        let key = u64::from_le_bytes(key);
        let new = self.received.borrow_mut()[self.node].insert(key);
        Ok(new.then_some(Key(key)))
    }
}

type Node = Foca<NodeIdentity, PostcardCodec, SmallRng, Handler>;

/// Bare foca nodes with a custom broadcast handler on a simulated network.
pub struct BroadcastBaseline {
    net: Net<(usize, Vec<u8>)>,
    nodes: Vec<Node>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: BTreeMap<u64, (usize, Timer<NodeIdentity>)>,
    seq: u64,
    received: Rc<RefCell<Vec<BTreeSet<u64>>>>,
}

impl BroadcastBaseline {
    /// `n` nodes that already know each other (membership settled), on `net`.
    pub fn new(n: usize, tuning: &Tuning, net: NetConfig) -> BroadcastBaseline {
        let seed = net.seed;
        let received = Rc::new(RefCell::new(vec![BTreeSet::new(); n]));
        let identities: Vec<NodeIdentity> = (0..n)
            .map(|i| NodeIdentity {
                node: i as u64 + 1,
                addr: sim_addr(i),
                generation: 1,
            })
            .collect();
        let nodes = identities
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Foca::with_custom_broadcast(
                    id.clone(),
                    swim::config(tuning, n),
                    SmallRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(i as u64)),
                    PostcardCodec,
                    Handler {
                        node: i,
                        received: received.clone(),
                    },
                )
            })
            .collect();
        let mut baseline = BroadcastBaseline {
            net: Net::new(net, Instant::now()),
            nodes,
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_events: BTreeMap::new(),
            seq: 0,
            received,
        };
        for i in 0..n {
            let others = identities
                .iter()
                .filter(|id| id.node != i as u64 + 1)
                .cloned()
                .map(foca::Member::alive);
            let _ = baseline.nodes[i].apply_many(others, false, &mut baseline.runtime);
            baseline.drain(i);
        }
        baseline
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.net.elapsed()
    }

    fn drain(&mut self, i: usize) {
        let now = self.net.now();
        while let Some((to, data)) = self.runtime.to_send() {
            if let Some(j) = index_of(to.addr) {
                self.net.datagram(i, j, (j, data.to_vec()));
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.seq += 1;
            self.timers.push(Reverse((now + after, self.seq)));
            self.timer_events.insert(self.seq, (i, timer));
        }
        while self.runtime.to_notify().is_some() {}
    }

    /// Node `i` starts broadcasting `key` (with `len` bytes of data in all, like an entry).
    pub fn broadcast(&mut self, i: usize, key: u64, len: usize) {
        let mut data = key.to_le_bytes().to_vec();
        data.resize(len.max(8), 0xab);
        let _ = self.nodes[i].add_broadcast(&data);
    }

    /// How many nodes have received `key`.
    pub fn reached(&self, key: u64) -> usize {
        self.received
            .borrow()
            .iter()
            .filter(|keys| keys.contains(&key))
            .count()
    }

    /// Runs until every node has `key` or `limit` of virtual time passes; returns the time it
    /// took.
    pub fn run_until_everyone_has(&mut self, key: u64, limit: Duration) -> Option<Duration> {
        let start = self.net.now();
        let n = self.nodes.len();
        while self.net.now() - start < limit {
            if self.reached(key) == n {
                return Some(self.net.now() - start);
            }
            let timer = self.timers.peek().map(|Reverse((at, seq))| (*at, *seq));
            match (timer, self.net.peek()) {
                (Some((at, seq)), event) if event.is_none_or(|e| at <= e) => {
                    self.timers.pop();
                    self.net.advance(at);
                    if let Some((i, timer)) = self.timer_events.remove(&seq) {
                        let _ = self.nodes[i].handle_timer(timer, &mut self.runtime);
                        self.drain(i);
                    }
                }
                (_, Some(_)) => {
                    if let Some((j, data)) = self.net.pop() {
                        let _ = self.nodes[j].handle_data(&data, &mut self.runtime);
                        self.drain(j);
                    }
                }
                _ => return None,
            }
        }
        None
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let _ = self.run_until_everyone_has(u64::MAX, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foca_broadcasts_reach_a_small_cluster() {
        let mut baseline = BroadcastBaseline::new(10, &Tuning::default(), NetConfig::default());
        baseline.run_for(Duration::from_secs(1));
        baseline.broadcast(3, 42, 150);
        let took = baseline.run_until_everyone_has(42, Duration::from_secs(30));
        assert!(took.is_some(), "reached {}", baseline.reached(42));
    }
}
