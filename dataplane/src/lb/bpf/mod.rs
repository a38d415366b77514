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

mod counters;
mod ids;
mod inspect;
pub mod maps;
mod pins;
mod plan;
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

pub use counters::{DROP_REASONS, FORWARD_OUTCOMES};
pub use inspect::MapState;

use self::ids::BackendIds;
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

/// What is attached for one network's leg.
struct LegLinks {
    /// mg-<id>'s index when attached (a recreated leg gets a new one).
    ifindex: u32,
    /// The network's ID, which names its pins.
    network: String,
    /// `lb_reply` on mg-<id>.
    reply: Option<PinnedLink>,
    /// `lb_peer_pass` on gw0 (XDP hook only).
    peer: Option<PinnedLink>,
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
    ingress: Option<PinnedLink>,
    legs: BTreeMap<String, LegLinks>,
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

/// Pins the link of an attachment at `pin_dir/name`: the kernel keeps it attached until the
/// pin is removed, whatever happens to this process.
fn pin_link<L>(
    link: L,
    pin_dir: &Path,
    name: &str,
    program: &'static str,
    interface: &str,
) -> Result<PinnedLink, LbError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let link = FdLink::try_from(link).map_err(|e| {
        io_error(
            format!("taking the bpf_link of {program} on {interface} (the kernel needs bpf_link support: Linux 6.6 or later, or use --lb-mode nftables)"),
            io::Error::other(e),
        )
    })?;
    pins::pin(link, pin_dir, name).map_err(|e| {
        io_error(
            format!(
                "pinning {program} on {interface} at {}",
                pin_dir.join(name).display()
            ),
            e,
        )
    })
}

