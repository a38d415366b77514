//! The cluster API: what meshctl can ask of the managers (through the local meshd, which
//! forwards to the leader), and the answers. Views are what the CLI prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::network::{NetworkSpec, NetworkView};
use crate::service::view::{LogEntry, ServiceView, TaskView};
use crate::service::ServiceSpec;
use crate::store::{Availability, NodeDescription, NodeId, NodeRecord, NodeStatus, Role};

/// A cluster API call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// Every node.
    NodeList,
    /// One node, by ID (or a unique prefix of it) or name.
    NodeInspect { node: String },
    /// Availability and labels.
    NodeUpdate {
        node: String,
        availability: Option<Availability>,
        label_add: BTreeMap<String, String>,
        label_rm: Vec<String>,
    },
    /// Worker → manager.
    NodePromote { node: String },
    /// Manager → worker.
    NodeDemote { node: String },
    /// Remove a node; `force` removes one that is still up.
    NodeRemove { node: String, force: bool },
    /// Show, or rotate and show, a join token.
    JoinToken { role: Role, rotate: bool },
    /// Managers, quorum and what is at risk.
    Info,
    /// Add a new gossip key (nodes switch to it once every node has it).
    GossipKeyRotate,
    /// Change cluster settings after init: the lifetime of node certificates issued from now
    /// on, in seconds.
    SwarmUpdate { cert_expiry_secs: u64 },
    /// Probe between hosts and compare their state (`meshctl diag`).
    Diag(crate::diag::DiagRequest),
    /// Create a service.
    ServiceCreate(Box<ServiceSpec>),
    /// Every service.
    ServiceList,
    /// One service, by name, ID or ID prefix.
    ServiceInspect { service: String },
    /// Change a replicated service's replica count.
    ServiceScale { service: String, replicas: u64 },
    /// Replace a service's spec: `spec` is the spec of `version` as the caller read it, with
    /// its changes; `resume` restarts a paused update.
    ServiceUpdate {
        service: String,
        spec: Box<ServiceSpec>,
        version: u64,
        resume: bool,
    },
    /// Go back to a service's previous spec.
    ServiceRollback { service: String },
    /// Remove a service; its tasks stop.
    ServiceRemove { service: String },
    /// Tasks of the given services (all services when empty), history included.
    TaskList { services: Vec<String> },
    /// Create an overlay network.
    NetworkCreate(NetworkSpec),
    /// Every network.
    NetworkList,
    /// One network, by name, ID or ID prefix; `verbose` adds each host's endpoint table.
    NetworkInspect {
        network: String,
        #[serde(default)]
        verbose: bool,
    },
    /// Remove a network no service or task uses.
    NetworkRemove { network: String },
    /// Output lines of a service's tasks after the given per-task line numbers.
    ServiceLogs {
        service: String,
        after: BTreeMap<String, u64>,
    },
    /// Store a secret or config (the data is encrypted before it reaches the Raft log).
    SecretCreate {
        kind: crate::secrets::Kind,
        name: String,
        labels: BTreeMap<String, String>,
        data: crate::secrets::Blob,
    },
    /// Every secret (or config): never its data.
    SecretList { kind: crate::secrets::Kind },
    /// One secret or config, by name, ID or ID prefix: never its data.
    SecretInspect {
        kind: crate::secrets::Kind,
        secret: String,
    },
    /// Remove a secret or config no service uses.
    SecretRemove {
        kind: crate::secrets::Kind,
        secret: String,
    },
}

/// An answer to a cluster API call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApiResponse {
    /// Answer to Diag.
    Diag(Box<crate::diag::DiagReport>),
    /// Answer to NodeList.
    Nodes(Vec<NodeView>),
    /// Answer to NodeInspect.
    Node(NodeView),
    /// Answer to JoinToken.
    Token { role: Role, token: String },
    /// Answer to Info.
    Info(ClusterView),
    /// Answer to ServiceList.
    Services(Vec<ServiceView>),
    /// Answer to ServiceInspect.
    Service(Box<ServiceView>),
    /// Answer to TaskList.
    Tasks(Vec<TaskView>),
    /// Answer to ServiceLogs.
    Logs(Vec<LogEntry>),
    /// Answer to NetworkList.
    Networks(Vec<NetworkView>),
    /// Answer to NetworkInspect.
    Network(Box<NetworkView>),
    /// Answer to SecretList.
    Secrets(Vec<crate::secrets::SecretView>),
    /// Answer to SecretInspect.
    Secret(Box<crate::secrets::SecretView>),
    /// A change was made; warnings the operator should read.
    Done {
        message: String,
        warnings: Vec<String>,
    },
    /// Refused; the message says why and what to do.
    Error(String),
    /// No leader could be asked: the last state this manager knows, and why it may be stale.
    Stale {
        warning: String,
        answer: Box<ApiResponse>,
    },
}

