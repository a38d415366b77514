//! Task placement: plain functions over plain data, so every rule is unit-tested and the
//! scheduler benchmark runs it on simulated nodes.
//!
//! For each task: drop nodes that are not ready and active, that fail a hard constraint, or
//! lack the reserved CPU or memory; if none remain, the task stays pending with a reason that
//! counts the nodes failing each test. Otherwise spread over the values of each placement
//! preference's label in turn (the value holding fewest tasks of the service wins), then pick
//! the node with the fewest tasks of the service, then the fewest tasks, then the lowest ID.

pub mod constraint;

use std::collections::BTreeMap;

use constraint::{Constraint, Field, Op};

/// CPU (nano-CPUs, 1e9 = one core) and memory (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Billionths of a CPU.
    pub nano_cpus: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Node ID.
    pub id: String,
    /// Node name.
    pub hostname: String,
    /// "manager" or "worker".
    pub role: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Ready and available for new tasks (not paused, drained or down).
    pub accepts_tasks: bool,
    /// Its runtime has the service's image.
    pub has_image: bool,
    /// What the node has.
    pub capacity: Resources,
    /// What tasks already on it reserve.
    pub reserved: Resources,
    /// Tasks of the service being placed already on it.
    pub service_tasks: usize,
    /// All tasks on it.
    pub total_tasks: usize,
}

/// What one task of a service needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Hard constraints: every one must hold.
    pub constraints: Vec<Constraint>,
    /// Label keys to spread over, in order.
    pub spread_over: Vec<String>,
    /// Resources each task reserves.
    pub reservation: Resources,
}

/// Where one task goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The index of the chosen node.
    Node(usize),
    /// No node fits; why, counted per test.
    Pending(String),
}

/// Whether `node` meets `constraint`.
pub fn holds(constraint: &Constraint, node: &Candidate) -> bool {
    let actual = match &constraint.field {
        Field::Id => Some(node.id.as_str()),
        Field::Hostname => Some(node.hostname.as_str()),
        Field::Role => Some(node.role.as_str()),
        Field::Label(key) => node.labels.get(key).map(String::as_str),
    };
    match constraint.op {
        Op::Eq => actual == Some(constraint.value.as_str()),
        Op::Ne => actual != Some(constraint.value.as_str()),
    }
}

fn fits(reservation: Resources, node: &Candidate) -> (bool, bool) {
    let free_cpu = node
        .capacity
        .nano_cpus
        .saturating_sub(node.reserved.nano_cpus);
    let free_memory = node
        .capacity
        .memory_bytes
        .saturating_sub(node.reserved.memory_bytes);
    (
        reservation.nano_cpus <= free_cpu,
        reservation.memory_bytes <= free_memory,
    )
}

/// Places one task.
pub fn place_one(nodes: &[Candidate], placement: &Placement) -> Decision {
    let mut unavailable = 0;
    let mut failing: Vec<usize> = vec![0; placement.constraints.len()];
    let (mut no_cpu, mut no_memory, mut no_image) = (0, 0, 0);
    let mut eligible = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        if !node.accepts_tasks {
            unavailable += 1;
            continue;
        }
        if let Some(failed) = placement.constraints.iter().position(|c| !holds(c, node)) {
            failing[failed] += 1;
            continue;
        }
        if !node.has_image {
            no_image += 1;
            continue;
        }
        match fits(placement.reservation, node) {
            (true, true) => eligible.push(index),
            (false, _) => no_cpu += 1,
            (true, false) => no_memory += 1,
        }
    }
    if eligible.is_empty() {
        return Decision::Pending(pending_reason(
            nodes.len(),
            unavailable,
            &placement.constraints,
            &failing,
            Shortfalls {
                no_image,
                no_cpu,
                no_memory,
            },
            placement.reservation,
        ));
    }
    // Spread over each preference's label values in turn.
    for key in &placement.spread_over {
        let mut per_value: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        for &i in &eligible {
            *per_value
                .entry(nodes[i].labels.get(key).map(String::as_str))
                .or_default() += nodes[i].service_tasks;
        }
        let fewest = per_value.values().copied().min().unwrap_or(0);
        eligible.retain(|&i| per_value[&nodes[i].labels.get(key).map(String::as_str)] == fewest);
    }
    let best = eligible
        .into_iter()
        .min_by(|&a, &b| {
            let (a, b) = (&nodes[a], &nodes[b]);
            (a.service_tasks, a.total_tasks, &a.id).cmp(&(b.service_tasks, b.total_tasks, &b.id))
        })
        .expect("eligible is not empty");
    Decision::Node(best)
}

