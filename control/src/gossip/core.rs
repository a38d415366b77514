//! The sans-IO gossip node: a state machine fed with time, datagrams, stream frames and
//! commands, that answers with datagrams and stream exchanges to perform. No sockets, no
//! clock of its own, no threads: the tokio driver and the simulator both run it.
//!
//! Inputs: [`Core::handle_datagram`], [`Core::handle_timeout`] (when [`Core::poll_timeout`]
//! is due), the stream frames ([`Core::handle_stream_open`], [`Core::handle_sync_answer`],
//! [`Core::handle_sync_close`], [`Core::sync_failed`]) and the commands (`publish`,
//! `set_networks`, `set_peers`, `set_keyring`, `leave`, and the pings of `ping.rs`). Outputs:
//! [`Core::poll_output`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::entry::{EndpointEntry, EntryError};
use super::envelope::Channel;
use super::keyring::{Keyring, OpenError};
use super::message::{self, GossipMsg, KIND_GOSSIP, KIND_SWIM};
use super::ping::PendingPings;
use super::stats::GossipStats;
use super::swim::{self, seed_identity, NodeIdentity};
use super::table::{HybridClock, Table};
use super::Tuning;
use crate::store::NodeId;

/// Whether SWIM counts a member in: alive or suspect.
pub(super) fn active(member: &foca::Member<NodeIdentity>) -> bool {
    member.state() != foca::State::Down
}

/// What the node asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this (sealed) datagram.
    Datagram {
        /// Destination.
        to: SocketAddr,
        /// Sealed bytes.
        payload: Vec<u8>,
    },
    /// Open a stream to `to`, send `frame`, read one answer frame and give it to
    /// [`Core::handle_sync_answer`] with `id`, then send what that returns (if anything) and
    /// close; on any failure or timeout call [`Core::sync_failed`].
    Sync {
        /// The exchange's id.
        id: u64,
        /// The peer's node id.
        peer: NodeId,
        /// The peer's gossip address.
        to: SocketAddr,
        /// The sealed opening frame.
        frame: Vec<u8>,
    },
    /// The answer to the UDP ping `nonce` of [`Core::ping`] arrived.
    Pong {
        /// The ping's nonce.
        nonce: u64,
        /// Where the pong came from.
        from: SocketAddr,
        /// From the ping's `now` to the pong's.
        rtt: Duration,
    },
}

/// How a core starts.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The address peers reach its gossip at (UDP and TCP).
    pub addr: SocketAddr,
    /// The cluster's keys.
    pub keyring: Keyring,
    /// Timing and fan-out.
    pub tuning: Tuning,
    /// Identity generation: grows with every start (ms since the epoch at start).
    pub generation: u64,
    /// Microseconds since the epoch at `now` of [`Core::new`]: the versions' clock.
    pub unix_micros: u64,
    /// Seed of the node's random choices (peers, jitter, probe order).
    pub seed: u64,
}

/// What a timer is for.
#[derive(Debug, Clone)]
pub(super) enum TimerKind {
    Swim(foca::Timer<NodeIdentity>),
    /// Next round of a rumor.
    Rumor(u64),
    AntiEntropy,
    Announce,
    Expire,
}

/// Whom a rumor goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every member.
    All,
    /// Members that declared this network.
    Network(String),
}

/// Something being pushed epidemically: sent to `fanout` new peers per round.
#[derive(Debug, Clone)]
pub(super) struct Rumor {
    pub(super) scope: Scope,
    /// Plaintext datagrams.
    pub(super) payloads: Vec<Vec<u8>>,
    /// Nodes that have it or were sent it.
    pub(super) reached: BTreeSet<NodeId>,
    pub(super) rounds_left: u8,
}

/// One node's gossip state machine.
pub struct Core {
    pub(super) me: NodeIdentity,
    pub(super) tuning: Tuning,
    pub(super) keyring: Keyring,
    pub(super) foca: Foca<NodeIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>,
    pub(super) runtime: AccumulatingRuntime<NodeIdentity>,
    pub(super) rng: SmallRng,
    pub(super) clock: HybridClock,
    pub(super) table: Table,
    /// Every node foca knows, by id (down ones until foca forgets them).
    pub(super) members: BTreeMap<NodeId, foca::Member<NodeIdentity>>,
    /// The cluster's nodes from the control plane: seeds and allow-list (empty: allow all).
    pub(super) peers: BTreeMap<NodeId, SocketAddr>,
    /// Networks given by `set_networks`.
    pub(super) declared: BTreeSet<String>,
    /// Networks we are on: declared ones and those of our own entries.
    pub(super) networks: BTreeSet<String>,
    /// Every node's declared networks, with the declaration's version; ours included.
    pub(super) decls: BTreeMap<NodeId, (u64, BTreeSet<String>)>,
    pub(super) timers: BTreeMap<(Instant, u64), TimerKind>,
    pub(super) timer_seq: u64,
    pub(super) rumors: BTreeMap<u64, Rumor>,
    pub(super) rumor_seq: u64,
    pub(super) outputs: VecDeque<Output>,
    /// Anti-entropy exchanges in flight: id → peer.
    pub(super) syncs: BTreeMap<u64, NodeId>,
    pub(super) sync_seq: u64,
    /// UDP pings awaiting their pong (bounded, see `ping.rs`).
    pub(super) pings: PendingPings,
    pub(super) stats: GossipStats,
    pub(super) view_generation: u64,
    pub(super) cluster_size: usize,
}

