//! Gossip and the embedded DNS on a real 5-host lab: every record kind answered inside a task,
//! forwarding to an outside resolver, endpoint changes reaching every host within 2 s, a
//! restarted task's new address at once, hostile queries, a killed host leaving DNS and the
//! FDB, and a partitioned host converging without bringing deleted entries back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lab::LabSpec;
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";
const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];
const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

/// One manager (drained) and four workers, with c1 as the resolver outside names go to.
fn lab(tag: &str) -> TestLab {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 4;
        spec.clients = 1;
        spec.dns_upstream_host = Some("c1".into());
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    lab
}

/// dnsmasq on c1: `outside.test` has an address, every other name is NXDOMAIN.
fn outside_resolver(lab: &TestLab) -> KillOnDrop {
    let listen = format!("--listen-address={}", lab.addr("c1"));
    let child = lab
        .lab()
        .spawn(
            "c1",
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                &listen,
                "--host-record=outside.test,198.18.77.7",
                "--address=/#/",
            ],
            Stdio::null(),
            Stdio::null(),
        )
        .expect("start dnsmasq");
    KillOnDrop(child)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates a service of busybox httpd tasks with the given options.
fn httpd_service(lab: &TestLab, name: &str, options: &[&str]) {
    let mut args = vec!["service", "create", "--name", name];
    args.extend_from_slice(options);
    args.push(IMAGE);
    args.extend_from_slice(HTTPD);
    ok(lab, &args);
}

fn state_dir(lab: &TestLab, host: &str) -> PathBuf {
    lab.lab().files(host).unwrap().state_dir()
}

/// `dig` against the task's embedded DNS server; the whole answer text.
fn dig(lab: &TestLab, (task, host): (&str, &str), args: &[&str]) -> String {
    let mut argv = vec!["dig", "@127.0.0.11", "+time=2", "+tries=1"];
    argv.extend_from_slice(args);
    lab.in_task(host, task, &argv)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The addresses of a `dig +short` answer, sorted.
fn addresses(lab: &TestLab, at: (&str, &str), name: &str) -> Vec<String> {
    let mut found: Vec<String> = dig(lab, at, &["+short", name, "A"])
        .lines()
        .map(str::to_string)
        .collect();
    found.sort();
    found
}

fn status(answer: &str) -> &str {
    let at = answer.find("status: ").expect("dig prints a status") + "status: ".len();
    answer[at..].split(',').next().unwrap()
}

/// Running tasks on `network` whose names start with `service.`: (task ID, node, IP, name).
fn running(lab: &TestLab, network: &str, service: &str) -> Vec<(String, String, String, String)> {
    let mut found: Vec<_> = lab
        .running_endpoints("m1", network, service)
        .into_iter()
        .map(|e| (e.task_id, e.node, e.ip, e.task))
        .collect();
    found.sort_by(|a, b| a.3.cmp(&b.3));
    found
}

fn wait_running(
    lab: &TestLab,
    network: &str,
    service: &str,
    count: usize,
) -> Vec<(String, String, String, String)> {
    until_ok(Duration::from_secs(40), || {
        let found = running(lab, network, service);
        (found.len() == count)
            .then_some(found.clone())
            .ok_or(format!("{service}: {found:?}"))
    })
    .unwrap_or_else(|e| panic!("{service} never had {count} running tasks: {e}"))
    .0
}

fn ips(tasks: &[(String, String, String, String)]) -> Vec<String> {
    let mut ips: Vec<String> = tasks.iter().map(|t| t.2.clone()).collect();
    ips.sort();
    ips
}

/// One task of `service` on each host that runs one: (task ID, host).
fn one_task_per_host(tasks: &[(String, String, String, String)]) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    tasks
        .iter()
        .filter(|t| seen.insert(t.1.clone()))
        .map(|t| (t.0.clone(), t.1.clone()))
        .collect()
}

