use super::*;
use crate::lb::{LbNetwork, LbVip};

const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn backend(task: &str, ip: [u8; 4], vtep: Ipv4Addr, weight: u16) -> LbBackend {
    LbBackend {
        task_id: task.to_string(),
        network_id: "n1".to_string(),
        ip: Ipv4Addr::from(ip),
        mac: [2, 0, 0, 0, 0, ip[3]],
        vtep,
        weight,
        state: BackendState::Active,
    }
}

fn port(protocol: Protocol, published: u16, target: u16) -> LbPort {
    LbPort {
        protocol,
        published,
        target,
        local_only: false,
    }
}

/// Host 1 of two: web (tcp 80 → 8080, udp 53 → 5353) with t1 here and t2 on host 2.
fn host() -> HostLb {
    HostLb {
        underlay_ip: H1,
        underlay_if: "eth0".to_string(),
        underlay_mtu: 1500,
        data_path_port: 4789,
        networks: vec![LbNetwork {
            id: "n1".to_string(),
            vni: 4097,
            subnet: Ipv4Addr::new(10, 1, 0, 7),
            prefix_len: 24,
            mtu: 1450,
        }],
        services: vec![LbService {
            id: "web".to_string(),
            name: "web".to_string(),
            ports: vec![port(Protocol::Udp, 53, 5353), port(Protocol::Tcp, 80, 8080)],
            vips: vec![LbVip {
                network_id: "n1".to_string(),
                vip: Ipv4Addr::new(10, 1, 0, 2),
            }],
            backends: vec![
                backend("t2", [10, 1, 0, 12], H2, 1),
                backend("t1", [10, 1, 0, 11], H1, 1),
            ],
        }],
    }
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

/// The commands of a batch as (verb, kind, name) triples, e.g. ("add", "chain", "prerouting").
fn commands(batch: &Nftables<'_>) -> Vec<(String, String, String)> {
    let value = json(batch);
    value["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|command| {
            let (verb, object) = command.as_object().unwrap().iter().next().unwrap();
            let (kind, body) = object.as_object().unwrap().iter().next().unwrap();
            let name = body
                .get("name")
                .or_else(|| body.get("chain"))
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            (verb.clone(), kind.clone(), name.to_string())
        })
        .collect()
}

fn chain_names(ruleset: &Ruleset) -> Vec<&str> {
    ruleset.chains.keys().map(String::as_str).collect()
}

/// The pick rule of a chain: the backend chains of its map, in element order.
fn picks(ruleset: &Ruleset, chain: &str) -> Vec<String> {
    let rules = json(&ruleset.chains[chain]);
    rules
        .as_array()
        .unwrap()
        .iter()
        .find_map(|rule| {
            let vmap = rule.as_array()?.iter().find_map(|s| s.get("vmap"))?;
            assert_eq!(
                vmap["key"]["numgen"]["mod"].as_u64().unwrap() as usize,
                vmap["data"]["set"].as_array().unwrap().len()
            );
            Some(
                vmap["data"]["set"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|pair| pair[1]["goto"]["target"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn a_single_local_backend_gives_this_exact_batch() {
    let mut lb = host();
    lb.services[0].ports = vec![port(Protocol::Tcp, 80, 8080)];
    lb.services[0].backends = vec![backend("t1", [10, 1, 0, 11], H1, 1)];
    let expected = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "ip", "name": "mesh-lb"}}},
        {"delete": {"table": {"family": "ip", "name": "mesh-lb"}}},
        {"add": {"table": {"family": "ip", "name": "mesh-lb"}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-local", "bytes": null}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-new", "bytes": null}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-peer", "bytes": null}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-refused", "bytes": null}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-remote", "bytes": null}}},
        {"add": {"counter": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-unready", "bytes": null}}},
        {"add": {"chain": {"family": "ip", "table": "mesh-lb", "name": "prerouting",
            "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": "mesh-lb", "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80"}}},
        {"add": {"chain": {"family": "ip", "table": "mesh-lb", "name": "svc-web-tcp-80-be-t1"}}},
        {"add": {"rule": {"family": "ip", "table": "mesh-lb", "chain": "prerouting", "expr": [
            {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "198.18.0.1", "op": "=="}},
            {"match": {"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80, "op": "=="}},
            {"match": {"left": {"ct": {"key": "state"}}, "right": "new", "op": "in"}},
            {"jump": {"target": "svc-web-tcp-80"}}
        ]}}},
        {"add": {"rule": {"family": "ip", "table": "mesh-lb", "chain": "svc-web-tcp-80", "expr": [
            {"counter": "svc-web-tcp-80-new"},
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 1}},
                      "data": {"set": [[0, {"goto": {"target": "svc-web-tcp-80-be-t1"}}]]}}}
        ]}}},
        {"add": {"rule": {"family": "ip", "table": "mesh-lb", "chain": "svc-web-tcp-80", "expr": [
            {"counter": "svc-web-tcp-80-refused"},
            {"reject": {"type": "tcp reset"}}
        ]}}},
        {"add": {"rule": {"family": "ip", "table": "mesh-lb", "chain": "svc-web-tcp-80-be-t1", "expr": [
            {"match": {"left": {"meta": {"key": "l4proto"}}, "right": "tcp", "op": "=="}},
            {"counter": "svc-web-tcp-80-local"},
            {"dnat": {"addr": "10.1.0.11", "family": "ip", "port": 8080}}
        ]}}}
    ]});
    assert_eq!(json(&ruleset(&lb).unwrap()), expected);
}

