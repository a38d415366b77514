//! The lab's one error type: every message names what failed and what to do about it.

use std::path::PathBuf;

use thiserror::Error;

/// Errors from lab operations.
#[derive(Debug, Error)]
pub enum LabError {
    /// A lab, host or parameter name does not fit the naming rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A lab specification or link parameter is out of range.
    #[error("invalid {field} {value}: {reason}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// `up` was asked for a name that already has resources.
    #[error("lab {name:?} already exists ({found}); run `meshctl lab down {name}` first or choose another --name")]
    Exists { name: String, found: String },
    /// No state, namespace or cgroup carries this name.
    #[error("no lab named {name:?}; `meshctl lab ls` lists the labs on this machine")]
    UnknownLab { name: String },
    /// The lab exists but has no host of this name.
    #[error("lab {lab:?} has no host {host:?}; its hosts are: {hosts}")]
    UnknownHost {
        lab: String,
        host: String,
        hosts: String,
    },
    /// The operation needs the host up (or down) and it is not.
    #[error("host {host:?} of lab {lab:?} is {state}: {hint}")]
    HostState {
        lab: String,
        host: String,
        state: &'static str,
        hint: &'static str,
    },
    /// A system command failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A system call or file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A binary the lab starts could not be found.
    #[error("cannot find the {name} binary (looked in {looked}); build it with `cargo build --bins` or set {env}")]
    MissingBinary {
        name: &'static str,
        env: &'static str,
        looked: String,
    },
    /// The state file is unreadable.
    #[error("lab state {path} is corrupt ({reason}); `meshctl lab down` still removes the lab")]
    CorruptState { path: PathBuf, reason: String },
    /// The lab needs root for namespaces, cgroups and nftables.
    #[error("the lab needs root (namespaces, links, cgroups and nftables); run it as root")]
    NotRoot,
}

impl LabError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LabError::Io {
            operation,
            path,
            source,
        }
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
