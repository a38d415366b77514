//! Health checks on a real lab (a drained manager, two workers, a client c1 outside the
//! cluster): a check failing only in its start period leaves the task running and then
//! healthy, and it takes no routing-mesh traffic before; a check failing after the start
//! period takes the task out of DNS and the routing mesh and gets it replaced, with the health
//! error on the old task; TCP and HTTP checks pass and fail as their targets do. Once with
//! each runtime.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";
const TIMEOUT: Duration = Duration::from_secs(2);

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

fn create(lab: &TestLab, name: &str, options: &[&str], command: &[&str]) {
    let mut args = vec!["service", "create", "--name", name];
    args.extend_from_slice(options);
    args.push(IMAGE);
    args.extend_from_slice(command);
    ok(lab, &args);
}

/// The tasks of `service` as `service ps --format json` shows them.
fn tasks(lab: &TestLab, service: &str) -> Vec<Value> {
    serde_json::from_str(&ok(lab, &["service", "ps", service, "--format", "json"])).unwrap()
}

/// Waits until one task of `service` meant to run is running with `health`; returns it.
fn wait_health(lab: &TestLab, service: &str, health: &str, limit: Duration) -> Value {
    until_ok(limit, || {
        let all = tasks(lab, service);
        all.iter()
            .find(|t| t["desired"] == "running" && t["state"] == "running" && t["health"] == health)
            .cloned()
            .ok_or(format!("{all:#?}"))
    })
    .unwrap_or_else(|e| panic!("{service} never had a {health} task: {e}"))
    .0
}

/// The status line of `GET /` from `addr`, from c1.
fn get_from_client(lab: &TestLab, addr: SocketAddrV4) -> Result<String, String> {
    let netns = lab.lab().netns("c1").unwrap();
    netns_tests::in_netns(&netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(stream, "GET / HTTP/1.0\r\nHost: mesh\r\n\r\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let line = answer.lines().next().unwrap_or("").to_string();
        if line.contains(" 200") {
            Ok(line)
        } else {
            Err(format!("{addr}: {line:?}"))
        }
    })
    .expect("enter c1")
}

/// `dig +short tasks.<service>` from inside `(task, host)`, through the task's DNS server.
fn task_addresses(lab: &TestLab, (task, host): (&str, &str), service: &str) -> Vec<String> {
    let name = format!("tasks.{service}");
    let argv = [
        "dig",
        "@127.0.0.11",
        "+time=2",
        "+tries=1",
        "+short",
        &name,
        "A",
    ];
    let answer = lab
        .in_task(host, task, &argv)
        .unwrap_or_else(|e| panic!("{e}"));
    answer.lines().map(str::to_string).collect()
}

#[test]
fn health_checks_gate_traffic_and_replace_unhealthy_tasks() {
    scenario("health", false);
}

#[test]
fn health_checks_work_the_same_with_containerd() {
    scenario("health-ctr", true);
}

