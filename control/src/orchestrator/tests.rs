use std::collections::BTreeMap;

use super::*;
use crate::runtime::{ExitStatus, Limits};
use crate::service::spec::{RestartPolicy, ServiceSpec};
use crate::service::TaskReport;
use crate::store::{Command, NodeDescription, Role};

const IMAGE: &str = "mesh-test:latest";

fn node(id: NodeId, name: &str, role: Role) -> NodeRecord {
    NodeRecord {
        id,
        name: name.into(),
        addr: format!("198.18.0.{id}:2377"),
        role,
        availability: if role == Role::Manager {
            Availability::Drain
        } else {
            Availability::Active
        },
        labels: BTreeMap::new(),
        status: NodeStatus::Ready,
        version: "0.1.0".into(),
        description: NodeDescription {
            runtime: "process".into(),
            nano_cpus: 2_000_000_000,
            memory_bytes: 4 << 30,
            images: vec![IMAGE.into()],
            underlay_mtu: 1500,
            gossip_port: 7946,
        },
    }
}

pub(super) fn spec(name: &str, mode: ServiceMode) -> ServiceSpec {
    ServiceSpec {
        mode,
        restart: RestartPolicy {
            delay_ms: 0,
            ..Default::default()
        },
        ..crate::service::spec::tests::spec(name)
    }
}

/// A cluster of 3 drained managers (1-3) and 3 workers (4-6), and a clock.
pub(super) struct World {
    pub(super) state: ClusterState,
    pub(super) now: u64,
    next_id: u64,
}

impl World {
    pub(super) fn new() -> Self {
        let mut state = ClusterState::default();
        for (id, name, role) in [
            (1, "m1", Role::Manager),
            (2, "m2", Role::Manager),
            (3, "m3", Role::Manager),
            (4, "w1", Role::Worker),
            (5, "w2", Role::Worker),
            (6, "w3", Role::Worker),
        ] {
            state.apply(Command::AddNode(node(id, name, role)));
        }
        World {
            state,
            now: 1_000,
            next_id: 0,
        }
    }

    pub(super) fn create(&mut self, spec: ServiceSpec) -> String {
        let id = format!("svc-{}", spec.name);
        let result = self
            .state
            .apply(Command::CreateService(Box::new(ServiceRecord::new(
                id.clone(),
                spec,
                self.now,
            ))));
        assert_eq!(result, crate::store::CommandResult::Ok);
        id
    }

    /// One orchestrator pass, committed; returns how many operations it made.
    pub(super) fn pass(&mut self) -> usize {
        let next = &mut self.next_id;
        let mut new_id = || {
            *next += 1;
            format!("task{:03}", *next)
        };
        let changes = reconcile(&self.state, self.now, &mut new_id);
        let count = changes.tasks.len() + changes.services.len();
        if !changes.tasks.is_empty() {
            self.state.apply(Command::Tasks(changes.tasks));
        }
        for command in changes.services {
            assert_eq!(self.state.apply(command), crate::store::CommandResult::Ok);
        }
        count
    }

    /// Passes until nothing changes; a pass that never settles is a bug.
    pub(super) fn settle(&mut self) {
        for _ in 0..10 {
            if self.pass() == 0 {
                return;
            }
        }
        panic!("the orchestrator does not converge");
    }

    /// The agents run every assigned task.
    pub(super) fn agents_run_all(&mut self) {
        let reports: Vec<TaskOp> = self
            .state
            .tasks
            .values()
            .filter(|t| t.desired == DesiredState::Running && t.state == TaskState::Assigned)
            .map(|t| report(t, TaskState::Running, None, self.now))
            .collect();
        self.state.apply(Command::Tasks(reports));
    }

    pub(super) fn running(&self, service: &str) -> Vec<&TaskRecord> {
        self.state
            .tasks
            .values()
            .filter(|t| t.service_id == service && t.desired == DesiredState::Running)
            .collect()
    }

