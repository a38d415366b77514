//! Node certificates renew before they expire: a cluster made with the shortest lifetime
//! (`swarm init --cert-expiry 1m`) watched past the first certificates' end. Every node's
//! certificate is replaced (new serial, later notAfter) before its notAfter, and the nodes keep
//! working with the new ones: API calls, heartbeats, and fresh mTLS handshakes both ways.
//! `swarm update --cert-expiry 2m`, right after the joins, gives the renewed certificates a
//! 2-minute lifetime.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use control::cluster::ca::validity_of;
use control::cluster::tls::{manager_server_name, NodeCredentials};
use control::rpc::client::Client;
use control::rpc::messages::{Request, Response};
use lab::LabSpec;
use netns_tests::{report, until_ok, TestLab};
use serde_json::Value;

const HOSTS: [&str; 3] = ["m1", "m2", "w1"];

/// The serial of a PEM certificate, as openssl prints it.
fn serial(pem: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One certificate as seen on disk.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    serial: String,
    not_after: SystemTime,
}

fn seen(lab: &TestLab, host: &str) -> Seen {
    let pem = lab.cluster_file(host, "node.pem");
    Seen {
        serial: serial(&pem),
        not_after: validity_of(&pem).unwrap().1,
    }
}

/// A heartbeat from `host`'s identity on disk, over a new TLS connection to m1: both sides
/// show their current certificates to each other.
fn fresh_heartbeat(lab: &TestLab, host: &str) -> Result<(), String> {
    let credentials = NodeCredentials::new(
        lab.cluster_file(host, "ca.pem"),
        lab.cluster_file(host, "node.pem"),
        lab.cluster_file(host, "node.key"),
    );
    let tls = credentials.client_config().map_err(|e| e.to_string())?;
    let info: Value =
        serde_json::from_str(&lab.meshctl_ok(host, &["info", "--format", "json"])).unwrap();
    // Node IDs are shown as 16 hex digits.
    let node_id = u64::from_str_radix(info["membership"]["node_id"].as_str().unwrap(), 16)
        .map_err(|e| e.to_string())?;
    let leader: SocketAddr = (lab.addr("m1"), 2377).into();
    let answer = netns_tests::in_netns(&lab::host_netns(lab.name(), host), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            Client::new(&leader.to_string(), tls, manager_server_name())
                .call(
                    &Request::Heartbeat {
                        node_id,
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| e.to_string())
        })
    })
    .unwrap()?;
    match answer {
        Response::HeartbeatAck { .. } | Response::NotLeader { .. } => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn node_certificates_renew_before_they_expire_and_the_nodes_keep_working() {
    let lab = TestLab::up("certs", |spec: &mut LabSpec| {
        spec.managers = 2;
        spec.workers = 1;
        spec.form_cluster = false;
    });
    let init = |expiry: &str| {
        lab.meshctl(
            "m1",
            &[
                "swarm",
                "init",
                "--advertise-addr",
                "198.18.0.1",
                "--cert-expiry",
                expiry,
            ],
        )
    };
    let too_short = init("30s").unwrap_err();
    assert!(too_short.contains("at least 60s"), "{too_short}");
    init("1m").unwrap();
    for (host, role) in [("m2", "manager"), ("w1", "worker")] {
        let token = lab.meshctl_ok("m1", &["swarm", "join-token", "-q", role]);
        lab.meshctl_ok(
            host,
            &["swarm", "join", "--token", token.trim(), "198.18.0.1:2377"],
        );
    }
    let first: Vec<Seen> = HOSTS.iter().map(|h| seen(&lab, h)).collect();
    for s in &first {
        let left = s.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(61), "{s:?}: lifetime is not 1m");
    }
    // The lifetime changes after init, through a follower too; renewals get the new one.
    let too_short = lab
        .meshctl("m2", &["swarm", "update", "--cert-expiry", "30s"])
        .unwrap_err();
    assert!(too_short.contains("at least 60s"), "{too_short}");
    lab.meshctl_ok("m2", &["swarm", "update", "--cert-expiry", "2m"]);

    // Watch every node's certificate until well past the last first certificate's end.
    let last_end = first.iter().map(|s| s.not_after).max().unwrap();
    let watch_until = last_end + Duration::from_secs(15);
    let mut replaced: Vec<Option<(Seen, SystemTime)>> = vec![None; HOSTS.len()];
    let started = Instant::now();
    while SystemTime::now() < watch_until && started.elapsed() < Duration::from_secs(150) {
        for (i, host) in HOSTS.iter().enumerate() {
            let now = seen(&lab, host);
            if replaced[i].is_none() && now.serial != first[i].serial {
                replaced[i] = Some((now, SystemTime::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut renewed_in_time = true;
    let mut figures = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        match &replaced[i] {
            Some((next, at)) => {
                let early = first[i].not_after.duration_since(*at).unwrap_or_default();
                // Seen within a second of its issue: about 2m left, as updated.
                let lifetime = next.not_after.duration_since(*at).unwrap_or_default();
                let updated =
                    (Duration::from_secs(100)..Duration::from_secs(125)).contains(&lifetime);
                let ok = *at < first[i].not_after && next.not_after > first[i].not_after;
                renewed_in_time &= ok && updated;
                figures.push(format!(
                    "{host} renewed {}s before expiry, for {}s",
                    early.as_secs(),
                    lifetime.as_secs()
                ));
            }
            None => {
                renewed_in_time = false;
                figures.push(format!("{host} never renewed"));
            }
        }
    }

    // Past the first certificates' end, the nodes work on the new ones.
    let ready = until_ok(Duration::from_secs(20), || {
        let mut down = Vec::new();
        for manager in ["m1", "m2"] {
            let nodes: Vec<Value> =
                serde_json::from_str(&lab.meshctl(manager, &["node", "ls", "--format", "json"])?)
                    .map_err(|e| e.to_string())?;
            down.extend(
                nodes
                    .iter()
                    .filter(|n| n["status"] != "ready")
                    .map(|n| n["name"].to_string()),
            );
        }
        for host in HOSTS {
            let info: Value =
                serde_json::from_str(&lab.meshctl(host, &["info", "--format", "json"])?)
                    .map_err(|e| e.to_string())?;
            if info["membership"]["leader_reachable"] != true {
                down.push(format!("{host}: leader unreachable"));
            }
            fresh_heartbeat(&lab, host).map_err(|e| format!("{host}: {e}"))?;
        }
        down.is_empty().then_some(()).ok_or(format!("{down:?}"))
    });
    assert!(SystemTime::now() > last_end);
    assert!(
        report::verdict(
            "security",
            "node certificates renew before they expire",
            renewed_in_time && ready.is_ok(),
            &format!(
                "cluster of 2 managers and 1 worker with --cert-expiry 1m, then swarm update --cert-expiry 2m: {}; {} after the first certificates expired: API calls, heartbeats and new mTLS handshakes",
                figures.join(", "),
                if ready.is_ok() { "all working" } else { "NOT working" }
            )
        ),
        "{figures:?}; {ready:?}"
    );
}
