//! Rolling updates and rollbacks, step by step on a simulated cluster.

use super::tests::{report, spec, World};
use crate::runtime::ExitStatus;
use crate::service::spec::{ServiceMode, ServiceSpec};
use crate::service::update::{FailureAction, UpdateConfig, UpdateOrder, UpdateState};
use crate::service::{DesiredState, TaskOp, TaskRecord, TaskState};
use crate::store::{Command, CommandResult};

const MONITOR_MS: u64 = 1000;

fn policy(order: UpdateOrder, parallelism: u64, action: FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms: 0,
        order,
        failure_action: action,
        monitor_ms: MONITOR_MS,
        max_failure_ratio: 0.0,
    }
}

impl World {
    fn update(&mut self, id: &str, change: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.state.services[id].spec.clone();
        change(&mut spec);
        let result = self.state.apply(Command::UpdateService {
            id: id.to_string(),
            spec: Box::new(spec),
            at_ms: self.now,
            resume: false,
            vips: None,
        });
        assert_eq!(result, CommandResult::Ok);
    }

    /// The agents report every task told to stop as stopped.
    fn agents_stop_all(&mut self) {
        let reports: Vec<TaskOp> = self
            .state
            .tasks
            .values()
            .filter(|t| {
                t.desired == DesiredState::Shutdown && !t.state.is_terminal() && t.node_id.is_some()
            })
            .map(|t| report(t, TaskState::Shutdown, None, self.now))
            .collect();
        self.state.apply(Command::Tasks(reports));
    }

    /// The agents report every assigned task of the current spec as failed.
    fn agents_fail_new(&mut self, id: &str) {
        let version = self.state.services[id].spec_version;
        let reports: Vec<TaskOp> = self
            .state
            .tasks
            .values()
            .filter(|t| t.service_version == version && t.state == TaskState::Assigned)
            .map(|t| report(t, TaskState::Failed, Some(ExitStatus::Code(3)), self.now))
            .collect();
        self.state.apply(Command::Tasks(reports));
    }

    /// The first stop-first batch: the old task stops, and its replacement fails.
    fn fail_first_batch(&mut self, id: &str) {
        self.settle();
        self.agents_stop_all();
        self.settle();
        self.agents_fail_new(id);
        self.settle();
    }

    fn state_of(&self, id: &str) -> Option<UpdateState> {
        self.state.services[id]
            .update_status
            .as_ref()
            .map(|s| s.state)
    }

    fn message(&self, id: &str) -> String {
        self.state.services[id]
            .update_status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default()
    }

    /// Running-desired tasks of the service: (on the current spec, on another).
    fn versions(&self, id: &str) -> (usize, usize) {
        let version = self.state.services[id].spec_version;
        let tasks: Vec<&TaskRecord> = self.running(id);
        let new = tasks
            .iter()
            .filter(|t| t.service_version == version)
            .count();
        (new, tasks.len() - new)
    }

    /// Agents run, stop and report; the clock moves past the monitor period; repeated until
    /// the update leaves progress or `rounds` run out.
    fn drive(&mut self, id: &str, rounds: usize) {
        for _ in 0..rounds {
            self.settle();
            self.agents_stop_all();
            self.settle();
            self.agents_run_all();
            self.now += MONITOR_MS + 1;
            self.settle();
            if !self.state_of(id).is_some_and(|s| s.in_progress()) {
                return;
            }
        }
    }
}

fn web(world: &mut World, replicas: u64, update: UpdateConfig) -> String {
    let mut spec = spec("web", ServiceMode::Replicated { replicas });
    spec.update_config = update;
    spec.rollback_config = policy(UpdateOrder::StopFirst, 0, FailureAction::Pause);
    let id = world.create(spec);
    world.settle();
    world.agents_run_all();
    world.settle();
    id
}

