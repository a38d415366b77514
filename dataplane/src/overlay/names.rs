//! Names of everything the overlay creates, derived from stable IDs, and MAC formatting. Pure:
//! nothing here touches the kernel.

use std::net::Ipv4Addr;
use std::path::Path;

/// The bridge of every network namespace.
pub const BRIDGE: &str = "br0";
/// The vxlan device of every network namespace.
pub const VXLAN: &str = "vxlan0";
/// Prefix of the pinned file of a network's namespace inside the overlay directory.
pub const NETNS_FILE_PREFIX: &str = "ns-";
/// Prefix of the network-side end of a task's veth.
pub const VETH_PREFIX: &str = "ve-";
/// Prefix of a network's leg in the underlay namespace: `mg-<network id>`.
pub const LEG_HOST_PREFIX: &str = "mg-";
/// The leg's end inside every network namespace: an L3 device, not on the bridge, with no
/// address; the namespace's default route leaves through it.
pub const LEG_NS_IF: &str = "gw0";
/// The next hop of a network namespace's default route (`via 169.254.0.2 dev gw0 onlink`).
/// No device holds it: a permanent neighbour entry on `gw0` maps it to the host end's MAC.
pub const LEG_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// The next hop the host namespace may route a network's subnet through (`via 169.254.0.1
/// dev mg-<id> onlink`, with a neighbour entry to the namespace end's MAC). No device holds it.
pub const LEG_NS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// Longest network ID (it appears in file names and, through the VNI, nowhere else).
pub const MAX_NETWORK_ID_LEN: usize = 12;
/// Longest interface name the kernel accepts (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Prefix of the temporary names vxlan devices carry in the underlay namespace before they
/// move into their network's namespace.
const TEMP_VXLAN_PREFIX: &str = "mvx";
/// Characters of a task ID kept verbatim in its veth name (the rest of the name is a hash).
const VETH_ID_CHARS: usize = MAX_IFNAME_LEN - VETH_PREFIX.len();
/// Characters of the task ID kept when a hash completes the name.
const VETH_HASHED_ID_CHARS: usize = 7;

