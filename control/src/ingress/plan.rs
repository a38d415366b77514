//! The pure half of the agent's load balancing: from the dispatcher's assignments and the
//! gossip view of the endpoint table to the host's desired balancing state.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dataplane::lb::{
    BackendState, HostLb, LbBackend, LbNetwork, LbPort, LbService, LbVip, Protocol,
};

use crate::discovery::SeenEndpoint;
use crate::network::mac_of;
use crate::rpc::messages::Assignments;
use crate::service::spec::{self, PublishMode};

/// Where this host's underlay is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub ip: Ipv4Addr,
    pub interface: String,
    pub mtu: u32,
    pub data_path_port: u16,
}

/// What the host must balance. Each balanced set is one [`LbService`] with backends on one
/// network (a task appears once per set):
/// - the service's published ports in ingress mode, with its tasks on its ingress network
///   (its first), and its VIP there;
/// - its host-mode ports, with only this host's tasks, when it runs any (ID `<id>/host`);
/// - its VIP on each other network, with its tasks there (ID `<id>/<network>`).
///
/// Backends are the tasks gossip announces as serving (running, healthy) or draining
/// (stopping: they keep their flows); starting and unhealthy tasks are left out.
pub fn desired(assignments: &Assignments, seen: &[SeenEndpoint], underlay: &Underlay) -> HostLb {
    let networks = assignments
        .networks
        .iter()
        .map(|n| LbNetwork {
            id: plan_id(&n.network.id),
            vni: n.network.vni,
            subnet: n.network.subnet.addr,
            prefix_len: n.network.subnet.prefix,
            mtu: n.mtu,
        })
        .collect();
    let mut services: BTreeMap<String, LbService> = BTreeMap::new();
    for net in &assignments.networks {
        for service in &net.services {
            let backends = backends_of(seen, &service.id, &net.network.id);
            let vips = service
                .vip
                .map(|vip| LbVip {
                    network_id: plan_id(&net.network.id),
                    vip,
                })
                .into_iter()
                .collect::<Vec<_>>();
            if service.ingress {
                let ports: Vec<LbPort> = service
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Ingress)
                    .filter_map(|p| lb_port(p, false))
                    .collect();
                let host_ports: Vec<LbPort> = service
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .filter_map(|p| lb_port(p, true))
                    .collect();
                let local: Vec<LbBackend> = backends
                    .iter()
                    .filter(|b| b.vtep == underlay.ip)
                    .cloned()
                    .collect();
                if !host_ports.is_empty() && !local.is_empty() {
                    services.insert(
                        format!("{}/host", service.id),
                        LbService {
                            id: format!("{}/host", service.id),
                            name: service.name.clone(),
                            ports: host_ports,
                            vips: Vec::new(),
                            backends: local,
                        },
                    );
                }
                if ports.is_empty() && vips.is_empty() {
                    continue;
                }
                services.insert(
                    service.id.clone(),
                    LbService {
                        id: service.id.clone(),
                        name: service.name.clone(),
                        ports,
                        vips,
                        backends,
                    },
                );
            } else if !vips.is_empty() {
                let id = format!("{}/{}", service.id, plan_id(&net.network.id));
                services.insert(
                    id.clone(),
                    LbService {
                        id,
                        name: service.name.clone(),
                        ports: Vec::new(),
                        vips,
                        backends,
                    },
                );
            }
        }
    }
    HostLb {
        underlay_ip: underlay.ip,
        underlay_if: underlay.interface.clone(),
        underlay_mtu: underlay.mtu,
        data_path_port: underlay.data_path_port,
        networks,
        services: services.into_values().collect(),
    }
}

/// The dataplane names a network by the first 12 characters of its ID.
fn plan_id(network_id: &str) -> String {
    network_id.chars().take(12).collect()
}

fn lb_port(port: &spec::PortConfig, local_only: bool) -> Option<LbPort> {
    Some(LbPort {
        protocol: match port.protocol {
            spec::Protocol::Tcp => Protocol::Tcp,
            spec::Protocol::Udp => Protocol::Udp,
        },
        // The managers assign every published port at create; None never reaches a host.
        published: port.published?,
        target: port.target,
        local_only,
    })
}

