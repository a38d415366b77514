//! The cluster against a host on its underlay that is no member (`c1`, on the lab switch, no
//! meshd): it cannot use the cluster port without a certificate of the cluster's CA, cannot
//! join without a valid token, cannot take part in gossip, and cannot inject VXLAN into the
//! overlay (the data-path port's allow-list). Every case is recorded for the report.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use control::cluster::ca::{new_node_key_and_csr, CertRole, ClusterCa};
use control::cluster::tls::{manager_server_name, NodeCredentials};
use control::cluster::token::JoinToken;
use control::gossip::envelope::Channel;
use control::gossip::Keyring;
use control::rpc::client::Client;
use control::rpc::messages::{JoinRequest, Request, Response};
use dataplane::probe::ipv4::checksum;
use lab::LabSpec;
use netns_tests::{report, until_ok, TestLab};
use serde_json::Value;

const IMAGE: &str = "mesh-test:latest";

fn outsider_lab(tag: &str, workers: usize) -> TestLab {
    TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = workers;
        spec.clients = 1;
    })
}

/// Runs `f` on a thread inside host `host`'s network namespace.
fn on_host<T: Send + 'static>(
    lab: &TestLab,
    host: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    netns_tests::in_netns(&lab::host_netns(lab.name(), host), f).expect("enter the host")
}

