//! The DNS server's one error type: every variant names the operation and what to do about it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong while building a zone or starting a DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound on the server's address.
    #[error(
        "binding the DNS server's {transport} socket on {addr}: {source} (inside a task \
         namespace, bring `lo` up first: 127.0.0.0/8 is local only once it is; and make sure \
         nothing else listens there)"
    )]
    Bind {
        /// "UDP" or "TCP".
        transport: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The socket used to reach the upstream resolvers could not be created.
    #[error("creating the DNS forwarder's socket for {addr}: {source}")]
    Forwarder {
        /// The upstream server it was for.
        addr: SocketAddr,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The task's network namespace could not be opened or entered.
    #[error(
        "entering network namespace {} for the DNS server: {source} (is the task's namespace \
         still pinned there?)",
        path.display()
    )]
    Namespace {
        /// The namespace file given.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The resolver configuration naming the upstream servers could not be read.
    #[error("reading upstream resolvers from {}: {source}", path.display())]
    ResolvConf {
        /// The file, usually /etc/resolv.conf.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// A name or record given to `Zone::new` cannot be served.
    #[error("invalid DNS record {name:?}: {reason}")]
    InvalidRecord {
        /// The name as given.
        name: String,
        /// What is wrong with it, and how to fix it.
        reason: String,
    },
    /// A socket was created but could not be handed to the async runtime.
    #[error("registering the DNS server's {transport} socket with tokio: {source} (start the server from inside a tokio runtime)")]
    Runtime {
        /// "UDP", "TCP" or "forwarder".
        transport: &'static str,
        /// The runtime's answer.
        #[source]
        source: io::Error,
    },
}
