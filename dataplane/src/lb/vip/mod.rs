//! Service VIPs between tasks (endpoint mode `vip`), balanced by BPF at TC on every local
//! task's veth.
//!
//! # Model
//! Each service has a VIP on each of its networks, from the network's subnet; DNS answers the
//! service's name with it. Two programs (`ebpf/vip.c`) sit on every local task's veth
//! `ve-<task>`, in the network's namespace, as tcx links:
//! - **ingress** (frames from the task): ARP requests for a VIP are answered in BPF with a fixed
//!   VIP MAC ([`VIP_MAC`]) and sent straight back into the task; TCP and UDP to a VIP (any
//!   port: a VIP forwards every port to the same port of a backend, like Docker's fwmark VIPs)
//!   find their flow in an LRU connection map or get a Maglev pick over the VIP's active
//!   backends, then are DNATed (address and MAC) to the backend, and the bridge forwards them
//!   by MAC: to a local veth, or through `vxlan0` to the backend's host. A reverse entry is
//!   recorded for the reply. ICMP echo to a VIP is answered by the VIP; TCP to a VIP without
//!   backends gets a RST (refused), UDP is dropped and counted. A task that picks itself is
//!   hairpinned: the flow comes back into it from the VIP.
//! - **egress** (frames to the task): a backend's reply matching a reverse entry gets its source
//!   (address and MAC) back to the VIP; ICMP errors about a VIP flow get the VIP back in the
//!   packet they quote, too.
//!
//! Draining backends leave the Maglev tables but stay in the backend map, so the flows they
//! have keep reaching them; a removed backend's flows find nothing and are picked anew. The
//! backend sees the client task's own address: nothing is SNATed.
//!
//! One loaded object serves every network of the host. A packet's network is named by a
//! marker socket the balancer keeps in each network namespace (UDP, 127.0.0.1:1023, `SO_MARK`
//! = the network's ID): the program looks it up, and a socket lookup at TC resolves in the
//! namespace of the packet's device. The ID prefixes every key, so networks with overlapping
//! subnets stay apart. (`bpf_get_netns_cookie` at TC names the namespace of the packet's
//! socket, or none, not of the device: ARP would find no network.)
//!
//! # Why TC on the veths, not socket-level BPF
//! A cgroup `connect4`/`sendmsg4` hook would translate the VIP once per connection, before the
//! first packet, but it attaches to a cgroup v2 subtree: the tasks of both runtimes live in v1
//! cgroups on these hosts, and in a lab every "host" shares one kernel and one root cgroup, so
//! one meshd's root-level hook would rewrite the other meshds' tasks. TC on each task's veth
//! is per host and per task by construction, needs no cgroup at all, and sees UDP packet by
//! packet (unconnected sockets included).
//!
//! # Use
//! [`VipBalancer::new`] loads the object once; [`VipBalancer::apply`] converges maps and
//! attachments to a host's desired state and its local task veths, idempotently;
//! [`VipBalancer::counters`] reads the per-reason counters; dropping the balancer detaches
//! everything.

mod attach;
pub mod maps;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::{Ebpf, EbpfLoader};

use crate::bpf::BpfError;
use crate::lb::{HostLb, LbCounter, LbError};
use crate::overlay::names;
use crate::overlay::netns::Netns;

pub use maps::{Reason, VIP_MAC};

use attach::{Attachment, Marker, ProgramIds, OBJECT};
use maps::{VipBackend, VipKey, VipService};
use plan::PlannedVip;

const SERVICES_MAP: &str = "VIP_SERVICES";
const RING_MAP: &str = "VIP_RING";
const BACKENDS_MAP: &str = "VIP_BACKENDS";
const COUNTERS_MAP: &str = "VIP_COUNTERS";

/// A local task's veth on one network: where the programs attach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipTask {
    /// The network: its namespace is `<overlay dir>/ns-<network_id>`.
    pub network_id: String,
    /// The task's veth in that namespace (`ve-...`, see `overlay::names::veth_name`).
    pub veth: String,
}

