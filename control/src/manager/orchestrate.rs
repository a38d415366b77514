//! The leader's control loops: the orchestrator pass a few times a second, and the
//! dispatcher that answers agents.

use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use super::Manager;
use crate::api::format_node_id;
use crate::cluster::tls::PeerIdentity;
use crate::orchestrator::reconcile;
use crate::rpc::messages::{
    AgentReport, Assignment, Assignments, GossipAssignment, NetworkAssignment, Response,
    ServiceOnNetwork,
};
use crate::service::spec::PublishMode;
use crate::service::{DesiredState, TaskOp};
use crate::store::Command;

/// The leader reconciles after every change to the store, and at least this often (restart
/// delays expire without a change).
const PASS_INTERVAL: Duration = Duration::from_millis(500);
/// The longest a dispatcher answer is held waiting for new work.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Changes arriving together (a burst of agent reports) are handled in one pass.
const SETTLE: Duration = Duration::from_millis(10);

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh service or task ID: 25 lowercase letters and digits, like Swarm's.
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 25];
    // The system RNG does not fail on Linux; a zeroed ID would still be valid.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

pub(super) async fn run(manager: Weak<Manager>) {
    let Some(mut changes) = manager.upgrade().map(|m| m.store.subscribe()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = changes.changed() => tokio::time::sleep(SETTLE).await,
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        if !manager.is_leader() || !manager.caught_up() {
            continue;
        }
        let changes = manager.read(|state| reconcile(state, now_ms(), &mut random_id));
        if !changes.tasks.is_empty() {
            let count = changes.tasks.len();
            if let Err(err) = manager.write(Command::Tasks(changes.tasks)).await {
                tracing::debug!(error = %err, "committing an orchestrator pass");
            } else {
                tracing::debug!(changes = count, "orchestrator pass committed");
            }
        }
        for command in changes.services {
            match &command {
                Command::UpdateProgress { id, status, .. } => {
                    tracing::info!(service = %id, state = ?status.state, message = %status.message, "service update moved on");
                }
                Command::RollbackService { id, reason, .. } => {
                    tracing::info!(service = %id, %reason, "service update rolls back");
                }
                _ => {}
            }
            if let Err(err) = manager.write(command).await {
                tracing::debug!(error = %err, "committing an update's progress");
            }
        }
        let known: std::collections::HashSet<String> =
            manager.read(|s| s.tasks.keys().cloned().collect());
        manager
            .logs
            .lock()
            .expect("log buffer lock")
            .retain(|task| known.contains(task));
    }
}

impl Manager {
    /// Whether everything in this leader's log is applied, so the store it reads is complete.
    fn caught_up(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.last_applied.map(|l| l.index) == metrics.last_log_index
    }

