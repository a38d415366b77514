//! Gossip: membership, failure detection and the endpoint table, node to node, on UDP and TCP
//! 7946 of each node's underlay address.
//!
//! # The model
//!
//! * **Membership** is SWIM with suspicion (foca): every node probes a random peer every
//!   `probe_period`, asks three others to probe indirectly when it gets no answer, suspects the
//!   peer, and declares it down when the suspicion is not refuted in time. A node goes by
//!   (node id, gossip address, generation); the generation grows with every start, so a
//!   restarted node replaces its previous self instead of being mistaken for it. Nodes find each
//!   other through the control plane's node list ([`Gossip::set_peers`]), which is also the
//!   allow-list: a node removed from it is declared down and its rows are forgotten.
//! * **The endpoint table** has one row per task per network (an [`EndpointEntry`]: IP, MAC,
//!   VTEP, health, names), keyed by (network id, task id). Each row is owned by its *origin*,
//!   the node running the task; only the origin writes it. The origin hands over its complete
//!   local set with [`Gossip::publish`]; gossip diffs it against the previous set and versions
//!   each change with the origin's hybrid clock (microseconds since the epoch, never backwards
//!   within a run, and later than the previous run's after a restart).
//! * **Scope**: each node declares the networks it is on ([`Gossip::set_networks`], plus the
//!   networks of its own rows). Declarations travel to every node; rows of a network are only
//!   sent to nodes that declared it, and a node drops rows of networks it is not on.
//! * **Dissemination**: a change is pushed at once to a few random peers on its network, each
//!   of which forwards what was new to it (a bounded epidemic; see `spread.rs`); anti-entropy
//!   over TCP every few seconds exchanges per-(network, origin) digests with one random peer and
//!   sends what is missing, so a node that was partitioned converges when it comes back.
//! * **Deletions never come back**: each change names its predecessor, so a node knows up to
//!   which version it holds an origin's complete set (its watermark, see `table.rs`) and refuses
//!   any row at or below it that it lacks; tombstones expire once the watermark covers them.
//! * **Down nodes**: the rows of an origin SWIM declares down leave [`Gossip::endpoints`] at
//!   once and are kept hidden; they return when the origin is alive again.
//! * **Security**: every datagram and frame is sealed with ChaCha20-Poly1305 under the
//!   [`Keyring`]'s primary key; anything that does not authenticate is dropped and counted.
//!
//! # Layout
//!
//! `core.rs` (inputs, timers, membership, commands), `spread.rs` (push and anti-entropy) and
//! `queries.rs` (what consumers read) are the sans-IO state machine, and `ping.rs` its
//! reachability checks (`meshctl diag ports`); `table.rs` is the endpoint
//! table and `clock.rs` its versions; `swim.rs` is foca's side; `message.rs`, `envelope.rs`
//! and `keyring.rs` are the wire; `driver.rs` is the tokio driver behind [`Gossip`]; `sim.rs`
//! and `sim_net.rs` simulate a network of cores for tests and benchmarks, and `baseline.rs`
//! runs foca's own broadcast on it for comparison.
//!
//! # Using it (meshd)
//!
//! ```text
//! let gossip = Gossip::start(GossipConfig::new(node_id, SocketAddr::new(underlay, 7946), keyring))?;
//! gossip.set_peers(every_other_node);        // (NodeId, gossip SocketAddr), on every change
//! gossip.set_networks(network_ids);          // networks this node's tasks are on
//! gossip.set_keyring(keyring);               // on every key change (add, switch, remove)
//! gossip.publish(local_entries);             // the complete local set, on every change
//! let mut changes = gossip.subscribe();      // changes.changed().await, then:
//! gossip.endpoints(); gossip.members();      // the visible view
//! gossip.ping_udp(addr, timeout).await?;     // `meshctl diag ports`: a sealed ping and pong
//! gossip.ping_tcp(addr, timeout).await?;     // with another node's gossip, per transport
//! gossip.shutdown();                         // graceful leave
//! ```

pub mod baseline;
pub mod clock;
mod core;
mod driver;
pub mod entry;
pub mod envelope;
pub mod keyring;
pub mod message;
pub mod ping;
mod queries;
pub mod sim;
mod sim_net;
mod spread;
pub mod stats;
pub mod swim;
pub mod table;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod driver_tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::core::{Core, CoreConfig, Output};
pub use driver::Gossip;
pub use entry::{Endpoint, EndpointEntry, EntryError, Health};
pub use keyring::{Keyring, KeyringError, KEY_LEN};
pub use ping::{PingError, PongError};
pub use spread::StreamAnswer;
pub use stats::GossipStats;
pub use table::{RowState, TableRow, TableView};