#[test]
fn remote_backends_are_sent_on_and_peers_get_local_ones_only() {
    let plan = plan(&host()).unwrap();
    assert_eq!(
        chain_names(&plan),
        [
            "postrouting",
            "prerouting",
            "svc-web-tcp-80",
            "svc-web-tcp-80-be-t1",
            "svc-web-tcp-80-be-t2",
            "svc-web-tcp-80-peer",
            "svc-web-udp-53",
            "svc-web-udp-53-be-t1",
            "svc-web-udp-53-be-t2",
            "svc-web-udp-53-peer",
        ]
    );
    assert_eq!(
        picks(&plan, "svc-web-tcp-80"),
        ["svc-web-tcp-80-be-t1", "svc-web-tcp-80-be-t2"]
    );
    assert_eq!(
        picks(&plan, "svc-web-tcp-80-peer"),
        ["svc-web-tcp-80-be-t1"]
    );
    // Flows from the other host go to the peer chain.
    let entry = json(&plan.chains["svc-web-tcp-80"][0]);
    assert_eq!(entry[0]["match"]["left"]["payload"]["field"], "saddr");
    assert_eq!(entry[0]["match"]["right"], "198.18.0.2");
    assert_eq!(entry[1]["goto"]["target"], "svc-web-tcp-80-peer");
    // The remote backend: its host's address and the published port; the local one: the
    // task's address and the target port.
    let remote = json(&plan.chains["svc-web-udp-53-be-t2"][0]);
    assert_eq!(
        remote[2]["dnat"],
        serde_json::json!({"addr": "198.18.0.2", "family": "ip", "port": 53})
    );
    let local = json(&plan.chains["svc-web-udp-53-be-t1"][0]);
    assert_eq!(
        local[2]["dnat"],
        serde_json::json!({"addr": "10.1.0.11", "family": "ip", "port": 5353})
    );
    // Sent-on flows leave with this host's address.
    let snat = json(&plan.chains["postrouting"]);
    assert_eq!(snat.as_array().unwrap().len(), 1);
    assert_eq!(snat[0][0]["match"]["op"], "in");
    assert_eq!(snat[0][4]["snat"]["addr"], "198.18.0.1");
    // UDP refuses with port unreachable.
    let refuse = json(plan.chains["svc-web-udp-53"].last().unwrap());
    assert_eq!(
        refuse[1]["reject"],
        serde_json::json!({"type": "icmp", "expr": "port-unreachable"})
    );
    assert_eq!(
        plan.legs,
        [LegRoute {
            network_id: "n1".to_string(),
            subnet: Ipv4Addr::new(10, 1, 0, 0),
            prefix_len: 24,
        }]
    );
    assert_eq!(
        plan.counters["svc-web-tcp-80-remote"],
        "forward:remote@web/tcp/80"
    );
    assert_eq!(
        plan.counters["svc-web-udp-53-refused"],
        "refuse:no-backend@web/udp/53"
    );
    assert_eq!(plan.counters["snat"], "forward:snat");
    assert_eq!(plan.counters.len(), 13);
}

