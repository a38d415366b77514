//! Errors of the load balancer, shared by its paths.

use thiserror::Error;

/// Errors from converging or reading a load balancer.
#[derive(Debug, Error)]
pub enum LbError {
    /// The desired state is inconsistent (a service without ports or VIPs, a port twice, ...).
    #[error("invalid load-balancer state: {0}")]
    InvalidState(String),
    /// A BPF object, program or map operation failed.
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    /// A kernel operation (netlink, sysctl, namespace) failed.
    #[error("{operation}: {source}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    /// nftables refused a batch or could not be run.
    #[error("nftables: {0}; check that the nft binary is installed (bash scripts/setup.sh) and that this kernel has nf_tables")]
    Nftables(String),
    /// The requested path cannot run on this host.
    #[error("load-balancer path {path} is unavailable on {interface}: {reason}; choose another with --lb-mode")]
    Unavailable {
        path: super::LbPath,
        interface: String,
        reason: String,
    },
}

/// One named counter (a drop reason, a forwarding outcome), summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbCounter {
    /// Stable name, as `meshctl` prints it (`drop:truncated`, `forward:remote`, ...).
    pub name: String,
    /// Packets.
    pub packets: u64,
}
