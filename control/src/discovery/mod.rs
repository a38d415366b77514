//! Service discovery on one node: gossip membership and the endpoint table, and the DNS
//! servers of the node's tasks that answer from it.
//!
//! The agent feeds it: the dispatcher's assignments (gossip keys, peers, networks and services)
//! and the node's own running tasks (its endpoints). It gives back the endpoint table as this
//! node sees it, which the overlay (FDB and neighbour entries) and DNS consume, and which nodes
//! the gossip has declared down, which the leader's liveness check uses.

mod dns;
pub mod zone;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::dns::Upstream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::gossip::{
    Endpoint, EndpointEntry, Gossip, GossipConfig, Health, Keyring, MemberState, PingError, KEY_LEN,
};
use crate::rpc::messages::{Assignments, GossipAssignment};
use crate::store::NodeId;

/// How long a new gossip key waits before nodes encrypt with it: longer than assignments take
/// to reach every node, so every node can decrypt it by then.
pub const KEY_SPREAD: Duration = Duration::from_secs(5);
/// How long a forwarded query waits for the upstream resolvers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Gossip and DNS settings from meshd's configuration.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    /// UDP and TCP port of gossip.
    pub gossip_port: u16,
    /// Where tasks' DNS forwards outside names; None means /etc/resolv.conf's nameservers.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
}

/// A task's endpoint on a network, as this host's gossip view has it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeenEndpoint {
    /// The network.
    pub network_id: String,
    /// The task.
    pub task_id: String,
    /// The host running it.
    pub node_id: NodeId,
    /// Its service.
    pub service_id: String,
    /// Its service's name.
    pub service_name: String,
    /// `service.slot` (or `service.node` for a global service).
    pub task_name: String,
    /// Its slot (0 for a global service's task).
    pub slot: u64,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its host's underlay address.
    pub vtep: Ipv4Addr,
    /// Running and passing its health check.
    pub healthy: bool,
    /// Stopping: it keeps the flows it has and takes no new ones.
    #[serde(default)]
    pub draining: bool,
}

/// What gossip was configured with: key IDs and the primary, peers and keys, networks.
#[derive(PartialEq)]
struct Configured {
    key_ids: Vec<u32>,
    primary: u32,
    assignment: GossipAssignment,
    networks: Vec<String>,
}

/// Gossip and the task DNS servers of this node.
pub struct Discovery {
    node_id: NodeId,
    gossip_port: u16,
    gossip: Mutex<Option<Gossip>>,
    /// What gossip was last configured with.
    configured: Mutex<Option<Configured>>,
    dns: dns::TaskServers,
    /// Bumped on every change of what consumers see; the agent waits on it.
    changes: watch::Sender<u64>,
}