impl Core {
    /// A node that has met nobody yet. Give it peers with [`Core::set_peers`].
    pub fn new(config: CoreConfig, now: Instant) -> Core {
        let me = NodeIdentity {
            node: config.node_id,
            addr: config.addr,
            generation: config.generation,
        };
        let mut clock = HybridClock::new(now, config.unix_micros);
        let base = clock.next(now);
        let foca = Foca::new(
            me.clone(),
            swim::config(&config.tuning, 1),
            SmallRng::seed_from_u64(config.seed),
            PostcardCodec,
        );
        let mut core = Core {
            tuning: config.tuning,
            keyring: config.keyring,
            foca,
            runtime: AccumulatingRuntime::new(),
            rng: SmallRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            clock,
            table: Table::new(me.node, base),
            members: BTreeMap::new(),
            peers: BTreeMap::new(),
            declared: BTreeSet::new(),
            networks: BTreeSet::new(),
            decls: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            rumors: BTreeMap::new(),
            rumor_seq: 0,
            outputs: VecDeque::new(),
            syncs: BTreeMap::new(),
            sync_seq: 0,
            pings: PendingPings::new(),
            stats: GossipStats::default(),
            view_generation: 0,
            cluster_size: 1,
            me,
        };
        core.decls.insert(core.me.node, (base, BTreeSet::new()));
        core.schedule(now, TimerKind::Announce);
        let first_sync = core.sync_delay();
        core.schedule(now + first_sync, TimerKind::AntiEntropy);
        core.schedule(now + core.expire_period(), TimerKind::Expire);
        core
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me.node
    }