    fn per_node(&self, service: &str) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for task in self.running(service) {
            *counts.entry(task.node_id.unwrap_or(0)).or_default() += 1;
        }
        counts
    }

    fn set_status(&mut self, id: NodeId, status: NodeStatus) {
        self.state.apply(Command::SetStatus { id, status });
    }

    fn set_availability(&mut self, id: NodeId, availability: Availability) {
        self.state.apply(Command::UpdateNode {
            id,
            availability: Some(availability),
            label_add: BTreeMap::new(),
            label_rm: vec![],
        });
    }
}

pub(super) fn report(
    task: &TaskRecord,
    state: TaskState,
    exit: Option<ExitStatus>,
    at_ms: u64,
) -> TaskOp {
    TaskOp::Report(TaskReport {
        task_id: task.id.clone(),
        node_id: task.node_id.expect("assigned"),
        state,
        error: None,
        exit,
        at_ms,
        health: None,
    })
}

#[test]
fn six_replicas_spread_two_per_worker_when_managers_are_drained() {
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 6 }));
    world.settle();
    assert_eq!(
        world.per_node(&web),
        BTreeMap::from([(4, 2), (5, 2), (6, 2)])
    );
    let slots: Vec<u64> = world.running(&web).iter().map(|t| t.slot).collect();
    let mut sorted = slots.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_settled_store_gives_no_changes() {
    let mut world = World::new();
    world.create(spec("web", ServiceMode::Replicated { replicas: 3 }));
    world.settle();
    world.agents_run_all();
    assert_eq!(world.pass(), 0);
}

#[test]
fn a_down_node_loses_its_tasks_to_the_others() {
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 6 }));
    world.settle();
    world.agents_run_all();
    world.set_status(5, NodeStatus::Down);
    world.settle();
    assert_eq!(world.per_node(&web), BTreeMap::from([(4, 3), (6, 3)]));
    let orphaned: Vec<_> = world
        .state
        .tasks
        .values()
        .filter(|t| t.node_id == Some(5))
        .collect();
    assert_eq!(orphaned.len(), 2);
    for task in orphaned {
        assert_eq!(task.state, TaskState::Orphaned);
        assert_eq!(task.desired, DesiredState::Shutdown);
        assert_eq!(task.error.as_deref(), Some("node w2 is down"));
    }
}

#[test]
fn a_drained_node_is_emptied_and_a_paused_one_gets_nothing_new() {
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 3 }));
    world.settle();
    world.agents_run_all();
    world.set_availability(4, Availability::Drain);
    world.set_availability(5, Availability::Pause);
    world.settle();
    // w1's task is told to stop (its agent reports when it has), and runs again on w3: w2 is
    // paused, so it keeps its task but gets no new one.
    assert_eq!(world.per_node(&web), BTreeMap::from([(5, 1), (6, 2)]));
    let drained: Vec<_> = world
        .state
        .tasks
        .values()
        .filter(|t| t.node_id == Some(4))
        .collect();
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].desired, DesiredState::Shutdown);
    assert_eq!(drained[0].state, TaskState::Running, "the agent stops it");
}

#[test]
fn an_unsatisfiable_constraint_stays_pending_until_a_node_fits() {
    let mut world = World::new();
    let web = world.create(ServiceSpec {
        constraints: vec!["node.labels.zone==east".into()],
        ..spec("web", ServiceMode::Replicated { replicas: 2 })
    });
    world.settle();
    let pending = world.running(&web);
    assert_eq!(pending.len(), 2);
    for task in &pending {
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(
            task.error.as_deref(),
            Some("no suitable node: 3 nodes fail node.labels.zone==east, 3 nodes down, paused or drained")
        );
    }
    world.state.apply(Command::UpdateNode {
        id: 6,
        availability: None,
        label_add: [("zone".to_string(), "east".to_string())].into(),
        label_rm: vec![],
    });
    world.settle();
    assert_eq!(world.per_node(&web), BTreeMap::from([(6, 2)]));
    assert!(world.running(&web).iter().all(|t| t.error.is_none()));
}

