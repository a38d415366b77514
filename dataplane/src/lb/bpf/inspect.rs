//! Looking inside a loaded balancer without sending anything: run `lb_ingress` on a packet in
//! memory ([`crate::bpf::test_run`]) and read back every map it keeps. For tests and fuzzing of
//! the program as loaded and programmed, against hostile input.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use aya::maps::{HashMap, MapData};
use aya::Pod;

use super::maps::{BackendValue, Config, LegValue, ServiceKey, ServiceValue, MAGLEV_SIZE};
use super::{map_error, missing, program_error, BpfBalancer, BpfHook, INGRESS_TC, INGRESS_XDP};
use crate::bpf::test_run::{self, TestRun};
use crate::lb::LbError;

/// Every map's contents but the counters and the Maglev tables: what hostile input must not change, the flows
/// (`LB_FLOWS`, `LB_REVNAT`) as raw bytes (key → value) since only the program writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub config: Option<Config>,
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub local: BTreeMap<u32, u32>,
    pub legs: BTreeMap<u32, LegValue>,
    /// `struct lb_flow_key` → `struct lb_flow`.
    pub flows: BTreeMap<[u8; 16], [u8; 8]>,
    /// `struct lb_revnat_key` → `struct lb_revnat`.
    pub revnat: BTreeMap<[u8; 16], [u8; 8]>,
}

fn dump<M, K, V>(map: &HashMap<M, K, V>, name: &'static str) -> Result<BTreeMap<K, V>, LbError>
where
    M: std::borrow::Borrow<MapData>,
    K: Pod + Ord,
    V: Pod,
{
    map.iter()
        .map(|entry| entry.map_err(map_error("reading", name)))
        .collect()
}

impl BpfBalancer {
    /// Runs the attached `lb_ingress` once on `frame` as if it arrived on the underlay, with
    /// the maps as they are (`BPF_PROG_TEST_RUN`; call it in the balancer's namespace). The
    /// program's map writes (flows, counters) are real; its redirects are only verdicts.
    pub fn test_run_ingress(&self, frame: &[u8]) -> Result<TestRun, LbError> {
        let name = match self.hook {
            BpfHook::Xdp => INGRESS_XDP,
            BpfHook::Tc => INGRESS_TC,
        };
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| missing("program", name))?;
        let fd = program
            .fd()
            .map_err(program_error("test-running", name, &self.underlay_if))?;
        let result = match self.hook {
            BpfHook::Xdp => test_run::run_xdp(fd.as_fd(), frame, self.underlay_ifindex),
            BpfHook::Tc => test_run::run_tc(fd.as_fd(), frame),
        };
        result.map_err(|source| LbError::Io {
            operation: format!("test-running {name} (BPF_PROG_TEST_RUN)"),
            source,
        })
    }

    /// The Maglev tables in use, by index, read from the kernel (apart from [`MapState`]: a
    /// table is thousands of lookups).
    pub fn maglev_tables(&self) -> Result<BTreeMap<u32, Vec<u32>>, LbError> {
        let mut tables = BTreeMap::new();
        for &index in self.written.tables.keys() {
            let table = (0..MAGLEV_SIZE)
                .map(|slot| self.maglev.get(&(index * MAGLEV_SIZE + slot), 0))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(map_error("reading", "LB_MAGLEV"))?;
            tables.insert(index, table);
        }
        Ok(tables)
    }

    /// Every map but the counters and the Maglev tables, read from the kernel.
    pub fn map_state(&self) -> Result<MapState, LbError> {
        let raw = |name: &'static str| -> Result<BTreeMap<[u8; 16], [u8; 8]>, LbError> {
            let map = self.ebpf.map(name).ok_or_else(|| missing("map", name))?;
            let map: HashMap<&MapData, [u8; 16], [u8; 8]> =
                HashMap::try_from(map).map_err(map_error("typing", name))?;
            dump(&map, name)
        };
        Ok(MapState {
            config: self.config.get(&0, 0).ok(),
            services: dump(&self.services, "LB_SERVICES")?,
            backends: dump(&self.backends, "LB_BACKENDS")?,
            local: dump(&self.local, "LB_LOCAL")?,
            legs: dump(&self.leg_map, "LB_LEGS")?,
            flows: raw("LB_FLOWS")?,
            revnat: raw("LB_REVNAT")?,
        })
    }
}
