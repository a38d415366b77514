//! scheduler: the time to place 10 000 tasks on 1000 simulated nodes with Mesh's placement
//! (`control::scheduler`), spreading over a zone label with a CPU and memory reservation per
//! task. Nothing runs; only the decisions are timed.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use control::scheduler::constraint::Constraint;
use control::scheduler::{place_many, Candidate, Decision, Placement, Resources};

use crate::ctx::{Ctx, Outcome};
use crate::report::{Better, Recorder};

const VARIANT: &str = "Mesh scheduler";

fn simulated_nodes(count: usize) -> Vec<Candidate> {
    (0..count)
        .map(|i| Candidate {
            id: format!("{i:016x}"),
            hostname: format!("node{i}"),
            role: "worker".into(),
            labels: BTreeMap::from([
                ("zone".to_string(), format!("z{}", i % 4)),
                ("rack".to_string(), format!("r{}", i % 20)),
            ]),
            has_image: true,
            accepts_tasks: true,
            capacity: Resources {
                nano_cpus: 16_000_000_000,
                memory_bytes: 64 << 30,
            },
            reserved: Resources::default(),
            service_tasks: 0,
            total_tasks: 0,
        })
        .collect()
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (nodes, tasks) = (ctx.size(1000, 100), ctx.size(10_000, 1000));
    let metric = format!("time to place {tasks} tasks on {nodes} nodes");
    let mut rec = Recorder::new();
    rec.metric(&metric, "ms", Better::Lower, VARIANT);
    let placement = Placement {
        constraints: vec![Constraint::parse("node.role==worker")?],
        spread_over: vec!["zone".into()],
        reservation: Resources {
            nano_cpus: 100_000_000,
            memory_bytes: 128 << 20,
        },
    };
    for round in 0..ctx.repeat {
        eprintln!("scheduler: round {} of {}", round + 1, ctx.repeat);
        let mut cluster = simulated_nodes(nodes);
        let start = Instant::now();
        let decisions = place_many(&mut cluster, &placement, tasks);
        let took = start.elapsed();
        let placed = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Node(_)))
            .count();
        if placed != tasks {
            bail!("only {placed} of {tasks} tasks were placed");
        }
        let (min, max) = cluster.iter().fold((usize::MAX, 0), |(lo, hi), n| {
            (lo.min(n.service_tasks), hi.max(n.service_tasks))
        });
        if max - min > 1 {
            bail!("placement is uneven: {min} to {max} tasks per node");
        }
        rec.sample(&metric, VARIANT, took.as_secs_f64() * 1e3);
    }
    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::new(),
        notes: vec![format!(
            "{nodes} simulated workers in 4 zones and 20 racks, 16 CPUs and 64 GiB each; {tasks} tasks of one service placed one after another with a node.role==worker constraint, spread over zone, 0.1 CPU and 128 MiB reserved each. Every run checks that all tasks were placed and that no node holds more than one task above another. No baseline: Swarm's scheduler cannot be run here."
        )],
    })
}
