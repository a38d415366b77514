//! What a task's DNS server answers: the names of the services on the networks the task
//! shares, built from the dispatcher's services and this host's gossip view of the endpoints.
//! A pure function, so every answer is a plain consequence of the endpoint table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dataplane::dns::{Records, Srv};

use super::SeenEndpoint;
use crate::rpc::messages::Assignments;
use crate::service::spec::Protocol;

/// Seconds a client may cache an internal answer: short, so that a task that stops or turns
/// unhealthy leaves clients' answers at once.
pub const INTERNAL_TTL: u32 = 1;

/// The records a task attached to `networks` may see:
/// - `<service>`: its VIP (endpoint mode vip) or its healthy tasks' addresses (dnsrr);
/// - `tasks.<service>`: its healthy tasks' addresses;
/// - `<service>.<slot>` and `<service>.<slot>.<task id>`: that task's address;
/// - `_<port>._<tcp|udp>.<service>` for each published port: SRV to each healthy task.
pub fn records(networks: &[String], assignments: &Assignments, seen: &[SeenEndpoint]) -> Records {
    let mut a: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut srv: BTreeMap<String, Vec<Srv>> = BTreeMap::new();
    let mut add = |name: String, ip: Ipv4Addr| {
        let ips = a.entry(name.to_ascii_lowercase()).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    for network in assignments
        .networks
        .iter()
        .filter(|n| networks.contains(&n.network.id))
    {
        let on_network: Vec<&SeenEndpoint> = seen
            .iter()
            .filter(|e| e.network_id == network.network.id && e.healthy)
            .collect();
        for service in &network.services {
            let tasks: Vec<&SeenEndpoint> = on_network
                .iter()
                .copied()
                .filter(|e| e.service_id == service.id)
                .collect();
            match service.vip {
                Some(vip) => add(service.name.clone(), vip),
                None => tasks.iter().for_each(|e| add(service.name.clone(), e.ip)),
            }
            for task in &tasks {
                add(format!("tasks.{}", service.name), task.ip);
                add(task.task_name.clone(), task.ip);
                add(format!("{}.{}", task.task_name, task.task_id), task.ip);
            }
            for port in &service.ports {
                let protocol = match port.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                let name = format!("_{}._{protocol}.{}", port.target, service.name);
                let targets = srv.entry(name.to_ascii_lowercase()).or_default();
                for task in &tasks {
                    targets.push(Srv {
                        priority: 0,
                        weight: 10,
                        port: port.target,
                        target: format!("{}.{}", task.task_name, task.task_id).to_ascii_lowercase(),
                    });
                }
            }
        }
    }
    srv.retain(|_, targets| !targets.is_empty());
    Records {
        a,
        srv,
        ttl: INTERNAL_TTL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetworkRecord, Subnet};
    use crate::rpc::messages::{NetworkAssignment, ServiceOnNetwork};
    use crate::service::spec::{PortConfig, PublishMode};

    fn network(id: &str) -> NetworkAssignment {
        NetworkAssignment {
            network: NetworkRecord {
                id: id.into(),
                name: format!("net-{id}"),
                subnet: Subnet::parse("10.1.0.0/24").unwrap(),
                gateway: Ipv4Addr::new(10, 1, 0, 1),
                vni: 4097,
                mtu: None,
                attachable: false,
                labels: BTreeMap::new(),
                created_ms: 0,
            },
            mtu: 1450,
            services: Vec::new(),
        }
    }

    fn endpoint(
        network: &str,
        service: &str,
        slot: u64,
        ip: [u8; 4],
        healthy: bool,
    ) -> SeenEndpoint {
        SeenEndpoint {
            network_id: network.into(),
            task_id: format!("t{slot}{service}"),
            node_id: slot,
            service_id: service.into(),
            service_name: format!("svc-{service}"),
            task_name: format!("svc-{service}.{slot}"),
            slot,
            ip: Ipv4Addr::from(ip),
            vtep: Ipv4Addr::new(198, 18, 0, slot as u8),
            healthy,
            draining: false,
        }
    }

    fn service(id: &str, vip: Option<[u8; 4]>, ports: Vec<PortConfig>) -> ServiceOnNetwork {
        ServiceOnNetwork {
            id: id.into(),
            name: format!("svc-{id}"),
            vip: vip.map(Ipv4Addr::from),
            ports,
            ingress: true,
        }
    }

    fn assignments(networks: Vec<NetworkAssignment>) -> Assignments {
        Assignments {
            networks,
            ..Assignments::default()
        }
    }

    #[test]
    fn vip_services_answer_their_vip_and_tasks_answer_healthy_addresses() {
        let mut net = network("n1");
        net.services.push(service("a", Some([10, 1, 0, 2]), vec![]));
        net.services.push(service("b", None, vec![]));
        let seen = vec![
            endpoint("n1", "a", 1, [10, 1, 0, 10], true),
            endpoint("n1", "a", 2, [10, 1, 0, 11], false),
            endpoint("n1", "b", 1, [10, 1, 0, 20], true),
            endpoint("n1", "b", 2, [10, 1, 0, 21], true),
        ];
        let records = records(&["n1".into()], &assignments(vec![net]), &seen);
        assert_eq!(records.a["svc-a"], vec![Ipv4Addr::new(10, 1, 0, 2)]);
        assert_eq!(records.a["tasks.svc-a"], vec![Ipv4Addr::new(10, 1, 0, 10)]);
        assert_eq!(records.a["svc-a.1"], vec![Ipv4Addr::new(10, 1, 0, 10)]);
        assert_eq!(records.a["svc-a.1.t1a"], vec![Ipv4Addr::new(10, 1, 0, 10)]);
        assert!(
            !records.a.contains_key("svc-a.2"),
            "unhealthy tasks have no name"
        );
        assert_eq!(
            records.a["svc-b"],
            vec![Ipv4Addr::new(10, 1, 0, 20), Ipv4Addr::new(10, 1, 0, 21)]
        );
        assert_eq!(records.ttl, INTERNAL_TTL);
    }

    #[test]
    fn only_networks_the_task_shares_are_visible() {
        let mut n1 = network("n1");
        n1.services.push(service("a", None, vec![]));
        let mut n2 = network("n2");
        n2.services.push(service("b", None, vec![]));
        let seen = vec![
            endpoint("n1", "a", 1, [10, 1, 0, 10], true),
            endpoint("n2", "b", 1, [10, 2, 0, 10], true),
        ];
        let records = records(&["n2".into()], &assignments(vec![n1, n2]), &seen);
        assert!(!records.a.contains_key("svc-a"));
        assert!(!records.a.contains_key("tasks.svc-a"));
        assert_eq!(records.a["svc-b"], vec![Ipv4Addr::new(10, 2, 0, 10)]);
    }

    #[test]
    fn published_ports_get_srv_records_to_each_healthy_task() {
        let port = PortConfig {
            published: Some(8080),
            target: 80,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        };
        let mut net = network("n1");
        net.services
            .push(service("a", Some([10, 1, 0, 2]), vec![port]));
        let seen = vec![
            endpoint("n1", "a", 1, [10, 1, 0, 10], true),
            endpoint("n1", "a", 2, [10, 1, 0, 11], true),
        ];
        let records = records(&["n1".into()], &assignments(vec![net]), &seen);
        let targets = &records.srv["_80._tcp.svc-a"];
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].port, 80);
        assert_eq!(targets[0].target, "svc-a.1.t1a");
        assert!(records.a.contains_key(&targets[0].target));
    }

    #[test]
    fn a_service_without_healthy_tasks_keeps_only_its_vip() {
        let mut net = network("n1");
        net.services.push(service("a", Some([10, 1, 0, 2]), vec![]));
        net.services.push(service("b", None, vec![]));
        let records = records(&["n1".into()], &assignments(vec![net]), &[]);
        assert_eq!(records.a.len(), 1);
        assert!(records.a.contains_key("svc-a"));
        assert!(records.srv.is_empty());
    }
}
