//! The sans-IO core on the simulated network: membership, failure detection, scoped and fast
//! dissemination, loss, partitions, restarts, keys, and randomized convergence and
//! no-resurrection checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::entry::{sample, EndpointEntry};
use super::keyring::Keyring;
use super::sim::{NetConfig, Sim};
use super::{MemberState, Tuning};
use crate::store::NodeId;

const KEY: [u8; 32] = [7; 32];

fn ring() -> Keyring {
    Keyring::new(1, KEY)
}

/// `n` nodes that know each other, all on `network`, with membership settled.
fn cluster(n: usize, net: NetConfig, tuning: Tuning) -> Sim {
    let mut sim = Sim::new(net);
    for _ in 0..n {
        sim.add_node(tuning.clone(), ring());
    }
    sim.introduce_all();
    for i in 0..n {
        sim.with(i, |core, now| core.set_networks(now, vec!["net".into()]));
    }
    let deadline = sim.now() + Duration::from_secs(30);
    let settled = sim.run_until(deadline, |sim, _| (0..n).all(|i| alive_count(sim, i) == n));
    assert!(settled, "membership did not settle in 30 s");
    // Let declarations spread too.
    sim.run_for(Duration::from_secs(1));
    sim
}

fn alive_count(sim: &Sim, i: usize) -> usize {
    sim.core(i).map_or(0, |c| {
        c.members()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    })
}

fn state_of(sim: &Sim, i: usize, node: NodeId) -> Option<MemberState> {
    sim.core(i)?
        .members()
        .into_iter()
        .find(|m| m.node_id == node)
        .map(|m| m.state)
}

fn tasks(sim: &Sim, i: usize) -> BTreeSet<String> {
    sim.core(i).map_or_else(BTreeSet::new, |c| {
        c.endpoints().into_iter().map(|e| e.entry.task_id).collect()
    })
}

