//! Tasks: one running instance of a service on one node, and the states it goes through.

use serde::{Deserialize, Serialize};

use crate::runtime::ExitStatus;
use crate::store::NodeId;

/// Where a task is in its life. The order matters: a task only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a node that fits.
    Pending,
    /// Given to a node; its agent has not picked it up yet.
    Assigned,
    /// The agent prepares its namespace.
    Preparing,
    /// The runtime starts it.
    Starting,
    /// Its process runs.
    Running,
    /// It exited with code 0.
    Complete,
    /// It exited with a non-zero code or was killed.
    Failed,
    /// The agent could not start it (e.g. no such image).
    Rejected,
    /// It was stopped on purpose.
    Shutdown,
    /// Its node went down or left; its fate is unknown.
    Orphaned,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Whether it ended badly (restart-policy `on-failure` restarts these).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            TaskState::Failed | TaskState::Rejected | TaskState::Orphaned
        )
    }

    /// The name `service ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Preparing => "Preparing",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Shutdown => "Shutdown",
            TaskState::Orphaned => "Orphaned",
        }
    }
}

/// What the managers want of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Run it.
    Running,
    /// Stop it (it is kept for history until pruned).
    Shutdown,
}

/// One task in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// 25 lowercase alphanumerics.
    pub id: String,
    /// Its service's ID.
    pub service_id: String,
    /// The service's `spec_version` it was created with (what it runs).
    pub service_version: u64,
    /// 1.. for replicated services; 0 for global ones (whose slot is their node).
    pub slot: u64,
    /// Where it runs; None while pending.
    pub node_id: Option<NodeId>,
    /// What the managers want.
    pub desired: DesiredState,
    /// What the agent last reported (or the scheduler decided).
    pub state: TaskState,
    /// Why it is pending, failed or was stopped.
    pub error: Option<String>,
    /// How its process ended.
    pub exit: Option<ExitStatus>,
    /// Milliseconds since the epoch it was created (leader's clock).
    pub created_ms: u64,
    /// When its state last changed.
    pub state_ms: u64,
    /// 0 for a slot's first task, then +1 for each restart after an exit.
    #[serde(default)]
    pub attempt: u64,
    /// Its address on each network of its service, once allocated.
    #[serde(default)]
    pub attachments: Vec<crate::network::Attachment>,
    /// Its health while it runs, when its service has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<super::health::TaskHealth>,
}

impl TaskRecord {
    /// Its name: `service.slot`, or `service.node-id` for a global service's task.
    pub fn name(&self, service_name: &str) -> String {
        if self.slot > 0 {
            format!("{service_name}.{}", self.slot)
        } else {
            let node = self
                .node_id
                .map_or_else(String::new, crate::api::format_node_id);
            format!("{service_name}.{node}")
        }
    }
}

/// A change to the tasks, batched in one Raft entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskOp {
    /// Create or replace a task.
    Put(TaskRecord),
    /// Forget a task.
    Delete(String),
    /// An agent's report of a task's state.
    Report(TaskReport),
}

/// What an agent says about one of its tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task_id: String,
    /// The node reporting (must be the task's node).
    pub node_id: NodeId,
    /// Its state now.
    pub state: TaskState,
    /// Why, when it failed or was rejected.
    pub error: Option<String>,
    /// How it exited.
    pub exit: Option<ExitStatus>,
    /// When the leader recorded it (the dispatcher sets it; agents' clocks are not trusted).
    #[serde(default)]
    pub at_ms: u64,
    /// Its health, when its service has a health check and it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<super::health::TaskHealth>,
}

impl TaskReport {
    /// Whether it tells the store something new about `task`: a later state, or a new health
    /// in the same state.
    pub fn is_news(&self, task: &TaskRecord) -> bool {
        self.state > task.state || (self.state == task.state && self.health != task.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_come_after_running() {
        assert!(!TaskState::Running.is_terminal());
        for state in [
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Rejected,
            TaskState::Shutdown,
            TaskState::Orphaned,
        ] {
            assert!(state.is_terminal(), "{state:?}");
        }
        assert!(TaskState::Failed.is_failure() && !TaskState::Complete.is_failure());
    }
}
