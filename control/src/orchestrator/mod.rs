//! The orchestrator: from services and nodes to the tasks that should exist, as a pure function
//! of the store. The leader runs it a few times a second and commits what it returns; every
//! rule is unit-tested here without Raft, clocks or processes.
//!
//! One pass: retire tasks that can no longer run where they are (node down, drained or gone,
//! slot scaled away, process exited), create replacements as the restart policy allows, stop
//! the tasks of removed services, prune history, then place new tasks with the scheduler.

mod assign;
mod attach;
mod update;

use std::collections::BTreeMap;

use crate::scheduler::constraint::Constraint;
use crate::service::spec::{RestartCondition, ServiceMode};
use crate::service::update::UpdateOrder;
use crate::service::{DesiredState, ServiceRecord, TaskOp, TaskRecord, TaskState};
use crate::store::{Availability, ClusterState, Command, NodeId, NodeRecord, NodeStatus};

/// Finished tasks kept per slot for `service ps`.
pub const HISTORY_PER_SLOT: usize = 5;

/// Where a task belongs: a replica slot, or the node of a global service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Replica(u64),
    Node(NodeId),
}

fn slot_key(service: &ServiceRecord, task: &TaskRecord) -> SlotKey {
    match service.spec.mode {
        ServiceMode::Replicated { .. } => SlotKey::Replica(task.slot),
        ServiceMode::Global => SlotKey::Node(task.node_id.unwrap_or_default()),
    }
}

/// What one pass wants changed (both empty when the store already matches).
#[derive(Debug, Default)]
pub struct Changes {
    /// Task operations, for a single Raft entry.
    pub tasks: Vec<TaskOp>,
    /// Updates that moved on (progress, pause, completion, automatic rollback), one entry
    /// each, applied after the tasks.
    pub services: Vec<Command>,
}

/// The changes one pass wants.
pub fn reconcile(state: &ClusterState, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Changes {
    let mut pass = Pass {
        state,
        now_ms,
        tasks: state.tasks.clone(),
        new_id,
        services: Vec::new(),
    };
    for service in state.services.values() {
        pass.service(service);
    }
    pass.removed_services();
    pass.prune();
    attach::attach(state, &mut pass.tasks);
    assign::assign(state, &mut pass.tasks, now_ms);
    Changes {
        tasks: diff(&state.tasks, &pass.tasks),
        services: pass.services,
    }
}

struct Pass<'a> {
    state: &'a ClusterState,
    now_ms: u64,
    tasks: BTreeMap<String, TaskRecord>,
    new_id: &'a mut dyn FnMut() -> String,
    /// Service-level decisions of this pass (updates moving on).
    services: Vec<Command>,
}

/// Why a task can no longer run where it is, if it cannot.
fn node_problem(state: &ClusterState, node: Option<NodeId>) -> Option<(String, bool)> {
    let id = node?;
    match state.nodes.get(&id) {
        None => Some((format!("node {id:016x} left the cluster"), true)),
        Some(n) if n.status == NodeStatus::Down => Some((format!("node {} is down", n.name), true)),
        Some(n) if n.availability == Availability::Drain => {
            Some((format!("node {} is drained", n.name), false))
        }
        Some(_) => None,
    }
}

