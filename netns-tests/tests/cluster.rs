//! The control plane on real namespaces: elections, failover, quorum loss and recovery, join
//! tokens, restarts, liveness and bad input.

use std::time::{Duration, Instant};

use lab::{find_binary, LabSpec, MESHCTL};
use netns_tests::{report, TestLab};
use serde_json::Value;

fn meshctl() -> String {
    find_binary(MESHCTL).unwrap().to_string_lossy().into_owned()
}

/// Runs meshctl in `host`; Ok(stdout) or Err(stderr).
fn run(lab: &TestLab, host: &str, args: &[&str]) -> Result<String, String> {
    let binary = meshctl();
    let mut argv = vec![binary.as_str()];
    argv.extend_from_slice(args);
    // A failed spawn (seen as EINVAL, rarely, while many labs run at once) is an error the
    // callers' retry loops absorb, like any other failed call.
    let out = lab
        .lab()
        .output(host, &argv)
        .map_err(|err| format!("starting meshctl in {host}: {err}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

fn nodes(lab: &TestLab, host: &str) -> Vec<Value> {
    let json = run(lab, host, &["node", "ls", "--format", "json"])
        .unwrap_or_else(|e| panic!("node ls on {host}: {e}"));
    serde_json::from_str::<Vec<Value>>(&json).unwrap()
}

fn leaders(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n["manager_status"] == "Leader")
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

fn managers(count: usize, workers: usize) -> impl FnOnce(&mut LabSpec) {
    move |spec| {
        spec.managers = count;
        spec.workers = workers;
    }
}

/// Retries `f` every 50 ms until it succeeds or `limit` passes; returns the time it took.
fn until_ok<T>(
    limit: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(value) => return Ok((value, start.elapsed())),
            Err(err) if start.elapsed() >= limit => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn three_and_five_managers_elect_exactly_one_leader() {
    for count in [3, 5] {
        let lab = TestLab::up(&format!("elect{count}"), managers(count, 1));
        let mut seen = Vec::new();
        for i in 1..=count {
            let host = format!("m{i}");
            let list = nodes(&lab, &host);
            assert_eq!(list.len(), count + 1, "{list:?}");
            let found = leaders(&list);
            assert_eq!(found.len(), 1, "{host} sees leaders {found:?}");
            seen.push(found[0].clone());
            let managers = list.iter().filter(|n| n["role"] == "manager").count();
            assert_eq!(managers, count);
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "managers disagree on the leader: {seen:?}");
    }
}

/// A killed leader is replaced and the cluster commits again. How long that takes is reported,
/// not asserted (a wall-clock bound flakes on a loaded 2-core machine: 4.8 s was seen once in
/// CI, under 2 s otherwise); the limit only ends a test that would hang.
#[test]
fn killing_the_leader_elects_a_new_one_that_commits() {
    let mut lab = TestLab::up("failover", managers(3, 1));
    let leader = leaders(&nodes(&lab, "m1")).pop().unwrap();
    let survivor = if leader == "m1" { "m2" } else { "m1" };
    lab.lab_mut().kill(&leader).unwrap();
    let (_, took) = until_ok(Duration::from_secs(30), || {
        run(
            &lab,
            survivor,
            &["node", "update", "w1", "--label-add", "after=failover"],
        )
    })
    .unwrap_or_else(|e| panic!("no commit after the leader died: {e}"));
    eprintln!("the first commit after a leader kill took {took:?}");
    let list = nodes(&lab, survivor);
    let new_leader = leaders(&list);
    assert_eq!(new_leader.len(), 1);
    assert_ne!(new_leader[0], leader);
}

#[test]
fn four_managers_losing_two_refuse_writes_then_recover_without_loss() {
    let mut lab = TestLab::up("quorum", managers(4, 1));
    run(
        &lab,
        "m1",
        &["node", "update", "w1", "--label-add", "before=loss"],
    )
    .unwrap();
    lab.lab_mut().kill("m3").unwrap();
    lab.lab_mut().kill("m4").unwrap();
    // A write racing the failure may enter the log before the leader notices; its outcome is
    // open until the managers return, and the error says so. Once the loss is known, writes
    // are refused at once, and those are never applied.
    let probe = run(
        &lab,
        "m1",
        &["node", "update", "w1", "--label-add", "racing=loss"],
    );
    if let Err(err) = &probe {
        assert!(
            err.contains("quorum lost") || err.contains("not committed"),
            "{err}"
        );
    }
    let start = Instant::now();
    let err = run(
        &lab,
        "m1",
        &["node", "update", "w1", "--label-add", "during=loss"],
    )
    .unwrap_err();
    assert!(
        err.contains("quorum lost") && err.contains("2 of 4") && err.contains("bring back 1 more"),
        "{err}"
    );
    assert!(
        !err.contains("not committed"),
        "the loss was known, yet the write waited: {err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the quorum error took {:?}",
        start.elapsed()
    );
    // The last known state can still be read, marked stale.
    let list = nodes(&lab, "m2");
    assert_eq!(list.len(), 5);
    // One manager back: writes work again and nothing committed was lost.
    lab.lab_mut().start("m3").unwrap();
    until_ok(Duration::from_secs(20), || {
        run(
            &lab,
            "m1",
            &["node", "update", "w1", "--label-add", "after=recovery"],
        )
    })
    .unwrap_or_else(|e| panic!("writes still refused after a manager came back: {e}"));
    let w1 = run(&lab, "m2", &["node", "inspect", "w1", "--format", "json"]).unwrap();
    let w1: Value = serde_json::from_str(&w1).unwrap();
    assert_eq!(w1["labels"]["before"], "loss");
    assert_eq!(w1["labels"]["after"], "recovery");
    assert!(
        w1["labels"].get("during").is_none(),
        "a refused write was applied"
    );
}

#[test]
fn forged_rotated_and_foreign_tokens_are_refused() {
    let lab = TestLab::up("tokens", |spec| {
        spec.managers = 2;
        spec.workers = 1;
        spec.form_cluster = false;
    });
    // Two separate clusters: one on m1, another on m2.
    run(
        &lab,
        "m1",
        &["swarm", "init", "--advertise-addr", "198.18.0.1"],
    )
    .unwrap();
    run(
        &lab,
        "m2",
        &["swarm", "init", "--advertise-addr", "198.18.0.2"],
    )
    .unwrap();
    let token = |host: &str| {
        run(&lab, host, &["swarm", "join-token", "-q", "worker"])
            .unwrap()
            .trim()
            .to_string()
    };
    let (ours, foreign) = (token("m1"), token("m2"));
    let join = |token: &str| {
        run(
            &lab,
            "w1",
            &["swarm", "join", "--token", token, "198.18.0.1:2377"],
        )
    };

    let foreign_err = join(&foreign).unwrap_err();
    let forged = format!("{}{}", &ours[..ours.len() - 26], "a".repeat(26));
    let forged_err = join(&forged).unwrap_err();
    let malformed_err = join("SWMTKN-1-abc-def").unwrap_err();
    run(&lab, "m1", &["swarm", "join-token", "--rotate", "worker"]).unwrap();
    let rotated_err = join(&ours).unwrap_err();
    // None of it changed anything: the right token still works.
    let before = nodes(&lab, "m1").len();
    join(&token("m1")).unwrap();
    let after = nodes(&lab, "m1").len();
    let messages_right = foreign_err.contains("CA is not the one the join token names")
        && forged_err.contains("not valid")
        && forged_err.contains("rotated or mistyped")
        && malformed_err.contains("not a Mesh join token")
        && rotated_err.contains("rotated");
    assert!(
        report::verdict(
            "security",
            "rotated, forged and foreign join tokens are refused",
            messages_right && before == 1 && after == 2,
            &format!(
                "rotated, forged, malformed and another cluster's token refused (nodes stay {before}); the current token then joins ({after} nodes)"
            )
        ),
        "foreign: {foreign_err}\nforged: {forged_err}\nmalformed: {malformed_err}\nrotated: {rotated_err}\nnodes {before} -> {after}"
    );
}

#[test]
fn restarting_every_manager_keeps_the_state() {
    let mut lab = TestLab::up("restart", managers(3, 1));
    run(
        &lab,
        "m1",
        &[
            "node",
            "update",
            "w1",
            "--label-add",
            "zone=east",
            "--availability",
            "drain",
        ],
    )
    .unwrap();
    for host in ["m1", "m2", "m3"] {
        lab.lab_mut().kill(host).unwrap();
    }
    for host in ["m1", "m2", "m3"] {
        lab.lab_mut().start(host).unwrap();
    }
    let (list, _) = until_ok(Duration::from_secs(20), || {
        let list = nodes(&lab, "m2");
        if leaders(&list).len() == 1 {
            Ok(list)
        } else {
            Err("no leader yet".into())
        }
    })
    .unwrap();
    assert_eq!(list.len(), 4);
    let w1 = list.iter().find(|n| n["name"] == "w1").unwrap();
    assert_eq!(w1["labels"]["zone"], "east");
    assert_eq!(w1["availability"], "drain");
}

#[test]
fn force_new_cluster_recovers_from_the_one_surviving_manager() {
    let mut lab = TestLab::up("force", managers(3, 1));
    run(
        &lab,
        "m1",
        &["node", "update", "w1", "--label-add", "kept=yes"],
    )
    .unwrap();
    lab.lab_mut().kill("m2").unwrap();
    lab.lab_mut().kill("m3").unwrap();
    lab.lab_mut().stop_daemon("m1").unwrap();
    let files = lab.lab().files("m1").unwrap();
    let meshd = find_binary(lab::MESHD).unwrap();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(files.log())
        .unwrap();
    let mut recovered = lab
        .lab()
        .spawn(
            "m1",
            &[
                meshd.to_str().unwrap(),
                "--config",
                files.config().to_str().unwrap(),
                "--force-new-cluster",
            ],
            log.try_clone().unwrap().into(),
            log.into(),
        )
        .unwrap();
    until_ok(Duration::from_secs(20), || {
        run(
            &lab,
            "m1",
            &["node", "update", "w1", "--label-add", "after=force"],
        )
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(files.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "the recovered cluster refuses writes: {e}\nm1's log, newest first:\n{}",
            tail.join("\n")
        )
    });
    let list = nodes(&lab, "m1");
    assert_eq!(leaders(&list), ["m1"]);
    assert_eq!(
        list.iter().filter(|n| n["role"] == "manager").count(),
        1,
        "{list:?}"
    );
    let w1 = list.iter().find(|n| n["name"] == "w1").unwrap();
    assert_eq!(w1["labels"]["kept"], "yes");
    assert_eq!(w1["labels"]["after"], "force");
    recovered.kill().unwrap();
    recovered.wait().unwrap();
}

#[test]
fn a_silent_node_is_marked_down_and_ready_again() {
    let mut lab = TestLab::up("liveness", managers(1, 1));
    lab.lab_mut().kill("w1").unwrap();
    let status = |lab: &TestLab| {
        let list = nodes(lab, "m1");
        list.iter().find(|n| n["name"] == "w1").unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    until_ok(Duration::from_secs(15), || {
        if status(&lab) == "down" {
            Ok(())
        } else {
            Err("still ready".into())
        }
    })
    .unwrap_or_else(|e| panic!("w1 never marked down: {e}"));
    lab.lab_mut().start("w1").unwrap();
    until_ok(Duration::from_secs(15), || {
        if status(&lab) == "ready" {
            Ok(())
        } else {
            Err("still down".into())
        }
    })
    .unwrap_or_else(|e| panic!("w1 never ready again: {e}"));
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let lab = TestLab::up("cbad", |spec| {
        spec.managers = 1;
        spec.workers = 1;
        spec.form_cluster = false;
    });
    let err = run(&lab, "m1", &["node", "ls"]).unwrap_err();
    assert!(
        err.contains("not part of a cluster") && err.contains("swarm init"),
        "{err}"
    );
    let err = run(
        &lab,
        "m1",
        &["swarm", "init", "--default-addr-pool", "10.0.0.1/8"],
    )
    .unwrap_err();
    assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
    let err = run(
        &lab,
        "m1",
        &["swarm", "init", "--advertise-addr", "nowhere"],
    )
    .unwrap_err();
    assert!(err.contains("--advertise-addr"), "{err}");
    let err = run(
        &lab,
        "w1",
        &[
            "swarm",
            "join",
            "--token",
            "MESHTKN-1-zz-zz",
            "198.18.0.1:2377",
        ],
    )
    .unwrap_err();
    assert!(err.contains("CA digest"), "{err}");
    run(&lab, "m1", &["swarm", "init"]).unwrap();
    let err = run(&lab, "m1", &["swarm", "init"]).unwrap_err();
    assert!(err.contains("already part of a cluster"), "{err}");
    let err = run(&lab, "m1", &["node", "inspect", "nosuchnode"]).unwrap_err();
    assert!(err.contains("no node") && err.contains("node ls"), "{err}");
    let err = run(
        &lab,
        "m1",
        &["node", "update", "m1", "--label-add", "novalue"],
    )
    .unwrap_err();
    assert!(err.contains("key=value"), "{err}");
    let err = run(
        &lab,
        "m1",
        &["node", "update", "m1", "--label-add", "9bad=x"],
    )
    .unwrap_err();
    assert!(err.contains("label key"), "{err}");
    let err = run(&lab, "m1", &["node", "rm", "m1"]).unwrap_err();
    assert!(err.contains("cannot remove itself"), "{err}");
    let token = run(&lab, "m1", &["swarm", "join-token", "-q", "worker"]).unwrap();
    run(
        &lab,
        "w1",
        &["swarm", "join", "--token", token.trim(), "198.18.0.1:2377"],
    )
    .unwrap();
    let err = run(&lab, "w1", &["node", "ls"]).unwrap_err();
    assert!(err.contains("this node is a worker"), "{err}");
    let err = run(&lab, "m1", &["node", "rm", "w1"]).unwrap_err();
    assert!(err.contains("is up") && err.contains("--force"), "{err}");
    // Nothing above changed the cluster.
    let list = nodes(&lab, "m1");
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .all(|n| n["labels"].as_object().unwrap().is_empty()));
    run(&lab, "m1", &["node", "rm", "--force", "w1"]).unwrap();
    assert_eq!(nodes(&lab, "m1").len(), 1);
}

#[test]
fn promote_demote_and_leave_change_roles_without_losing_quorum() {
    let lab = TestLab::up("roles", managers(3, 2));
    let role_of = |lab: &TestLab, name: &str| {
        let list = nodes(lab, "m1");
        let node = list.iter().find(|n| n["name"] == name).unwrap().clone();
        (
            node["role"].as_str().unwrap().to_string(),
            node["manager_status"].as_str().map(str::to_string),
        )
    };
    // Promotion: w1 gets a manager certificate, starts Raft and becomes a reachable voter.
    let out = run(&lab, "m1", &["node", "promote", "w1"]).unwrap();
    assert!(out.contains("promoted"), "{out}");
    until_ok(Duration::from_secs(15), || match role_of(&lab, "w1") {
        (role, Some(status)) if role == "manager" && status == "Reachable" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("w1 never became a reachable manager: {e}"));
    // It answers the cluster API itself now.
    until_ok(Duration::from_secs(10), || run(&lab, "w1", &["node", "ls"])).unwrap();

    // Demotion back: a worker again, and refused the API.
    run(&lab, "m1", &["node", "demote", "w1"]).unwrap();
    until_ok(Duration::from_secs(15), || {
        match run(&lab, "w1", &["node", "ls"]) {
            Err(err) if err.contains("this node is a worker") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("w1 still acts as a manager: {e}"));
    assert_eq!(role_of(&lab, "w1").0, "worker");

    // Demoting down to one manager is allowed while all are reachable; the even count warns.
    let out = run(&lab, "m1", &["node", "demote", "m3"]).unwrap();
    assert!(out.contains("demoted"), "{out}");
    let err = run(&lab, "m1", &["node", "demote", "w2"]).unwrap_err();
    assert!(err.contains("already a worker"), "{err}");

    // Leaving: a manager is told to demote first; a worker leaves and shows as Down.
    let err = run(&lab, "m2", &["swarm", "leave"]).unwrap_err();
    assert!(
        err.contains("demote it first") && err.contains("--force"),
        "{err}"
    );
    run(&lab, "w2", &["swarm", "leave"]).unwrap();
    let list = nodes(&lab, "m1");
    assert_eq!(
        list.iter().find(|n| n["name"] == "w2").unwrap()["status"],
        "down"
    );
    let info = run(&lab, "w2", &["info"]).unwrap();
    assert!(info.contains("inactive"), "{info}");
    // The cluster still takes writes with its two managers.
    run(
        &lab,
        "m2",
        &["node", "update", "w1", "--label-add", "still=writable"],
    )
    .unwrap();
}

#[test]
fn a_demotion_that_would_lose_quorum_is_refused() {
    let mut lab = TestLab::up("demoteq", managers(3, 0));
    let leader = leaders(&nodes(&lab, "m1")).pop().unwrap();
    let others: Vec<String> = ["m1", "m2", "m3"]
        .iter()
        .filter(|m| **m != leader)
        .map(|m| m.to_string())
        .collect();
    lab.lab_mut().kill(&others[0]).unwrap();
    // The leader must notice the silence before it counts the manager as unreachable.
    let err = until_ok(Duration::from_secs(10), || {
        match run(&lab, &leader, &["node", "demote", &others[1]]) {
            Err(err) if err.contains("would lose quorum") => Ok(err),
            other => Err(format!("{other:?}")),
        }
    })
    .map(|(err, _)| err)
    .unwrap_or_else(|e| panic!("the demotion was not refused: {e}"));
    assert!(err.contains("bring the other managers back"), "{err}");
    let list = nodes(&lab, &leader);
    assert_eq!(
        list.iter().filter(|n| n["role"] == "manager").count(),
        3,
        "a manager was demoted: {list:?}"
    );
}

#[test]
fn a_short_blip_does_not_flap_a_node_and_workers_see_the_leader() {
    let mut lab = TestLab::up("blip", managers(1, 1));
    // The first heartbeat is acknowledged within one interval of the join.
    let leader_reachable = |lab: &TestLab| -> Result<bool, String> {
        let info: Value =
            serde_json::from_str(&run(lab, "w1", &["info", "--format", "json"])?).unwrap();
        Ok(info["membership"]["leader_reachable"] == true)
    };
    until_ok(Duration::from_secs(5), || match leader_reachable(&lab)? {
        true => Ok(()),
        false => Err("not yet".into()),
    })
    .unwrap_or_else(|e| panic!("w1 never saw the leader acknowledge: {e}"));
    // One second of silence is under the 3 s down timeout: w1 must stay Ready throughout.
    lab.lab_mut()
        .partition(&["w1".into()], &["m1".into()])
        .unwrap();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let list = nodes(&lab, "m1");
        assert_eq!(
            list.iter().find(|n| n["name"] == "w1").unwrap()["status"],
            "ready",
            "w1 flapped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.lab_mut().heal().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let list = nodes(&lab, "m1");
    assert_eq!(
        list.iter().find(|n| n["name"] == "w1").unwrap()["status"],
        "ready",
        "w1 flapped after the blip"
    );
    // A long partition does take it Down, and the worker knows it has lost the leader.
    lab.lab_mut()
        .partition(&["w1".into()], &["m1".into()])
        .unwrap();
    until_ok(Duration::from_secs(10), || match leader_reachable(&lab)? {
        false => Ok(()),
        true => Err("still reachable".into()),
    })
    .unwrap_or_else(|e| panic!("w1 still believes it reaches the leader: {e}"));
}
