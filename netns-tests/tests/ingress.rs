//! The ingress routing mesh on a real 5-host lab (a drained manager, four workers, and a client
//! c1 outside the cluster): a published port answers on every host, spreads over every task,
//! and the task sees the client's own address; a killed backend host costs only its own flows;
//! a scale-down under constant load fails no request; UDP; host mode; and the same behaviour
//! through the nftables fallback and the BPF program at XDP.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab::LabSpec;
use netns_tests::web::{get, Load, TIMEOUT};
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";
const HOSTS: [&str; 5] = ["m1", "w1", "w2", "w3", "w4"];

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
    let load = Load::start(&lab.lab().netns("c1").unwrap(), every_host(lab, port));
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
    if !failed.is_empty() {
        lab.keep_logs();
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the scale-down: {:?}; drops: {}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)],
        lab.lb_counters("m1", "drop:")
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

#[test]
fn published_port_answers_everywhere_keeps_client_ip_survives_a_host_and_drains() {
    let mut lab = lab("mesh", None);
    web_service(&lab, "web", "3", "published=8080,target=80");
    let slots = wait_running(&lab, "web", 3);
    check_mesh(&lab, 8080, &slots, |_, _| true);
    // veth is the underlay here: auto picks the BPF program at TC.
    assert_eq!(paths(&lab), BTreeSet::from(["tc".to_string()]));

    tasks_reach_the_vip(&lab, "web");

    scale_down_under_load(&lab, "web", 8080);
    ok(&lab, &["service", "scale", "web=3"]);
    let slots = wait_running(&lab, "web", 3);
    check_mesh(&lab, 8080, &slots, |_, _| true);

    // The host with one task goes; slow requests to the other host's tasks, opened before
    // through hosts that stay, must finish.
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in slots.values() {
        *per_node.entry(node).or_default() += 1;
    }
    let victim = per_node
        .iter()
        .min_by_key(|(_, n)| **n)
        .map(|(n, _)| n.to_string())
        .unwrap();
    let ingress: Vec<SocketAddrV4> = ["w3", "w4", "m1"]
        .iter()
        .map(|h| SocketAddrV4::new(lab.addr(h), 8080))
        .collect();
    let netns = lab.lab().netns("c1").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        netns_tests::in_netns(&netns, move || {
            let mut open = Vec::new();
            for i in 0..9 {
                let addr = ingress[i % ingress.len()];
                let mut stream =
                    TcpStream::connect_timeout(&addr.into(), TIMEOUT).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(15)))
                    .unwrap();
                write!(stream, "GET /cgi-bin/slow HTTP/1.0\r\n\r\n").unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).expect("read the answer's head");
                    if line.starts_with("begin ") {
                        break;
                    }
                }
                let slot: u64 = line["begin ".len()..].trim().parse().unwrap();
                open.push((slot, reader));
            }
            tx.send(open.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .unwrap();
            open.into_iter()
                .map(|(slot, mut reader)| {
                    let mut rest = String::new();
                    let finished = reader.read_to_string(&mut rest).is_ok() && rest.contains("end");
                    (slot, finished)
                })
                .collect::<Vec<_>>()
        })
        .expect("enter c1")
    });
    let opened = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("slow requests open");
    let survivors: BTreeSet<u64> = slots
        .iter()
        .filter(|(_, n)| **n != victim)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        opened.iter().any(|s| survivors.contains(s)),
        "some slow requests reach a surviving task: {opened:?}"
    );
    lab.lab_mut().kill(&victim).expect("kill the host");
    let outcome = slow.join().expect("slow requests");
    for (slot, finished) in &outcome {
        if survivors.contains(slot) {
            assert!(
                finished,
                "a flow to task {slot} on a surviving host was cut: {outcome:?}"
            );
        }
    }
    // New requests through every live host succeed once the endpoint update lands (the
    // killed task's slot comes back on a surviving host).
    let live: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != victim).collect();
    let (_, took) = until_ok(Duration::from_secs(15), || {
        for host in &live {
            who_answers(&lab, host, 8080, 12)?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the mesh never forgot the killed host's task: {e}"));
    eprintln!("requests all succeed again {took:?} after the kill");
}

/// From one task of `service`, its own name (the VIP, through the task's DNS) spreads over
/// the service's tasks, local and remote, and they see the caller's overlay address.
fn tasks_reach_the_vip(lab: &TestLab, service: &str) {
    let json = ok(lab, &["service", "ps", service, "--format", "json"]);
    let tasks: Vec<Value> = serde_json::from_str(&json).unwrap();
    let caller = tasks
        .iter()
        .find(|t| t["state"] == "running")
        .expect("a running task");
    let (host, id) = (
        caller["node"].as_str().unwrap(),
        caller["id"].as_str().unwrap(),
    );
    let addr = lab
        .in_task(host, id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap_or_else(|e| panic!("{e}"));
    let own_ip = addr
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let vip = lab
        .in_task(host, id, &["dig", "@127.0.0.11", "+short", service])
        .unwrap_or_else(|e| panic!("{e}"));
    // The host's wget runs in the task's namespace but reads the host's resolv.conf: resolve
    // through the task's DNS first.
    let url = format!("http://{}/cgi-bin/ip", vip.trim());
    let mut slots = BTreeSet::new();
    for _ in 0..16 {
        let body = lab
            .in_task(host, id, &["wget", "-q", "-T", "3", "-O", "-", &url])
            .unwrap_or_else(|e| panic!("{url} from task {id} (VIP {}): {e}", vip.trim()));
        let (slot, seen) = body.trim().split_once(' ').expect("slot and address");
        let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
        // A task that picks itself is answered through a hairpin: from the VIP.
        let hairpin = slot == caller["slot"].as_u64().unwrap().to_string();
        if !(hairpin && seen == vip.trim()) {
            assert_eq!(
                seen, own_ip,
                "the task behind the VIP sees the caller's address"
            );
        }
        slots.insert(slot.to_string());
    }
    assert!(
        slots.len() >= 2,
        "the VIP spreads over the tasks: {slots:?}"
    );
}

/// Binds a UDP echo in a task's namespace that answers `<name> <peer>`.
fn udp_echo(netns: PathBuf, name: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open task netns");
        // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "enter the task's namespace");
        let socket = UdpSocket::bind("0.0.0.0:9000").expect("bind 9000 in the task");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
            }
        }
    })
}

