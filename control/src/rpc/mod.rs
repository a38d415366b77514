//! The cluster port (TCP 2377): framed JSON messages over mutual TLS, between nodes and from
//! a joining node to a manager.
//!
//! A framed protocol over rustls rather than gRPC: every decision a handler makes depends on
//! the peer's certificate (a joining node has none; Raft is for managers only), which this
//! layer hands to the handler directly, and the messages are the serde types the Raft store
//! already uses, with no code generation in between.

pub mod client;
pub mod frame;
pub mod messages;
pub mod server;