    /// The dispatcher: records an agent's report and answers with its assignments.
    pub(super) async fn dispatch(&self, peer: &PeerIdentity, report: AgentReport) -> Response {
        let node_id = report.node_id;
        if peer.node_id != format_node_id(node_id) {
            return Response::Refused("refused: a node may only report for itself".into());
        }
        self.seen(node_id);
        let now = now_ms();
        if let Some(view) = report.endpoint_view {
            let mut views = self.endpoint_views.lock().expect("endpoint views lock");
            views.insert(node_id, (now, view));
        }
        let (known, stale_description, changed) = self.read(|state| {
            let node = state.nodes.get(&node_id);
            let changed: Vec<TaskOp> = report
                .tasks
                .into_iter()
                .filter(|r| {
                    state
                        .tasks
                        .get(&r.task_id)
                        .is_some_and(|t| t.node_id == Some(node_id) && r.is_news(t))
                })
                .map(|mut r| {
                    r.node_id = node_id;
                    r.at_ms = now;
                    TaskOp::Report(r)
                })
                .collect();
            (
                node.is_some(),
                node.is_some_and(|n| n.description != report.description),
                changed,
            )
        });
        if !known {
            return Response::Refused("this node is no longer in the cluster; join again".into());
        }
        if stale_description {
            let describe = Command::DescribeNode {
                id: node_id,
                description: report.description,
            };
            if let Err(err) = self.write(describe).await {
                tracing::debug!(error = %err, "recording a node description");
            }
        }
        if !changed.is_empty() {
            if let Err(err) = self.write(Command::Tasks(changed)).await {
                // The agent resends its states with the next report.
                tracing::debug!(error = %err, "recording task reports");
            }
        }
        self.logs.lock().expect("log buffer lock").push(report.logs);
        // Hold the answer until this node's work changes, when the agent asks to wait.
        let mut changes = self.store.subscribe();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(report.wait_ms.min(MAX_WAIT.as_millis() as u64));
        loop {
            // Armed before the check, so a job added in between is not missed.
            let new_job = self.diag.wake.notified();
            let mut assignments = self.read(|state| {
                let mut assignments = assignments_for(state, node_id);
                self.attach_secrets(state, &mut assignments);
                assignments
            });
            assignments.diag = self.diag_jobs_for(node_id);
            assignments.fingerprint = fingerprint(&assignments);
            if assignments.fingerprint != report.known
                || tokio::time::Instant::now() >= deadline
                || !self.is_leader()
            {
                return Response::Assignments(Box::new(assignments));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = new_job => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// What node `node_id` must run: its tasks (but not the finished ones it already reported), and
/// every endpoint of the networks they are attached to.
pub fn assignments_for(
    state: &crate::store::ClusterState,
    node_id: crate::store::NodeId,
) -> Assignments {
    let tasks: Vec<Assignment> = state
        .tasks
        .values()
        .filter(|t| t.node_id == Some(node_id))
        .filter(|t| !(t.desired == DesiredState::Shutdown && t.state.is_terminal()))
        .map(|t| Assignment {
            task: t.clone(),
            spec: state.services.get(&t.service_id).map(|s| s.spec.clone()),
            secrets: Vec::new(),
        })
        .collect();
    let mut wanted: std::collections::BTreeSet<&str> = tasks
        .iter()
        .filter(|a| !a.task.state.is_terminal())
        .flat_map(|a| a.task.attachments.iter().map(|n| n.network_id.as_str()))
        .collect();
    // Published ports answer on every node: each node needs the ingress network of every
    // service that publishes one, to learn its backends by gossip.
    wanted.extend(
        state
            .services
            .values()
            .filter(|s| s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress))
            .filter_map(|s| ingress_network(state, s))
            .map(|n| n.id.as_str()),
    );
    let networks: Vec<NetworkAssignment> = wanted
        .into_iter()
        .filter_map(|id| state.networks.get(id))
        .map(|network| NetworkAssignment {
            network: network.clone(),
            mtu: crate::network::effective_mtu(state, network),
            services: state
                .services
                .values()
                .filter(|s| s.spec.networks.contains(&network.name))
                .map(|s| ServiceOnNetwork {
                    id: s.id.clone(),
                    name: s.spec.name.clone(),
                    vip: s
                        .vips
                        .iter()
                        .find(|v| v.network_id == network.id)
                        .map(|v| v.ip),
                    ports: s.spec.ports.clone(),
                    ingress: ingress_network(state, s).is_some_and(|n| n.id == network.id),
                })
                .collect(),
        })
        .collect();
    let gossip = GossipAssignment {
        keys: state
            .cluster
            .as_ref()
            .map(|c| c.gossip_keys.clone())
            .unwrap_or_default(),
        peers: state
            .nodes
            .values()
            .filter(|n| n.id != node_id)
            .filter_map(|n| {
                let ip = node_ip(&n.addr)?;
                let port = match n.description.gossip_port {
                    0 => crate::config::DEFAULT_GOSSIP_PORT,
                    port => port,
                };
                Some((n.id, std::net::SocketAddr::new(ip.into(), port)))
            })
            .collect(),
    };
    let mut assignments = Assignments {
        tasks,
        networks,
        data_path_port: state.cluster.as_ref().map_or(4789, |c| c.data_path_port),
        gossip,
        diag: Vec::new(),
        fingerprint: 0,
    };
    assignments.fingerprint = fingerprint(&assignments);
    assignments
}

/// The network a service's published ports reach its tasks through: its first.
fn ingress_network<'a>(
    state: &'a crate::store::ClusterState,
    service: &crate::service::ServiceRecord,
) -> Option<&'a crate::network::NetworkRecord> {
    let first = service.spec.networks.first()?;
    state.networks.values().find(|n| &n.name == first)
}

/// A digest of assignments (fingerprint zeroed), stable within one leader's lifetime.
fn fingerprint(assignments: &Assignments) -> u64 {
    use std::hash::{Hash, Hasher};
    // Secrets are immutable, so their IDs stand for their data: no digest of a plaintext is
    // ever computed (or sent back by the agent).
    let bytes = if assignments.tasks.iter().any(|a| !a.secrets.is_empty()) {
        let mut stripped = assignments.clone();
        for secret in stripped.tasks.iter_mut().flat_map(|a| a.secrets.iter_mut()) {
            secret.data = crate::secrets::Blob::default();
        }
        serde_json::to_vec(&stripped).unwrap_or_default()
    } else {
        serde_json::to_vec(assignments).unwrap_or_default()
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    // 0 means "nothing known yet" to the agent.
    hasher.finish().max(1)
}

/// The IPv4 address of a `host:port` node address.
fn node_ip(addr: &str) -> Option<std::net::Ipv4Addr> {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_lowercase_alphanumerics_and_differ() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 25);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, b);
    }
}