#[test]
fn weights_repeat_backends_and_draining_ones_get_no_new_flows() {
    let mut lb = host();
    lb.services[0].backends = vec![
        backend("t1", [10, 1, 0, 11], H1, 4),
        backend("t2", [10, 1, 0, 12], H2, 2),
        backend("t3", [10, 1, 0, 13], H2, 2),
    ];
    lb.services[0].backends[2].state = BackendState::Draining;
    let plan = plan(&lb).unwrap();
    // 4:2 reduces to 2:1; t3 drains.
    assert_eq!(
        picks(&plan, "svc-web-tcp-80"),
        [
            "svc-web-tcp-80-be-t1",
            "svc-web-tcp-80-be-t1",
            "svc-web-tcp-80-be-t2"
        ]
    );
    assert!(!plan.chains.contains_key("svc-web-tcp-80-be-t3"));

    // A local backend that drains keeps its route (its flows still need it).
    lb.services[0].backends[0].state = BackendState::Draining;
    let plan = super::plan(&lb).unwrap();
    assert_eq!(plan.legs.len(), 1);
    // With no Active local backend, a flow a peer sent (with its own, older view) still goes
    // to the draining one, which runs until its drain period ends.
    assert_eq!(
        picks(&plan, "svc-web-tcp-80-peer"),
        ["svc-web-tcp-80-be-t1"]
    );
    assert!(plan.chains.contains_key("svc-web-tcp-80-be-t1"));
    // New flows from clients never pick it.
    assert!(!picks(&plan, "svc-web-tcp-80").contains(&"svc-web-tcp-80-be-t1".to_string()));

    // With no local backend at all, flows from peers are dropped (their view is ahead of this
    // host's; the retransmission finds the backend programmed), not refused.
    lb.services[0].backends.remove(0);
    let plan = super::plan(&lb).unwrap();
    assert_eq!(picks(&plan, "svc-web-tcp-80-peer"), Vec::<String>::new());
    assert_eq!(plan.chains["svc-web-tcp-80-peer"].len(), 1);
    let dropped = json(&plan.chains["svc-web-tcp-80-peer"][0]);
    assert_eq!(dropped[0]["counter"], "svc-web-tcp-80-unready");
    assert!(dropped[1].get("drop").is_some(), "{dropped}");
    assert_eq!(
        plan.counters["svc-web-tcp-80-unready"],
        "drop:peer-no-backend@web/tcp/80"
    );
}

#[test]
fn slots_stay_bounded_and_keep_every_backend() {
    let a = backend("a", [10, 1, 0, 11], H1, 65535);
    let b = backend("b", [10, 1, 0, 12], H1, 1);
    let c = backend("c", [10, 1, 0, 13], H1, 3);
    let spread = slots(&[&a, &b, &c]);
    assert!(spread.len() <= MAX_SLOTS as usize + 2, "{}", spread.len());
    for key in ["a", "b", "c"] {
        assert!(spread.iter().any(|s| s.task_id == key), "{key}");
    }
    assert_eq!(slots(&[&b, &c]).len(), 4);
    assert!(slots(&[]).is_empty());
}

#[test]
fn no_backend_refuses_and_needs_no_route() {
    let mut lb = host();
    lb.services[0].backends.clear();
    let plan = plan(&lb).unwrap();
    assert_eq!(plan.chains["svc-web-tcp-80"].len(), 1);
    let refuse = json(&plan.chains["svc-web-tcp-80"][0]);
    assert_eq!(refuse[1]["reject"]["type"], "tcp reset");
    assert!(plan.legs.is_empty());
    assert!(plan.chains["postrouting"].is_empty());
}

