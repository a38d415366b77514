//! The cluster store: the replicated state every manager holds, and the commands that change
//! it. Applying a command is a pure function of the state, so every manager reaches the same
//! state from the same log, and every rule here is unit-tested without Raft.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::network::NetworkRecord;
use crate::service::{ServiceRecord, ServiceSpec, TaskOp, TaskRecord};

/// How the store refuses an address another write took first (the writer allocates again).
pub const ADDRESS_RACE: &str = "was taken by a concurrent change";

/// A node's Raft and cluster ID.
pub type NodeId = u64;

/// What a node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Raft voter; serves the API.
    Manager,
    /// Runs tasks.
    Worker,
}

/// Whether the scheduler may use a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may land here.
    Active,
    /// Running tasks stay, no new ones come.
    Pause,
    /// Tasks move elsewhere.
    Drain,
}

/// Whether a node's heartbeats arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped for longer than the down timeout.
    Down,
}

/// The cluster's identity and credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Random ID chosen at init.
    pub id: String,
    /// CA certificate, PEM.
    pub ca_cert_pem: String,
    /// CA key, PEM (managers sign node certificates with it).
    pub ca_key_pem: String,
    /// Secret of the current worker join token.
    pub worker_secret: String,
    /// Secret of the current manager join token.
    pub manager_secret: String,
    /// VXLAN port chosen at init.
    pub data_path_port: u16,
    /// The pool overlay subnets are carved from, e.g. 10.0.0.0/8.
    pub default_addr_pool: String,
    /// Prefix length of each overlay subnet carved from the pool.
    pub default_addr_pool_mask_length: u8,
    /// Seconds since the epoch at init.
    pub created_unix: u64,
    /// Lifetime of node certificates in seconds (`swarm init --cert-expiry`); 0 for the
    /// default (`ca::NODE_VALIDITY`).
    #[serde(default)]
    pub cert_expiry_secs: u64,
    /// Keys that authenticate and encrypt gossip, oldest first; rotation appends one and
    /// keeps the last few, so nodes that have not heard of the newest still understand.
    #[serde(default)]
    pub gossip_keys: Vec<GossipKey>,
}

/// A gossip key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    /// Sequence number: the first key is 1.
    pub id: u32,
    /// 32 random bytes, hex.
    pub secret_hex: String,
    /// Milliseconds since the epoch it was made.
    pub created_ms: u64,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipKey")
            .field("id", &self.id)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

impl GossipKey {
    /// A fresh random key.
    pub fn new(id: u32) -> Result<Self, String> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| "no randomness available".to_string())?;
        Ok(GossipKey {
            id,
            secret_hex: secret.iter().map(|b| format!("{b:02x}")).collect(),
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
    }
}

/// How many gossip keys the cluster keeps.
pub const GOSSIP_KEYS_KEPT: usize = 3;

// Secrets and the CA key never reach logs.
impl std::fmt::Debug for ClusterInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterInfo")
            .field("id", &self.id)
            .field("data_path_port", &self.data_path_port)
            .finish_non_exhaustive()
    }
}

/// One node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Cluster-wide ID (also its Raft ID).
    pub id: NodeId,
    /// Hostname / node name.
    pub name: String,
    /// Address other nodes reach it at, host:port of its cluster listener.
    pub addr: String,
    /// Manager or worker.
    pub role: Role,
    /// Scheduling availability.
    pub availability: Availability,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Ready or Down.
    pub status: NodeStatus,
    /// meshd version it last reported.
    pub version: String,
    /// What its agent reports it has: runtime, capacity and images.
    #[serde(default)]
    pub description: NodeDescription,
}

/// What a node's agent reports about the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// `process` or `containerd`.
    pub runtime: String,
    /// CPUs, in billionths.
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Images its runtime can run.
    pub images: Vec<String>,
    /// MTU of the interface carrying its underlay address (0 before it reports one).
    #[serde(default)]
    pub underlay_mtu: u32,
    /// UDP and TCP port its gossip listens on (0 before it reports one: the default).
    #[serde(default)]
    pub gossip_port: u16,
}

