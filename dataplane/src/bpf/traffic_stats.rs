//! The traffic-stats XDP program (`ebpf/xdp_stats.c`): counts every frame on an interface by
//! traffic class and passes it on unchanged.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::Xdp;
pub use aya::programs::XdpMode;
use aya::{Ebpf, EbpfLoader};

use super::BpfError;

const OBJECT: &str = "xdp_stats.o";
const PROGRAM: &str = "xdp_stats";
const STATS_MAP: &str = "TRAFFIC_STATS";

/// Traffic classes, the index into `TRAFFIC_STATS`; mirrors `ebpf/include/stats_consts.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum TrafficClass {
    /// Every frame seen, malformed ones included.
    All = 0,
    /// Well-formed IPv4 (TCP and UDP included).
    Ipv4 = 1,
    /// IPv4 carrying TCP.
    Ipv4Tcp = 2,
    /// IPv4 carrying UDP.
    Ipv4Udp = 3,
    /// IPv6, any payload.
    Ipv6 = 4,
    /// ARP.
    Arp = 5,
    /// Shorter than the header its EtherType announces.
    Malformed = 6,
    /// Any other EtherType.
    Other = 7,
}

impl TrafficClass {
    /// Every class, in index order.
    pub const ALL: [TrafficClass; 8] = [
        Self::All,
        Self::Ipv4,
        Self::Ipv4Tcp,
        Self::Ipv4Udp,
        Self::Ipv6,
        Self::Arp,
        Self::Malformed,
        Self::Other,
    ];

    /// The class's name as `meshctl` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Ipv4 => "ipv4",
            Self::Ipv4Tcp => "ipv4-tcp",
            Self::Ipv4Udp => "ipv4-udp",
            Self::Ipv6 => "ipv6",
            Self::Arp => "arp",
            Self::Malformed => "malformed",
            Self::Other => "other",
        }
    }
}

/// `struct traffic_counter` of `ebpf/include/stats_maps.h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TrafficCounter {
    /// Frames seen.
    pub packets: u64,
    /// Bytes of those frames, L2 header included.
    pub bytes: u64,
}

// SAFETY: two u64 fields, repr(C), no padding, every bit pattern valid.
unsafe impl aya::Pod for TrafficCounter {}

/// What the program does with a frame after counting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass every frame on: a pure meter.
    Pass,
    /// Drop IPv4 UDP, pass the rest: the XDP_DROP limit for packet-rate benchmarks.
    DropIpv4Udp,
}

/// The program, attached to one interface for as long as this value lives.
pub struct TrafficStats {
    // Dropping the Ebpf object detaches the program and frees its maps.
    _ebpf: Ebpf,
    stats: PerCpuArray<MapData, TrafficCounter>,
    interface: String,
}

impl TrafficStats {
    /// Loads the program as a pure meter and attaches it to `interface` in the calling
    /// thread's network namespace, in the given XDP mode.
    pub fn attach(interface: &str, mode: XdpMode) -> Result<Self, BpfError> {
        Self::attach_with(interface, mode, Verdict::Pass)
    }

    /// As `attach`, with the verdict the program gives after counting.
    pub fn attach_with(interface: &str, mode: XdpMode, verdict: Verdict) -> Result<Self, BpfError> {
        let drop_ipv4_udp = u8::from(verdict == Verdict::DropIpv4Udp);
        let mut ebpf = EbpfLoader::new()
            .override_global("drop_ipv4_udp", &drop_ipv4_udp, true)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/xdp_stats.o"
            )))
            .map_err(|source| BpfError::Load {
                object: OBJECT,
                source: Box::new(source),
            })?;

        let program_error = |operation, source| BpfError::Program {
            operation,
            program: PROGRAM,
            interface: interface.to_string(),
            source: Box::new(source),
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(BpfError::Missing {
                object: OBJECT,
                kind: "program",
                name: PROGRAM,
            })?
            .try_into()
            .map_err(|source| program_error("typing", source))?;
        program
            .load()
            .map_err(|source| program_error("loading", source))?;
        program
            .attach(interface, mode)
            .map_err(|source| program_error("attaching", source))?;

        let map = ebpf.take_map(STATS_MAP).ok_or(BpfError::Missing {
            object: OBJECT,
            kind: "map",
            name: STATS_MAP,
        })?;
        let stats = PerCpuArray::try_from(map).map_err(|source| BpfError::Map {
            operation: "typing",
            map: STATS_MAP,
            source: Box::new(source),
        })?;
        Ok(Self {
            _ebpf: ebpf,
            stats,
            interface: interface.to_string(),
        })
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The counter of one class, summed over CPUs.
    pub fn read(&self, class: TrafficClass) -> Result<TrafficCounter, BpfError> {
        let per_cpu = self
            .stats
            .get(&(class as u32), 0)
            .map_err(|source| BpfError::Map {
                operation: "reading",
                map: STATS_MAP,
                source: Box::new(source),
            })?;
        Ok(per_cpu
            .iter()
            .fold(TrafficCounter::default(), |sum, cpu| TrafficCounter {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            }))
    }

    /// Every class's counter, summed over CPUs.
    pub fn read_all(&self) -> Result<BTreeMap<TrafficClass, TrafficCounter>, BpfError> {
        TrafficClass::ALL
            .iter()
            .map(|&class| Ok((class, self.read(class)?)))
            .collect()
    }
}
