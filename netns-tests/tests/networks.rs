//! Overlay networks through the whole control plane on a real lab: tasks on different hosts
//! reach each other over VXLAN, networks are isolated, the MTU is derived from the underlay,
//! entries follow the tasks, drift is repaired, and removal leaves nothing behind.

use std::path::PathBuf;
use std::time::Duration;

use lab::LabSpec;
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

fn lab(tag: &str, mtu: Option<u32>) -> TestLab {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 3;
        spec.link.mtu = mtu;
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    lab
}

/// A host's meshd state directory, as the lab lays it out.
fn state_dir(lab: &TestLab, host: &str) -> PathBuf {
    lab.lab().files(host).unwrap().state_dir()
}

/// Running tasks of `service`: (task ID, node, overlay IP on its first network).
fn endpoints(lab: &TestLab, network: &str, service: &str) -> Vec<(String, String, String)> {
    lab.running_endpoints("m1", network, service)
        .into_iter()
        .map(|e| (e.task_id, e.node, e.ip))
        .collect()
}

fn wait_running(
    lab: &TestLab,
    network: &str,
    service: &str,
    count: usize,
) -> Vec<(String, String, String)> {
    until_ok(Duration::from_secs(30), || {
        let found = endpoints(lab, network, service);
        if found.len() == count {
            Ok(found)
        } else {
            Err(format!("{service}: {found:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{service} never had {count} running tasks: {e}"))
    .0
}

/// Runs `argv` inside a network's namespace on `host`.
fn in_network(lab: &TestLab, host: &str, network_id: &str, argv: &[&str]) -> String {
    let ns = state_dir(lab, host)
        .join("overlay")
        .join(format!("ns-{}", &network_id[..12]));
    let flag = format!("--net={}", ns.display());
    let mut full = vec!["nsenter", flag.as_str()];
    full.extend_from_slice(argv);
    lab.sh(host, &full)
}

fn network_id(lab: &TestLab, name: &str) -> String {
    let views: Vec<Value> = serde_json::from_str(&ok(lab, &["network", "inspect", name])).unwrap();
    views[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn tasks_on_three_hosts_talk_over_tcp_and_udp_and_networks_are_isolated() {
    let lab = lab("ovtalk", None);
    ok(&lab, &["network", "create", "--driver", "overlay", "front"]);
    ok(&lab, &["network", "create", "--driver", "overlay", "back"]);
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "front",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "db",
            "--network",
            "back",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    let web = wait_running(&lab, "front", "web", 3);
    let db = wait_running(&lab, "back", "db", 1);
    let mut hosts: Vec<&str> = web.iter().map(|(_, h, _)| h.as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["w1", "w2", "w3"], "one web task per worker");

    // TCP: every task fetches every other task's page by overlay IP.
    for (task, host, _) in &web {
        for (_, other_host, ip) in &web {
            if other_host == host {
                continue;
            }
            let url = format!("http://{ip}/");
            let (page, _) = until_ok(Duration::from_secs(5), || {
                lab.in_task(host, task, &["wget", "-q", "-T", "2", "-O", "-", &url])
            })
            .unwrap_or_else(|e| panic!("{host} → {ip}: {e}"));
            assert!(page.contains("Hello from a Mesh task"), "{page}");
        }
    }

    // UDP: a datagram crosses from w-a's task to w-b's.
    let (from, to) = (&web[0], &web[1]);
    let listener = {
        let netns = state_dir(&lab, &to.1).join("netns").join(&to.0);
        lab.lab()
            .spawn(
                &to.1,
                &[
                    "nsenter",
                    &format!("--net={}", netns.display()),
                    "timeout",
                    "10",
                    "nc",
                    "-u",
                    "-l",
                    "-W",
                    "1",
                    "9000",
                ],
                std::process::Stdio::piped(),
                std::process::Stdio::piped(),
            )
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    lab.in_task(
        &from.1,
        &from.0,
        &[
            "sh",
            "-c",
            &format!("echo over-udp | nc -u -w1 -q1 {} 9000", to.2),
        ],
    )
    .unwrap();
    let out = listener.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("over-udp"),
        "{out:?}"
    );

    // Isolation: front's tasks cannot reach back's.
    let (task, host, _) = &web[0];
    let db_url = format!("http://{}/", db[0].2);
    assert!(
        lab.in_task(host, task, &["wget", "-q", "-T", "2", "-O", "-", &db_url])
            .is_err(),
        "a front task reached a back task"
    );
}

#[test]
fn the_overlay_mtu_follows_a_small_underlay_without_a_black_hole() {
    let lab = lab("ovmtu", Some(1400));
    // Nodes report their underlay MTU with their first reports.
    let (created, _) = until_ok(Duration::from_secs(20), || {
        let out = lab
            .lab()
            .output(
                "m1",
                &[
                    &lab::find_binary(lab::MESHCTL).unwrap().to_string_lossy(),
                    "network",
                    "create",
                    "--driver",
                    "overlay",
                    "small",
                ],
            )
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && stderr.contains("1350") {
            Ok(stderr)
        } else {
            ok(&lab, &["network", "rm", "small"]);
            Err(stderr)
        }
    })
    .unwrap();
    assert!(
        created.contains("warning") && created.contains("underlay MTU"),
        "{created}"
    );
    let views: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["network", "inspect", "small"])).unwrap();
    assert_eq!(views[0]["mtu"], 1350);
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "big",
            "--replicas",
            "2",
            "--network",
            "small",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    let tasks = wait_running(&lab, "small", "big", 2);
    let (task, host, _) = &tasks[0];
    // /sys shows the namespace that mounted it, so ask netlink.
    let link = lab
        .in_task(host, task, &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains(" mtu 1350 "), "{link}");
    // The largest unfragmented packet (1350 - 28 bytes of IPv4 and ICMP headers) passes with DF.
    let (_, _, peer) = &tasks[1];
    until_ok(Duration::from_secs(5), || {
        lab.in_task(
            host,
            task,
            &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1322", peer],
        )
    })
    .unwrap_or_else(|e| panic!("a full-MTU packet did not pass: {e}"));
    let too_big = lab.in_task(
        host,
        task,
        &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1323", peer],
    );
    assert!(
        too_big.is_err(),
        "a packet above the overlay MTU left the task"
    );
}

#[test]
fn entries_follow_tasks_survive_restarts_and_removal_leaves_nothing() {
    let mut lab = lab("ovlife", None);
    ok(&lab, &["network", "create", "--driver", "overlay", "front"]);
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "front",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    let web = wait_running(&lab, "front", "web", 3);
    let id = network_id(&lab, "front");
    let fdb = |lab: &TestLab, host: &str| {
        in_network(lab, host, &id, &["bridge", "fdb", "show", "dev", "vxlan0"])
    };
    let neigh = |lab: &TestLab, host: &str| {
        in_network(lab, host, &id, &["ip", "neigh", "show", "dev", "vxlan0"])
    };

    // Every host holds the other two tasks' entries.
    for (_, host, _) in &web {
        for (_, other, ip) in &web {
            let mac = format!(
                "02:42:{}",
                ip.split('.')
                    .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
                    .collect::<Vec<_>>()
                    .join(":")
            );
            if other == host {
                continue;
            }
            until_ok(Duration::from_secs(5), || {
                let (f, n) = (fdb(&lab, host), neigh(&lab, host));
                if f.contains(&mac) && n.contains(ip.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{host}: fdb {f} neigh {n}"))
                }
            })
            .unwrap_or_else(|e| panic!("missing entries for {ip}: {e}"));
        }
    }

    // Drift: an FDB entry deleted by hand comes back with the next reconcile.
    let (_, victim_host, victim_ip) = &web[1];
    let (_, repair_host, _) = &web[0];
    let mac = format!(
        "02:42:{}",
        victim_ip
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );
    in_network(
        &lab,
        repair_host,
        &id,
        &["bridge", "fdb", "del", &mac, "dev", "vxlan0", "self"],
    );
    until_ok(Duration::from_secs(5), || {
        if fdb(&lab, repair_host).contains(&mac) {
            Ok(())
        } else {
            Err("not repaired".to_string())
        }
    })
    .unwrap_or_else(|e| panic!("the deleted FDB entry was not restored on {repair_host}: {e}"));
    let _ = victim_host;

    // A meshd restart keeps (or repairs) the entries and the tasks' interfaces.
    lab.lab_mut().stop_daemon(repair_host).unwrap();
    in_network(
        &lab,
        repair_host,
        &id,
        &["bridge", "fdb", "del", &mac, "dev", "vxlan0", "self"],
    );
    lab.lab_mut().start(repair_host).unwrap();
    until_ok(Duration::from_secs(10), || {
        if fdb(&lab, repair_host).contains(&mac) {
            Ok(())
        } else {
            Err("not repaired after the restart".to_string())
        }
    })
    .unwrap();
    let (task, host, _) = &web[0];
    until_ok(Duration::from_secs(5), || {
        lab.in_task(host, task, &["ping", "-c", "1", "-W", "1", victim_ip])
    })
    .unwrap_or_else(|e| panic!("no overlay path after restarting meshd on {host}: {e}"));

    // Scaling down removes the stopped task's entries everywhere.
    ok(&lab, &["service", "scale", "web=2"]);
    let left = wait_running(&lab, "front", "web", 2);
    let gone = web.iter().find(|t| !left.contains(t)).unwrap().clone();
    for (_, host, _) in &left {
        until_ok(Duration::from_secs(10), || {
            if neigh(&lab, host).contains(gone.2.as_str()) {
                Err(format!("{host} still has {}", gone.2))
            } else {
                Ok(())
            }
        })
        .unwrap();
    }

    // A network in use cannot be removed; once its service is gone it can, and nothing remains.
    let err = lab.meshctl("m1", &["network", "rm", "front"]).unwrap_err();
    assert!(err.contains("in use by service web"), "{err}");
    ok(&lab, &["service", "rm", "web"]);
    until_ok(Duration::from_secs(30), || {
        lab.meshctl("m1", &["network", "rm", "front"])
    })
    .unwrap_or_else(|e| panic!("network rm never succeeded: {e}"));
    // Only the diagnostics' probe network stays: it has no endpoints and belongs to no network.
    for host in ["w1", "w2", "w3"] {
        until_ok(Duration::from_secs(10), || {
            let dir = state_dir(&lab, host).join("overlay");
            let left: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            // The routing mesh's own namespace and pinned BPF links stay while meshd runs.
            let left: Vec<_> = left
                .into_iter()
                .filter(|f| f != "ns-meshprobe" && f != "bpf")
                .collect();
            let links = lab.sh(host, &["ip", "-o", "link", "show"]);
            let stray = links
                .lines()
                .filter(|l| l.contains("mvx") || l.contains("vxlan"))
                .count();
            if left.is_empty() && stray == 0 {
                Ok(())
            } else {
                Err(format!("{host}: {left:?}, links: {links}"))
            }
        })
        .unwrap_or_else(|e| panic!("network rm left something behind: {e}"));
    }
}

#[test]
fn bad_network_input_gets_clear_errors_and_changes_nothing() {
    let lab = lab("ovbad", None);
    ok(
        &lab,
        &["network", "create", "--subnet", "10.9.0.0/29", "tiny"],
    );
    let before = ok(&lab, &["network", "ls", "--format", "json"]);
    let cases: [(&[&str], &str); 6] = [
        (
            &["network", "create", "--subnet", "10.9.0.0/16", "wide"],
            "overlaps network tiny",
        ),
        (
            &["network", "create", "--subnet", "10.9.0.1/24", "x"],
            "host bits",
        ),
        (
            &["network", "create", "--driver", "bridge", "x"],
            "--driver overlay",
        ),
        (&["network", "create", "tiny"], "already exists"),
        (&["network", "inspect", "nope"], "no network \"nope\""),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--network",
                "nope",
                IMAGE,
            ],
            "no such network",
        ),
    ];
    for (args, needle) in cases {
        let err = lab
            .meshctl("m1", args)
            .expect_err(&format!("{args:?} was accepted"));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(ok(&lab, &["network", "ls", "--format", "json"]), before);

    // A /29 holds 5 addresses besides its gateway: the service's VIP and 4 tasks; the fifth
    // task says why it waits.
    ok(
        &lab,
        &[
            "service",
            "create",
            "--name",
            "crowd",
            "--replicas",
            "5",
            "--network",
            "tiny",
            IMAGE,
            "sleep",
            "100000",
        ],
    );
    until_ok(Duration::from_secs(20), || {
        let tasks: Vec<Value> =
            serde_json::from_str(&ok(&lab, &["service", "ps", "crowd", "--format", "json"]))
                .unwrap();
        let waiting: Vec<&Value> = tasks.iter().filter(|t| t["state"] == "pending").collect();
        let running = tasks.iter().filter(|t| t["state"] == "running").count();
        match waiting.as_slice() {
            [one]
                if running == 4
                    && one["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("no free address in 10.9.0.0/29") =>
            {
                Ok(())
            }
            _ => Err(format!("{tasks:#?}")),
        }
    })
    .unwrap_or_else(|e| panic!("the exhausted subnet is not reported: {e}"));
}