/// A change to the cluster store; the Raft log is a sequence of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first command of a cluster.
    InitCluster(ClusterInfo),
    /// A node joined.
    AddNode(NodeRecord),
    /// An operator changed availability or labels.
    UpdateNode {
        id: NodeId,
        availability: Option<Availability>,
        label_add: BTreeMap<String, String>,
        label_rm: Vec<String>,
    },
    /// Promotion or demotion.
    SetRole { id: NodeId, role: Role },
    /// Liveness changed.
    SetStatus { id: NodeId, status: NodeStatus },
    /// A node left or was removed.
    RemoveNode { id: NodeId },
    /// A join token was rotated.
    RotateSecret { role: Role, secret: String },
    /// Node certificates issued from now on live this long (`swarm update --cert-expiry`).
    SetCertExpiry { secs: u64 },
    /// A new gossip key; the oldest beyond `GOSSIP_KEYS_KEPT` is dropped.
    AddGossipKey(GossipKey),
    /// A node's agent reported a new description.
    DescribeNode {
        id: NodeId,
        description: NodeDescription,
    },
    /// A service was created.
    CreateService(Box<ServiceRecord>),
    /// A service's spec changed (scale, update). When what its tasks run changed, an update
    /// starts; `resume` restarts a paused one with an unchanged spec.
    UpdateService {
        id: String,
        spec: Box<ServiceSpec>,
        at_ms: u64,
        #[serde(default)]
        resume: bool,
        /// Its VIPs, when its networks changed.
        #[serde(default)]
        vips: Option<Vec<crate::network::Attachment>>,
    },
    /// A service goes back to its previous spec, asked by an operator or by its update's
    /// failure action (`reason`). `version` is the service version the decision was made on:
    /// a service changed since is left alone.
    RollbackService {
        id: String,
        version: u64,
        at_ms: u64,
        reason: String,
    },
    /// An update moved on (the orchestrator's decision on service `version`).
    UpdateProgress {
        id: String,
        version: u64,
        status: crate::service::update::UpdateStatus,
    },
    /// A service was removed; its tasks are told to shut down.
    RemoveService { id: String },
    /// Tasks created, changed, reported or forgotten, in one entry.
    Tasks(Vec<TaskOp>),
    /// An overlay network was created (with its allocation).
    CreateNetwork(NetworkRecord),
    /// An overlay network was removed.
    RemoveNetwork { id: String },
    /// A secret or config was created (ciphertext only).
    CreateSecret(crate::secrets::SecretRecord),
    /// A secret or config no service uses was removed.
    RemoveSecret { id: String },
}

/// The outcome of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Ok,
    /// Refused; the state is unchanged. The message says why.
    Refused(String),
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by InitCluster.
    pub cluster: Option<ClusterInfo>,
    /// Every node, by ID.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Every service, by ID.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
    /// Every task, by ID.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Every overlay network, by ID.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Every secret and config, by ID: metadata and ciphertext.
    #[serde(default)]
    pub secrets: BTreeMap<String, crate::secrets::SecretRecord>,
}

