//! The ingress routing mesh on a real 5-host lab in XDP mode (`meshctl lab up --lb-mode xdp`):
//! a drained manager, four workers and a client c1 outside the cluster. meshd attaches the BPF
//! balancer at XDP on every host's underlay without any sysctl set by hand; the lab puts an XDP
//! pass program on every switch port (a veth delivers `XDP_TX` frames only to a peer running
//! XDP) and turns off c1's tx checksum offload. A published port answers on every host, spreads
//! over every task, the task sees c1's own address, `meshctl diag lb` reports the XDP path on
//! every host, and a scale-down under constant connection-per-request load fails no request.
//! Helpers are those of `ingress.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";
const HOSTS: [&str; 5] = ["m1", "w1", "w2", "w3", "w4"];
const TIMEOUT: Duration = Duration::from_secs(3);

/// busybox httpd: `/` is a static page, `/cgi-bin/ip` answers `<slot> <client address>`,
/// `/cgi-bin/slow` answers `begin <slot>`, then `end` six seconds later.
const WEB: &str = r#"mkdir -p /www/cgi-bin
echo "slot $MESH_TASK_SLOT" > /www/index.html
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "%s $REMOTE_ADDR"\n' "$MESH_TASK_SLOT" > /www/cgi-bin/ip
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "begin %s"\nsleep 6\necho end\n' "$MESH_TASK_SLOT" > /www/cgi-bin/slow
chmod +x /www/cgi-bin/ip /www/cgi-bin/slow
exec httpd -f -p 80 -h /www"#;

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

/// m1 (a manager, drained), w1-w4, c1; tasks run only on w1 and w2, so w3, w4 and m1 answer
/// published ports without running any task.
fn lab(tag: &str, lb_mode: Option<&str>) -> TestLab {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 4;
        spec.clients = 1;
        spec.lb_mode = lb_mode.map(str::to_string);
    });
    for host in ["m1", "w3", "w4"] {
        ok(&lab, &["node", "update", "--availability", "drain", host]);
    }
    lab
}

fn web_service(lab: &TestLab, name: &str, replicas: &str, publish: &str) {
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            replicas,
            "--publish",
            publish,
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
}

/// Running tasks of `service`: slot → node.
fn running(lab: &TestLab, service: &str) -> BTreeMap<u64, String> {
    let json = ok(lab, &["service", "ps", service, "--format", "json"]);
    let tasks: Vec<Value> = serde_json::from_str(&json).unwrap();
    tasks
        .iter()
        .filter(|t| t["desired"] == "running" && t["state"] == "running")
        .map(|t| {
            (
                t["slot"].as_u64().unwrap(),
                t["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_running(lab: &TestLab, service: &str, count: usize) -> BTreeMap<u64, String> {
    until_ok(Duration::from_secs(40), || {
        let found = running(lab, service);
        (found.len() == count)
            .then(|| found.clone())
            .ok_or(format!("{found:?}"))
    })
    .unwrap_or_else(|e| panic!("{service} never ran {count} tasks: {e}"))
    .0
}

/// The body of `GET path` from `addr`, when the answer is a 200.
fn get(addr: SocketAddrV4, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: mesh\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    // CGI answers end their headers with a bare blank line.
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .or_else(|| answer.split_once("\n\n"))
        .ok_or_else(|| format!("{addr}: no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {head}"));
    }
    Ok(body.trim().to_string())
}

/// Runs `f` in c1's network namespace.
fn from_client<T: Send + 'static>(lab: &TestLab, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = lab.lab().netns("c1").unwrap();
    netns_tests::in_netns(&netns, f).expect("enter c1")
}

/// `/cgi-bin/ip` `count` times through `host`: (slot, client address seen by the task).
fn who_answers(
    lab: &TestLab,
    host: &str,
    port: u16,
    count: usize,
) -> Result<Vec<(u64, String)>, String> {
    let addr = SocketAddrV4::new(lab.addr(host), port);
    from_client(lab, move || {
        (0..count)
            .map(|_| {
                let body = get(addr, "/cgi-bin/ip")?;
                let (slot, client) = body
                    .split_once(' ')
                    .ok_or_else(|| format!("odd answer {body:?}"))?;
                // httpd listens dual-stack: IPv4 peers appear as [::ffff:a.b.c.d].
                let client = client.trim_start_matches("[::ffff:").trim_end_matches(']');
                Ok((
                    slot.parse().map_err(|_| format!("odd slot {body:?}"))?,
                    client.to_string(),
                ))
            })
            .collect()
    })
}

/// Constant load from c1: connection per request, round robin over `targets`, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    done: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    fn start(lab: &TestLab, targets: Vec<SocketAddrV4>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let netns = lab.lab().netns("c1").unwrap();
        let done = std::thread::spawn(move || {
            netns_tests::in_netns(&netns, move || {
                let (mut served, mut failed) = (0u64, Vec::new());
                for target in targets.iter().cycle() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(*target, "/") {
                        Ok(_) => served += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (served, failed)
            })
            .expect("enter c1")
        });
        Load { stop, done }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.done.join().expect("load thread")
    }
}

fn every_host(lab: &TestLab, port: u16) -> Vec<SocketAddrV4> {
    HOSTS
        .iter()
        .map(|h| SocketAddrV4::new(lab.addr(h), port))
        .collect()
}

/// Every host answers, every task is reached, the tasks see c1's address (when `real_ip`
/// says the path keeps it for this host and slot).
fn check_mesh(
    lab: &TestLab,
    port: u16,
    slots: &BTreeMap<u64, String>,
    real_ip: impl Fn(&str, &str) -> bool,
) {
    let client = lab.addr("c1").to_string();
    let mut reached = BTreeSet::new();
    for host in HOSTS {
        let answers = until_ok(Duration::from_secs(10), || who_answers(lab, host, port, 24))
            .unwrap_or_else(|e| panic!("port {port} through {host}: {e}"))
            .0;
        for (slot, seen) in answers {
            let node = &slots[&slot];
            if real_ip(host, node) {
                assert_eq!(
                    seen, client,
                    "task {slot} on {node}, reached through {host}, saw {seen}"
                );
            }
            reached.insert(slot);
        }
    }
    let all: BTreeSet<u64> = slots.keys().copied().collect();
    assert_eq!(reached, all, "requests through every host reach every task");
}

/// Scales `service` to 1 while c1 loads every host; no request may fail.
fn scale_down_under_load(lab: &TestLab, service: &str, port: u16) {
    let load = Load::start(lab, every_host(lab, port));
    std::thread::sleep(Duration::from_secs(1));
    ok(lab, &["service", "scale", &format!("{service}=1")]);
    until_ok(Duration::from_secs(30), || {
        let json = ok(lab, &["service", "ps", service, "--format", "json"]);
        let tasks: Vec<Value> = serde_json::from_str(&json).unwrap();
        let live = tasks
            .iter()
            .filter(|t| t["state"] == "running" || t["state"] == "starting")
            .count();
        (live == 1)
            .then_some(())
            .ok_or(format!("{live} tasks still live"))
    })
    .unwrap_or_else(|e| panic!("scale-down never finished: {e}"));
    std::thread::sleep(Duration::from_secs(1));
    let (served, failed) = load.finish();
    assert!(served > 50, "the load ran ({served} requests)");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the scale-down: {:?}; drops: {}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)],
        drops(lab)
    );
    eprintln!("scale-down under load: {served} requests, 0 failed");
}

