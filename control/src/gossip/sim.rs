//! A deterministic simulator of many gossip [`Core`]s on a simulated network (latency, loss,
//! partitions, kills, restarts), in virtual time and one thread. The unit tests and the
//! `gossip` benchmark run on it; nothing here touches a socket.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::core::{Core, CoreConfig, Output};
use super::keyring::Keyring;
use super::sim_net::Net;
pub use super::sim_net::NetConfig;
use super::Tuning;
use crate::store::NodeId;

/// Microseconds since the epoch at the simulation's start (any fixed value will do).
const SIM_EPOCH_MICROS: u64 = 1_750_000_000_000_000;
/// How long a stream exchange with an unreachable node takes to fail.
const STREAM_FAILURE: Duration = Duration::from_secs(1);

enum Event {
    Datagram {
        to: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
    SyncOpen {
        client: usize,
        server: usize,
        id: u64,
        frame: Vec<u8>,
    },
    SyncAnswer {
        client: usize,
        id: u64,
        server: usize,
        frame: Vec<u8>,
    },
    SyncClose {
        server: usize,
        frame: Vec<u8>,
    },
    SyncFailed {
        client: usize,
        id: u64,
    },
}

/// Many cores on one simulated network. Node `i` has node id `i + 1`.
pub struct Sim {
    net: Net<Event>,
    nodes: Vec<Option<Core>>,
    tunings: Vec<Tuning>,
    keyrings: Vec<Keyring>,
    /// Timer deadlines pushed per node (stale entries are skipped when popped).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seed: u64,
}

/// The simulated gossip address of node index `i`.
pub fn sim_addr(i: usize) -> SocketAddr {
    let i = u32::try_from(i).expect("fewer than 2^32 nodes");
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 2)) + i);
    SocketAddr::new(ip.into(), super::DEFAULT_PORT)
}

pub(super) fn index_of(addr: SocketAddr) -> Option<usize> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let offset = u32::from(ip).checked_sub(u32::from(Ipv4Addr::new(198, 18, 0, 2)))?;
    usize::try_from(offset).ok()
}

impl Sim {
    /// An empty simulation.
    pub fn new(config: NetConfig) -> Sim {
        let seed = config.seed;
        Sim {
            net: Net::new(config, Instant::now()),
            nodes: Vec::new(),
            tunings: Vec::new(),
            keyrings: Vec::new(),
            timers: BinaryHeap::new(),
            seed,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.net.now()
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.net.elapsed()
    }

    /// Nodes added so far (dead ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Datagrams sent and datagrams lost so far.
    pub fn datagram_counts(&self) -> (u64, u64) {
        (self.net.datagrams, self.net.lost)
    }

    fn make_core(&self, i: usize) -> Core {
        let micros = SIM_EPOCH_MICROS
            + u64::try_from(self.elapsed().as_micros()).expect("simulations last < 500k years");
        Core::new(
            CoreConfig {
                node_id: i as NodeId + 1,
                addr: sim_addr(i),
                keyring: self.keyrings[i].clone(),
                tuning: self.tunings[i].clone(),
                generation: micros / 1000,
                unix_micros: micros,
                seed: self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            },
            self.now(),
        )
    }

    /// Adds a node; returns its index.
    pub fn add_node(&mut self, tuning: Tuning, keyring: Keyring) -> usize {
        let i = self.nodes.len();
        self.tunings.push(tuning);
        self.keyrings.push(keyring);
        let core = self.make_core(i);
        self.nodes.push(Some(core));
        self.after(i);
        i
    }

    /// Gives every node the full peer list.
    pub fn introduce_all(&mut self) {
        let peers: Vec<(NodeId, SocketAddr)> = (0..self.nodes.len())
            .map(|i| (i as NodeId + 1, sim_addr(i)))
            .collect();
        for i in 0..self.nodes.len() {
            let peers = peers.clone();
            self.with(i, |core, now| core.set_peers(now, peers));
        }
    }

    /// A live node's core.
    pub fn core(&self, i: usize) -> Option<&Core> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// Runs `f` on a live node's core at the current time, then routes what it sent.
    pub fn with<T>(&mut self, i: usize, f: impl FnOnce(&mut Core, Instant) -> T) -> Option<T> {
        let now = self.now();
        let out = f(self.nodes.get_mut(i)?.as_mut()?, now);
        self.after(i);
        Some(out)
    }

    /// Kills a node: it stops at once, sending nothing more, as a host losing power.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        self.net.dead.insert(i);
    }

    /// Starts a killed node again with an empty state and a new generation.
    pub fn restart(&mut self, i: usize) {
        self.net.dead.remove(&i);
        let core = self.make_core(i);
        self.nodes[i] = Some(core);
        self.after(i);
    }

