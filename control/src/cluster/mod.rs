//! Cluster membership primitives: the CA and node identities, join tokens, quorum arithmetic.

pub mod ca;
pub mod quorum;
pub mod tls;

pub use ca::CertRole;
pub mod token;