/// Detaches a pinned link now: unpinning leaves this descriptor as the last reference.
fn detach_pinned(link: PinnedLink) {
    drop(link.unpin());
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

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LbError> {
    ebpf.program_mut(name)
        .ok_or_else(|| missing("program", name))?
        .try_into()
        .map_err(program_error("typing", name, "-"))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LbError> {
    ebpf.program_mut(name)
        .ok_or_else(|| missing("program", name))?
        .try_into()
        .map_err(program_error("typing", name, "-"))
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
        // Named after the process, so a previous run's pin can stay while this one's is made.
        let ingress_pin = format!("{}-{}", pins::INGRESS, std::process::id());
        let mut ebpf = EbpfLoader::new()
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
                pin_link(link, &pin_dir, &ingress_pin, INGRESS_TC, underlay_if)?
            }
            BpfHook::Xdp => {
                let pass = xdp_program(&mut ebpf, PEER_PASS)?;
                pass.load()
                    .map_err(program_error("loading", PEER_PASS, "-"))?;
                let program = xdp_program(&mut ebpf, INGRESS_XDP)?;
                program
                    .load()
                    .map_err(program_error("loading", INGRESS_XDP, underlay_if))?;
                // A device takes one XDP link: a previous run's goes right before.
                for name in pins::names(&pin_dir, pins::INGRESS) {
                    pins::remove(&pin_dir, &name);
                }
                let id = program
                    .attach(underlay_if, XdpMode::Driver)
                    .map_err(program_error("attaching", INGRESS_XDP, underlay_if))?;
                let link = program.take_link(id).map_err(program_error(
                    "taking the link of",
                    INGRESS_XDP,
                    underlay_if,
                ))?;
                pin_link(link, &pin_dir, &ingress_pin, INGRESS_XDP, underlay_if)?
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
                .filter(|n| *n != ingress_pin)
                .collect(),
            pin_dir,
            ingress: Some(ingress),
            legs: BTreeMap::new(),
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
        // This run's program has its tables now: a previous run's, ahead of it, can go.
        let old: Vec<String> = self
            .stale_pins
            .iter()
            .filter(|n| n.starts_with(pins::INGRESS))
            .cloned()
            .collect();
        for name in old {
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

    /// Attaches `lb_reply` to every wanted network's leg (and, at XDP, `lb_peer_pass` to its
    /// gw0), re-attaching a recreated leg, and detaches from legs no longer wanted.
    fn sync_legs(&mut self, leg_indexes: &BTreeMap<String, u32>) -> Result<(), LbError> {
        let gone: Vec<String> = self
            .legs
            .iter()
            .filter(|(id, links)| leg_indexes.get(*id) != Some(&links.ifindex))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(links) = self.legs.remove(&id) {
                self.detach_leg(links);
            }
        }
        let mut first_error = None;
        let wanted = self.written.networks.clone();
        for network in &wanted {
            if self.legs.contains_key(network) {
                continue;
            }
            let Some(&ifindex) = leg_indexes.get(network) else {
                first_error.get_or_insert(LbError::InvalidState(format!(
                    "network {network}'s leg {} is missing: apply the overlay first",
                    names::leg_host(network)
                )));
                continue;
            };
            match self.attach_leg(network, ifindex) {
                Ok(links) => {
                    self.legs.insert(network.clone(), links);
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        // A previous run's legs that no wanted network replaced: their networks are gone.
        // Those of wanted networks whose attach failed stay until the retry replaces them.
        let unwanted: Vec<String> = self
            .stale_pins
            .iter()
            .filter(|name| {
                !wanted
                    .iter()
                    .any(|n| **name == pins::reply_name(n) || **name == pins::peer_name(n))
            })
            .cloned()
            .collect();
        for name in unwanted {
            self.stale_pins.remove(&name);
            pins::remove(&self.pin_dir, &name);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn attach_leg(&mut self, network: &str, ifindex: u32) -> Result<LegLinks, LbError> {
        let leg = names::leg(network);
        let value = LegValue {
            host_mac: leg.host_mac,
            ns_mac: leg.ns_mac,
            flags: 0,
        };
        self.leg_map
            .insert(ifindex, value, 0)
            .map_err(map_error("writing", "LB_LEGS"))?;
        let mut links = LegLinks {
            ifindex,
            network: network.to_string(),
            reply: None,
            peer: None,
        };
        // A previous run's programs on this leg go right before this run's come (XDP, one
        // per device) or right after (tcx, where the new one queues behind the old).
        let (reply_pin, peer_pin) = (pins::reply_name(network), pins::peer_name(network));
        if self.stale_pins.remove(&peer_pin) {
            pins::remove(&self.pin_dir, &peer_pin);
        }
        if self.hook == BpfHook::Xdp {
            let path = self.overlay_dir.join(names::netns_file(network));
            let ns = Netns::open_pinned(&path)
                .map_err(|e| io_error(format!("opening {}", path.display()), io::Error::other(e)))?
                .ok_or_else(|| {
                    LbError::InvalidState(format!(
                        "network {network} has no namespace at {}: apply the overlay first",
                        path.display()
                    ))
                })?;
            let pass = xdp_program(&mut self.ebpf, PEER_PASS)?;
            let attached = ns
                .run(|| Ok(pass.attach(names::LEG_NS_IF, XdpMode::Driver)))
                .map_err(|e| io_error(format!("entering {}", path.display()), e))?;
            let id = attached.map_err(program_error("attaching", PEER_PASS, names::LEG_NS_IF))?;
            let link = pass.take_link(id).map_err(program_error(
                "taking the link of",
                PEER_PASS,
                names::LEG_NS_IF,
            ))?;
            links.peer = Some(pin_link(
                link,
                &self.pin_dir,
                &peer_pin,
                PEER_PASS,
                names::LEG_NS_IF,
            )?);
        }
        let reply = tc_program(&mut self.ebpf, REPLY)?;
        let attached = self
            .host_ns
            .run(|| Ok(reply.attach(&leg.host_if, TcAttachType::Ingress)))
            .map_err(|e| io_error("entering the host namespace", e))?;
        let pinned = attached
            .map_err(program_error("attaching", REPLY, &leg.host_if))
            .and_then(|id| {
                reply.take_link(id).map_err(program_error(
                    "taking the link of",
                    REPLY,
                    &leg.host_if,
                ))
            })
            .and_then(|link| {
                self.stale_pins.remove(&reply_pin);
                pins::remove(&self.pin_dir, &reply_pin);
                pin_link(link, &self.pin_dir, &reply_pin, REPLY, &leg.host_if)
            });
        match pinned {
            Ok(link) => links.reply = Some(link),
            Err(err) => {
                self.detach_leg(links);
                return Err(err);
            }
        }
        Ok(links)
    }

    /// Detaches a leg's programs; a leg already gone took its attachments along.
    fn detach_leg(&mut self, links: LegLinks) {
        for link in [links.reply, links.peer].into_iter().flatten() {
            detach_pinned(link);
        }
        // A pin whose link could not be read back (taken above) is removed by name.
        pins::remove(&self.pin_dir, &pins::reply_name(&links.network));
        pins::remove(&self.pin_dir, &pins::peer_name(&links.network));
        let _ = self.leg_map.remove(&links.ifindex);
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