#[test]
fn host_mode_uses_local_backends_only_and_ignores_peers() {
    let mut lb = host();
    lb.services[0].ports = vec![LbPort {
        local_only: true,
        ..port(Protocol::Tcp, 81, 8080)
    }];
    let plan = plan(&lb).unwrap();
    assert_eq!(picks(&plan, "svc-web-tcp-81"), ["svc-web-tcp-81-be-t1"]);
    assert!(!plan.chains.contains_key("svc-web-tcp-81-peer"));
    assert!(!plan.chains.contains_key("svc-web-tcp-81-be-t2"));
    assert!(plan.chains["postrouting"].is_empty());
}

#[test]
fn the_plan_does_not_depend_on_the_callers_order() {
    let mut shuffled = host();
    shuffled.services[0].backends.reverse();
    shuffled.services[0].ports.reverse();
    assert_eq!(plan(&shuffled).unwrap(), plan(&host()).unwrap());
}

#[test]
fn a_known_previous_table_is_flushed_not_rebuilt() {
    let before = plan(&host()).unwrap();
    let mut lb = host();
    lb.services[0].backends.retain(|b| b.task_id == "t1");
    let after = plan(&lb).unwrap();
    let commands = commands(&transaction(&after, Some(&before)));
    let deleted: Vec<(&str, &str)> = commands
        .iter()
        .filter(|(verb, _, _)| verb == "delete")
        .map(|(_, kind, name)| (kind.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        deleted,
        [
            ("chain", "svc-web-tcp-80-be-t2"),
            ("chain", "svc-web-tcp-80-peer"),
            ("chain", "svc-web-udp-53-be-t2"),
            ("chain", "svc-web-udp-53-peer"),
            ("counter", "snat"),
        ]
    );
    assert_eq!(
        commands[0],
        ("add".into(), "table".into(), "mesh-lb".into())
    );
    assert_eq!(
        commands[1],
        ("flush".into(), "table".into(), "mesh-lb".into())
    );
    // Every chain is added before any rule jumps to it.
    let first_rule = commands
        .iter()
        .position(|(_, kind, _)| kind == "rule")
        .unwrap();
    assert!(commands[first_rule..]
        .iter()
        .all(|(_, kind, _)| kind == "rule"));
    // Unknown previous state: the table is deleted and rebuilt.
    let fresh = commands_of(&after);
    assert_eq!(
        fresh[1],
        ("delete".into(), "table".into(), "mesh-lb".into())
    );
}

fn commands_of(plan: &Ruleset) -> Vec<(String, String, String)> {
    commands(&transaction(plan, None))
}

#[test]
fn inconsistent_states_are_refused() {
    let mut lb = host();
    let mut other = lb.services[0].clone();
    other.id = "other".to_string();
    other.ports = vec![port(Protocol::Tcp, 80, 9090)];
    lb.services.push(other);
    let err = plan(&lb).unwrap_err().to_string();
    assert!(err.contains("tcp/80") && err.contains("other"), "{err}");

    let mut lb = host();
    lb.networks.clear();
    let err = plan(&lb).unwrap_err().to_string();
    assert!(err.contains("network n1"), "{err}");
    // A remote backend needs no local network; UDP and TCP may share a number.
    let mut lb = host();
    lb.networks.clear();
    lb.services[0].backends.retain(|b| b.task_id == "t2");
    lb.services[0].ports.push(port(Protocol::Udp, 80, 80));
    assert!(plan(&lb).is_ok());
}

#[test]
fn ids_become_names_nft_reads_back() {
    assert_eq!(ident("web"), "web");
    assert_eq!(ident("svc-web_1.a"), "svc-web_1.a");
    let long = "x".repeat(40);
    let odd = ident("web service/é");
    assert!(odd.starts_with("webservice-h"), "{odd}");
    assert_ne!(ident(&long), ident(&"x".repeat(41)));
    for name in [ident(&long), odd, ident("")] {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
            "{name}"
        );
    }
}

#[test]
fn counters_of_nft_output_are_read_as_u64() {
    let output = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "ip", "name": "snat", "table": "mesh-lb", "handle": 3,
                     "packets": 5000000000, "bytes": 1}},
        {"counter": {"family": "ip", "name": "x", "table": "other", "packets": 1, "bytes": 1}}]}"#;
    assert_eq!(
        super::super::kernel::parse_counters(output).unwrap(),
        [("snat".to_string(), 5_000_000_000)]
    );
}