use crate::store::NodeId;

/// Gossip's port, UDP and TCP, as in Docker Swarm.
pub const DEFAULT_PORT: u16 = 7946;

/// How a member stands in SWIM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time. Its rows stay visible.
    Suspect,
    /// Declared down: its rows are hidden.
    Down,
}

/// One node as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The cluster's node id.
    pub node_id: NodeId,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// How it stands.
    pub state: MemberState,
    /// Its identity's generation (start time in ms, plus one per rejoin).
    pub generation: u64,
    /// SWIM's incarnation: how often it refuted a suspicion.
    pub incarnation: u16,
    /// The networks it declared.
    pub networks: Vec<String>,
}

/// Timing and fan-out. The defaults suit a LAN: a dead node is declared down in about 2-3 s in
/// a 5-node cluster; a change reaches every node of its network in well under a second.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// How often each node probes one random peer.
    pub probe_period: Duration,
    /// How long a direct probe waits for its answer before asking others (round trip p99).
    pub probe_rtt: Duration,
    /// A suspect is declared down after this many probe periods, times log10(cluster size)
    /// past 10 nodes.
    pub suspicion_periods: u32,
    /// How often SWIM sends its membership updates to 3 random members.
    pub swim_gossip_interval: Duration,
    /// Peers each round of a push goes to.
    pub push_fanout: usize,
    /// Rounds of a push at a node that forwards it (the origin does one more).
    pub push_rounds: u8,
    /// Time between rounds of a push.
    pub push_interval: Duration,
    /// Mean time between anti-entropy exchanges of one node (stretched past 32 nodes).
    pub sync_interval: Duration,
    /// How long one anti-entropy exchange may take.
    pub sync_timeout: Duration,
    /// How long a tombstone is kept at least.
    pub tombstone_ttl: Duration,
    /// How often a node announces itself to listed peers that are not members yet.
    pub announce_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspicion_periods: 3,
            swim_gossip_interval: Duration::from_millis(200),
            push_fanout: 4,
            push_rounds: 3,
            push_interval: Duration::from_millis(50),
            sync_interval: Duration::from_secs(3),
            sync_timeout: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(300),
            announce_interval: Duration::from_secs(1),
        }
    }
}

/// How [`Gossip::start`] starts a node.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This node's id in the cluster.
    pub node_id: NodeId,
    /// The node's underlay address and gossip port (UDP and TCP). Port 0 picks a free port,
    /// for tests; the address must be a concrete one (peers reach us there).
    pub bind: SocketAddr,
    /// The cluster's keys.
    pub keyring: Keyring,
    /// Timing and fan-out.
    pub tuning: Tuning,
}

impl GossipConfig {
    /// Gossip on `bind` (the node's underlay address and gossip port, usually
    /// [`DEFAULT_PORT`]) with default tuning.
    pub fn new(node_id: NodeId, bind: SocketAddr, keyring: Keyring) -> GossipConfig {
        GossipConfig {
            node_id,
            bind,
            keyring,
            tuning: Tuning::default(),
        }
    }
}

/// What can go wrong starting or driving gossip.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Not called from a tokio runtime.
    #[error("gossip must be started from inside a tokio runtime (call Gossip::start within #[tokio::main] or a Runtime::block_on)")]
    NoRuntime,
    /// Bind address 0.0.0.0 or ::.
    #[error(
        "gossip cannot bind {0}: give the node's underlay address, which peers use to reach it"
    )]
    Unspecified(SocketAddr),
    /// The UDP or TCP socket could not be bound.
    #[error("{proto} {port} on {ip}: {hint}")]
    Bind {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
        /// What to do.
        hint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket option or conversion failed.
    #[error("setting up the gossip socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl GossipError {
    /// A bind error with a hint that names the likely cause.
    pub(crate) fn bind(proto: &'static str, addr: SocketAddr, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "is in use: another meshd, or Docker Swarm's dockerd, may hold it (`ss -lunp | grep {}` shows who); stop it or choose another gossip port",
                addr.port()
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                "is not an address of this host: check the node's underlay address (`ip -br addr`)"
                    .to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE".to_string()
            }
            _ => format!("cannot be bound: {source}"),
        };
        GossipError::Bind {
            proto,
            ip: addr.ip(),
            port: addr.port(),
            hint,
            source,
        }
    }
}