impl ClusterState {
    /// Applies one command. A refused command leaves the state exactly as it was.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        let refused = |why: String| CommandResult::Refused(why);
        match command {
            Command::InitCluster(info) => {
                if self.cluster.is_some() {
                    return refused("the cluster is already initialized".into());
                }
                self.cluster = Some(info);
            }
            Command::AddNode(node) => {
                if self.nodes.contains_key(&node.id) {
                    return refused(format!("node ID {} is taken", node.id));
                }
                if self.nodes.values().any(|n| n.name == node.name) {
                    return refused(format!(
                        "a node named {} is already in the cluster; remove it (`meshctl node rm`) or give this node another --node-name",
                        node.name
                    ));
                }
                self.nodes.insert(node.id, node);
            }
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
            } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(format!("no node with ID {id}"));
                };
                if let Some(availability) = availability {
                    node.availability = availability;
                }
                for key in label_rm {
                    node.labels.remove(&key);
                }
                node.labels.extend(label_add);
            }
            Command::SetRole { id, role } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(format!("no node with ID {id}"));
                };
                node.role = role;
            }
            Command::SetStatus { id, status } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(format!("no node with ID {id}"));
                };
                node.status = status;
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(&id).is_none() {
                    return refused(format!("no node with ID {id}"));
                }
            }
            Command::RotateSecret { role, secret } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return refused("the cluster is not initialized".into());
                };
                match role {
                    Role::Worker => cluster.worker_secret = secret,
                    Role::Manager => cluster.manager_secret = secret,
                }
            }
            Command::SetCertExpiry { secs } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return refused("the cluster is not initialized".into());
                };
                cluster.cert_expiry_secs = secs;
            }
            Command::AddGossipKey(key) => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return refused("the cluster is not initialized".into());
                };
                let newest = cluster.gossip_keys.last().map_or(0, |k| k.id);
                if key.id != newest + 1 {
                    return refused(format!(
                        "gossip key {} is stale: the newest is {newest}; rotate again",
                        key.id
                    ));
                }
                cluster.gossip_keys.push(key);
                let excess = cluster.gossip_keys.len().saturating_sub(GOSSIP_KEYS_KEPT);
                cluster.gossip_keys.drain(..excess);
            }
            Command::DescribeNode { id, description } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(format!("no node with ID {id}"));
                };
                node.description = description;
            }
            Command::CreateService(service) => {
                if let Err(why) = service.spec.validate() {
                    return refused(why);
                }
                if let Err(why) = self.check_secret_refs(&service.spec) {
                    return refused(why);
                }
                if self.services.contains_key(&service.id) {
                    return refused(format!("service ID {} is taken", service.id));
                }
                if self.service_named(&service.spec.name).is_some() {
                    return refused(format!(
                        "a service named {} already exists; choose another --name, or change it with `meshctl service update`",
                        service.spec.name
                    ));
                }
                // Two creates racing for one address: the later one is refused here.
                if let Some(ip) = self.taken_vip(&service.vips) {
                    return refused(format!("VIP {ip} {ADDRESS_RACE}; create the service again"));
                }
                let mut service = *service;
                service.spec_version = service.version;
                self.services.insert(service.id.clone(), service);
            }
            Command::UpdateService {
                id,
                spec,
                at_ms,
                resume,
                vips,
            } => {
                if let Err(why) = spec.validate() {
                    return refused(why);
                }
                if let Err(why) = self.check_secret_refs(&spec) {
                    return refused(why);
                }
                let Some(service) = self.services.get(&id) else {
                    return refused(format!("no service with ID {id}"));
                };
                if spec.name != service.spec.name {
                    return refused("a service cannot be renamed; create a new one".into());
                }
                if let Some(vips) = &vips {
                    let added: Vec<_> = vips
                        .iter()
                        .filter(|v| !service.vips.contains(v))
                        .cloned()
                        .collect();
                    if let Some(ip) = self.taken_vip(&added) {
                        return refused(format!(
                            "VIP {ip} {ADDRESS_RACE}; update the service again"
                        ));
                    }
                }
                let service = self.services.get_mut(&id).expect("checked above");
                if let Some(vips) = vips {
                    service.vips = vips;
                }
                crate::service::update::change_spec(service, *spec, at_ms, resume);
            }
            Command::RollbackService {
                id,
                version,
                at_ms,
                reason,
            } => {
                let Some(service) = self.services.get(&id) else {
                    return refused(format!("no service with ID {id}"));
                };
                if service.version != version {
                    return refused(format!(
                        "service {} changed since the rollback was asked for; ask again",
                        service.spec.name
                    ));
                }
                // The previous spec may name a secret removed since (after a rotation).
                if let Some(previous) = &service.previous_spec {
                    if let Err(why) = self.check_secret_refs(previous) {
                        return refused(format!("cannot roll back: {why}"));
                    }
                }
                let service = self.services.get_mut(&id).expect("checked above");
                if let Err(why) = crate::service::update::roll_back(service, at_ms, reason) {
                    return refused(why);
                }
            }
            Command::UpdateProgress {
                id,
                version,
                status,
            } => {
                let Some(service) = self.services.get_mut(&id) else {
                    return refused(format!("no service with ID {id}"));
                };
                if service.version != version {
                    return refused(format!(
                        "service {} changed since this update step was decided",
                        service.spec.name
                    ));
                }
                service.update_status = Some(status);
            }
            Command::RemoveService { id } => {
                if self.services.remove(&id).is_none() {
                    return refused(format!("no service with ID {id}"));
                }
                for task in self.tasks.values_mut().filter(|t| t.service_id == id) {
                    task.desired = crate::service::DesiredState::Shutdown;
                }
            }
            Command::Tasks(ops) => {
                for op in ops {
                    self.apply_task_op(op);
                }
            }
            Command::CreateNetwork(network) => {
                if let Err(why) = crate::service::spec::validate_name(&network.name) {
                    return refused(why);
                }
                if self.network_named(&network.name).is_some() {
                    return refused(format!(
                        "a network named {} already exists; choose another name",
                        network.name
                    ));
                }
                if let Some(other) = self.networks.values().find(|n| {
                    n.id == network.id || n.vni == network.vni || n.subnet.overlaps(network.subnet)
                }) {
                    return refused(format!(
                        "network {} ({}, VNI {}) clashes with network {} ({}, VNI {}); choose another subnet",
                        network.name, network.subnet, network.vni, other.name, other.subnet, other.vni
                    ));
                }
                self.networks.insert(network.id.clone(), network);
            }
            Command::RemoveNetwork { id } => {
                let Some(network) = self.networks.get(&id) else {
                    return refused(format!("no network with ID {id}"));
                };
                if let Err(why) = self.network_in_use(network) {
                    return refused(why);
                }
                self.networks.remove(&id);
            }
            Command::CreateSecret(record) => {
                let kind = record.kind.as_str();
                if let Err(why) = crate::secrets::validate_new(
                    record.kind,
                    &record.name,
                    usize::try_from(record.size).unwrap_or(usize::MAX),
                ) {
                    return refused(why);
                }
                if record.sealed.0.len() != record.size as usize + crate::secrets::crypto::OVERHEAD
                {
                    return refused(format!("{kind} {} is not sealed", record.name));
                }
                if self.secret_named(record.kind, &record.name).is_some() {
                    return refused(format!(
                        "a {kind} named {} already exists; {kind}s are immutable: create one with another name (e.g. {}.v2), then move services to it with `meshctl service update --{kind}-rm {} --{kind}-add {}.v2`",
                        record.name, record.name, record.name, record.name
                    ));
                }
                if self.secrets.contains_key(&record.id) {
                    return refused(format!("{kind} ID {} is taken", record.id));
                }
                self.secrets.insert(record.id.clone(), record);
            }
            Command::RemoveSecret { id } => {
                let Some(record) = self.secrets.get(&id) else {
                    return refused(format!("no secret or config with ID {id}"));
                };
                let users = self.services_using(record);
                if !users.is_empty() {
                    let kind = record.kind.as_str();
                    return refused(format!(
                        "{kind} {} is in use by service {}; remove the service, or move it to another {kind} with `meshctl service update --{kind}-rm {}`, first",
                        record.name,
                        users.join(", "),
                        record.name
                    ));
                }
                self.secrets.remove(&id);
            }
        }
        CommandResult::Ok
    }

    /// The secret or config of this kind and name.
    pub fn secret_named(
        &self,
        kind: crate::secrets::Kind,
        name: &str,
    ) -> Option<&crate::secrets::SecretRecord> {
        self.secrets
            .values()
            .find(|s| s.kind == kind && s.name == name)
    }

    /// Names of the services whose spec references this secret or config.
    pub fn services_using(&self, record: &crate::secrets::SecretRecord) -> Vec<String> {
        self.services
            .values()
            .filter(|s| s.spec.references(record.kind).any(|r| r.id == record.id))
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// The first of `vips` whose address is already in use on its network.
    fn taken_vip(&self, vips: &[crate::network::Attachment]) -> Option<std::net::Ipv4Addr> {
        vips.iter()
            .find(|vip| {
                crate::network::alloc::addresses_in_use(self, &vip.network_id).contains(&vip.ip)
            })
            .map(|vip| vip.ip)
    }

    /// Refuses a spec that references a secret or config the store does not hold.
    pub fn check_secret_refs(&self, spec: &ServiceSpec) -> Result<(), String> {
        for kind in [crate::secrets::Kind::Secret, crate::secrets::Kind::Config] {
            for reference in spec.references(kind) {
                let known = self
                    .secrets
                    .get(&reference.id)
                    .is_some_and(|s| s.kind == kind && s.name == reference.name);
                if !known {
                    let kind = kind.as_str();
                    return Err(format!(
                        "--{kind} {}: no such {kind}; create it first with `meshctl {kind} create {} FILE`",
                        reference.name, reference.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies one task change. Agents' reports race with the orchestrator, so a report about
    /// a task that is gone, on another node, or older than what is known is dropped, not an
    /// error.
    fn apply_task_op(&mut self, op: TaskOp) {
        match op {
            TaskOp::Put(task) => {
                self.tasks.insert(task.id.clone(), task);
            }
            TaskOp::Delete(id) => {
                self.tasks.remove(&id);
            }
            TaskOp::Report(report) => {
                let Some(task) = self.tasks.get_mut(&report.task_id) else {
                    return;
                };
                if task.node_id != Some(report.node_id) || !report.is_news(task) {
                    return;
                }
                task.health = report.health;
                if report.state == task.state {
                    // Only its health changed.
                    return;
                }
                task.state = report.state;
                task.error = report.error;
                task.exit = report.exit;
                task.state_ms = report.at_ms;
            }
        }
    }

    /// The network with this name.
    pub fn network_named(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.values().find(|n| n.name == name)
    }

    /// Refuses when a service or a live task uses the network, naming them.
    pub fn network_in_use(&self, network: &NetworkRecord) -> Result<(), String> {
        let services: Vec<&str> = self
            .services
            .values()
            .filter(|s| s.spec.networks.contains(&network.name))
            .map(|s| s.spec.name.as_str())
            .collect();
        if !services.is_empty() {
            return Err(format!(
                "network {} is in use by service {}; remove the service (or update it off the network) first",
                network.name,
                services.join(", ")
            ));
        }
        let tasks = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .filter(|t| t.attachments.iter().any(|a| a.network_id == network.id))
            .count();
        if tasks > 0 {
            return Err(format!(
                "network {} still has {tasks} task(s) attached that are stopping; try again in a few seconds",
                network.name
            ));
        }
        Ok(())
    }

    /// The service with this name.
    pub fn service_named(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// The managers, by ID.
    pub fn managers(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, name: &str, role: Role) -> NodeRecord {
        NodeRecord {
            id,
            name: name.into(),
            addr: format!("198.18.0.{id}:2377"),
            role,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status: NodeStatus::Ready,
            version: "0.1.0".into(),
            description: Default::default(),
        }
    }

    fn info() -> ClusterInfo {
        ClusterInfo {
            id: "c1".into(),
            ca_cert_pem: "cert".into(),
            ca_key_pem: "key".into(),
            worker_secret: "w".into(),
            manager_secret: "m".into(),
            data_path_port: 4789,
            default_addr_pool: "10.0.0.0/8".into(),
            default_addr_pool_mask_length: 24,
            created_unix: 0,
            gossip_keys: Vec::new(),
            cert_expiry_secs: 0,
        }
    }

    #[test]
    fn init_happens_once() {
        let mut state = ClusterState::default();
        assert_eq!(state.apply(Command::InitCluster(info())), CommandResult::Ok);
        let before = state.clone();
        assert!(matches!(
            state.apply(Command::InitCluster(info())),
            CommandResult::Refused(_)
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn the_certificate_lifetime_can_change_after_init() {
        let mut state = ClusterState::default();
        state.apply(Command::InitCluster(info()));
        assert_eq!(
            state.apply(Command::SetCertExpiry { secs: 7200 }),
            CommandResult::Ok
        );
        assert_eq!(state.cluster.as_ref().unwrap().cert_expiry_secs, 7200);
    }

    #[test]
    fn nodes_are_added_updated_and_removed() {
        let mut state = ClusterState::default();
        assert_eq!(
            state.apply(Command::AddNode(node(1, "m1", Role::Manager))),
            CommandResult::Ok
        );
        assert_eq!(
            state.apply(Command::AddNode(node(2, "w1", Role::Worker))),
            CommandResult::Ok
        );
        let update = Command::UpdateNode {
            id: 2,
            availability: Some(Availability::Drain),
            label_add: [("zone".to_string(), "east".to_string())].into(),
            label_rm: vec![],
        };
        assert_eq!(state.apply(update), CommandResult::Ok);
        assert_eq!(state.nodes[&2].availability, Availability::Drain);
        assert_eq!(state.nodes[&2].labels["zone"], "east");
        assert_eq!(
            state.apply(Command::SetRole {
                id: 2,
                role: Role::Manager
            }),
            CommandResult::Ok
        );
        assert_eq!(state.managers().count(), 2);
        assert_eq!(
            state.apply(Command::RemoveNode { id: 1 }),
            CommandResult::Ok
        );
        assert_eq!(state.nodes.len(), 1);
    }

    #[test]
    fn refused_commands_change_nothing() {
        let mut state = ClusterState::default();
        state.apply(Command::AddNode(node(1, "m1", Role::Manager)));
        let before = state.clone();
        for command in [
            Command::AddNode(node(1, "other", Role::Worker)),
            Command::AddNode(node(9, "m1", Role::Worker)),
            Command::SetRole {
                id: 7,
                role: Role::Worker,
            },
            Command::SetStatus {
                id: 7,
                status: NodeStatus::Down,
            },
            Command::RemoveNode { id: 7 },
            Command::RotateSecret {
                role: Role::Worker,
                secret: "x".into(),
            },
            Command::SetCertExpiry { secs: 3600 },
        ] {
            assert!(
                matches!(state.apply(command.clone()), CommandResult::Refused(_)),
                "{command:?}"
            );
            assert_eq!(state, before, "{command:?} changed the state");
        }
    }

    #[test]
    fn cluster_secrets_never_reach_debug_output() {
        let text = format!("{:?}", info());
        assert!(!text.contains("key") || !text.contains("\"key\""));
        assert!(!text.contains("\"w\"") && !text.contains("\"m\""), "{text}");
    }
}
