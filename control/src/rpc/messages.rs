//! What nodes say to each other on the cluster port.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::api::{ApiRequest, ApiResponse};
use crate::network::NetworkRecord;
use crate::raft::typ::{NodeId, TypeConfig};
use crate::runtime::Stream;
use crate::service::spec::PortConfig;
use crate::service::{ServiceSpec, TaskRecord, TaskReport};
use crate::store::{GossipKey, NodeDescription, Role};

/// A request on the cluster port. Only `Join` is served to a peer without a certificate; the
/// Raft requests and `Api` only to managers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// A new node asks to join with a token and a CSR.
    Join(JoinRequest),
    /// Raft log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot transfer, one chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A node is alive.
    Heartbeat { node_id: NodeId, version: String },
    /// A cluster API call forwarded by a manager to the leader.
    Api(ApiRequest),
    /// A node whose role changed asks for a certificate of its new role.
    Renew { csr_der: Vec<u8> },
    /// A node leaves the cluster.
    Leave,
    /// A node's agent reports its tasks and asks for its assignments.
    Agent(AgentReport),
    /// A node's agent sends what a diagnosis job found.
    DiagResult {
        node_id: NodeId,
        job_id: String,
        result: crate::diag::DiagResult,
    },
}

/// What an agent tells the dispatcher every half second.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentReport {
    /// The reporting node.
    pub node_id: NodeId,
    /// Its runtime, capacity and images.
    pub description: NodeDescription,
    /// The state of every task it holds.
    pub tasks: Vec<TaskReport>,
    /// Output lines its tasks wrote since the last accepted report.
    pub logs: Vec<LogRecord>,
    /// The fingerprint of the assignments it holds, and how long the dispatcher may hold the
    /// answer waiting for them to change (0: answer at once). Agents watch for new work this
    /// way instead of polling fast.
    #[serde(default)]
    pub known: u64,
    #[serde(default)]
    pub wait_ms: u64,
    /// Its gossip view of the endpoint table, when it changed (and now and then regardless),
    /// for `network inspect --verbose`.
    #[serde(default)]
    pub endpoint_view: Option<Vec<crate::discovery::SeenEndpoint>>,
}

/// One output line of a task, as an agent ships it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The task.
    pub task_id: String,
    /// Per-task line number, from 1.
    pub seq: u64,
    /// Which stream.
    pub stream: Stream,
    /// The line.
    pub line: String,
    /// When the agent read it (milliseconds since the epoch).
    pub at_ms: u64,
}

/// What the dispatcher answers an agent: its tasks, and the overlay networks they use with
/// every endpoint on them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// The node's tasks.
    pub tasks: Vec<Assignment>,
    /// Networks the node's tasks are attached to, and the first network of every service that
    /// publishes ports (the routing mesh answers on every node).
    pub networks: Vec<NetworkAssignment>,
    /// The cluster's VXLAN port.
    pub data_path_port: u16,
    /// Keys and peers for gossip.
    #[serde(default)]
    pub gossip: GossipAssignment,
    /// Diagnosis jobs this node must run now (`meshctl diag`).
    #[serde(default)]
    pub diag: Vec<crate::diag::DiagJob>,
    /// A digest of everything above, for the agent's next `known`.
    pub fingerprint: u64,
}

/// One overlay network as a node needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkAssignment {
    /// The network.
    pub network: NetworkRecord,
    /// The MTU its interfaces get.
    pub mtu: u32,
    /// Every service attached to it. Its tasks' endpoints arrive by gossip, straight from the
    /// hosts that run them.
    pub services: Vec<ServiceOnNetwork>,
}

/// A service as the hosts on one of its networks need it: for DNS and load balancing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOnNetwork {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Its VIP on this network (endpoint mode vip), or None (dnsrr).
    pub vip: Option<std::net::Ipv4Addr>,
    /// Published ports, for SRV records and the routing mesh.
    pub ports: Vec<PortConfig>,
    /// This is the service's first network: its published ports reach its tasks through it.
    #[serde(default)]
    pub ingress: bool,
}

/// How this node takes part in gossip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipAssignment {
    /// The cluster's gossip keys, oldest first.
    pub keys: Vec<GossipKey>,
    /// Every other node's gossip address.
    pub peers: Vec<(NodeId, std::net::SocketAddr)>,
}

/// A task for an agent: its record and the spec of its service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub task: TaskRecord,
    /// Its service's spec; None once the service is removed (the task only has to stop).
    pub spec: Option<ServiceSpec>,
    /// The plaintext of the secrets and configs its spec references (only for a task that is
    /// to run on the node this goes to; over mTLS, never stored).
    #[serde(default)]
    pub secrets: Vec<crate::secrets::SecretData>,
}

/// What a joining node sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token as the operator gave it.
    pub token: String,
    /// A certificate request for the node's fresh key (DER).
    pub csr_der: Vec<u8>,
    /// The node's name.
    pub name: String,
    /// host:port where the node's cluster listener is reachable.
    pub addr: String,
    /// meshd version.
    pub version: String,
    /// Its runtime, capacity and images, so services can use it from the start.
    #[serde(default)]
    pub description: NodeDescription,
}

/// What an accepted node receives.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// Its node ID.
    pub node_id: NodeId,
    /// Its role, as the token granted.
    pub role: Role,
    /// The cluster ID.
    pub cluster_id: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Every manager: ID and address.
    pub managers: Vec<(NodeId, String)>,
    /// The data key secrets are encrypted with at rest (managers only).
    #[serde(default)]
    pub data_key: Option<crate::secrets::Blob>,
}

/// An answer on the cluster port.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Answer to AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to Vote.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to InstallSnapshot.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The join was accepted.
    Joined(JoinAccepted),
    /// Answer to an API call.
    Api(ApiResponse),
    /// A heartbeat was recorded: the managers' addresses now, and the role the cluster wants
    /// this node in (it differs from the node's after a promotion or demotion).
    HeartbeatAck { managers: Vec<String>, role: Role },
    /// A certificate for the node's current role.
    Renewed {
        cert_pem: String,
        role: Role,
        managers: Vec<(NodeId, String)>,
        /// The data key secrets are encrypted with at rest (managers only).
        #[serde(default)]
        data_key: Option<crate::secrets::Blob>,
    },
    /// The tasks assigned to the reporting node, and their networks.
    Assignments(Box<Assignments>),
    /// Done.
    Ok,
    /// This manager is not the leader; ask there (when one is known).
    NotLeader { leader_addr: Option<String> },
    /// Refused; the message says why and what to do.
    Refused(String),
}
