//! Diagnostics on the leader: a `meshctl diag` request becomes one job per host that must run
//! probes; the jobs ride on the dispatcher's answers (which wake at once for them), the agents
//! send their findings back, and the leader answers with every host's findings, naming the
//! hosts that stayed silent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Manager;
use crate::api::{format_node_id, ApiResponse};
use crate::diag::{
    DiagJob, DiagJobKind, DiagPeer, DiagReport, DiagRequest, DiagResult, ExpectedEndpoint,
    HostResult,
};
use crate::service::TaskState;
use crate::store::{ClusterState, NodeId, NodeStatus, Role};

/// How long the leader waits for every host's findings: probes time out in about a second,
/// path MTU searches take a few.
const DIAG_DEADLINE: Duration = Duration::from_secs(10);

/// One request's jobs and what came back.
struct Pending {
    jobs: Vec<(NodeId, DiagJob)>,
    results: BTreeMap<String, DiagResult>,
    done: Arc<Notify>,
}

/// The jobs in flight.
#[derive(Default)]
pub(super) struct DiagJobs {
    pending: std::sync::Mutex<HashMap<String, Pending>>,
    /// Wakes dispatcher answers held for agents, so a new job leaves at once.
    pub(super) wake: Notify,
}

/// The jobs a request needs, by host: pure, from the store.
pub(super) fn plan(
    state: &ClusterState,
    request: &DiagRequest,
    id: &str,
) -> Result<Vec<(NodeId, DiagJob)>, String> {
    let data_path_port = state.cluster.as_ref().map_or(4789, |c| c.data_path_port);
    let job = |n: usize, kind: DiagJobKind| DiagJob {
        id: format!("{id}-{n}"),
        data_path_port,
        kind,
    };
    let peers: Vec<DiagPeer> = state
        .nodes
        .values()
        .filter_map(|n| {
            let addr: std::net::SocketAddr = n.addr.parse().ok()?;
            let std::net::IpAddr::V4(ip) = addr.ip() else {
                return None;
            };
            Some(DiagPeer {
                node_id: n.id,
                name: n.name.clone(),
                ip,
                cluster_port: (n.role == Role::Manager).then(|| addr.port()),
                gossip_port: match n.description.gossip_port {
                    0 => crate::config::DEFAULT_GOSSIP_PORT,
                    port => port,
                },
            })
        })
        .collect();
    let others = |me: NodeId| -> Vec<DiagPeer> {
        peers.iter().filter(|p| p.node_id != me).cloned().collect()
    };
    let find = |key: &str| crate::api::find_node(state.nodes.values(), key).map(|n| n.id);
    // The named hosts, or every host.
    let runners = |nodes: &[String]| -> Result<Vec<NodeId>, String> {
        if nodes.is_empty() {
            Ok(state.nodes.keys().copied().collect())
        } else {
            nodes.iter().map(|n| find(n)).collect()
        }
    };
    match request {
        DiagRequest::Ports { nodes } => Ok(runners(nodes)?
            .into_iter()
            .enumerate()
            .map(|(n, node)| {
                (
                    node,
                    job(
                        n,
                        DiagJobKind::Ports {
                            peers: others(node),
                        },
                    ),
                )
            })
            .collect()),
        DiagRequest::Lb { nodes } => Ok(runners(nodes)?
            .into_iter()
            .enumerate()
            .map(|(n, node)| (node, job(n, DiagJobKind::Lb)))
            .collect()),
        DiagRequest::Mtu { from, to } => {
            let from = find(from)?;
            let targets = match to {
                Some(to) => {
                    let to = find(to)?;
                    if to == from {
                        return Err(
                            "--to names the host the check runs on; name another host".into()
                        );
                    }
                    peers.iter().filter(|p| p.node_id == to).cloned().collect()
                }
                None => others(from),
            };
            Ok(vec![(from, job(0, DiagJobKind::Mtu { peers: targets }))])
        }
        DiagRequest::Overlay { network } => {
            let networks: Vec<&crate::network::NetworkRecord> = match network {
                Some(key) => vec![crate::network::find_network(state, key)?],
                None => state.networks.values().collect(),
            };
            let mut jobs = Vec::new();
            for network in networks {
                let expected: Vec<ExpectedEndpoint> = state
                    .tasks
                    .values()
                    .filter(|t| t.state == TaskState::Running)
                    .filter_map(|t| {
                        let attachment =
                            t.attachments.iter().find(|a| a.network_id == network.id)?;
                        let node = state.nodes.get(&t.node_id?)?;
                        let peer = peers.iter().find(|p| p.node_id == node.id)?;
                        let service = state.services.get(&t.service_id)?;
                        Some(ExpectedEndpoint {
                            task_id: t.id.clone(),
                            task_name: t.name(&service.spec.name),
                            node_id: node.id,
                            node: node.name.clone(),
                            ip: attachment.ip,
                            vtep: peer.ip,
                        })
                    })
                    .collect();
                let mut hosts: Vec<NodeId> = expected.iter().map(|e| e.node_id).collect();
                hosts.sort_unstable();
                hosts.dedup();
                for node in hosts {
                    let kind = DiagJobKind::Overlay {
                        network_id: network.id.clone(),
                        network: network.name.clone(),
                        expected: expected.clone(),
                    };
                    jobs.push((node, job(jobs.len(), kind)));
                }
            }
            if jobs.is_empty() {
                return Err("no running task is attached to that network, so there is nothing to compare or ping; start a service on it first".into());
            }
            Ok(jobs)
        }
    }
}

