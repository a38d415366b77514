//! Mesh's dataplane: everything that touches a node's packet path.
//!
//! The dataplane knows nothing of Raft or services. Callers hand it the network state a node
//! should have; it converges the kernel to that state. This crate holds the BPF programs (built
//! from `ebpf/` by the build script) and their userspace handles, and the overlay networks
//! (namespaces, bridges, vxlan devices, veths and static entries, over rtnetlink), and the
//! embedded DNS server each task namespace gets (records in, answers out), and the probes
//! that check the paths between nodes (ports, underlay and overlay MTU) packet by packet.

pub mod bpf;
pub mod dns;
pub mod guard;
pub mod lb;
pub mod overlay;
pub mod probe;
pub mod ratelimit;
