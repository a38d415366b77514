//! The ingress routing mesh in BPF (`ebpf/lb.c`): its loader and map writer.
//!
//! # Model
//! One object holds every program. `lb_ingress` sits on the underlay interface, at TC (tcx
//! ingress) or XDP ([`BpfHook`]); `lb_reply` sits at TC ingress on every network's leg
//! (`mg-<id>`, the host end of the veth whose other end, `gw0`, is the network namespace's
//! default route); at XDP, `lb_peer_pass` sits on every `gw0`, since a veth delivers redirected
//! frames only when its peer has an XDP program. Every link is pinned in a private bpffs under
//! the overlay directory ([`pins`]), so the data path outlives a meshd that dies; dropping the
//! balancer detaches and unpins everything.
//!
//! Userspace owns the tables, the program owns the flows:
//! - `LB_CONFIG` (this host's address, underlay index, MAC and MTU, data-path port),
//!   `LB_SERVICES` ((protocol, published port) → Maglev table index and target port),
//!   `LB_MAGLEV` (one table of [`maps::MAGLEV_SIZE`] backend ids per service, computed with
//!   [`crate::lb::maglev::table`] over the active backends sorted by task ID), `LB_BACKENDS`
//!   (id → address, VTEP, flags and, for local ones, the leg), `LB_LOCAL` (task address → id)
//!   and `LB_LEGS` are written here, by difference, so applying the same state twice writes
//!   nothing;
//! - `LB_FLOWS` (client 5-tuple → backend id, LRU) and `LB_REVNAT` (the flow as the task sees
//!   it → ingress host and published port, LRU) are written by the program.
//!
//! Backend ids are stable per task while it stays a backend and are not reused soon after, so
//! a flow pinned to a removed backend is picked again instead of landing elsewhere by accident.
//! A draining backend leaves the Maglev table but stays in `LB_BACKENDS`: its flows go on.
//!
//! Remote backends get VXLAN with VNI `0xFE0000 | published port` (the control plane gives
//! overlay networks VNIs below that range); the backend's host strips it in `lb_ingress` and
//! records the reverse NAT from the outer source address and the VNI.
//!
//! At XDP, `bpf_fib_lookup` refuses unless the underlay interface forwards (the kernel checks
//! `net.ipv4.conf.<if>.forwarding` before any lookup, output lookups included):
//! [`BpfBalancer::new`] sets `net.ipv4.conf.<if>.forwarding=1` itself, for that interface only
//! and in the host namespace it runs in (as the nftables path sets `ip_forward`),
//! and fails with [`LbError::Unavailable`] naming the sysctl when it cannot. A remote backend's
//! host must be a resolved neighbour (`bpf_fib_lookup` cannot wait for ARP): packets towards an
//! unresolved one are counted as `drop:fib-fail`, and every `apply` primes the neighbours of
//! all remote VTEPs by sending them an empty datagram.
//!
//! The program answers two kinds of packet itself, from the ingress host's address, at both
//! hooks: a DF packet to a remote backend that would exceed the underlay MTU once encapsulated
//! gets ICMP "fragmentation needed" with next-hop MTU = underlay MTU − 50
//! (`forward:frag-needed`; without DF it is dropped as `drop:encap-too-big`), and a TCP segment
//! to a published port whose service has no backend gets a RST (`forward:rst`), as from a
//! closed port.

mod attach;
mod counters;
mod ids;
mod inspect;
mod legs;
pub mod maps;
mod pins;
mod plan;
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::PinnedLink;
use aya::programs::{ProgramError, TcAttachType};
use aya::{Ebpf, EbpfLoader};

pub use counters::{DROP_REASONS, FORWARD_OUTCOMES};
pub use inspect::MapState;

use self::attach::{attach_xdp, detach_pinned, pin_link, tc_program, xdp_program};
use self::ids::BackendIds;
use self::legs::LegLinks;
use self::maps::{BackendValue, Config, LegValue, ServiceKey, ServiceValue, MAGLEV_SIZE};
use self::plan::{Plan, TableIndices};
use super::{HostLb, LbCounter, LbError, LbPath};
use crate::bpf::BpfError;
use crate::overlay::names;
use crate::overlay::netns::Netns;

const OBJECT: &str = "lb.o";
const INGRESS_TC: &str = "lb_ingress_tc";
const INGRESS_XDP: &str = "lb_ingress_xdp";
const REPLY: &str = "lb_reply";
const PEER_PASS: &str = "lb_peer_pass";

