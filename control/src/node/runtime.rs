//! A node's place in a cluster: none yet, or a worker or manager with its identity. Init and
//! join create the identity; a restart resumes from it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::heartbeat::{self, LeaderClient};
use super::identity::{Identity, Membership};
use crate::api::{format_node_id, ApiRequest, ApiResponse};
use crate::cluster::ca::{new_node_key_and_csr, ClusterCa};
use crate::cluster::tls::{join_client_config, manager_server_name, NodeCredentials};
use crate::cluster::token::JoinToken;
use crate::cluster::CertRole;
use crate::manager::{Manager, ManagerSettings};
use crate::rpc::client::Client;
use crate::rpc::messages::{JoinRequest, Request, Response};
use crate::store::{
    Availability, ClusterInfo, Command, CommandResult, GossipKey, NodeId, NodeRecord, NodeStatus,
    Role,
};

/// What `swarm init` may set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InitOptions {
    /// Address other nodes reach this one at.
    pub advertise_addr: Option<IpAddr>,
    /// Where the cluster port listens.
    pub listen_addr: Option<SocketAddr>,
    /// The VXLAN port for the whole cluster.
    pub data_path_port: Option<u16>,
    /// Pool of overlay subnets, CIDR.
    pub default_addr_pool: Option<String>,
    /// Prefix length of each overlay subnet.
    pub default_addr_pool_mask_length: Option<u8>,
    /// Lifetime of node certificates, in seconds [default: 90 days].
    #[serde(default)]
    pub cert_expiry_secs: Option<u64>,
}

/// What `swarm join` may set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinOptions {
    /// The join token.
    pub token: String,
    /// A manager's host:port.
    pub remote: String,
    /// Address other nodes reach this one at.
    pub advertise_addr: Option<IpAddr>,
    /// Where the cluster port listens (managers).
    pub listen_addr: Option<SocketAddr>,
}

/// What `swarm init` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Initialized {
    /// This node's ID.
    pub node_id: String,
    /// Token for workers.
    pub worker_token: String,
    /// Token for managers.
    pub manager_token: String,
    /// The address managers and workers join at.
    pub addr: String,
}

/// This node's membership, as `meshctl info` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Node ID.
    pub node_id: String,
    /// Cluster ID.
    pub cluster_id: String,
    /// Role.
    pub role: Role,
    /// Cluster address.
    pub addr: String,
    /// Whether the leader acknowledged this node's heartbeats in the last two seconds.
    pub leader_reachable: bool,
}

pub(super) struct Running {
    pub(super) identity: Identity,
    pub(super) manager: Option<Arc<Manager>>,
    pub(super) leader: Arc<LeaderClient>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The node's cluster side.
pub struct ClusterNode {
    /// Role changes the heartbeat learns of, for the supervisor to act on.
    pub(super) role_changes: mpsc::UnboundedSender<Role>,
    pub(super) role_changes_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Role>>>,
    pub(super) state_dir: PathBuf,
    pub(super) node_name: String,
    pub(super) listen_addr: SocketAddr,
    pub(super) advertise_addr: Option<IpAddr>,
    pub(super) data_path_port: u16,
    pub(super) settings: ManagerSettings,
    pub(super) running: Mutex<Option<Running>>,
    pub(super) task_runtime: Arc<dyn crate::runtime::Runtime>,
    pub(super) discovery: crate::discovery::DiscoverySettings,
    /// Gossip and task DNS, kept across restarts of the cluster side (a role change) so that
    /// peers never see this node leave and come back.
    pub(super) discovery_running: std::sync::Mutex<Option<Arc<crate::discovery::Discovery>>>,
    /// The routing mesh and VIPs, kept across restarts of the cluster side: its programs stay
    /// attached while the agent is replaced.
    pub(super) balancer: Arc<crate::ingress::Balancer>,
}

/// Node-side settings from meshd's configuration.
pub struct NodeSettings {
    /// State directory.
    pub state_dir: PathBuf,
    /// Node name.
    pub node_name: String,
    /// Cluster port listen address.
    pub listen_addr: SocketAddr,
    /// Advertised address, if configured.
    pub advertise_addr: Option<IpAddr>,
    /// Default data-path port for init.
    pub data_path_port: u16,
    /// Manager tunables.
    pub manager: ManagerSettings,
    /// What runs this node's tasks.
    pub runtime: Arc<dyn crate::runtime::Runtime>,
    /// Gossip and DNS.
    pub discovery: crate::discovery::DiscoverySettings,
    /// The load balancer's path.
    pub lb_mode: dataplane::lb::LbMode,
}

impl ClusterNode {
    /// A node that has not started its cluster side yet; `resume` starts it from disk.
    pub fn new(settings: NodeSettings) -> Self {
        let (role_changes, rx) = mpsc::unbounded_channel();
        ClusterNode {
            role_changes,
            role_changes_rx: std::sync::Mutex::new(Some(rx)),
            balancer: Arc::new(crate::ingress::Balancer::new(
                settings.lb_mode,
                settings.state_dir.join("overlay"),
            )),
            state_dir: settings.state_dir,
            node_name: settings.node_name,
            listen_addr: settings.listen_addr,
            advertise_addr: settings.advertise_addr,
            data_path_port: settings.data_path_port,
            settings: settings.manager,
            running: Mutex::new(None),
            task_runtime: settings.runtime,
            discovery: settings.discovery,
            discovery_running: std::sync::Mutex::new(None),
        }
    }

