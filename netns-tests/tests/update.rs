//! Rolling updates on a real lab (a drained manager, two workers, a client c1 outside the
//! cluster): a start-first update of 5 replicas under constant load through the routing mesh
//! fails no request; an update whose tasks fail pauses with the reason, resumes, and with
//! failure action rollback returns to the previous spec on its own; bad updates change
//! nothing.

use std::net::SocketAddrV4;
use std::process::Output;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::web::{get, Load, QUICK_STOP_WEB as WEB};
use netns_tests::{report, until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";
const HOSTS: [&str; 3] = ["m1", "w1", "w2"];

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

fn meshctl(lab: &TestLab, args: &[&str]) -> Output {
    lab.meshctl_output("m1", args)
}

fn lab(tag: &str) -> TestLab {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 2;
        spec.clients = 1;
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    lab
}

fn inspect(lab: &TestLab, service: &str) -> Value {
    let json: Value = serde_json::from_str(&ok(lab, &["service", "inspect", service])).unwrap();
    json[0].clone()
}

/// Waits until `count` tasks of `service` run its current spec.
fn wait_current(lab: &TestLab, service: &str, count: usize) {
    until_ok(Duration::from_secs(60), || {
        let version = inspect(lab, service)["spec_version"].as_u64().unwrap();
        let tasks: Vec<Value> =
            serde_json::from_str(&ok(lab, &["service", "ps", service, "--format", "json"]))
                .unwrap();
        let current = tasks
            .iter()
            .filter(|t| {
                t["desired"] == "running"
                    && t["state"] == "running"
                    && t["spec_version"].as_u64() == Some(version)
            })
            .count();
        (current == count).then_some(()).ok_or(format!(
            "{current} of {count} tasks on spec {version}: {tasks:#?}"
        ))
    })
    .unwrap_or_else(|e| panic!("{service}: {e}"));
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_start_first_rolling_update_under_load_fails_no_request() {
    let lab = lab("update");
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "5",
            "--publish",
            "8080:80",
            "--env",
            "VERSION=v1",
            // A task takes traffic once it answers, not as soon as its process starts.
            "--health-tcp",
            "80",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "1s",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    wait_current(&lab, "web", 5);
    let targets: Vec<SocketAddrV4> = HOSTS
        .iter()
        .map(|h| SocketAddrV4::new(lab.addr(h), 8080))
        .collect();
    // Every host answers before the load starts.
    for target in &targets {
        let target = *target;
        let netns = lab.lab().netns("c1").unwrap();
        until_ok(Duration::from_secs(20), move || {
            netns_tests::in_netns(&netns, move || get(target, "/")).unwrap()
        })
        .unwrap_or_else(|e| panic!("{target} never answered: {e}"));
    }

    let load = Load::start(&lab.lab().netns("c1").unwrap(), targets.clone());
    std::thread::sleep(Duration::from_secs(1));
    let out = meshctl(
        &lab,
        &[
            "service",
            "update",
            "--env-add",
            "VERSION=v2",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "1s",
            "web",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (served, failed) = load.finish();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("overall progress: 5 out of 5 tasks"),
        "{shown}"
    );
    assert!(shown.contains("verify: service converged"), "{shown}");
    assert!(served > 200, "the load ran ({served} requests)");
    if !failed.is_empty() {
        lab.keep_logs();
    }
    // Start-first with health checks and a 5 s drain: nothing may fail.
    let total = served + failed.len() as u64;
    assert!(
        report::verdict(
            "data path",
            "rolling update, start-first (bpf)",
            failed.is_empty(),
            &format!("{} of {total} requests failed; bound 0", failed.len()),
        ),
        "{} of {} requests failed during the update: {:?}; counters: {} {}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)],
        lab.lb_counters("m1", "drop:"),
        lab.lb_counters("m1", "forward:rst")
    );
    eprintln!("rolling update under load: {served} requests, 0 failed");

    let status = &inspect(&lab, "web")["update_status"];
    assert_eq!(status["state"], "completed", "{status}");
    // Every answer now comes from the new spec.
    let netns = lab.lab().netns("c1").unwrap();
    let answers = netns_tests::in_netns(&netns, move || {
        (0..15)
            .map(|i| get(targets[i % targets.len()], "/"))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .unwrap();
    assert!(answers.iter().all(|a| a.starts_with("v2 ")), "{answers:?}");
}

#[test]
fn a_failing_update_pauses_resumes_and_rolls_back_on_its_own() {
    let lab = lab("rollback");
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--env",
            "VERSION=v1",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    wait_current(&lab, "web", 3);
    let good = inspect(&lab, "web")["spec"].clone();

    // Bad input changes nothing.
    let version = inspect(&lab, "web")["version"].clone();
    for (args, expected) in [
        (
            vec!["--env-add", "A=1", "--env-rm", "A"],
            "--env-add and --env-rm",
        ),
        (vec!["--secret-add", "nope"], "nope"),
        (vec!["--replicas", "2", "--rollback"], "--rollback"),
        (vec!["--update-max-failure-ratio", "3"], "between 0 and 1"),
    ] {
        let mut argv = vec!["service", "update"];
        argv.extend(args);
        argv.push("web");
        let out = meshctl(&lab, &argv);
        assert!(!out.status.success(), "{argv:?} was accepted");
        let shown = text(&out);
        assert!(shown.contains(expected), "{argv:?}: {shown}");
    }
    assert_eq!(inspect(&lab, "web")["version"], version);

    // Tasks that exit at once: the update pauses after the first, and says which and why.
    let out = meshctl(
        &lab,
        &[
            "service",
            "update",
            "--args",
            "sh -c 'exit 3'",
            "--update-monitor",
            "1s",
            "web",
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("update paused due to failure or early termination of task"),
        "{shown}"
    );
    let status = &inspect(&lab, "web")["update_status"];
    assert_eq!(status["state"], "paused", "{status}");
    // Paused: two slots still run the old spec and answer.
    let running: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["service", "ps", "web", "--format", "json"])).unwrap();
    let old_running = running
        .iter()
        .filter(|t| t["desired"] == "running" && t["state"] == "running")
        .count();
    assert!(old_running >= 2, "{running:#?}");

    // `service update` with no change resumes it (and it pauses again: the spec is still bad).
    let out = meshctl(&lab, &["service", "update", "--detach", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    let resumed = &inspect(&lab, "web")["update_status"];
    assert!(
        resumed["state"] == "updating" || resumed["started_ms"] != status["started_ms"],
        "{resumed}"
    );

    // A good spec completes.
    let out = meshctl(
        &lab,
        &[
            "service",
            "update",
            "--args",
            &format!("sh -c '{}'", WEB.replace('\'', "'\\''")),
            "--env-add",
            "VERSION=v2",
            "--update-parallelism",
            "0",
            "--update-monitor",
            "1s",
            "web",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_current(&lab, "web", 3);
    let fixed = inspect(&lab, "web")["spec"].clone();
    assert_ne!(fixed, good);

    // Failure action rollback: back to the spec before, on its own, with the reason shown.
    let out = meshctl(
        &lab,
        &[
            "service",
            "update",
            "--args",
            "sh -c 'exit 4'",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1s",
            "--rollback-monitor",
            "1s",
            "web",
        ],
    );
    let shown = text(&out);
    assert!(
        !out.status.success(),
        "an automatic rollback is a failure: {shown}"
    );
    let service = inspect(&lab, "web");
    let status = &service["update_status"];
    assert_eq!(status["state"], "rollback_completed", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("update rolled back due to failure or early termination of task"),
        "{message}"
    );
    assert!(shown.contains(message), "the CLI shows the reason: {shown}");
    // The spec is the one before the failed update, apart from its failure action.
    assert_eq!(service["spec"]["command"], fixed["command"]);
    assert_eq!(service["spec"]["env"], fixed["env"]);
    wait_current(&lab, "web", 3);
}
