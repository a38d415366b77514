//! gossip: how fast an endpoint change reaches every host and how fast a dead host is declared
//! down, measured two ways:
//! - in a 5-host lab: one real `control::gossip::Gossip` per host, bound to the host's underlay
//!   address inside its network namespace (UDP and TCP 7946), the same code meshd runs;
//! - in a simulation of the sans-IO core at 1000 nodes (`control::gossip::sim`): virtual time,
//!   0.2-1 ms per hop, 1 % datagram loss, beside the baseline of foca's own piggy-backed
//!   broadcast with the same SWIM timing on the same simulated network (what the table would
//!   get without the scoped push).

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use control::gossip::baseline::BroadcastBaseline;
use control::gossip::sim::{NetConfig, Sim};
use control::gossip::{
    EndpointEntry, Gossip, GossipConfig, Health, Keyring, MemberState, Tuning, DEFAULT_PORT,
};
use lab::Lab;

use crate::ctx::{Ctx, Outcome};
use crate::report::{Better, Recorder};
use crate::stats::percentile;

const MESH: &str = "Mesh gossip (scoped push + anti-entropy)";
const FOCA: &str = "foca piggy-backed broadcast (no scoped push)";
const SWIM: &str = "Mesh gossip (foca SWIM + suspicion)";
const LAB_HOSTS: usize = 5;
const LAB_CHANGE: &str = "endpoint change reaches all 5 lab hosts";
const LAB_CHANGE_P99: &str = "endpoint change reaches all 5 lab hosts, p99 per round";
const LAB_DOWN: &str = "killed lab host declared down by the other 4";
const NETWORK: &str = "benchnet000000000000000001";

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut rec = Recorder::new();
    let n = ctx.size(1000, 100);
    let sim_change = format!("endpoint change reaches all {n} simulated nodes");
    let sim_down = format!("killed node declared down by all {n} simulated nodes");
    rec.metric(LAB_CHANGE, "ms", Better::Lower, MESH);
    rec.metric(LAB_CHANGE_P99, "ms", Better::Lower, MESH);
    rec.metric(LAB_DOWN, "s", Better::Lower, SWIM);
    rec.metric(&sim_change, "ms", Better::Lower, FOCA);
    rec.metric(&sim_down, "s", Better::Lower, SWIM);
    let mut notes = lab_part(ctx, &mut rec).context("measuring gossip in the lab")?;
    notes.extend(sim_part(ctx, &mut rec, n, &sim_change, &sim_down)?);
    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::new(),
        notes,
    })
}

fn entry(task: &str, vtep: std::net::Ipv4Addr) -> EndpointEntry {
    EndpointEntry {
        network_id: NETWORK.into(),
        service_id: "benchservice0000000000001".into(),
        service_name: "web".into(),
        task_id: task.into(),
        task_name: format!("web.1.{task}"),
        slot: 1,
        ip: std::net::Ipv4Addr::new(10, 200, 0, 2),
        mac: [0x02, 0x42, 10, 200, 0, 2],
        vtep,
        health: Health::Healthy,
    }
}

