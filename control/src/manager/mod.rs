//! A manager: a Raft voter holding the cluster store, serving the cluster port, and, while it
//! leads, admitting nodes, answering the cluster API and watching node liveness.

mod api;
mod diag;
mod join;
mod leadership;
mod liveness;
pub mod logs;
mod networks;
pub mod orchestrate;
mod roles;
pub mod secrets;
mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, SnapshotPolicy};
use thiserror::Error;

use crate::api::ApiResponse;
use crate::cluster::quorum;
use crate::cluster::tls::{NodeCredentials, PeerIdentity, TlsError};
use crate::cluster::CertRole;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::raft::typ::{NodeId, Raft};
use crate::rpc::messages::{Request, Response};
use crate::rpc::server::Handler;
use crate::store::{ClusterState, Command, CommandResult};

/// How long a write may wait for its commit before the manager reports the quorum lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader that has not heard from a quorum for this long cannot commit: writes fail fast.
/// Followers are asked every 100 ms, so this is five missed rounds.
const QUORUM_ACK_LIMIT_MS: u64 = 500;

/// Errors starting a manager.
#[derive(Debug, Error)]
pub enum ManagerError {
    /// The Raft directory cannot be used.
    #[error("opening the Raft store in {path}: {reason}")]
    Store { path: String, reason: String },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// openraft refused to start or initialize.
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// Tunables of a manager.
#[derive(Clone, Copy, Debug)]
pub struct ManagerSettings {
    /// A node whose heartbeats stop for this long is marked Down.
    pub down_after: Duration,
}

/// A running manager.
pub struct Manager {
    node_id: NodeId,
    raft: Raft,
    store: StateMachine,
    credentials: NodeCredentials,
    settings: ManagerSettings,
    /// When the leader last heard from each node (only meaningful while leading).
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// The connection API calls are forwarded on, to the leader as Raft last named it.
    forward_client: Mutex<Option<Arc<crate::rpc::client::Client>>>,
    /// Recent task output, shipped by agents (only meaningful while leading).
    logs: Mutex<logs::LogBuffer>,
    /// Each node's gossip view of the endpoint table, as last shipped, and when (only
    /// meaningful while leading).
    endpoint_views: Mutex<HashMap<NodeId, (u64, Vec<crate::discovery::SeenEndpoint>)>>,
    /// `meshctl diag` jobs in flight (only meaningful while leading).
    diag: diag::DiagJobs,
    /// This node's gossip, whose failure detection feeds liveness.
    discovery: Mutex<Option<Arc<crate::discovery::Discovery>>>,
    /// The node's state directory.
    state_dir: std::path::PathBuf,
    /// The key secrets are encrypted with at rest; None on a manager of a cluster made
    /// before secrets existed (it can neither create nor deliver them).
    data_key: Option<crate::secrets::crypto::DataKey>,
}

impl Manager {
    /// Opens the Raft store under `state_dir/raft` and starts Raft.
    pub async fn start(
        node_id: NodeId,
        state_dir: &Path,
        credentials: NodeCredentials,
        settings: ManagerSettings,
    ) -> Result<Arc<Manager>, ManagerError> {
        let dir = state_dir.join("raft");
        let store_error = |reason: String| ManagerError::Store {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(|e| store_error(e.to_string()))?;
        let data_key = crate::secrets::crypto::DataKey::load(state_dir)
            .map_err(|e| store_error(e.to_string()))?;
        let log = LogStore::open(&dir.join("log.redb")).map_err(|e| store_error(e.to_string()))?;
        let store = StateMachine::open(&dir).map_err(|e| store_error(e.to_string()))?;
        let config = Config {
            cluster_name: "mesh".into(),
            // A follower calls an election after 3 to 6 missed heartbeats, so a dead leader is
            // replaced, and the next write committed, well inside the 2 s a failover may take.
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ManagerError::Raft(e.to_string()))?;
        let tls = credentials.client_config()?;
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            Network::new(Arc::clone(&tls)),
            log,
            store.clone(),
        )
        .await
        .map_err(|e| ManagerError::Raft(e.to_string()))?;
        let manager = Arc::new(Manager {
            node_id,
            raft,
            store,
            credentials,
            settings,
            last_seen: Mutex::new(HashMap::new()),
            forward_client: Mutex::new(None),
            logs: Mutex::new(logs::LogBuffer::default()),
            discovery: Mutex::new(None),
            endpoint_views: Mutex::new(HashMap::new()),
            diag: diag::DiagJobs::default(),
            state_dir: state_dir.to_path_buf(),
            data_key,
        });
        tokio::spawn(leadership::log_terms(manager.raft.metrics(), node_id));
        tokio::spawn(liveness::watch(Arc::downgrade(&manager)));
        tokio::spawn(orchestrate::run(Arc::downgrade(&manager)));
        Ok(manager)
    }

