//! Tasks the managers dropped from a node's assignments while they still run there.
//!
//! When a node is cut off (a partition, meshd down) for longer than the managers' node-down
//! delay, they replace its tasks elsewhere, and its next assignments no longer list them. The
//! tasks still run, and the moment the node is reachable again the other hosts send them
//! flows (gossip shows a returning node's rows again). A task told to stop drains first: it
//! is published as draining, keeps its network and gets SIGTERM 5 s later. A task that merely
//! vanished from the assignments would lose its endpoint row, its overlay attachment and its
//! process at once, and the flows sent to it in that moment would get resets.
//!
//! So the agent keeps each such task, from the previous assignments, as told to shut down,
//! until it has exited: every path then treats it as any task being stopped.

use std::collections::HashSet;

use crate::rpc::messages::Assignments;
use crate::service::task::DesiredState;

/// `new`, plus every task of `previous` it no longer lists for which `live` holds (it has not
/// exited here), as told to shut down and without its secrets, plus the networks they are on
/// that `new` no longer lists.
pub(super) fn keep_departed(
    mut new: Assignments,
    previous: Option<&Assignments>,
    live: impl Fn(&str) -> bool,
) -> Assignments {
    let Some(previous) = previous else {
        return new;
    };
    let listed: HashSet<String> = new.tasks.iter().map(|a| a.task.id.clone()).collect();
    for old in &previous.tasks {
        if listed.contains(&old.task.id) || !live(&old.task.id) {
            continue;
        }
        let mut departed = old.clone();
        departed.task.desired = DesiredState::Shutdown;
        departed.secrets.clear();
        for attachment in &departed.task.attachments {
            let known = |n: &&crate::rpc::messages::NetworkAssignment| {
                n.network.id == attachment.network_id
            };
            if !new.networks.iter().any(|n| known(&n)) {
                if let Some(network) = previous.networks.iter().find(known) {
                    new.networks.push(network.clone());
                }
            }
        }
        new.tasks.push(departed);
    }
    new
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::network::{Attachment, NetworkRecord, Subnet};
    use crate::rpc::messages::{Assignment, NetworkAssignment};
    use crate::service::task::{TaskRecord, TaskState};

    fn network(id: &str) -> NetworkAssignment {
        NetworkAssignment {
            network: NetworkRecord {
                id: id.into(),
                name: format!("net-{id}"),
                subnet: Subnet::parse("10.1.0.0/24").unwrap(),
                gateway: Ipv4Addr::new(10, 1, 0, 1),
                vni: 4097,
                mtu: None,
                attachable: false,
                labels: BTreeMap::new(),
                created_ms: 0,
            },
            mtu: 1450,
            services: Vec::new(),
        }
    }

    fn task(id: &str, network: &str) -> Assignment {
        Assignment {
            task: TaskRecord {
                id: id.into(),
                service_id: "svc".into(),
                service_version: 1,
                slot: 1,
                node_id: Some(7),
                desired: DesiredState::Running,
                state: TaskState::Running,
                error: None,
                exit: None,
                created_ms: 0,
                state_ms: 0,
                attempt: 0,
                attachments: vec![Attachment {
                    network_id: network.into(),
                    ip: Ipv4Addr::new(10, 1, 0, 5),
                }],
                health: None,
            },
            spec: None,
            secrets: Vec::new(),
        }
    }

    fn assignments(tasks: Vec<Assignment>, networks: Vec<NetworkAssignment>) -> Assignments {
        Assignments {
            tasks,
            networks,
            fingerprint: 42,
            ..Assignments::default()
        }
    }

    #[test]
    fn a_dropped_task_that_still_runs_stays_as_told_to_shut_down_with_its_network() {
        let previous = assignments(
            vec![task("kept", "a"), task("gone", "b")],
            vec![network("a"), network("b")],
        );
        let new = assignments(vec![task("kept", "a")], vec![network("a")]);
        let merged = keep_departed(new, Some(&previous), |_| true);
        let ids: Vec<(&str, DesiredState)> = merged
            .tasks
            .iter()
            .map(|a| (a.task.id.as_str(), a.task.desired))
            .collect();
        assert_eq!(
            ids,
            [
                ("kept", DesiredState::Running),
                ("gone", DesiredState::Shutdown)
            ]
        );
        let networks: Vec<&str> = merged
            .networks
            .iter()
            .map(|n| n.network.id.as_str())
            .collect();
        assert_eq!(networks, ["a", "b"]);
        assert_eq!(merged.fingerprint, 42, "the dispatcher's digest is kept");
    }

    #[test]
    fn an_exited_task_is_let_go_and_a_first_answer_is_taken_as_it_is() {
        let previous = assignments(vec![task("gone", "a")], vec![network("a")]);
        let new = assignments(Vec::new(), Vec::new());
        let merged = keep_departed(new.clone(), Some(&previous), |_| false);
        assert_eq!(merged, new);
        assert_eq!(keep_departed(new.clone(), None, |_| true), new);
    }

    #[test]
    fn a_task_still_listed_is_left_as_the_managers_say() {
        let previous = assignments(vec![task("t", "a")], vec![network("a")]);
        let mut stopping = task("t", "a");
        stopping.task.desired = DesiredState::Shutdown;
        let new = assignments(vec![stopping], vec![network("a")]);
        assert_eq!(keep_departed(new.clone(), Some(&previous), |_| true), new);
    }
}
