//! Mesh's control plane: configuration, the node daemon's lifecycle and its local API. The
//! binaries `meshd` and `meshctl` are thin wiring over these modules.

pub mod agent;
pub mod api;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod discovery;
pub mod gossip;
pub mod ingress;
pub mod local_api;
pub mod manager;
pub mod network;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod rpc;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod store;

/// An error and its causes on one line, each cause once: library errors often repeat their
/// source in their own message, and printing the chain naively would say it twice.
pub fn report(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(io)
            .context("writing state: disk on fire")
            .context("saving");
        assert_eq!(report(&err), "saving: writing state: disk on fire");
    }
}
