//! The leader's view of which nodes are alive: a node whose heartbeats stop for the down
//! timeout is marked Down, and Ready again when they resume. A new leader first gives every
//! node a full timeout, so a change of leader never marks a healthy node Down.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::Manager;
use crate::store::{Command, NodeStatus};

/// How often the leader checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

pub(super) async fn watch(manager: Weak<Manager>) {
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let Some(manager) = manager.upgrade() else {
            return;
        };
        if !manager.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        manager.seen(manager.node_id);
        let nodes: Vec<_> = manager.read(|s| s.nodes.values().map(|n| (n.id, n.status)).collect());
        let changes: Vec<Command> = {
            let seen = manager.last_seen.lock().expect("liveness lock");
            nodes
                .into_iter()
                .filter_map(|(id, status)| {
                    let last = seen.get(&id).copied().unwrap_or(since).max(since);
                    let alive = last.elapsed() < manager.settings.down_after;
                    match (status, alive) {
                        (NodeStatus::Ready, false) => Some(Command::SetStatus {
                            id,
                            status: NodeStatus::Down,
                        }),
                        (NodeStatus::Down, true) if seen.contains_key(&id) => {
                            Some(Command::SetStatus {
                                id,
                                status: NodeStatus::Ready,
                            })
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        for change in changes {
            if let Err(err) = manager.write(change.clone()).await {
                tracing::debug!(error = %err, ?change, "recording a liveness change");
            } else {
                tracing::info!(?change, "node liveness changed");
            }
        }
    }
}