#[test]
fn dns_answers_every_record_kind_and_follows_the_endpoint_table_within_two_seconds() {
    let lab = lab("dns");
    let _resolver = outside_resolver(&lab);
    ok(&lab, &["network", "create", "--driver", "overlay", "front"]);
    ok(&lab, &["network", "create", "--driver", "overlay", "back"]);
    httpd_service(
        &lab,
        "web",
        &[
            "--mode",
            "global",
            "--network",
            "front",
            "--publish",
            "8080:80",
        ],
    );
    httpd_service(
        &lab,
        "api",
        &[
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "front",
        ],
    );
    httpd_service(&lab, "db", &["--network", "back"]);
    // A task that looks names up through its own resolv.conf, as applications do.
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "probe",
            "--network",
            "front",
            IMAGE,
            "sh",
            "-c",
            "sleep 3; nslookup tasks.web; sleep 100000",
        ],
    );
    let webs = wait_running(&lab, "front", "web", 4);
    let apis = wait_running(&lab, "front", "api", 2);
    wait_running(&lab, "back", "db", 1);
    let at = (webs[0].0.as_str(), webs[0].1.as_str());

    // <service> → VIP in vip mode.
    let inspect: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["service", "inspect", "web"])).unwrap();
    let vip = inspect[0]["virtual_ips"][0]
        .as_str()
        .unwrap()
        .split('=')
        .nth(1)
        .unwrap()
        .to_string();
    let (_, _) = until_ok(Duration::from_secs(5), || {
        let found = addresses(&lab, at, "web");
        (found == vec![vip.clone()])
            .then_some(())
            .ok_or(format!("web → {found:?}, VIP {vip}"))
    })
    .unwrap();
    // tasks.<service> → every healthy task; dnsrr <service> → the same.
    until_ok(Duration::from_secs(5), || {
        let found = addresses(&lab, at, "tasks.web");
        (found == ips(&webs))
            .then_some(())
            .ok_or(format!("{found:?}"))
    })
    .unwrap();
    assert_eq!(addresses(&lab, at, "api"), ips(&apis));
    assert_eq!(addresses(&lab, at, "tasks.api"), ips(&apis));
    // Case does not matter, and the question comes back as asked.
    let upper = dig(&lab, at, &["TASKS.API", "A"]);
    assert!(upper.contains("TASKS.API."), "{upper}");
    // <task name> → its address, short and long forms.
    let (api_id, _, api_ip, api_name) = &apis[0];
    assert_eq!(addresses(&lab, at, api_name), vec![api_ip.clone()]);
    assert_eq!(
        addresses(&lab, at, &format!("{api_name}.{api_id}")),
        vec![api_ip.clone()]
    );
    // SRV for the published port: one record per task, with their addresses.
    let srv = dig(&lab, at, &["_80._tcp.web", "SRV"]);
    assert_eq!(status(&srv), "NOERROR", "{srv}");
    assert_eq!(srv.matches("IN\tSRV\t").count(), 4, "{srv}");
    // AAAA for an internal name: an empty NOERROR, not forwarded.
    let aaaa = dig(&lab, at, &["web", "AAAA"]);
    assert_eq!(status(&aaaa), "NOERROR", "{aaaa}");
    assert!(aaaa.contains("ANSWER: 0"), "{aaaa}");
    // Outside names go to c1: an answer, and NXDOMAIN.
    assert_eq!(
        addresses(&lab, at, "outside.test"),
        vec!["198.18.77.7".to_string()]
    );
    assert_eq!(status(&dig(&lab, at, &["nosuch.test"])), "NXDOMAIN");
    // Scope: db is on a network web's tasks do not share.
    assert_eq!(status(&dig(&lab, at, &["db"])), "NXDOMAIN");
    // The task's own resolver configuration reaches the embedded server.
    let (logs, _) = until_ok(Duration::from_secs(15), || {
        let logs = ok(&lab, &["service", "logs", "probe"]);
        ips(&webs)
            .iter()
            .all(|ip| logs.contains(ip.as_str()))
            .then_some(logs.clone())
            .ok_or(logs)
    })
    .unwrap_or_else(|logs| panic!("probe's nslookup never listed every web task: {logs}"));
    assert!(logs.contains("127.0.0.11"), "{logs}");

    // An endpoint change reaches every host's DNS in under 2 s: scale api up and time from
    // the moment the new task's own host answers it until every host does.
    let viewers = one_task_per_host(&webs);
    ok(&lab, &["service", "scale", "api=3"]);
    let grown = wait_running(&lab, "front", "api", 3);
    let new = grown.iter().find(|t| !apis.contains(t)).unwrap().clone();
    let origin = viewers.iter().find(|(_, host)| *host == new.1).unwrap();
    until_ok(Duration::from_secs(10), || {
        let found = addresses(&lab, (&origin.0, &origin.1), "tasks.api");
        found
            .contains(&new.2)
            .then_some(())
            .ok_or(format!("{found:?}"))
    })
    .unwrap();
    let start = Instant::now();
    let mut pending: Vec<&(String, String)> = viewers.iter().collect();
    while !pending.is_empty() && start.elapsed() < Duration::from_secs(10) {
        pending.retain(|(task, host)| !addresses(&lab, (task, host), "tasks.api").contains(&new.2));
    }
    let spread = start.elapsed();
    assert!(pending.is_empty(), "hosts {pending:?} never saw {new:?}");
    assert!(
        spread < Duration::from_secs(2),
        "the new endpoint took {spread:?} to reach every host"
    );

    // Every host's view matches the control plane.
    until_ok(Duration::from_secs(10), || {
        let verbose: Vec<Value> =
            serde_json::from_str(&ok(&lab, &["network", "inspect", "--verbose", "front"])).unwrap();
        let hosts = verbose[0]["host_views"].as_array().unwrap().clone();
        let clean = hosts.len() == 4
            && hosts.iter().all(|h| {
                h["missing"].as_array().unwrap().is_empty()
                    && h["extra"].as_array().unwrap().is_empty()
            });
        clean.then_some(()).ok_or(format!("{hosts:#?}"))
    })
    .unwrap();

    // Restart a task (its process is killed; the service starts a new one): DNS drops the
    // old task at once and answers the new one as soon as it runs.
    let (victim_id, victim_host, _, victim_name) = webs[1].clone();
    let pid = std::fs::read_to_string(
        state_dir(&lab, &victim_host)
            .join("tasks")
            .join(&victim_id)
            .join("pid"),
    )
    .map(|p| p.trim().to_string())
    .unwrap_or_else(|e| panic!("the process runtime records its pid: {e}"));
    lab.sh(&victim_host, &["kill", "-9", &pid]);
    let replaced = until_ok(Duration::from_secs(20), || {
        let now = running(&lab, "front", "web");
        let fresh = now
            .iter()
            .find(|t| t.1 == victim_host && t.0 != victim_id)
            .cloned();
        fresh.ok_or(format!("{now:?}"))
    })
    .unwrap()
    .0;
    let (_, took) = until_ok(Duration::from_secs(5), || {
        let found = addresses(&lab, at, &format!("{victim_name}.{}", replaced.0));
        (found == vec![replaced.2.clone()])
            .then_some(())
            .ok_or(format!("{found:?}"))
    })
    .unwrap();
    assert!(
        took < Duration::from_secs(2),
        "the new task took {took:?} to resolve"
    );
    assert_eq!(
        status(&dig(&lab, at, &[&format!("{victim_name}.{victim_id}")])),
        "NXDOMAIN",
        "the old task still resolves"
    );

    // Hostile queries: garbage, an oversized datagram and a TCP length prefix with nothing
    // behind it get an error answer or nothing, and the server keeps answering.
    let (task, host) = at;
    for script in [
        "printf 'garbage' | nc -u -w1 127.0.0.11 53",
        "head -c 9000 /dev/zero | nc -u -w1 127.0.0.11 53",
        "printf '\\377\\377' | nc -w1 127.0.0.11 53",
        "printf '\\000\\014\\000\\001\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000' | nc -u -w1 127.0.0.11 53",
    ] {
        let _ = lab.in_task( host, task, &["sh", "-c", script]);
    }
    assert_eq!(
        addresses(&lab, at, "tasks.api").len(),
        3,
        "the server stopped answering"
    );
}