#[test]
fn udp_ports_and_host_mode_ports() {
    udp_and_host_mode("udp", None);
}

#[test]
fn nftables_fallback_udp_and_host_mode_ports() {
    udp_and_host_mode("nftudp", Some("nftables"));
}

/// UDP through every host reaches every task; a host-mode port answers only where its task
/// runs. Through BPF every task sees the client's address; through nftables, those on the
/// host that took the datagram do.
fn udp_and_host_mode(tag: &str, lb_mode: Option<&str>) {
    let lab = lab(tag, lb_mode);
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "dgram",
            "--replicas",
            "2",
            "--publish",
            "published=9000,target=9000,protocol=udp",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    let slots = wait_running(&lab, "dgram", 2);
    let json = ok(&lab, &["service", "ps", "dgram", "--format", "json"]);
    let tasks: Vec<Value> = serde_json::from_str(&json).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut echoes = Vec::new();
    for task in tasks.iter().filter(|t| t["state"] == "running") {
        let node = task["node"].as_str().unwrap();
        let id = task["id"].as_str().unwrap();
        let netns = lab
            .lab()
            .files(node)
            .unwrap()
            .state_dir()
            .join("netns")
            .join(id);
        echoes.push(udp_echo(
            netns,
            task["name"].as_str().unwrap().into(),
            Arc::clone(&stop),
        ));
    }
    let client = lab.addr("c1").to_string();
    let targets = every_host(&lab, 9000);
    let answers = until_ok(Duration::from_secs(10), || {
        let targets = targets.clone();
        from_client(&lab, move || {
            let mut answers = Vec::new();
            for target in &targets {
                for _ in 0..8 {
                    // A fresh source port per datagram: a new flow each time.
                    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                    socket
                        .set_read_timeout(Some(Duration::from_secs(1)))
                        .unwrap();
                    // Connected: only an answer from the address asked is taken.
                    socket.connect(SocketAddr::V4(*target)).unwrap();
                    socket.send(b"hello").unwrap();
                    let mut buf = [0u8; 200];
                    let n = socket
                        .recv(&mut buf)
                        .map_err(|e| format!("{target}: {e}"))?;
                    answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            Ok::<_, String>(answers)
        })
        // A task reported running may not be in every host's table yet: wait until a round
        // reaches every task (40 new flows all missing one of two tasks: 2^-40 by chance).
        .and_then(|answers| {
            let names: BTreeSet<&str> = answers
                .iter()
                .map(|a| a.split(' ').next().unwrap())
                .collect();
            if names.len() < slots.len() {
                return Err(format!("only {names:?} answered: {answers:?}"));
            }
            Ok(answers)
        })
    })
    .unwrap_or_else(|e| panic!("UDP through the mesh: {e}"))
    .0;
    stop.store(true, Ordering::Relaxed);
    for echo in echoes {
        echo.join().unwrap();
    }
    let names: BTreeSet<&str> = answers
        .iter()
        .map(|a| a.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        slots.len(),
        "datagrams reach every task: {answers:?}"
    );
    let kept = answers
        .iter()
        .filter(|a| a.ends_with(&format!(" {client}")))
        .count();
    if lb_mode.is_none() {
        assert_eq!(
            kept,
            answers.len(),
            "every task sees the client: {answers:?}"
        );
    } else {
        assert!(
            kept > 0,
            "tasks on the ingress host see the client: {answers:?}"
        );
    }

    // Host mode: the port answers only where the task runs, straight to it.
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "hostmode",
            "--constraint",
            "node.hostname==w2",
            "--publish",
            "published=8081,target=80,mode=host",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    );
    wait_running(&lab, "hostmode", 1);
    let answers = until_ok(Duration::from_secs(10), || who_answers(&lab, "w2", 8081, 3))
        .unwrap_or_else(|e| panic!("host-mode port on w2: {e}"))
        .0;
    assert!(
        answers.iter().all(|(_, seen)| *seen == client),
        "{answers:?}"
    );
    let elsewhere = SocketAddrV4::new(lab.addr("w1"), 8081);
    let refused = from_client(&lab, move || get(elsewhere, "/cgi-bin/ip"));
    assert!(
        refused.is_err(),
        "a host-mode port answers on a host without its task: {refused:?}"
    );
}

#[test]
fn nftables_fallback_scales_down_under_load() {
    let lab = lab("nftdown", Some("nftables"));
    web_service(&lab, "web", "3", "published=8080,target=80");
    wait_running(&lab, "web", 3);
    scale_down_under_load(&lab, "web", 8080);
}

#[test]
fn nftables_fallback_balances_the_same_way() {
    let lab = lab("nft", Some("nftables"));
    web_service(&lab, "web", "3", "published=8080,target=80");
    let slots = wait_running(&lab, "web", 3);
    // nftables cannot carry a packet to another host unchanged: the client's address
    // survives when the answering task is on the host that took the request.
    check_mesh(&lab, 8080, &slots, |host, node| host == node);
    assert_eq!(paths(&lab), BTreeSet::from(["nftables".to_string()]));
    // The scale-down under load through nftables is its own test, above.
}

#[test]
fn a_published_port_is_refused_when_taken_and_assigned_when_omitted() {
    let lab = lab("ports", None);
    web_service(&lab, "first", "1", "published=8080,target=80");
    let taken = lab
        .meshctl(
            "m1",
            &[
                "service",
                "create",
                "--name",
                "second",
                "--publish",
                "8080:80",
                IMAGE,
                "sh",
                "-c",
                WEB,
            ],
        )
        .expect_err("a taken port is refused");
    assert!(taken.contains("8080") && taken.contains("first"), "{taken}");
    web_service(&lab, "auto", "1", "target=80");
    let json = ok(&lab, &["service", "inspect", "auto"]);
    let spec: Value = serde_json::from_str(&json).unwrap();
    let published = spec[0]["ports"][0]["published"]
        .as_u64()
        .expect("assigned port");
    assert!((30000..=32767).contains(&published), "{published}");
    let slots = wait_running(&lab, "auto", 1);
    let started = Instant::now();
    check_mesh(&lab, published as u16, &slots, |_, _| true);
    eprintln!(
        "auto-assigned port {published} answered everywhere in {:?}",
        started.elapsed()
    );
}

#[test]
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
