//! Counters of one gossip node, flat, each with what it counts. Read with `Gossip::stats`.

use serde::{Deserialize, Serialize};

/// What a node's gossip has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Datagrams received.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes of datagrams received.
    pub bytes_in: u64,
    /// Bytes of datagrams sent.
    pub bytes_out: u64,
    /// Datagrams and stream frames dropped because they failed authentication: sealed with a
    /// key this node does not hold, or with other key bytes, or altered on the way.
    pub auth_failures: u64,
    /// Datagrams and frames that are not envelopes, or whose authenticated content does not
    /// decode.
    pub malformed: u64,
    /// Messages from nodes that are not in the peer list (`set_peers`), dropped.
    pub unknown_senders: u64,
    /// SWIM messages foca refused (stale, from ourselves, from a node it declared down).
    pub swim_errors: u64,
    /// Endpoint records received for networks this node is not on, dropped.
    pub out_of_scope_dropped: u64,
    /// Endpoint records received that were older than what this node holds.
    pub stale_records: u64,
    /// Endpoint records received that were new here.
    pub fresh_records: u64,
    /// Push datagrams sent (endpoint changes and declarations).
    pub pushes_out: u64,
    /// Anti-entropy exchanges this node started that completed.
    pub syncs_completed: u64,
    /// Anti-entropy exchanges this node started that failed or timed out.
    pub syncs_failed: u64,
    /// Anti-entropy exchanges other nodes started with this one.
    pub syncs_served: u64,
    /// Entries `publish` left out (invalid, or a repeated key).
    pub refused_entries: u64,
    /// Datagrams the socket refused to send.
    pub send_errors: u64,
    // Absent from the stats of releases before pings: default to 0 when read from one.
    /// Pings (UDP and TCP) this node answered.
    #[serde(default)]
    pub pings_answered: u64,
    /// Pongs that answered no pending UDP ping: late (after the caller gave up), or repeated.
    #[serde(default)]
    pub pongs_unmatched: u64,
}
