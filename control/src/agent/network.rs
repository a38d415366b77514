//! The agent's side of the overlay: from the dispatcher's assignments to the host's desired
//! overlay state, converged by the dataplane after every answer and before a task starts.

use std::net::Ipv4Addr;

use dataplane::overlay::{HostOverlay, LocalEndpoint, NetworkPlan, RemoteEndpoint};

use super::Agent;
use crate::network::mac_of;
use crate::rpc::messages::Assignments;
use crate::runtime::netns;

/// The dataplane names a network by the first 12 characters of its ID.
fn plan_id(network_id: &str) -> String {
    network_id.chars().take(12).collect()
}

/// The overlay this host must have: every network its live tasks use, with the local tasks
/// whose namespaces exist, and every remote endpoint.
pub(super) fn desired(
    assignments: &Assignments,
    node_id: crate::store::NodeId,
    underlay_ip: Ipv4Addr,
    netns_dir: &std::path::Path,
) -> HostOverlay {
    let networks = assignments
        .networks
        .iter()
        .map(|net| {
            let mut local = Vec::new();
            let mut remote = Vec::new();
            for endpoint in &net.endpoints {
                if endpoint.node_id != node_id {
                    remote.push(RemoteEndpoint {
                        ip: endpoint.ip,
                        mac: mac_of(endpoint.ip),
                        vtep: endpoint.vtep,
                    });
                    continue;
                }
                let Some(task) = assignments
                    .tasks
                    .iter()
                    .find(|a| a.task.id == endpoint.task_id)
                else {
                    continue;
                };
                let path = netns_dir.join(&endpoint.task_id);
                if task.task.state.is_terminal() || !netns::is_pinned(&path) {
                    continue;
                }
                let index = task
                    .task
                    .attachments
                    .iter()
                    .position(|a| a.network_id == net.network.id)
                    .unwrap_or(0);
                local.push(LocalEndpoint {
                    task_id: endpoint.task_id.clone(),
                    netns: path,
                    ifname: format!("eth{index}"),
                    ip: endpoint.ip,
                    mac: mac_of(endpoint.ip),
                });
            }
            NetworkPlan {
                id: plan_id(&net.network.id),
                vni: net.network.vni,
                subnet: net.network.subnet.addr,
                prefix_len: net.network.subnet.prefix,
                gateway: net.network.gateway,
                mtu: net.mtu,
                local,
                remote,
            }
        })
        .collect();
    HostOverlay {
        underlay_ip,
        data_path_port: assignments.data_path_port,
        networks,
    }
}

impl Agent {
    /// Converges the host's overlay to the last assignments. Failures are logged and retried
    /// with the next answer: the dataplane repairs whatever is missing.
    pub(super) async fn apply_overlay(&self) {
        let Some(underlay_ip) = self.underlay_ip else {
            return;
        };
        let assignments = self.last.lock().expect("agent lock").clone();
        let Some(assignments) = assignments else {
            return;
        };
        let plan = desired(&assignments, self.node_id, underlay_ip, &self.netns_dir);
        match self.overlay.apply(&plan).await {
            Ok(applied) if !applied.is_empty() => {
                tracing::info!(changes = ?applied.changes, "overlay converged")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "converging the overlay; retrying with the next assignments")
            }
        }
    }
}