/// Places `count` tasks one after another, each seeing the ones placed before it.
pub fn place_many(nodes: &mut [Candidate], placement: &Placement, count: usize) -> Vec<Decision> {
    (0..count)
        .map(|_| {
            let decision = place_one(nodes, placement);
            if let Decision::Node(i) = decision {
                let node = &mut nodes[i];
                node.service_tasks += 1;
                node.total_tasks += 1;
                node.reserved.nano_cpus += placement.reservation.nano_cpus;
                node.reserved.memory_bytes += placement.reservation.memory_bytes;
            }
            decision
        })
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "node"
    } else {
        "nodes"
    }
}

/// Nodes that pass the constraints but cannot take the task, by what they lack.
struct Shortfalls {
    no_image: usize,
    no_cpu: usize,
    no_memory: usize,
}

fn pending_reason(
    total: usize,
    unavailable: usize,
    constraints: &[Constraint],
    failing: &[usize],
    shortfalls: Shortfalls,
    reservation: Resources,
) -> String {
    let Shortfalls {
        no_image,
        no_cpu,
        no_memory,
    } = shortfalls;
    if total == 0 {
        return "no suitable node: the cluster has no nodes".into();
    }
    let mut parts = Vec::new();
    for (constraint, &n) in constraints.iter().zip(failing) {
        if n > 0 {
            parts.push(format!("{n} {} fail {constraint}", plural(n)));
        }
    }
    if no_image > 0 {
        parts.push(format!(
            "{no_image} {} lack the image (import it there)",
            plural(no_image)
        ));
    }
    if no_cpu > 0 {
        parts.push(format!(
            "{no_cpu} {} lack {} free CPUs",
            plural(no_cpu),
            reservation.nano_cpus as f64 / 1e9
        ));
    }
    if no_memory > 0 {
        parts.push(format!(
            "{no_memory} {} lack {} MiB of free memory",
            plural(no_memory),
            reservation.memory_bytes / (1024 * 1024)
        ));
    }
    if unavailable > 0 {
        parts.push(format!(
            "{unavailable} {} down, paused or drained",
            plural(unavailable)
        ));
    }
    format!("no suitable node: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            hostname: id.into(),
            role: "worker".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            accepts_tasks: true,
            has_image: true,
            capacity: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 4 << 30,
            },
            reserved: Resources::default(),
            service_tasks: 0,
            total_tasks: 0,
        }
    }

    fn counts(nodes: &[Candidate]) -> Vec<usize> {
        nodes.iter().map(|n| n.service_tasks).collect()
    }

    #[test]
    fn tasks_spread_evenly_by_default() {
        let mut nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let decisions = place_many(&mut nodes, &Placement::default(), 6);
        assert!(decisions.iter().all(|d| matches!(d, Decision::Node(_))));
        assert_eq!(counts(&nodes), [2, 2, 2]);
    }

    #[test]
    fn busy_nodes_lose_ties_and_ids_break_the_rest() {
        let mut nodes = vec![node("b", &[]), node("a", &[])];
        nodes[0].total_tasks = 5;
        assert_eq!(place_one(&nodes, &Placement::default()), Decision::Node(1));
        nodes[0].total_tasks = 0;
        assert_eq!(
            place_one(&nodes, &Placement::default()),
            Decision::Node(1),
            "lowest ID wins a full tie"
        );
    }

    #[test]
    fn constraints_restrict_placement_and_unavailable_nodes_get_nothing() {
        let mut nodes = vec![
            node("a", &[("zone", "east")]),
            node("b", &[("zone", "west")]),
            node("c", &[("zone", "east")]),
        ];
        nodes[2].accepts_tasks = false;
        let placement = Placement {
            constraints: vec![Constraint::parse("node.labels.zone==east").unwrap()],
            ..Default::default()
        };
        place_many(&mut nodes, &placement, 3);
        assert_eq!(counts(&nodes), [3, 0, 0]);
        let not_b = Placement {
            constraints: vec![Constraint::parse("node.hostname!=b").unwrap()],
            ..Default::default()
        };
        assert_eq!(place_one(&nodes, &not_b), Decision::Node(0));
    }

    #[test]
    fn a_task_that_fits_nowhere_is_pending_with_counted_reasons() {
        let mut nodes = vec![
            node("a", &[("zone", "west")]),
            node("b", &[("zone", "west")]),
            node("c", &[]),
        ];
        nodes[2].accepts_tasks = false;
        let placement = Placement {
            constraints: vec![Constraint::parse("node.labels.zone==east").unwrap()],
            ..Default::default()
        };
        assert_eq!(
            place_one(&nodes, &placement),
            Decision::Pending("no suitable node: 2 nodes fail node.labels.zone==east, 1 node down, paused or drained".into())
        );
        assert_eq!(
            place_one(&[], &placement),
            Decision::Pending("no suitable node: the cluster has no nodes".into())
        );
    }

    #[test]
    fn nodes_without_the_image_get_nothing() {
        let mut nodes = vec![node("a", &[]), node("b", &[])];
        nodes[0].has_image = false;
        assert_eq!(place_one(&nodes, &Placement::default()), Decision::Node(1));
        nodes[1].has_image = false;
        assert_eq!(
            place_one(&nodes, &Placement::default()),
            Decision::Pending("no suitable node: 2 nodes lack the image (import it there)".into())
        );
    }

    #[test]
    fn reservations_are_checked_against_free_capacity() {
        let mut nodes = vec![node("a", &[])];
        let placement = Placement {
            reservation: Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 1 << 30,
            },
            ..Default::default()
        };
        let decisions = place_many(&mut nodes, &placement, 5);
        assert_eq!(
            decisions
                .iter()
                .filter(|d| matches!(d, Decision::Node(_)))
                .count(),
            4
        );
        match &decisions[4] {
            Decision::Pending(why) => assert!(why.contains("lack 0.5 free CPUs"), "{why}"),
            other => panic!("{other:?}"),
        }
        let memory_hungry = Placement {
            reservation: Resources {
                nano_cpus: 0,
                memory_bytes: 8 << 30,
            },
            ..Default::default()
        };
        match place_one(&[node("b", &[])], &memory_hungry) {
            Decision::Pending(why) => assert!(why.contains("lack 8192 MiB"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn preferences_spread_over_label_values_before_nodes() {
        // Two nodes in east, one in west: spreading over zones puts half the tasks in west.
        let mut nodes = vec![
            node("a", &[("zone", "east")]),
            node("b", &[("zone", "east")]),
            node("c", &[("zone", "west")]),
        ];
        let placement = Placement {
            spread_over: vec!["zone".into()],
            ..Default::default()
        };
        place_many(&mut nodes, &placement, 4);
        assert_eq!(counts(&nodes), [1, 1, 2]);
    }

    #[test]
    fn placing_is_deterministic() {
        let make = || {
            (0..20)
                .map(|i| {
                    node(
                        &format!("n{i:02}"),
                        &[("rack", if i % 3 == 0 { "r1" } else { "r2" })],
                    )
                })
                .collect::<Vec<_>>()
        };
        let placement = Placement {
            spread_over: vec!["rack".into()],
            ..Default::default()
        };
        let (mut a, mut b) = (make(), make());
        assert_eq!(
            place_many(&mut a, &placement, 50),
            place_many(&mut b, &placement, 50)
        );
    }
}
