//! Load balancing: the ingress routing mesh (published ports answering on every host) and
//! service VIPs (traffic between tasks), over one set of backend tables.
//!
//! # Model
//! The caller hands a host's complete desired balancing state ([`HostLb`]): every service with
//! published ports or a VIP, and its backends (tasks, local or on other hosts, each with the
//! overlay address, MAC and VTEP gossip announced). A [`Balancer`] converges the kernel to it,
//! idempotently, through one of three paths ([`LbPath`]): a BPF program at XDP or at TC (tcx) on
//! the underlay interface, or nftables where BPF cannot attach.
//!
//! Backends are picked per flow from a weighted Maglev table ([`maglev`]), computed here in
//! userspace from the backend set, so every host computes the same table: removing a backend
//! moves only that backend's flows. A backend in [`BackendState::Draining`] gets no new flows
//! but keeps the ones it has, until the caller removes it.
//!
//! Each overlay network's namespace has a leg into the host's namespace (a veth pair:
//! `mg-<network>` here, `gw0` there, the network namespace's default route): ingress traffic
//! enters the network through it, and replies leave through it, straight out of the backend's
//! host (direct server return: the task sees the client's address).

pub mod bpf;
mod error;
pub mod maglev;
pub mod nft;
pub mod vip;

pub use error::{LbCounter, LbError};

use std::fmt;
use std::net::Ipv4Addr;

/// The first VNI of the routing mesh's range, `MESH_VNI_BASE..=MESH_VNI_BASE | 0xFFFF`: a
/// packet the ingress host sends to a backend's host carries the published port in its VNI's
/// low 16 bits. Overlay networks get VNIs below it.
pub const MESH_VNI_BASE: u32 = 0xFE_0000;

/// The path a host balances with, as asked on the command line (`--lb-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    /// BPF at the faster hook for the interface kind (TC on veth, XDP on NICs with native
    /// XDP), nftables if BPF cannot attach.
    #[default]
    Auto,
    /// The BPF program at XDP.
    Xdp,
    /// The BPF program at TC (tcx).
    Tc,
    /// nftables DNAT.
    Nftables,
}

impl LbMode {
    /// Parses `auto`, `xdp`, `tc` or `nftables`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "xdp" => Ok(Self::Xdp),
            "tc" => Ok(Self::Tc),
            "nftables" | "nft" => Ok(Self::Nftables),
            other => Err(format!(
                "load-balancer mode {other:?}: use auto, xdp, tc or nftables"
            )),
        }
    }
}

/// The path a host actually balances with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LbPath {
    /// The BPF program at XDP on the underlay interface.
    Xdp,
    /// The BPF program at TC (tcx) on the underlay interface.
    Tc,
    /// nftables DNAT.
    Nftables,
}

impl fmt::Display for LbPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::Nftables => "nftables",
        })
    }
}

/// Everything one host must balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLb {
    /// This host's underlay address: published ports answer on it, and it is this host's VTEP.
    pub underlay_ip: Ipv4Addr,
    /// The interface holding `underlay_ip` (the BPF program attaches there).
    pub underlay_if: String,
    /// The underlay interface's MTU: frames that no longer fit once encapsulated get ICMP
    /// "fragmentation needed" (or are dropped and counted).
    pub underlay_mtu: u32,
    /// UDP port of VXLAN for the whole cluster.
    pub data_path_port: u16,
    /// The overlay networks this host has (their legs exist), by ID.
    pub networks: Vec<LbNetwork>,
    /// Every service to balance.
    pub services: Vec<LbService>,
}

/// An overlay network as the balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbNetwork {
    /// The network's ID: its namespace is `<overlay dir>/ns-<id>`, its leg `mg-<id>`.
    pub id: String,
    /// Its VNI.
    pub vni: u32,
    /// Its subnet and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// Its MTU.
    pub mtu: u32,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbService {
    /// The service's ID (stable; keys its tables).
    pub id: String,
    /// Its name, for counters and logs.
    pub name: String,
    /// Published ports (ingress mode on every host; host mode only where `local_only`).
    pub ports: Vec<LbPort>,
    /// The service's virtual IP on each network (traffic between tasks; every port).
    pub vips: Vec<LbVip>,
    /// Its backends; an empty set makes published ports refuse (TCP RST or ICMP unreachable).
    pub backends: Vec<LbBackend>,
}

/// TCP or UDP: the protocols of Mesh's ports, published ones included.
pub use crate::probe::firewall::Protocol;

/// A published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LbPort {
    pub protocol: Protocol,
    /// The port on the host's underlay address.
    pub published: u16,
    /// The port inside the task.
    pub target: u16,
    /// Host mode: answer only with this host's own backends (the caller lists only the
    /// local ones, and lists the port only on hosts that run a task).
    pub local_only: bool,
}

/// A service VIP on one network: any port of the VIP goes to the same port of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbVip {
    pub network_id: String,
    pub vip: Ipv4Addr,
}

/// Whether a backend takes new flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendState {
    /// In the Maglev table: takes new flows.
    #[default]
    Active,
    /// Out of the table, but the flows it has keep reaching it (scale-down, update, stop).
    Draining,
}

/// One backend: a task on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbBackend {
    /// The task's ID (stable; its identity in Maglev tables, the same on every host).
    pub task_id: String,
    /// The network the backend is reached through.
    pub network_id: String,
    /// The task's address and MAC on that network.
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The underlay address of the task's host (equal to `HostLb::underlay_ip` when local).
    pub vtep: Ipv4Addr,
    /// Relative weight, at least 1.
    pub weight: u16,
    pub state: BackendState,
}

impl HostLb {
    /// Whether `backend` runs on this host.
    pub fn is_local(&self, backend: &LbBackend) -> bool {
        backend.vtep == self.underlay_ip
    }
}
