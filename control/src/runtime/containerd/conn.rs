//! The gRPC connection to containerd: one channel, every request tagged with Mesh's namespace
//! (and, while a task is being built, its lease), and errors that name the daemon.

use std::path::PathBuf;

use containerd_client::tonic::{self, transport::Channel, Code, Status};
use containerd_client::Client;

use crate::runtime::RuntimeError;

/// A channel to containerd in one namespace.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) channel: Channel,
    pub(super) socket: PathBuf,
    pub(super) namespace: String,
}

impl Connection {
    /// A client over the shared channel (cheap: clients are handles).
    pub(super) fn client(&self) -> Client {
        Client::from(self.channel.clone())
    }

    /// A request in our namespace.
    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let namespace = self
            .namespace
            .parse()
            .expect("namespace validated at connect");
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace);
        request
    }

    /// A request in our namespace whose new resources belong to `lease`.
    pub(super) fn leased<T>(&self, message: T, lease: &str) -> tonic::Request<T> {
        let mut request = self.request(message);
        if let Ok(lease) = lease.parse() {
            request.metadata_mut().insert("containerd-lease", lease);
        }
        request
    }

    /// A refusal, naming the daemon and what was being done.
    pub(super) fn failed(&self, what: &str, status: Status) -> RuntimeError {
        RuntimeError::Failed(format!(
            "containerd at {}: {what}: {}",
            self.socket.display(),
            status.message()
        ))
    }
}

/// Whether containerd says the task (or its process) is already gone.
pub(super) fn gone(status: &Status) -> bool {
    matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
}

/// Lets an error's sources speak too (tonic's transport errors hide the cause).
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
