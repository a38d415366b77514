//! Services on a real 5-host lab, with each runtime: spreading, constraints, pending tasks,
//! a killed host, a drained node, restart policies, global services on a late node, and bad
//! input that changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";

/// The tasks of `service` as `service ps --format json` shows them.
fn tasks(lab: &TestLab, service: &str) -> Vec<Value> {
    let json = lab
        .meshctl("m1", &["service", "ps", service, "--format", "json"])
        .unwrap_or_else(|e| panic!("service ps {service}: {e}"));
    serde_json::from_str(&json).unwrap()
}

/// Running tasks of `service` that are meant to run, counted per node.
fn running_per_node(lab: &TestLab, service: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for task in tasks(lab, service) {
        if task["desired"] == "running" && task["state"] == "running" {
            *counts
                .entry(task["node"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    counts
}

/// Waits until `service` runs exactly the tasks per node that `check` accepts.
fn wait_for(
    lab: &TestLab,
    service: &str,
    limit: Duration,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let (counts, _) = until_ok(limit, || {
        let counts = running_per_node(lab, service);
        if check(&counts) {
            Ok(counts)
        } else {
            Err(format!(
                "{service}: {counts:?}; tasks: {:#?}",
                tasks(lab, service)
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    counts
}

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

fn lab_with(tag: &str, containerd: bool) -> TestLab {
    TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 4;
        if containerd {
            spec.runtime = lab::TaskRuntime::Containerd;
        }
    })
}

fn scenario(lab: &mut TestLab) {
    for node in ["m1", "w4"] {
        ok(lab, &["node", "update", "--availability", "drain", node]);
    }
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "8080",
        ],
    );

    // Spread: with the managers and w4 drained, 2/2/2 over the three active workers.
    let spread = wait_for(lab, "web", Duration::from_secs(30), |c| {
        c.values().sum::<usize>() == 6
    });
    assert_eq!(
        spread,
        BTreeMap::from([("w1".into(), 2), ("w2".into(), 2), ("w3".into(), 2)])
    );

    // Output reaches `service logs`, tagged with the service and task.
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            "hello",
            "--restart-condition",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo hello from $MESH_SERVICE_NAME slot $MESH_TASK_SLOT",
        ],
    );
    let (logs, _) = until_ok(Duration::from_secs(20), || {
        let logs = ok(lab, &["service", "logs", "hello"]);
        if logs.contains("hello from hello slot 1") {
            Ok(logs)
        } else {
            Err(format!("no line yet: {logs:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let task_id = tasks(lab, "hello")[0]["id"].as_str().unwrap().to_string();
    assert!(
        logs.starts_with(&format!("hello.1.{}@", &task_id[..12])),
        "{logs}"
    );

    // An unsatisfiable constraint stays pending with the reason, then runs once a node fits.
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            "east",
            "--replicas",
            "2",
            "--constraint",
            "node.labels.zone==east",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    until_ok(Duration::from_secs(10), || {
        let pending = tasks(lab, "east");
        let reasons: Vec<&str> = pending.iter().filter_map(|t| t["error"].as_str()).collect();
        if pending.len() == 2
            && reasons
                .iter()
                .all(|r| r.contains("3 nodes fail node.labels.zone==east"))
            && reasons.len() == 2
        {
            Ok(())
        } else {
            Err(format!("{pending:#?}"))
        }
    })
    .unwrap_or_else(|e| panic!("east not pending with its reason: {e}"));
    ok(lab, &["node", "update", "--label-add", "zone=east", "w2"]);
    wait_for(lab, "east", Duration::from_secs(20), |c| {
        c == &BTreeMap::from([("w2".into(), 2)])
    });

    // A killed worker's tasks run elsewhere and the service is back at 6.
    lab.lab_mut().kill("w3").unwrap();
    let after_kill = wait_for(lab, "web", Duration::from_secs(30), |c| {
        c.values().sum::<usize>() == 6 && !c.contains_key("w3")
    });
    assert_eq!(after_kill.keys().collect::<Vec<_>>(), ["w1", "w2"]);
    let orphaned = tasks(lab, "web")
        .into_iter()
        .filter(|t| t["node"] == "w3")
        .all(|t| t["state"] == "orphaned" && t["desired"] == "shutdown");
    assert!(orphaned, "w3's tasks are not marked orphaned");

    // Draining a node moves its tasks.
    ok(lab, &["node", "update", "--availability", "drain", "w1"]);
    wait_for(lab, "web", Duration::from_secs(30), |c| {
        c == &BTreeMap::from([("w2".into(), 6)])
    });

    // Restarting meshd on a worker, or the only manager, keeps the tasks: the agent adopts
    // what the runtime still runs, and workloads outlive the managers.
    let ids = |lab: &TestLab| -> Vec<String> {
        let mut ids: Vec<String> = tasks(lab, "web")
            .into_iter()
            .filter(|t| t["desired"] == "running")
            .map(|t| format!("{} {}", t["id"], t["state"]))
            .collect();
        ids.sort();
        ids
    };
    let before = ids(lab);
    for host in ["w2", "m1"] {
        lab.lab_mut().stop_daemon(host).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        lab.lab_mut().start(host).unwrap();
        until_ok(Duration::from_secs(20), || {
            let now = lab.meshctl("m1", &["service", "ps", "web", "--format", "json"])?;
            let _: Vec<Value> = serde_json::from_str(&now).map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("m1 not answering after restarting {host}: {e}"));
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            ids(lab),
            before,
            "tasks changed after restarting meshd on {host}"
        );
    }

    // An exiting task restarts per policy: on failure, 2 s apart, at most 2 restarts.
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            "flaky",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "2",
            IMAGE,
            "sh",
            "-c",
            "exit 3",
        ],
    );
    let (history, _) = until_ok(Duration::from_secs(30), || {
        let history = tasks(lab, "flaky");
        if history.len() == 3 && history.iter().all(|t| t["state"] == "failed") {
            Ok(history)
        } else {
            Err(format!("{history:#?}"))
        }
    })
    .unwrap_or_else(|e| panic!("flaky did not fail 3 times: {e}"));
    let mut attempts: Vec<(u64, u64, u64)> = history
        .iter()
        .map(|t| {
            assert_eq!(t["error"], "task exited: exit code 3", "{t}");
            (
                t["attempt"].as_u64().unwrap(),
                t["created_ms"].as_u64().unwrap(),
                t["state_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    attempts.sort();
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2]);
    for pair in attempts.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2 + 2000,
            "restarted {} ms after the exit, before the 2 s delay",
            pair[1].1 as i64 - pair[0].2 as i64
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tasks(lab, "flaky").len(),
        3,
        "restarted past --restart-max-attempts"
    );

    // A global service runs on every active node, and on one that joins later.
    ok(
        lab,
        &[
            "service", "create", "--name", "agent", "--mode", "global", IMAGE, "sleep", "100000",
        ],
    );
    wait_for(lab, "agent", Duration::from_secs(20), |c| {
        c == &BTreeMap::from([("w2".into(), 1)])
    });
    let token = ok(lab, &["swarm", "join-token", "-q", "worker"]);
    lab.meshctl("w4", &["swarm", "leave"]).unwrap();
    ok(lab, &["node", "rm", "--force", "w4"]);
    let manager = format!("{}:2377", lab.addr("m1"));
    lab.meshctl("w4", &["swarm", "join", "--token", token.trim(), &manager])
        .unwrap();
    wait_for(lab, "agent", Duration::from_secs(20), |c| {
        c.get("w4") == Some(&1) && c.get("w2") == Some(&1)
    });

    // Scale and remove.
    ok(lab, &["service", "scale", "web=2"]);
    wait_for(lab, "web", Duration::from_secs(30), |c| {
        c.values().sum::<usize>() == 2
    });
    ok(lab, &["service", "rm", "east"]);
    until_ok(Duration::from_secs(30), || {
        let running: usize = tasks(lab, "web").len();
        match lab.meshctl("m1", &["service", "ps", "east"]) {
            Err(e) if e.contains("no service") => Ok(running),
            other => Err(format!("east still there: {other:?}")),
        }
    })
    .unwrap();
}

fn bad_input_changes_nothing(lab: &TestLab) {
    let before = ok(lab, &["service", "ls", "--format", "json"]);
    let cases: [(&[&str], &str); 6] = [
        (
            &["service", "create", "--name", "x", "--replicaz", "2", IMAGE],
            "--replicaz",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--constraint",
                "node.zone=east",
                IMAGE,
            ],
            "no == or !=",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--replicas",
                "-1",
                IMAGE,
            ],
            "negative",
        ),
        (
            &["service", "create", "--name", "web", IMAGE],
            "already exists",
        ),
        (
            &["service", "create", "--name", "x", "nosuch:latest"],
            "is on no node",
        ),
        (&["service", "scale", "web=-3"], "0 or more"),
    ];
    for (args, needle) in cases {
        let err = lab
            .meshctl("m1", args)
            .expect_err(&format!("{args:?} was accepted"));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(ok(lab, &["service", "ls", "--format", "json"]), before);
}

#[test]
fn services_run_spread_heal_and_restart_with_the_process_runtime() {
    let mut lab = lab_with("svcproc", false);
    scenario(&mut lab);
    bad_input_changes_nothing(&lab);
}

#[test]
fn services_run_spread_heal_and_restart_with_containerd() {
    let mut lab = lab_with("svcctrd", true);
    scenario(&mut lab);
    bad_input_changes_nothing(&lab);
}