impl Discovery {
    /// Discovery for `node_id`, keeping task resolv.conf files under `state_dir/dns`.
    pub fn new(node_id: NodeId, settings: &DiscoverySettings, state_dir: &Path) -> Arc<Self> {
        let upstream = match &settings.dns_upstreams {
            Some(servers) => Upstream::new(servers.clone(), UPSTREAM_TIMEOUT),
            None => Upstream::from_resolv_conf(Path::new("/etc/resolv.conf"), UPSTREAM_TIMEOUT)
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "reading /etc/resolv.conf: tasks' DNS forwards nothing; set dns_upstreams in meshd.toml");
                    Upstream::new(Vec::new(), UPSTREAM_TIMEOUT)
                }),
        };
        Arc::new(Discovery {
            node_id,
            gossip_port: settings.gossip_port,
            gossip: Mutex::new(None),
            configured: Mutex::new(None),
            dns: dns::TaskServers::new(state_dir.join("dns"), Arc::new(upstream)),
            changes: watch::channel(0).0,
        })
    }

    /// The node this discovery belongs to.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Takes the dispatcher's view: starts gossip on the underlay address the first time, and
    /// hands it the current keys, peers and the networks this node is on.
    pub fn configure(&self, underlay_ip: Ipv4Addr, assignments: &Assignments) {
        let networks: Vec<String> = assignments
            .networks
            .iter()
            .map(|n| n.network.id.clone())
            .collect();
        let Some(keyring) = keyring(&assignments.gossip) else {
            tracing::warn!("the cluster has no gossip key yet; gossip waits for one");
            return;
        };
        let mut gossip = self.gossip.lock().expect("discovery lock");
        if gossip.is_none() {
            let config = GossipConfig::new(
                self.node_id,
                SocketAddr::new(underlay_ip.into(), self.gossip_port),
                keyring.clone(),
            );
            match Gossip::start(config) {
                Ok(started) => {
                    tracing::info!(port = self.gossip_port, %underlay_ip, "gossip started");
                    let mut events = started.subscribe();
                    let changes = self.changes.clone();
                    tokio::spawn(async move {
                        while events.changed().await.is_ok() {
                            changes.send_modify(|n| *n += 1);
                        }
                    });
                    *gossip = Some(started);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "starting gossip; retrying with the next assignments");
                    return;
                }
            }
        }
        let gossip = gossip.as_ref().expect("started above");
        let wanted = Configured {
            key_ids: keyring.key_ids(),
            primary: keyring.primary_id(),
            assignment: assignments.gossip.clone(),
            networks: networks.clone(),
        };
        let mut configured = self.configured.lock().expect("discovery lock");
        if configured.as_ref() == Some(&wanted) {
            return;
        }
        gossip.set_keyring(keyring);
        gossip.set_peers(assignments.gossip.peers.clone());
        gossip.set_networks(networks);
        *configured = Some(wanted);
    }

    /// Publishes this node's endpoints: the complete set, replacing what it published before.
    pub fn publish(&self, local: Vec<SeenEndpoint>) {
        let entries = local.into_iter().map(entry_of).collect();
        if let Some(gossip) = self.gossip.lock().expect("discovery lock").as_ref() {
            gossip.publish(entries);
        }
    }

    /// The endpoint table as this node sees it: live entries of hosts not declared down.
    pub fn endpoints(&self) -> Vec<SeenEndpoint> {
        match self.gossip.lock().expect("discovery lock").as_ref() {
            Some(gossip) => gossip.endpoints().into_iter().map(seen_of).collect(),
            None => Vec::new(),
        }
    }

    /// Gossip's counters and members, once it runs.
    pub fn view(&self) -> Option<crate::local_api::GossipView> {
        let gossip = self.gossip.lock().expect("discovery lock").clone()?;
        Some(crate::local_api::GossipView {
            stats: gossip.stats(),
            members: gossip.members().into_iter().map(|m| m.addr).collect(),
        })
    }

    /// Nodes gossip has declared down.
    pub fn down_nodes(&self) -> Vec<NodeId> {
        match self.gossip.lock().expect("discovery lock").as_ref() {
            Some(gossip) => gossip
                .members()
                .into_iter()
                .filter(|m| m.state == MemberState::Down)
                .map(|m| m.node_id)
                .collect(),
            None => Vec::new(),
        }
    }

    /// A gossip ping over UDP to another node's gossip port (`meshctl diag ports`).
    pub async fn ping_udp(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<Duration, PingError> {
        self.running_gossip()?.ping_udp(target, timeout).await
    }

    /// A gossip ping over a TCP stream to another node's gossip port.
    pub async fn ping_tcp(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<Duration, PingError> {
        self.running_gossip()?.ping_tcp(target, timeout).await
    }

    fn running_gossip(&self) -> Result<Gossip, PingError> {
        let gossip = self.gossip.lock().expect("discovery lock").clone();
        gossip.ok_or_else(|| PingError::Unreachable("gossip has not started on this node yet (it starts with the first assignments from the managers)".into()))
    }

    /// A receiver that changes whenever the endpoint table or membership does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts a task's DNS server and returns the resolv.conf the task must see.
    pub async fn serve_task(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
        assignments: &Assignments,
    ) -> Result<PathBuf, String> {
        let file = self.dns.serve(task_id, netns, networks).await?;
        self.dns.refresh(assignments, &self.endpoints());
        Ok(file)
    }

    /// Stops a task's DNS server.
    pub fn stop_task(&self, task_id: &str) {
        self.dns.stop(task_id);
    }

    /// Rebuilds the DNS zones from the services and the endpoint table.
    pub fn refresh_dns(&self, assignments: &Assignments) {
        self.dns.refresh(assignments, &self.endpoints());
    }

    /// Leaves gossip (on `swarm leave` and shutdown), so peers drop this node at once.
    pub fn shutdown(&self) {
        if let Some(gossip) = self.gossip.lock().expect("discovery lock").take() {
            gossip.shutdown();
        }
        *self.configured.lock().expect("discovery lock") = None;
    }
}

/// The keyring of the cluster's keys, or None before the cluster has one (or when a key is
/// malformed). Nodes encrypt with the newest key once it is `KEY_SPREAD` old, and with the one
/// before it until then, so no node sends with a key another node has not received yet.
fn keyring(gossip: &GossipAssignment) -> Option<Keyring> {
    let keys: Vec<(u32, [u8; KEY_LEN])> = gossip
        .keys
        .iter()
        .filter_map(|k| Some((k.id, decode_key(&k.secret_hex)?)))
        .collect();
    if keys.len() != gossip.keys.len() {
        tracing::warn!("a gossip key from the managers is malformed; rotate it with `meshctl swarm rotate-gossip-key`");
        return None;
    }
    let now = crate::manager::orchestrate::now_ms();
    let spread = KEY_SPREAD.as_millis() as u64;
    let primary = match gossip.keys.as_slice() {
        [] => return None,
        [.., previous, newest] if now.saturating_sub(newest.created_ms) < spread => previous.id,
        [.., newest] => newest.id,
    };
    Keyring::from_keys(&keys, primary).ok()
}

fn decode_key(hex: &str) -> Option<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    if hex.len() != KEY_LEN * 2 {
        return None;
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

fn entry_of(seen: SeenEndpoint) -> EndpointEntry {
    EndpointEntry {
        mac: crate::network::mac_of(seen.ip),
        network_id: seen.network_id,
        service_id: seen.service_id,
        service_name: seen.service_name,
        task_id: seen.task_id,
        task_name: seen.task_name,
        slot: seen.slot,
        ip: seen.ip,
        vtep: seen.vtep,
        health: if seen.draining {
            Health::Draining
        } else if seen.healthy {
            Health::None
        } else {
            Health::Unhealthy
        },
    }
}

fn seen_of(endpoint: Endpoint) -> SeenEndpoint {
    let entry = endpoint.entry;
    SeenEndpoint {
        network_id: entry.network_id,
        task_id: entry.task_id,
        node_id: endpoint.origin,
        service_id: entry.service_id,
        service_name: entry.service_name,
        task_name: entry.task_name,
        slot: entry.slot,
        ip: entry.ip,
        vtep: entry.vtep,
        healthy: entry.health.is_serving(),
        draining: entry.health == Health::Draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::GossipKey;

    fn key(id: u32, created_ms: u64) -> GossipKey {
        GossipKey {
            id,
            secret_hex: format!("{id:02x}").repeat(KEY_LEN),
            created_ms,
        }
    }

    #[test]
    fn a_new_key_is_used_only_once_it_has_had_time_to_spread() {
        let now = crate::manager::orchestrate::now_ms();
        let fresh = GossipAssignment {
            keys: vec![key(1, 0), key(2, now)],
            peers: Vec::new(),
        };
        let ring = keyring(&fresh).unwrap();
        assert_eq!(ring.primary_id(), 1);
        assert_eq!(ring.key_ids(), vec![1, 2]);
        let spread = GossipAssignment {
            keys: vec![key(1, 0), key(2, now - KEY_SPREAD.as_millis() as u64)],
            peers: Vec::new(),
        };
        assert_eq!(keyring(&spread).unwrap().primary_id(), 2);
        assert!(keyring(&GossipAssignment::default()).is_none());
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut bad = key(1, 0);
        bad.secret_hex = "zz".repeat(KEY_LEN);
        let gossip = GossipAssignment {
            keys: vec![bad],
            peers: Vec::new(),
        };
        assert!(keyring(&gossip).is_none());
        assert_eq!(decode_key("ab"), None);
    }
}
