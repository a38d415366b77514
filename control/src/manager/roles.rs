//! Changing a node's role while it runs: promotion, demotion, renewal of its certificate for
//! the new role, and leaving. The leader records the role; the node learns it from its next
//! heartbeat answer, asks for a certificate of that role, and restarts its cluster side.

use std::collections::BTreeSet;

use openraft::ChangeMembers;

use super::join::promote_to_voter;
use super::Manager;
use crate::api::{find_node, format_node_id, ApiResponse};
use crate::cluster::ca::ClusterCa;
use crate::cluster::quorum;
use crate::cluster::tls::PeerIdentity;
use crate::cluster::CertRole;
use crate::rpc::messages::Response;
use crate::store::{Command, NodeRecord, NodeStatus, Role};

impl Manager {
    pub(super) async fn promote(&self, key: &str) -> ApiResponse {
        let node = match self.read(|s| find_node(s.nodes.values(), key).cloned()) {
            Ok(node) => node,
            Err(why) => return ApiResponse::Error(why),
        };
        if node.role == Role::Manager {
            return ApiResponse::Error(format!("node {} is already a manager", node.name));
        }
        if node.status != NodeStatus::Ready {
            return ApiResponse::Error(format!(
                "node {} is down; a manager must be reachable to catch up",
                node.name
            ));
        }
        if let Err(answer) = self
            .apply(Command::SetRole {
                id: node.id,
                role: Role::Manager,
            })
            .await
        {
            return answer;
        }
        // The node restarts as a manager once it has its new certificate; the leader keeps
        // trying to add it until it has caught up.
        tokio::spawn(promote_to_voter(
            self.raft.clone(),
            node.id,
            node.addr.clone(),
        ));
        let managers = self.voters().len() + 1;
        ApiResponse::Done {
            message: format!("node {} promoted to a manager", node.name),
            warnings: quorum::warnings(managers)
                .into_iter()
                .filter(|w| matches!(w, quorum::QuorumWarning::EvenCount { .. }))
                .map(|w| w.to_string())
                .collect(),
        }
    }

    pub(super) async fn demote(&self, key: &str) -> ApiResponse {
        let node = match self.read(|s| find_node(s.nodes.values(), key).cloned()) {
            Ok(node) => node,
            Err(why) => return ApiResponse::Error(why),
        };
        if node.role == Role::Worker {
            return ApiResponse::Error(format!("node {} is already a worker", node.name));
        }
        if let Err(answer) = self.leave_raft(&node).await {
            return answer;
        }
        match self
            .apply(Command::SetRole {
                id: node.id,
                role: Role::Worker,
            })
            .await
        {
            Ok(()) => ApiResponse::Done {
                message: format!("manager {} demoted to a worker", node.name),
                warnings: quorum::warnings(self.voters().len())
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
            Err(answer) => answer,
        }
    }

    /// Takes a manager out of the Raft voters, if both the current and the new voter set keep
    /// a reachable quorum (a joint change needs both), judged by probing the managers now.
    pub(super) async fn leave_raft(&self, node: &NodeRecord) -> Result<(), ApiResponse> {
        let voters: Vec<_> = self.voters().into_iter().map(|(id, _)| id).collect();
        if !voters.contains(&node.id) {
            return Ok(());
        }
        let up = self.probe_voters().await;
        let remaining: Vec<_> = voters.iter().filter(|id| **id != node.id).collect();
        let remaining_up = remaining.iter().filter(|id| up.contains(id)).count();
        if remaining.is_empty()
            || up.len() < quorum::quorum(voters.len())
            || remaining_up < quorum::quorum(remaining.len())
        {
            return Err(ApiResponse::Error(format!(
                "taking manager {} out would lose quorum ({remaining_up} of the {} other managers reachable); bring the other managers back first",
                node.name,
                remaining.len()
            )));
        }
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([node.id]));
        match tokio::time::timeout(std::time::Duration::from_secs(10), self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(ApiResponse::Error(format!("taking manager {} out of Raft: {err}", node.name))),
            Err(_) => Err(ApiResponse::Error(format!(
                "taking manager {} out of Raft did not commit within 10 s; a manager was lost meanwhile: check `meshctl node ls`",
                node.name
            ))),
        }
    }

    /// A certificate of the node's recorded role, for a node whose role changed or whose
    /// certificate is due for renewal.
    pub(super) async fn renew(&self, peer: &PeerIdentity, csr_der: &[u8]) -> Response {
        let Some((node, cluster)) = self.read(|s| {
            let node = s
                .nodes
                .values()
                .find(|n| format_node_id(n.id) == peer.node_id)
                .cloned();
            node.zip(s.cluster.clone())
        }) else {
            return Response::Refused("this node is no longer in the cluster; join again".into());
        };
        let ca = ClusterCa {
            cert_pem: cluster.ca_cert_pem,
            key_pem: cluster.ca_key_pem,
        };
        let role = match node.role {
            Role::Manager => CertRole::Manager,
            Role::Worker => CertRole::Worker,
        };
        let lifetime = crate::cluster::ca::node_validity(cluster.cert_expiry_secs);
        match ca.sign_csr(csr_der, &peer.node_id, role, &cluster.id, lifetime) {
            Ok(cert_pem) => {
                let mut managers = self.voters();
                if node.role == Role::Manager && !managers.iter().any(|(id, _)| *id == node.id) {
                    managers.push((node.id, node.addr.clone()));
                }
                Response::Renewed {
                    cert_pem,
                    role: node.role,
                    managers,
                    data_key: self.data_key_for(node.role),
                }
            }
            Err(err) => Response::Refused(format!("the certificate request was refused: {err}")),
        }
    }

    /// A node leaves: a manager first leaves Raft (if quorum allows); the node stays listed as
    /// Down until `node rm`, as it would after a crash.
    pub(super) async fn leave(&self, peer: &PeerIdentity) -> Response {
        let Some(node) = self.read(|s| {
            s.nodes
                .values()
                .find(|n| format_node_id(n.id) == peer.node_id)
                .cloned()
        }) else {
            return Response::Ok;
        };
        if node.role == Role::Manager {
            if let Err(ApiResponse::Error(why)) = self.leave_raft(&node).await {
                return Response::Refused(why);
            }
            if let Err(ApiResponse::Error(why)) = self
                .apply(Command::SetRole {
                    id: node.id,
                    role: Role::Worker,
                })
                .await
            {
                return Response::Refused(why);
            }
        }
        self.last_seen
            .lock()
            .expect("liveness lock")
            .remove(&node.id);
        match self
            .apply(Command::SetStatus {
                id: node.id,
                status: NodeStatus::Down,
            })
            .await
        {
            Ok(()) => Response::Ok,
            Err(ApiResponse::Error(why)) => Response::Refused(why),
            Err(_) => Response::Ok,
        }
    }
}
