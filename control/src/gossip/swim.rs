//! Membership and failure detection: SWIM with suspicion, by foca. This file holds what foca
//! needs from us: the identity nodes go by, and the protocol's timing for a cluster size.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::message::MAX_DATAGRAM_PLAINTEXT;
use super::Tuning;
use crate::store::NodeId;

/// How a node is known to SWIM: its cluster node id, the address its gossip listens on, and
/// a generation that grows with every start (milliseconds since the epoch at start) and every
/// rejoin after being declared down. Two identities with one node id are the same node; the
/// higher generation wins, so a restarted node replaces its previous self at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The cluster's node id.
    pub node: NodeId,
    /// Where its gossip listens.
    pub addr: SocketAddr,
    /// Start time in ms, plus one per rejoin.
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}

/// The identity to announce to a peer we know only by id and address: foca accepts an
/// announce addressed to any identity with its node id.
pub fn seed_identity(node: NodeId, addr: SocketAddr) -> NodeIdentity {
    NodeIdentity {
        node,
        addr,
        generation: 0,
    }
}

/// Cluster sizes count in orders of magnitude: log10, at least 1.
fn magnitude(cluster_size: usize) -> f64 {
    (cluster_size.max(1) as f64).log10().max(1.0)
}

/// foca's configuration for `cluster_size` nodes: probes every `probe_period`, a suspect is
/// declared down after `suspicion_periods` × log10(size) probe periods (at least that many),
/// and updates ride on messages 4 × log10(size + 1) times (memberlist's LAN rules).
pub fn config(tuning: &Tuning, cluster_size: usize) -> foca::Config {
    let periods = f64::from(tuning.suspicion_periods) * magnitude(cluster_size);
    let max_tx = ((cluster_size as f64 + 1.0).log10() * 4.0).clamp(4.0, 255.0) as u8;
    let mut config = foca::Config::simple();
    config.probe_period = tuning.probe_period;
    config.probe_rtt = tuning.probe_rtt;
    config.num_indirect_probes = NonZeroUsize::new(3).expect("3 is not zero");
    config.max_transmissions = NonZeroU8::new(max_tx).expect("clamped to at least 4");
    config.suspect_to_down_after = tuning.probe_period.mul_f64(periods);
    // Long enough that a dead node's identity is not forgotten (and re-learnt alive from a
    // stale message) while the cluster still talks about it.
    config.remove_down_after = Duration::from_secs(3600);
    // One byte of the plaintext is our kind byte.
    config.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM_PLAINTEXT - 1).expect("the datagram limit is not zero");
    config.notify_down_members = true;
    config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(30),
        num_members: NonZeroUsize::new(1).expect("1 is not zero"),
    });
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(2).expect("2 is not zero"),
    });
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: tuning.swim_gossip_interval,
        num_members: NonZeroUsize::new(3).expect("3 is not zero"),
    });
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn renewed_identities_win_over_their_previous_self() {
        let a = NodeIdentity {
            node: 1,
            addr: "127.0.0.1:7946".parse().unwrap(),
            generation: 10,
        };
        let b = a.renew().unwrap();
        assert_eq!(b.generation, 11);
        assert_eq!(a.addr(), b.addr());
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
    }

    #[test]
    fn lan_timing_declares_a_dead_node_within_seconds() {
        let tuning = Tuning::default();
        let small = config(&tuning, 5);
        assert!(small.suspect_to_down_after <= Duration::from_secs(2));
        let large = config(&tuning, 1000);
        assert!(large.suspect_to_down_after > small.suspect_to_down_after);
        assert!(large.max_transmissions.get() >= 12);
        assert!(small.probe_rtt < small.probe_period);
    }
}