    /// Resumes the cluster side from the identity on disk, if there is one.
    pub async fn resume(&self) -> Result<(), String> {
        let identity = Identity::load(&self.state_dir)
            .map_err(|e| format!("reading the node identity: {e}"))?;
        if let Some(identity) = identity {
            let running = self.start(identity).await?;
            *self.running.lock().await = Some(running);
        }
        Ok(())
    }

    /// Turns this manager into a one-voter cluster keeping its state (before `resume`).
    pub fn force_new_cluster(&self) -> Result<crate::raft::recovery::Recovered, String> {
        let identity = Identity::load(&self.state_dir)
            .map_err(|e| format!("reading the node identity: {e}"))?
            .ok_or("this node has no cluster to recover: it never initialized or joined one")?;
        let membership = &identity.membership;
        if membership.role != Role::Manager {
            return Err("only a manager can recover the cluster; this node is a worker".into());
        }
        let recovered = crate::raft::recovery::force_new_cluster(
            &self.state_dir.join("raft"),
            membership.node_id,
            &membership.addr,
        )?;
        Identity::save_managers(
            &self.state_dir,
            vec![(membership.node_id, membership.addr.clone())],
        )
        .map_err(|e| format!("saving the node identity: {e}"))?;
        Ok(recovered)
    }

    /// Gossip's counters and members, while this node gossips.
    pub fn gossip_view(&self) -> Option<crate::local_api::GossipView> {
        let discovery = self
            .discovery_running
            .lock()
            .expect("discovery lock")
            .clone()?;
        discovery.view()
    }

    /// This node's membership, if it has one.
    pub async fn membership(&self) -> Option<MembershipView> {
        self.running.lock().await.as_ref().map(|r| {
            let m = &r.identity.membership;
            MembershipView {
                node_id: format_node_id(m.node_id),
                cluster_id: m.cluster_id.clone(),
                role: m.role,
                addr: m.addr.clone(),
                leader_reachable: r.leader.leader_reachable(),
            }
        })
    }