/// Whether `id` can name a network: 1 to 12 characters of `[a-z0-9]`.
pub fn valid_network_id(id: &str) -> bool {
    (1..=MAX_NETWORK_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether the kernel accepts `name` as an interface name.
pub fn valid_ifname(name: &str) -> bool {
    (1..=MAX_IFNAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The file, inside the overlay directory, that pins network `id`'s namespace.
pub fn netns_file(id: &str) -> String {
    format!("{NETNS_FILE_PREFIX}{id}")
}

/// The network ID a file of the overlay directory pins, if it is one of ours.
pub fn network_of_netns_file(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(NETNS_FILE_PREFIX)
        .filter(|id| valid_network_id(id))
}

/// A network's leg: the veth pair joining its namespace to the underlay namespace, with the
/// fixed MACs its ends carry (derived from the network ID, so a restart gives the same ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    /// The end in the underlay (host) namespace: `mg-<id>`.
    pub host_if: String,
    /// The end in the network namespace: `gw0`.
    pub ns_if: String,
    /// The MAC of `host_if`.
    pub host_mac: [u8; 6],
    /// The MAC of `ns_if`.
    pub ns_mac: [u8; 6],
}

/// The underlay-side end of network `id`'s leg: `mg-<id>` (at most 15 characters for a valid
/// ID).
pub fn leg_host(id: &str) -> String {
    format!("{LEG_HOST_PREFIX}{id}")
}

/// Network `id`'s leg: names and MACs. Both MACs are locally administered unicast addresses:
/// `02:6d:..` (host end, "m") and `02:67:..` (namespace end, "g"), then four bytes of a hash
/// of the ID.
pub fn leg(id: &str) -> Leg {
    let [a, b, c, d, ..] = fnv1a(id.as_bytes()).to_be_bytes();
    Leg {
        host_if: leg_host(id),
        ns_if: LEG_NS_IF.to_string(),
        host_mac: [0x02, 0x6d, a, b, c, d],
        ns_mac: [0x02, 0x67, a, b, c, d],
    }
}

/// The MAC of a network's bridge on the host with underlay address `underlay_ip`: `02:62:`
/// ("b") and the address, locally administered unicast, distinct from every task's
/// (`02:42:..`) and leg's, and the same after a restart. A bridge without a MAC of its own
/// takes its lowest port's, and changes it when that port leaves: the tasks' gateway would
/// move to another MAC under them, and their replies go nowhere until ARP notices.
pub fn bridge_mac(underlay_ip: std::net::Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = underlay_ip.octets();
    [0x02, 0x62, a, b, c, d]
}

/// The network-side veth of a task: `ve-` and the task ID when it is at most 12 characters of
/// `[a-z0-9]`, else `ve-`, its first 7 such characters and 5 hex digits of a hash of the whole
/// ID (so two IDs with a common prefix still get different names).
pub fn veth_name(task_id: &str) -> String {
    let plain = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if task_id.len() <= VETH_ID_CHARS && !task_id.is_empty() && task_id.bytes().all(|b| plain(&b)) {
        return format!("{VETH_PREFIX}{task_id}");
    }
    let kept: String = task_id
        .bytes()
        .filter(plain)
        .take(VETH_HASHED_ID_CHARS)
        .map(char::from)
        .collect();
    let hash = fnv1a(task_id.as_bytes()) & 0xf_ffff;
    format!("{VETH_PREFIX}{kept}{hash:05x}")
}

/// The prefix of the temporary vxlan names of the overlay handle working in `dir`: two meshd
/// sharing an underlay namespace (each with its own directory) never touch each other's.
pub fn temp_vxlan_prefix(dir: &Path) -> String {
    let hash = fnv1a(dir.as_os_str().as_encoded_bytes()) & 0xffff;
    format!("{TEMP_VXLAN_PREFIX}{hash:04x}")
}

/// A temporary vxlan name: `prefix` and 5 hex digits of `serial`.
pub fn temp_vxlan_name(prefix: &str, serial: u32) -> String {
    format!("{prefix}{:05x}", serial & 0xf_ffff)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The six bytes of a link-layer address attribute, if it has six.
pub fn mac_from_bytes(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_ids_are_short_lowercase_alphanumerics() {
        for good in ["a", "net1", "abcdefghij12"] {
            assert!(valid_network_id(good), "{good}");
        }
        for bad in ["", "Net", "a-b", "abcdefghij123", "a.b", "a b"] {
            assert!(!valid_network_id(bad), "{bad}");
        }
    }

    #[test]
    fn netns_files_round_trip_and_foreign_files_are_ignored() {
        assert_eq!(netns_file("web"), "ns-web");
        assert_eq!(network_of_netns_file("ns-web"), Some("web"));
        assert_eq!(network_of_netns_file("ns-"), None);
        assert_eq!(network_of_netns_file("ns-Web"), None);
        assert_eq!(network_of_netns_file("task-1"), None);
    }

    #[test]
    fn short_plain_task_ids_appear_whole_in_veth_names() {
        assert_eq!(veth_name("abc123"), "ve-abc123");
        assert_eq!(veth_name("abcdefghijkl"), "ve-abcdefghijkl");
    }

    #[test]
    fn long_or_odd_task_ids_get_a_hashed_name_that_fits() {
        let a = veth_name("abc123def456ghi789jkl012m");
        let b = veth_name("abc123def456ghi789jkl012n");
        assert_ne!(a, b);
        assert!(a.starts_with("ve-abc123d"), "{a}");
        for id in ["t-1_x", "T1", "", "x".repeat(64).as_str(), "a.b/c"] {
            let name = veth_name(id);
            assert!(valid_ifname(&name), "{id:?} gave {name:?}");
        }
        // Stable across calls (and builds: FNV-1a, not the std hasher).
        assert_eq!(veth_name("t-1_x"), veth_name("t-1_x"));
        assert_ne!(veth_name("t-1_x"), veth_name("t1x"));
    }

    #[test]
    fn temporary_vxlan_names_fit_and_differ_per_directory() {
        let a = temp_vxlan_prefix(Path::new("/var/lib/mesh/overlay"));
        let b = temp_vxlan_prefix(Path::new("/var/lib/mesh2/overlay"));
        assert_ne!(a, b);
        let name = temp_vxlan_name(&a, 0xfff_ffff);
        assert!(valid_ifname(&name), "{name}");
        assert!(name.starts_with(&a));
        assert_eq!(temp_vxlan_name("mvx0000", 0x1f), "mvx00000001f");
    }

    #[test]
    fn legs_fit_and_keep_their_macs() {
        let leg = leg("abcdefghij12");
        assert_eq!(leg.host_if, "mg-abcdefghij12");
        assert!(valid_ifname(&leg.host_if));
        assert_eq!(leg.ns_if, "gw0");
        assert_eq!(leg, super::leg("abcdefghij12"));
        for mac in [leg.host_mac, leg.ns_mac] {
            assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        }
        assert_ne!(leg.host_mac, leg.ns_mac);
        assert_ne!(super::leg("net1").host_mac, super::leg("net2").host_mac);
        // Golden: a restart (or another build) must derive the same MACs.
        assert_eq!(super::leg("net1").host_mac[..2], [0x02, 0x6d]);
        assert_eq!(
            super::leg("net1").ns_mac[2..],
            super::leg("net1").host_mac[2..]
        );
    }

    #[test]
    fn bridges_get_a_fixed_mac_per_host_apart_from_tasks_and_legs() {
        let mac = bridge_mac(std::net::Ipv4Addr::new(198, 18, 0, 7));
        assert_eq!(mac, [0x02, 0x62, 198, 18, 0, 7]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(mac, bridge_mac(std::net::Ipv4Addr::new(198, 18, 0, 8)));
        let leg = leg("net1");
        for other in [leg.host_mac, leg.ns_mac] {
            assert_ne!(mac[..2], other[..2]);
        }
        // Tasks' MACs are 02:42 and their address.
        assert_ne!(mac[1], 0x42);
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["eth0", "ve-abcdefghijkl", "x"] {
            assert!(valid_ifname(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    #[test]
    fn macs_format_as_lowercase_colon_pairs() {
        assert_eq!(
            fmt_mac(&[0x02, 0x42, 0x0a, 0x00, 0x00, 0xff]),
            "02:42:0a:00:00:ff"
        );
        assert_eq!(
            mac_from_bytes(&[1, 2, 3, 4, 5, 6]),
            Some([1, 2, 3, 4, 5, 6])
        );
        assert_eq!(mac_from_bytes(&[1, 2, 3]), None);
    }
}
