//! The agent's side of the overlay: from the dispatcher's assignments to the host's desired
//! overlay state, converged by the dataplane after every answer and before a task starts.

use std::net::Ipv4Addr;
use std::sync::Arc;

use dataplane::overlay::{HostOverlay, LocalEndpoint, NetworkPlan, RemoteEndpoint};

use super::Agent;
use crate::discovery::SeenEndpoint;
use crate::network::mac_of;
use crate::rpc::messages::Assignments;
use crate::runtime::netns;
use crate::service::TaskState;

/// The dataplane names a network by the first 12 characters of its ID.
pub(super) fn plan_id(network_id: &str) -> String {
    network_id.chars().take(12).collect()
}

/// The overlay this host must have: every network its live tasks use, with the local tasks
/// whose namespaces exist, and every remote endpoint the gossip view holds.
pub(super) fn desired(
    assignments: &Assignments,
    seen: &[SeenEndpoint],
    node_id: crate::store::NodeId,
    underlay_ip: Ipv4Addr,
    netns_dir: &std::path::Path,
) -> HostOverlay {
    let networks = assignments
        .networks
        .iter()
        .map(|net| {
            let local = assignments
                .tasks
                .iter()
                .filter(|a| !a.task.state.is_terminal())
                .filter_map(|a| {
                    let index = a
                        .task
                        .attachments
                        .iter()
                        .position(|n| n.network_id == net.network.id)?;
                    let path = netns_dir.join(&a.task.id);
                    netns::is_pinned(&path).then(|| {
                        let ip = a.task.attachments[index].ip;
                        LocalEndpoint {
                            task_id: a.task.id.clone(),
                            netns: path,
                            ifname: format!("eth{index}"),
                            ip,
                            mac: mac_of(ip),
                        }
                    })
                })
                .collect();
            let remote = seen
                .iter()
                .filter(|e| e.network_id == net.network.id && e.node_id != node_id)
                .map(|e| RemoteEndpoint {
                    ip: e.ip,
                    mac: mac_of(e.ip),
                    vtep: e.vtep,
                })
                .collect();
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
    let mut networks: Vec<NetworkPlan> = networks;
    networks.push(probe_network());
    HostOverlay {
        underlay_ip,
        data_path_port: assignments.data_path_port,
        networks,
    }
}

/// The dataplane ID of the probe network.
pub(super) const PROBE_NETWORK: &str = "meshprobe";

/// A network of no endpoints on the diagnostics' reserved VNI: its vxlan device receives the
/// VXLAN probes of `meshctl diag` after the host's firewall has had its say (a packet socket on
/// the underlay would see them before), so a firewall dropping the data-path port is found.
fn probe_network() -> NetworkPlan {
    NetworkPlan {
        id: PROBE_NETWORK.into(),
        vni: dataplane::probe::wire::PROBE_VNI,
        // A private namespace's own link-local pair: never routed anywhere.
        subnet: Ipv4Addr::new(169, 254, 255, 0),
        prefix_len: 30,
        gateway: Ipv4Addr::new(169, 254, 255, 1),
        mtu: 1450,
        local: Vec::new(),
        remote: Vec::new(),
    }
}

/// How many repairs the agent remembers for `diag overlay`.
const DRIFT_KEPT: usize = 100;

impl Agent {
    /// Answers the VXLAN probes of `meshctl diag` once the probe network's device exists
    /// (started again if the data-path port changed).
    fn ensure_probe_responder(&self, underlay_ip: Ipv4Addr, data_path_port: u16) {
        let mut responder = self.probe_responder.lock().expect("agent lock");
        if responder
            .as_ref()
            .is_some_and(|(port, _)| *port == data_path_port)
        {
            return;
        }
        let tap = self.overlay.netns_path(PROBE_NETWORK);
        let allowed = std::sync::Arc::clone(&self.probe_peers);
        match dataplane::probe::ProbeResponder::start(
            underlay_ip,
            data_path_port,
            &tap,
            "vxlan0",
            allowed,
        ) {
            Ok(started) => *responder = Some((data_path_port, started)),
            Err(err) => {
                tracing::warn!(error = %err, "starting the diagnostics probe responder; retrying with the next convergence")
            }
        }
    }

    /// Remembers repaired drift, newest last.
    fn record_drift(&self, changes: &[dataplane::overlay::Change]) {
        let now = crate::manager::orchestrate::now_ms();
        let mut drift = self.drift.lock().expect("agent lock");
        for change in changes {
            if drift.len() == DRIFT_KEPT {
                drift.pop_front();
            }
            drift.push_back((now, change.clone()));
        }
    }

    /// This host's endpoints: one per network of every task running here and not stopping.
    fn local_endpoints(&self, assignments: &Assignments) -> Vec<SeenEndpoint> {
        let Some(vtep) = self.underlay_ip else {
            return Vec::new();
        };
        let tasks = self.tasks.lock().expect("agent lock");
        let mut endpoints = Vec::new();
        for assignment in &assignments.tasks {
            let (task, Some(spec)) = (&assignment.task, &assignment.spec) else {
                continue;
            };
            // A stopping task stays listed, as draining, until it has exited: load balancers
            // keep its flows and give it no new ones, DNS no longer names it.
            let Some(local) = tasks
                .get(&task.id)
                .filter(|t| t.state == TaskState::Running)
            else {
                continue;
            };
            for attachment in &task.attachments {
                endpoints.push(SeenEndpoint {
                    network_id: attachment.network_id.clone(),
                    task_id: task.id.clone(),
                    node_id: self.node_id,
                    service_id: task.service_id.clone(),
                    service_name: spec.name.clone(),
                    task_name: task.name(&spec.name),
                    slot: task.slot,
                    ip: attachment.ip,
                    vtep,
                    // A task with a health check serves once it has passed; one without, as
                    // soon as it runs.
                    healthy: !local.stopping
                        && matches!(
                            local.health,
                            None | Some(crate::service::health::TaskHealth::Healthy)
                        ),
                    draining: local.stopping,
                });
            }
        }
        endpoints
    }

    /// Keeps the endpoint table, the overlay and DNS in step: publishes this host's endpoints
    /// when its tasks change, and converges the overlay and rebuilds the DNS zones when the
    /// table changes.
    pub(super) async fn follow_endpoints(self: Arc<Self>) {
        let mut table = self.discovery.watch();
        loop {
            tokio::select! {
                changed = table.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = self.endpoints_changed.notified() => {}
            }
            let Some(assignments) = self.last.lock().expect("agent lock").clone() else {
                continue;
            };
            self.discovery.publish(self.local_endpoints(&assignments));
            self.discovery.refresh_dns(&assignments);
            self.apply_overlay().await;
        }
    }

    /// Converges the host's overlay to the last assignments. Failures are logged and retried
    /// with the next answer: the dataplane repairs whatever is missing.
    pub(super) async fn apply_overlay(&self) {
        let Some(underlay_ip) = self.underlay_ip else {
            return;
        };
        let data_path_port = {
            let _one = self.converging.lock().await;
            let assignments = self.last.lock().expect("agent lock").clone();
            let Some(assignments) = assignments else {
                return;
            };
            let seen = self.discovery.endpoints();
            let plan = desired(
                &assignments,
                &seen,
                self.node_id,
                underlay_ip,
                &self.netns_dir,
            );
            let unchanged = self.last_plan.lock().expect("agent lock").as_ref() == Some(&plan);
            let data_path_port = plan.data_path_port;
            // Before the overlay: a vxlan device never listens unguarded.
            self.apply_guard(underlay_ip, data_path_port).await;
            match self.overlay.apply(&plan).await {
                Ok(applied) if !applied.is_empty() => {
                    tracing::info!(changes = ?applied.changes, "overlay converged");
                    if unchanged {
                        // The same plan converged before: something changed the kernel behind
                        // our back. `diag overlay` reports it.
                        tracing::warn!(changes = ?applied.changes, "repaired overlay drift");
                        self.record_drift(&applied.changes);
                    }
                    *self.last_plan.lock().expect("agent lock") = Some(plan);
                }
                Ok(_) => *self.last_plan.lock().expect("agent lock") = Some(plan),
                Err(err) => {
                    tracing::warn!(error = %err, "converging the overlay; retrying with the next assignments")
                }
            }
            self.ensure_probe_responder(underlay_ip, data_path_port);
            data_path_port
        };
        // Outside the overlay's lock: starting the balancer loads and verifies its programs,
        // which takes seconds on a loaded host, and the overlay must not wait for that.
        self.apply_balancer(underlay_ip, data_path_port).await;
    }

    /// Converges the routing mesh and the VIPs to the latest assignments and endpoint view,
    /// after the overlay (their legs and veths exist by then). One at a time, each from the
    /// newest state, so an older view never lands after a newer one.
    async fn apply_balancer(&self, underlay_ip: Ipv4Addr, data_path_port: u16) {
        let _one = self.balancing.lock().await;
        let Some(underlay) = self.underlay(underlay_ip, data_path_port).await else {
            return;
        };
        let Some(assignments) = self.last.lock().expect("agent lock").clone() else {
            return;
        };
        let seen = self.discovery.endpoints();
        let vip_tasks = self
            .last_plan
            .lock()
            .expect("agent lock")
            .as_ref()
            .map(vip_tasks)
            .unwrap_or_default();
        let desired = crate::ingress::plan::desired(&assignments, &seen, &underlay);
        let balancer = Arc::clone(&self.balancer);
        let applied =
            tokio::task::spawn_blocking(move || balancer.apply(&desired, &vip_tasks)).await;
        if let Err(err) = applied {
            tracing::warn!(error = %err, "the load balancer's convergence panicked");
        }
    }

    /// The underlay interface holding `ip`, and its MTU, found once.
    async fn underlay(
        &self,
        ip: Ipv4Addr,
        data_path_port: u16,
    ) -> Option<crate::ingress::plan::Underlay> {
        if let Some(known) = self
            .underlay
            .lock()
            .expect("agent lock")
            .as_ref()
            .filter(|u| u.data_path_port == data_path_port)
        {
            return Some(known.clone());
        }
        let found = tokio::task::spawn_blocking(move || {
            let interface = dataplane::overlay::interface_of(ip)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no interface holds {ip}"))?;
            let mtu = dataplane::overlay::underlay_mtu(ip, None).map_err(|e| e.to_string())?;
            Ok::<_, String>((interface, mtu))
        })
        .await;
        match found {
            Ok(Ok((interface, mtu))) => {
                let underlay = crate::ingress::plan::Underlay {
                    ip,
                    interface,
                    mtu,
                    data_path_port,
                };
                *self.underlay.lock().expect("agent lock") = Some(underlay.clone());
                Some(underlay)
            }
            Ok(Err(why)) => {
                tracing::warn!(error = %why, "finding the underlay interface; published ports wait");
                None
            }
            Err(_) => None,
        }
    }
}

/// The veths of this host's tasks, for VIP balancing.
fn vip_tasks(plan: &HostOverlay) -> Vec<dataplane::lb::vip::VipTask> {
    plan.networks
        .iter()
        .filter(|n| n.id != PROBE_NETWORK)
        .flat_map(|n| {
            n.local.iter().map(|l| dataplane::lb::vip::VipTask {
                network_id: n.id.clone(),
                veth: dataplane::overlay::names::veth_name(&l.task_id),
            })
        })
        .collect()
}