/// One gossip node running inside a lab host's network namespace, on its own thread and
/// single-threaded runtime: every socket it opens lives in that namespace.
struct LabNode {
    gossip: Option<Gossip>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LabNode {
    fn start(lab: &Lab, host: &str, node_id: u64, keyring: Keyring) -> Result<LabNode> {
        let netns = lab.netns(host)?;
        let bind = SocketAddr::new(IpAddr::V4(lab.address(host)?), DEFAULT_PORT);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Gossip>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let name = host.to_string();
        let thread = std::thread::spawn(move || {
            let result = lab::in_netns(&netns, move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Gossip::start(GossipConfig::new(node_id, bind, keyring)) {
                        Ok(gossip) => {
                            let _ = ready_tx.send(Ok(gossip));
                            let _ = stopped.await;
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err.into()));
                        }
                    }
                });
            });
            if let Err(err) = result {
                eprintln!("gossip: the node on {name}: {err}");
            }
        });
        let gossip = ready_rx
            .recv()
            .map_err(|_| anyhow!("the gossip thread for {host} ended before starting"))??;
        Ok(LabNode {
            gossip: Some(gossip),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn gossip(&self) -> &Gossip {
        self.gossip.as_ref().expect("present until dropped")
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        // Abruptly, as a crashed meshd: no leave message.
        drop(self.gossip.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn lab_part(ctx: &Ctx, rec: &mut Recorder) -> Result<Vec<String>> {
    let lab = ctx.lab("gossip", |spec| spec.clients = LAB_HOSTS)?;
    let keyring = Keyring::new(1, Keyring::random_key()?);
    let hosts: Vec<String> = lab.hosts().iter().map(|h| h.name.clone()).collect();
    let changes = ctx.size(20, 5);
    for round in 0..ctx.repeat {
        eprintln!("gossip: lab round {} of {}", round + 1, ctx.repeat);
        let mut nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| LabNode::start(&lab, host, i as u64 + 1, keyring.clone()))
            .collect::<Result<Vec<_>>>()?;
        let peers: Vec<(u64, SocketAddr)> = nodes
            .iter()
            .map(|n| (n.gossip().node_id(), n.gossip().local_addr()))
            .collect();
        for node in &nodes {
            node.gossip().set_peers(peers.clone());
            node.gossip().set_networks(vec![NETWORK.into()]);
        }
        let settled = wait_until(Duration::from_secs(20), || {
            nodes.iter().all(|n| {
                n.gossip()
                    .members()
                    .iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .count()
                    == LAB_HOSTS
            })
        });
        settled.context("the 5 lab hosts did not all see each other alive within 20 s")?;
        // Let declarations settle before timing changes.
        std::thread::sleep(Duration::from_secs(1));
        let mut round_samples = Vec::new();
        for change in 0..changes {
            let origin = change % LAB_HOSTS;
            let task = format!("r{round}c{change}");
            let vtep = lab.address(&hosts[origin])?;
            let start = Instant::now();
            nodes[origin].gossip().publish(vec![entry(&task, vtep)]);
            let took = wait_until(Duration::from_secs(10), || {
                nodes.iter().all(|n| {
                    n.gossip()
                        .endpoints()
                        .iter()
                        .any(|e| e.entry.task_id == task)
                })
            })
            .map(|_| start.elapsed());
            let ms = took.map_or(f64::NAN, |t| t.as_secs_f64() * 1e3);
            rec.sample(LAB_CHANGE, MESH, ms);
            round_samples.push(ms);
            std::thread::sleep(Duration::from_millis(50));
        }
        rec.sample(
            LAB_CHANGE_P99,
            MESH,
            percentile(&round_samples, 99.0).unwrap_or(f64::NAN),
        );
        // Kill the last host's gossip and time until the other four declare it down.
        let victim = nodes.pop().expect("five nodes");
        let victim_id = victim.gossip().node_id();
        let start = Instant::now();
        drop(victim);
        let down = wait_until(Duration::from_secs(30), || {
            nodes.iter().all(|n| {
                n.gossip()
                    .members()
                    .iter()
                    .any(|m| m.node_id == victim_id && m.state == MemberState::Down)
            })
        });
        rec.sample(
            LAB_DOWN,
            SWIM,
            down.map_or(f64::NAN, |_| start.elapsed().as_secs_f64()),
        );
        let auth_failures: u64 = nodes.iter().map(|n| n.gossip().stats().auth_failures).sum();
        if auth_failures > 0 {
            eprintln!("gossip: {auth_failures} authentication failures in the lab");
        }
    }
    Ok(vec![
        format!("Lab: {LAB_HOSTS} hosts on the lab bridge (veth, MTU 1500, no added delay or loss). Each runs one `Gossip` (the driver meshd uses) on UDP and TCP {DEFAULT_PORT} of its underlay address, from a thread inside the host's network namespace, all in this process. Per round: a fresh cluster, {changes} changes published round-robin from each host, each timed from `publish` until every host's `endpoints()` holds it (polled every 0.2 ms); then one host's gossip is stopped without leaving (as a crashed meshd) and the time until the other four declare it down is taken. Default tuning: probe every 500 ms, suspicion 3 periods × max(1, log10 n), push fan-out 4 × 3 rounds (4 at the origin) 50 ms apart, anti-entropy every 3 s."),
    ])
}

fn sim_part(
    ctx: &Ctx,
    rec: &mut Recorder,
    n: usize,
    sim_change: &str,
    sim_down: &str,
) -> Result<Vec<String>> {
    let tuning = Tuning::default();
    let keyring = Keyring::new(1, [0x5a; 32]);
    let changes = ctx.size(10, 3);
    let kills = ctx.size(3, 1);
    let limit = Duration::from_secs(30);
    let mut notes = Vec::new();
    let mut missed_baseline = 0;
    for round in 0..ctx.repeat {
        let net = NetConfig {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(1),
            loss: 0.01,
            seed: 1000 + round as u64,
        };
        eprintln!(
            "gossip: simulation round {} of {}, {n} nodes",
            round + 1,
            ctx.repeat
        );
        let wall = Instant::now();
        let mut sim = Sim::new(net.clone());
        for _ in 0..n {
            sim.add_node(tuning.clone(), keyring.clone());
        }
        sim.introduce_all();
        for i in 0..n {
            sim.with(i, |core, now| core.set_networks(now, vec![NETWORK.into()]));
        }
        let warmup = settle(&mut sim, n)?;
        let mut rng = round as u64 * 7919 + 17;
        let mut next = move |m: usize| {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (rng >> 33) as usize % m
        };
        for change in 0..changes {
            let origin = next(n);
            let task = format!("sim-r{round}-c{change}");
            let vtep = std::net::Ipv4Addr::new(198, 18, 0, 2);
            sim.with(origin, |core, now| core.publish(now, &[entry(&task, vtep)]));
            let start = sim.now();
            let mut reached = vec![false; n];
            let mut count = 0;
            let done = sim.run_until(start + limit, |sim, i| {
                if !reached[i] && sim.core(i).is_some_and(|c| c.has_endpoint(NETWORK, &task)) {
                    reached[i] = true;
                    count += 1;
                }
                count == n
            });
            let ms = (sim.now() - start).as_secs_f64() * 1e3;
            rec.sample(sim_change, MESH, if done { ms } else { f64::NAN });
            sim.run_for(Duration::from_millis(500));
        }
        let mut dead = Vec::new();
        for _ in 0..kills {
            let victim = loop {
                let v = next(n);
                if !dead.contains(&v) {
                    break v;
                }
            };
            sim.kill(victim);
            dead.push(victim);
            let victim_id = victim as u64 + 1;
            let start = sim.now();
            let mut declared = vec![false; n];
            for d in &dead {
                declared[*d] = true;
            }
            let mut count = dead.len();
            let done = sim.run_until(start + Duration::from_secs(60), |sim, i| {
                if !declared[i]
                    && sim
                        .core(i)
                        .is_some_and(|c| c.member_state(victim_id) == Some(MemberState::Down))
                {
                    declared[i] = true;
                    count += 1;
                }
                count == n
            });
            let secs = (sim.now() - start).as_secs_f64();
            rec.sample(sim_down, SWIM, if done { secs } else { f64::NAN });
        }
        let (sent, lost) = sim.datagram_counts();
        eprintln!(
            "gossip: simulation round {} took {:.1} s of wall time, {:.1} s simulated (warm-up {:.1} s), {sent} datagrams ({lost} lost)",
            round + 1,
            wall.elapsed().as_secs_f64(),
            sim.elapsed().as_secs_f64(),
            warmup.as_secs_f64()
        );
        drop(sim);

        // The baseline: the same changes as foca custom broadcasts.
        let mut baseline = BroadcastBaseline::new(n, &tuning, net);
        baseline.run_for(Duration::from_secs(2));
        for change in 0..changes {
            let key = (round * 1000 + change) as u64;
            baseline.broadcast(next(n), key, 150);
            match baseline.run_until_everyone_has(key, limit) {
                Some(took) => rec.sample(sim_change, FOCA, took.as_secs_f64() * 1e3),
                None => {
                    missed_baseline += 1;
                    rec.sample(sim_change, FOCA, f64::NAN);
                }
            }
            baseline.run_for(Duration::from_millis(500));
        }
    }
    notes.push(format!(
        "Simulation: {n} sans-IO gossip cores (`control::gossip::sim`) in virtual time, one-way latency uniform in 0.2-1 ms, 1 % of datagrams lost, every datagram sealed and opened with the cluster key as in production. Membership settles first (nodes join through the peer list). Per round: {changes} changes, each published by a random node and timed until every node's visible table holds it; then {kills} random node(s) killed, each timed until every other node declares it down. All nodes are on the one network, the worst case for a scoped push."
    ));
    notes.push(format!(
        "Baseline: {n} bare foca instances with the same SWIM configuration, membership pre-settled, each change a 150-byte custom broadcast riding on probes and periodic gossip (3 members every 200 ms, max_transmissions = 4 log10(n+1)), timed until every node received it (limit {} s{}).",
        limit.as_secs(),
        if missed_baseline > 0 {
            format!("; {missed_baseline} broadcasts did not reach every node within it and count as failed samples")
        } else {
            String::new()
        }
    ));
    Ok(notes)
}

/// Runs the simulation until every node sees every other alive; returns the virtual time.
fn settle(sim: &mut Sim, n: usize) -> Result<Duration> {
    let start = sim.now();
    for _ in 0..480 {
        sim.run_for(Duration::from_millis(250));
        let settled = (0..n).all(|i| {
            sim.core(i).is_some_and(|core| {
                (1..=n as u64).all(|id| core.member_state(id) == Some(MemberState::Alive))
            })
        });
        if settled {
            return Ok(sim.now() - start);
        }
    }
    Err(anyhow!(
        "the {n} simulated nodes did not all see each other alive within 120 s of virtual time"
    ))
}