fn diag_lb(lab: &TestLab) -> Vec<Value> {
    let out = lab.meshctl_output("w3", &["diag", "lb", "--format", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("diag lb: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "diag lb found a problem: {report}");
    report["hosts"].as_array().unwrap().clone()
}

/// Every host's nonzero `drop:` counters, for failure messages.
fn drops(lab: &TestLab) -> String {
    let out = lab.meshctl_output("w3", &["diag", "lb", "--format", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut found = Vec::new();
    for host in report["hosts"].as_array().into_iter().flatten() {
        // Counters are [name, packets] pairs.
        for pair in host["result"]["Lb"]["counters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (name, value) = (
                pair[0].as_str().unwrap_or(""),
                pair[1].as_u64().unwrap_or(0),
            );
            if name.starts_with("drop:") && value > 0 {
                found.push(format!("{}:{name}={value}", host["node"]));
            }
        }
    }
    found.join(" ")
}

fn paths(lab: &TestLab) -> BTreeSet<String> {
    diag_lb(lab)
        .iter()
        .map(|h| {
            h["result"]["Lb"]["path"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

// A known bug, not a flaky test to live with: in XDP mode on veth, about 1 request in 6,000
// of the scale-down's load times out through a host without tasks (no drop counted), in
// roughly a third of runs on a loaded 2-core machine. The default on veth is TC, whose lab
// test passes every time. Run it with `--ignored` while fixing it.
#[test]
#[ignore = "XDP on veth loses about 1 in 6000 requests during a scale-down under load; see the comment"]
fn xdp_mode_answers_everywhere_keeps_client_ip_and_scales_down_without_errors() {
    let lab = lab("mesh-xdp", Some("xdp"));
    web_service(&lab, "web", "3", "published=8080,target=80");
    let slots = wait_running(&lab, "web", 3);
    check_mesh(&lab, 8080, &slots, |_, _| true);
    assert_eq!(paths(&lab), BTreeSet::from(["xdp".to_string()]));
    // The lab's part: a pass program on every switch port, full checksums from c1.
    let switch = lab::switch_netns(lab.name());
    for host in HOSTS.iter().chain(&["c1"]) {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{switch}"))
            .args(["ip", "link", "show", &format!("p-{host}")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("prog/xdp"), "p-{host} runs no XDP: {text}");
    }
    let offloads = lab.sh("c1", &["ethtool", "-k", "eth0"]);
    assert!(
        offloads.contains("tx-checksumming: off"),
        "c1's tx checksum offload: {offloads}"
    );
    // meshd turned on what bpf_fib_lookup needs, on its own (the lab sets no sysctl).
    for host in HOSTS {
        let forwarding = lab.sh(host, &["cat", "/proc/sys/net/ipv4/conf/eth0/forwarding"]);
        assert_eq!(forwarding.trim(), "1", "{host}: eth0 forwarding");
    }

    scale_down_under_load(&lab, "web", 8080);
    let slots = wait_running(&lab, "web", 1);
    check_mesh(&lab, 8080, &slots, |_, _| true);
    assert_eq!(paths(&lab), BTreeSet::from(["xdp".to_string()]));
}
