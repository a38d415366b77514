//! Diagnostics between hosts: what `meshctl diag` asks for, the jobs the leader hands to the
//! agents that run the probes, and the results they send back. The probes themselves live in
//! `dataplane::probe`; the runner is in the agent, the job registry in the manager.

pub mod render;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::store::NodeId;

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiagRequest {
    /// Every required port from every host (or the named ones) to every other host.
    Ports { nodes: Vec<String> },
    /// Path MTU from `from` (a node name or ID) to `to` (or every other host), on the underlay
    /// and over the overlay.
    Mtu { from: String, to: Option<String> },
    /// FDB, neighbour and DNS state against the endpoint table, and task-to-task pings, on one
    /// network (or every network).
    Overlay { network: Option<String> },
    /// Each host's load-balancer path (xdp, tc or nftables) and its counters.
    Lb { nodes: Vec<String> },
}

/// A host a probe goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiagPeer {
    /// Its node ID.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// The cluster port, when it is a manager (workers do not listen on it).
    pub cluster_port: Option<u16>,
    /// Its gossip port.
    pub gossip_port: u16,
}

/// One task on a network as the control plane has it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExpectedEndpoint {
    /// Task ID.
    pub task_id: String,
    /// `service.slot`.
    pub task_name: String,
    /// Its node.
    pub node_id: NodeId,
    /// Its node's name.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its node's underlay address.
    pub vtep: Ipv4Addr,
}

/// A job for one agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiagJob {
    /// Unique per request.
    pub id: String,
    /// The cluster's data-path port.
    pub data_path_port: u16,
    /// What to check.
    pub kind: DiagJobKind,
}

/// What an agent checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiagJobKind {
    /// Probe every required port of every peer.
    Ports { peers: Vec<DiagPeer> },
    /// Path MTU to every peer, underlay and overlay.
    Mtu { peers: Vec<DiagPeer> },
    /// Check this host's state of the network against these endpoints, and ping one task on
    /// every other host.
    Overlay {
        network_id: String,
        network: String,
        expected: Vec<ExpectedEndpoint>,
    },
    /// Report the load balancer's path and counters.
    Lb,
}

/// How one probe went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeStatus {
    /// The far end answered the protocol exchange.
    Ok,
    /// Refused or rejected: something answered "no".
    Blocked,
    /// Nothing came back in time: dropped on the way, or nobody listening.
    NoAnswer,
}

impl ProbeStatus {
    /// As the matrix prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Ok => "OK",
            ProbeStatus::Blocked => "BLOCKED",
            ProbeStatus::NoAnswer => "NO ANSWER",
        }
    }
}

/// One port from one host to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCheck {
    /// The far host.
    pub to: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The port.
    pub port: u16,
    /// What it is for and how it was probed, e.g. `gossip (ping)`.
    pub probe: String,
    /// The outcome.
    pub status: ProbeStatus,
    /// Round trip in microseconds, when answered.
    pub rtt_us: Option<u64>,
    /// The likely cause, when not OK.
    pub cause: Option<String>,
}

/// The path MTU from one host to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuCheck {
    /// The far host.
    pub to: String,
    /// The largest IP packet that crossed the underlay, when the search worked.
    pub underlay: Option<u32>,
    /// The largest IP packet that crossed the overlay between tasks, when there were tasks
    /// on a shared network to probe between.
    pub overlay: Option<u32>,
    /// The network the overlay was probed on.
    pub network: Option<String>,
    /// The overlay MTU configured on that network.
    pub configured: Option<u32>,
    /// What the overlay MTU should be: the underlay path MTU minus 50.
    pub recommended: Option<u32>,
    /// Problems and notes, e.g. why a search failed.
    pub notes: Vec<String>,
}

/// One host's view of one network, against the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayCheck {
    /// The network.
    pub network: String,
    /// Each mismatch, named: which entry, what is wrong.
    pub problems: Vec<String>,
    /// Drift the agent repaired recently (an entry deleted behind its back), with when.
    pub repaired: Vec<String>,
    /// Task-to-task pings from this host.
    pub pings: Vec<PingCheck>,
}

/// A ping from a task here to a task on another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingCheck {
    /// The far host.
    pub to: String,
    /// The pinging task.
    pub from_task: String,
    /// The pinged task.
    pub to_task: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The outcome.
    pub status: ProbeStatus,
    /// Round trip in microseconds, when answered.
    pub rtt_us: Option<u64>,
}

/// One host's load balancer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbCheck {
    /// `--lb-mode` as configured: auto, xdp, tc or nftables.
    pub mode: String,
    /// The path published ports use (xdp, tc, nftables), once the balancer runs.
    pub path: Option<String>,
    /// The path service VIPs use, when they have one.
    pub vip_path: Option<String>,
    /// Why the balancer (or its VIP part) does not run, when it does not.
    pub error: Option<String>,
    /// Balanced sets (published ports or VIPs) and backends programmed.
    pub services: usize,
    pub backends: usize,
    /// Counters by name (`drop:<reason>`, `forward:<how>`, ...), summed over CPUs.
    pub counters: Vec<(String, u64)>,
}

/// What one agent found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiagResult {
    /// Answer to Ports.
    Ports(Vec<PortCheck>),
    /// Answer to Mtu.
    Mtu(Vec<MtuCheck>),
    /// Answer to Overlay.
    Overlay(OverlayCheck),
    /// Answer to Lb.
    Lb(LbCheck),
    /// The job could not run; why.
    Failed(String),
}

/// One host's part of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    /// The host that ran the probes.
    pub node: String,
    /// What it found.
    pub result: DiagResult,
}

/// The whole answer to a diag request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagReport {
    /// Each host's findings, by host name.
    pub hosts: Vec<HostResult>,
    /// Hosts that were asked but did not answer in time (down, or their meshd is stuck).
    pub silent: Vec<String>,
}

impl DiagReport {
    /// Whether anything is wrong: a failed probe, a mismatch, or a silent host.
    pub fn has_problem(&self) -> bool {
        !self.silent.is_empty()
            || self.hosts.iter().any(|h| match &h.result {
                DiagResult::Ports(checks) => checks.iter().any(|c| c.status != ProbeStatus::Ok),
                DiagResult::Mtu(checks) => checks.iter().any(|c| {
                    c.underlay.is_none()
                        || matches!((c.configured, c.recommended), (Some(have), Some(want)) if have > want)
                }),
                DiagResult::Overlay(check) => {
                    !check.problems.is_empty()
                        || !check.repaired.is_empty()
                        || check.pings.iter().any(|p| p.status != ProbeStatus::Ok)
                }
                DiagResult::Lb(check) => check.error.is_some() || check.path.is_none(),
                DiagResult::Failed(_) => true,
            })
    }
}
