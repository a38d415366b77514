//! The values shared with `ebpf/include/lb_structs.h`, `#[repr(C)]` with explicit padding, and
//! the sizes of `lb_consts.h`. Addresses and ports are stored in network byte order, as the
//! program compares them with packet fields.

use std::net::Ipv4Addr;

/// `LB_MAX_SERVICES`: services with published ports (one Maglev table each).
pub const MAX_SERVICES: u32 = 64;
/// `LB_MAGLEV_SIZE`: slots per Maglev table (prime).
pub const MAGLEV_SIZE: u32 = 16381;
/// `LB_MAX_PORTS`: published (protocol, port) pairs.
pub const MAX_PORTS: usize = 1024;
/// `LB_MAX_BACKENDS`: backends of all services.
pub const MAX_BACKENDS: usize = 4096;
/// `LB_MAX_LEGS`: overlay networks with a leg.
pub const MAX_LEGS: usize = 256;
/// `LB_BACKEND_LOCAL`: the backend runs on this host.
pub const BACKEND_LOCAL: u32 = 1;
/// `LB_BACKEND_DRAINING`: out of the Maglev table, keeps its flows.
pub const BACKEND_DRAINING: u32 = 2;
/// `LB_SERVICE_LOCAL_ONLY`: host mode.
pub const SERVICE_LOCAL_ONLY: u16 = 1;
/// The mesh's VNI range starts here: `0xFE0000 | published port`.
pub const MESH_VNI_BASE: u32 = 0xFE_0000;

/// An address as the program stores it (network order in memory).
pub fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A port as the program stores it (network order in memory).
pub fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// `struct lb_config`: `LB_CONFIG[0]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// This host's underlay address.
    pub host_ip: u32,
    /// The underlay interface's index.
    pub underlay_ifindex: u32,
    /// The underlay MTU.
    pub mtu: u32,
    /// VXLAN's UDP port.
    pub data_path_port: u16,
    /// The underlay interface's MAC.
    pub host_mac: [u8; 6],
    /// Nonzero once filled in.
    pub ready: u32,
}

/// `struct lb_service_key`: a published port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
pub struct ServiceKey {
    /// IP protocol number.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
    /// The published port.
    pub port: u16,
}

/// `struct lb_service`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ServiceValue {
    /// The Maglev table's index.
    pub index: u32,
    /// The port inside the task.
    pub target_port: u16,
    /// `SERVICE_*` flags.
    pub flags: u16,
}

/// `struct lb_backend`: `LB_BACKENDS[id]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BackendValue {
    /// The task's overlay address.
    pub ip: u32,
    /// Its host's underlay address.
    pub vtep: u32,
    /// Local backends: the index of their network's leg `mg-<id>`.
    pub leg_ifindex: u32,
    /// `BACKEND_*` flags.
    pub flags: u32,
    /// Local backends: the leg's host-end MAC.
    pub leg_host_mac: [u8; 6],
    /// Local backends: the leg's namespace-end (gw0) MAC.
    pub leg_ns_mac: [u8; 6],
}

/// `struct lb_leg`: `LB_LEGS[ifindex]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LegValue {
    /// mg-<id>'s MAC.
    pub host_mac: [u8; 6],
    /// gw0's MAC.
    pub ns_mac: [u8; 6],
    /// Unused, zero.
    pub flags: u32,
}

// SAFETY: each type is repr(C), made of integers and byte arrays whose sizes leave no implicit
// padding (checked by `layouts_match_the_c_structs`), so every bit pattern is a valid value.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceValue {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendValue {}
// SAFETY: as above.
unsafe impl aya::Pod for LegValue {}

/// The bytes of a shared value as the kernel sees them.
#[cfg(test)]
fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: T is Pod: no padding, so every byte is initialized.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(size_of::<ServiceKey>(), 4);
        assert_eq!(size_of::<ServiceValue>(), 8);
        assert_eq!(size_of::<BackendValue>(), 28);
        assert_eq!(size_of::<LegValue>(), 16);
        assert!(crate::lb::maglev::is_prime(MAGLEV_SIZE));
    }

    #[test]
    fn values_encode_in_network_order() {
        let config = Config {
            host_ip: ip_be(Ipv4Addr::new(198, 18, 0, 1)),
            underlay_ifindex: 7,
            mtu: 1500,
            data_path_port: port_be(4789),
            host_mac: [2, 0, 0, 0, 0, 1],
            ready: 1,
        };
        assert_eq!(
            bytes_of(&config),
            [198, 18, 0, 1, 7, 0, 0, 0, 0xdc, 5, 0, 0, 0x12, 0xb5, 2, 0, 0, 0, 0, 1, 1, 0, 0, 0]
        );
        let key = ServiceKey {
            proto: 6,
            pad: 0,
            port: port_be(8080),
        };
        assert_eq!(bytes_of(&key), [6, 0, 0x1f, 0x90]);
        let backend = BackendValue {
            ip: ip_be(Ipv4Addr::new(10, 0, 0, 2)),
            vtep: ip_be(Ipv4Addr::new(198, 18, 0, 2)),
            leg_ifindex: 0,
            flags: BACKEND_DRAINING,
            leg_host_mac: [0; 6],
            leg_ns_mac: [0; 6],
        };
        assert_eq!(
            &bytes_of(&backend)[..16],
            [10, 0, 0, 2, 198, 18, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }
}
