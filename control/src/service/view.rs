//! Services and tasks as the CLI shows them, and how a name, ID or ID prefix finds one.

use serde::{Deserialize, Serialize};

use super::spec::{PortConfig, ServiceMode, ServiceSpec};
use super::{DesiredState, ServiceRecord, TaskRecord, TaskState};
use crate::runtime::{ExitStatus, Stream};
use crate::store::ClusterState;

/// A service as `service ls` and `service inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Tasks running now.
    pub running: usize,
    /// Tasks wanted.
    pub desired: usize,
    /// Image.
    pub image: String,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// Spec version.
    pub version: u64,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_ms: u64,
    /// The whole spec.
    pub spec: ServiceSpec,
    /// Its virtual IP on each network, as `network-name=ip`.
    #[serde(default)]
    pub virtual_ips: Vec<String>,
    /// The version of what its tasks run (tasks show theirs as `spec_version`).
    #[serde(default)]
    pub spec_version: u64,
    /// The spec `service rollback` returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// The update in progress or last finished, and why it is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<super::update::UpdateStatus>,
}

impl ServiceView {
    /// The view of a service, counting its tasks in `state`.
    pub fn of(service: &ServiceRecord, state: &ClusterState) -> Self {
        let current = state
            .tasks
            .values()
            .filter(|t| t.service_id == service.id && t.desired == DesiredState::Running);
        let running = current
            .clone()
            .filter(|t| t.state == TaskState::Running)
            .count();
        let (mode, desired) = match service.spec.mode {
            ServiceMode::Replicated { replicas } => ("replicated", replicas as usize),
            ServiceMode::Global => ("global", current.count()),
        };
        ServiceView {
            id: service.id.clone(),
            name: service.spec.name.clone(),
            mode: mode.into(),
            running,
            desired,
            image: service.spec.image.clone(),
            ports: service.spec.ports.clone(),
            version: service.version,
            created_ms: service.created_ms,
            updated_ms: service.updated_ms,
            spec: service.spec.clone(),
            virtual_ips: service
                .vips
                .iter()
                .map(|vip| {
                    let network = state
                        .networks
                        .get(&vip.network_id)
                        .map_or(vip.network_id.as_str(), |n| n.name.as_str());
                    format!("{network}={}", vip.ip)
                })
                .collect(),
            spec_version: service.spec_version,
            previous_spec: service.previous_spec.clone(),
            update_status: service.update_status.clone(),
        }
    }
}

/// A task as `service ps` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task ID.
    pub id: String,
    /// `service.slot`, or `service.nodeid` for a global service.
    pub name: String,
    /// Service name.
    pub service: String,
    /// Slot (0 for global).
    pub slot: u64,
    /// Image.
    pub image: String,
    /// Node name, empty while pending.
    pub node: String,
    /// Desired state.
    pub desired: DesiredState,
    /// Current state.
    pub state: TaskState,
    /// Milliseconds since the epoch of the last state change.
    pub state_ms: u64,
    /// Milliseconds since the epoch it was created.
    pub created_ms: u64,
    /// Restarts of its slot before it (0 for the first task).
    pub attempt: u64,
    /// Why it is pending or failed.
    pub error: Option<String>,
    /// How it exited.
    pub exit: Option<ExitStatus>,
    /// Its health, when its service has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<super::health::TaskHealth>,
    /// The service's spec version it runs.
    #[serde(default)]
    pub spec_version: u64,
}

impl TaskView {
    /// Its state as `service ps` shows it: `Running (healthy)` when it has a health check.
    pub fn state_text(&self) -> String {
        match self.health {
            Some(health) if self.state == TaskState::Running => {
                format!("{} ({})", self.state.as_str(), health.as_str())
            }
            _ => self.state.as_str().to_string(),
        }
    }
}

impl TaskView {
    /// The view of a task.
    pub fn of(task: &TaskRecord, state: &ClusterState) -> Self {
        let service = state.services.get(&task.service_id);
        let service_name = service.map_or_else(|| "(removed)".to_string(), |s| s.spec.name.clone());
        let node = task
            .node_id
            .and_then(|id| state.nodes.get(&id))
            .map_or_else(String::new, |n| n.name.clone());
        let name = task.name(&service_name);
        TaskView {
            id: task.id.clone(),
            name,
            service: service_name,
            slot: task.slot,
            image: service.map_or_else(String::new, |s| s.spec.image.clone()),
            node,
            desired: task.desired,
            state: task.state,
            state_ms: task.state_ms,
            created_ms: task.created_ms,
            attempt: task.attempt,
            error: task.error.clone(),
            exit: task.exit,
            health: task.health,
            spec_version: task.service_version,
        }
    }
}

/// One line of a task's output, as `service logs` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Task ID.
    pub task_id: String,
    /// Task name (`service.slot`).
    pub task_name: String,
    /// Service name.
    pub service: String,
    /// Node name.
    pub node: String,
    /// Per-task line number, from 1.
    pub seq: u64,
    /// Which stream.
    pub stream: Stream,
    /// The line.
    pub line: String,
    /// When the agent read it (milliseconds since the epoch).
    pub at_ms: u64,
}

/// Finds a service by exact name, full ID or unique ID prefix.
pub fn find_service<'a>(state: &'a ClusterState, key: &str) -> Result<&'a ServiceRecord, String> {
    if let Some(service) = state.service_named(key) {
        return Ok(service);
    }
    if let Some(service) = state.services.get(key) {
        return Ok(service);
    }
    let matches: Vec<_> = state
        .services
        .values()
        .filter(|s| key.len() >= 4 && s.id.starts_with(key))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no service {key:?}; `meshctl service ls` lists the services"
        )),
        many => Err(format!(
            "{key} matches {} services; give more of the ID",
            many.len()
        )),
    }
}