#[test]
fn stop_first_replaces_one_slot_at_a_time_and_never_runs_two_in_a_slot() {
    let mut world = World::new();
    let id = web(
        &mut world,
        3,
        policy(UpdateOrder::StopFirst, 1, FailureAction::Pause),
    );
    world.update(&id, |s| s.env.push("VERSION=2".into()));
    assert_eq!(world.state_of(&id), Some(UpdateState::Updating));
    world.settle();
    // One old task is told to stop; its slot gets no new task while it is still stopping.
    assert_eq!(world.versions(&id), (0, 2));
    world.agents_stop_all();
    world.settle();
    assert_eq!(
        world.versions(&id),
        (1, 2),
        "the slot's new task once the old one is gone"
    );
    // The next batch waits for the new task to run.
    world.settle();
    assert_eq!(world.versions(&id), (1, 2));
    world.agents_run_all();
    world.now += 1;
    world.settle();
    assert_eq!(
        world.versions(&id),
        (1, 2),
        "the new task is watched for `monitor` first"
    );
    world.now += MONITOR_MS;
    world.settle();
    assert_eq!(world.versions(&id), (1, 1), "the second batch began");
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
    assert_eq!(world.message(&id), "update completed");
    assert_eq!(world.versions(&id), (3, 0));
    let mut slots: Vec<u64> = world.running(&id).iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3]);
}

#[test]
fn start_first_starts_the_new_task_before_stopping_the_old_one() {
    let mut world = World::new();
    let id = web(
        &mut world,
        2,
        policy(UpdateOrder::StartFirst, 1, FailureAction::Pause),
    );
    world.update(&id, |s| s.force_update += 1);
    world.settle();
    assert_eq!(
        world.versions(&id),
        (1, 2),
        "both run in slot 1 for a while"
    );
    world.agents_run_all();
    world.settle();
    // Slot 1's old task goes once its new one runs; slot 2's new one starts after `monitor`.
    assert_eq!(world.versions(&id), (1, 1));
    world.now += MONITOR_MS;
    world.settle();
    assert_eq!(world.versions(&id), (2, 1));
    let slot1: Vec<u64> = world
        .running(&id)
        .iter()
        .map(|t| t.slot)
        .filter(|s| *s == 1)
        .collect();
    assert_eq!(slot1.len(), 1);
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
    assert_eq!(world.versions(&id), (2, 0));
}

#[test]
fn the_update_completes_only_after_the_monitor_period() {
    let mut world = World::new();
    let id = web(
        &mut world,
        1,
        policy(UpdateOrder::StartFirst, 1, FailureAction::Pause),
    );
    world.update(&id, |s| s.force_update += 1);
    world.settle();
    world.agents_run_all();
    world.settle();
    assert_eq!(world.versions(&id), (1, 0));
    // Not done while the old task still stops, nor before the new one ran for `monitor`.
    world.settle();
    assert_eq!(world.state_of(&id), Some(UpdateState::Updating));
    world.agents_stop_all();
    world.settle();
    assert_eq!(world.state_of(&id), Some(UpdateState::Updating));
    world.now += MONITOR_MS;
    world.settle();
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
}

#[test]
fn changes_that_do_not_touch_the_tasks_start_no_update() {
    let mut world = World::new();
    let id = web(&mut world, 2, UpdateConfig::default());
    world.update(&id, |s| s.mode = ServiceMode::Replicated { replicas: 3 });
    world.update(&id, |s| {
        s.labels.insert("tier".into(), "front".into());
        s.update_config.parallelism = 2;
    });
    assert_eq!(world.state_of(&id), None);
    world.settle();
    world.agents_run_all();
    world.settle();
    assert_eq!(world.versions(&id), (3, 0));
    assert!(world.state.services[&id].previous_spec.is_some());
}

#[test]
fn a_failing_update_pauses_with_the_task_and_its_error() {
    let mut world = World::new();
    let id = web(
        &mut world,
        3,
        policy(UpdateOrder::StopFirst, 1, FailureAction::Pause),
    );
    world.update(&id, |s| s.command = vec!["false".into()]);
    world.fail_first_batch(&id);
    assert_eq!(world.state_of(&id), Some(UpdateState::Paused));
    let message = world.message(&id);
    assert!(
        message.starts_with("update paused due to failure or early termination of task"),
        "{message}"
    );
    // Paused: the other two slots keep their old tasks.
    world.drive(&id, 3);
    assert_eq!(world.versions(&id).1, 2);

    // `service update` again (a fixed spec) starts a new update that completes.
    world.update(&id, |s| s.command = vec!["httpd".into()]);
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
    assert_eq!(world.versions(&id), (3, 0));
}