#[test]
fn exited_tasks_restart_after_the_delay_and_within_the_attempts() {
    let mut world = World::new();
    let job = world.create(ServiceSpec {
        restart: RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 2_000,
            max_attempts: Some(2),
        },
        ..spec("job", ServiceMode::Replicated { replicas: 1 })
    });
    world.settle();
    world.agents_run_all();
    for attempt in 0..=2 {
        let task = world.running(&job)[0].clone();
        assert_eq!(task.attempt, attempt);
        let exit = report(
            &task,
            TaskState::Failed,
            Some(ExitStatus::Code(1)),
            world.now,
        );
        world.state.apply(Command::Tasks(vec![exit]));
        world.settle();
        assert!(world.running(&job).is_empty(), "restarted before the delay");
        world.now += 1_999;
        world.settle();
        assert!(world.running(&job).is_empty(), "restarted before the delay");
        world.now += 1;
        world.settle();
        if attempt < 2 {
            assert_eq!(
                world.running(&job).len(),
                1,
                "attempt {attempt} not restarted"
            );
            world.agents_run_all();
        }
    }
    assert!(
        world.running(&job).is_empty(),
        "restarted past max attempts"
    );
}

#[test]
fn on_failure_leaves_a_clean_exit_alone_and_none_never_restarts() {
    for (condition, exit, state, restarts) in [
        (RestartCondition::OnFailure, 0, TaskState::Complete, false),
        (RestartCondition::None, 1, TaskState::Failed, false),
        (RestartCondition::Any, 0, TaskState::Complete, true),
    ] {
        let mut world = World::new();
        let job = world.create(ServiceSpec {
            restart: RestartPolicy {
                condition,
                delay_ms: 0,
                max_attempts: None,
            },
            ..spec("job", ServiceMode::Replicated { replicas: 1 })
        });
        world.settle();
        world.agents_run_all();
        let task = world.running(&job)[0].clone();
        let done = report(&task, state, Some(ExitStatus::Code(exit)), world.now);
        world.state.apply(Command::Tasks(vec![done]));
        world.settle();
        assert_eq!(!world.running(&job).is_empty(), restarts, "{condition:?}");
    }
}

#[test]
fn global_services_run_once_per_eligible_node_including_later_ones() {
    let mut world = World::new();
    let agent = world.create(spec("agent", ServiceMode::Global));
    world.settle();
    assert_eq!(
        world.per_node(&agent),
        BTreeMap::from([(4, 1), (5, 1), (6, 1)])
    );
    assert!(world
        .running(&agent)
        .iter()
        .all(|t| t.state == TaskState::Assigned));
    world
        .state
        .apply(Command::AddNode(node(7, "w4", Role::Worker)));
    world.set_availability(4, Availability::Drain);
    world.settle();
    assert_eq!(
        world.per_node(&agent),
        BTreeMap::from([(5, 1), (6, 1), (7, 1)])
    );
}

#[test]
fn scaling_down_stops_the_highest_slots_and_removing_stops_all() {
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 4 }));
    world.settle();
    world.agents_run_all();
    let mut spec2 = world.state.services[&web].spec.clone();
    spec2.mode = ServiceMode::Replicated { replicas: 2 };
    world.state.apply(Command::UpdateService {
        id: web.clone(),
        spec: Box::new(spec2),
        at_ms: world.now,
        resume: false,
        vips: None,
    });
    world.settle();
    let mut slots: Vec<u64> = world.running(&web).iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2]);
    // Once the agents report the stopped tasks, they are forgotten.
    let stopped: Vec<TaskOp> = world
        .state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Shutdown)
        .map(|t| report(t, TaskState::Shutdown, None, world.now))
        .collect();
    assert_eq!(stopped.len(), 2);
    world.state.apply(Command::Tasks(stopped));
    world.settle();
    assert_eq!(world.state.tasks.len(), 2);

    world
        .state
        .apply(Command::RemoveService { id: web.clone() });
    world.settle();
    assert!(world.running(&web).is_empty());
    assert_eq!(
        world.state.tasks.len(),
        2,
        "kept until the agents stop them"
    );
    let stopped: Vec<TaskOp> = world
        .state
        .tasks
        .values()
        .map(|t| report(t, TaskState::Shutdown, None, world.now))
        .collect();
    world.state.apply(Command::Tasks(stopped));
    world.settle();
    assert!(world.state.tasks.is_empty());
}

