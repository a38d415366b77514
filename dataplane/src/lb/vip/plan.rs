//! What the VIP maps must hold, from a host's desired balancing state: pure, no kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::maps::{self, VipBackend};
use crate::lb::maglev::{self, MaglevBackend};
use crate::lb::{BackendState, HostLb, LbError};

/// One VIP to program: on a network with local task veths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedVip {
    /// The network the VIP lives on.
    pub network_id: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The service's name, for messages.
    pub service: String,
    /// Its backends on that network, sorted by task ID.
    pub backends: Vec<PlannedBackend>,
}

/// A backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBackend {
    /// The task's ID: its identity in the Maglev table.
    pub task_id: String,
    /// Its address on the VIP's network.
    pub ip: Ipv4Addr,
    /// Its MAC there.
    pub mac: [u8; 6],
    /// Relative weight.
    pub weight: u16,
    /// Whether it takes new flows.
    pub state: BackendState,
}

impl PlannedBackend {
    /// The map value of this backend.
    pub fn value(&self) -> VipBackend {
        VipBackend {
            ip: self.ip.octets(),
            mac: self.mac,
            state: match self.state {
                BackendState::Active => maps::BACKEND_ACTIVE,
                BackendState::Draining => maps::BACKEND_DRAINING,
            },
            pad: 0,
        }
    }
}

/// The VIPs of `desired` on the networks in `networks` (those with local task veths: nobody
/// else on this host can send to a VIP), each with its backends on the same network. Fails on
/// a VIP claimed twice on one network, a task listed twice behind one VIP, or more VIPs than
/// the program holds.
pub fn plan(desired: &HostLb, networks: &BTreeSet<&str>) -> Result<Vec<PlannedVip>, LbError> {
    let mut vips: BTreeMap<(&str, Ipv4Addr), PlannedVip> = BTreeMap::new();
    for service in &desired.services {
        for vip in &service.vips {
            if !networks.contains(vip.network_id.as_str()) {
                continue;
            }
            if vip.vip.is_unspecified() || vip.vip.is_broadcast() {
                return Err(LbError::InvalidState(format!(
                    "service {}: {} cannot be a VIP",
                    service.name, vip.vip
                )));
            }
            let mut backends: Vec<PlannedBackend> = service
                .backends
                .iter()
                .filter(|b| b.network_id == vip.network_id)
                .map(|b| PlannedBackend {
                    task_id: b.task_id.clone(),
                    ip: b.ip,
                    mac: b.mac,
                    weight: b.weight,
                    state: b.state,
                })
                .collect();
            backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            if let Some(pair) = backends.windows(2).find(|w| w[0].task_id == w[1].task_id) {
                return Err(LbError::InvalidState(format!(
                    "service {}: task {} is listed twice on network {}",
                    service.name, pair[0].task_id, vip.network_id
                )));
            }
            let planned = PlannedVip {
                network_id: vip.network_id.clone(),
                vip: vip.vip,
                service: service.name.clone(),
                backends,
            };
            if let Some(other) = vips.insert((vip.network_id.as_str(), vip.vip), planned) {
                return Err(LbError::InvalidState(format!(
                    "VIP {} on network {} belongs to both {} and {}",
                    vip.vip, vip.network_id, other.service, service.name
                )));
            }
        }
    }
    if vips.len() > maps::MAX_SERVICES as usize {
        return Err(LbError::InvalidState(format!(
            "{} VIPs on this host's networks; the VIP balancer holds {}",
            vips.len(),
            maps::MAX_SERVICES
        )));
    }
    Ok(vips.into_values().collect())
}