/// Drivers with native (driver-mode) XDP, for which XDP beats TC.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "mlx5_core",
    "mlx4_en",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "gve",
    "virtio_net",
    "hv_netvsc",
    "xen-netfront",
    "sfc",
    "tsnep",
    "stmmac",
    "mvneta",
    "mvpp2",
    "fec",
];

/// Where `lb_ingress` attaches on the underlay interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfHook {
    /// XDP in driver mode.
    Xdp,
    /// TC ingress (tcx).
    Tc,
}

impl BpfHook {
    /// The faster hook for `interface` (asked in the calling thread's namespace): TC on veth
    /// (its XDP path pays an skb→xdp copy and needs programs on peers) and on anything whose
    /// driver is unknown or lacks native XDP; XDP on drivers with native XDP.
    pub fn preferred_for(interface: &str) -> BpfHook {
        match sys::driver(interface) {
            Ok(driver) if NATIVE_XDP_DRIVERS.contains(&driver.as_str()) => BpfHook::Xdp,
            _ => BpfHook::Tc,
        }
    }

    /// The balancing path this hook is.
    pub fn path(self) -> LbPath {
        match self {
            BpfHook::Xdp => LbPath::Xdp,
            BpfHook::Tc => LbPath::Tc,
        }
    }
}

/// The BPF ingress routing mesh of one host, attached for as long as this value lives.
pub struct BpfBalancer {
    hook: BpfHook,
    underlay_if: String,
    underlay_ifindex: u32,
    underlay_mac: [u8; 6],
    overlay_dir: PathBuf,
    host_ns: Netns,
    /// The private bpffs the links are pinned in (see [`pins`]).
    pin_dir: PathBuf,
    /// Leg links a previous run pinned that this one has not replaced yet.
    stale_pins: BTreeSet<String>,
    /// This run's `lb_ingress` link; None at XDP until the first `apply` has taken over the
    /// link a previous run left.
    ingress: Option<PinnedLink>,
    /// Where this run pins `lb_ingress` (a name no previous run's pin has).
    ingress_pin: String,
    legs: BTreeMap<String, LegLinks>,
    /// Set by [`BpfBalancer::leave_attached`]: dropping leaves the pins.
    keep_pins: bool,
    config: Array<MapData, Config>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    maglev: Array<MapData, u32>,
    backends: HashMap<MapData, u32, BackendValue>,
    local: HashMap<MapData, u32, u32>,
    leg_map: HashMap<MapData, u32, LegValue>,
    drops: PerCpuArray<MapData, u64>,
    forwards: PerCpuArray<MapData, u64>,
    ids: BackendIds,
    indices: TableIndices,
    written: Plan,
    written_config: Option<Config>,
    // Last: dropping the object detaches whatever is still attached and frees the maps.
    ebpf: Ebpf,
}

