//! A running node changing its place in the cluster: a new role after a promotion or
//! demotion (new certificate, cluster side restarted in that role), or leaving altogether.

use std::sync::Arc;
use std::time::Duration;

use super::heartbeat::LeaderClient;
use super::identity::{Identity, Membership};
use super::runtime::{ClusterNode, Running};
use crate::api::format_node_id;
use crate::cluster::ca::new_node_key_and_csr;
use crate::cluster::tls::NodeCredentials;
use crate::rpc::messages::{Request, Response};
use crate::secrets::crypto::DataKey;
use crate::store::Role;

/// Keeps the data key a manager was given (a worker is given none).
pub(super) fn save_data_key(
    state_dir: &std::path::Path,
    role: Role,
    key: Option<&crate::secrets::Blob>,
) -> Result<(), String> {
    let Some(key) = key.filter(|_| role == Role::Manager) else {
        if role == Role::Manager {
            tracing::warn!(
                "the leader sent no data key: this manager cannot create or deliver secrets"
            );
        }
        return Ok(());
    };
    let key = DataKey::from_bytes(&key.0).ok_or("the leader sent a malformed data key")?;
    key.save(state_dir).map_err(|e| e.to_string())
}

impl ClusterNode {
    /// Acts on role changes for as long as the node runs: promoted or demoted, it takes a
    /// certificate of its new role and restarts its cluster side in that role.
    pub fn supervise(self: &Arc<Self>) {
        let Some(mut changes) = self.role_changes_rx.lock().expect("supervisor lock").take() else {
            return;
        };
        let node = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(role) = changes.recv().await {
                if let Err(err) = node.change_role(role).await {
                    tracing::warn!(error = %err, ?role, "changing this node's role; the next heartbeat retries");
                }
            }
        });
    }

    async fn change_role(&self, wanted: Role) -> Result<(), String> {
        let mut running = self.running.lock().await;
        let Some(current) = running.as_ref() else {
            return Ok(());
        };
        if current.identity.membership.role == wanted {
            return Ok(());
        }
        let identity = current.identity.clone();
        let (key_pem, csr_der) = new_node_key_and_csr(&format_node_id(identity.membership.node_id))
            .map_err(|e| e.to_string())?;
        let renewed = self
            .call_leader(&identity, &Request::Renew { csr_der })
            .await?;
        let Response::Renewed {
            cert_pem,
            role,
            managers,
            data_key,
        } = renewed
        else {
            return Err(format!("unexpected answer to a renewal: {renewed:?}"));
        };
        let stopped = running.take().expect("checked above");
        stop(stopped).await;
        if role == Role::Worker {
            // A demoted manager is no longer a voter: its Raft state must not come back, and
            // it must not keep the key that decrypts the secrets in it.
            let _ = std::fs::remove_dir_all(self.state_dir.join("raft"));
            if let Err(err) = DataKey::remove(&self.state_dir) {
                tracing::warn!(error = %err, "forgetting the data key after a demotion");
            }
        }
        save_data_key(&self.state_dir, role, data_key.as_ref())?;
        let identity = Identity {
            membership: Membership {
                role,
                managers,
                ..identity.membership
            },
            // New credentials: the old ones' configurations die with the stopped side.
            credentials: NodeCredentials::new(
                identity.credentials.ca_pem.clone(),
                cert_pem,
                key_pem,
            ),
        };
        identity
            .save(&self.state_dir)
            .map_err(|e| format!("saving the node identity: {e}"))?;
        *running = Some(self.start(identity).await?);
        tracing::info!(?role, "now running in the new role");
        Ok(())
    }

    pub(super) async fn call_leader(
        &self,
        identity: &Identity,
        request: &Request,
    ) -> Result<Response, String> {
        let tls = identity
            .credentials
            .client_config()
            .map_err(|e| e.to_string())?;
        let managers = identity
            .membership
            .managers
            .iter()
            .map(|(_, a)| a.clone())
            .collect();
        match LeaderClient::new(tls, managers)
            .call(request, Duration::from_secs(15))
            .await
        {
            Ok(Response::Refused(why)) => Err(why),
            Ok(answer) => Ok(answer),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Leaves the cluster: tells the leader (a manager first leaves Raft, if quorum allows),
    /// stops the cluster side and forgets the identity. A manager needs `force`.
    pub async fn leave(&self, force: bool) -> Result<(), String> {
        let mut running = self.running.lock().await;
        let Some(current) = running.as_ref() else {
            return Err("this node is not part of a cluster".into());
        };
        let identity = current.identity.clone();
        if identity.membership.role == Role::Manager && !force {
            return Err("this node is a manager: leaving takes a voter away; demote it first (`meshctl node demote NODE` on a manager), or leave anyway with --force".into());
        }
        if let Err(why) = self.call_leader(&identity, &Request::Leave).await {
            if !force {
                return Err(format!("{why}; leave anyway with --force"));
            }
            tracing::warn!(error = %why, "leaving without the leader's agreement (--force)");
        }
        stop(running.take().expect("checked above")).await;
        self.stop_discovery();
        crate::agent::clear_node(self.task_runtime.as_ref(), &self.state_dir).await;
        for dir in [
            super::identity::dir(&self.state_dir),
            self.state_dir.join("raft"),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(format!("removing {}: {err}", dir.display())),
            }
        }
        Ok(())
    }
}

/// Stops a running cluster side: Raft first (it holds the log database), then every task.
pub(super) async fn stop(running: Running) {
    if let Some(manager) = &running.manager {
        if let Err(err) = manager.raft().shutdown().await {
            tracing::warn!(error = %err, "stopping Raft");
        }
    }
    drop(running);
}
