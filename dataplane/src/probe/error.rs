//! The probe module's error type: what could not be done locally, and what to do about it.
//! Findings about the network (refused, unreachable, no answer) are not errors: they are
//! `ProbeOutcome`s.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::ProbeOutcome;

/// Why a probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A raw or packet socket was refused for lack of privilege.
    #[error(
        "opening {what} needs CAP_NET_RAW ({source}): run meshd as root or grant it CAP_NET_RAW"
    )]
    Privilege {
        /// The socket: "a packet socket", "a raw IPv4 socket", ...
        what: &'static str,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The probe tap's namespace has no device of the name given.
    #[error(
        "no device {name} in network namespace {}: is the probe network (a vxlan with VNI \
         0xFFFFF0 on the data-path port) set up? (`ip -n <ns> link` lists the devices)",
        netns.display()
    )]
    NoTapDevice {
        /// The device asked for.
        name: String,
        /// The pinned namespace looked in.
        netns: PathBuf,
    },
    /// A socket operation failed.
    #[error("{operation}: {source}")]
    Io {
        /// What was being done, with its addresses: "binding a UDP socket to 198.18.0.1".
        operation: String,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The task's network namespace could not be used.
    #[error("network namespace {}: {detail}", path.display())]
    Namespace {
        /// The pinned namespace.
        path: PathBuf,
        /// What went wrong, and what to check.
        detail: String,
    },
    /// The MTU search range makes no sense.
    #[error("MTU search range {min}..={max}: {detail}")]
    InvalidRange {
        /// Its lower end.
        min: u32,
        /// Its upper end.
        max: u32,
        /// Why it is refused.
        detail: String,
    },
    /// An MTU search found the path closed even to its smallest probe.
    #[error(
        "no probe to {target} was answered even at {size} bytes ({outcome}): fix reachability \
         first (`meshctl diag ports`), and check that meshd runs there"
    )]
    NoBaseline {
        /// The probed address.
        target: String,
        /// The smallest size, which was tried three times.
        size: u32,
        /// What those probes met.
        outcome: ProbeOutcome,
    },
    /// The target is IPv6, which Mesh's underlay does not use.
    #[error("{0} is an IPv6 address: Mesh's underlay and its probes are IPv4 only")]
    Ipv6(SocketAddr),
}

impl ProbeError {
    /// An `Io` error for `operation`, or `Privilege` when the system said EPERM/EACCES while
    /// opening a privileged socket kind (`what`).
    pub(crate) fn socket(what: &'static str, source: io::Error) -> ProbeError {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => ProbeError::Privilege { what, source },
            _ => ProbeError::Io {
                operation: format!("opening {what}"),
                source,
            },
        }
    }

    /// An `Io` error.
    pub(crate) fn io(operation: impl Into<String>, source: io::Error) -> ProbeError {
        ProbeError::Io {
            operation: operation.into(),
            source,
        }
    }
}
