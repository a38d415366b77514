//! How changes travel: an epidemic push for speed and anti-entropy for certainty.
//!
//! Push: a new change goes at once to `push_fanout` random peers on its network (all members
//! for declarations); every peer to whom it is new does the same, excluding whom it came from
//! and its origin, for `push_rounds` rounds `push_interval` apart, each round to peers not yet
//! sent to. Old news is not forwarded, so a change costs about fanout × rounds datagrams per
//! node, and reaches everyone in O(log n) hops with a miss probability near e^-(fanout×rounds).
//!
//! Anti-entropy: every `sync_interval` (jittered, and stretched by log2(n/32) past 32 nodes)
//! a node exchanges digests with one random peer that shares a network, over TCP, and each side
//! sends what the other lacks, restricted to the networks the other declared. A node that
//! (re)appears in membership or joins a network is synced with at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::core::{Core, Output, Rumor, Scope, TimerKind};
use super::envelope::Channel;
use super::message::{self, Declaration, Group, SyncMsg, SyncState};
use crate::store::NodeId;

/// Anti-entropy exchanges this node runs at once, at most; more requests wait for the next tick.
const MAX_SYNCS_IN_FLIGHT: usize = 2;

/// How a responder answers the first frame of an inbound stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAnswer {
    /// An anti-entropy exchange: send this answer, then read the initiator's closing frame and
    /// give it to [`Core::handle_sync_close`].
    Sync(Vec<u8>),
    /// A ping (`meshctl diag ports`): send this pong and end the stream.
    Pong(Vec<u8>),
}

impl Core {
    /// Applies received rows and returns those that were new here, per group.
    pub(super) fn apply_groups(&mut self, now: Instant, groups: &[Group]) -> Vec<Group> {
        let networks = &self.networks;
        self.stats.out_of_scope_dropped += groups
            .iter()
            .filter(|g| !networks.contains(&g.network))
            .map(|g| g.records.len() as u64)
            .sum::<u64>();
        let applied = self.table.apply(groups, |n| networks.contains(n), now);
        self.stats.stale_records += applied.stale;
        self.stats.fresh_records += applied
            .fresh
            .iter()
            .map(|g| g.records.len() as u64)
            .sum::<u64>();
        if applied.changed {
            self.view_generation += 1;
        }
        if let Some(version) = applied.own_ahead {
            self.own_version_ahead(now, version);
        }
        applied.fresh
    }

    /// A peer holds a version of ours later than our clock (our previous run's clock was
    /// ahead): move past it and give every own row a fresh version, or peers would refuse our
    /// changes as old.
    fn own_version_ahead(&mut self, now: Instant, version: u64) {
        self.clock.observe(version);
        let groups = self.table.republish(&mut self.clock, now);
        if !groups.is_empty() {
            self.view_generation += 1;
            self.spread_groups(now, groups, BTreeSet::new(), self.tuning.push_rounds);
        }
        let version = self.clock.next(now);
        self.decls
            .insert(self.me.node, (version, self.networks.clone()));
    }

    /// Our own declaration.
    pub(super) fn own_declaration(&self) -> Declaration {
        let (version, networks) = self.decls.get(&self.me.node).cloned().unwrap_or_default();
        Declaration {
            node: self.me.node,
            version,
            networks: networks.into_iter().collect(),
        }
    }

    /// Applies declarations; returns those that were new here.
    pub(super) fn apply_decls(
        &mut self,
        now: Instant,
        decls: Vec<Declaration>,
    ) -> Vec<Declaration> {
        let mut fresh = Vec::new();
        for decl in decls {
            if decl.node == self.me.node {
                let ours = self.decls.get(&self.me.node).map_or(0, |(v, _)| *v);
                if decl.version > ours {
                    // A declaration of our previous run with a later clock: supersede it.
                    self.clock.observe(decl.version);
                    let version = self.clock.next(now);
                    self.decls
                        .insert(self.me.node, (version, self.networks.clone()));
                    fresh.push(self.own_declaration());
                }
                continue;
            }
            if !self.allowed(decl.node) {
                continue;
            }
            let newer = self
                .decls
                .get(&decl.node)
                .is_none_or(|(v, _)| *v < decl.version);
            if newer {
                self.decls.insert(
                    decl.node,
                    (decl.version, decl.networks.iter().cloned().collect()),
                );
                fresh.push(decl);
            }
        }
        fresh
    }

    /// Starts pushing row changes: one rumor per network.
    pub(super) fn spread_groups(
        &mut self,
        now: Instant,
        groups: Vec<Group>,
        exclude: BTreeSet<NodeId>,
        rounds: u8,
    ) {
        let mut by_network: BTreeMap<String, Vec<Group>> = BTreeMap::new();
        for group in groups {
            by_network
                .entry(group.network.clone())
                .or_default()
                .push(group);
        }
        for (network, groups) in by_network {
            let payloads = message::pack_push(self.me.node, &groups);
            self.start_rumor(
                now,
                Scope::Network(network),
                payloads,
                exclude.clone(),
                rounds,
            );
        }
    }

