//! The pure half of `apply`: what every map must hold for a [`HostLb`], as plain data, with the
//! stable numbering (backend ids, Maglev table indices) carried from one apply to the next.

use std::collections::{BTreeMap, BTreeSet};

use super::ids::BackendIds;
use super::maps::{
    ip_be, port_be, BackendValue, ServiceKey, ServiceValue, BACKEND_DRAINING, BACKEND_LOCAL,
    MAGLEV_SIZE, MAX_BACKENDS, MAX_PORTS, MAX_SERVICES, SERVICE_LOCAL_ONLY,
};
use crate::lb::maglev::{self, MaglevBackend};
use crate::lb::{BackendState, HostLb, LbBackend, LbError};
use crate::overlay::names;

/// The contents of every map the userspace side writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `LB_SERVICES`.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// `LB_MAGLEV`, by table index: `MAGLEV_SIZE` backend ids each (0 = none).
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// `LB_BACKENDS`.
    pub backends: BTreeMap<u32, BackendValue>,
    /// `LB_LOCAL`: task address (network order) → backend id, for local backends.
    pub local: BTreeMap<u32, u32>,
    /// The networks whose legs get `lb_reply`.
    pub networks: BTreeSet<String>,
}

/// Maglev table indices: one per service with published ports, stable while it has them.
#[derive(Debug, Default)]
pub struct TableIndices {
    by_service: BTreeMap<String, u32>,
}

impl TableIndices {
    /// The index of `service`, the lowest free one on first sight.
    fn index(&mut self, service: &str) -> Result<u32, LbError> {
        if let Some(&index) = self.by_service.get(service) {
            return Ok(index);
        }
        let used: BTreeSet<u32> = self.by_service.values().copied().collect();
        let index = (0..MAX_SERVICES)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                LbError::InvalidState(format!(
                    "more than {MAX_SERVICES} services publish ports; the BPF path holds at \
                     most {MAX_SERVICES} (use --lb-mode nftables, or publish fewer)"
                ))
            })?;
        self.by_service.insert(service.to_string(), index);
        Ok(index)
    }

    fn retain(&mut self, keep: &BTreeSet<&str>) {
        self.by_service.retain(|s, _| keep.contains(s.as_str()));
    }
}

