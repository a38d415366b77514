//! How a service's tasks are replaced when what they run changes: the update and rollback
//! policies an operator sets (`--update-*`, `--rollback-*`), and the status of the update in
//! progress that `service inspect` shows.

use serde::{Deserialize, Serialize};

use super::spec::{duration_flag, ServiceSpec};
use super::ServiceRecord;

/// Which task of a slot goes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (the slot is empty in between).
    #[default]
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs (and is healthy).
    StartFirst,
}

/// What an update does when its new tasks fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Stop replacing tasks; `service update` resumes.
    #[default]
    Pause,
    /// Go on replacing tasks.
    Continue,
    /// Go back to the previous spec (a rollback that fails pauses).
    Rollback,
}

/// One update (or rollback) policy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0 replaces them all at once.
    pub parallelism: u64,
    /// Wait between one batch being ready and the next starting.
    pub delay_ms: u64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
    /// What a failure does.
    pub failure_action: FailureAction,
    /// How long a new task is watched after it starts before the update counts it done.
    pub monitor_ms: u64,
    /// Share of failed tasks tolerated (0 to 1) before `failure_action` applies.
    pub max_failure_ratio: f64,
}

impl Default for UpdateConfig {
    /// Docker's defaults: one task at a time, stop-first, pause on failure, 5 s of watching.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5000,
            max_failure_ratio: 0.0,
        }
    }
}

impl UpdateConfig {
    /// Checks the ratio (the rest cannot be wrong once parsed).
    pub fn validate(&self, flags: &str) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_failure_ratio) || self.max_failure_ratio.is_nan() {
            return Err(format!(
                "--{flags}-max-failure-ratio {} is not between 0 and 1",
                self.max_failure_ratio
            ));
        }
        Ok(())
    }
}

/// Where an update is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced with the new spec.
    Updating,
    /// Stopped after failures; `service update` resumes it.
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Tasks are being replaced with the previous spec.
    RollbackStarted,
    /// A rollback stopped after failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Whether tasks are being replaced now.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// Whether this is (the end of) a rollback.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }

    /// Whether the update stopped on a failure.
    pub fn is_paused(self) -> bool {
        matches!(self, UpdateState::Paused | UpdateState::RollbackPaused)
    }
}

/// The update in progress or last finished, as `service inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it is.
    pub state: UpdateState,
    /// When it started (leader's clock, ms since the epoch).
    pub started_ms: u64,
    /// When it completed, paused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
    /// Why it is where it is.
    pub message: String,
}

impl UpdateStatus {
    /// A new update or rollback, started at `at_ms`.
    pub fn started(state: UpdateState, at_ms: u64, message: impl Into<String>) -> Self {
        UpdateStatus {
            state,
            started_ms: at_ms,
            completed_ms: None,
            message: message.into(),
        }
    }

    /// This one, moved on to `state` at `at_ms`.
    pub fn finished(&self, state: UpdateState, at_ms: u64, message: impl Into<String>) -> Self {
        UpdateStatus {
            state,
            started_ms: self.started_ms,
            completed_ms: Some(at_ms),
            message: message.into(),
        }
    }
}

/// Sets a service's new spec (at `at_ms`): the old one becomes the previous spec, and when what
/// the tasks run changed, an update starts. `resume` restarts a paused update (or rollback)
/// whose spec did not change.
pub fn change_spec(service: &mut ServiceRecord, spec: ServiceSpec, at_ms: u64, resume: bool) {
    let same_tasks = spec.same_tasks(&service.spec);
    if spec != service.spec {
        service.previous_spec = Some(std::mem::replace(&mut service.spec, spec));
        service.previous_spec_version = service.spec_version;
    }
    service.version += 1;
    service.updated_ms = at_ms;
    if !same_tasks {
        service.spec_version = service.version;
        service.update_status = Some(UpdateStatus::started(
            UpdateState::Updating,
            at_ms,
            "update in progress",
        ));
        return;
    }
    let paused = service.update_status.as_ref().map(|s| s.state);
    if resume {
        if let Some(state) = paused.filter(|s| s.is_paused()) {
            let (state, message) = if state.is_rollback() {
                (UpdateState::RollbackStarted, "rollback resumed")
            } else {
                (UpdateState::Updating, "update resumed")
            };
            service.update_status = Some(UpdateStatus::started(state, at_ms, message));
        }
    }
}

