//! Services and their tasks: the desired state operators write and the records the
//! orchestrator, scheduler and agents keep up to date.

pub mod health;
pub mod spec;
pub mod task;
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
}
