//! The agent's side of `meshctl diag`: it runs the jobs the dispatcher hands it (real protocol
//! probes to every other host, path MTU searches, its overlay state against the control
//! plane) and sends what it found back to the leader.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::probe::{self, ProbeOutcome};

use super::Agent;
use crate::diag::{
    DiagJob, DiagJobKind, DiagPeer, DiagResult, ExpectedEndpoint, MtuCheck, OverlayCheck,
    PingCheck, PortCheck, ProbeStatus,
};
use crate::network::{format_mac, mac_of};
use crate::rpc::messages::{Assignments, Request};

/// How long one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// IP packet sizes a path MTU search covers.
const MTU_RANGE: (u32, u32) = (576, 9000);
/// How long one step of a path MTU search waits: a black hole answers nothing.
const MTU_STEP_TIMEOUT: Duration = Duration::from_millis(250);
/// Repairs older than this are history, not a diagnosis.
const DRIFT_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Runs a blocking probe off the runtime; a probe that could not run at all (no privilege, no
/// namespace) is reported as rejected with the reason.
async fn blocking(
    probe: impl FnOnce() -> Result<ProbeOutcome, probe::ProbeError> + Send + 'static,
) -> ProbeOutcome {
    match tokio::task::spawn_blocking(probe).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(err)) => ProbeOutcome::Unreachable {
            detail: err.to_string(),
        },
        Err(err) => ProbeOutcome::Unreachable {
            detail: format!("the probe failed: {err}"),
        },
    }
}

fn micros(rtt: Duration) -> Option<u64> {
    Some(rtt.as_micros() as u64)
}

impl Agent {
    /// Starts every job of the assignments not started yet.
    pub(super) fn start_diag_jobs(self: &Arc<Self>, assignments: &Assignments) {
        let mut started = self.diag_started.lock().expect("agent lock");
        started.retain(|id| assignments.diag.iter().any(|j| &j.id == id));
        for job in &assignments.diag {
            if started.insert(job.id.clone()) {
                tokio::spawn(Arc::clone(self).run_diag(job.clone()));
            }
        }
    }

    async fn run_diag(self: Arc<Self>, job: DiagJob) {
        let result = match self.underlay_ip {
            None => DiagResult::Failed("this node has no IPv4 underlay address".into()),
            Some(local) => match &job.kind {
                DiagJobKind::Ports { peers } => {
                    DiagResult::Ports(self.probe_ports(local, peers, job.data_path_port).await)
                }
                DiagJobKind::Mtu { peers } => {
                    DiagResult::Mtu(self.probe_mtu(local, peers, job.data_path_port).await)
                }
                DiagJobKind::Overlay {
                    network_id,
                    network,
                    expected,
                } => DiagResult::Overlay(self.check_overlay(network_id, network, expected).await),
                DiagJobKind::Lb => DiagResult::Lb(self.balancer.check()),
            },
        };
        let request = Request::DiagResult {
            node_id: self.node_id,
            job_id: job.id.clone(),
            result,
        };
        if let Err(err) = self.leader.call(&request, Duration::from_secs(3)).await {
            tracing::warn!(job = %job.id, error = %err, "sending diagnosis results");
        }
    }

