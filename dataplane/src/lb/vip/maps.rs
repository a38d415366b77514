//! The shared side of `ebpf/include/vip_consts.h` and `vip_maps.h`: sizes, the VIP MAC, the
//! counter reasons and the structs the loader writes, field for field. Addresses are kept as
//! network-order bytes, so no field needs a byte swap.

use std::net::Ipv4Addr;

/// Slots of one VIP's Maglev table (`VIP_RING_SIZE`, a prime).
pub const RING_SIZE: u32 = 1021;
/// (network, VIP) pairs one host can hold (`VIP_MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 1024;
/// (VIP, backend) memberships (`VIP_MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 65536;
/// The UDP port of each network namespace's marker socket (`VIP_MARKER_PORT`), bound to
/// 127.0.0.1 there with `SO_MARK` = the network's ID: how the program tells networks apart.
pub const MARKER_PORT: u16 = 1023;

/// The MAC every VIP answers ARP with and sends from (`VIP_MAC_*`): locally administered,
/// `"\x02MESHV"`.
pub const VIP_MAC: [u8; 6] = [0x02, 0x4d, 0x45, 0x53, 0x48, 0x56];

/// `VIP_BACKEND_ACTIVE`.
pub const BACKEND_ACTIVE: u8 = 0;
/// `VIP_BACKEND_DRAINING`.
pub const BACKEND_DRAINING: u8 = 1;

/// Why the program counted a packet: the index into `VIP_COUNTERS`. Never renumber or reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Reason {
    /// A new flow to a VIP, sent to a Maglev pick.
    ForwardNew = 0,
    /// A flow to a VIP found in the connection map.
    ForwardEstablished = 1,
    /// The client is its own backend: looped back into it, from the VIP.
    ForwardHairpin = 2,
    /// A backend's reply, its source set back to the VIP.
    ReplyNat = 3,
    /// An ICMP error about a VIP flow, rewritten to name the VIP.
    ReplyIcmpError = 4,
    /// An ARP request for a VIP, answered.
    AnswerArp = 5,
    /// An ICMP echo request to a VIP, answered.
    AnswerEcho = 6,
    /// TCP to a VIP without backends, refused with a RST.
    AnswerRst = 7,
    /// UDP (or a RST) to a VIP without backends, dropped.
    DropNoBackend = 8,
    /// A frame shorter than its headers claim, dropped.
    DropMalformed = 9,
    /// A non-first IPv4 fragment to a VIP, dropped.
    DropFragment = 10,
    /// Another protocol, or ICMP other than echo, to a VIP, dropped.
    DropUnsupported = 11,
    /// A rewrite helper failed, dropped.
    DropRewrite = 12,
    /// A frame in a namespace without a marker socket, passed untouched.
    PassUnknownNetwork = 13,
}

impl Reason {
    /// Every reason, in index order (`VIP_REASONS` of them).
    pub const ALL: [Reason; 14] = [
        Self::ForwardNew,
        Self::ForwardEstablished,
        Self::ForwardHairpin,
        Self::ReplyNat,
        Self::ReplyIcmpError,
        Self::AnswerArp,
        Self::AnswerEcho,
        Self::AnswerRst,
        Self::DropNoBackend,
        Self::DropMalformed,
        Self::DropFragment,
        Self::DropUnsupported,
        Self::DropRewrite,
        Self::PassUnknownNetwork,
    ];

    /// The counter's name as `meshctl` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ForwardNew => "vip:forward:new",
            Self::ForwardEstablished => "vip:forward:established",
            Self::ForwardHairpin => "vip:forward:hairpin",
            Self::ReplyNat => "vip:reply:nat",
            Self::ReplyIcmpError => "vip:reply:icmp-error",
            Self::AnswerArp => "vip:answer:arp",
            Self::AnswerEcho => "vip:answer:icmp-echo",
            Self::AnswerRst => "vip:answer:tcp-rst",
            Self::DropNoBackend => "vip:drop:no-backend",
            Self::DropMalformed => "vip:drop:malformed",
            Self::DropFragment => "vip:drop:fragment",
            Self::DropUnsupported => "vip:drop:unsupported",
            Self::DropRewrite => "vip:drop:rewrite-failed",
            Self::PassUnknownNetwork => "vip:pass:unknown-network",
        }
    }
}

/// `struct vip_key`: a VIP on one network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct VipKey {
    /// The network's ID (its marker socket's mark).
    pub net: u32,
    /// The VIP, network order.
    pub addr: [u8; 4],
}