    pub(super) async fn start(&self, identity: Identity) -> Result<Running, String> {
        let membership = &identity.membership;
        let credentials = identity.credentials.clone();
        let tls = credentials.client_config().map_err(|e| e.to_string())?;
        let managers: Vec<String> = membership.managers.iter().map(|(_, a)| a.clone()).collect();
        let mut tasks = Vec::new();
        let discovery = self.discovery_for(membership.node_id);
        let manager = if membership.role == Role::Manager {
            let listen: SocketAddr = self.listen_for(membership)?;
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("binding the cluster port {listen}: {e}; is another meshd running, or is the port taken?"))?;
            let manager = Manager::start(
                membership.node_id,
                &self.state_dir,
                credentials.clone(),
                self.settings,
            )
            .await
            .map_err(|e| e.to_string())?;
            let server_tls = credentials.server_config().map_err(|e| e.to_string())?;
            tasks.push(tokio::spawn(crate::rpc::server::serve(
                listener,
                server_tls,
                Arc::clone(&manager),
            )));
            tracing::info!(%listen, "serving the cluster port");
            Some(manager)
        } else {
            None
        };
        let leader = Arc::new(LeaderClient::new(tls, managers));
        tasks.push(tokio::spawn(heartbeat::run(
            membership.node_id,
            membership.role,
            Arc::clone(&leader),
            self.role_changes.clone(),
        )));
        let underlay_ip = membership
            .addr
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| match a.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            });
        if let Some(manager) = &manager {
            manager.set_discovery(Arc::clone(&discovery));
        }
        let agent = crate::agent::Agent::new(
            membership.node_id,
            Arc::clone(&self.task_runtime),
            &self.state_dir,
            Arc::clone(&leader),
            underlay_ip,
            crate::agent::AgentNetwork {
                discovery: Arc::clone(&discovery),
                gossip_port: self.discovery.gossip_port,
                balancer: Arc::clone(&self.balancer),
            },
        );
        tasks.push(tokio::spawn(agent.run()));
        tracing::info!(node_id = %format_node_id(membership.node_id), role = ?membership.role, cluster = %membership.cluster_id, "cluster member");
        Ok(Running {
            identity,
            manager,
            leader,
            tasks,
        })
    }

    /// This node's discovery: the running one when it belongs to the same node ID, else a new
    /// one (after a leave and a join the node has a new ID).
    fn discovery_for(&self, node_id: NodeId) -> Arc<crate::discovery::Discovery> {
        let mut running = self.discovery_running.lock().expect("discovery lock");
        if let Some(discovery) = running.as_ref().filter(|d| d.node_id() == node_id) {
            return Arc::clone(discovery);
        }
        if let Some(old) = running.take() {
            old.shutdown();
        }
        let discovery = crate::discovery::Discovery::new(node_id, &self.discovery, &self.state_dir);
        *running = Some(Arc::clone(&discovery));
        discovery
    }

    /// Stops gossip: this node leaves the cluster.
    pub(super) fn stop_discovery(&self) {
        if let Some(discovery) = self
            .discovery_running
            .lock()
            .expect("discovery lock")
            .take()
        {
            discovery.shutdown();
        }
    }

    fn listen_for(&self, membership: &Membership) -> Result<SocketAddr, String> {
        let advertised: SocketAddr = membership
            .addr
            .parse()
            .map_err(|_| format!("the stored address {:?} is not host:port", membership.addr))?;
        Ok(SocketAddr::new(self.listen_addr.ip(), advertised.port()))
    }

    fn advertised(
        &self,
        advertise: Option<IpAddr>,
        listen: SocketAddr,
    ) -> Result<SocketAddr, String> {
        let ip = advertise
            .or(self.advertise_addr)
            .or_else(|| (!listen.ip().is_unspecified()).then(|| listen.ip()))
            .ok_or("this node listens on every address; give --advertise-addr with the address other nodes reach it at")?;
        if ip.is_unspecified() {
            return Err(format!("--advertise-addr {ip} is not reachable by other nodes; give this node's own address"));
        }
        Ok(SocketAddr::new(ip, listen.port()))
    }

    /// Creates a cluster with this node as its first manager.
    pub async fn init(&self, options: InitOptions) -> Result<Initialized, String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Err(
                "this node is already part of a cluster; `meshctl swarm leave --force` first"
                    .into(),
            );
        }
        let listen = options.listen_addr.unwrap_or(self.listen_addr);
        let addr = self.advertised(options.advertise_addr, listen)?;
        let pool = options
            .default_addr_pool
            .clone()
            .unwrap_or_else(|| "10.0.0.0/8".into());
        let mask = options.default_addr_pool_mask_length.unwrap_or(24);
        check_pool(&pool, mask)?;
        let data_path_port = options.data_path_port.unwrap_or(self.data_path_port);
        if data_path_port == 0 {
            return Err("--data-path-port 0 is not a usable port; give 1-65535".into());
        }
        let cert_expiry_secs = options.cert_expiry_secs.unwrap_or(0);
        let cert_lifetime = crate::cluster::ca::node_validity(cert_expiry_secs);
        crate::cluster::ca::check_node_validity(cert_lifetime)?;

        let cluster_id = random_hex(8)?;
        let ca = ClusterCa::generate(&cluster_id).map_err(|e| e.to_string())?;
        let node_id = random_id()?;
        let (key_pem, csr) =
            new_node_key_and_csr(&format_node_id(node_id)).map_err(|e| e.to_string())?;
        let cert_pem = ca
            .sign_csr(
                &csr,
                &format_node_id(node_id),
                CertRole::Manager,
                &cluster_id,
                cert_lifetime,
            )
            .map_err(|e| e.to_string())?;
        let identity = Identity {
            membership: Membership {
                node_id,
                cluster_id: cluster_id.clone(),
                role: Role::Manager,
                addr: addr.to_string(),
                managers: vec![(node_id, addr.to_string())],
            },
            credentials: NodeCredentials::new(ca.cert_pem.clone(), cert_pem, key_pem),
        };
        let info = ClusterInfo {
            id: cluster_id,
            ca_cert_pem: ca.cert_pem.clone(),
            ca_key_pem: ca.key_pem.clone(),
            worker_secret: JoinToken::new([0; 32], random_bytes()?).secret,
            manager_secret: JoinToken::new([0; 32], random_bytes()?).secret,
            data_path_port,
            default_addr_pool: pool,
            default_addr_pool_mask_length: mask,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            gossip_keys: vec![GossipKey::new(1)?],
            cert_expiry_secs,
        };
        let digest = ca.digest().map_err(|e| e.to_string())?;
        let tokens = (
            JoinToken {
                ca_digest: digest,
                secret: info.worker_secret.clone(),
            }
            .to_string(),
            JoinToken {
                ca_digest: digest,
                secret: info.manager_secret.clone(),
            }
            .to_string(),
        );
        // The listener must be free before anything is written: a failed init leaves no trace.
        drop(TcpListener::bind(listen).await.map_err(|e| {
            format!("binding the cluster port {listen}: {e}; choose another --listen-addr")
        })?);
        identity
            .save(&self.state_dir)
            .map_err(|e| format!("saving the node identity: {e}"))?;
        crate::secrets::crypto::DataKey::generate()
            .and_then(|key| key.save(&self.state_dir))
            .map_err(|e| format!("creating the data key: {e}"))?;
        let started = self.start(identity).await?;
        let manager = started.manager.clone().expect("init makes a manager");
        manager
            .bootstrap(&addr.to_string())
            .await
            .map_err(|e| e.to_string())?;
        for command in [
            Command::InitCluster(info),
            Command::AddNode(NodeRecord {
                id: node_id,
                name: self.node_name.clone(),
                addr: addr.to_string(),
                role: Role::Manager,
                availability: Availability::Active,
                labels: Default::default(),
                status: NodeStatus::Ready,
                version: env!("CARGO_PKG_VERSION").into(),
                description: self.describe(addr).await,
            }),
        ] {
            match manager.write(command).await {
                Ok(CommandResult::Ok) => {}
                Ok(CommandResult::Refused(why)) | Err(why) => return Err(why),
            }
        }
        *running = Some(started);
        tracing::info!(%addr, "initialized a new cluster");
        Ok(Initialized {
            node_id: format_node_id(node_id),
            worker_token: tokens.0,
            manager_token: tokens.1,
            addr: addr.to_string(),
        })
    }

    /// Joins the cluster a manager at `options.remote` belongs to.
    pub async fn join(&self, options: JoinOptions) -> Result<MembershipView, String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Err(
                "this node is already part of a cluster; `meshctl swarm leave --force` first"
                    .into(),
            );
        }
        let token = JoinToken::parse(&options.token).map_err(|e| e.to_string())?;
        let listen = options.listen_addr.unwrap_or(self.listen_addr);
        let addr = self.advertised(options.advertise_addr, listen)?;
        let (key_pem, csr_der) =
            new_node_key_and_csr(&self.node_name).map_err(|e| e.to_string())?;
        let tls = join_client_config(token.ca_digest).map_err(|e| e.to_string())?;
        let request = Request::Join(JoinRequest {
            token: options.token.trim().to_string(),
            csr_der,
            name: self.node_name.clone(),
            addr: addr.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: self.describe(addr).await,
        });
        let mut remote = options.remote.clone();
        let accepted = 'redirects: {
            for _ in 0..5 {
                let client = Client::new(&remote, Arc::clone(&tls), manager_server_name());
                match client
                    .call(&request, Duration::from_secs(15))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Response::Joined(accepted) => break 'redirects accepted,
                    Response::NotLeader {
                        leader_addr: Some(leader),
                    } => remote = leader,
                    Response::NotLeader { leader_addr: None } => {
                        return Err(format!(
                            "{remote} has no leader right now; the cluster may have lost quorum"
                        ))
                    }
                    Response::Refused(why) => return Err(why),
                    other => return Err(format!("unexpected answer from {remote}: {other:?}")),
                }
            }
            return Err("the managers kept redirecting; try again".into());
        };
        let identity = Identity {
            membership: Membership {
                node_id: accepted.node_id,
                cluster_id: accepted.cluster_id.clone(),
                role: accepted.role,
                addr: addr.to_string(),
                managers: accepted.managers.clone(),
            },
            credentials: NodeCredentials::new(accepted.ca_pem, accepted.cert_pem, key_pem),
        };
        identity
            .save(&self.state_dir)
            .map_err(|e| format!("saving the node identity: {e}"))?;
        super::transitions::save_data_key(
            &self.state_dir,
            accepted.role,
            accepted.data_key.as_ref(),
        )?;
        let started = self.start(identity).await?;
        // The leader just admitted this node: it is reachable.
        started.leader.acknowledged();
        if let Some(manager) = &started.manager {
            wait_until_voter(manager).await?;
        }
        let view = MembershipView {
            node_id: format_node_id(accepted.node_id),
            cluster_id: accepted.cluster_id,
            role: accepted.role,
            addr: addr.to_string(),
            leader_reachable: true,
        };
        *running = Some(started);
        Ok(view)
    }

    /// This node's description, for the join or init that records it.
    async fn describe(&self, addr: SocketAddr) -> crate::store::NodeDescription {
        let underlay_ip = match addr.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        };
        let gossip_port = self.discovery.gossip_port;
        crate::agent::describe_node(self.task_runtime.as_ref(), underlay_ip, gossip_port).await
    }

    /// A cluster API call from the local meshctl.
    pub async fn api(&self, request: ApiRequest) -> ApiResponse {
        let running = self.running.lock().await;
        match running.as_ref() {
            None => ApiResponse::Error(
                "this node is not part of a cluster; create one with `meshctl swarm init` or join one with `meshctl swarm join`".into(),
            ),
            // Diagnostics run from any host: a worker asks the leader directly.
            Some(Running {
                manager: None,
                leader,
                ..
            }) if matches!(request, ApiRequest::Diag(_)) => {
                let leader = Arc::clone(leader);
                drop(running);
                // A connection of its own: the agent's reports, this node's own findings
                // among them, must not queue behind this call.
                let leader = leader.sibling().await;
                match leader
                    .call(&crate::rpc::messages::Request::Api(request), DIAG_CALL_TIMEOUT)
                    .await
                {
                    Ok(crate::rpc::messages::Response::Api(answer)) => answer,
                    Ok(other) => ApiResponse::Error(format!("the leader answered {other:?}")),
                    Err(err) => ApiResponse::Error(err.to_string()),
                }
            }
            Some(Running { manager: None, .. }) => ApiResponse::Error(
                "this node is a worker; run this on a manager (`meshctl node ls` there shows which nodes are managers)".into(),
            ),
            Some(Running {
                manager: Some(manager), ..
            }) => {
                let manager = Arc::clone(manager);
                drop(running);
                manager.api(request).await
            }
        }
    }
}

