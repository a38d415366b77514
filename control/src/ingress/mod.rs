//! The routing mesh and service VIPs on this host: the agent's balancing state, built from
//! its assignments and the gossip view (`plan`), converged by the dataplane's balancer on the
//! path `--lb-mode` chooses.

mod balancer;
pub mod plan;

pub use balancer::Balancer;
