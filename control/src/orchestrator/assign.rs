//! Placing new tasks: every task that wants to run and has no node goes through the
//! scheduler, seeing the tasks already placed, including those placed earlier in this pass.

use std::collections::BTreeMap;

use crate::api::format_node_id;
use crate::scheduler::{place_one, Candidate, Decision, Placement, Resources};
use crate::service::{DesiredState, TaskRecord, TaskState};
use crate::store::{Availability, ClusterState, NodeRecord, NodeStatus, Role};

/// A node as the scheduler sees it, before counting tasks.
pub(super) fn candidate_of(node: &NodeRecord) -> Candidate {
    Candidate {
        id: format_node_id(node.id),
        hostname: node.name.clone(),
        role: match node.role {
            Role::Manager => "manager".into(),
            Role::Worker => "worker".into(),
        },
        labels: node.labels.clone(),
        accepts_tasks: node.status == NodeStatus::Ready
            && node.availability == Availability::Active,
        has_image: true,
        capacity: Resources {
            nano_cpus: node.description.nano_cpus,
            memory_bytes: node.description.memory_bytes,
        },
        reserved: Resources::default(),
        service_tasks: 0,
        total_tasks: 0,
    }
}

fn holds_resources(task: &TaskRecord) -> bool {
    task.desired == DesiredState::Running && !task.state.is_terminal() && task.node_id.is_some()
}

/// Gives a node to every task that wants to run and has none, or records why none fits.
pub(super) fn assign(state: &ClusterState, tasks: &mut BTreeMap<String, TaskRecord>, now_ms: u64) {
    let mut waiting: Vec<(String, u64, String)> = tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running && t.node_id.is_none())
        .filter(|t| super::attach::attached(state, t))
        .map(|t| (t.service_id.clone(), t.slot, t.id.clone()))
        .collect();
    if waiting.is_empty() {
        return;
    }
    waiting.sort();
    let node_ids: Vec<_> = state.nodes.keys().copied().collect();
    let mut base: Vec<Candidate> = state.nodes.values().map(candidate_of).collect();
    for task in tasks.values().filter(|t| holds_resources(t)) {
        let Some(index) = node_ids.iter().position(|id| Some(*id) == task.node_id) else {
            continue;
        };
        base[index].total_tasks += 1;
        if let Some(service) = state.services.get(&task.service_id) {
            base[index].reserved.nano_cpus += service.spec.reservation.nano_cpus;
            base[index].reserved.memory_bytes += service.spec.reservation.memory_bytes;
        }
    }
    let mut current_service: Option<String> = None;
    let mut nodes = base.clone();
    let mut placement = Placement::default();
    for (service_id, _, task_id) in waiting {
        let Some(service) = state.services.get(&service_id) else {
            continue;
        };
        if current_service.as_deref() != Some(service_id.as_str()) {
            // Carry what earlier services placed, then count this service's tasks per node.
            for (node, fresh) in nodes.iter_mut().zip(&base) {
                node.service_tasks = 0;
                node.total_tasks = node.total_tasks.max(fresh.total_tasks);
            }
            for task in tasks
                .values()
                .filter(|t| t.service_id == service_id && holds_resources(t))
            {
                if let Some(index) = node_ids.iter().position(|id| Some(*id) == task.node_id) {
                    nodes[index].service_tasks += 1;
                }
            }
            for (node, record) in nodes.iter_mut().zip(state.nodes.values()) {
                node.has_image = record.description.images.contains(&service.spec.image);
            }
            placement = Placement {
                constraints: service.spec.parsed_constraints(),
                spread_over: service.spec.spread_over.clone(),
                reservation: Resources {
                    nano_cpus: service.spec.reservation.nano_cpus,
                    memory_bytes: service.spec.reservation.memory_bytes,
                },
            };
            current_service = Some(service_id.clone());
        }
        let task = tasks.get_mut(&task_id).expect("waiting tasks exist");
        match place_one(&nodes, &placement) {
            Decision::Node(index) => {
                let node = &mut nodes[index];
                node.service_tasks += 1;
                node.total_tasks += 1;
                node.reserved.nano_cpus += placement.reservation.nano_cpus;
                node.reserved.memory_bytes += placement.reservation.memory_bytes;
                task.node_id = Some(node_ids[index]);
                task.state = TaskState::Assigned;
                task.error = None;
                task.state_ms = now_ms;
            }
            Decision::Pending(why) => {
                if task.error.as_deref() != Some(why.as_str()) || task.state != TaskState::Pending {
                    task.state = TaskState::Pending;
                    task.error = Some(why);
                }
            }
        }
    }
}
