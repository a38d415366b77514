//! The overlay's one error type: every variant names the operation, the device or namespace it
//! was applied to, and the cause.

use std::io;
use std::path::PathBuf;

/// What went wrong while converging a host's overlay networks.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The desired state itself is inconsistent (nothing was changed for it).
    #[error("invalid overlay plan: {0}")]
    InvalidPlan(String),
    /// A network namespace could not be created, pinned, entered or removed.
    #[error("{operation} network namespace {}: {source}", path.display())]
    Namespace {
        /// What was being done: "creating", "entering", "unpinning", ...
        operation: &'static str,
        /// The pinned file (or /proc path) of the namespace.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// A netlink request was refused by the kernel, or could not be sent.
    #[error("netlink: {operation} in {netns}: {source}")]
    Netlink {
        /// The request, naming its device: "creating vxlan vxlan0 (VNI 4097)".
        operation: String,
        /// The namespace the request was sent in ("underlay" or a pinned path).
        netns: String,
        /// The kernel's (or the socket's) answer.
        #[source]
        source: io::Error,
    },
    /// The kernel holds something under our name that is not what we create there.
    #[error("{what} in {netns} is not ours to manage: {detail}")]
    Conflict {
        /// The object: "device eth0".
        what: String,
        /// The namespace it is in.
        netns: String,
        /// Why it does not match.
        detail: String,
    },
    /// The overlay directory could not be read or created.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// No route or interface gives the underlay's MTU.
    #[error("underlay MTU for {what}: {detail}")]
    UnderlayMtu {
        /// The address asked about.
        what: String,
        /// Why it could not be found.
        detail: String,
    },
}

impl OverlayError {
    /// A netlink error for `operation` in `netns`.
    pub(crate) fn netlink(operation: impl Into<String>, netns: &str, source: io::Error) -> Self {
        OverlayError::Netlink {
            operation: operation.into(),
            netns: netns.to_string(),
            source,
        }
    }

    /// The errno behind a netlink or namespace error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OverlayError::Netlink { source, .. }
            | OverlayError::Namespace { source, .. }
            | OverlayError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, OverlayError>;