fn backends_of(seen: &[SeenEndpoint], service_id: &str, network_id: &str) -> Vec<LbBackend> {
    let mut backends: Vec<LbBackend> = seen
        .iter()
        .filter(|e| e.service_id == service_id && e.network_id == network_id)
        .filter(|e| e.healthy || e.draining)
        .map(|e| LbBackend {
            task_id: e.task_id.clone(),
            network_id: plan_id(network_id),
            ip: e.ip,
            mac: mac_of(e.ip),
            vtep: e.vtep,
            weight: 1,
            state: if e.draining {
                BackendState::Draining
            } else {
                BackendState::Active
            },
        })
        .collect();
    backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    backends.dedup_by(|a, b| a.task_id == b.task_id);
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetworkRecord, Subnet};
    use crate::rpc::messages::{NetworkAssignment, ServiceOnNetwork};
    use crate::service::spec::PortConfig;

    const HERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const THERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn underlay() -> Underlay {
        Underlay {
            ip: HERE,
            interface: "eth0".into(),
            mtu: 1500,
            data_path_port: 4789,
        }
    }

    fn network(id: &str, third: u8, services: Vec<ServiceOnNetwork>) -> NetworkAssignment {
        NetworkAssignment {
            network: NetworkRecord {
                id: id.into(),
                name: format!("net-{id}"),
                subnet: Subnet {
                    addr: Ipv4Addr::new(10, 0, third, 0),
                    prefix: 24,
                },
                gateway: Ipv4Addr::new(10, 0, third, 1),
                vni: 4096 + third as u32,
                mtu: None,
                attachable: false,
                labels: Default::default(),
                created_ms: 0,
            },
            mtu: 1450,
            services,
        }
    }

    fn service(ports: Vec<PortConfig>, vip: [u8; 4], ingress: bool) -> ServiceOnNetwork {
        ServiceOnNetwork {
            id: "svc".into(),
            name: "web".into(),
            vip: Some(Ipv4Addr::from(vip)),
            ports,
            ingress,
        }
    }

    fn port(published: u16, mode: PublishMode) -> PortConfig {
        PortConfig {
            published: Some(published),
            target: 80,
            protocol: spec::Protocol::Tcp,
            mode,
        }
    }

    fn seen(task: &str, network: &str, ip: [u8; 4], vtep: Ipv4Addr) -> SeenEndpoint {
        SeenEndpoint {
            network_id: network.into(),
            task_id: task.into(),
            node_id: 1,
            service_id: "svc".into(),
            service_name: "web".into(),
            task_name: format!("web.{task}"),
            slot: 1,
            ip: Ipv4Addr::from(ip),
            vtep,
            healthy: true,
            draining: false,
        }
    }

    fn assignments(networks: Vec<NetworkAssignment>) -> Assignments {
        Assignments {
            networks,
            ..Default::default()
        }
    }

    #[test]
    fn published_ports_balance_over_every_serving_task_of_the_ingress_network() {
        let a = assignments(vec![network(
            "n1",
            1,
            vec![service(
                vec![port(8080, PublishMode::Ingress)],
                [10, 0, 1, 2],
                true,
            )],
        )]);
        let mut starting = seen("t3", "n1", [10, 0, 1, 5], THERE);
        starting.healthy = false;
        let mut draining = seen("t4", "n1", [10, 0, 1, 6], THERE);
        draining.healthy = false;
        draining.draining = true;
        let view = vec![
            seen("t2", "n1", [10, 0, 1, 4], THERE),
            seen("t1", "n1", [10, 0, 1, 3], HERE),
            starting,
            draining,
        ];
        let lb = desired(&a, &view, &underlay());
        assert_eq!(lb.services.len(), 1);
        let s = &lb.services[0];
        assert_eq!(
            s.ports,
            vec![LbPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                local_only: false
            }]
        );
        assert_eq!(
            s.vips,
            vec![LbVip {
                network_id: "n1".into(),
                vip: Ipv4Addr::new(10, 0, 1, 2)
            }]
        );
        let ids: Vec<(&str, BackendState)> = s
            .backends
            .iter()
            .map(|b| (b.task_id.as_str(), b.state))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("t1", BackendState::Active),
                ("t2", BackendState::Active),
                ("t4", BackendState::Draining)
            ]
        );
        assert_eq!(s.backends[0].mac, mac_of(Ipv4Addr::new(10, 0, 1, 3)));
        assert_eq!(lb.networks.len(), 1);
        assert_eq!((lb.underlay_if.as_str(), lb.underlay_mtu), ("eth0", 1500));
    }

    #[test]
    fn host_mode_ports_use_local_tasks_and_only_where_one_runs() {
        let a = assignments(vec![network(
            "n1",
            1,
            vec![service(
                vec![port(9000, PublishMode::Host)],
                [10, 0, 1, 2],
                true,
            )],
        )]);
        let remote_only = vec![seen("t2", "n1", [10, 0, 1, 4], THERE)];
        let lb = desired(&a, &remote_only, &underlay());
        assert!(lb.services.iter().all(|s| s.ports.is_empty()), "{lb:?}");
        let both = vec![
            seen("t1", "n1", [10, 0, 1, 3], HERE),
            seen("t2", "n1", [10, 0, 1, 4], THERE),
        ];
        let lb = desired(&a, &both, &underlay());
        let host = lb
            .services
            .iter()
            .find(|s| s.id == "svc/host")
            .expect("host set");
        assert!(host
            .ports
            .iter()
            .all(|p| p.local_only && p.published == 9000));
        assert_eq!(host.backends.len(), 1);
        assert_eq!(host.backends[0].vtep, HERE);
    }

    #[test]
    fn vips_on_other_networks_balance_over_that_networks_tasks() {
        let a = assignments(vec![
            network(
                "n1",
                1,
                vec![service(
                    vec![port(8080, PublishMode::Ingress)],
                    [10, 0, 1, 2],
                    true,
                )],
            ),
            network(
                "n2",
                2,
                vec![service(
                    vec![port(8080, PublishMode::Ingress)],
                    [10, 0, 2, 2],
                    false,
                )],
            ),
        ]);
        let view = vec![
            seen("t1", "n1", [10, 0, 1, 3], HERE),
            seen("t1", "n2", [10, 0, 2, 3], HERE),
        ];
        let lb = desired(&a, &view, &underlay());
        let second = lb
            .services
            .iter()
            .find(|s| s.id == "svc/n2")
            .expect("n2 set");
        assert!(second.ports.is_empty());
        assert_eq!(second.vips[0].vip, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(second.backends[0].ip, Ipv4Addr::new(10, 0, 2, 3));
        let first = lb
            .services
            .iter()
            .find(|s| s.id == "svc")
            .expect("ingress set");
        assert_eq!(first.backends[0].ip, Ipv4Addr::new(10, 0, 1, 3));
    }

    #[test]
    fn services_without_ports_or_vips_are_left_out() {
        let mut dnsrr = service(vec![], [0, 0, 0, 0], true);
        dnsrr.vip = None;
        let a = assignments(vec![network("n1", 1, vec![dnsrr])]);
        assert!(
            desired(&a, &[seen("t1", "n1", [10, 0, 1, 3], HERE)], &underlay())
                .services
                .is_empty()
        );
    }
}