    /// Makes this manager the only voter of a new cluster and waits until it leads.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), ManagerError> {
        let members = BTreeMap::from([(
            self.node_id,
            BasicNode {
                addr: addr.to_string(),
            },
        )]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.node_id, "bootstrap")
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Gives liveness this node's gossip view.
    pub fn set_discovery(&self, discovery: Arc<crate::discovery::Discovery>) {
        *self.discovery.lock().expect("discovery lock") = Some(discovery);
    }

    /// Nodes this node's gossip has declared down.
    fn gossip_down(&self) -> Vec<NodeId> {
        let discovery = self.discovery.lock().expect("discovery lock").clone();
        discovery.map(|d| d.down_nodes()).unwrap_or_default()
    }

    /// This manager's node ID.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The Raft handle (metrics, membership).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Reads the local copy of the cluster store (possibly stale on a follower).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        self.store.read(f)
    }

    /// Whether this manager leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// The leader's cluster address, when one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, node)| node.addr.clone());
        addr
    }

    /// Voter IDs and their addresses.
    pub fn voters(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }

    /// Managers the leader heard from within the down timeout, itself included.
    fn reachable_voters(&self) -> usize {
        let seen = self.last_seen.lock().expect("liveness lock");
        self.voters()
            .iter()
            .filter(|(id, _)| {
                *id == self.node_id
                    || seen
                        .get(id)
                        .is_some_and(|t| t.elapsed() < self.settings.down_after)
            })
            .count()
    }

    /// Whether this leader has lost its quorum: no majority acknowledged it recently. Checked
    /// before waiting on Raft, so writes fail fast when the quorum is gone.
    fn quorum_lost(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let voters = metrics.membership_config.membership().voter_ids().count();
        voters > 1
            && metrics
                .millis_since_quorum_ack
                .is_none_or(|ms| ms > QUORUM_ACK_LIMIT_MS)
    }

    /// The quorum-lost error, counting the managers that answer a probe right now (heartbeat
    /// ages lag a fresh failure by up to the down timeout).
    async fn quorum_error(&self) -> String {
        quorum_lost_message(self.voters().len(), self.probe_voters().await.len())
    }

    /// Commits a command through Raft (leader only) and returns its result.
    pub async fn write(&self, command: Command) -> Result<CommandResult, String> {
        if self.quorum_lost() {
            // Fail fast only when a probe confirms it: the ack age lags a voter that has just
            // joined (it has acknowledged nothing yet), and a join right after another was
            // refused with "2 of 2 managers reachable". Otherwise Raft decides, within the
            // write timeout.
            let managers = self.voters().len();
            let reachable = self.probe_voters().await.len();
            if reachable < crate::cluster::quorum::quorum(managers) {
                return Err(quorum_lost_message(managers, reachable));
            }
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(err)) => Err(format!("the write was not committed: {err}")),
            // The entry may be in the log already: say honestly that its fate is open.
            Err(_) => {
                let why = if self.quorum_lost() {
                    self.quorum_error().await
                } else {
                    "the write did not commit within 5 s; check `meshctl info` for unreachable managers".into()
                };
                Err(format!(
                    "{why}; this change was not committed, and is applied only if the managers come back before another leader takes over"
                ))
            }
        }
    }

    /// Commits a command and turns a refusal into an API error.
    async fn apply(&self, command: Command) -> Result<(), ApiResponse> {
        match self.write(command).await {
            Ok(CommandResult::Ok) => Ok(()),
            Ok(CommandResult::Refused(why)) => Err(ApiResponse::Error(why)),
            Err(why) => Err(ApiResponse::Error(why)),
        }
    }

    /// Records a heartbeat (leader only).
    fn seen(&self, node: NodeId) {
        self.last_seen
            .lock()
            .expect("liveness lock")
            .insert(node, Instant::now());
    }

    /// The managers' addresses, as heartbeat answers carry them.
    fn manager_addrs(&self) -> Vec<String> {
        self.voters().into_iter().map(|(_, addr)| addr).collect()
    }
}

/// The quorum-lost error an operator sees.
pub fn quorum_lost_message(managers: usize, reachable: usize) -> String {
    let needed = quorum::quorum(managers);
    format!(
        "quorum lost: {reachable} of {managers} managers reachable, {needed} needed; bring back {} more manager{} (running tasks are unaffected; if they cannot come back, recover from a surviving manager with `meshd --force-new-cluster`)",
        quorum::missing_for_quorum(managers, reachable),
        if quorum::missing_for_quorum(managers, reachable) == 1 { "" } else { "s" }
    )
}