/// The VIP balancer of one host: the loaded programs, their maps and their attachments.
pub struct VipBalancer {
    // Declared first so they drop first: the links detach before the programs unload.
    attachments: BTreeMap<VipTask, Attachment>,
    overlay_dir: PathBuf,
    ids: ProgramIds,
    services_map: HashMap<MapData, VipKey, VipService>,
    ring_map: Array<MapData, u32>,
    backends_map: HashMap<MapData, u32, VipBackend>,
    counters: PerCpuArray<MapData, u64>,
    /// Each network with local tasks, and its ID in the program's keys (never reused).
    net_ids: BTreeMap<String, u32>,
    next_net_id: u32,
    /// Each such network's marker socket, in its namespace.
    markers: BTreeMap<String, Marker>,
    /// The `VIP_SERVICES` entries written, with their tables.
    services: BTreeMap<(String, Ipv4Addr), ProgrammedVip>,
    /// Ring indexes free for a new VIP, below `next_ring`.
    free_rings: BTreeSet<u32>,
    next_ring: u32,
    /// The `VIP_BACKENDS` entries written.
    backends: BTreeMap<BackendKey, ProgrammedBackend>,
    /// Backend IDs are never reused, so a flow pinned to a removed backend finds nothing.
    next_backend_id: u32,
    // Last: the object owns the programs the links above refer to.
    ebpf: Ebpf,
}

/// A VIP as written to the maps.
struct ProgrammedVip {
    /// Its key in `VIP_SERVICES`.
    key: VipKey,
    ring: u32,
    /// The ring's content, so a change writes only the slots that differ.
    table: Vec<u32>,
}

/// A backend's identity behind one VIP: a new address or MAC is a new backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BackendKey {
    network_id: String,
    vip: Ipv4Addr,
    task_id: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
}

struct ProgrammedBackend {
    id: u32,
    value: VipBackend,
}