impl VipKey {
    /// The key of `vip` on network `net`.
    pub fn new(net: u32, vip: Ipv4Addr) -> Self {
        Self {
            net,
            addr: vip.octets(),
        }
    }
}

/// `struct vip_service`: where a VIP's Maglev table starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VipService {
    /// Its table: `VIP_RING[ring * RING_SIZE + slot]`.
    pub ring: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// `struct vip_backend`: one backend of one VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VipBackend {
    /// The task's address on the VIP's network, network order.
    pub ip: [u8; 4],
    /// The task's MAC there.
    pub mac: [u8; 6],
    /// `BACKEND_ACTIVE` or `BACKEND_DRAINING`.
    pub state: u8,
    /// Zero.
    pub pad: u8,
}

// The C side lays these out without padding (checked by the size assertions below).
const _: () = assert!(std::mem::size_of::<VipKey>() == 8);
const _: () = assert!(std::mem::size_of::<VipService>() == 8);
const _: () = assert!(std::mem::size_of::<VipBackend>() == 12);

// SAFETY: repr(C) structs of integers and byte arrays without padding (sizes asserted above);
// every bit pattern is a valid value.
unsafe impl aya::Pod for VipKey {}
// SAFETY: as above.
unsafe impl aya::Pod for VipService {}
// SAFETY: as above.
unsafe impl aya::Pod for VipBackend {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `#define NAME value` lines of the C constants header.
    fn c_defines() -> std::collections::BTreeMap<String, String> {
        include_str!("../../../../ebpf/include/vip_consts.h")
            .lines()
            .filter_map(|line| {
                let mut words = line.trim().strip_prefix("#define ")?.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect()
    }

    fn c_number(defines: &std::collections::BTreeMap<String, String>, name: &str) -> u64 {
        let text = defines
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => text.parse().unwrap(),
        }
    }

    #[test]
    fn constants_match_the_c_header() {
        let d = c_defines();
        assert_eq!(c_number(&d, "VIP_RING_SIZE"), u64::from(RING_SIZE));
        assert_eq!(c_number(&d, "VIP_MAX_SERVICES"), u64::from(MAX_SERVICES));
        assert_eq!(c_number(&d, "VIP_MAX_BACKENDS"), u64::from(MAX_BACKENDS));
        assert_eq!(c_number(&d, "VIP_MARKER_PORT"), u64::from(MARKER_PORT));
        assert_eq!(
            c_number(&d, "BE_VIP_MARKER_PORT"),
            u64::from(u16::from_ne_bytes(MARKER_PORT.to_be_bytes()))
        );
        assert_eq!(
            c_number(&d, "BE_LOOPBACK"),
            u64::from(u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets()))
        );
        assert_eq!(
            c_number(&d, "VIP_BACKEND_ACTIVE"),
            u64::from(BACKEND_ACTIVE)
        );
        assert_eq!(
            c_number(&d, "VIP_BACKEND_DRAINING"),
            u64::from(BACKEND_DRAINING)
        );
        for (i, byte) in VIP_MAC.iter().enumerate() {
            assert_eq!(c_number(&d, &format!("VIP_MAC_{i}")), u64::from(*byte));
        }
        assert!(crate::lb::maglev::is_prime(RING_SIZE));
    }

    #[test]
    fn reasons_match_the_c_header_and_are_dense() {
        let d = c_defines();
        let c_names = [
            "VIP_FWD_NEW",
            "VIP_FWD_ESTABLISHED",
            "VIP_FWD_HAIRPIN",
            "VIP_REPLY_NAT",
            "VIP_REPLY_ICMP_ERROR",
            "VIP_ANSWER_ARP",
            "VIP_ANSWER_ECHO",
            "VIP_ANSWER_RST",
            "VIP_DROP_NO_BACKEND",
            "VIP_DROP_MALFORMED",
            "VIP_DROP_FRAGMENT",
            "VIP_DROP_UNSUPPORTED",
            "VIP_DROP_REWRITE",
            "VIP_PASS_UNKNOWN_NET",
        ];
        assert_eq!(c_names.len(), Reason::ALL.len());
        assert_eq!(c_number(&d, "VIP_REASONS"), Reason::ALL.len() as u64);
        for (i, (reason, c_name)) in Reason::ALL.iter().zip(c_names).enumerate() {
            assert_eq!(*reason as usize, i);
            assert_eq!(c_number(&d, c_name), i as u64, "{c_name}");
        }
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len(), "counter names are unique");
    }

    #[test]
    fn keys_hold_addresses_in_network_order() {
        let key = VipKey::new(7, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(key.addr, [10, 0, 0, 100]);
        assert_eq!(key.net, 7);
    }
}
