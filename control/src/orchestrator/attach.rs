//! Giving tasks their addresses: every task that should run gets one address on each network
//! of its service before it is placed. A network out of addresses leaves the task Pending with
//! an error that says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::network::alloc::{free_address, holds_addresses};
use crate::network::Attachment;
use crate::service::{DesiredState, TaskRecord, TaskState};
use crate::store::ClusterState;

/// Whether `task` has an address on every network its service names.
pub(super) fn attached(state: &ClusterState, task: &TaskRecord) -> bool {
    let Some(service) = state.services.get(&task.service_id) else {
        return true;
    };
    service.spec.networks.iter().all(|name| {
        state
            .network_named(name)
            .is_some_and(|n| task.attachments.iter().any(|a| a.network_id == n.id))
    })
}

pub(super) fn attach(state: &ClusterState, tasks: &mut BTreeMap<String, TaskRecord>) {
    let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let live = tasks.values().filter(|t| holds_addresses(state, t));
    let vips = state.services.values().flat_map(|s| &s.vips);
    for attachment in live.flat_map(|t| &t.attachments).chain(vips) {
        used.entry(attachment.network_id.clone())
            .or_default()
            .insert(attachment.ip);
    }
    let waiting: Vec<String> = tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running && !t.state.is_terminal())
        .filter(|t| !attached(state, t))
        .map(|t| t.id.clone())
        .collect();
    for id in waiting {
        let task = tasks.get_mut(&id).expect("waiting tasks exist");
        let service = &state.services[&task.service_id];
        let mut failure = None;
        for name in &service.spec.networks {
            let Some(network) = state.network_named(name) else {
                failure = Some(format!(
                    "network {name} does not exist; create it with `meshctl network create --driver overlay {name}`"
                ));
                break;
            };
            if task.attachments.iter().any(|a| a.network_id == network.id) {
                continue;
            }
            let taken = used.entry(network.id.clone()).or_default();
            match free_address(network, taken) {
                Ok(ip) => {
                    taken.insert(ip);
                    task.attachments.push(Attachment {
                        network_id: network.id.clone(),
                        ip,
                    });
                }
                Err(why) => {
                    failure = Some(why);
                    break;
                }
            }
        }
        match failure {
            Some(why) => {
                // Give back what this pass took, so another task may use it.
                for attachment in task.attachments.drain(..) {
                    if let Some(taken) = used.get_mut(&attachment.network_id) {
                        taken.remove(&attachment.ip);
                    }
                }
                task.state = TaskState::Pending;
                task.error = Some(why);
            }
            None if task.state == TaskState::Pending && task.node_id.is_some() => {
                // A global task waiting for an address: its node is already chosen.
                task.state = TaskState::Assigned;
                task.error = None;
            }
            None => {}
        }
    }
}