/// Puts a service back on its previous spec (which becomes the previous one in turn), and
/// starts replacing its tasks when they differ. Fails when there is no previous spec.
pub fn roll_back(service: &mut ServiceRecord, at_ms: u64, reason: String) -> Result<(), String> {
    let Some(previous) = service.previous_spec.take() else {
        return Err(format!(
            "service {} has no previous spec to roll back to (it was never updated)",
            service.spec.name
        ));
    };
    let same_tasks = previous.same_tasks(&service.spec);
    service.previous_spec = Some(std::mem::replace(&mut service.spec, previous));
    std::mem::swap(
        &mut service.spec_version,
        &mut service.previous_spec_version,
    );
    service.version += 1;
    service.updated_ms = at_ms;
    let started = UpdateStatus::started(UpdateState::RollbackStarted, at_ms, reason);
    service.update_status = Some(if same_tasks {
        started.finished(UpdateState::RollbackCompleted, at_ms, "rollback completed")
    } else {
        started
    });
    Ok(())
}

/// The `--update-*` or `--rollback-*` flags of `service create` and `service update`, each
/// optional: what is not given keeps its value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyFlags {
    pub parallelism: Option<u64>,
    pub delay: Option<String>,
    pub order: Option<UpdateOrder>,
    pub failure_action: Option<FailureAction>,
    pub monitor: Option<String>,
    pub max_failure_ratio: Option<f64>,
}

impl PolicyFlags {
    /// `base` with these flags applied; `prefix` is `update` or `rollback`, for messages.
    pub fn apply(&self, base: UpdateConfig, prefix: &str) -> Result<UpdateConfig, String> {
        let duration = |flag: &str, value: &Option<String>, old: u64| {
            duration_flag(&format!("--{prefix}-{flag}"), value.as_deref(), old)
        };
        let config = UpdateConfig {
            parallelism: self.parallelism.unwrap_or(base.parallelism),
            delay_ms: duration("delay", &self.delay, base.delay_ms)?,
            order: self.order.unwrap_or(base.order),
            failure_action: self.failure_action.unwrap_or(base.failure_action),
            monitor_ms: duration("monitor", &self.monitor, base.monitor_ms)?,
            max_failure_ratio: self.max_failure_ratio.unwrap_or(base.max_failure_ratio),
        };
        if prefix == "rollback" && config.failure_action == FailureAction::Rollback {
            return Err(
                "--rollback-failure-action rollback: a rollback cannot roll back; use pause or continue"
                    .into(),
            );
        }
        config.validate(prefix)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_change_only_what_they_name() {
        let flags = PolicyFlags {
            parallelism: Some(2),
            delay: Some("1s".into()),
            order: Some(UpdateOrder::StartFirst),
            ..PolicyFlags::default()
        };
        let config = flags.apply(UpdateConfig::default(), "update").unwrap();
        assert_eq!(config.parallelism, 2);
        assert_eq!(config.delay_ms, 1000);
        assert_eq!(config.order, UpdateOrder::StartFirst);
        assert_eq!(config.failure_action, FailureAction::Pause);
        assert_eq!(config.monitor_ms, 5000);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let ratio = PolicyFlags {
            max_failure_ratio: Some(1.5),
            ..PolicyFlags::default()
        };
        let err = ratio.apply(UpdateConfig::default(), "update").unwrap_err();
        assert!(err.contains("--update-max-failure-ratio"), "{err}");
        let delay = PolicyFlags {
            delay: Some("soon".into()),
            ..PolicyFlags::default()
        };
        let err = delay
            .apply(UpdateConfig::default(), "rollback")
            .unwrap_err();
        assert!(err.contains("--rollback-delay"), "{err}");
        let rollback = PolicyFlags {
            failure_action: Some(FailureAction::Rollback),
            ..PolicyFlags::default()
        };
        assert!(rollback.apply(UpdateConfig::default(), "rollback").is_err());
        assert!(rollback.apply(UpdateConfig::default(), "update").is_ok());
    }

    #[test]
    fn states_say_what_they_are() {
        assert!(UpdateState::Updating.in_progress());
        assert!(UpdateState::RollbackStarted.in_progress());
        assert!(!UpdateState::Paused.in_progress());
        assert!(
            UpdateState::RollbackPaused.is_rollback() && UpdateState::RollbackPaused.is_paused()
        );
        assert!(!UpdateState::Completed.is_paused());
        let status = UpdateStatus::started(UpdateState::Updating, 10, "update in progress");
        let done = status.finished(UpdateState::Completed, 20, "update completed");
        assert_eq!((done.started_ms, done.completed_ms), (10, Some(20)));
    }
}