fn publish(sim: &mut Sim, i: usize, entries: Vec<EndpointEntry>) {
    let refused = sim
        .with(i, |core, now| core.publish(now, &entries))
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn five_nodes_converge_on_a_change_in_well_under_a_second() {
    let mut sim = cluster(5, NetConfig::default(), Tuning::default());
    publish(&mut sim, 0, vec![sample("net", "t1", 2)]);
    let start = sim.now();
    let reached = sim.run_until(start + Duration::from_secs(2), |sim, _| {
        (0..5).all(|i| tasks(sim, i) == set(&["t1"]))
    });
    assert!(reached);
    assert!(
        sim.now() - start < Duration::from_millis(100),
        "{:?}",
        sim.now() - start
    );
    // A deletion travels as fast.
    publish(&mut sim, 0, vec![]);
    let start = sim.now();
    assert!(sim.run_until(start + Duration::from_secs(2), |sim, _| {
        (0..5).all(|i| tasks(sim, i).is_empty())
    }));
    let origin = sim.core(1).unwrap().endpoints();
    assert!(origin.is_empty());
}

#[test]
fn a_killed_node_is_declared_down_within_five_seconds_and_its_rows_hidden() {
    let mut sim = cluster(5, NetConfig::default(), Tuning::default());
    publish(&mut sim, 4, vec![sample("net", "on-4", 2)]);
    sim.run_for(Duration::from_millis(500));
    assert!((0..5).all(|i| tasks(&sim, i).contains("on-4")));
    sim.kill(4);
    let start = sim.now();
    let down = sim.run_until(start + Duration::from_secs(10), |sim, _| {
        (0..4).all(|i| state_of(sim, i, 5) == Some(MemberState::Down))
    });
    let took = sim.now() - start;
    assert!(down && took <= Duration::from_secs(5), "took {took:?}");
    for i in 0..4 {
        assert!(tasks(&sim, i).is_empty(), "node {i} still shows on-4");
        let view = sim.core(i).unwrap().table_view();
        assert!(view
            .rows
            .iter()
            .any(|r| r.task_id == "on-4" && r.state == super::RowState::Hidden));
    }
    // It comes back (a new run, empty state) and publishes anew: the old row is retracted, the
    // new one shows.
    sim.restart(4);
    publish(&mut sim, 4, vec![sample("net", "on-4-again", 3)]);
    let start = sim.now();
    let back = sim.run_until(start + Duration::from_secs(15), |sim, _| {
        (0..5).all(|i| {
            state_of(sim, i, 5).is_none_or(|s| s == MemberState::Alive)
                && tasks(sim, i) == set(&["on-4-again"])
        })
    });
    assert!(
        back,
        "restarted node did not converge: {:?}",
        tasks(&sim, 0)
    );
}

#[test]
fn a_graceful_leave_is_seen_at_once() {
    let mut sim = cluster(5, NetConfig::default(), Tuning::default());
    sim.with(2, |core, now| core.leave(now));
    let start = sim.now();
    assert!(sim.run_until(start + Duration::from_secs(1), |sim, _| {
        [0, 1, 3, 4]
            .iter()
            .all(|i| state_of(sim, *i, 3) == Some(MemberState::Down))
    }));
}

#[test]
fn rows_only_reach_nodes_on_their_network() {
    let mut sim = cluster(6, NetConfig::default(), Tuning::default());
    for i in 0..6 {
        let network = if i < 3 { "a" } else { "b" };
        sim.with(i, |core, now| core.set_networks(now, vec![network.into()]));
    }
    sim.run_for(Duration::from_secs(1));
    publish(&mut sim, 0, vec![sample("a", "ta", 2)]);
    publish(&mut sim, 5, vec![sample("b", "tb", 3)]);
    sim.run_for(Duration::from_secs(10));
    for i in 0..6 {
        let want = if i < 3 { set(&["ta"]) } else { set(&["tb"]) };
        assert_eq!(tasks(&sim, i), want, "node {i}");
        let networks: BTreeSet<String> = sim
            .core(i)
            .unwrap()
            .table_view()
            .rows
            .into_iter()
            .map(|r| r.network_id)
            .collect();
        assert!(networks.len() <= 1, "node {i} holds {networks:?}");
        // Senders are scoped, so nothing out of scope even arrives.
        assert_eq!(sim.core(i).unwrap().stats().out_of_scope_dropped, 0);
    }
    // A node that leaves a network forgets its rows at once.
    sim.with(1, |core, now| core.set_networks(now, vec!["b".into()]));
    assert!(tasks(&sim, 1).is_empty());
    sim.run_for(Duration::from_secs(10));
    assert_eq!(tasks(&sim, 1), set(&["tb"]));
}

#[test]
fn heavy_loss_still_converges_through_anti_entropy() {
    let net = NetConfig {
        loss: 0.3,
        seed: 5,
        ..NetConfig::default()
    };
    let mut sim = cluster(8, net, Tuning::default());
    let entries: Vec<EndpointEntry> = (0..30)
        .map(|t| sample("net", &format!("t{t}"), t as u8 + 2))
        .collect();
    publish(&mut sim, 3, entries);
    let start = sim.now();
    let all: BTreeSet<String> = (0..30).map(|t| format!("t{t}")).collect();
    assert!(sim.run_until(start + Duration::from_secs(20), |sim, _| {
        (0..8).all(|i| tasks(sim, i) == all)
    }));
}

#[test]
fn a_partitioned_node_converges_after_healing_and_deleted_rows_stay_dead() {
    let tuning = Tuning {
        tombstone_ttl: Duration::from_secs(2),
        ..Tuning::default()
    };
    let mut sim = cluster(5, NetConfig::default(), tuning);
    publish(&mut sim, 0, vec![sample("net", "old", 2)]);
    sim.run_for(Duration::from_secs(1));
    assert!(tasks(&sim, 4).contains("old"));
    sim.partition(&[4], &[0, 1, 2, 3]);
    publish(&mut sim, 0, vec![sample("net", "new", 3)]);
    // Far longer than the tombstone lifetime: every tombstone of "old" expires.
    sim.run_for(Duration::from_secs(30));
    for i in 0..4 {
        let view = sim.core(i).unwrap().table_view();
        assert!(view.rows.iter().all(|r| r.task_id != "old"), "node {i}");
        assert_eq!(tasks(&sim, i), set(&["new"]));
    }
    assert_eq!(state_of(&sim, 0, 5), Some(MemberState::Down));
    sim.heal();
    let start = sim.now();
    let mut resurrected = false;
    let converged = sim.run_until(start + Duration::from_secs(30), |sim, _| {
        resurrected |= (0..4).any(|i| tasks(sim, i).contains("old"));
        (0..5).all(|i| tasks(sim, i) == set(&["new"]))
            && (0..4).all(|i| state_of(sim, i, 5) == Some(MemberState::Alive))
    });
    assert!(converged, "node 4 has {:?}", tasks(&sim, 4));
    assert!(!resurrected, "a deleted row came back");
}

#[test]
fn a_node_with_another_key_never_joins_and_is_counted() {
    let mut sim = Sim::new(NetConfig::default());
    for _ in 0..3 {
        sim.add_node(Tuning::default(), ring());
    }
    sim.add_node(Tuning::default(), Keyring::new(1, [9; 32]));
    sim.introduce_all();
    sim.run_for(Duration::from_secs(10));
    for i in 0..3 {
        assert_eq!(alive_count(&sim, i), 3);
        assert!(state_of(&sim, i, 4).is_none());
        assert!(sim.core(i).unwrap().stats().auth_failures > 0);
    }
    assert_eq!(alive_count(&sim, 3), 1);
}

#[test]
fn rotating_the_key_keeps_membership() {
    let mut sim = cluster(5, NetConfig::default(), Tuning::default());
    let mut both = ring();
    both.add(2, [8; 32]).unwrap();
    let mut switched = both.clone();
    switched.set_primary(2).unwrap();
    let mut new = switched.clone();
    new.remove(1).unwrap();
    // Each step reaches the nodes one by one, with traffic in between.
    for step in [both, switched, new] {
        for i in 0..5 {
            let step = step.clone();
            sim.with(i, |core, _| core.set_keyring(step));
            sim.run_for(Duration::from_millis(300));
        }
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..5 {
        assert_eq!(alive_count(&sim, i), 5, "node {i}");
        assert_eq!(sim.core(i).unwrap().stats().auth_failures, 0);
    }
}

#[test]
fn removed_peers_are_forgotten_and_kept_out() {
    let mut sim = cluster(4, NetConfig::default(), Tuning::default());
    publish(&mut sim, 3, vec![sample("net", "t3", 2)]);
    sim.run_for(Duration::from_secs(1));
    let peers: Vec<(NodeId, std::net::SocketAddr)> = (0..3)
        .map(|i| (i as NodeId + 1, super::sim::sim_addr(i)))
        .collect();
    for i in 0..3 {
        let peers = peers.clone();
        sim.with(i, |core, now| core.set_peers(now, peers));
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..3 {
        assert!(tasks(&sim, i).is_empty());
        assert!(sim.core(i).unwrap().table_view().rows.is_empty());
        assert_ne!(state_of(&sim, i, 4), Some(MemberState::Alive));
    }
}

/// Random publishes, loss and partitions for a while, then a healed network: every node ends
/// with exactly every node's last published set, and no node ever shows a row again after it
/// saw it deleted.
#[test]
fn randomized_histories_converge_without_resurrection() {
    for seed in 1..=4u64 {
        let net = NetConfig {
            loss: 0.1,
            seed,
            ..NetConfig::default()
        };
        let tuning = Tuning {
            tombstone_ttl: Duration::from_secs(3),
            ..Tuning::default()
        };
        let n = 6;
        let mut sim = cluster(n, net, tuning);
        let mut published: BTreeMap<usize, Vec<EndpointEntry>> = BTreeMap::new();
        let mut deleted: BTreeSet<String> = BTreeSet::new();
        // Per node, rows it saw live then saw gone.
        let mut seen_dead: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
        let mut seen_live: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
        let mut x = seed;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut counter = 0;
        for round in 0..40 {
            let node = next(n as u64) as usize;
            let mut entries = published.get(&node).cloned().unwrap_or_default();
            if !entries.is_empty() && next(3) == 0 {
                let gone = entries.remove(next(entries.len() as u64) as usize);
                deleted.insert(gone.task_id);
            } else {
                counter += 1;
                entries.push(sample(
                    "net",
                    &format!("n{node}-t{counter}"),
                    (counter % 250) as u8,
                ));
            }
            publish(&mut sim, node, entries.clone());
            published.insert(node, entries);
            match round % 10 {
                3 => {
                    let cut = next(n as u64) as usize;
                    let rest: Vec<usize> = (0..n).filter(|i| *i != cut).collect();
                    sim.partition(&[cut], &rest);
                }
                7 => sim.heal(),
                _ => {}
            }
            for _ in 0..(next(20) + 1) {
                sim.run_for(Duration::from_millis(100));
                for i in 0..n {
                    let live = tasks(&sim, i);
                    for task in &live {
                        assert!(
                            !seen_dead[i].contains(task),
                            "seed {seed}: node {i} resurrected {task}"
                        );
                    }
                    for task in seen_live[i].difference(&live) {
                        if deleted.contains(task) {
                            seen_dead[i].insert(task.clone());
                        }
                    }
                    seen_live[i] = live;
                }
            }
        }
        sim.heal();
        let want: BTreeSet<String> = published
            .values()
            .flatten()
            .map(|e| e.task_id.clone())
            .collect();
        let start = sim.now();
        let converged = sim.run_until(start + Duration::from_secs(60), |sim, _| {
            (0..n).all(|i| tasks(sim, i) == want)
        });
        assert!(
            converged,
            "seed {seed}: node 0 has {:?}, want {want:?}",
            tasks(&sim, 0)
        );
    }
}