fn is_manager_of(peer: &Option<PeerIdentity>, cluster_id: &str) -> bool {
    peer.as_ref()
        .is_some_and(|p| p.role == CertRole::Manager && p.cluster_id == cluster_id)
}

impl Handler for Manager {
    async fn handle(&self, peer: Option<PeerIdentity>, request: Request) -> Response {
        let cluster_id = self
            .read(|s| s.cluster.as_ref().map(|c| c.id.clone()))
            .unwrap_or_default();
        let manager_only =
            "refused: only managers of this cluster may send this; check the node's certificate"
                .to_string();
        match request {
            Request::Join(join) => self.join(join).await,
            Request::AppendEntries(rpc) => {
                if !is_manager_of(&peer, &cluster_id) && !cluster_id.is_empty() {
                    return Response::Refused(manager_only);
                }
                Response::AppendEntries(self.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => {
                if !is_manager_of(&peer, &cluster_id) && !cluster_id.is_empty() {
                    return Response::Refused(manager_only);
                }
                Response::Vote(self.raft.vote(rpc).await)
            }
            Request::InstallSnapshot(rpc) => {
                if !is_manager_of(&peer, &cluster_id) && !cluster_id.is_empty() {
                    return Response::Refused(manager_only);
                }
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::Heartbeat { node_id, .. } => {
                let Some(peer) = peer.filter(|p| p.cluster_id == cluster_id) else {
                    return Response::Refused(
                        "refused: heartbeats need a certificate of this cluster".into(),
                    );
                };
                if peer.node_id != crate::api::format_node_id(node_id) {
                    return Response::Refused(
                        "refused: a node may only send its own heartbeat".into(),
                    );
                }
                if !self.is_leader() {
                    return Response::NotLeader {
                        leader_addr: self.leader_addr(),
                    };
                }
                self.seen(node_id);
                let role = self.read(|s| s.nodes.get(&node_id).map(|n| n.role));
                match role {
                    Some(role) => Response::HeartbeatAck {
                        managers: self.manager_addrs(),
                        role,
                    },
                    None => Response::Refused(
                        "this node is no longer in the cluster; join again".into(),
                    ),
                }
            }
            Request::Renew { csr_der } => {
                let Some(peer) = peer.filter(|p| p.cluster_id == cluster_id) else {
                    return Response::Refused(
                        "refused: renewal needs a certificate of this cluster".into(),
                    );
                };
                if !self.is_leader() {
                    return Response::NotLeader {
                        leader_addr: self.leader_addr(),
                    };
                }
                self.renew(&peer, &csr_der).await
            }
            Request::Leave => {
                let Some(peer) = peer.filter(|p| p.cluster_id == cluster_id) else {
                    return Response::Refused(
                        "refused: leaving needs a certificate of this cluster".into(),
                    );
                };
                if !self.is_leader() {
                    return Response::NotLeader {
                        leader_addr: self.leader_addr(),
                    };
                }
                self.leave(&peer).await
            }
            Request::Agent(report) => {
                let Some(peer) = peer.filter(|p| p.cluster_id == cluster_id) else {
                    return Response::Refused(
                        "refused: agents need a certificate of this cluster".into(),
                    );
                };
                if !self.is_leader() {
                    return Response::NotLeader {
                        leader_addr: self.leader_addr(),
                    };
                }
                self.dispatch(&peer, report).await
            }
            Request::DiagResult {
                node_id,
                job_id,
                result,
            } => {
                let from_node = peer.as_ref().is_some_and(|p| {
                    p.cluster_id == cluster_id && p.node_id == crate::api::format_node_id(node_id)
                });
                if !from_node {
                    return Response::Refused("refused: a node may only report for itself".into());
                }
                self.diag_result(node_id, &job_id, result);
                Response::Ok
            }
            Request::Api(request) => {
                // Any member may ask for a diagnosis; everything else is for managers.
                let member = peer.as_ref().is_some_and(|p| p.cluster_id == cluster_id);
                let allowed = is_manager_of(&peer, &cluster_id)
                    || (member && matches!(request, crate::api::ApiRequest::Diag(_)));
                if !allowed {
                    return Response::Refused(manager_only);
                }
                if !self.is_leader() {
                    return Response::NotLeader {
                        leader_addr: self.leader_addr(),
                    };
                }
                Response::Api(self.api_as_leader(request).await)
            }
        }
    }
}