/// One request to `addr` over TLS with `tls`, from inside `host`: the answer, or why there
/// was none.
fn call_from(
    lab: &TestLab,
    host: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request: Request,
) -> Result<Response, String> {
    on_host(lab, host, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            Client::new(&addr.to_string(), tls, manager_server_name())
                .call(&request, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// A client that trusts the cluster's CA (its certificate is no secret) and shows none.
fn anonymous_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A client showing `cert_pem` (not issued by the cluster's CA) for `key_pem`.
fn tls_with(ca_pem: &str, cert_pem: String, key_pem: String) -> Arc<rustls::ClientConfig> {
    NodeCredentials::new(ca_pem.to_string(), cert_pem, key_pem)
        .client_config()
        .unwrap()
}

fn is_refused(answer: &Result<Response, String>) -> bool {
    match answer {
        Ok(Response::Refused(_)) => true,
        Ok(_) => false,
        // The handshake or the connection failed: nothing was answered.
        Err(_) => true,
    }
}

fn node_names(lab: &TestLab) -> Vec<String> {
    let nodes: Vec<Value> =
        serde_json::from_str(&lab.meshctl_ok("m1", &["node", "ls", "--format", "json"])).unwrap();
    nodes
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

/// The gossip part of `meshctl info` (gossip starts with the node's first assignments).
fn gossip_view(lab: &TestLab, host: &str) -> Value {
    until_ok(Duration::from_secs(10), || {
        let info: Value =
            serde_json::from_str(&lab.meshctl_ok(host, &["info", "--format", "json"])).unwrap();
        if info["gossip"]["stats"].is_object() {
            Ok(info["gossip"].clone())
        } else {
            Err(info.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("no gossip view from {host}: {e}"))
    .0
}

fn dropped_by_gossip(view: &Value) -> u64 {
    let stats = &view["stats"];
    stats["auth_failures"].as_u64().unwrap() + stats["malformed"].as_u64().unwrap()
}

#[test]
fn a_host_without_a_cluster_certificate_cannot_call_join_or_gossip() {
    let lab = outsider_lab("outsider", 1);
    let ca_pem = lab.cluster_file("m1", "ca.pem");
    let api: SocketAddr = (lab.addr("m1"), 2377).into();
    let before = node_names(&lab);

    // (a) The cluster API and Raft without a certificate, and with certificates of other CAs.
    let foreign = ClusterCa::generate("foreign-cluster").unwrap();
    let info: Value =
        serde_json::from_str(&lab.meshctl_ok("m1", &["info", "--format", "json"])).unwrap();
    let m1_id = info["membership"]["node_id"].as_str().unwrap().to_string();
    let cluster_id = info["membership"]["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (key_pem, csr) = new_node_key_and_csr(&m1_id).unwrap();
    // A manager certificate naming m1 and this cluster, but signed by another CA.
    let forged = foreign
        .sign_csr(
            &csr,
            &m1_id,
            CertRole::Manager,
            &cluster_id,
            Duration::from_secs(3600),
        )
        .unwrap();
    let clients = [
        ("no client certificate", anonymous_tls(&ca_pem)),
        (
            "a self-signed certificate",
            tls_with(&ca_pem, foreign.cert_pem.clone(), foreign.key_pem.clone()),
        ),
        (
            "a manager certificate of another CA naming a member",
            tls_with(&ca_pem, forged, key_pem),
        ),
    ];
    let requests = || {
        [
            ("node ls", Request::Api(control::api::ApiRequest::NodeList)),
            (
                "heartbeat",
                Request::Heartbeat {
                    node_id: 1,
                    version: "0".into(),
                },
            ),
            ("leave", Request::Leave),
        ]
    };
    let mut outcomes = Vec::new();
    let mut all_refused = true;
    for (what, tls) in &clients {
        for (name, request) in requests() {
            let answer = call_from(&lab, "c1", api, Arc::clone(tls), request);
            let refused = is_refused(&answer);
            all_refused &= refused;
            let shown = match &answer {
                Ok(Response::Refused(why)) => format!("refused: {why}"),
                Ok(other) => format!("ANSWERED: {other:?}"),
                Err(err) => format!("no answer: {err}"),
            };
            outcomes.push(format!(
                "{what} / {name}: {}",
                shown.chars().take(120).collect::<String>()
            ));
        }
    }
    assert!(
        report::verdict(
            "security",
            "cluster API and Raft from a host without a cluster certificate",
            all_refused,
            &format!(
                "{} calls (node ls, heartbeat, leave) with no certificate, a self-signed one and a forged manager certificate of another CA: all refused",
                outcomes.len()
            )
        ),
        "{outcomes:#?}"
    );

    // (b) Joining needs a valid token of this cluster.
    let real_digest = control::cluster::ca::ClusterCa {
        cert_pem: ca_pem.clone(),
        key_pem: String::new(),
    }
    .digest()
    .unwrap();
    let tokens = [
        ("no token", String::new()),
        (
            "a guessed secret",
            JoinToken::new(real_digest, [7; 16]).to_string(),
        ),
        (
            "a token of another cluster",
            JoinToken::new(foreign.digest().unwrap(), [9; 16]).to_string(),
        ),
    ];
    let mut join_outcomes = Vec::new();
    let mut joins_refused = true;
    for (what, token) in tokens {
        let (_key, csr_der) = new_node_key_and_csr("outsider").unwrap();
        let request = Request::Join(JoinRequest {
            token,
            csr_der,
            name: "c1".into(),
            addr: format!("{}:2377", lab.addr("c1")),
            version: "0".into(),
            description: Default::default(),
        });
        let answer = call_from(&lab, "c1", api, anonymous_tls(&ca_pem), request);
        let refused = matches!(answer, Ok(Response::Refused(_)));
        joins_refused &= refused;
        join_outcomes.push(
            format!("{what}: {answer:?}")
                .chars()
                .take(160)
                .collect::<String>(),
        );
    }
    let after = node_names(&lab);
    assert!(
        report::verdict(
            "security",
            "joining without a valid token (none, guessed, another cluster's)",
            joins_refused && after == before,
            &format!(
                "3 join attempts from the outsider refused; nodes before {before:?}, after {after:?}"
            )
        ),
        "{join_outcomes:#?}"
    );

    // (c) Gossip: datagrams that are not envelopes, and envelopes sealed with another key.
    let gossip: SocketAddr = (lab.addr("m1"), 7946).into();
    let start = dropped_by_gossip(&gossip_view(&lab, "m1"));
    const SENT: u64 = 20;
    on_host(&lab, "c1", move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for i in 0..SENT / 2 {
            socket
                .send_to(
                    format!("{{\"ping\":{i},\"from\":\"c1\"}}").as_bytes(),
                    gossip,
                )
                .unwrap();
        }
        let key = Keyring::random_key().unwrap();
        for id in 0..SENT / 2 {
            let ring = Keyring::new(u32::try_from(id).unwrap(), key);
            socket
                .send_to(&ring.seal(Channel::Datagram, b"{\"alive\":\"c1\"}"), gossip)
                .unwrap();
        }
        // A stream frame on the TCP side too.
        if let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&gossip, Duration::from_secs(2))
        {
            use std::io::Write;
            let sealed = Keyring::new(1, key).seal(Channel::Stream, b"{\"sync\":\"c1\"}");
            let mut frame = u32::try_from(sealed.len()).unwrap().to_be_bytes().to_vec();
            frame.extend_from_slice(&sealed);
            let _ = stream.write_all(&frame);
        }
    });
    let counted = until_ok(Duration::from_secs(10), || {
        let now = dropped_by_gossip(&gossip_view(&lab, "m1"));
        if now >= start + SENT {
            Ok(now - start)
        } else {
            Err(format!("{} of {SENT} counted", now - start))
        }
    });
    let view = gossip_view(&lab, "m1");
    let outsider = lab.addr("c1").to_string();
    let members: Vec<String> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let stranger = members
        .iter()
        .any(|m| m.starts_with(&format!("{outsider}:")));
    let dropped = counted.as_ref().map_or(0, |(n, _)| *n);
    assert!(
        report::verdict(
            "security",
            "gossip from a host without the cluster key",
            counted.is_ok() && !stranger && node_names(&lab) == before,
            &format!(
                "{SENT} datagrams sent ({} unsealed, {} sealed with another key): {dropped} dropped and counted; outsider in membership: {stranger}",
                SENT / 2,
                SENT / 2
            )
        ),
        "{counted:?}; members {members:?}"
    );
}

/// A VXLAN datagram (VNI `vni`) carrying an ICMP echo from `src` to the task at `dst`, whose
/// MAC Mesh derives from its address (02:42 then the four octets).
fn vxlan_echo(vni: u32, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![0x08, 0, 0, 0];
    packet.extend_from_slice(&(vni << 8).to_be_bytes());
    let [a, b, c, d] = dst.octets();
    packet.extend_from_slice(&[0x02, 0x42, a, b, c, d]);
    packet.extend_from_slice(&[0x02, 0x42, 0xde, 0xad, 0xbe, 0xef]);
    packet.extend_from_slice(&[0x08, 0x00]);
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"injected by an outsider");
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).unwrap();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&ip);
    packet.extend_from_slice(&icmp);
    packet
}

/// Sends `count` copies of `datagram` from `host` to `to`:4789.
fn send_vxlan(lab: &TestLab, host: &str, to: Ipv4Addr, datagram: Vec<u8>, count: u64) {
    on_host(lab, host, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..count {
            socket.send_to(&datagram, (to, 4789)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// Datagrams w1's allow-list dropped so far.
fn guard_dropped(lab: &TestLab, host: &str) -> u64 {
    let out = lab.sh(
        host,
        &[
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            "mesh-underlay",
            "dropped",
        ],
    );
    let json: Value = serde_json::from_str(&out).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .unwrap()
}

fn guard_members(lab: &TestLab, host: &str) -> Result<String, String> {
    let out = lab
        .lab()
        .output(
            host,
            &["nft", "list", "set", "inet", "mesh-underlay", "members"],
        )
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Packets the vxlan device of `network_id` on `host` delivered into the overlay.
fn vxlan_rx(lab: &TestLab, host: &str, network_id: &str) -> u64 {
    let ns = lab
        .lab()
        .files(host)
        .unwrap()
        .state_dir()
        .join("overlay")
        .join(format!("ns-{}", &network_id[..12]));
    let flag = format!("--net={}", ns.display());
    // sysfs shows the namespace that mounted it: ask the kernel through `ip` instead.
    let out = lab.sh(
        host,
        &[
            "nsenter", &flag, "ip", "-j", "-s", "link", "show", "dev", "vxlan0",
        ],
    );
    let links: Value = serde_json::from_str(&out).unwrap();
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {out}"))
}

/// (task ID, node, overlay IP) of `service`'s running task on `network`.
fn endpoint(lab: &TestLab, network: &str, service: &str) -> (String, String, Ipv4Addr) {
    until_ok(Duration::from_secs(30), || {
        lab.running_endpoints("m1", network, service)
            .into_iter()
            .next()
            .map(|e| (e.task_id, e.node, e.ip.parse().unwrap()))
            .ok_or_else(|| format!("{service}: no running task yet"))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

#[test]
fn vxlan_from_hosts_outside_the_cluster_is_dropped_and_members_still_talk() {
    let lab = outsider_lab("vxguard", 2);
    lab.meshctl_ok("m1", &["node", "update", "--availability", "drain", "m1"]);
    lab.meshctl_ok("m1", &["network", "create", "--driver", "overlay", "sec"]);
    for (name, host) in [("a", "w1"), ("b", "w2")] {
        let constraint = format!("node.hostname=={host}");
        lab.meshctl_ok(
            "m1",
            &[
                "service",
                "create",
                "--name",
                name,
                "--network",
                "sec",
                "--constraint",
                &constraint,
                IMAGE,
                "sleep",
                "100000",
            ],
        );
    }
    let (a_task, a_node, a_ip) = endpoint(&lab, "sec", "a");
    let (b_task, b_node, _) = endpoint(&lab, "sec", "b");
    assert_eq!((a_node.as_str(), b_node.as_str()), ("w1", "w2"));
    let views: Vec<Value> =
        serde_json::from_str(&lab.meshctl_ok("m1", &["network", "inspect", "sec"])).unwrap();
    let network_id = views[0]["id"].as_str().unwrap().to_string();
    let vni = u32::try_from(views[0]["vni"].as_u64().unwrap()).unwrap();

    // Every member, and no one else, is on w1's list.
    let (listed, _) = until_ok(Duration::from_secs(10), || {
        let set = guard_members(&lab, "w1")?;
        ["m1", "w1", "w2"]
            .iter()
            .all(|h| set.contains(&lab.addr(h).to_string()))
            .then_some(set.clone())
            .ok_or(set)
    })
    .unwrap_or_else(|e| panic!("w1's allow-list never listed every member: {e}"));
    assert!(!listed.contains(&lab.addr("c1").to_string()), "{listed}");

    // Members reach each other's tasks over the overlay.
    let ping = |host: &str, task: &str, ip: Ipv4Addr| {
        lab.in_task(host, task, &["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .is_ok()
    };
    let member_ping = until_ok(Duration::from_secs(15), || {
        ping("w2", &b_task, a_ip)
            .then_some(())
            .ok_or("no reply".to_string())
    });
    assert!(
        report::verdict(
            "security",
            "overlay traffic between members with the data-path allow-list",
            member_ping.is_ok(),
            &format!(
                "task on w2 pings task on w1 over VXLAN: {}",
                if member_ping.is_ok() {
                    "answered"
                } else {
                    "no reply"
                }
            )
        ),
        "members cannot reach each other through the allow-list"
    );

    // The outsider's VXLAN, well-formed and addressed to a's task, never reaches the overlay.
    const SENT: u64 = 50;
    let datagram = vxlan_echo(vni, Ipv4Addr::new(10, 0, 9, 250), a_ip);
    let (dropped0, rx0) = (guard_dropped(&lab, "w1"), vxlan_rx(&lab, "w1", &network_id));
    send_vxlan(&lab, "c1", lab.addr("w1"), datagram.clone(), SENT);
    let (dropped1, rx1) = (guard_dropped(&lab, "w1"), vxlan_rx(&lab, "w1", &network_id));
    let blocked = dropped1 - dropped0 >= SENT && rx1 - rx0 < SENT;

    // The same datagrams without the allow-list do reach the overlay: what the list stops is
    // a working injection. (The agent puts the table back at its next change.)
    lab.sh("w1", &["nft", "delete", "table", "inet", "mesh-underlay"]);
    send_vxlan(&lab, "c1", lab.addr("w1"), datagram.clone(), SENT);
    let rx2 = vxlan_rx(&lab, "w1", &network_id);
    assert!(
        report::verdict(
            "security",
            "VXLAN injected by a host outside the cluster",
            blocked && rx2 - rx1 >= SENT,
            &format!(
                "{SENT} datagrams to w1's data-path port: {} counted as dropped, {} delivered into the overlay (without the allow-list: {} delivered)",
                dropped1 - dropped0,
                rx1 - rx0,
                rx2 - rx1
            )
        ),
        "the allow-list did not stop the outsider, or the probe injection is not valid"
    );

    // w2 leaves and is removed: it is no member any more, and w1 stops accepting it. A change
    // of membership also restores the table deleted above.
    lab.meshctl_ok("w2", &["swarm", "leave"]);
    until_ok(Duration::from_secs(30), || {
        let nodes: Vec<Value> =
            serde_json::from_str(&lab.meshctl_ok("m1", &["node", "ls", "--format", "json"]))
                .unwrap();
        let w2 = nodes.iter().find(|n| n["name"] == "w2");
        match w2 {
            Some(n) if n["status"] == "down" => Ok(()),
            other => Err(format!("w2: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("w2 never went down after leaving: {e}"));
    lab.meshctl_ok("m1", &["node", "rm", "w2"]);
    let w2_addr = lab.addr("w2").to_string();
    until_ok(Duration::from_secs(15), || {
        let set = guard_members(&lab, "w1")?;
        (!set.contains(&w2_addr) && set.contains(&lab.addr("m1").to_string()))
            .then_some(())
            .ok_or(set)
    })
    .unwrap_or_else(|e| panic!("w1 still allows the removed w2: {e}"));
    let w2_table_gone = guard_members(&lab, "w2").is_err();
    let (dropped3, rx3) = (guard_dropped(&lab, "w1"), vxlan_rx(&lab, "w1", &network_id));
    send_vxlan(&lab, "w2", lab.addr("w1"), datagram, SENT);
    let (dropped4, rx4) = (guard_dropped(&lab, "w1"), vxlan_rx(&lab, "w1", &network_id));
    assert!(
        report::verdict(
            "security",
            "VXLAN from a node that left and was removed",
            dropped4 - dropped3 >= SENT && rx4 - rx3 < SENT && w2_table_gone,
            &format!(
                "{SENT} datagrams from the removed w2: {} dropped, {} delivered; w2's own allow-list removed on leave: {w2_table_gone}",
                dropped4 - dropped3,
                rx4 - rx3
            )
        ),
        "the removed node is still allowed"
    );
    let _ = a_task;
}
