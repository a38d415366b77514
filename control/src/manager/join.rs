//! Admitting a node: check its token, sign its certificate, record it, and make a manager a
//! Raft voter once it has caught up.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use ring::rand::{SecureRandom, SystemRandom};

use super::Manager;
use crate::api::format_node_id;
use crate::cluster::ca::ClusterCa;
use crate::cluster::token::JoinToken;
use crate::cluster::CertRole;
use crate::config::validate_node_name;
use crate::rpc::messages::{JoinAccepted, JoinRequest, Response};
use crate::store::{Availability, Command, NodeId, NodeRecord, NodeStatus, Role};

/// How long the leader keeps trying to make a joining manager a voter.
const PROMOTE_DEADLINE: Duration = Duration::from_secs(60);

impl Manager {
    pub(super) async fn join(&self, request: JoinRequest) -> Response {
        if !self.is_leader() {
            return Response::NotLeader {
                leader_addr: self.leader_addr(),
            };
        }
        match self.admit(request).await {
            Ok(accepted) => Response::Joined(accepted),
            Err(why) => Response::Refused(why),
        }
    }

    async fn admit(&self, request: JoinRequest) -> Result<JoinAccepted, String> {
        let token = JoinToken::parse(&request.token).map_err(|e| e.to_string())?;
        let Some(cluster) = self.read(|s| s.cluster.clone()) else {
            return Err("this manager has no cluster yet; try again in a moment".into());
        };
        let ca = ClusterCa {
            cert_pem: cluster.ca_cert_pem.clone(),
            key_pem: cluster.ca_key_pem.clone(),
        };
        if token.ca_digest != ca.digest().map_err(|e| e.to_string())? {
            return Err("this join token belongs to another cluster; get one from a manager of this cluster with `meshctl swarm join-token worker|manager`".into());
        }
        let role = if token.secret_matches(&cluster.worker_secret) {
            Role::Worker
        } else if token.secret_matches(&cluster.manager_secret) {
            Role::Manager
        } else {
            return Err("the join token is not valid: it was rotated or mistyped; get the current one with `meshctl swarm join-token worker|manager` on a manager".into());
        };
        validate_node_name(&request.name).map_err(|e| e.to_string())?;
        let addr: std::net::SocketAddr = request.addr.parse().map_err(|_| {
            format!(
                "the node's address {:?} is not host:port; give --advertise-addr",
                request.addr
            )
        })?;
        if addr.ip().is_unspecified() {
            return Err(format!(
                "the node's address {addr} is not reachable by others; give --advertise-addr"
            ));
        }
        let node_id = self.fresh_node_id()?;
        let cert_role = match role {
            Role::Manager => CertRole::Manager,
            Role::Worker => CertRole::Worker,
        };
        let cert_pem = ca
            .sign_csr(
                &request.csr_der,
                &format_node_id(node_id),
                cert_role,
                &cluster.id,
                crate::cluster::ca::node_validity(cluster.cert_expiry_secs),
            )
            .map_err(|e| format!("the node's certificate request was refused: {e}"))?;
        self.apply(Command::AddNode(NodeRecord {
            id: node_id,
            name: request.name.clone(),
            addr: addr.to_string(),
            role,
            availability: Availability::Active,
            labels: Default::default(),
            status: NodeStatus::Ready,
            version: request.version.clone(),
            description: request.description.clone(),
        }))
        .await
        .map_err(|answer| match answer {
            crate::api::ApiResponse::Error(why) => why,
            other => format!("{other:?}"),
        })?;
        self.seen(node_id);
        tracing::info!(node = %request.name, id = %format_node_id(node_id), ?role, "node joined");
        if role == Role::Manager {
            // The new manager starts Raft only once it has its certificate: add it as a learner
            // (which waits until it has caught up), then as a voter, in the background.
            let raft = self.raft.clone();
            let addr = addr.to_string();
            tokio::spawn(async move { promote_to_voter(raft, node_id, addr).await });
        }
        let mut managers = self.voters();
        if role == Role::Manager {
            managers.push((node_id, addr.to_string()));
        }
        Ok(JoinAccepted {
            node_id,
            role,
            cluster_id: cluster.id.clone(),
            ca_pem: cluster.ca_cert_pem.clone(),
            cert_pem,
            managers,
            data_key: self.data_key_for(role),
        })
    }

    /// The data key, for a node of `role` (managers only).
    pub(super) fn data_key_for(&self, role: Role) -> Option<crate::secrets::Blob> {
        match role {
            Role::Manager => self
                .data_key
                .as_ref()
                .map(|k| crate::secrets::Blob(k.bytes().to_vec())),
            Role::Worker => None,
        }
    }

    fn fresh_node_id(&self) -> Result<NodeId, String> {
        let random = SystemRandom::new();
        for _ in 0..16 {
            let mut bytes = [0u8; 8];
            random
                .fill(&mut bytes)
                .map_err(|_| "no randomness available".to_string())?;
            let id = u64::from_be_bytes(bytes);
            if id != 0 && !self.read(|s| s.nodes.contains_key(&id)) {
                return Ok(id);
            }
        }
        Err("could not draw a free node ID".into())
    }
}

pub(super) async fn promote_to_voter(raft: crate::raft::typ::Raft, node_id: NodeId, addr: String) {
    let deadline = tokio::time::Instant::now() + PROMOTE_DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let learner = raft
            .add_learner(node_id, BasicNode { addr: addr.clone() }, true)
            .await;
        if let Err(err) = learner {
            tracing::info!(id = %format_node_id(node_id), error = %err, "adding the new manager as a learner; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        match raft.change_membership(voters, false).await {
            Ok(_) => {
                tracing::info!(id = %format_node_id(node_id), "the new manager is a voter");
                return;
            }
            Err(err) => {
                tracing::info!(id = %format_node_id(node_id), error = %err, "making the new manager a voter; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::warn!(id = %format_node_id(node_id), "gave up making the new manager a voter after 60 s");
}
