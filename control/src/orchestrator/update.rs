//! Rolling updates and rollbacks, one step per pass: replace the tasks whose spec version is
//! not the service's, a batch at a time, in the policy's order; watch the new ones; pause,
//! roll back or go on when they fail; say when it is done.
//!
//! A batch starts when every task of the update so far runs (and is healthy, when the service
//! has a health check), and `monitor` and then `delay` have passed since the last became
//! ready: a task that runs for a moment and fails is caught before the next batch. The update
//! is complete once no slot runs an old task and the last new one has run for `monitor`.

use std::collections::BTreeMap;

use super::{slot_key, Pass, SlotKey};
use crate::service::health::TaskHealth;
use crate::service::spec::ServiceMode;
use crate::service::update::{FailureAction, UpdateConfig, UpdateOrder, UpdateState};
use crate::service::{DesiredState, ServiceRecord, TaskRecord, TaskState};
use crate::store::Command;

/// The policy the service's update in progress follows: its rollback policy while rolling
/// back.
pub(super) fn config(service: &ServiceRecord) -> UpdateConfig {
    match &service.update_status {
        Some(status) if status.state.is_rollback() => service.spec.rollback_config,
        _ => service.spec.update_config,
    }
}

/// Whether a task of the current spec counts as up: it runs, and passes its health check if
/// the service has one.
fn ready(service: &ServiceRecord, task: &TaskRecord) -> bool {
    task.state == TaskState::Running
        && (service.spec.healthcheck.is_none() || task.health == Some(TaskHealth::Healthy))
}

/// Whether a task of the update failed: it exited, could not start, or turned unhealthy.
fn failed(task: &TaskRecord) -> bool {
    matches!(
        task.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) || task.health == Some(TaskHealth::Unhealthy)
}

/// Old (other spec version) and new tasks meant to run, per slot.
#[derive(Default)]
struct Slot {
    old: Vec<String>,
    new: Vec<String>,
}

impl Pass<'_> {
    /// One step of the service's update, if one is in progress.
    pub(super) fn roll(&mut self, service: &ServiceRecord) {
        let Some(status) = service
            .update_status
            .as_ref()
            .filter(|s| s.state.in_progress())
        else {
            return;
        };
        let rollback = status.state.is_rollback();
        let config = config(service);
        let version = service.spec_version;
        // A copy: the step below changes tasks as it goes.
        let ours: Vec<TaskRecord> = self
            .tasks
            .values()
            .filter(|t| t.service_id == service.id)
            .cloned()
            .collect();
        let mut slots: BTreeMap<SlotKey, Slot> = BTreeMap::new();
        for task in ours.iter().filter(|t| t.desired == DesiredState::Running) {
            let slot = slots.entry(slot_key(service, task)).or_default();
            if task.service_version == version {
                slot.new.push(task.id.clone());
            } else {
                slot.old.push(task.id.clone());
            }
        }
        // This update's tasks: created since it started, with its spec.
        let mine: Vec<&TaskRecord> = ours
            .iter()
            .filter(|t| t.service_version == version && t.created_ms >= status.started_ms)
            .collect();

        let failures: Vec<&TaskRecord> = mine.iter().copied().filter(|t| failed(t)).collect();
        let total = match service.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global => slots.len() as u64,
        }
        .max(1);
        let ratio = failures.len() as f64 / total as f64;
        if config.failure_action != FailureAction::Continue
            && !failures.is_empty()
            && ratio > config.max_failure_ratio
        {
            let task = failures
                .iter()
                .max_by_key(|t| (t.state_ms, t.id.clone()))
                .expect("not empty");
            let why = task
                .error
                .clone()
                .unwrap_or_else(|| task.state.as_str().to_lowercase());
            let what = if rollback { "rollback" } else { "update" };
            let cause = format!("failure or early termination of task {}: {why}", task.id);
            let command = if config.failure_action == FailureAction::Rollback && !rollback {
                Command::RollbackService {
                    id: service.id.clone(),
                    version: service.version,
                    at_ms: self.now_ms,
                    reason: format!("update rolled back due to {cause}"),
                }
            } else {
                let state = if rollback {
                    UpdateState::RollbackPaused
                } else {
                    UpdateState::Paused
                };
                Command::UpdateProgress {
                    id: service.id.clone(),
                    version: service.version,
                    status: status.finished(
                        state,
                        self.now_ms,
                        format!("{what} paused due to {cause}"),
                    ),
                }
            };
            self.services.push(command);
            return;
        }

        // Start-first slots: the old task goes once its successor is up.
        let mut busy = false;
        for slot in slots
            .values()
            .filter(|s| !s.old.is_empty() && !s.new.is_empty())
        {
            if slot.new.iter().any(|id| ready(service, &self.tasks[id])) {
                for id in &slot.old {
                    self.retire(id, None);
                }
            } else {
                busy = true;
            }
        }
        let mut last_ready: Option<u64> = None;
        for task in mine.iter().filter(|t| t.desired == DesiredState::Running) {
            if ready(service, task) {
                last_ready = Some(last_ready.map_or(task.state_ms, |l| l.max(task.state_ms)));
            } else {
                busy = true;
            }
        }
        // Old tasks still stopping: a stop-first slot's new task waits for its old one (the
        // pass creates it once that is gone); start-first batches go on meanwhile, and the
        // update completes once they are all gone.
        let stopping = ours.iter().any(|t| {
            t.desired == DesiredState::Shutdown
                && t.service_version != version
                && !t.state.is_terminal()
        });
        let wanted = match service.spec.mode {
            ServiceMode::Replicated { replicas } => replicas as usize,
            ServiceMode::Global => slots.len(),
        };
        if busy || (stopping && config.order == UpdateOrder::StopFirst) || slots.len() < wanted {
            return;
        }

        let outdated: Vec<SlotKey> = slots
            .iter()
            .filter(|(_, s)| s.new.is_empty())
            .map(|(key, _)| *key)
            .collect();
        if outdated.is_empty() {
            let settled = last_ready.map_or(0, |t| t.saturating_add(config.monitor_ms));
            if self.now_ms >= settled && !stopping {
                let (state, message) = if rollback {
                    (
                        UpdateState::RollbackCompleted,
                        format!("rollback completed ({})", status.message),
                    )
                } else {
                    (UpdateState::Completed, "update completed".to_string())
                };
                self.services.push(Command::UpdateProgress {
                    id: service.id.clone(),
                    version: service.version,
                    status: status.finished(state, self.now_ms, message),
                });
            }
            return;
        }
        // The last batch is watched for `monitor` (a task may run for a moment and then
        // fail), and the next waits `delay` more.
        let next_batch = |t: u64| {
            t.saturating_add(config.monitor_ms)
                .saturating_add(config.delay_ms)
        };
        if last_ready.is_some_and(|t| self.now_ms < next_batch(t)) {
            return;
        }
        let batch = match config.parallelism {
            0 => outdated.len(),
            n => (n as usize).min(outdated.len()),
        };
        for key in outdated.into_iter().take(batch) {
            match config.order {
                UpdateOrder::StopFirst => {
                    for id in &slots[&key].old {
                        self.retire(id, None);
                    }
                }
                UpdateOrder::StartFirst => self.add_task(service, key, 0),
            }
        }
    }
}
