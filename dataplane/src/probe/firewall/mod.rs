//! `meshctl diag firewall`: which host firewall rules and kernel settings break a Mesh cluster.
//!
//! # Model
//! Every pair of Mesh hosts must reach each other on TCP 2377 (cluster API and Raft), TCP and
//! UDP 7946 (gossip) and UDP 4789 (VXLAN, configurable per cluster): [`required_ports`]. For each
//! such port we follow, as the kernel would, a first packet of a new flow (conntrack state
//! `new`, IPv4, from a peer that is not loopback) through every base chain that could see it
//! (ingress, prerouting, input, forward, output, postrouting, egress), rule by rule, following
//! jumps and gotos. Each rule's conditions are weighed against that packet:
//! - conditions on the protocol and destination port are evaluated exactly (single values,
//!   anonymous and named sets, ranges, `!=`, comparisons, verdict maps);
//! - conditions on anything else (addresses, interfaces, marks, rate limits) make the rule match
//!   *some* of the port's traffic: a drop there is a [`Severity::Warning`], an accept there does
//!   not clear the port, it only turns a later drop into a warning;
//! - `ct state` sets without `new`, and loopback interfaces, never see a peer's first packet;
//! - anything else (iptables extensions nft cannot show, raw payload offsets, ...) is not
//!   guessed: it becomes a note "could not evaluate ...".
//!
//! A drop or reject that every packet of a port reaches is a [`Severity::Problem`], as is a chain
//! whose policy is drop when no earlier rule accepts the port. Forwarded traffic, IPv6 tables and
//! drops of only part of a port's traffic are warnings.
//!
//! nftables rules come from `nft -j list ruleset` ([`blocking_nft_rules`]), iptables rules from
//! `iptables-save` text ([`blocking_iptables_rules`]). With iptables-nft, iptables' tables are
//! also nftables tables: [`check_firewall`] reports them once, from iptables-save (whose text
//! shows the extensions nft's JSON hides), and skips them in nft's output.
//!
//! Host settings that break VXLAN (reverse-path filtering, a full conntrack table, checksum
//! offload on VMware NICs, forwarding) are read into a plain [`HostSettings`] and judged by
//! [`host_setting_findings`]. Only `host.rs` does I/O.

mod eval;
mod host;
mod iptables;
mod nft;
mod nft_text;
mod render;
mod settings;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_iptables;
#[cfg(test)]
mod tests_netns;
#[cfg(test)]
mod tests_nft;
#[cfg(test)]
mod tests_settings;

use serde::Serialize;

pub use eval::Analysis;
pub use host::{
    check_firewall, mesh_tables, read_host_settings, read_rulesets, IptablesDump, Rulesets,
};
pub use iptables::{analyze_iptables, blocking_iptables_rules, iptables_nft_tables};
pub use nft::{analyze_nft, blocking_nft_rules, TableRef};
pub use nft_text::nft_rule_texts;
pub use settings::{host_setting_findings, HostSettings, Reading};

/// Default TCP port of the cluster API and Raft (managers).
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;
/// Default TCP and UDP port of gossip (membership, failure detection).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Default UDP port of the VXLAN data path (IANA's VXLAN port).
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

/// A transport protocol carrying one of Mesh's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The lowercase name nft and iptables use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port every pair of cluster hosts must be able to reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequiredPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
    /// What breaks without it, for humans.
    pub purpose: &'static str,
}

impl std::fmt::Display for RequiredPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        write!(f, "{proto} {} ({})", self.port, self.purpose)
    }
}

/// The ports a cluster with these port settings needs, each (protocol, port) once.
pub fn required_ports(
    data_path_port: u16,
    gossip_port: u16,
    cluster_port: u16,
) -> Vec<RequiredPort> {
    let all = [
        (
            Protocol::Tcp,
            cluster_port,
            "cluster API and Raft between managers",
        ),
        (
            Protocol::Tcp,
            gossip_port,
            "gossip: membership and failure detection",
        ),
        (
            Protocol::Udp,
            gossip_port,
            "gossip: membership and failure detection",
        ),
        (Protocol::Udp, data_path_port, "VXLAN overlay data path"),
    ];
    let mut ports: Vec<RequiredPort> = Vec::new();
    for (protocol, port, purpose) in all {
        if !ports
            .iter()
            .any(|p| p.protocol == protocol && p.port == port)
        {
            ports.push(RequiredPort {
                protocol,
                port,
                purpose,
            });
        }
    }
    ports
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks the cluster as configured: traffic a cluster needs is dropped.
    Problem,
    /// Breaks the cluster under some conditions (some sources, IPv6, forwarding, VMware NICs).
    Warning,
}

/// One thing on this host that blocks or may break cluster traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Problem or warning.
    pub severity: Severity,
    /// What happens and why it matters.
    pub what: String,
    /// The rule's text, as `nft` prints it or as iptables-save has it (None for settings).
    pub rule: Option<String>,
    /// Where: "nft inet filter input handle 7", "iptables (nf_tables) filter INPUT rule 3",
    /// "sysctl net.ipv4.conf.eth0.rp_filter".
    pub location: String,
    /// The required ports it affects (empty for settings that affect all traffic).
    pub ports: Vec<RequiredPort>,
    /// The exact command(s) that fix it.
    pub fix: String,
}

/// Everything `meshctl diag firewall` found on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FirewallReport {
    /// Rules and settings that block or may break cluster traffic, problems first.
    pub findings: Vec<Finding>,
    /// What could not be checked or evaluated, and why.
    pub notes: Vec<String>,
    /// What was looked at (sources read, settings and their values).
    pub checked: Vec<String>,
}

/// What went wrong reading a ruleset.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft -j list ruleset` printed something that is not JSON.
    #[error(
        "parsing `nft -j list ruleset` output as JSON: {0}; run `nft -j list ruleset` by hand to \
         see what nft printed (JSON output needs nftables 0.9.3 or later)"
    )]
    NftJson(#[source] serde_json::Error),
    /// The JSON is not shaped like nft's ruleset listing.
    #[error(
        "`nft -j list ruleset` output has no top-level \"nftables\" array ({0}); run \
         `nft -j list ruleset` by hand and report its output"
    )]
    NftShape(&'static str),
}
