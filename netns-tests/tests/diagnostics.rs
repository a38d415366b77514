//! `meshctl diag` on a real 5-host lab: a healthy lab passes every check with exit 0; a blocked
//! VXLAN port is named by pair, direction and port; a firewall rule dropping gossip is named;
//! a smaller link MTU is found and the right overlay MTU recommended; a deleted FDB entry is
//! named.

use std::process::Output;
use std::time::{Duration, Instant};

use lab::{LabSpec, LinkParams};
use netns_tests::{until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

fn lab(tag: &str) -> TestLab {
    let lab = TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 4;
    });
    ok(&lab, &["node", "update", "--availability", "drain", "m1"]);
    lab
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a diag on `host`, timing it: (exit success, output, JSON report).
fn diag(lab: &TestLab, host: &str, args: &[&str]) -> (bool, String, Value) {
    let mut json_args = args.to_vec();
    json_args.extend_from_slice(&["--format", "json"]);
    let started = Instant::now();
    let out = lab.meshctl_output(host, &json_args);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{args:?} took {:?}",
        started.elapsed()
    );
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)));
    let table = lab.meshctl_output(host, args);
    (out.status.success(), text(&table), report)
}

/// A global service on the network, so every worker has a task on it.
fn spread_service(lab: &TestLab, network: &str) {
    ok(
        lab,
        &[
            "service",
            "create",
            "--name",
            "echo",
            "--mode",
            "global",
            "--network",
            network,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    until_ok(Duration::from_secs(40), || {
        let views: Vec<Value> =
            serde_json::from_str(&ok(lab, &["network", "inspect", network])).unwrap();
        let running = views[0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "Running")
            .count();
        (running == 4)
            .then_some(())
            .ok_or(format!("{running} running"))
    })
    .expect("a task on every worker");
}

/// Every failed port probe in a report: (from, to, protocol, port).
fn failed_ports(report: &Value) -> Vec<(String, String, String, u64)> {
    let mut failed = Vec::new();
    for host in report["hosts"].as_array().unwrap() {
        for check in host["result"]["Ports"].as_array().unwrap() {
            if check["status"] != "Ok" {
                failed.push((
                    host["node"].as_str().unwrap().to_string(),
                    check["to"].as_str().unwrap().to_string(),
                    check["protocol"].as_str().unwrap().to_string(),
                    check["port"].as_u64().unwrap(),
                ));
            }
        }
    }
    failed
}

#[test]
fn ports_and_firewall_name_exactly_what_is_blocked() {
    let lab = lab("dports");
    // Gossip and the probe responders need a moment after the cluster forms.
    let (_, _) = until_ok(Duration::from_secs(20), || {
        let (success, table, report) = diag(&lab, "m1", &["diag", "ports"]);
        success.then_some(()).ok_or(format!("{table}\n{report:#}"))
    })
    .unwrap_or_else(|e| panic!("a healthy lab fails diag ports: {e}"));
    let (success, table, report) = diag(&lab, "w3", &["diag", "ports"]);
    assert!(success, "{table}");
    assert_eq!(report["hosts"].as_array().unwrap().len(), 5, "{report:#}");
    assert!(table.contains("UDP 4789"), "{table}");

    // Drop VXLAN from w1 at w2: exactly w1 → w2 UDP 4789 fails.
    let w1 = lab.addr("w1").to_string();
    for rule in [
        "add table inet mesh_test",
        "add chain inet mesh_test input { type filter hook input priority 0 ; }",
        &format!("add rule inet mesh_test input ip saddr {w1} udp dport 4789 drop"),
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        let mut argv = vec!["nft"];
        argv.extend(args);
        lab.sh("w2", &argv);
    }
    let (success, table, report) = diag(&lab, "m1", &["diag", "ports"]);
    assert!(!success, "a blocked port must fail the diag: {table}");
    assert_eq!(
        failed_ports(&report),
        [("w1".to_string(), "w2".to_string(), "udp".to_string(), 4789)],
        "{table}"
    );
    assert!(table.contains("w1 → w2 UDP 4789"), "{table}");

    // A rule dropping gossip on w3: diag firewall there names it; elsewhere all is well.
    let healthy = lab.meshctl_output("w4", &["diag", "firewall"]);
    assert!(healthy.status.success(), "{}", text(&healthy));
    lab.sh("w3", &["nft", "add", "table", "inet", "guard"]);
    lab.sh(
        "w3",
        &[
            "nft", "add", "chain", "inet", "guard", "input", "{", "type", "filter", "hook",
            "input", "priority", "0", ";", "}",
        ],
    );
    lab.sh(
        "w3",
        &[
            "nft", "add", "rule", "inet", "guard", "input", "udp", "dport", "7946", "drop",
        ],
    );
    let out = lab.meshctl_output("w3", &["diag", "firewall"]);
    let found = text(&out);
    assert!(!out.status.success(), "{found}");
    assert!(found.contains("guard") && found.contains("7946"), "{found}");
    assert!(
        !found.contains("4789"),
        "only the gossip port is dropped there: {found}"
    );
}

#[test]
fn mtu_and_overlay_checks_find_a_small_link_and_a_deleted_fdb_entry() {
    let mut lab = lab("dmtu");
    ok(
        &lab,
        &[
            "network", "create", "--driver", "overlay", "--opt", "mtu=1450", "front",
        ],
    );
    spread_service(&lab, "front");

    // Healthy: the overlay check passes on every host, with a ping to every other host.
    let (_, _) = until_ok(Duration::from_secs(20), || {
        let (success, table, _) = diag(&lab, "m1", &["diag", "overlay", "front"]);
        success.then_some(()).ok_or(table)
    })
    .unwrap_or_else(|table| panic!("a healthy overlay fails diag overlay: {table}"));
    let (_, table, report) = diag(&lab, "m1", &["diag", "overlay", "front"]);
    let pings: usize = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["result"]["Overlay"]["pings"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        pings,
        4 * 3,
        "a ping between every ordered pair of hosts: {table}"
    );
    let (success, table, report) = diag(&lab, "w1", &["diag", "mtu", "--to", "w2"]);
    assert!(success, "{table}");
    assert_eq!(
        report["hosts"][0]["result"]["Mtu"][0]["underlay"], 1500,
        "{table}"
    );
    assert_eq!(
        report["hosts"][0]["result"]["Mtu"][0]["overlay"], 1450,
        "{table}"
    );

    // w2's link carries 1400 while the overlay is set to 1450: a black hole, found.
    lab.lab_mut()
        .set_link(
            "w2",
            LinkParams {
                mtu: Some(1400),
                ..LinkParams::default()
            },
        )
        .unwrap();
    let (success, table, report) = diag(&lab, "w1", &["diag", "mtu", "--to", "w2"]);
    assert!(!success, "{table}");
    // A Linux bridge port forwards frames up to its MTU plus a VLAN tag's 4 bytes, so the lab's
    // 1400 link carries packets of up to 1404.
    let check = &report["hosts"][0]["result"]["Mtu"][0];
    let underlay = check["underlay"].as_u64().unwrap();
    assert!((1400..=1404).contains(&underlay), "{table}");
    assert_eq!(
        check["recommended"].as_u64().unwrap(),
        underlay - 50,
        "{table}"
    );
    // The kernel may fragment the outer VXLAN packets (the vxlan device does not set DF), so
    // large overlay packets can still arrive: measured, not assumed.
    let overlay = check["overlay"].as_u64().unwrap();
    assert!((1350..=1450).contains(&overlay), "{table}");
    assert!(
        table.contains(&format!("--opt mtu={}", underlay - 50)),
        "{table}"
    );
    lab.lab_mut().set_link("w2", LinkParams::default()).unwrap();

    // Delete one FDB entry on w1: diag overlay names it (missing, or repaired by meshd).
    let views: Vec<Value> =
        serde_json::from_str(&ok(&lab, &["network", "inspect", "front"])).unwrap();
    let id = views[0]["id"].as_str().unwrap().to_string();
    let on_w3 = views[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "w3")
        .unwrap()
        .clone();
    let (mac, task) = (
        on_w3["mac"].as_str().unwrap(),
        on_w3["task"].as_str().unwrap(),
    );
    let ns = lab
        .lab()
        .files("w1")
        .unwrap()
        .state_dir()
        .join("overlay")
        .join(format!("ns-{}", &id[..12]));
    let w3 = lab.addr("w3").to_string();
    let flag = format!("--net={}", ns.display());
    lab.sh(
        "w1",
        &[
            "nsenter", &flag, "bridge", "fdb", "del", mac, "dev", "vxlan0", "dst", &w3,
        ],
    );
    let (success, table, _) = diag(&lab, "m1", &["diag", "overlay", "front"]);
    assert!(!success, "{table}");
    assert!(
        table.contains("w1") && (table.contains(mac) || table.contains("FdbSet")),
        "{table}"
    );
    assert!(table.contains(task) || table.contains(mac), "{table}");
}