/// A VIP's Maglev table of `maps::RING_SIZE` slots, each the ID (from `ids`, parallel to
/// `backends`) of an active backend; all zeroes (no backend) when none is active.
pub fn ring(backends: &[PlannedBackend], ids: &[u32]) -> Vec<u32> {
    debug_assert_eq!(backends.len(), ids.len());
    let active: Vec<(MaglevBackend<'_>, u32)> = backends
        .iter()
        .zip(ids)
        .filter(|(b, _)| b.state == BackendState::Active)
        .map(|(b, &id)| {
            (
                MaglevBackend {
                    key: &b.task_id,
                    weight: b.weight,
                },
                id,
            )
        })
        .collect();
    let keys: Vec<MaglevBackend<'_>> = active.iter().map(|(b, _)| *b).collect();
    let table = maglev::table(&keys, maps::RING_SIZE);
    if table.is_empty() {
        return vec![0; maps::RING_SIZE as usize];
    }
    table.iter().map(|&i| active[i as usize].1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{LbBackend, LbService, LbVip};

    fn backend(task: &str, net: &str, n: u8, state: BackendState) -> LbBackend {
        LbBackend {
            task_id: task.into(),
            network_id: net.into(),
            ip: Ipv4Addr::new(10, 0, 0, n),
            mac: [2, 0, 0, 0, 0, n],
            vtep: Ipv4Addr::new(198, 18, 0, 1),
            weight: 1,
            state,
        }
    }

    fn service(name: &str, vips: &[(&str, Ipv4Addr)], backends: Vec<LbBackend>) -> LbService {
        LbService {
            id: format!("id-{name}"),
            name: name.into(),
            ports: Vec::new(),
            vips: vips
                .iter()
                .map(|(net, vip)| LbVip {
                    network_id: (*net).into(),
                    vip: *vip,
                })
                .collect(),
            backends,
        }
    }

    fn host(services: Vec<LbService>) -> HostLb {
        HostLb {
            underlay_ip: Ipv4Addr::new(198, 18, 0, 1),
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            data_path_port: 4789,
            networks: Vec::new(),
            services,
        }
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    #[test]
    fn vips_take_their_networks_backends_sorted_by_task() {
        let web = service(
            "web",
            &[("a", VIP), ("b", Ipv4Addr::new(10, 1, 0, 100))],
            vec![
                backend("t2", "a", 2, BackendState::Active),
                backend("t1", "a", 1, BackendState::Draining),
                backend("t3", "b", 3, BackendState::Active),
            ],
        );
        let nets = BTreeSet::from(["a", "b"]);
        let plan = plan(&host(vec![web]), &nets).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].network_id, "a");
        let tasks: Vec<&str> = plan[0]
            .backends
            .iter()
            .map(|b| b.task_id.as_str())
            .collect();
        assert_eq!(tasks, ["t1", "t2"]);
        assert_eq!(plan[1].backends.len(), 1);
        assert_eq!(plan[1].backends[0].task_id, "t3");
    }

    #[test]
    fn vips_on_networks_without_local_tasks_are_left_out() {
        let web = service("web", &[("a", VIP)], Vec::new());
        assert!(plan(&host(vec![web]), &BTreeSet::from(["z"]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_vip_claimed_twice_is_refused() {
        let a = service("a", &[("n", VIP)], Vec::new());
        let b = service("b", &[("n", VIP)], Vec::new());
        let err = plan(&host(vec![a, b]), &BTreeSet::from(["n"])).unwrap_err();
        assert!(
            matches!(err, LbError::InvalidState(ref m) if m.contains("both")),
            "{err}"
        );
    }

    #[test]
    fn a_task_twice_behind_one_vip_is_refused() {
        let web = service(
            "web",
            &[("n", VIP)],
            vec![
                backend("t1", "n", 1, BackendState::Active),
                backend("t1", "n", 2, BackendState::Active),
            ],
        );
        let err = plan(&host(vec![web]), &BTreeSet::from(["n"])).unwrap_err();
        assert!(
            matches!(err, LbError::InvalidState(ref m) if m.contains("twice")),
            "{err}"
        );
    }

    #[test]
    fn unspecified_and_broadcast_vips_are_refused() {
        for bad in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST] {
            let web = service("web", &[("n", bad)], Vec::new());
            assert!(plan(&host(vec![web]), &BTreeSet::from(["n"])).is_err());
        }
    }

    fn planned(task: &str, state: BackendState) -> PlannedBackend {
        PlannedBackend {
            task_id: task.into(),
            ip: Ipv4Addr::new(10, 0, 0, 9),
            mac: [0; 6],
            weight: 1,
            state,
        }
    }

    #[test]
    fn rings_hold_only_active_backends_ids() {
        let backends = vec![
            planned("a", BackendState::Active),
            planned("b", BackendState::Draining),
            planned("c", BackendState::Active),
        ];
        let ring = ring(&backends, &[11, 12, 13]);
        assert_eq!(ring.len(), maps::RING_SIZE as usize);
        assert!(ring.iter().all(|&id| id == 11 || id == 13));
        let elevens = ring.iter().filter(|&&id| id == 11).count();
        assert!(elevens.abs_diff(ring.len() / 2) <= 1, "{elevens}");
    }

    #[test]
    fn without_active_backends_every_slot_is_empty() {
        assert!(ring(&[], &[]).iter().all(|&id| id == 0));
        let draining = vec![planned("a", BackendState::Draining)];
        let ring = ring(&draining, &[5]);
        assert_eq!(ring.len(), maps::RING_SIZE as usize);
        assert!(ring.iter().all(|&id| id == 0));
    }

    #[test]
    fn draining_one_backend_keeps_the_others_slots() {
        let all = vec![
            planned("a", BackendState::Active),
            planned("b", BackendState::Active),
            planned("c", BackendState::Active),
        ];
        let before = ring(&all, &[1, 2, 3]);
        let mut drained = all.clone();
        drained[1].state = BackendState::Draining;
        let after = ring(&drained, &[1, 2, 3]);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 2 && b != a)
            .count();
        assert!(moved <= maps::RING_SIZE as usize / 3, "{moved}");
        assert!(after.iter().all(|&id| id != 2));
    }

    #[test]
    fn backend_values_carry_state_and_network_order_address() {
        let b = PlannedBackend {
            task_id: "t".into(),
            ip: Ipv4Addr::new(10, 0, 0, 7),
            mac: [1, 2, 3, 4, 5, 6],
            weight: 1,
            state: BackendState::Draining,
        };
        assert_eq!(
            b.value(),
            VipBackend {
                ip: [10, 0, 0, 7],
                mac: [1, 2, 3, 4, 5, 6],
                state: maps::BACKEND_DRAINING,
                pad: 0,
            }
        );
    }
}
