//! Packet-level probes of the paths a cluster needs: is a port open between two hosts, what is
//! the largest packet the underlay carries, and what is the largest the overlay carries.
//!
//! # Model
//! The most common failure of a Swarm-style cluster is a network between hosts that silently
//! drops something: a firewall that blocks UDP 4789 (overlay traffic vanishes), or a link with
//! a smaller MTU that drops large packets without a word (small requests work, large ones
//! hang). Probes find both by sending the traffic in question and waiting for a proof that it
//! arrived: a reply.
//!
//! - **Ports.** The data-path port belongs to the kernel's vxlan devices, which drop what they
//!   cannot decapsulate, so a plain UDP echo there is impossible. Instead every node runs one
//!   more vxlan device, the probe tap, for a reserved VNI (`wire::PROBE_VNI`), and a
//!   `ProbeResponder` that reads the frames the kernel decapsulates into it and answers each
//!   from the data-path port itself. A probe is thus received exactly as overlay traffic is,
//!   after the host's firewall, and the reply crosses the firewalls in reverse as overlay
//!   traffic would. `vxlan_probe` sends one and tells `Answered`, `Refused` (ICMP port
//!   unreachable), `Unreachable` (another ICMP error, or a local one) or `NoAnswer` (silence:
//!   dropped). `tcp_probe` does the same for the
//!   TCP ports (cluster API, gossip), where the kernel itself answers.
//! - **Underlay MTU.** `path_mtu` searches the largest IPv4 packet that crosses with DF set,
//!   each size proven by a probe padded to it and answered; silence counts as "too big",
//!   because black holes are silent (see `mtu`).
//! - **Overlay MTU.** `overlay_path_mtu` does the same from inside a task's namespace with
//!   ICMP echo requests, which the remote task's kernel answers; `ping_in` is a plain ping
//!   from there.
//!
//! Probes block (a few seconds at most): call them from `spawn_blocking`. The responder runs
//! on its own thread. Raw and packet sockets need CAP_NET_RAW.
//!
//! # Limits
//! A probe proves that the target host's kernel delivers the port to its vxlan socket (after
//! its nftables/iptables `input` rules), not that a given overlay network's device exists
//! there: that is the overlay's own state. Rules that match the VNI (a `@th` payload match)
//! could treat probes and overlay traffic differently; nothing else does.

mod error;
mod errqueue;
pub mod firewall;
pub mod ipv4;
mod mtu;
mod prober;
mod responder;
mod sys;
mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use error::ProbeError;
pub use mtu::{overlay_path_mtu, path_mtu};
pub use prober::{ping_in, tcp_probe, vxlan_probe, ATTEMPTS};
pub use responder::{
    build_reply, parse_request, AllowedSenders, ProbeResponder, Request as ProbeRequest,
    ResponderStats, MAX_REPLIES_PER_SEC,
};

/// What a probe met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A reply came back.
    Answered {
        /// From the send of the answered attempt to its reply.
        rtt: Duration,
    },
    /// The host is up but refused: ICMP port unreachable (UDP, nothing takes the port, or a
    /// firewall `reject`), or a reset (TCP).
    Refused,
    /// An error on the way: ICMP network or host unreachable, administratively prohibited (a
    /// firewall's `reject with icmp type admin-prohibited`), fragmentation needed, or a local
    /// error (no route, a local firewall).
    Unreachable {
        /// What, and who reported it.
        detail: String,
    },
    /// Nothing came back in time: packets are dropped on the way (a firewall `drop`, a
    /// security group), or the host is down.
    NoAnswer,
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Answered { rtt } => {
                write!(f, "answered in {:.1} ms", rtt.as_secs_f64() * 1000.0)
            }
            ProbeOutcome::Refused => f.write_str("refused (nothing takes the port)"),
            ProbeOutcome::Unreachable { detail } => write!(f, "unreachable: {detail}"),
            ProbeOutcome::NoAnswer => {
                f.write_str("no answer (dropped on the way, or the host is down)")
            }
        }
    }
}

/// The result of a path MTU search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMtu {
    /// The largest IPv4 packet (headers included) that got through and was answered.
    pub mtu: u32,
    /// Probes sent, the baseline tries at the smallest size included.
    pub probes: u32,
    /// The MTU an ICMP "fragmentation needed" reported, if one came (a router that says so
    /// is not a black hole).
    pub frag_needed: Option<u32>,
    /// The local link's MTU, if a probe exceeded it.
    pub local_mtu: Option<u32>,
    /// How long the search took.
    pub elapsed: Duration,
}