/// How long a worker waits for the leader's answer to a diagnosis (the leader waits up to
/// 10 s for every host).
const DIAG_CALL_TIMEOUT: Duration = Duration::from_secs(15);

async fn wait_until_voter(manager: &Manager) -> Result<(), String> {
    let id = manager.node_id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if manager.voters().iter().any(|(voter, _)| *voter == id) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("joined, but the leader has not made this manager a voter within 60 s; check `meshctl node ls` on the leader".into())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(bytes)
}

fn random_id() -> Result<u64, String> {
    loop {
        let id = u64::from_be_bytes(random_bytes()?);
        if id != 0 {
            return Ok(id);
        }
    }
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let random: [u8; 16] = random_bytes()?;
    Ok(crate::cluster::token::hex(&random[..bytes.min(16)]))
}

/// Checks an address pool: an IPv4 CIDR, and a subnet length that fits in it (up to /29).
pub fn check_pool(pool: &str, mask: u8) -> Result<(), String> {
    let (addr, prefix) = pool
        .split_once('/')
        .ok_or_else(|| format!("--default-addr-pool {pool:?} is not a CIDR like 10.0.0.0/8"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("--default-addr-pool {pool:?} is not an IPv4 CIDR like 10.0.0.0/8"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("--default-addr-pool {pool:?} has no valid prefix length"))?;
    let host_bits = u32::from(addr) & u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    if host_bits != 0 {
        return Err(format!(
            "--default-addr-pool {pool:?} has host bits set; did you mean {}/{prefix}?",
            std::net::Ipv4Addr::from(
                u32::from(addr) & !u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0)
            )
        ));
    }
    if mask < prefix || mask > 29 {
        return Err(format!(
            "--default-addr-pool-mask-length {mask} must be between the pool's prefix ({prefix}) and 29"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_checked() {
        check_pool("10.0.0.0/8", 24).unwrap();
        check_pool("10.20.0.0/16", 16).unwrap();
        assert!(check_pool("10.0.0.0", 24).unwrap_err().contains("CIDR"));
        assert!(check_pool("10.0.0.1/8", 24)
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
        assert!(check_pool("10.0.0.0/8", 4).unwrap_err().contains("between"));
        assert!(check_pool("10.0.0.0/8", 30).unwrap_err().contains("29"));
        assert!(check_pool("fd00::/8", 24).is_err());
    }
}