    /// Starts pushing declarations to every member.
    pub(super) fn spread_decls(
        &mut self,
        now: Instant,
        decls: Vec<Declaration>,
        exclude: BTreeSet<NodeId>,
        rounds: u8,
    ) {
        let payloads = message::pack_decls(self.me.node, &decls);
        self.start_rumor(now, Scope::All, payloads, exclude, rounds);
    }

    fn start_rumor(
        &mut self,
        now: Instant,
        scope: Scope,
        payloads: Vec<Vec<u8>>,
        mut reached: BTreeSet<NodeId>,
        rounds: u8,
    ) {
        if payloads.is_empty() || rounds == 0 {
            return;
        }
        reached.insert(self.me.node);
        self.rumor_seq += 1;
        let id = self.rumor_seq;
        self.rumors.insert(
            id,
            Rumor {
                scope,
                payloads,
                reached,
                rounds_left: rounds,
            },
        );
        self.rumor_round(now, id);
    }

    /// Sends one round of a rumor to `push_fanout` peers that have not had it.
    pub(super) fn rumor_round(&mut self, now: Instant, id: u64) {
        let Some(mut rumor) = self.rumors.remove(&id) else {
            return;
        };
        let mut candidates: Vec<(NodeId, std::net::SocketAddr)> = self
            .active_members()
            .filter(|m| !rumor.reached.contains(&m.node))
            .filter(|m| match &rumor.scope {
                Scope::All => true,
                Scope::Network(network) => self
                    .decls
                    .get(&m.node)
                    .is_some_and(|(_, nets)| nets.contains(network)),
            })
            .map(|m| (m.node, m.addr))
            .collect();
        let take = candidates.len().min(self.tuning.push_fanout);
        for i in 0..take {
            let j = i + self.pick(candidates.len() - i);
            candidates.swap(i, j);
        }
        for (node, addr) in candidates.iter().take(take) {
            rumor.reached.insert(*node);
            for payload in &rumor.payloads {
                self.stats.pushes_out += 1;
                self.send(*addr, payload);
            }
        }
        rumor.rounds_left -= 1;
        if rumor.rounds_left > 0 && candidates.len() > take {
            self.rumors.insert(id, rumor);
            self.schedule(now + self.tuning.push_interval, TimerKind::Rumor(id));
        }
    }

