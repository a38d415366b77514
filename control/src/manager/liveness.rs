//! The leader's view of which nodes are alive: a node whose heartbeats stop for the down
//! timeout is marked Down, and Ready again when they resume. Gossip's failure detection (SWIM,
//! with indirect probes through other nodes) shortens that: a node gossip declares down whose
//! heartbeats have also paused is marked Down at once. A new leader first gives every node a
//! full timeout, so a change of leader never marks a healthy node Down.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::Manager;
use crate::store::{Command, NodeStatus};

/// How often the leader checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Heartbeat silence that confirms gossip's verdict: agents report twice a second, so a node
/// silent this long while gossip calls it down is not merely behind a blocked gossip port.
const GOSSIP_CONFIRM: Duration = Duration::from_millis(1200);

/// How old the newest gossip key may get before the leader adds another.
const GOSSIP_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Rotates the gossip key when the newest is older than its lifetime.
async fn rotate_stale_gossip_key(manager: &Manager) {
    let created_ms = manager.read(|s| {
        s.cluster
            .as_ref()
            .and_then(|c| c.gossip_keys.last().map(|k| k.created_ms))
    });
    let age_ms = super::orchestrate::now_ms().saturating_sub(created_ms.unwrap_or(0));
    if age_ms >= GOSSIP_KEY_LIFETIME.as_millis() as u64 {
        match manager.rotate_gossip_key().await {
            Ok(id) => tracing::info!(id, "rotated the gossip key"),
            Err(answer) => tracing::warn!(?answer, "rotating the gossip key"),
        }
    }
}

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
        rotate_stale_gossip_key(&manager).await;
        manager.seen(manager.node_id);
        let nodes: Vec<_> = manager.read(|s| s.nodes.values().map(|n| (n.id, n.status)).collect());
        let gossip_down = manager.gossip_down();
        let changes: Vec<Command> = {
            let seen = manager.last_seen.lock().expect("liveness lock");
            nodes
                .into_iter()
                .filter_map(|(id, status)| {
                    let last = seen.get(&id).copied().unwrap_or(since).max(since);
                    let silent = last.elapsed();
                    let confirmed = gossip_down.contains(&id) && silent >= GOSSIP_CONFIRM;
                    let alive = silent < manager.settings.down_after && !confirmed;
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