impl VipBalancer {
    /// Loads `vip.o` (verifying both programs) for the overlay networks pinned in
    /// `overlay_dir` (the directory given to `overlay::Overlay::new`). Attaches nothing yet.
    pub fn new(overlay_dir: &Path) -> Result<VipBalancer, LbError> {
        let mut ebpf = EbpfLoader::new()
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/vip.o"
            )))
            .map_err(|source| BpfError::Load {
                object: OBJECT,
                source: Box::new(source),
            })?;
        let mut ids = ProgramIds {
            ingress: 0,
            egress: 0,
        };
        for (name, id) in [
            (attach::INGRESS, &mut ids.ingress),
            (attach::EGRESS, &mut ids.egress),
        ] {
            let failed = |operation, source| BpfError::Program {
                operation,
                program: name,
                interface: String::new(),
                source: Box::new(source),
            };
            let program = attach::classifier(&mut ebpf, name)?;
            program.load().map_err(|source| failed("loading", source))?;
            *id = program
                .info()
                .map_err(|source| failed("reading the ID of", source))?
                .id();
        }
        Ok(VipBalancer {
            attachments: BTreeMap::new(),
            overlay_dir: overlay_dir.to_path_buf(),
            ids,
            services_map: typed_map(&mut ebpf, SERVICES_MAP, HashMap::try_from)?,
            ring_map: typed_map(&mut ebpf, RING_MAP, Array::try_from)?,
            backends_map: typed_map(&mut ebpf, BACKENDS_MAP, HashMap::try_from)?,
            counters: typed_map(&mut ebpf, COUNTERS_MAP, PerCpuArray::try_from)?,
            net_ids: BTreeMap::new(),
            next_net_id: 1,
            markers: BTreeMap::new(),
            services: BTreeMap::new(),
            free_rings: BTreeSet::new(),
            next_ring: 0,
            backends: BTreeMap::new(),
            next_backend_id: 1,
            ebpf,
        })
    }

    /// Converges the maps to the VIPs and backends of `desired` on the networks of `tasks`,
    /// attaches both programs to every veth in `tasks` and detaches them from veths no longer
    /// listed. Idempotent. Every network is converged even when one fails; the first failure
    /// is then returned.
    pub fn apply(&mut self, desired: &HostLb, tasks: &[VipTask]) -> Result<(), LbError> {
        for task in tasks {
            if !names::valid_network_id(&task.network_id) || !names::valid_ifname(&task.veth) {
                return Err(LbError::InvalidState(format!(
                    "VIP task veth {:?} on network {:?}: not a valid interface or network ID",
                    task.veth, task.network_id
                )));
            }
        }
        let networks: BTreeSet<&str> = tasks.iter().map(|t| t.network_id.as_str()).collect();
        let planned = plan::plan(desired, &networks)?;

        for network in &networks {
            if !self.net_ids.contains_key(*network) {
                self.net_ids.insert(network.to_string(), self.next_net_id);
                self.next_net_id += 1;
            }
        }
        self.net_ids.retain(|id, _| networks.contains(id.as_str()));
        self.program_vips(&planned)?;

        let mut first_error = None;
        let mut wanted = BTreeSet::new();
        for network in &networks {
            let veths: Vec<&VipTask> = tasks.iter().filter(|t| t.network_id == *network).collect();
            wanted.extend(veths.iter().map(|t| (*t).clone()));
            if let Err(err) = self.converge_network(network, &veths) {
                first_error.get_or_insert(err);
            }
        }
        self.attachments.retain(|task, _| wanted.contains(task));
        self.markers
            .retain(|network, _| networks.contains(network.as_str()));
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The counters of every reason, summed over CPUs, named as `meshctl` prints them.
    pub fn counters(&self) -> Result<Vec<LbCounter>, LbError> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self
                    .counters
                    .get(&(reason as u32), 0)
                    .map_err(map_error("reading", COUNTERS_MAP))?;
                Ok(LbCounter {
                    name: reason.name().to_string(),
                    packets: per_cpu.iter().sum(),
                })
            })
            .collect()
    }

    /// The veths the programs are attached to now.
    pub fn attached(&self) -> Vec<VipTask> {
        self.attachments.keys().cloned().collect()
    }

    /// Writes backends, rings and VIPs for `planned`, then removes what it no longer lists:
    /// new entries exist before anything refers to them, old ones go after nothing does.
    fn program_vips(&mut self, planned: &[PlannedVip]) -> Result<(), LbError> {
        let mut wanted_backends = BTreeSet::new();
        let mut wanted_vips = BTreeSet::new();
        for vip in planned {
            let net = self.net_ids[&vip.network_id];
            let mut ids = Vec::with_capacity(vip.backends.len());
            for backend in &vip.backends {
                let key = BackendKey {
                    network_id: vip.network_id.clone(),
                    vip: vip.vip,
                    task_id: backend.task_id.clone(),
                    ip: backend.ip,
                    mac: backend.mac,
                };
                let value = backend.value();
                let id = match self.backends.get_mut(&key) {
                    Some(known) if known.value == value => known.id,
                    Some(known) => {
                        self.backends_map
                            .insert(known.id, value, 0)
                            .map_err(map_error("updating", BACKENDS_MAP))?;
                        known.value = value;
                        known.id
                    }
                    None => {
                        let id = self.next_backend_id;
                        self.backends_map
                            .insert(id, value, 0)
                            .map_err(map_error("adding to", BACKENDS_MAP))?;
                        self.next_backend_id += 1;
                        self.backends
                            .insert(key.clone(), ProgrammedBackend { id, value });
                        id
                    }
                };
                ids.push(id);
                wanted_backends.insert(key);
            }

            let table = plan::ring(&vip.backends, &ids);
            let key = (vip.network_id.clone(), vip.vip);
            wanted_vips.insert(key.clone());
            let programmed = match self.services.get_mut(&key) {
                Some(programmed) if programmed.key.net == net => programmed,
                _ => {
                    if let Some(old) = self.services.remove(&key) {
                        self.release(&old)?;
                    }
                    let ring = match self.free_rings.pop_first() {
                        Some(ring) => ring,
                        None => {
                            self.next_ring += 1;
                            self.next_ring - 1
                        }
                    };
                    self.services.entry(key.clone()).or_insert(ProgrammedVip {
                        key: VipKey::new(net, vip.vip),
                        ring,
                        // Unknown content: every slot is written.
                        table: Vec::new(),
                    })
                }
            };
            let base = programmed.ring * maps::RING_SIZE;
            for (slot, &id) in table.iter().enumerate() {
                if programmed.table.get(slot) != Some(&id) {
                    self.ring_map
                        .set(base + slot as u32, id, 0)
                        .map_err(map_error("writing", RING_MAP))?;
                }
            }
            let fresh = programmed.table.is_empty();
            programmed.table = table;
            if fresh {
                let value = VipService {
                    ring: programmed.ring,
                    flags: 0,
                };
                self.services_map
                    .insert(programmed.key, value, 0)
                    .map_err(map_error("adding to", SERVICES_MAP))?;
            }
        }

        let stale: Vec<(String, Ipv4Addr)> = self
            .services
            .keys()
            .filter(|k| !wanted_vips.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(old) = self.services.remove(&key) {
                self.release(&old)?;
            }
        }
        let stale: Vec<BackendKey> = self
            .backends
            .keys()
            .filter(|k| !wanted_backends.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(old) = self.backends.remove(&key) {
                remove_entry(self.backends_map.remove(&old.id), BACKENDS_MAP)?;
            }
        }
        Ok(())
    }

    /// Removes a VIP's entry and frees its ring (its slots are rewritten on reuse).
    fn release(&mut self, old: &ProgrammedVip) -> Result<(), LbError> {
        remove_entry(self.services_map.remove(&old.key), SERVICES_MAP)?;
        self.free_rings.insert(old.ring);
        Ok(())
    }

    /// Marks network `id`'s namespace (its marker socket) and makes sure both programs are
    /// attached to each of `veths` there. Every veth is tried; the first failure is returned.
    fn converge_network(&mut self, id: &str, veths: &[&VipTask]) -> Result<(), LbError> {
        let path = self.overlay_dir.join(names::netns_file(id));
        let namespace_error = |source: io::Error| LbError::Io {
            operation: format!("entering network {id}'s namespace {}", path.display()),
            source,
        };
        let ns = Netns::open_pinned(&path)
            .map_err(|err| namespace_error(io::Error::other(err.to_string())))?
            .ok_or_else(|| {
                namespace_error(io::Error::new(
                    io::ErrorKind::NotFound,
                    "not pinned; apply the overlay first",
                ))
            })?;
        let net = self.net_ids[id];
        let current = self.markers.get(id).map(|m| (m.cookie, m.net));
        let marker = ns
            .run(|| {
                let cookie = attach::netns_cookie()?;
                if current == Some((cookie, net)) {
                    return Ok(None);
                }
                attach::marker(net).map(Some)
            })
            .map_err(|source| LbError::Io {
                operation: format!(
                    "binding network {id}'s marker socket (UDP 127.0.0.1:{}) in {}",
                    maps::MARKER_PORT,
                    path.display()
                ),
                source,
            })?;
        if let Some(marker) = marker {
            // The old marker (a namespace since recreated) closes here.
            self.markers.insert(id.to_string(), marker);
        }

        let ids = self.ids;
        let ebpf = &mut self.ebpf;
        let attachments = &mut self.attachments;
        let results = ns
            .run(|| {
                let mut results = Vec::new();
                for task in veths {
                    if attachments.contains_key(*task) && attach::is_attached(&task.veth, ids) {
                        continue;
                    }
                    // Gone or recreated: drop (detach) the old links before attaching anew.
                    attachments.remove(*task);
                    results.push(((*task).clone(), attach::attach(ebpf, &task.veth)));
                }
                Ok(results)
            })
            .map_err(namespace_error)?;
        let mut first_error = None;
        for (task, result) in results {
            match result {
                Ok(attachment) => {
                    self.attachments.insert(task, attachment);
                }
                Err(err) => {
                    first_error.get_or_insert(LbError::from(err));
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for VipBalancer {
    fn drop(&mut self) {
        // Detach from every veth before the programs and maps go.
        self.attachments.clear();
    }
}

/// Takes map `name` out of the object and types it.
fn typed_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    typed: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, LbError> {
    let map = ebpf.take_map(name).ok_or(BpfError::Missing {
        object: OBJECT,
        kind: "map",
        name,
    })?;
    typed(map).map_err(map_error("typing", name))
}

fn map_error(operation: &'static str, map: &'static str) -> impl FnOnce(MapError) -> LbError {
    move |source| {
        LbError::Bpf(BpfError::Map {
            operation,
            map,
            source: Box::new(source),
        })
    }
}

/// A removal that found nothing to remove is fine.
fn remove_entry(result: Result<(), MapError>, map: &'static str) -> Result<(), LbError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(source) => Err(map_error("removing from", map)(source)),
    }
}
