//! Allocation as plain functions of the store: a subnet from the default pool that overlaps no
//! other network, a VNI, and each task's address. An address is held only by a task that has
//! not ended, so nothing leaks: a finished task kept for history holds none.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{Attachment, NetworkRecord, NetworkSpec, Subnet};
use crate::service::{TaskRecord, TaskState};
use crate::store::{ClusterState, NodeStatus};

/// The first VNI Mesh hands out (Swarm starts at 4097 too, above VLAN IDs).
pub const FIRST_VNI: u32 = 4097;
/// The largest VNI a network gets: the ones above are reserved (the routing mesh's range, then
/// the diagnostics' probe VNI).
pub const MAX_VNI: u32 = dataplane::lb::MESH_VNI_BASE - 1;

/// What `network create` gets beyond the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The subnet.
    pub subnet: Subnet,
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// The VNI.
    pub vni: u32,
}

/// Allocates a subnet, gateway and VNI for a new network, or says why not and what to do.
pub fn allocate_network(state: &ClusterState, spec: &NetworkSpec) -> Result<Allocated, String> {
    let taken: Vec<(Subnet, &str)> = state
        .networks
        .values()
        .map(|n| (n.subnet, n.name.as_str()))
        .collect();
    let subnet = match &spec.subnet {
        Some(text) => {
            let subnet = Subnet::parse(text).map_err(|e| format!("--subnet {e}"))?;
            if subnet.prefix > 29 {
                return Err(format!(
                    "--subnet {subnet} is too small; give a /29 or larger"
                ));
            }
            if let Some((other, name)) = taken.iter().find(|(s, _)| s.overlaps(subnet)) {
                return Err(format!(
                    "--subnet {subnet} overlaps network {name} ({other}); choose another subnet"
                ));
            }
            subnet
        }
        None => {
            let cluster = state
                .cluster
                .as_ref()
                .ok_or("the cluster is not initialized")?;
            let pool = Subnet::parse(&cluster.default_addr_pool)?;
            next_free_subnet(pool, cluster.default_addr_pool_mask_length, &taken).ok_or_else(|| {
                format!(
                    "the default address pool {pool} has no free /{} left; remove a network or give --subnet",
                    cluster.default_addr_pool_mask_length
                )
            })?
        }
    };
    let gateway = match spec.gateway {
        Some(gateway) => {
            if !subnet.contains(gateway)
                || gateway == subnet.network()
                || gateway == subnet.broadcast()
            {
                return Err(format!(
                    "--gateway {gateway} is not a host address of {subnet}"
                ));
            }
            gateway
        }
        None => subnet
            .hosts()
            .next()
            .ok_or("the subnet has no host addresses")?,
    };
    let used: BTreeSet<u32> = state.networks.values().map(|n| n.vni).collect();
    let vni = (FIRST_VNI..=MAX_VNI)
        .find(|v| !used.contains(v))
        .ok_or("every VXLAN network identifier is in use")?;
    Ok(Allocated {
        subnet,
        gateway,
        vni,
    })
}

/// The first subnet of length `len` in `pool` that overlaps none of `taken`.
fn next_free_subnet(pool: Subnet, len: u8, taken: &[(Subnet, &str)]) -> Option<Subnet> {
    if len < pool.prefix || len > 32 {
        return None;
    }
    let step = 1u64 << (32 - u32::from(len));
    let start = u64::from(u32::from(pool.network()));
    let end = u64::from(u32::from(pool.broadcast()));
    let mut at = start;
    while at <= end {
        let candidate = Subnet {
            addr: Ipv4Addr::from(at as u32),
            prefix: len,
        };
        match taken.iter().find(|(s, _)| s.overlaps(candidate)) {
            None => return Some(candidate),
            // Skip past the overlapping network (it may be larger than one step).
            Some((other, _)) => {
                let past = u64::from(u32::from(other.broadcast())) + 1;
                at = (at + step).max(past.div_ceil(step) * step);
            }
        }
    }
    None
}

/// Whether `task`'s addresses are still taken: it has not ended, or it was orphaned on a node
/// that is still Down. Cut off from the managers (a partition, meshd down), such a task may
/// still run: its address given to a replacement would be on two hosts once the node returns,
/// and every host's overlay refuses a plan with an address twice until one of them stops
/// (which, draining, takes seconds). A node removed from the cluster frees them.
pub fn holds_addresses(state: &ClusterState, task: &TaskRecord) -> bool {
    !task.state.is_terminal()
        || task.state == TaskState::Orphaned
            && task
                .node_id
                .and_then(|id| state.nodes.get(&id))
                .is_some_and(|node| node.status == NodeStatus::Down)
}

/// Addresses on `network` held by tasks (see [`holds_addresses`]) and by service VIPs.
pub fn addresses_in_use(state: &ClusterState, network_id: &str) -> BTreeSet<Ipv4Addr> {
    let tasks = state
        .tasks
        .values()
        .filter(|t| holds_addresses(state, t))
        .flat_map(|t| &t.attachments);
    let vips = state.services.values().flat_map(|s| &s.vips);
    tasks
        .chain(vips)
        .filter(|a| a.network_id == network_id)
        .map(|a| a.ip)
        .collect()
}