    /// Every required port of every peer, with the protocol each speaks.
    async fn probe_ports(
        &self,
        local: Ipv4Addr,
        peers: &[DiagPeer],
        vxlan_port: u16,
    ) -> Vec<PortCheck> {
        let probes = peers.iter().map(|peer| async move {
            let mut checks = Vec::new();
            if let Some(port) = peer.cluster_port {
                checks.push(self.probe_cluster_port(peer, port).await);
            }
            let gossip = SocketAddr::new(peer.ip.into(), peer.gossip_port);
            let (udp, tcp) = (
                self.discovery.ping_udp(gossip, PROBE_TIMEOUT).await,
                self.discovery.ping_tcp(gossip, PROBE_TIMEOUT).await,
            );
            checks.push(gossip_check(peer, "udp", udp));
            checks.push(gossip_check(peer, "tcp", tcp));
            let target = peer.ip;
            let outcome =
                blocking(move || probe::vxlan_probe(local, target, vxlan_port, PROBE_TIMEOUT))
                    .await;
            checks.push(vxlan_check(peer, vxlan_port, outcome));
            checks
        });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A TLS handshake with a manager's cluster port, verified against the cluster CA.
    async fn probe_cluster_port(&self, peer: &DiagPeer, port: u16) -> PortCheck {
        let addr = SocketAddr::new(peer.ip.into(), port);
        let started = Instant::now();
        let outcome = self
            .leader
            .handshake(&addr.to_string(), PROBE_TIMEOUT)
            .await;
        let (status, cause) = match outcome {
            Ok(()) => (ProbeStatus::Ok, None),
            Err(crate::rpc::client::RpcError::Timeout { .. }) => (
                ProbeStatus::NoAnswer,
                Some(format!(
                    "nothing came back from TCP {port} on {}: a firewall drops it, or the host is down",
                    peer.name
                )),
            ),
            Err(err) => (
                ProbeStatus::Blocked,
                Some(format!(
                    "{err}: meshd does not listen there, a firewall rejects the port, or the TLS handshake failed (another cluster's certificate)"
                )),
            ),
        };
        PortCheck {
            to: peer.name.clone(),
            protocol: "tcp".into(),
            port,
            probe: "cluster (TLS)".into(),
            status,
            rtt_us: (status == ProbeStatus::Ok).then(|| started.elapsed().as_micros() as u64),
            cause,
        }
    }

    /// The path MTU to every peer on the underlay, and over the overlay between a task here
    /// and a task there when they share a network.
    async fn probe_mtu(
        &self,
        local: Ipv4Addr,
        peers: &[DiagPeer],
        vxlan_port: u16,
    ) -> Vec<MtuCheck> {
        let assignments = self
            .last
            .lock()
            .expect("agent lock")
            .clone()
            .unwrap_or_default();
        let seen = self.discovery.endpoints();
        let (assignments, seen) = (&assignments, &seen);
        let searches = peers.iter().map(|peer| async move {
            let target = peer.ip;
            let mut notes = Vec::new();
            let underlay = tokio::task::spawn_blocking(move || {
                probe::path_mtu(local, target, vxlan_port, MTU_RANGE, MTU_STEP_TIMEOUT)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            let underlay = match underlay {
                Ok(found) => Some(found.mtu),
                Err(why) => {
                    notes.push(format!("underlay search failed: {why}"));
                    None
                }
            };
            // A local task and a task on the peer on one network, if any.
            let pair = assignments.networks.iter().find_map(|net| {
                let here = assignments.tasks.iter().find_map(|a| {
                    let attachment = a
                        .task
                        .attachments
                        .iter()
                        .find(|x| x.network_id == net.network.id)?;
                    (!a.task.state.is_terminal()).then(|| (a.task.id.clone(), attachment.ip))
                })?;
                let there = seen
                    .iter()
                    .find(|e| e.network_id == net.network.id && e.node_id == peer.node_id)?;
                Some((net, here, there.ip))
            });
            let (mut overlay, mut network, mut configured) = (None, None, None);
            match pair {
                Some((net, (task, from_ip), to_ip)) => {
                    network = Some(net.network.name.clone());
                    configured = Some(net.mtu);
                    let netns = self.netns_dir.join(&task);
                    let found = tokio::task::spawn_blocking(move || {
                        probe::overlay_path_mtu(&netns, from_ip, to_ip, MTU_RANGE, MTU_STEP_TIMEOUT)
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                    match found {
                        Ok(found) => overlay = Some(found.mtu),
                        Err(why) => notes.push(format!("overlay search failed: {why}")),
                    }
                }
                None => notes.push(
                    "no task here shares a network with a task there: the overlay was not probed"
                        .into(),
                ),
            }
            MtuCheck {
                to: peer.name.clone(),
                underlay,
                overlay,
                network,
                configured,
                recommended: underlay.map(|u| u.saturating_sub(crate::network::VXLAN_OVERHEAD)),
                notes,
            }
        });
        // In parallel: each search waits out lost probes, and the leader waits for all.
        futures_util::future::join_all(searches).await
    }

    /// This host's FDB, neighbour and DNS state of a network against the control plane and
    /// the gossip view, the drift repaired lately, and a ping to one task on every other host.
    async fn check_overlay(
        &self,
        network_id: &str,
        network: &str,
        expected: &[ExpectedEndpoint],
    ) -> OverlayCheck {
        let mut check = OverlayCheck {
            network: network.to_string(),
            ..OverlayCheck::default()
        };
        let plan_id = super::network::plan_id(network_id);
        let remote: Vec<&ExpectedEndpoint> = expected
            .iter()
            .filter(|e| e.node_id != self.node_id)
            .collect();
        match self.overlay.observe(&plan_id).await {
            Ok(Some(observed)) => {
                for e in &remote {
                    let mac = mac_of(e.ip);
                    let name = format!("{} ({}, on {})", e.task_name, e.ip, e.node);
                    match observed.fdb.iter().find(|(m, _)| *m == mac) {
                        None => check.problems.push(format!(
                            "FDB entry for {name} is missing: {} → {}",
                            format_mac(mac),
                            e.vtep
                        )),
                        Some((_, vtep)) if *vtep != e.vtep => check.problems.push(format!(
                            "FDB entry for {name} points at {vtep}, not its host {}",
                            e.vtep
                        )),
                        Some(_) => {}
                    }
                    if !observed
                        .neighbours
                        .iter()
                        .any(|(ip, m)| *ip == e.ip && *m == mac)
                    {
                        check.problems.push(format!(
                            "neighbour entry for {name} is missing: {} → {}",
                            e.ip,
                            format_mac(mac)
                        ));
                    }
                }
                for (mac, vtep) in &observed.fdb {
                    if *mac != [0; 6] && !remote.iter().any(|e| mac_of(e.ip) == *mac) {
                        check.problems.push(format!(
                            "stale FDB entry {} → {vtep}: no running task has that address",
                            format_mac(*mac)
                        ));
                    }
                }
            }
            Ok(None) => check.problems.push(
                "this host has no namespace for the network, though tasks here use it".into(),
            ),
            Err(err) => check
                .problems
                .push(format!("reading the kernel's entries: {err}")),
        }
        // The gossip view against the control plane.
        let seen = self.discovery.endpoints();
        for e in expected {
            if !seen
                .iter()
                .any(|s| s.network_id == network_id && s.task_id == e.task_id && s.ip == e.ip)
            {
                check.problems.push(format!(
                    "the endpoint table here lacks {} ({}, on {}): gossip from {} is not arriving",
                    e.task_name, e.ip, e.node, e.node
                ));
            }
        }
        for s in seen.iter().filter(|s| s.network_id == network_id) {
            if !expected.iter().any(|e| e.task_id == s.task_id) {
                check.problems.push(format!(
                    "the endpoint table here still holds {} ({}), which is not running",
                    s.task_name, s.ip
                ));
            }
        }
        self.check_dns(expected, &mut check).await;
        let now = crate::manager::orchestrate::now_ms();
        for (at, change) in self.drift.lock().expect("agent lock").iter() {
            if change.network == plan_id && now.saturating_sub(*at) < DRIFT_WINDOW_MS {
                check.repaired.push(format!(
                    "{} {} s ago (something removed or changed it behind meshd's back)",
                    describe_repair(&change.action),
                    now.saturating_sub(*at) / 1000
                ));
            }
        }
        check.pings = self.ping_other_hosts(expected).await;
        check
    }

    /// What a local task's own DNS server answers for each service's `tasks.` name, against
    /// the running tasks.
    async fn check_dns(&self, expected: &[ExpectedEndpoint], check: &mut OverlayCheck) {
        let Some(asker) = expected.iter().find(|e| e.node_id == self.node_id) else {
            return;
        };
        let mut services: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for e in expected {
            let service = e
                .task_name
                .rsplit_once('.')
                .map_or(e.task_name.as_str(), |(s, _)| s);
            services.entry(service.to_string()).or_default().push(e.ip);
        }
        for (service, mut want) in services {
            let netns = self.netns_dir.join(&asker.task_id);
            let name = format!("tasks.{service}");
            let asked = name.clone();
            let answer = tokio::task::spawn_blocking(move || {
                dataplane::dns::query_a_in(
                    &netns,
                    dataplane::dns::EMBEDDED_DNS_ADDR,
                    &asked,
                    PROBE_TIMEOUT,
                )
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            want.sort();
            match answer {
                Ok(mut got) => {
                    got.sort();
                    if got != want {
                        check.problems.push(format!(
                            "DNS in {} answers {name} with {got:?}, but the running tasks are {want:?}",
                            asker.task_name
                        ));
                    }
                }
                Err(why) => check
                    .problems
                    .push(format!("DNS in {} for {name}: {why}", asker.task_name)),
            }
        }
    }

    /// A ping from a local task to one task on every other host of the network.
    async fn ping_other_hosts(&self, expected: &[ExpectedEndpoint]) -> Vec<PingCheck> {
        let Some(from) = expected.iter().find(|e| e.node_id == self.node_id) else {
            return Vec::new();
        };
        let mut targets: Vec<&ExpectedEndpoint> = Vec::new();
        for e in expected.iter().filter(|e| e.node_id != self.node_id) {
            if !targets.iter().any(|t| t.node_id == e.node_id) {
                targets.push(e);
            }
        }
        let pings = targets.into_iter().map(|to| {
            let netns = self.netns_dir.join(&from.task_id);
            let ip = to.ip;
            async move {
                let outcome = blocking(move || probe::ping_in(&netns, ip, PROBE_TIMEOUT)).await;
                let (status, rtt_us) = status_of(&outcome);
                PingCheck {
                    to: to.node.clone(),
                    from_task: from.task_name.clone(),
                    to_task: to.task_name.clone(),
                    ip,
                    status,
                    rtt_us,
                }
            }
        });
        futures_util::future::join_all(pings).await
    }
}

/// A repair as an operator reads it.
fn describe_repair(action: &dataplane::overlay::Action) -> String {
    use dataplane::overlay::Action;
    match action {
        Action::FdbSet { mac, vtep } => {
            format!(
                "FDB entry {} → {vtep} was missing and was restored",
                format_mac(*mac)
            )
        }
        Action::NeighbourSet { ip, mac } => format!(
            "neighbour entry {ip} → {} was missing and was restored",
            format_mac(*mac)
        ),
        other => format!("{other:?} (redone)"),
    }
}

fn status_of(outcome: &ProbeOutcome) -> (ProbeStatus, Option<u64>) {
    match outcome {
        ProbeOutcome::Answered { rtt } => (ProbeStatus::Ok, micros(*rtt)),
        ProbeOutcome::Refused | ProbeOutcome::Unreachable { .. } => (ProbeStatus::Blocked, None),
        ProbeOutcome::NoAnswer => (ProbeStatus::NoAnswer, None),
    }
}

fn gossip_check(
    peer: &DiagPeer,
    protocol: &str,
    outcome: Result<Duration, crate::gossip::PingError>,
) -> PortCheck {
    use crate::gossip::PingError;
    let port = peer.gossip_port;
    let (status, rtt_us, cause) = match outcome {
        Ok(rtt) => (ProbeStatus::Ok, micros(rtt), None),
        Err(PingError::Timeout) => (
            ProbeStatus::NoAnswer,
            None,
            Some(format!(
                "no gossip answer on {} {port} from {}: a firewall drops the port (`meshctl diag firewall` there), or its meshd is down; membership and endpoint updates to and from it are lost",
                protocol.to_uppercase(),
                peer.name
            )),
        ),
        Err(err) => (ProbeStatus::Blocked, None, Some(err.to_string())),
    };
    PortCheck {
        to: peer.name.clone(),
        protocol: protocol.into(),
        port,
        probe: if protocol == "udp" {
            "gossip (ping)"
        } else {
            "gossip (stream)"
        }
        .into(),
        status,
        rtt_us,
        cause,
    }
}

fn vxlan_check(peer: &DiagPeer, port: u16, outcome: ProbeOutcome) -> PortCheck {
    let (status, rtt_us) = status_of(&outcome);
    let cause = match &outcome {
        ProbeOutcome::Answered { .. } => None,
        ProbeOutcome::Refused => Some(format!(
            "{} answered UDP {port} with port unreachable: no vxlan device or meshd probe responder listens; is meshd running there with the same data-path port?",
            peer.name
        )),
        ProbeOutcome::Unreachable { detail } => Some(format!(
            "UDP {port} to {} is rejected ({detail}): a firewall rule rejects the VXLAN port; overlay traffic between these hosts is lost",
            peer.name
        )),
        ProbeOutcome::NoAnswer => Some(format!(
            "VXLAN probes to {} on UDP {port} get no answer: a firewall on the path or on {} drops UDP {port} (`meshctl diag firewall` there), or its meshd is down; overlay traffic between these hosts is lost",
            peer.name, peer.name
        )),
    };
    PortCheck {
        to: peer.name.clone(),
        protocol: "udp".into(),
        port,
        probe: "data path (VXLAN probe)".into(),
        status,
        rtt_us,
        cause,
    }
}