    /// An active member that declared `network`, at random.
    pub(super) fn random_peer_on(&mut self, network: &str) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self
            .active_members()
            .filter(|m| {
                self.decls
                    .get(&m.node)
                    .is_some_and(|(_, nets)| nets.contains(network))
            })
            .map(|m| m.node)
            .collect();
        (!candidates.is_empty()).then(|| candidates[self.pick(candidates.len())])
    }

    /// The jittered period to the next periodic exchange: the interval, stretched by
    /// log2(n/32) past 32 nodes (memberlist's rule, so the cluster's sync load stays flat),
    /// times a factor in [0.75, 1.25).
    pub(super) fn sync_delay(&mut self) -> Duration {
        let scale = (self.cluster_size as f64 / 32.0).log2().ceil().max(1.0);
        let jitter = 0.75 + self.pick(1000) as f64 / 2000.0;
        self.tuning.sync_interval.mul_f64(scale * jitter)
    }

    /// Starts an anti-entropy exchange with `target`, or with a random active member that
    /// shares a network (any active member when none does: declarations still travel).
    pub(super) fn start_sync(&mut self, _now: Instant, target: Option<NodeId>) {
        if self.syncs.len() >= MAX_SYNCS_IN_FLIGHT {
            return;
        }
        let peer = match target {
            Some(node) => self
                .active_members()
                .find(|m| m.node == node)
                .map(|m| (m.node, m.addr)),
            None => {
                let active: Vec<(NodeId, std::net::SocketAddr)> =
                    self.active_members().map(|m| (m.node, m.addr)).collect();
                let sharing: Vec<(NodeId, std::net::SocketAddr)> = active
                    .iter()
                    .filter(|(node, _)| {
                        self.decls
                            .get(node)
                            .is_some_and(|(_, nets)| !nets.is_disjoint(&self.networks))
                    })
                    .copied()
                    .collect();
                let pool = if sharing.is_empty() { active } else { sharing };
                (!pool.is_empty()).then(|| pool[self.pick(pool.len())])
            }
        };
        let Some((peer, to)) = peer else {
            return;
        };
        if self.syncs.values().any(|p| *p == peer) {
            return;
        }
        let open = SyncMsg::Open(self.sync_state());
        let frame = self
            .keyring
            .seal(Channel::Stream, &message::encode_sync(&open));
        self.sync_seq += 1;
        let id = self.sync_seq;
        self.syncs.insert(id, peer);
        self.outputs.push_back(Output::Sync {
            id,
            peer,
            to,
            frame,
        });
    }

    fn sync_state(&self) -> SyncState {
        SyncState {
            from: self.me.node,
            networks: self.networks.iter().cloned().collect(),
            decl_digest: self.decls.iter().map(|(n, (v, _))| (*n, *v)).collect(),
            digest: self.table.digest(&self.networks),
        }
    }

    /// Declarations a peer with `digest` lacks.
    fn decls_missing(&self, digest: &[(NodeId, u64)]) -> Vec<Declaration> {
        let theirs: BTreeMap<NodeId, u64> = digest.iter().copied().collect();
        self.decls
            .iter()
            .filter(|(node, (version, _))| theirs.get(node).is_none_or(|v| v < version))
            .map(|(node, (version, nets))| Declaration {
                node: *node,
                version: *version,
                networks: nets.iter().cloned().collect(),
            })
            .collect()
    }

    /// Checks a peer's digest for our own rows held at a version we never issued: our
    /// previous run's clock was ahead of this one's.
    fn check_own_digest(&mut self, now: Instant, state: &SyncState) {
        let ahead = state
            .digest
            .iter()
            .flat_map(|d| d.origins.iter())
            .filter(|o| o.origin == self.me.node)
            .map(|o| o.complete.max(o.highest))
            .max();
        if let Some(ahead) = ahead.filter(|a| *a > self.clock.last()) {
            self.own_version_ahead(now, ahead);
        }
    }

    pub(super) fn open_frame(&mut self, frame: &[u8]) -> Option<SyncMsg> {
        let plain = match self.keyring.open(Channel::Stream, frame) {
            Ok(plain) => plain,
            Err(err) => {
                self.count_open_error(err);
                return None;
            }
        };
        match message::decode_sync(&plain) {
            Ok(msg) => Some(msg),
            Err(_) => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    /// Responder side of any inbound stream: answers its first frame, an anti-entropy opening
    /// or a ping (None: drop the connection).
    pub fn handle_stream_open(&mut self, now: Instant, frame: &[u8]) -> Option<StreamAnswer> {
        match self.open_frame(frame)? {
            SyncMsg::Open(state) => self.answer_sync(now, state).map(StreamAnswer::Sync),
            SyncMsg::Ping { nonce } => Some(StreamAnswer::Pong(self.answer_stream_ping(nonce))),
            _ => None,
        }
    }

    /// Responder side: answers a peer's opening frame (None: drop the connection).
    pub fn handle_sync_open(&mut self, now: Instant, frame: &[u8]) -> Option<Vec<u8>> {
        let Some(SyncMsg::Open(state)) = self.open_frame(frame) else {
            return None;
        };
        self.answer_sync(now, state)
    }

    fn answer_sync(&mut self, now: Instant, state: SyncState) -> Option<Vec<u8>> {
        if !self.allowed(state.from) || state.from == self.me.node {
            self.stats.unknown_senders += 1;
            return None;
        }
        self.stats.syncs_served += 1;
        self.check_own_digest(now, &state);
        let answer = SyncMsg::Answer {
            decls: self.decls_missing(&state.decl_digest),
            groups: self.table.missing_for(&state.networks, &state.digest),
            state: self.sync_state(),
        };
        Some(
            self.keyring
                .seal(Channel::Stream, &message::encode_sync(&answer)),
        )
    }

    /// Initiator side: takes the peer's answer to exchange `id`, returns the closing frame.
    pub fn handle_sync_answer(&mut self, now: Instant, id: u64, frame: &[u8]) -> Option<Vec<u8>> {
        let peer = self.syncs.remove(&id)?;
        let Some(SyncMsg::Answer {
            state,
            decls,
            groups,
        }) = self.open_frame(frame)
        else {
            self.stats.syncs_failed += 1;
            return None;
        };
        if state.from != peer {
            self.stats.syncs_failed += 1;
            return None;
        }
        self.apply_decls(now, decls);
        self.apply_groups(now, &groups);
        self.check_own_digest(now, &state);
        self.stats.syncs_completed += 1;
        let close = SyncMsg::Close {
            decls: self.decls_missing(&state.decl_digest),
            groups: self.table.missing_for(&state.networks, &state.digest),
        };
        Some(
            self.keyring
                .seal(Channel::Stream, &message::encode_sync(&close)),
        )
    }

    /// Responder side: applies the initiator's closing frame.
    pub fn handle_sync_close(&mut self, now: Instant, frame: &[u8]) {
        if let Some(SyncMsg::Close { decls, groups }) = self.open_frame(frame) {
            self.apply_decls(now, decls);
            self.apply_groups(now, &groups);
        }
    }

    /// Initiator side: exchange `id` failed (connect, I/O, timeout).
    pub fn sync_failed(&mut self, id: u64) {
        if self.syncs.remove(&id).is_some() {
            self.stats.syncs_failed += 1;
        }
    }
}