#[test]
fn history_is_pruned_to_a_few_tasks_per_slot() {
    let mut world = World::new();
    let job = world.create(spec("job", ServiceMode::Replicated { replicas: 1 }));
    for _ in 0..12 {
        world.settle();
        world.agents_run_all();
        let task = world.running(&job)[0].clone();
        let exit = report(
            &task,
            TaskState::Failed,
            Some(ExitStatus::Code(1)),
            world.now,
        );
        world.state.apply(Command::Tasks(vec![exit]));
        world.now += 10;
    }
    world.settle();
    let finished = world
        .state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Shutdown)
        .count();
    assert_eq!(finished, HISTORY_PER_SLOT);
}

#[test]
fn reports_from_the_wrong_node_or_backwards_are_dropped() {
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 1 }));
    world.settle();
    world.agents_run_all();
    let task = world.running(&web)[0].clone();
    let before = world.state.clone();
    let mut wrong_node = report(&task, TaskState::Failed, None, world.now);
    if let TaskOp::Report(r) = &mut wrong_node {
        r.node_id = 99;
    }
    let backwards = report(&task, TaskState::Starting, None, world.now);
    world
        .state
        .apply(Command::Tasks(vec![wrong_node, backwards]));
    assert_eq!(world.state, before);
}

#[test]
fn health_reports_update_a_running_task_and_an_unhealthy_one_is_replaced() {
    use crate::service::health::TaskHealth;
    let mut world = World::new();
    let web = world.create(spec("web", ServiceMode::Replicated { replicas: 1 }));
    world.settle();
    world.agents_run_all();
    let task = world.running(&web)[0].clone();
    let health = |world: &World| world.state.tasks[&task.id].health;
    let with_health = |state: TaskState, health: TaskHealth, at_ms: u64| {
        let mut op = report(&task, state, None, at_ms);
        if let TaskOp::Report(r) = &mut op {
            r.health = Some(health);
        }
        op
    };
    // Same state, new health: recorded, and the state's time is kept.
    world.now += 100;
    let op = with_health(TaskState::Running, TaskHealth::Healthy, world.now);
    if let TaskOp::Report(r) = &op {
        assert!(r.is_news(&world.state.tasks[&task.id]));
    }
    world.state.apply(Command::Tasks(vec![op]));
    assert_eq!(health(&world), Some(TaskHealth::Healthy));
    assert_eq!(world.state.tasks[&task.id].state_ms, task.state_ms);
    // The same report again is no news; an older state with another health is dropped.
    let again = with_health(TaskState::Running, TaskHealth::Healthy, world.now);
    if let TaskOp::Report(r) = &again {
        assert!(!r.is_news(&world.state.tasks[&task.id]));
    }
    let before = world.state.clone();
    world.state.apply(Command::Tasks(vec![with_health(
        TaskState::Starting,
        TaskHealth::Unhealthy,
        world.now,
    )]));
    assert_eq!(world.state, before);
    // Unhealthy, then stopped for it: Failed, and the slot gets a new task.
    world.state.apply(Command::Tasks(vec![with_health(
        TaskState::Running,
        TaskHealth::Unhealthy,
        world.now,
    )]));
    assert_eq!(health(&world), Some(TaskHealth::Unhealthy));
    let mut failed = with_health(TaskState::Failed, TaskHealth::Unhealthy, world.now);
    if let TaskOp::Report(r) = &mut failed {
        r.error = Some("health check failed: command exit code 1".into());
    }
    world.state.apply(Command::Tasks(vec![failed]));
    assert_eq!(world.state.tasks[&task.id].state, TaskState::Failed);
    world.settle();
    let replacement = world.running(&web);
    assert_eq!(replacement.len(), 1);
    assert_ne!(replacement[0].id, task.id);
    assert_eq!(replacement[0].health, None);
}