    /// Cuts every path between nodes `a` and nodes `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        self.net.partition(a, b);
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Routes a node's outputs and records its next deadline.
    fn after(&mut self, i: usize) {
        let Some(core) = self.nodes[i].as_mut() else {
            return;
        };
        let mut outputs = Vec::new();
        while let Some(output) = core.poll_output() {
            outputs.push(output);
        }
        if let Some(at) = core.poll_timeout() {
            self.timers.push(Reverse((at, i)));
        }
        let from = sim_addr(i);
        for output in outputs {
            match output {
                Output::Datagram { to, payload } => {
                    let Some(j) = index_of(to).filter(|j| *j < self.nodes.len()) else {
                        continue;
                    };
                    self.net.datagram(
                        i,
                        j,
                        Event::Datagram {
                            to: j,
                            from,
                            data: payload,
                        },
                    );
                }
                // Pings are driven by the caller of `Core::ping`, outside the simulation.
                Output::Pong { .. } => {}
                Output::Sync { id, to, frame, .. } => {
                    let server = index_of(to).filter(|j| *j < self.nodes.len());
                    match server.filter(|j| self.net.reachable(i, *j)) {
                        Some(server) => {
                            let at = self.now() + self.net.latency();
                            self.net.at(
                                at,
                                Event::SyncOpen {
                                    client: i,
                                    server,
                                    id,
                                    frame,
                                },
                            );
                        }
                        None => {
                            let at = self.now() + STREAM_FAILURE;
                            self.net.at(at, Event::SyncFailed { client: i, id });
                        }
                    }
                }
            }
        }
    }

    /// Processes the next event (a delivery or a due timer); returns the node that handled it,
    /// or None when nothing is left (or the event found its node dead).
    pub fn step(&mut self) -> Option<usize> {
        // Drop timer entries of dead nodes or that an earlier run made stale.
        while let Some(Reverse((at, i))) = self.timers.peek().copied() {
            let current = self.nodes[i].as_ref().and_then(Core::poll_timeout);
            if current != Some(at) {
                self.timers.pop();
                if let Some(current) = current.filter(|c| *c < at) {
                    self.timers.push(Reverse((current, i)));
                }
                continue;
            }
            break;
        }
        let timer = self.timers.peek().map(|Reverse((at, i))| (*at, *i));
        match (timer, self.net.peek()) {
            (Some((at, i)), event) if event.is_none_or(|e| at <= e) => {
                self.timers.pop();
                self.net.advance(at);
                let now = self.now();
                self.nodes[i].as_mut()?.handle_timeout(now);
                self.after(i);
                Some(i)
            }
            (_, Some(_)) => {
                let event = self.net.pop()?;
                self.deliver(event)
            }
            _ => None,
        }
    }

    fn deliver(&mut self, event: Event) -> Option<usize> {
        let now = self.now();
        match event {
            Event::Datagram { to, from, data } => {
                self.nodes[to].as_mut()?.handle_datagram(now, from, &data);
                self.after(to);
                Some(to)
            }
            Event::SyncOpen {
                client,
                server,
                id,
                frame,
            } => {
                let answer = if self.net.reachable(client, server) {
                    self.nodes[server]
                        .as_mut()
                        .and_then(|core| core.handle_sync_open(now, &frame))
                } else {
                    None
                };
                self.after(server);
                let at = now + self.net.latency();
                match answer {
                    Some(frame) => self.net.at(
                        at,
                        Event::SyncAnswer {
                            client,
                            id,
                            server,
                            frame,
                        },
                    ),
                    None => self.net.at(at, Event::SyncFailed { client, id }),
                }
                Some(server)
            }
            Event::SyncAnswer {
                client,
                id,
                server,
                frame,
            } => {
                let core = self.nodes[client].as_mut()?;
                if !self.net.reachable(client, server) {
                    core.sync_failed(id);
                } else if let Some(close) = core.handle_sync_answer(now, id, &frame) {
                    let at = now + self.net.latency();
                    self.net.at(
                        at,
                        Event::SyncClose {
                            server,
                            frame: close,
                        },
                    );
                }
                self.after(client);
                Some(client)
            }
            Event::SyncClose { server, frame } => {
                self.nodes[server].as_mut()?.handle_sync_close(now, &frame);
                self.after(server);
                Some(server)
            }
            Event::SyncFailed { client, id } => {
                self.nodes[client].as_mut()?.sync_failed(id);
                self.after(client);
                Some(client)
            }
        }
    }

    /// Runs until virtual time `d` from now has passed.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now() + d;
        self.run_until(until, |_, _| false);
    }

    /// Runs until `done(sim, node)` holds after an event at `node`, or virtual time `deadline`;
    /// returns whether `done` held.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Sim, usize) -> bool,
    ) -> bool {
        loop {
            let next = [
                self.net.peek(),
                self.timers.peek().map(|Reverse((at, _))| *at),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(at) if at <= deadline => {
                    if let Some(i) = self.step() {
                        if done(self, i) {
                            return true;
                        }
                    }
                }
                _ => {
                    self.net.advance(deadline);
                    return false;
                }
            }
        }
    }
}