impl Pass<'_> {
    fn service(&mut self, service: &ServiceRecord) {
        let constraints: Vec<Constraint> = service.spec.parsed_constraints();
        let current: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.service_id == service.id && t.desired == DesiredState::Running)
            .map(|t| t.id.clone())
            .collect();
        for id in current {
            let task = &self.tasks[&id];
            let out_of_range = match service.spec.mode {
                ServiceMode::Replicated { replicas } => task.slot > replicas,
                ServiceMode::Global => task.node_id.is_some_and(|n| {
                    self.state
                        .nodes
                        .get(&n)
                        .is_some_and(|node| !satisfies(node, &constraints))
                }),
            };
            if out_of_range {
                self.retire(&id, None);
            } else if let Some((why, lost)) = node_problem(self.state, task.node_id) {
                self.retire(&id, Some((why, lost)));
            } else if task.state.is_terminal() {
                self.retire(&id, None);
            }
        }
        self.roll(service);
        let stop_first = service
            .update_status
            .as_ref()
            .is_some_and(|s| s.state.in_progress())
            && update::config(service).order == UpdateOrder::StopFirst;
        let keys: Vec<SlotKey> = match service.spec.mode {
            ServiceMode::Replicated { replicas } => (1..=replicas).map(SlotKey::Replica).collect(),
            ServiceMode::Global => self
                .state
                .nodes
                .values()
                .filter(|n| {
                    n.status == NodeStatus::Ready
                        && n.availability == Availability::Active
                        && satisfies(n, &constraints)
                        && n.description.images.contains(&service.spec.image)
                })
                .map(|n| SlotKey::Node(n.id))
                .collect(),
        };
        for key in keys {
            let mut history: Vec<&TaskRecord> = self
                .tasks
                .values()
                .filter(|t| t.service_id == service.id && slot_key(service, t) == key)
                .collect();
            if history.iter().any(|t| t.desired == DesiredState::Running) {
                continue;
            }
            // Stop-first: the slot's new task waits until the one the update stopped is gone.
            let stopping = history
                .iter()
                .any(|t| !t.state.is_terminal() && node_problem(self.state, t.node_id).is_none());
            if stop_first && stopping {
                continue;
            }
            history.sort_by_key(|t| (t.created_ms, t.id.clone()));
            let attempt = match history.last() {
                None => Some(0),
                Some(last) => self.restart_attempt(service, last),
            };
            if let Some(attempt) = attempt {
                self.add_task(service, key, attempt);
            }
        }
    }

    /// A new task of `service`'s current spec in slot `key`.
    fn add_task(&mut self, service: &ServiceRecord, key: SlotKey, attempt: u64) {
        let (slot, node) = match key {
            SlotKey::Replica(slot) => (slot, None),
            SlotKey::Node(node) => (0, Some(node)),
        };
        let task = TaskRecord {
            id: (self.new_id)(),
            service_id: service.id.clone(),
            service_version: service.spec_version,
            slot,
            node_id: node,
            desired: DesiredState::Running,
            state: if node.is_some() {
                TaskState::Assigned
            } else {
                TaskState::Pending
            },
            error: None,
            exit: None,
            created_ms: self.now_ms,
            state_ms: self.now_ms,
            attempt,
            attachments: Vec::new(),
            health: None,
        };
        self.tasks.insert(task.id.clone(), task);
    }

    /// Whether the slot whose latest task is `last` gets a new task now, and its attempt.
    fn restart_attempt(&self, service: &ServiceRecord, last: &TaskRecord) -> Option<u64> {
        // Stopped on purpose (scaled down and up again, drained, node lost): replace at once.
        if !last.state.is_terminal()
            || matches!(last.state, TaskState::Shutdown | TaskState::Orphaned)
        {
            return Some(0);
        }
        let policy = service.spec.restart;
        let wanted = match policy.condition {
            RestartCondition::Any => true,
            RestartCondition::OnFailure => last.state.is_failure(),
            RestartCondition::None => false,
        };
        if !wanted || policy.max_attempts.is_some_and(|max| last.attempt >= max) {
            return None;
        }
        (self.now_ms >= last.state_ms.saturating_add(policy.delay_ms)).then_some(last.attempt + 1)
    }

    /// Tells a task to stop. A task on a lost node cannot report again: it is marked Orphaned.
    fn retire(&mut self, id: &str, problem: Option<(String, bool)>) {
        let now = self.now_ms;
        let task = self.tasks.get_mut(id).expect("retire a known task");
        task.desired = DesiredState::Shutdown;
        if task.node_id.is_none() && !task.state.is_terminal() {
            // Never placed: there is nothing to stop.
            task.state = TaskState::Shutdown;
            task.state_ms = now;
        }
        if let Some((why, lost)) = problem {
            if lost && !task.state.is_terminal() {
                task.state = TaskState::Orphaned;
                task.state_ms = now;
            }
            if task.error.is_none() {
                task.error = Some(why);
            }
        }
    }

    fn removed_services(&mut self) {
        let state = self.state;
        let gone: Vec<String> = self
            .tasks
            .values()
            .filter(|t| !state.services.contains_key(&t.service_id))
            .filter(|t| {
                t.state.is_terminal()
                    || node_problem(state, t.node_id).is_some_and(|p| p.1)
                    || t.node_id.is_none()
            })
            .map(|t| t.id.clone())
            .collect();
        for id in gone {
            self.tasks.remove(&id);
        }
        for task in self.tasks.values_mut() {
            if !state.services.contains_key(&task.service_id) {
                task.desired = DesiredState::Shutdown;
            }
        }
    }

    /// Keeps the newest finished tasks of each slot; a scaled-away slot keeps none.
    fn prune(&mut self) {
        let mut finished: BTreeMap<(String, SlotKey), Vec<(u64, String)>> = BTreeMap::new();
        for task in self.tasks.values() {
            let Some(service) = self.state.services.get(&task.service_id) else {
                continue;
            };
            if task.desired == DesiredState::Shutdown && task.state.is_terminal() {
                finished
                    .entry((service.id.clone(), slot_key(service, task)))
                    .or_default()
                    .push((task.created_ms, task.id.clone()));
            }
        }
        for ((service_id, key), mut done) in finished {
            let service = &self.state.services[&service_id];
            let keep = match (service.spec.mode, key) {
                (ServiceMode::Replicated { replicas }, SlotKey::Replica(slot))
                    if slot > replicas =>
                {
                    0
                }
                _ => HISTORY_PER_SLOT,
            };
            done.sort();
            let excess = done.len().saturating_sub(keep);
            for (_, id) in done.into_iter().take(excess) {
                self.tasks.remove(&id);
            }
        }
    }
}

/// Whether a node meets every constraint.
pub fn satisfies(node: &NodeRecord, constraints: &[Constraint]) -> bool {
    let candidate = assign::candidate_of(node);
    constraints
        .iter()
        .all(|c| crate::scheduler::holds(c, &candidate))
}

fn diff(
    before: &BTreeMap<String, TaskRecord>,
    after: &BTreeMap<String, TaskRecord>,
) -> Vec<TaskOp> {
    let mut ops: Vec<TaskOp> = after
        .iter()
        .filter(|(id, task)| before.get(*id) != Some(task))
        .map(|(_, task)| TaskOp::Put(task.clone()))
        .collect();
    ops.extend(
        before
            .keys()
            .filter(|id| !after.contains_key(*id))
            .map(|id| TaskOp::Delete(id.clone())),
    );
    ops
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;
