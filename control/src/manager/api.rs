//! The cluster API on a manager: answered by the leader with linearizable reads and committed
//! writes; any other manager forwards to the leader, and when no leader answers, reads are
//! served from the last state this manager knows, marked stale.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use super::{quorum_lost_message, Manager};
use crate::api::{find_node, valid_label_key, ApiRequest, ApiResponse, ClusterView, NodeView};
use crate::cluster::ca::ClusterCa;
use crate::cluster::quorum;
use crate::cluster::token::JoinToken;
use crate::rpc::client::RpcError;
use crate::rpc::messages::{Request, Response};
use crate::store::{ClusterState, Command, NodeStatus, Role};

/// How long a forwarded call may take (a write waits up to 5 s for its commit, a diagnosis up
/// to 10 s for every host).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// The error for a write that may have reached a leader whose answer never came back.
fn outcome_unknown(leader: &str, why: &str) -> ApiResponse {
    ApiResponse::Error(format!(
        "no answer from the leader at {leader} ({why}); it may have received this change, so it \
         may have been applied: check the current state before retrying"
    ))
}

/// How long a follower waits for an election to produce a leader before giving up.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

impl Manager {
    /// Answers a cluster API call made on this manager (by its local meshctl): as the leader,
    /// or by forwarding to the leader Raft knows of. With no leader, reads are served from the
    /// last known state, marked stale, and writes are refused with the quorum error.
    pub async fn api(&self, request: ApiRequest) -> ApiResponse {
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        let write = !is_read(&request);
        loop {
            if self.is_leader() {
                return self.api_as_leader(request).await;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(addr) = self.wait_for_leader(remaining).await else {
                break;
            };
            if addr.is_empty() {
                continue;
            }
            // If Raft elects someone else meanwhile (the leader died mid-call), stop waiting for
            // an answer that will never come. A read asks the new leader; a write that may have
            // reached the old one is not sent again: it could be applied twice (the Raft fault
            // suite saw a retried write take effect a second time, after a later write).
            let asked = self.raft.metrics().borrow().current_leader;
            let mut metrics = self.raft.metrics();
            let forwarded = tokio::select! {
                answer = self.forward(&addr, &request) => answer,
                _ = metrics.wait_for(|m| m.current_leader != asked) => {
                    if write {
                        return outcome_unknown(&addr, "it stopped leading");
                    }
                    continue;
                }
            };
            match forwarded {
                Ok(Response::Api(answer)) => return answer,
                Ok(Response::Refused(why)) => return ApiResponse::Error(why),
                Err(err) if write && !matches!(err, RpcError::Connect { .. }) => {
                    return outcome_unknown(&addr, &err.to_string());
                }
                Ok(Response::NotLeader { .. }) | Err(_) => {
                    // Not delivered (or a read): that leader is gone or deposed, so wait for
                    // Raft to name another, not for the same address to fail again.
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let changed = tokio::time::timeout(
                        remaining,
                        metrics.wait_for(|m| m.current_leader != asked),
                    )
                    .await;
                    if changed.is_err() {
                        break;
                    }
                }
                Ok(other) => {
                    return ApiResponse::Error(format!(
                        "unexpected answer from the leader: {other:?}"
                    ))
                }
            }
        }
        let voters = self.voters().len();
        let reachable = self.probe_voters().await.len();
        let warning = quorum_lost_message(voters, reachable);
        if write {
            ApiResponse::Error(warning)
        } else {
            ApiResponse::Stale {
                warning: format!("{warning}; showing the last state this manager knows"),
                answer: Box::new(self.answer_read(&request)),
            }
        }
    }

    /// The leader's address once Raft knows one (an empty string when it is this manager).
    async fn wait_for_leader(&self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.is_leader() {
                return Some(String::new());
            }
            if let Some(addr) = self.leader_addr() {
                return Some(addr);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        addr: &str,
        request: &ApiRequest,
    ) -> Result<Response, crate::rpc::client::RpcError> {
        let client = {
            let mut cached = self.forward_client.lock().expect("forward client lock");
            match cached.as_ref() {
                Some(client) if client.addr() == addr => std::sync::Arc::clone(client),
                _ => {
                    let tls = self.credentials.client_config().map_err(|e| {
                        crate::rpc::client::RpcError::Connect {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                    let client = std::sync::Arc::new(crate::rpc::client::Client::new(
                        addr,
                        tls,
                        crate::cluster::tls::manager_server_name(),
                    ));
                    *cached = Some(std::sync::Arc::clone(&client));
                    client
                }
            }
        };
        client
            .call(&Request::Api(request.clone()), FORWARD_TIMEOUT)
            .await
    }

    /// Answers as the leader: reads after a linearizable barrier, writes through Raft.
    pub(super) async fn api_as_leader(&self, request: ApiRequest) -> ApiResponse {
        if is_read(&request) {
            let barrier =
                tokio::time::timeout(Duration::from_secs(3), self.raft.ensure_linearizable()).await;
            if !matches!(barrier, Ok(Ok(_))) {
                let warning = if self.quorum_lost() {
                    self.quorum_error().await
                } else {
                    "this manager could not confirm it still leads".into()
                };
                return ApiResponse::Stale {
                    warning: format!("{warning}; showing the last state this manager knows"),
                    answer: Box::new(self.answer_read(&request)),
                };
            }
            return self.answer_read(&request);
        }
        match request {
            ApiRequest::NodeUpdate {
                node,
                availability,
                label_add,
                label_rm,
            } => {
                let id = match self.read(|s| find_node(s.nodes.values(), &node).map(|n| n.id)) {
                    Ok(id) => id,
                    Err(why) => return ApiResponse::Error(why),
                };
                if let Some(key) = label_add
                    .keys()
                    .chain(&label_rm)
                    .find(|k| !valid_label_key(k))
                {
                    return ApiResponse::Error(format!(
                        "label key {key:?} is not valid; use letters, digits, '.', '-' and '_', starting with a letter"
                    ));
                }
                match self
                    .apply(Command::UpdateNode {
                        id,
                        availability,
                        label_add,
                        label_rm,
                    })
                    .await
                {
                    Ok(()) => done(format!("node {node} updated")),
                    Err(answer) => answer,
                }
            }
            ApiRequest::NodeRemove { node, force } => self.remove_node(&node, force).await,
            ApiRequest::ServiceCreate(spec) => self.create_service(*spec).await,
            ApiRequest::ServiceScale { service, replicas } => {
                self.scale_service(&service, replicas).await
            }
            ApiRequest::ServiceUpdate {
                service,
                spec,
                version,
                resume,
            } => self.update_service(&service, *spec, version, resume).await,
            ApiRequest::ServiceRollback { service } => self.rollback_service(&service).await,
            ApiRequest::ServiceRemove { service } => self.remove_service(&service).await,
            ApiRequest::NetworkCreate(spec) => self.create_network(spec).await,
            ApiRequest::NetworkRemove { network } => self.remove_network(&network).await,
            ApiRequest::SecretCreate {
                kind,
                name,
                labels,
                data,
            } => self.create_secret(kind, name, labels, data).await,
            ApiRequest::SecretRemove { kind, secret } => self.remove_secret(kind, &secret).await,
            ApiRequest::NodePromote { node } => self.promote(&node).await,
            ApiRequest::NodeDemote { node } => self.demote(&node).await,
            ApiRequest::JoinToken { role, rotate } => {
                if rotate {
                    let secret = match fresh_secret() {
                        Ok(random) => JoinToken::new([0; 32], random).secret,
                        Err(why) => return ApiResponse::Error(why),
                    };
                    if let Err(answer) = self.apply(Command::RotateSecret { role, secret }).await {
                        return answer;
                    }
                }
                self.answer_read(&ApiRequest::JoinToken {
                    role,
                    rotate: false,
                })
            }
            ApiRequest::SwarmUpdate { cert_expiry_secs } => {
                let lifetime = std::time::Duration::from_secs(cert_expiry_secs);
                if let Err(why) = crate::cluster::ca::check_node_validity(lifetime) {
                    return ApiResponse::Error(why);
                }
                let secs = cert_expiry_secs;
                if let Err(answer) = self.apply(Command::SetCertExpiry { secs }).await {
                    return answer;
                }
                done(format!(
                    "node certificates issued from now on are valid for {secs}s; each node \
                     renews its current one at half of that one's lifetime and gets the new \
                     lifetime then"
                ))
            }
            ApiRequest::Diag(request) => self.diagnose(request).await,
            ApiRequest::GossipKeyRotate => match self.rotate_gossip_key().await {
                Ok(id) => done(format!(
                    "gossip key {id} added; nodes encrypt with it from {} s on, and the oldest key beyond the last {} is dropped",
                    crate::discovery::KEY_SPREAD.as_secs(),
                    crate::store::GOSSIP_KEYS_KEPT
                )),
                Err(answer) => answer,
            },
            read => self.answer_read(&read),
        }
    }

    /// Appends a fresh gossip key; returns its ID.
    pub(super) async fn rotate_gossip_key(&self) -> Result<u32, ApiResponse> {
        let newest = self.read(|s| {
            s.cluster
                .as_ref()
                .and_then(|c| c.gossip_keys.last().map(|k| k.id))
        });
        let key =
            crate::store::GossipKey::new(newest.unwrap_or(0) + 1).map_err(ApiResponse::Error)?;
        let id = key.id;
        self.apply(Command::AddGossipKey(key)).await?;
        Ok(id)
    }

    async fn remove_node(&self, key: &str, force: bool) -> ApiResponse {
        let node = match self.read(|s| find_node(s.nodes.values(), key).cloned()) {
            Ok(node) => node,
            Err(why) => return ApiResponse::Error(why),
        };
        if node.id == self.node_id {
            return ApiResponse::Error(
                "a manager cannot remove itself; run `meshctl node rm` on another manager".into(),
            );
        }
        if node.status == NodeStatus::Ready && !force {
            return ApiResponse::Error(format!(
                "node {} is up; stop it first, or remove it anyway with --force",
                node.name
            ));
        }
        if node.role == Role::Manager {
            if let Err(answer) = self.leave_raft(&node).await {
                return answer;
            }
        }
        match self.apply(Command::RemoveNode { id: node.id }).await {
            Ok(()) => done(format!("node {} removed", node.name)),
            Err(answer) => answer,
        }
    }

    /// Answers a read from the local state.
    fn answer_read(&self, request: &ApiRequest) -> ApiResponse {
        let leader = self.raft.metrics().borrow().current_leader;
        let voters: Vec<_> = self.voters().into_iter().map(|(id, _)| id).collect();
        let reachable = self.reachable_voters();
        let seen = self.last_seen.lock().expect("liveness lock").clone();
        let down_after = self.settings.down_after;
        let leading = self.is_leader();
        let status_of = |id| {
            if !voters.contains(&id) {
                None
            } else if Some(id) == leader {
                Some("Leader".to_string())
            } else if !leading {
                Some("Unknown".to_string())
            } else if seen
                .get(&id)
                .is_some_and(|t: &std::time::Instant| t.elapsed() < down_after)
            {
                Some("Reachable".to_string())
            } else {
                Some("Unreachable".to_string())
            }
        };
        self.read(|state: &ClusterState| match request {
            ApiRequest::NodeList => ApiResponse::Nodes(
                state
                    .nodes
                    .values()
                    .map(|n| NodeView::of(n, status_of(n.id)))
                    .collect(),
            ),
            ApiRequest::NodeInspect { node } => match find_node(state.nodes.values(), node) {
                Ok(n) => ApiResponse::Node(NodeView::of(n, status_of(n.id))),
                Err(why) => ApiResponse::Error(why),
            },
            ApiRequest::JoinToken { role, .. } => {
                let Some(cluster) = &state.cluster else {
                    return ApiResponse::Error("the cluster is not initialized".into());
                };
                let ca = ClusterCa {
                    cert_pem: cluster.ca_cert_pem.clone(),
                    key_pem: String::new(),
                };
                let digest = match ca.digest() {
                    Ok(digest) => digest,
                    Err(err) => return ApiResponse::Error(err.to_string()),
                };
                let secret = match role {
                    Role::Worker => &cluster.worker_secret,
                    Role::Manager => &cluster.manager_secret,
                };
                ApiResponse::Token {
                    role: *role,
                    token: JoinToken {
                        ca_digest: digest,
                        secret: secret.clone(),
                    }
                    .to_string(),
                }
            }
            ApiRequest::Info => {
                let managers = voters.len();
                ApiResponse::Info(ClusterView {
                    cluster_id: state
                        .cluster
                        .as_ref()
                        .map(|c| c.id.clone())
                        .unwrap_or_default(),
                    managers,
                    reachable_managers: if leading { reachable } else { 0 },
                    quorum: quorum::quorum(managers),
                    tolerated_failures: quorum::tolerated_failures(managers),
                    workers: state
                        .nodes
                        .values()
                        .filter(|n| n.role == Role::Worker)
                        .count(),
                    leader: leader
                        .and_then(|id| state.nodes.get(&id))
                        .map_or_else(|| "(none)".into(), |n| n.name.clone()),
                    data_path_port: state.cluster.as_ref().map_or(0, |c| c.data_path_port),
                    warnings: quorum::warnings(managers)
                        .iter()
                        .map(ToString::to_string)
                        .chain(workload_warning(state))
                        .collect(),
                })
            }
            ApiRequest::ServiceList => super::services::list_services(state),
            ApiRequest::ServiceInspect { service } => {
                match crate::service::view::find_service(state, service) {
                    Ok(s) => ApiResponse::Service(Box::new(crate::service::view::ServiceView::of(
                        s, state,
                    ))),
                    Err(why) => ApiResponse::Error(why),
                }
            }
            ApiRequest::TaskList { services } => super::services::list_tasks(state, services),
            ApiRequest::NetworkList => super::networks::list_networks(state),
            ApiRequest::NetworkInspect { network, verbose } => {
                match crate::network::find_network(state, network) {
                    Ok(n) => {
                        let mut view = crate::network::NetworkView::of(n, state);
                        if *verbose {
                            let views = self.endpoint_views.lock().expect("endpoint views lock");
                            view.host_views = super::networks::host_views(state, &view, &views);
                        }
                        ApiResponse::Network(Box::new(view))
                    }
                    Err(why) => ApiResponse::Error(why),
                }
            }
            ApiRequest::ServiceLogs { service, after } => self.service_logs(state, service, after),
            ApiRequest::SecretList { kind } => super::secrets::list_secrets(state, *kind),
            ApiRequest::SecretInspect { kind, secret } => {
                super::secrets::inspect_secret(state, *kind, secret)
            }
            other => ApiResponse::Error(format!("{other:?} is not a read")),
        })
    }

    /// The voters that answer a probe on the cluster port within 500 ms, this one included.
    /// Membership changes use this rather than heartbeat ages: a manager that died a second
    /// ago still looks alive to the heartbeat bookkeeping.
    pub(super) async fn probe_voters(&self) -> std::collections::BTreeSet<crate::store::NodeId> {
        let Ok(tls) = self.credentials.client_config() else {
            return std::collections::BTreeSet::from([self.node_id]);
        };
        let probes = self.voters().into_iter().map(|(id, addr)| {
            let tls = std::sync::Arc::clone(&tls);
            async move {
                if id == self.node_id {
                    return Some(id);
                }
                let client = crate::rpc::client::Client::new(
                    &addr,
                    tls,
                    crate::cluster::tls::manager_server_name(),
                );
                let probe = Request::Heartbeat {
                    node_id: self.node_id,
                    version: env!("CARGO_PKG_VERSION").into(),
                };
                client
                    .call(&probe, Duration::from_millis(500))
                    .await
                    .ok()
                    .map(|_| id)
            }
        });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Managers that take tasks compete with Raft for CPU and disk; say which ones do.
fn workload_warning(state: &ClusterState) -> Option<String> {
    let active: Vec<&str> = state
        .managers()
        .filter(|n| n.availability == crate::store::Availability::Active)
        .map(|n| n.name.as_str())
        .collect();
    (!active.is_empty()).then(|| {
        format!(
            "managers {} are available for workloads: tasks would compete with Raft for CPU and disk; `meshctl node update --availability drain NODE` keeps them for managing",
            active.join(", ")
        )
    })
}

fn is_read(request: &ApiRequest) -> bool {
    matches!(
        request,
        ApiRequest::NodeList
            | ApiRequest::NodeInspect { .. }
            | ApiRequest::Info
            | ApiRequest::JoinToken { rotate: false, .. }
            | ApiRequest::ServiceList
            | ApiRequest::ServiceInspect { .. }
            | ApiRequest::TaskList { .. }
            | ApiRequest::ServiceLogs { .. }
            | ApiRequest::NetworkList
            | ApiRequest::NetworkInspect { .. }
            | ApiRequest::SecretList { .. }
            | ApiRequest::SecretInspect { .. }
    )
}

pub(super) fn done(message: String) -> ApiResponse {
    ApiResponse::Done {
        message,
        warnings: Vec::new(),
    }
}

fn fresh_secret() -> Result<[u8; 16], String> {
    let mut random = [0u8; 16];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(random)
}