impl Manager {
    /// Runs a diagnosis across the cluster and answers with every host's findings.
    pub(super) async fn diagnose(&self, request: DiagRequest) -> ApiResponse {
        let id = super::orchestrate::random_id();
        let planned = self.read(|state| {
            plan(state, &request, &id).map(|jobs| {
                let down: Vec<NodeId> = jobs
                    .iter()
                    .map(|(node, _)| *node)
                    .filter(|node| {
                        state
                            .nodes
                            .get(node)
                            .is_some_and(|n| n.status == NodeStatus::Down)
                    })
                    .collect();
                let names: BTreeMap<NodeId, String> = state
                    .nodes
                    .values()
                    .map(|n| (n.id, n.name.clone()))
                    .collect();
                (jobs, down, names)
            })
        });
        let (jobs, down, names) = match planned {
            Ok(planned) => planned,
            Err(why) => return ApiResponse::Error(why),
        };
        // Down hosts cannot run anything: they are reported silent without a wait.
        let jobs: Vec<(NodeId, DiagJob)> = jobs
            .into_iter()
            .filter(|(node, _)| !down.contains(node))
            .collect();
        let done = Arc::new(Notify::new());
        self.diag.pending.lock().expect("diag lock").insert(
            id.clone(),
            Pending {
                jobs: jobs.clone(),
                results: BTreeMap::new(),
                done: Arc::clone(&done),
            },
        );
        self.diag.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + DIAG_DEADLINE;
        loop {
            let notified = done.notified();
            let complete = {
                let pending = self.diag.pending.lock().expect("diag lock");
                pending
                    .get(&id)
                    .is_some_and(|p| p.results.len() == p.jobs.len())
            };
            if complete || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        let pending = self.diag.pending.lock().expect("diag lock").remove(&id);
        let mut report = DiagReport::default();
        let name = |node: &NodeId| {
            names
                .get(node)
                .cloned()
                .unwrap_or_else(|| format_node_id(*node))
        };
        if let Some(mut pending) = pending {
            for (node, job) in &pending.jobs {
                match pending.results.remove(&job.id) {
                    Some(result) => report.hosts.push(HostResult {
                        node: name(node),
                        result,
                    }),
                    None => report.silent.push(name(node)),
                }
            }
        }
        report.silent.extend(down.iter().map(name));
        report.hosts.sort_by(|a, b| a.node.cmp(&b.node));
        report.silent.sort();
        report.silent.dedup();
        ApiResponse::Diag(Box::new(report))
    }

    /// The jobs waiting for `node`.
    pub(super) fn diag_jobs_for(&self, node: NodeId) -> Vec<DiagJob> {
        let pending = self.diag.pending.lock().expect("diag lock");
        pending
            .values()
            .flat_map(|p| p.jobs.iter())
            .filter(|(n, _)| *n == node)
            .map(|(_, job)| job.clone())
            .collect()
    }

    /// An agent's findings.
    pub(super) fn diag_result(&self, node: NodeId, job_id: &str, result: DiagResult) {
        let mut pending = self.diag.pending.lock().expect("diag lock");
        for request in pending.values_mut() {
            if request
                .jobs
                .iter()
                .any(|(n, job)| *n == node && job.id == job_id)
            {
                request.results.insert(job_id.to_string(), result);
                request.done.notify_one();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_hosts_and_networks_are_refused_with_what_to_do() {
        let state = ClusterState::default();
        let err = plan(
            &state,
            &DiagRequest::Mtu {
                from: "w9".into(),
                to: None,
            },
            "x",
        )
        .unwrap_err();
        assert!(err.contains("w9"), "{err}");
        let err = plan(
            &state,
            &DiagRequest::Overlay {
                network: Some("nope".into()),
            },
            "x",
        )
        .unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err = plan(&state, &DiagRequest::Overlay { network: None }, "x").unwrap_err();
        assert!(err.contains("start a service"), "{err}");
        assert!(plan(&state, &DiagRequest::Ports { nodes: vec![] }, "x")
            .unwrap()
            .is_empty());
    }
}