/// The web tasks' FDB entries on `host`: the VTEPs remote endpoints point at.
fn fdb_vteps(lab: &TestLab, host: &str, network_id: &str) -> BTreeSet<String> {
    let ns = state_dir(lab, host)
        .join("overlay")
        .join(format!("ns-{}", &network_id[..12]));
    let flag = format!("--net={}", ns.display());
    let out = lab.sh(
        host,
        &["nsenter", &flag, "bridge", "fdb", "show", "dev", "vxlan0"],
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dst").nth(1))
        .filter(|ip| *ip != "00:00:00:00:00:00")
        .map(str::to_string)
        .collect()
}

#[test]
fn a_killed_host_leaves_dns_and_the_fdb_and_a_healed_partition_converges() {
    let lab = lab("gossip");
    ok(&lab, &["network", "create", "--driver", "overlay", "front"]);
    httpd_service(&lab, "web", &["--mode", "global", "--network", "front"]);
    httpd_service(&lab, "api", &["--replicas", "4", "--network", "front"]);
    let webs = wait_running(&lab, "front", "web", 4);
    wait_running(&lab, "front", "api", 4);
    let network: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["network", "inspect", "front"])).unwrap();
    let network_id = network[0]["id"].as_str().unwrap().to_string();
    let viewer = |host: &str| {
        webs.iter()
            .find(|t| t.1 == host)
            .map(|t| (t.0.clone(), t.1.clone()))
            .unwrap()
    };
    let w4_ip = lab.addr("w4").to_string();
    until_ok(Duration::from_secs(10), || {
        let vteps = fdb_vteps(&lab, "w1", &network_id);
        vteps
            .contains(&w4_ip)
            .then_some(())
            .ok_or(format!("{vteps:?}"))
    })
    .unwrap();

    // Cut w3 off from the other workers (the manager still reaches it, so it stays Ready
    // and keeps its tasks), delete entries while it is away, then heal.
    let others: Vec<String> = ["w1", "w2", "w4"].map(String::from).to_vec();
    lab.reopened()
        .partition(&["w3".to_string()], &others)
        .unwrap();
    ok(&lab, &["service", "scale", "api=2"]);
    let after_scale = wait_running(&lab, "front", "api", 2);
    std::thread::sleep(Duration::from_secs(2));
    lab.reopened().heal().unwrap();
    // Everyone, w3 included, converges on the control plane's view, and stays there: no
    // entry deleted during the partition comes back.
    let expected = ips(&after_scale);
    let (_, healed_in) = until_ok(Duration::from_secs(20), || {
        for host in WORKERS {
            let (task, host) = viewer(host);
            let found = addresses(&lab, (&task, &host), "tasks.api");
            if found != expected {
                return Err(format!("{host} sees {found:?}, want {expected:?}"));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the hosts never converged after the partition healed: {e}"));
    eprintln!("converged {healed_in:?} after the heal");
    for _ in 0..10 {
        for host in WORKERS {
            let (task, host) = viewer(host);
            let found = addresses(&lab, (&task, &host), "tasks.api");
            assert_eq!(found, expected, "{host}: a deleted api task came back");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Kill w4: the others mark it down, and its endpoints leave DNS and the FDB.
    let w4_tasks: Vec<String> = running(&lab, "front", "web")
        .into_iter()
        .chain(running(&lab, "front", "api"))
        .filter(|t| t.1 == "w4")
        .map(|t| t.2)
        .collect();
    assert!(!w4_tasks.is_empty());
    let mut killer = lab.reopened();
    killer.kill("w4").unwrap();
    let w1 = viewer("w1");
    let (_, took) = until_ok(Duration::from_secs(15), || {
        let found = addresses(&lab, (&w1.0, &w1.1), "tasks.web");
        let vteps = fdb_vteps(&lab, "w1", &network_id);
        let gone = !w4_tasks.iter().any(|ip| found.contains(ip)) && !vteps.contains(&w4_ip);
        gone.then_some(())
            .ok_or(format!("tasks.web {found:?}, FDB {vteps:?}"))
    })
    .unwrap_or_else(|e| panic!("w4's endpoints stayed: {e}"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    until_ok(Duration::from_secs(10), || {
        let nodes = ok(&lab, &["node", "ls"]);
        let w4_line = nodes
            .lines()
            .find(|l| l.contains("w4"))
            .unwrap()
            .to_string();
        w4_line.contains("Down").then_some(()).ok_or(nodes)
    })
    .unwrap_or_else(|nodes| panic!("the managers never marked w4 Down: {nodes}"));
}
