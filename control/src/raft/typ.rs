//! The Raft type configuration, named once.

use std::io::Cursor;

use crate::store::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Mesh's Raft: commands of the cluster store, u64 node IDs, nodes addressed by host:port.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node's Raft ID.
pub type NodeId = u64;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