/// Computes the maps for `desired`. `leg_ifindex` gives the index of a network's leg
/// (`mg-<id>`) in the host namespace, None when it does not exist. Nothing in `ids` or
/// `indices` changes when this fails.
pub fn plan(
    desired: &HostLb,
    ids: &mut BackendIds,
    indices: &mut TableIndices,
    leg_ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<Plan, LbError> {
    validate(desired)?;
    let mut plan = Plan {
        networks: desired.networks.iter().map(|n| n.id.clone()).collect(),
        ..Plan::default()
    };
    let published: Vec<_> = desired
        .services
        .iter()
        .filter(|s| !s.ports.is_empty())
        .collect();
    if published.len() > MAX_SERVICES as usize {
        return Err(LbError::InvalidState(format!(
            "{} services publish ports; the BPF path holds at most {MAX_SERVICES} (use \
             --lb-mode nftables, or publish fewer)",
            published.len()
        )));
    }
    let mut new_ids = ids.clone();
    let mut new_indices = TableIndices {
        by_service: indices.by_service.clone(),
    };
    let mut backend_tasks: BTreeMap<&str, &LbBackend> = BTreeMap::new();
    for service in &published {
        let index = new_indices.index(&service.id)?;
        for port in &service.ports {
            let key = ServiceKey {
                proto: port.protocol.number(),
                pad: 0,
                port: port_be(port.published),
            };
            let value = ServiceValue {
                index,
                target_port: port_be(port.target),
                flags: if port.local_only {
                    SERVICE_LOCAL_ONLY
                } else {
                    0
                },
            };
            if plan.services.insert(key, value).is_some() {
                return Err(LbError::InvalidState(format!(
                    "published port {}/{:?} is listed twice",
                    port.published, port.protocol
                )));
            }
        }
        let mut active: Vec<&LbBackend> = service
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active && b.weight > 0)
            .collect();
        active.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let keys: Vec<MaglevBackend<'_>> = active
            .iter()
            .map(|b| MaglevBackend {
                key: &b.task_id,
                weight: b.weight,
            })
            .collect();
        let slots = maglev::table(&keys, MAGLEV_SIZE);
        let table = if slots.is_empty() {
            vec![0; MAGLEV_SIZE as usize]
        } else {
            slots
                .iter()
                .map(|&i| new_ids.id(&active[i as usize].task_id))
                .collect()
        };
        plan.tables.insert(index, table);

        for backend in &service.backends {
            if let Some(seen) = backend_tasks.insert(&backend.task_id, backend) {
                if (seen.ip, seen.vtep, &seen.network_id)
                    != (backend.ip, backend.vtep, &backend.network_id)
                {
                    return Err(LbError::InvalidState(format!(
                        "task {} is listed twice with different addresses",
                        backend.task_id
                    )));
                }
            }
            let id = new_ids.id(&backend.task_id);
            let local = desired.is_local(backend);
            let mut value = BackendValue {
                ip: ip_be(backend.ip),
                vtep: ip_be(backend.vtep),
                flags: if backend.state == BackendState::Draining {
                    BACKEND_DRAINING
                } else {
                    0
                },
                ..BackendValue::default()
            };
            if local {
                if !plan.networks.contains(&backend.network_id) {
                    return Err(LbError::InvalidState(format!(
                        "local backend {} is on network {}, which this host's state does not \
                         list",
                        backend.task_id, backend.network_id
                    )));
                }
                let ifindex = leg_ifindex(&backend.network_id).ok_or_else(|| {
                    LbError::InvalidState(format!(
                        "network {}'s leg {} is missing: apply the overlay first",
                        backend.network_id,
                        names::leg_host(&backend.network_id)
                    ))
                })?;
                let leg = names::leg(&backend.network_id);
                value.flags |= BACKEND_LOCAL;
                value.leg_ifindex = ifindex;
                value.leg_host_mac = leg.host_mac;
                value.leg_ns_mac = leg.ns_mac;
                if let Some(other) = plan.local.insert(ip_be(backend.ip), id) {
                    if other != id {
                        return Err(LbError::InvalidState(format!(
                            "two local backends have address {}",
                            backend.ip
                        )));
                    }
                }
            }
            plan.backends.insert(id, value);
        }
    }
    if plan.services.len() > MAX_PORTS || plan.backends.len() > MAX_BACKENDS {
        return Err(LbError::InvalidState(format!(
            "{} published ports and {} backends; the BPF path holds at most {MAX_PORTS} and \
             {MAX_BACKENDS} (use --lb-mode nftables)",
            plan.services.len(),
            plan.backends.len()
        )));
    }
    let tasks: BTreeSet<&str> = backend_tasks.keys().copied().collect();
    new_ids.retain(&tasks);
    let services: BTreeSet<&str> = published.iter().map(|s| s.id.as_str()).collect();
    new_indices.retain(&services);
    *ids = new_ids;
    *indices = new_indices;
    Ok(plan)
}

