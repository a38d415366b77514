//! What a core shows its consumers: members, the visible table, diagnostics and counters.

use super::core::Core;
use super::entry::Endpoint;
use super::entry::EndpointEntry;
use super::stats::GossipStats;
use super::{Member, MemberState};
use crate::store::NodeId;

/// How a row stands, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RowState {
    /// Live, and its origin is up: in `endpoints()`.
    Visible,
    /// Live, but its origin is down or unknown to membership.
    Hidden,
    /// Deleted; kept until its lifetime passes and the watermark covers it.
    Tombstone,
}

/// One row of the diagnostic view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableRow {
    /// The network.
    pub network_id: String,
    /// The task.
    pub task_id: String,
    /// The owning node.
    pub origin: NodeId,
    /// The row's version.
    pub version: u64,
    /// The entry, None for a tombstone.
    pub entry: Option<EndpointEntry>,
    /// How it stands.
    pub state: RowState,
}

/// The diagnostic view: every row, and per (network, origin) the completeness watermark.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableView {
    /// Every row, tombstones and hidden ones included.
    pub rows: Vec<TableRow>,
    /// (network, origin, watermark).
    pub watermarks: Vec<(String, NodeId, u64)>,
}

impl Core {
    /// Every node known, ourselves included, by node id.
    pub fn members(&self) -> Vec<Member> {
        let mut out = vec![Member {
            node_id: self.me.node,
            addr: self.me.addr,
            state: MemberState::Alive,
            generation: self.me.generation,
            incarnation: 0,
            networks: self.networks.iter().cloned().collect(),
        }];
        for (node, member) in &self.members {
            if *node == self.me.node {
                continue;
            }
            out.push(Member {
                node_id: *node,
                addr: member.id().addr,
                state: self.member_state(*node).unwrap_or(MemberState::Down),
                generation: member.id().generation,
                incarnation: member.incarnation(),
                networks: self
                    .decls
                    .get(node)
                    .map(|(_, n)| n.iter().cloned().collect())
                    .unwrap_or_default(),
            });
        }
        out
    }

    /// Visible live rows: ours and active members', on networks we are on.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.table.endpoints(|origin| self.visible(origin))
    }

    /// Whether the visible table has the row (network, task): a cheap check for benchmarks
    /// and tests.
    pub fn has_endpoint(&self, network_id: &str, task_id: &str) -> bool {
        self.table
            .live_origin(network_id, task_id)
            .is_some_and(|origin| self.visible(origin))
    }

    /// How `node` stands in SWIM (ourselves: alive), or None if unknown.
    pub fn member_state(&self, node: NodeId) -> Option<MemberState> {
        if node == self.me.node {
            return Some(MemberState::Alive);
        }
        self.members.get(&node).map(|m| match m.state() {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        })
    }

    /// Every row, tombstones and hidden rows included, with watermarks.
    pub fn table_view(&self) -> TableView {
        self.table.view(|origin| self.visible(origin))
    }

    /// Counters.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Grows by at least one on every change of `members()` states or `endpoints()`.
    pub fn view_generation(&self) -> u64 {
        self.view_generation
    }

    /// Networks this node is on.
    pub fn networks(&self) -> Vec<String> {
        self.networks.iter().cloned().collect()
    }
}