    /// This node's current SWIM identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.me
    }

    pub(super) fn schedule(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), kind);
    }

    /// When [`Core::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// The next thing to send, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let kind = entry.remove();
            match kind {
                TimerKind::Swim(timer) => {
                    let result = self.foca.handle_timer(timer, &mut self.runtime);
                    self.after_swim(now, result.is_err());
                }
                TimerKind::Rumor(id) => self.rumor_round(now, id),
                TimerKind::AntiEntropy => {
                    self.start_sync(now, None);
                    let next = self.sync_delay();
                    self.schedule(now + next, TimerKind::AntiEntropy);
                }
                TimerKind::Announce => {
                    self.announce(now);
                    self.schedule(now + self.tuning.announce_interval, TimerKind::Announce);
                }
                TimerKind::Expire => {
                    self.table.expire(now, self.tuning.tombstone_ttl);
                    self.schedule(now + self.expire_period(), TimerKind::Expire);
                }
            }
        }
    }

    fn expire_period(&self) -> Duration {
        (self.tuning.tombstone_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Seals and queues a datagram.
    pub(super) fn send(&mut self, to: SocketAddr, plaintext: &[u8]) {
        let payload = self.keyring.seal(Channel::Datagram, plaintext);
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        self.outputs.push_back(Output::Datagram { to, payload });
    }

    /// Whether messages from `node` are accepted: the peer list is the allow-list once given.
    pub(super) fn allowed(&self, node: NodeId) -> bool {
        self.peers.is_empty() || self.peers.contains_key(&node)
    }

    /// Feeds a received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        // The source address is not trusted for who sent a message (that is in its
        // authenticated content); it is only where a ping's pong goes back to.
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let plain = match self.keyring.open(Channel::Datagram, data) {
            Ok(plain) => plain,
            Err(err) => return self.count_open_error(err),
        };
        let Some((&kind, body)) = plain.split_first() else {
            self.stats.malformed += 1;
            return;
        };
        match kind {
            KIND_SWIM => {
                // Peek at the sender before foca learns it: nodes outside the cluster's
                // list (removed for good, or never joined) are not let back in.
                match postcard::take_from_bytes::<foca::Header<NodeIdentity>>(body) {
                    Ok((header, _)) if !self.allowed(header.src.node) => {
                        self.stats.unknown_senders += 1;
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.stats.malformed += 1;
                        return;
                    }
                }
                let result = self.foca.handle_data(body, &mut self.runtime);
                self.after_swim(now, result.is_err());
            }
            KIND_GOSSIP => match message::decode_gossip(body) {
                Ok(msg) => self.handle_gossip(now, from, msg),
                Err(_) => self.stats.malformed += 1,
            },
            _ => self.stats.malformed += 1,
        }
    }

    pub(super) fn count_open_error(&mut self, err: OpenError) {
        if err.is_auth_failure() {
            self.stats.auth_failures += 1;
        } else {
            self.stats.malformed += 1;
        }
    }

    fn handle_gossip(&mut self, now: Instant, from_addr: SocketAddr, msg: GossipMsg) {
        match msg {
            GossipMsg::Push { from, groups } => {
                if !self.allowed(from) {
                    self.stats.unknown_senders += 1;
                    return;
                }
                let fresh = self.apply_groups(now, &groups);
                for group in fresh {
                    let exclude = [from, group.origin].into_iter().collect();
                    self.spread_groups(now, vec![group], exclude, self.tuning.push_rounds);
                }
            }
            GossipMsg::Decls { from, decls } => {
                if !self.allowed(from) {
                    self.stats.unknown_senders += 1;
                    return;
                }
                let fresh = self.apply_decls(now, decls);
                if !fresh.is_empty() {
                    let exclude = [from].into_iter().collect();
                    self.spread_decls(now, fresh, exclude, self.tuning.push_rounds);
                }
            }
            // No allow-list check: a ping checks the port, before or apart from membership.
            GossipMsg::Ping { nonce } => self.answer_ping(from_addr, nonce),
            GossipMsg::Pong { nonce } => self.take_pong(now, from_addr, nonce),
        }
    }

    /// Drains what foca asked for: datagrams, timers and membership changes.
    pub(super) fn after_swim(&mut self, now: Instant, failed: bool) {
        if failed {
            self.stats.swim_errors += 1;
        }
        while let Some((to, data)) = self.runtime.to_send() {
            let mut plain = Vec::with_capacity(data.len() + 1);
            plain.push(KIND_SWIM);
            plain.extend_from_slice(&data);
            self.send(to.addr, &plain);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule(now + after, TimerKind::Swim(timer));
        }
        let mut membership_changed = false;
        let mut came_up = Vec::new();
        while let Some(note) = self.runtime.to_notify() {
            match note {
                OwnedNotification::MemberUp(id) => {
                    came_up.push(id.node);
                    membership_changed = true;
                }
                OwnedNotification::Rejoin(id) => {
                    // foca renewed our identity after the cluster declared us down.
                    self.me = id;
                    membership_changed = true;
                }
                _ => membership_changed = true,
            }
        }
        if membership_changed {
            self.refresh_members(now);
            // A node that (re)appears gets our state at once, and gives us its own: what it
            // changed while away converges now rather than at the next periodic exchange.
            for node in came_up {
                self.start_sync(now, Some(node));
            }
        }
    }

    /// Rebuilds the member map from foca and bumps the view when a state changed.
    fn refresh_members(&mut self, _now: Instant) {
        let fresh: BTreeMap<NodeId, foca::Member<NodeIdentity>> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().node, m.clone()))
            .collect();
        let states =
            |m: &BTreeMap<NodeId, foca::Member<NodeIdentity>>| -> Vec<(NodeId, u64, foca::State)> {
                m.iter()
                    .map(|(id, m)| (*id, m.id().generation, m.state()))
                    .collect()
            };
        if states(&fresh) != states(&self.members) {
            self.view_generation += 1;
        }
        self.members = fresh;
        let size = self.peers.len().max(self.active_members().count() + 1);
        if size != self.cluster_size {
            let old = swim::config(&self.tuning, self.cluster_size);
            let new = swim::config(&self.tuning, size);
            self.cluster_size = size;
            if old.suspect_to_down_after != new.suspect_to_down_after
                || old.max_transmissions != new.max_transmissions
            {
                let _ = self.foca.set_config(new);
            }
        }
    }

    /// Alive and suspect members other than us.
    pub(super) fn active_members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.members
            .values()
            .filter(|m| active(m))
            .map(|m| m.id())
            .filter(move |id| id.node != self.me.node)
    }

    /// Whether `origin`'s rows are visible: ours, or an active member's.
    pub(super) fn visible(&self, origin: NodeId) -> bool {
        origin == self.me.node || self.members.get(&origin).is_some_and(active)
    }

    /// Joins peers that SWIM does not count as active yet: a few per tick, so a large cluster
    /// does not flood one node.
    fn announce(&mut self, now: Instant) {
        let mut candidates: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != self.me.node)
            .filter(|(id, _)| !self.members.get(id).is_some_and(active))
            .map(|(id, addr)| (*id, *addr))
            .collect();
        let take = candidates.len().min(3);
        for i in 0..take {
            let j = self.rng.random_range(i..candidates.len());
            candidates.swap(i, j);
        }
        for (node, addr) in candidates.into_iter().take(take) {
            let result = self
                .foca
                .announce(seed_identity(node, addr), &mut self.runtime);
            self.after_swim(now, result.is_err());
        }
    }

    /// Replaces our local entries with `entries` (the complete current set): changes are
    /// pushed to peers on their networks at once. Entries that fail validation, and repeats of
    /// a (network, task) key, are left out and returned; the others are published.
    pub fn publish(&mut self, now: Instant, entries: &[EndpointEntry]) -> Vec<EntryError> {
        let mut keys = BTreeSet::new();
        let mut refused = Vec::new();
        let mut accepted = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Err(err) = entry.validate() {
                refused.push(err);
            } else if !keys.insert((&entry.network_id, &entry.task_id)) {
                refused.push(EntryError::Duplicate {
                    network_id: entry.network_id.clone(),
                    task_id: entry.task_id.clone(),
                });
            } else {
                accepted.push(entry.clone());
            }
        }
        self.stats.refused_entries += refused.len() as u64;
        let groups = self.table.publish(&accepted, &mut self.clock, now);
        self.update_networks(now);
        if !groups.is_empty() {
            self.view_generation += 1;
            let origin_rounds = self.tuning.push_rounds.saturating_add(1);
            self.spread_groups(now, groups, BTreeSet::new(), origin_rounds);
        }
        refused
    }

    /// Declares the networks this node is on (from the control plane). Networks of our own
    /// published entries count too.
    pub fn set_networks(&mut self, now: Instant, networks: Vec<String>) {
        self.declared = networks.into_iter().collect();
        self.update_networks(now);
    }

    /// Recomputes the networks we are on; on a change, forgets others' rows on networks we
    /// left, declares the new set and syncs with a peer of each network we joined.
    fn update_networks(&mut self, now: Instant) {
        let mut effective = self.declared.clone();
        for entry in self.table.own_entries() {
            effective.insert(entry.network_id);
        }
        if effective == self.networks {
            return;
        }
        let joined: Vec<String> = effective.difference(&self.networks).cloned().collect();
        self.networks = effective;
        if self.table.retain_networks(&self.networks) {
            self.view_generation += 1;
        }
        for network in &self.networks {
            self.table.touch_own(network);
        }
        let version = self.clock.next(now);
        self.decls
            .insert(self.me.node, (version, self.networks.clone()));
        let decl = self.own_declaration();
        self.spread_decls(now, vec![decl], BTreeSet::new(), self.tuning.push_rounds);
        for network in joined {
            if let Some(peer) = self.random_peer_on(&network) {
                self.start_sync(now, Some(peer));
            }
        }
    }

    /// Sets the cluster's nodes: seeds to join, and the allow-list. Nodes no longer listed
    /// left the cluster for good: their rows and declarations are forgotten and SWIM is told
    /// they are down.
    pub fn set_peers(&mut self, now: Instant, peers: Vec<(NodeId, SocketAddr)>) {
        let new: BTreeMap<NodeId, SocketAddr> = peers.into_iter().collect();
        let removed: Vec<NodeId> = self
            .members
            .keys()
            .chain(self.decls.keys())
            .chain(self.peers.keys())
            .copied()
            .filter(|id| *id != self.me.node && !new.contains_key(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.peers = new;
        for node in removed {
            if self.table.remove_origin(node) {
                self.view_generation += 1;
            }
            self.decls.remove(&node);
            if let Some(member) = self.members.get(&node).filter(|m| active(m)) {
                let down =
                    foca::Member::new(member.id().clone(), member.incarnation(), foca::State::Down);
                let result = self
                    .foca
                    .apply_many(std::iter::once(down), true, &mut self.runtime);
                self.after_swim(now, result.is_err());
            }
        }
        self.refresh_members(now);
        self.announce(now);
    }

    /// Replaces the keyring: sealing uses its primary at once.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    /// Tells the cluster we leave (graceful shutdown): peers mark us down at once instead of
    /// suspecting us first.
    pub fn leave(&mut self, now: Instant) {
        let result = self.foca.leave_cluster(&mut self.runtime);
        self.after_swim(now, result.is_err());
    }

    /// A uniformly random index below `n` (n > 0).
    pub(super) fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }
}
