//! The embedded DNS server every task talks to, like Docker's 127.0.0.11.
//!
//! # Model
//! Every task has its own network namespace, and meshd runs one [`DnsServer`] inside each of
//! them, on a fixed address (127.0.0.11:53, UDP and TCP). A server answers from a [`Zone`]: the
//! names that task may see, built by the control plane as plain [`Records`] and pre-encoded
//! once. Many servers share one zone through a [`ZoneHandle`]; [`ZoneHandle::set`] takes effect
//! for the very next query, so answers are never stale. The dataplane knows nothing about
//! services: it only gets names and addresses.
//!
//! A query for a name in the zone is answered from it; any other name is relayed to the
//! [`Upstream`] servers (the host's resolvers), and the reply is relayed back.
//!
//! # Paths
//! - **Hot path** (`answer`): a UDP or TCP query with one question and at most an OPT record,
//!   for a name in the zone, asking for anything but SRV. The reply is the query's header and
//!   question bytes as received, followed by answer records pre-encoded with a compression
//!   pointer to the question (0xC00C). No message is parsed into objects or encoded.
//! - **Slow path** (`slow`): SRV answers (with the targets' addresses as additional records),
//!   queries carrying other records, EDNS versions we do not speak. It builds a
//!   `hickory_proto` message.
//! - **Forwarding** (`forward`): names outside the zone. The raw query is relayed with a fresh ID.
//!
//! Each client address gets a token bucket ([`limit`]): queries over its rate are dropped and
//! counted ([`DnsServer::rate_limited`]), so a flooding client cannot starve the others.
//!
//! Malformed queries get FORMERR or NOTIMP when their header can be read, and are dropped
//! otherwise (`wire` says which case is which). Messages that claim to be responses are always
//! dropped: answering them could start an endless exchange between two servers.

mod answer;
mod client;
mod error;
mod forward;
pub mod limit;
mod server;
mod slow;
mod tcp;
mod udp;
mod wire;
mod zone;

#[cfg(test)]
mod tests;

// The pure answering step the UDP and TCP workers run, public for the fuzz targets.
pub use answer::{Action, Responder, Transport, OUR_PAYLOAD, PLAIN_UDP_LIMIT, TCP_LIMIT};
pub use client::{query_a_in, QueryError};
pub use error::DnsError;
pub use forward::Upstream;
pub use server::{DnsServer, DnsStats};
pub use wire::{EdnsInfo, Query};
pub use zone::{Records, Srv, Zone, ZoneHandle};

/// The address Docker gives its embedded DNS server, which task `resolv.conf` files name.
pub const EMBEDDED_DNS_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(127, 0, 0, 11), 53),
);