fn validate(desired: &HostLb) -> Result<(), LbError> {
    let invalid = |msg: String| Err(LbError::InvalidState(msg));
    if desired.data_path_port == 0 {
        return invalid("data path port 0".into());
    }
    if desired.underlay_mtu < 68 + 50 {
        return invalid(format!(
            "underlay MTU {} is too small",
            desired.underlay_mtu
        ));
    }
    for network in &desired.networks {
        if !names::valid_network_id(&network.id) {
            return invalid(format!("network ID {:?}", network.id));
        }
    }
    for service in &desired.services {
        for port in &service.ports {
            if port.published == 0 || port.target == 0 {
                return invalid(format!("service {}: port 0", service.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lb::{LbNetwork, LbPort, LbService, Protocol};

    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn backend(task: &str, last: u8, host: u8, state: BackendState) -> LbBackend {
        LbBackend {
            task_id: task.into(),
            network_id: "net1".into(),
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0x42, 10, 0, 0, last],
            vtep: Ipv4Addr::new(198, 18, 0, host),
            weight: 1,
            state,
        }
    }

    fn host(backends: Vec<LbBackend>) -> HostLb {
        HostLb {
            underlay_ip: HOST,
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            data_path_port: 4789,
            networks: vec![LbNetwork {
                id: "net1".into(),
                vni: 4097,
                subnet: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 24,
                mtu: 1450,
            }],
            services: vec![LbService {
                id: "svc1".into(),
                name: "web".into(),
                ports: vec![LbPort {
                    protocol: Protocol::Tcp,
                    published: 8080,
                    target: 80,
                    local_only: false,
                }],
                vips: vec![],
                backends,
            }],
        }
    }

    fn legs(id: &str) -> Option<u32> {
        (id == "net1").then_some(42)
    }

    #[test]
    fn a_service_becomes_ports_a_table_and_backends() {
        let (mut ids, mut indices) = (BackendIds::default(), TableIndices::default());
        let desired = host(vec![
            backend("a", 2, 1, BackendState::Active),
            backend("b", 3, 2, BackendState::Active),
            backend("c", 4, 2, BackendState::Draining),
        ]);
        let plan = plan(&desired, &mut ids, &mut indices, &legs).unwrap();
        let key = ServiceKey {
            proto: 6,
            pad: 0,
            port: port_be(8080),
        };
        assert_eq!(plan.services[&key].index, 0);
        assert_eq!(plan.services[&key].target_port, port_be(80));
        let (a, b, c) = (ids.id("a"), ids.id("b"), ids.id("c"));
        let table = &plan.tables[&0];
        assert_eq!(table.len(), MAGLEV_SIZE as usize);
        assert!(
            table.iter().all(|&id| id == a || id == b),
            "draining c is out"
        );
        assert!(table.contains(&a) && table.contains(&b));
        assert_eq!(plan.backends[&a].flags, BACKEND_LOCAL);
        assert_eq!(plan.backends[&a].leg_ifindex, 42);
        assert_eq!(plan.backends[&a].leg_ns_mac, names::leg("net1").ns_mac);
        assert_eq!(plan.backends[&b].flags, 0);
        assert_eq!(plan.backends[&c].flags, BACKEND_DRAINING);
        assert_eq!(plan.local.len(), 1);
        assert_eq!(plan.local[&ip_be(Ipv4Addr::new(10, 0, 0, 2))], a);
    }

    #[test]
    fn planning_twice_gives_the_same_maps() {
        let (mut ids, mut indices) = (BackendIds::default(), TableIndices::default());
        let desired = host(vec![
            backend("a", 2, 1, BackendState::Active),
            backend("b", 3, 2, BackendState::Active),
        ]);
        let first = plan(&desired, &mut ids, &mut indices, &legs).unwrap();
        let second = plan(&desired, &mut ids, &mut indices, &legs).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn an_empty_service_gets_an_empty_table() {
        let (mut ids, mut indices) = (BackendIds::default(), TableIndices::default());
        let plan = plan(&host(vec![]), &mut ids, &mut indices, &legs).unwrap();
        assert!(plan.tables[&0].iter().all(|&id| id == 0));
    }

    #[test]
    fn errors_name_the_fix_and_change_nothing() {
        let (mut ids, mut indices) = (BackendIds::default(), TableIndices::default());
        let err = plan(
            &host(vec![backend("a", 2, 1, BackendState::Active)]),
            &mut ids,
            &mut indices,
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("apply the overlay first"), "{err}");
        assert!(indices.by_service.is_empty());
        let mut twice = host(vec![]);
        let again = twice.services[0].clone();
        twice.services.push(LbService {
            id: "svc2".into(),
            ..again
        });
        let err = plan(&twice, &mut ids, &mut indices, &legs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        let mut many = host(vec![]);
        many.services = (0..=MAX_SERVICES)
            .map(|i| LbService {
                id: format!("s{i}"),
                ports: vec![LbPort {
                    protocol: Protocol::Udp,
                    published: 1000 + i as u16,
                    target: 53,
                    local_only: false,
                }],
                ..many.services[0].clone()
            })
            .collect();
        let err = plan(&many, &mut ids, &mut indices, &legs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nftables"), "{err}");
    }

    #[test]
    fn removed_services_free_their_table_and_keep_others() {
        let (mut ids, mut indices) = (BackendIds::default(), TableIndices::default());
        let mut two = host(vec![]);
        let mut second = two.services[0].clone();
        second.id = "svc2".into();
        second.ports[0].published = 9090;
        two.services.push(second.clone());
        plan(&two, &mut ids, &mut indices, &legs).unwrap();
        assert_eq!(indices.by_service["svc2"], 1);
        let mut only_second = host(vec![]);
        only_second.services = vec![second];
        let p = plan(&only_second, &mut ids, &mut indices, &legs).unwrap();
        assert_eq!(p.tables.keys().copied().collect::<Vec<_>>(), [1]);
    }
}
