//! Services and their tasks: the desired state operators write and the records the
//! orchestrator, scheduler and agents keep up to date.

pub mod health;
pub mod spec;
pub mod task;
pub mod update;
pub mod view;

use serde::{Deserialize, Serialize};

pub use spec::ServiceSpec;
pub use task::{DesiredState, TaskOp, TaskRecord, TaskReport, TaskState};

/// A service in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// 25 lowercase alphanumerics.
    pub id: String,
    /// What the operator asked for.
    pub spec: ServiceSpec,
    /// Bumped by every change of the spec.
    pub version: u64,
    /// Milliseconds since the epoch it was created (leader's clock).
    pub created_ms: u64,
    /// When the spec last changed.
    pub updated_ms: u64,
    /// Its virtual IP on each network (endpoint mode vip): DNS answers the service name with
    /// it, and the load balancer spreads connections to it over the healthy tasks.
    #[serde(default)]
    pub vips: Vec<crate::network::Attachment>,
    /// The `version` at which what the tasks run last changed: tasks record the one they were
    /// created with, and an update replaces those that differ.
    #[serde(default)]
    pub spec_version: u64,
    /// The spec before the last change (`service rollback` returns to it), and its
    /// `spec_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    #[serde(default)]
    pub previous_spec_version: u64,
    /// The update in progress or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<update::UpdateStatus>,
}

impl ServiceRecord {
    /// A new service (version 1) created at `at_ms`, without VIPs yet.
    pub fn new(id: String, spec: ServiceSpec, at_ms: u64) -> Self {
        ServiceRecord {
            id,
            spec,
            version: 1,
            created_ms: at_ms,
            updated_ms: at_ms,
            vips: Vec::new(),
            spec_version: 1,
            previous_spec: None,
            previous_spec_version: 0,
            update_status: None,
        }
    }
}