/// One VIP on each of the service's networks (none in dnsrr mode), reusing those it holds.
pub fn allocate_vips(
    state: &ClusterState,
    service: &crate::service::ServiceRecord,
) -> Result<Vec<Attachment>, String> {
    if service.spec.endpoint_mode == crate::service::spec::EndpointMode::Dnsrr {
        return Ok(Vec::new());
    }
    let mut vips = Vec::new();
    for name in &service.spec.networks {
        let network = state
            .network_named(name)
            .ok_or_else(|| format!("--network {name}: no such network"))?;
        if let Some(held) = service.vips.iter().find(|v| v.network_id == network.id) {
            vips.push(held.clone());
            continue;
        }
        let ip = free_address(network, &addresses_in_use(state, &network.id))?;
        vips.push(Attachment {
            network_id: network.id.clone(),
            ip,
        });
    }
    Ok(vips)
}

/// The lowest free host address of `network` (never the gateway), given the addresses in use.
pub fn free_address(
    network: &NetworkRecord,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, String> {
    network
        .subnet
        .hosts()
        .find(|ip| *ip != network.gateway && !used.contains(ip))
        .ok_or_else(|| {
            format!(
                "network {}: no free address in {}; scale down a service on it, or create a network with a larger --subnet",
                network.name, network.subnet
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Attachment;
    use crate::service::DesiredState;
    use crate::store::ClusterInfo;

    fn state() -> ClusterState {
        ClusterState {
            cluster: Some(ClusterInfo {
                id: "c".into(),
                ca_cert_pem: String::new(),
                ca_key_pem: String::new(),
                worker_secret: String::new(),
                manager_secret: String::new(),
                data_path_port: 4789,
                default_addr_pool: "10.0.0.0/16".into(),
                default_addr_pool_mask_length: 24,
                created_unix: 0,
                gossip_keys: Vec::new(),
                cert_expiry_secs: 0,
            }),
            ..Default::default()
        }
    }

    fn add(
        state: &mut ClusterState,
        name: &str,
        spec: NetworkSpec,
    ) -> Result<NetworkRecord, String> {
        let allocated = allocate_network(state, &spec)?;
        let record = NetworkRecord {
            id: format!("id-{name}"),
            name: name.into(),
            subnet: allocated.subnet,
            gateway: allocated.gateway,
            vni: allocated.vni,
            mtu: None,
            attachable: false,
            labels: Default::default(),
            created_ms: 0,
        };
        state.networks.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    #[test]
    fn pool_subnets_never_overlap_and_are_reused_after_removal() {
        let mut s = state();
        let a = add(&mut s, "a", NetworkSpec::default()).unwrap();
        let b = add(&mut s, "b", NetworkSpec::default()).unwrap();
        assert_eq!(a.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(b.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(
            (a.gateway, a.vni, b.vni),
            (Ipv4Addr::new(10, 0, 0, 1), 4097, 4098)
        );
        // A user subnet in the middle of the pool is skipped over.
        let wide = NetworkSpec {
            subnet: Some("10.0.4.0/22".into()),
            ..Default::default()
        };
        add(&mut s, "wide", wide).unwrap();
        s.networks.remove("id-a");
        let c = add(&mut s, "c", NetworkSpec::default()).unwrap();
        assert_eq!(
            c.subnet.to_string(),
            "10.0.0.0/24",
            "a's subnet is free again"
        );
        assert_eq!(c.vni, 4097, "a's VNI is free again");
        let d = add(&mut s, "d", NetworkSpec::default()).unwrap();
        assert_eq!(d.subnet.to_string(), "10.0.2.0/24");
        add(&mut s, "e", NetworkSpec::default()).unwrap();
        let f = add(&mut s, "f", NetworkSpec::default()).unwrap();
        assert_eq!(f.subnet.to_string(), "10.0.8.0/24", "skips 10.0.4.0/22");
    }

    #[test]
    fn bad_subnets_and_gateways_are_refused_with_the_fix() {
        let mut s = state();
        add(
            &mut s,
            "a",
            NetworkSpec {
                subnet: Some("10.9.0.0/16".into()),
                ..Default::default()
            },
        )
        .unwrap();
        for (spec, needle) in [
            (
                NetworkSpec {
                    subnet: Some("10.9.3.0/24".into()),
                    ..Default::default()
                },
                "overlaps network a",
            ),
            (
                NetworkSpec {
                    subnet: Some("10.8.0.1/24".into()),
                    ..Default::default()
                },
                "host bits",
            ),
            (
                NetworkSpec {
                    subnet: Some("10.8.0.0/30".into()),
                    ..Default::default()
                },
                "too small",
            ),
            (
                NetworkSpec {
                    subnet: Some("10.8.0.0/24".into()),
                    gateway: Some(Ipv4Addr::new(10, 8, 1, 1)),
                    ..Default::default()
                },
                "not a host address",
            ),
        ] {
            let err = allocate_network(&s, &spec).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn an_exhausted_pool_says_so() {
        let mut s = state();
        s.cluster.as_mut().unwrap().default_addr_pool = "10.0.0.0/23".into();
        add(&mut s, "a", NetworkSpec::default()).unwrap();
        add(&mut s, "b", NetworkSpec::default()).unwrap();
        let err = add(&mut s, "c", NetworkSpec::default()).unwrap_err();
        assert!(err.contains("no free /24"), "{err}");
    }

    #[test]
    fn only_live_tasks_hold_addresses() {
        let mut s = state();
        let net = add(
            &mut s,
            "a",
            NetworkSpec {
                subnet: Some("10.1.0.0/29".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let task = |id: &str, ip: [u8; 4], state: TaskState| TaskRecord {
            id: id.into(),
            service_id: "s".into(),
            service_version: 1,
            slot: 1,
            node_id: Some(1),
            desired: DesiredState::Running,
            state,
            error: None,
            exit: None,
            created_ms: 0,
            state_ms: 0,
            attempt: 0,
            attachments: vec![Attachment {
                network_id: net.id.clone(),
                ip: Ipv4Addr::from(ip),
            }],
            health: None,
        };
        s.tasks
            .insert("t1".into(), task("t1", [10, 1, 0, 2], TaskState::Running));
        s.tasks
            .insert("t2".into(), task("t2", [10, 1, 0, 3], TaskState::Failed));
        let used = addresses_in_use(&s, &net.id);
        assert_eq!(used, BTreeSet::from([Ipv4Addr::new(10, 1, 0, 2)]));
        assert_eq!(
            free_address(&net, &used).unwrap(),
            Ipv4Addr::new(10, 1, 0, 3)
        );
        // A /29 has 6 host addresses; the gateway takes one.
        let full: BTreeSet<Ipv4Addr> = net.subnet.hosts().collect();
        let err = free_address(&net, &full).unwrap_err();
        assert!(err.contains("no free address in 10.1.0.0/29"), "{err}");
    }

    #[test]
    fn a_task_orphaned_on_a_down_node_keeps_its_address_until_the_node_returns_or_goes() {
        use crate::store::{NodeDescription, NodeRecord};
        let mut s = state();
        let net = add(&mut s, "a", NetworkSpec::default()).unwrap();
        s.nodes.insert(
            1,
            NodeRecord {
                id: 1,
                name: "w1".into(),
                addr: "198.18.0.2:2377".into(),
                role: crate::store::Role::Worker,
                availability: crate::store::Availability::Active,
                labels: Default::default(),
                status: NodeStatus::Down,
                version: "0.1.0".into(),
                description: NodeDescription::default(),
            },
        );
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        s.tasks.insert(
            "t1".into(),
            TaskRecord {
                id: "t1".into(),
                service_id: "s".into(),
                service_version: 1,
                slot: 1,
                node_id: Some(1),
                desired: DesiredState::Shutdown,
                state: TaskState::Orphaned,
                error: None,
                exit: None,
                created_ms: 0,
                state_ms: 0,
                attempt: 0,
                attachments: vec![Attachment {
                    network_id: net.id.clone(),
                    ip,
                }],
                health: None,
            },
        );
        assert!(addresses_in_use(&s, &net.id).contains(&ip), "node down");
        s.nodes.get_mut(&1).unwrap().status = NodeStatus::Ready;
        assert!(!addresses_in_use(&s, &net.id).contains(&ip), "node back");
        s.nodes.get_mut(&1).unwrap().status = NodeStatus::Down;
        s.nodes.remove(&1);
        assert!(!addresses_in_use(&s, &net.id).contains(&ip), "node removed");
    }

    #[test]
    fn vip_services_hold_one_address_per_network_and_dnsrr_none() {
        use crate::service::spec::EndpointMode;
        use crate::service::ServiceRecord;
        let mut s = state();
        let net = add(
            &mut s,
            "a",
            NetworkSpec {
                subnet: Some("10.1.0.0/29".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut service = ServiceRecord::new(
            "s1".into(),
            crate::service::spec::ServiceSpec {
                networks: vec!["a".into()],
                ..crate::service::spec::tests::spec("web")
            },
            0,
        );
        let vips = allocate_vips(&s, &service).unwrap();
        assert_eq!(vips.len(), 1);
        assert_eq!(vips[0].ip, Ipv4Addr::new(10, 1, 0, 2));
        // Held VIPs are kept, and count as used for everyone else.
        service.vips = vips.clone();
        assert_eq!(allocate_vips(&s, &service).unwrap(), vips);
        s.services.insert("s1".into(), service.clone());
        assert!(addresses_in_use(&s, &net.id).contains(&Ipv4Addr::new(10, 1, 0, 2)));
        service.spec.endpoint_mode = EndpointMode::Dnsrr;
        assert!(allocate_vips(&s, &service).unwrap().is_empty());
    }
}