fn scenario(tag: &str, containerd: bool) {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 2;
        spec.clients = 1;
        if containerd {
            spec.runtime = lab::TaskRuntime::Containerd;
        }
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    ok(&lab, &["network", "create", "--driver", "overlay", "back"]);
    let every_second = ["--health-interval", "1s", "--health-timeout", "2s"];

    // Bad flags change nothing and name the fix.
    let refused = lab
        .meshctl(
            "m1",
            &[
                "service",
                "create",
                "--name",
                "bad",
                "--health-cmd",
                "true",
                "--health-tcp",
                "80",
                IMAGE,
            ],
        )
        .unwrap_err();
    assert!(refused.contains("keep one of them"), "{refused}");

    // Fails for its first 8 s, inside a 30 s start period, with a single retry allowed.
    let mut slow = vec!["--publish", "8080:80", "--health-cmd", "test -f /tmp/ready"];
    slow.extend_from_slice(&every_second);
    slow.extend_from_slice(&["--health-retries", "1", "--health-start-period", "30s"]);
    create(
        &lab,
        "slow",
        &slow,
        &[
            "sh",
            "-c",
            "httpd -p 80 -h /www; sleep 8; touch /tmp/ready; exec sleep 3600",
        ],
    );
    // Passes, then fails 40 s after the start (once the checks above are done), well after its
    // 1 s start period.
    let mut flaky = vec!["--network", "back", "--publish", "8081:80"];
    flaky.extend_from_slice(&["--health-cmd", "test ! -f /tmp/broken"]);
    flaky.extend_from_slice(&every_second);
    flaky.extend_from_slice(&["--health-retries", "2", "--health-start-period", "1s"]);
    create(
        &lab,
        "flaky",
        &flaky,
        &[
            "sh",
            "-c",
            "httpd -p 80 -h /www; sleep 40; touch /tmp/broken; exec sleep 3600",
        ],
    );
    create(&lab, "client", &["--network", "back"], &["sleep", "3600"]);
    let mut tcp = vec!["--health-tcp", "80"];
    tcp.extend_from_slice(&every_second);
    create(
        &lab,
        "tcp",
        &tcp,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let mut http = vec!["--health-http", "80/index.html"];
    http.extend_from_slice(&every_second);
    create(
        &lab,
        "http",
        &http,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let mut missing = vec!["--health-http", "80/missing", "--health-retries", "1"];
    missing.extend_from_slice(&every_second);
    missing.extend_from_slice(&["--restart-condition", "none"]);
    create(
        &lab,
        "missing",
        &missing,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );

    // Starting: running, but the routing mesh gives it nothing.
    let starting = wait_health(&lab, "slow", "starting", Duration::from_secs(60));
    let slow_port = SocketAddrV4::new(lab.addr("w1"), 8080);
    let refused = get_from_client(&lab, slow_port);
    assert!(refused.is_err(), "a starting task answered: {refused:?}");
    let ps = ok(&lab, &["service", "ps", "slow"]);
    assert!(ps.contains("Running (starting)"), "{ps}");
    // Failures in the start period do not count: the same task becomes healthy and serves.
    let healthy = wait_health(&lab, "slow", "healthy", Duration::from_secs(30));
    assert_eq!(healthy["id"], starting["id"]);
    assert_eq!(tasks(&lab, "slow").len(), 1, "{:#?}", tasks(&lab, "slow"));
    until_ok(Duration::from_secs(5), || get_from_client(&lab, slow_port))
        .unwrap_or_else(|e| panic!("the healthy task never answered: {e}"));
    let ps = ok(&lab, &["service", "ps", "slow"]);
    assert!(ps.contains("Running (healthy)"), "{ps}");

    // TCP and HTTP checks pass; an HTTP check of a missing page fails the task.
    wait_health(&lab, "tcp", "healthy", Duration::from_secs(30));
    wait_health(&lab, "http", "healthy", Duration::from_secs(30));
    let (failed, _) = until_ok(Duration::from_secs(40), || {
        let all = tasks(&lab, "missing");
        all.iter()
            .find(|t| t["state"] == "failed")
            .cloned()
            .ok_or(format!("{all:#?}"))
    })
    .unwrap_or_else(|e| panic!("the failing HTTP check never failed its task: {e}"));
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("health check failed: ") && error.contains("status 404"),
        "{error}"
    );

    // Healthy flaky: in DNS and behind its published port.
    let (client, _) = until_ok(Duration::from_secs(30), || {
        let all = tasks(&lab, "client");
        all.iter()
            .find(|t| t["state"] == "running" && t["health"].is_null())
            .cloned()
            .ok_or(format!("{all:#?}"))
    })
    .unwrap_or_else(|e| panic!("the client never ran: {e}"));
    let client = (
        client["id"].as_str().unwrap().to_string(),
        client["node"].as_str().unwrap().to_string(),
    );
    let at = (client.0.as_str(), client.1.as_str());
    let first = wait_health(&lab, "flaky", "healthy", Duration::from_secs(30));
    let flaky_port = SocketAddrV4::new(lab.addr("w2"), 8081);
    until_ok(Duration::from_secs(5), || {
        let found = task_addresses(&lab, at, "flaky");
        (found.len() == 1).then_some(()).ok_or(format!("{found:?}"))
    })
    .unwrap_or_else(|e| panic!("the healthy task is not in DNS: {e}"));
    until_ok(Duration::from_secs(5), || get_from_client(&lab, flaky_port))
        .unwrap_or_else(|e| panic!("the healthy task never answered: {e}"));

    // Unhealthy: out of DNS and the routing mesh at once (it takes 10 s to die: sleep ignores
    // SIGTERM as pid 1).
    let sick = wait_health(&lab, "flaky", "unhealthy", Duration::from_secs(60));
    assert_eq!(sick["id"], first["id"]);
    until_ok(Duration::from_secs(3), || {
        let found = task_addresses(&lab, at, "flaky");
        found.is_empty().then_some(()).ok_or(format!("{found:?}"))
    })
    .unwrap_or_else(|e| panic!("the unhealthy task is still in DNS: {e}"));
    until_ok(Duration::from_secs(3), || {
        match get_from_client(&lab, flaky_port) {
            Ok(line) => Err(format!("answered {line}")),
            Err(_) => Ok(()),
        }
    })
    .unwrap_or_else(|e| panic!("the unhealthy task still gets routing-mesh traffic: {e}"));

    // Replaced: the old task failed with the health error, a new one runs.
    let (all, _) = until_ok(Duration::from_secs(60), || {
        let all = tasks(&lab, "flaky");
        let old_failed = all
            .iter()
            .any(|t| t["id"] == first["id"] && t["state"] == "failed");
        let replaced = all.iter().any(|t| {
            t["id"] != first["id"] && t["desired"] == "running" && t["state"] == "running"
        });
        (old_failed && replaced)
            .then_some(all.clone())
            .ok_or(format!("{all:#?}"))
    })
    .unwrap_or_else(|e| panic!("the unhealthy task was not replaced: {e}"));
    let old = all.iter().find(|t| t["id"] == first["id"]).unwrap();
    let error = old["error"].as_str().unwrap();
    assert!(
        error.starts_with("health check failed: command exit code 1"),
        "{error}"
    );
}