fn io_error(operation: impl Into<String>, source: io::Error) -> LbError {
    LbError::Io {
        operation: operation.into(),
        source,
    }
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

fn program_error(
    operation: &'static str,
    program: &'static str,
    interface: &str,
) -> impl FnOnce(ProgramError) -> LbError {
    let interface = interface.to_string();
    move |source| {
        LbError::Bpf(BpfError::Program {
            operation,
            program,
            interface,
            source: Box::new(source),
        })
    }
}

fn missing(kind: &'static str, name: &'static str) -> LbError {
    LbError::Bpf(BpfError::Missing {
        object: OBJECT,
        kind,
        name,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LbError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing("map", name))?;
    T::try_from(map).map_err(map_error("typing", name))
}

impl BpfBalancer {
    /// Loads the object and attaches `lb_ingress` to `underlay_if` at `hook` (tcx ingress, or
    /// XDP in driver mode), in the calling thread's network namespace, which becomes the host
    /// namespace: legs are looked up and attached there, network namespaces under
    /// `overlay_dir` (`ns-<id>`). Nothing is balanced until the first [`BpfBalancer::apply`].
    /// At XDP it sets `net.ipv4.conf.<underlay_if>.forwarding=1` there when it is not set
    /// (`bpf_fib_lookup` needs it), failing with [`LbError::Unavailable`] when it cannot.
    pub fn new(
        hook: BpfHook,
        underlay_if: &str,
        overlay_dir: &Path,
    ) -> Result<BpfBalancer, LbError> {
        let host_ns = Netns::current("host")
            .map_err(|err| io_error("opening the host network namespace", io::Error::other(err)))?;
        let underlay_ifindex = sys::ifindex(underlay_if).map_err(|e| {
            io_error(
                format!("looking up the underlay interface {underlay_if}"),
                e,
            )
        })?;
        let underlay_mac = sys::hwaddr(underlay_if)
            .map_err(|e| io_error(format!("reading the MAC of {underlay_if}"), e))?;
        if hook == BpfHook::Xdp && !sys::forwarding(underlay_if) {
            sys::enable_forwarding(underlay_if).map_err(|e| LbError::Unavailable {
                path: LbPath::Xdp,
                interface: underlay_if.to_string(),
                reason: format!(
                    "bpf_fib_lookup (the XDP path's next-hop lookup) needs forwarding on the \
                     interface, and setting net.ipv4.conf.{underlay_if}.forwarding=1 failed \
                     ({e}): set it by hand, or use --lb-mode tc"
                ),
            })?;
        }
        let pin_dir = pins::dir(overlay_dir);
        pins::mount(&pin_dir).map_err(|e| {
            io_error(
                format!(
                    "mounting the balancer's bpffs at {} (it keeps the data path attached while \
                     meshd is down)",
                    pin_dir.display()
                ),
                e,
            )
        })?;
        let ingress_pin = pins::fresh_ingress_name(&pin_dir);
        let revnat_pin = pins::shared_revnat(&pin_dir);
        let mut ebpf = EbpfLoader::new()
            .map_pin_path("LB_REVNAT", &revnat_pin)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/lb.o"
            )))
            .map_err(|source| {
                LbError::Bpf(BpfError::Load {
                    object: OBJECT,
                    source: Box::new(source),
                })
            })?;
        let reply = tc_program(&mut ebpf, REPLY)?;
        reply.load().map_err(program_error("loading", REPLY, "-"))?;
        let ingress = match hook {
            BpfHook::Tc => {
                let program = tc_program(&mut ebpf, INGRESS_TC)?;
                program
                    .load()
                    .map_err(program_error("loading", INGRESS_TC, underlay_if))?;
                let id = program
                    .attach(underlay_if, TcAttachType::Ingress)
                    .map_err(program_error("attaching", INGRESS_TC, underlay_if))?;
                let link = program.take_link(id).map_err(program_error(
                    "taking the link of",
                    INGRESS_TC,
                    underlay_if,
                ))?;
                // tcx runs programs in a row: a previous run's program keeps balancing, ahead of
                // this one, until the first `apply` has filled this one's maps (see `pins`).
                Some(pin_link(
                    link,
                    &pin_dir,
                    &ingress_pin,
                    INGRESS_TC,
                    underlay_if,
                )?)
            }
            BpfHook::Xdp => {
                let pass = xdp_program(&mut ebpf, PEER_PASS)?;
                pass.load()
                    .map_err(program_error("loading", PEER_PASS, "-"))?;
                let program = xdp_program(&mut ebpf, INGRESS_XDP)?;
                program
                    .load()
                    .map_err(program_error("loading", INGRESS_XDP, underlay_if))?;
                // A previous run's link stays, balancing with its own tables, until the first
                // `apply` has filled this run's and takes it over (`attach::take_over_xdp`).
                if pins::names(&pin_dir, pins::INGRESS).is_empty() {
                    Some(attach_xdp(
                        program,
                        INGRESS_XDP,
                        underlay_if,
                        &pin_dir,
                        &ingress_pin,
                    )?)
                } else {
                    None
                }
            }
        };
        Ok(BpfBalancer {
            hook,
            underlay_if: underlay_if.to_string(),
            underlay_ifindex,
            underlay_mac,
            overlay_dir: overlay_dir.to_path_buf(),
            host_ns,
            stale_pins: pins::names(&pin_dir, "")
                .into_iter()
                .filter(|n| *n != ingress_pin && n != pins::REVNAT)
                .collect(),
            pin_dir,
            ingress,
            ingress_pin,
            legs: BTreeMap::new(),
            keep_pins: false,
            config: take_map(&mut ebpf, "LB_CONFIG")?,
            services: take_map(&mut ebpf, "LB_SERVICES")?,
            maglev: take_map(&mut ebpf, "LB_MAGLEV")?,
            backends: take_map(&mut ebpf, "LB_BACKENDS")?,
            local: take_map(&mut ebpf, "LB_LOCAL")?,
            leg_map: take_map(&mut ebpf, "LB_LEGS")?,
            drops: take_map(&mut ebpf, "LB_DROPS")?,
            forwards: take_map(&mut ebpf, "LB_FORWARDS")?,
            ids: BackendIds::default(),
            indices: TableIndices::default(),
            written: Plan::default(),
            written_config: None,
            ebpf,
        })
    }

    /// Closes this balancer but leaves its programs attached, balancing with the tables they
    /// have, as a meshd that dies does; the next balancer on the same overlay directory takes
    /// them over. For a restart that must not interrupt the routing mesh.
    pub fn leave_attached(mut self) {
        // Dropping a pinned link closes this process's descriptor; the pin keeps the link.
        self.ingress = None;
        self.legs.clear();
        self.keep_pins = true;
    }

    /// The `lb_ingress` pins a previous run left that this run has not taken over or removed.
    fn stale_ingress_pins(&self) -> Vec<String> {
        self.stale_pins
            .iter()
            .filter(|n| n.starts_with(pins::INGRESS))
            .cloned()
            .collect()
    }

    /// The path this balancer is.
    pub fn path(&self) -> LbPath {
        self.hook.path()
    }

    /// Converges the maps and the legs' attachments to `desired`. Idempotent: the same state
    /// twice writes nothing the second time.
    pub fn apply(&mut self, desired: &HostLb) -> Result<(), LbError> {
        if desired.underlay_if != self.underlay_if {
            return Err(LbError::InvalidState(format!(
                "underlay interface {} differs from {}, which this balancer is attached to; \
                 create a new balancer",
                desired.underlay_if, self.underlay_if
            )));
        }
        let wanted: Vec<String> = desired.networks.iter().map(|n| n.id.clone()).collect();
        let leg_indexes: BTreeMap<String, u32> = self
            .host_ns
            .run(|| {
                Ok(wanted
                    .iter()
                    .filter_map(|id| Some((id.clone(), sys::ifindex(&names::leg_host(id)).ok()?)))
                    .collect())
            })
            .map_err(|e| io_error("looking up the legs", e))?;
        let plan = plan::plan(desired, &mut self.ids, &mut self.indices, &|id| {
            leg_indexes.get(id).copied()
        })?;
        self.write_config(desired)?;
        self.write_maps(plan)?;
        // This run's program has its tables now: at XDP it takes over a previous run's link;
        // at tcx, a previous run's link, ahead of this one's, can go.
        if self.ingress.is_none() {
            self.take_over_ingress()?;
        }
        for name in self.stale_ingress_pins() {
            self.stale_pins.remove(&name);
            pins::remove(&self.pin_dir, &name);
        }
        self.sync_legs(&leg_indexes)?;
        if self.hook == BpfHook::Xdp {
            self.prime_neighbours(desired);
        }
        Ok(())
    }

    fn write_config(&mut self, desired: &HostLb) -> Result<(), LbError> {
        let config = Config {
            host_ip: maps::ip_be(desired.underlay_ip),
            underlay_ifindex: self.underlay_ifindex,
            mtu: desired.underlay_mtu,
            data_path_port: maps::port_be(desired.data_path_port),
            host_mac: self.underlay_mac,
            ready: 1,
        };
        if self.written_config != Some(config) {
            self.config
                .set(0, config, 0)
                .map_err(map_error("writing", "LB_CONFIG"))?;
            self.written_config = Some(config);
        }
        Ok(())
    }

    /// Writes what differs from what was written last, in an order that never lets the
    /// program see an id without its backend: backends, tables, services, then removals.
    fn write_maps(&mut self, plan: Plan) -> Result<(), LbError> {
        for (id, value) in &plan.backends {
            if self.written.backends.get(id) != Some(value) {
                self.backends
                    .insert(id, value, 0)
                    .map_err(map_error("writing", "LB_BACKENDS"))?;
                self.written.backends.insert(*id, *value);
            }
        }
        for (ip, id) in &plan.local {
            if self.written.local.get(ip) != Some(id) {
                self.local
                    .insert(ip, id, 0)
                    .map_err(map_error("writing", "LB_LOCAL"))?;
                self.written.local.insert(*ip, *id);
            }
        }
        let zeros = vec![0u32; MAGLEV_SIZE as usize];
        let stale_tables: Vec<u32> = self
            .written
            .tables
            .keys()
            .filter(|i| !plan.tables.contains_key(i))
            .copied()
            .collect();
        for (index, table) in plan
            .tables
            .iter()
            .map(|(i, t)| (*i, t))
            .chain(stale_tables.iter().map(|i| (*i, &zeros)))
        {
            let old = self.written.tables.get(&index).unwrap_or(&zeros);
            for (slot, (&new, &was)) in table.iter().zip(old.iter()).enumerate() {
                if new != was {
                    self.maglev
                        .set(index * MAGLEV_SIZE + slot as u32, new, 0)
                        .map_err(map_error("writing", "LB_MAGLEV"))?;
                }
            }
            self.written.tables.insert(index, table.clone());
        }
        for index in &stale_tables {
            self.written.tables.remove(index);
        }
        for (key, value) in &plan.services {
            if self.written.services.get(key) != Some(value) {
                self.services
                    .insert(key, value, 0)
                    .map_err(map_error("writing", "LB_SERVICES"))?;
                self.written.services.insert(*key, *value);
            }
        }
        let stale: Vec<ServiceKey> = self
            .written
            .services
            .keys()
            .filter(|k| !plan.services.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            remove_entry(&mut self.services, &key, "LB_SERVICES")?;
            self.written.services.remove(&key);
        }
        let stale: Vec<u32> = self
            .written
            .local
            .keys()
            .filter(|k| !plan.local.contains_key(k))
            .copied()
            .collect();
        for ip in stale {
            remove_entry(&mut self.local, &ip, "LB_LOCAL")?;
            self.written.local.remove(&ip);
        }
        let stale: Vec<u32> = self
            .written
            .backends
            .keys()
            .filter(|k| !plan.backends.contains_key(k))
            .copied()
            .collect();
        for id in stale {
            remove_entry(&mut self.backends, &id, "LB_BACKENDS")?;
            self.written.backends.remove(&id);
        }
        self.written.networks = plan.networks;
        Ok(())
    }

    /// Sends an empty datagram to the data-path port of every remote VTEP, so the kernel
    /// resolves its neighbour entry, which XDP's FIB lookup needs. Best effort.
    fn prime_neighbours(&self, desired: &HostLb) {
        let vteps: BTreeSet<Ipv4Addr> = desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| !desired.is_local(b))
            .map(|b| b.vtep)
            .collect();
        if vteps.is_empty() {
            return;
        }
        let (local, port) = (desired.underlay_ip, desired.data_path_port);
        let _ = self.host_ns.run(|| {
            let socket = UdpSocket::bind((local, 0))?;
            for vtep in &vteps {
                let _ = socket.send_to(&[], (*vtep, port));
            }
            Ok(())
        });
    }

    /// Every counter, summed over CPUs: `drop:<reason>` and `forward:<outcome>`.
    pub fn counters(&self) -> Result<Vec<LbCounter>, LbError> {
        let mut counters = Vec::with_capacity(DROP_REASONS.len() + FORWARD_OUTCOMES.len());
        for (code, map, name) in (0..DROP_REASONS.len())
            .map(|c| (c, &self.drops, counters::drop_name(c)))
            .chain(
                (0..FORWARD_OUTCOMES.len()).map(|c| (c, &self.forwards, counters::forward_name(c))),
            )
        {
            let values = map
                .get(&(code as u32), 0)
                .map_err(map_error("reading", "LB_DROPS/LB_FORWARDS"))?;
            counters.push(LbCounter {
                name,
                packets: values.iter().sum(),
            });
        }
        Ok(counters)
    }
}

fn remove_entry<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), LbError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(err) => Err(map_error("deleting from", name)(err)),
    }
}

/// Detaches whatever a previous BPF balancer left pinned under `overlay_dir` and unmounts its
/// bpffs: for a meshd that restarts in another mode (nftables), whose balancer would otherwise
/// sit behind programs nobody updates.
pub fn remove_leftovers(overlay_dir: &Path) {
    pins::clear(&pins::dir(overlay_dir));
}

/// Dropping the balancer (meshd's clean stop on SIGTERM) detaches everything, as before
/// pinning: a meshd that is stopped on purpose takes its data path with it, and unmounts its
/// bpffs. Only a meshd that dies leaves the pins, and the data path, behind.
impl Drop for BpfBalancer {
    fn drop(&mut self) {
        if self.keep_pins {
            return;
        }
        let legs = std::mem::take(&mut self.legs);
        for links in legs.into_values() {
            self.detach_leg(links);
        }
        if let Some(link) = self.ingress.take() {
            detach_pinned(link);
        }
        pins::clear(&self.pin_dir);
    }
}
