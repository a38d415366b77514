//! `meshd --force-new-cluster`: when a majority of managers is gone for good, turn one
//! surviving manager into a one-voter cluster that keeps all the state it has.
//!
//! Everything in the local log is applied on top of the last snapshot (as etcd does), the
//! other managers leave the store (they must rejoin), and the Raft storage is reset to a
//! snapshot whose membership is this manager alone, with a vote for a newer term. On start,
//! Raft elects this manager and the cluster accepts writes again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{BasicNode, EntryPayload, Membership, StoredMembership, Vote};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::typ::NodeId;
use crate::store::Role;

/// What recovery kept and dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Index of the last log entry applied.
    pub last_index: u64,
    /// Managers removed from the store (they must rejoin).
    pub removed_managers: Vec<String>,
}

/// Rewrites the Raft storage in `raft_dir` into a one-voter cluster of `node_id` at `addr`.
pub fn force_new_cluster(
    raft_dir: &Path,
    node_id: NodeId,
    addr: &str,
) -> Result<Recovered, String> {
    let failed = |what: &str, err: &dyn std::fmt::Display| {
        format!("{what} in {}: {err}", raft_dir.display())
    };
    let log = LogStore::open(&raft_dir.join("log.redb"))
        .map_err(|e| failed("opening the Raft log", &e))?;
    let machine =
        StateMachine::open(raft_dir).map_err(|e| failed("opening the state machine", &e))?;
    let mut image = machine.image();
    let after = image.last_applied.map_or(0, |id| id.index + 1);
    let entries = log
        .entries_from(after)
        .map_err(|e| failed("reading the Raft log", &e))?;
    for entry in entries {
        image.last_applied = Some(entry.log_id);
        if let EntryPayload::Normal(command) = entry.payload {
            image.state.apply(command);
        }
    }
    let Some(last) = image.last_applied else {
        return Err("this manager's Raft store is empty: there is no state to recover; initialize a new cluster instead".into());
    };
    let mut removed_managers = Vec::new();
    image.state.nodes.retain(|id, node| {
        let keep = node.role != Role::Manager || *id == node_id;
        if !keep {
            removed_managers.push(node.name.clone());
        }
        keep
    });
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(
            node_id,
            BasicNode {
                addr: addr.to_string(),
            },
        )]),
    );
    image.last_membership = StoredMembership::new(Some(last), membership);
    machine
        .replace_with(image)
        .map_err(|e| failed("writing the recovered snapshot", &e))?;
    let vote = Vote::new(last.leader_id.term + 1, node_id);
    log.reset_to(last, vote)
        .map_err(|e| failed("resetting the Raft log", &e))?;
    Ok(Recovered {
        last_index: last.index,
        removed_managers,
    })
}