/// A node as `node ls` and `node inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// ID, 16 hex digits.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Cluster address.
    pub addr: String,
    /// Manager or worker.
    pub role: Role,
    /// Scheduling availability.
    pub availability: Availability,
    /// Ready or Down.
    pub status: NodeStatus,
    /// Leader, Reachable or Unreachable for managers.
    pub manager_status: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// meshd version.
    pub version: String,
    /// Runtime, capacity and images, as its agent reports them.
    pub description: NodeDescription,
}

impl NodeView {
    /// The view of a record, with the manager status the leader computed.
    pub fn of(node: &NodeRecord, manager_status: Option<String>) -> Self {
        NodeView {
            id: format_node_id(node.id),
            name: node.name.clone(),
            addr: node.addr.clone(),
            role: node.role,
            availability: node.availability,
            status: node.status,
            manager_status,
            labels: node.labels.clone(),
            version: node.version.clone(),
            description: node.description.clone(),
        }
    }
}

/// What `meshctl info` shows about the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Cluster ID.
    pub cluster_id: String,
    /// Managers (Raft voters).
    pub managers: usize,
    /// Managers the leader hears from.
    pub reachable_managers: usize,
    /// Votes needed.
    pub quorum: usize,
    /// Manager failures tolerated.
    pub tolerated_failures: usize,
    /// Workers.
    pub workers: usize,
    /// The leader's name.
    pub leader: String,
    /// Data-path port chosen at init.
    pub data_path_port: u16,
    /// Warnings about the manager set.
    pub warnings: Vec<String>,
}

/// A node ID as printed: 16 lowercase hex digits.
pub fn format_node_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Finds a node by full ID, unique ID prefix (at least 4 digits) or exact name.
pub fn find_node<'a>(
    nodes: impl Iterator<Item = &'a NodeRecord> + Clone,
    key: &str,
) -> Result<&'a NodeRecord, String> {
    if let Some(node) = nodes.clone().find(|n| n.name == key) {
        return Ok(node);
    }
    let key = key.to_ascii_lowercase();
    if key.len() >= 4 && key.chars().all(|c| c.is_ascii_hexdigit()) {
        let matches: Vec<_> = nodes
            .filter(|n| format_node_id(n.id).starts_with(&key))
            .collect();
        match matches.len() {
            1 => return Ok(matches[0]),
            0 => {}
            _ => {
                return Err(format!(
                    "{key} matches {} nodes; give more digits of the ID",
                    matches.len()
                ))
            }
        }
    }
    Err(format!(
        "no node {key:?}; `meshctl node ls` lists the nodes"
    ))
}

/// Label keys: a letter, then letters, digits, '.', '-' or '_'; at most 128 characters.
pub fn valid_label_key(key: &str) -> bool {
    key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, name: &str) -> NodeRecord {
        NodeRecord {
            id,
            name: name.into(),
            addr: "198.18.0.1:2377".into(),
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status: NodeStatus::Ready,
            version: "0.1.0".into(),
            description: Default::default(),
        }
    }

    #[test]
    fn nodes_are_found_by_name_id_or_unique_prefix() {
        let nodes = [
            node(0xabcd_0000_0000_0001, "w1"),
            node(0xabcd_0000_0000_0002, "w2"),
            node(0x1234_0000_0000_0000, "m1"),
        ];
        assert_eq!(find_node(nodes.iter(), "w2").unwrap().name, "w2");
        assert_eq!(find_node(nodes.iter(), "1234").unwrap().name, "m1");
        assert_eq!(
            find_node(nodes.iter(), "abcd000000000001").unwrap().name,
            "w1"
        );
        assert!(find_node(nodes.iter(), "abcd")
            .unwrap_err()
            .contains("more digits"));
        assert!(find_node(nodes.iter(), "ffff")
            .unwrap_err()
            .contains("node ls"));
        assert!(find_node(nodes.iter(), "12").is_err(), "too short a prefix");
    }

    #[test]
    fn ids_print_as_sixteen_hex_digits() {
        assert_eq!(format_node_id(0x1f), "000000000000001f");
    }
}
