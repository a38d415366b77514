//! What every node runs once it belongs to a cluster: its identity on disk and its heartbeat
//! to the leader.

pub mod heartbeat;
pub mod identity;
mod renewal;
pub mod runtime;
mod transitions;