#[test]
fn reservations_limit_what_a_node_takes() {
    let mut world = World::new();
    let big = world.create(ServiceSpec {
        reservation: Limits {
            nano_cpus: 1_500_000_000,
            memory_bytes: 0,
        },
        ..spec("big", ServiceMode::Replicated { replicas: 4 })
    });
    world.settle();
    let pending: Vec<_> = world
        .running(&big)
        .into_iter()
        .filter(|t| t.state == TaskState::Pending)
        .collect();
    assert_eq!(
        pending.len(),
        1,
        "three 2-CPU workers fit three 1.5-CPU tasks"
    );
    assert!(pending[0]
        .error
        .as_deref()
        .unwrap()
        .contains("3 nodes lack 1.5 free CPUs"));
}

fn add_network(world: &mut World, name: &str, subnet: &str) -> String {
    let record = crate::network::NetworkRecord {
        id: format!("net-{name}"),
        name: name.into(),
        subnet: crate::network::Subnet::parse(subnet).unwrap(),
        gateway: crate::network::Subnet::parse(subnet)
            .unwrap()
            .hosts()
            .next()
            .unwrap(),
        vni: 4097 + world.state.networks.len() as u32,
        mtu: None,
        attachable: false,
        labels: BTreeMap::new(),
        created_ms: 0,
    };
    let id = record.id.clone();
    assert_eq!(
        world.state.apply(Command::CreateNetwork(record)),
        crate::store::CommandResult::Ok
    );
    id
}

#[test]
fn tasks_get_distinct_addresses_and_wait_when_the_subnet_is_full() {
    let mut world = World::new();
    let net = add_network(&mut world, "front", "10.5.0.0/29");
    let web = world.create(ServiceSpec {
        networks: vec!["front".into()],
        ..spec("web", ServiceMode::Replicated { replicas: 6 })
    });
    world.settle();
    world.agents_run_all();
    let mut ips: Vec<_> = world
        .running(&web)
        .iter()
        .flat_map(|t| t.attachments.iter().map(|a| (a.network_id.clone(), a.ip)))
        .collect();
    ips.sort();
    ips.dedup();
    // A /29 has 6 host addresses and the gateway takes one: 5 tasks run, one waits.
    assert_eq!(ips.len(), 5);
    assert!(ips.iter().all(|(n, ip)| n == &net && ip.octets()[3] >= 2));
    let waiting: Vec<_> = world
        .running(&web)
        .into_iter()
        .filter(|t| t.attachments.is_empty())
        .cloned()
        .collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].state, TaskState::Pending);
    assert!(waiting[0]
        .error
        .as_deref()
        .unwrap()
        .contains("network front: no free address in 10.5.0.0/29"));
    // Scaling down frees addresses once the stopped tasks end; the waiting task then runs.
    let mut smaller = world.state.services[&web].spec.clone();
    smaller.mode = ServiceMode::Replicated { replicas: 5 };
    world.state.apply(Command::UpdateService {
        id: web.clone(),
        spec: Box::new(smaller),
        at_ms: world.now,
        resume: false,
        vips: None,
    });
    world.settle();
    let stopped: Vec<TaskOp> = world
        .state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Shutdown && !t.state.is_terminal())
        .map(|t| report(t, TaskState::Shutdown, None, world.now))
        .collect();
    world.state.apply(Command::Tasks(stopped));
    world.settle();
    let running = world.running(&web);
    assert_eq!(running.len(), 5);
    assert!(running
        .iter()
        .all(|t| t.attachments.len() == 1 && t.node_id.is_some()));
}

#[test]
fn a_network_in_use_cannot_be_removed() {
    let mut world = World::new();
    let net = add_network(&mut world, "front", "10.5.0.0/24");
    world.create(ServiceSpec {
        networks: vec!["front".into()],
        ..spec("web", ServiceMode::Replicated { replicas: 1 })
    });
    world.settle();
    match world
        .state
        .apply(Command::RemoveNetwork { id: net.clone() })
    {
        crate::store::CommandResult::Refused(why) => assert!(why.contains("service web"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(world.state.networks.contains_key(&net));
}
