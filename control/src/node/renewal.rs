//! Renewal of the node's certificate before it expires: at half its lifetime the node asks the
//! leader to sign a fresh key, and installs the answer in place (every TLS configuration of the
//! node shares it), without restarting anything.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::runtime::ClusterNode;
use crate::api::format_node_id;
use crate::cluster::ca::{new_node_key_and_csr, renew_at, validity_of};
use crate::rpc::messages::{Request, Response};

/// How often the loop looks again at the certificate, whatever its lifetime: the identity
/// changes with role changes, leaving and joining.
const RECHECK: Duration = Duration::from_secs(30);
/// How long a failed renewal waits before the next attempt.
const RETRY: Duration = Duration::from_secs(5);

impl ClusterNode {
    /// Keeps this node's certificate fresh for as long as meshd runs.
    pub fn keep_certificate_fresh(self: &Arc<Self>) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let wait = node.until_renewal().await;
                tokio::time::sleep(wait).await;
                if let Err(err) = node.renew_certificate().await {
                    tracing::warn!(error = %err, "renewing this node's certificate; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        });
    }

    /// Time until the current certificate is due, at most `RECHECK`.
    async fn until_renewal(&self) -> Duration {
        let running = self.running.lock().await;
        let Some(current) = running.as_ref() else {
            return RECHECK;
        };
        match validity_of(&current.identity.credentials.cert_pem) {
            Ok((not_before, not_after)) => renew_at(not_before, not_after)
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(RECHECK),
            Err(err) => {
                tracing::warn!(error = %err, "reading this node's certificate");
                RECHECK
            }
        }
    }

    /// Renews the certificate if it is due. The leader is asked without holding the node's
    /// lock, and the answer installed only if the identity did not change meanwhile.
    async fn renew_certificate(&self) -> Result<(), String> {
        let identity = {
            let running = self.running.lock().await;
            let Some(current) = running.as_ref() else {
                return Ok(());
            };
            let (not_before, not_after) =
                validity_of(&current.identity.credentials.cert_pem).map_err(|e| e.to_string())?;
            if SystemTime::now() < renew_at(not_before, not_after) {
                return Ok(());
            }
            current.identity.clone()
        };
        let (key_pem, csr_der) = new_node_key_and_csr(&format_node_id(identity.membership.node_id))
            .map_err(|e| e.to_string())?;
        let answer = self
            .call_leader(&identity, &Request::Renew { csr_der })
            .await?;
        let Response::Renewed { cert_pem, role, .. } = answer else {
            return Err(format!("unexpected answer to a renewal: {answer:?}"));
        };
        if role != identity.membership.role {
            // A role change the heartbeat has not brought yet: the supervisor restarts this
            // node in its new role, with a certificate of that role.
            let _ = self.role_changes.send(role);
            return Ok(());
        }
        let mut running = self.running.lock().await;
        let Some(current) = running.as_mut() else {
            return Ok(());
        };
        if current.identity.credentials.cert_pem != identity.credentials.cert_pem {
            return Ok(());
        }
        current
            .identity
            .credentials
            .renew(cert_pem, key_pem)
            .map_err(|e| format!("installing the renewed certificate: {e}"))?;
        current
            .identity
            .save(&self.state_dir)
            .map_err(|e| format!("saving the renewed certificate: {e}"))?;
        let not_after = validity_of(&current.identity.credentials.cert_pem)
            .map(|(_, not_after)| not_after)
            .ok();
        tracing::info!(?not_after, "node certificate renewed");
        Ok(())
    }
}
