//! Overlay networks in the store: what `network create` asks for, what the managers allocate
//! (subnet, gateway, VNI) and the addresses tasks get on them.

pub mod alloc;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An IPv4 subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0-32.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n`, refusing host bits.
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR like 10.1.2.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 CIDR like 10.1.2.0/24"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{text:?} has no valid prefix length (0-32)"))?;
        let subnet = Subnet { addr, prefix };
        if subnet.network() != addr {
            return Err(format!(
                "{text:?} has host bits set; did you mean {}/{prefix}?",
                subnet.network()
            ));
        }
        Ok(subnet)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether two subnets share any address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// Usable host addresses (without network and broadcast).
    pub fn hosts(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network()) + 1;
        let last = u32::from(self.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Only `overlay`.
    pub driver: String,
    /// A subnet, or None to take one from the cluster's default pool.
    pub subnet: Option<String>,
    /// The gateway, or None for the subnet's first address.
    pub gateway: Option<Ipv4Addr>,
    /// The overlay MTU, or None to derive it from the underlay (minus 50).
    pub mtu: Option<u32>,
    /// Whether standalone tasks may attach (stored for later).
    pub attachable: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A network in the store, with what the managers allocated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// 25 lowercase alphanumerics.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// MTU given with `--opt mtu=N`, if any.
    pub mtu: Option<u32>,
    /// Whether standalone tasks may attach.
    pub attachable: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
}

/// A task's address on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's ID.
    pub network_id: String,
    /// The task's address.
    pub ip: Ipv4Addr,
}

/// The MAC address of a task's interface: 02:42 and its IPv4 address, as Docker does, so
/// neighbour entries follow from the IP alone.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Formats a MAC address.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_compare() {
        let s = Subnet::parse("10.0.1.0/24").unwrap();
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 0, 1, 255));
        assert!(s.contains(Ipv4Addr::new(10, 0, 1, 7)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 2, 7)));
        assert!(s.overlaps(Subnet::parse("10.0.0.0/16").unwrap()));
        assert!(!s.overlaps(Subnet::parse("10.0.2.0/24").unwrap()));
        assert_eq!(s.hosts().count(), 254);
        assert!(Subnet::parse("10.0.1.1/24")
            .unwrap_err()
            .contains("did you mean 10.0.1.0/24"));
        assert!(Subnet::parse("10.0.1.0").is_err());
        assert!(Subnet::parse("10.0.1.0/33").is_err());
        assert_eq!(
            format_mac(mac_of(Ipv4Addr::new(10, 0, 1, 2))),
            "02:42:0a:00:01:02"
        );
    }
}

/// The overlay MTU when none is given: the smallest underlay MTU a node reports, minus the 50
/// bytes of VXLAN encapsulation (outer Ethernet, IPv4, UDP and VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The MTU a network's interfaces get: its `mtu` option, else derived from the smallest
/// underlay MTU the nodes report (1500 when none has reported yet).
pub fn effective_mtu(state: &crate::store::ClusterState, network: &NetworkRecord) -> u32 {
    network
        .mtu
        .unwrap_or_else(|| smallest_underlay_mtu(state) - VXLAN_OVERHEAD)
}

/// The smallest underlay MTU any node reports (1500 when none has).
pub fn smallest_underlay_mtu(state: &crate::store::ClusterState) -> u32 {
    state
        .nodes
        .values()
        .map(|n| n.description.underlay_mtu)
        .filter(|mtu| *mtu > 0)
        .min()
        .unwrap_or(1500)
}

/// A network as `network ls` and `network inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Network ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Always `overlay`.
    pub driver: String,
    /// Subnet.
    pub subnet: String,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// The MTU its interfaces get.
    pub mtu: u32,
    /// `option` (given at create) or `derived` (smallest underlay MTU minus 50).
    pub mtu_source: String,
    /// Attachable by standalone tasks.
    pub attachable: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Tasks attached now.
    pub endpoints: Vec<EndpointView>,
    /// With `--verbose`: each host's gossip view of this network's endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_views: Vec<HostView>,
}

/// One host's view of a network's endpoint table, and how it differs from the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    /// Node name.
    pub node: String,
    /// Milliseconds since the epoch of its last report of the view.
    pub reported_ms: u64,
    /// Its endpoints on the network, as `task name  ip  vtep  healthy`.
    pub endpoints: Vec<crate::discovery::SeenEndpoint>,
    /// Running tasks the control plane has on the network that this host does not see.
    pub missing: Vec<String>,
    /// Endpoints this host sees that the control plane has no running task for.
    pub extra: Vec<String>,
}

/// A task's attachment as `network inspect` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Task ID.
    pub task_id: String,
    /// Task name (`service.slot`).
    pub task: String,
    /// Node name.
    pub node: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC address.
    pub mac: String,
    /// Task state.
    pub state: String,
}

impl NetworkView {
    /// The view of a network and the live tasks attached to it.
    pub fn of(network: &NetworkRecord, state: &crate::store::ClusterState) -> Self {
        let endpoints = state
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .filter_map(|t| {
                let a = t.attachments.iter().find(|a| a.network_id == network.id)?;
                let view = crate::service::view::TaskView::of(t, state);
                Some(EndpointView {
                    task_id: t.id.clone(),
                    task: view.name,
                    node: view.node,
                    ip: a.ip,
                    mac: format_mac(mac_of(a.ip)),
                    state: t.state.as_str().to_string(),
                })
            })
            .collect();
        NetworkView {
            id: network.id.clone(),
            name: network.name.clone(),
            driver: "overlay".into(),
            subnet: network.subnet.to_string(),
            gateway: network.gateway,
            vni: network.vni,
            mtu: effective_mtu(state, network),
            mtu_source: if network.mtu.is_some() {
                "option"
            } else {
                "derived"
            }
            .into(),
            attachable: network.attachable,
            labels: network.labels.clone(),
            endpoints,
            host_views: Vec::new(),
        }
    }
}

/// Finds a network by exact name, full ID or unique ID prefix.
pub fn find_network<'a>(
    state: &'a crate::store::ClusterState,
    key: &str,
) -> Result<&'a NetworkRecord, String> {
    if let Some(network) = state.network_named(key) {
        return Ok(network);
    }
    if let Some(network) = state.networks.get(key) {
        return Ok(network);
    }
    let matches: Vec<_> = state
        .networks
        .values()
        .filter(|n| key.len() >= 4 && n.id.starts_with(key))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no network {key:?}; `meshctl network ls` lists the networks"
        )),
        many => Err(format!(
            "{key} matches {} networks; give more of the ID",
            many.len()
        )),
    }
}