#[test]
fn a_paused_update_resumes_with_an_unchanged_spec() {
    let mut world = World::new();
    let id = web(
        &mut world,
        2,
        policy(UpdateOrder::StopFirst, 1, FailureAction::Pause),
    );
    world.update(&id, |s| s.force_update += 1);
    world.fail_first_batch(&id);
    assert_eq!(world.state_of(&id), Some(UpdateState::Paused));
    world.now += 1;
    let spec = world.state.services[&id].spec.clone();
    let result = world.state.apply(Command::UpdateService {
        id: id.clone(),
        spec: Box::new(spec),
        at_ms: world.now,
        resume: true,
        vips: None,
    });
    assert_eq!(result, CommandResult::Ok);
    assert_eq!(world.state_of(&id), Some(UpdateState::Updating));
    assert_eq!(world.message(&id), "update resumed");
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
}

#[test]
fn a_failing_update_rolls_back_on_its_own_and_says_why() {
    let mut world = World::new();
    let id = web(
        &mut world,
        3,
        policy(UpdateOrder::StopFirst, 1, FailureAction::Rollback),
    );
    let good = world.state.services[&id].spec.clone();
    let good_version = world.state.services[&id].spec_version;
    world.update(&id, |s| s.command = vec!["false".into()]);
    world.fail_first_batch(&id);
    assert_eq!(world.state_of(&id), Some(UpdateState::RollbackStarted));
    let service = &world.state.services[&id];
    assert_eq!(service.spec, good);
    assert_eq!(
        service.spec_version, good_version,
        "the untouched tasks are current again"
    );
    assert!(world
        .message(&id)
        .contains("update rolled back due to failure"));
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::RollbackCompleted));
    assert!(world
        .message(&id)
        .starts_with("rollback completed (update rolled back due to failure"));
    assert_eq!(world.versions(&id), (3, 0));
    for task in world.running(&id) {
        assert!(task.service_version == good_version);
    }
}

#[test]
fn a_manual_rollback_needs_a_previous_spec_and_replaces_tasks() {
    let mut world = World::new();
    let id = web(
        &mut world,
        2,
        policy(UpdateOrder::StartFirst, 0, FailureAction::Pause),
    );
    let rollback = |world: &mut World| {
        world.state.apply(Command::RollbackService {
            id: id.clone(),
            version: world.state.services[&id].version,
            at_ms: world.now,
            reason: "manually requested rollback".into(),
        })
    };
    assert!(
        matches!(rollback(&mut world), CommandResult::Refused(why) if why.contains("no previous spec"))
    );
    world.update(&id, |s| s.image = "other:latest".into());
    world.drive(&id, 1);
    assert_eq!(rollback(&mut world), CommandResult::Ok);
    assert_eq!(
        world.state.services[&id].spec.image,
        spec("web", ServiceMode::Global).image
    );
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::RollbackCompleted));
    assert_eq!(world.versions(&id), (2, 0));
    // A rollback decided on an older version of the service is refused.
    let stale = world.state.apply(Command::RollbackService {
        id: id.clone(),
        version: 1,
        at_ms: world.now,
        reason: "late".into(),
    });
    assert!(matches!(stale, CommandResult::Refused(_)));
}

#[test]
fn parallelism_zero_replaces_every_slot_at_once() {
    let mut world = World::new();
    let id = web(
        &mut world,
        3,
        policy(UpdateOrder::StopFirst, 0, FailureAction::Pause),
    );
    world.update(&id, |s| s.force_update += 1);
    world.settle();
    assert_eq!(
        world.versions(&id),
        (0, 0),
        "all three told to stop at once"
    );
    world.drive(&id, 10);
    assert_eq!(world.state_of(&id), Some(UpdateState::Completed));
    assert_eq!(world.versions(&id), (3, 0));
}
