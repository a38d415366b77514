//! The pure half of reconciliation: checking a desired state, and the difference between what a
//! network should have and what the kernel holds, as plain data. The I/O half (`reconcile`)
//! dumps the kernel into these types and carries out the differences.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use super::error::{OverlayError, Result};
use super::names::{self, fmt_mac};
use super::{HostOverlay, NetworkPlan, RemoteEndpoint};

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Smallest overlay MTU: IPv4's minimum.
pub const MIN_MTU: u32 = 68;
/// Largest MTU a bridge or veth accepts.
pub const MAX_MTU: u32 = 65535;

/// Checks `desired` is consistent before anything is changed: IDs, VNIs, addresses inside
/// their subnets, interface names, and no IP, MAC or veth name used twice in one network.
pub fn validate(desired: &HostOverlay) -> Result<()> {
    let invalid = |msg: String| Err(OverlayError::InvalidPlan(msg));
    if desired.data_path_port == 0 {
        return invalid("data path port 0".into());
    }
    let mut ids = HashSet::new();
    let mut vnis = HashSet::new();
    for net in &desired.networks {
        if !names::valid_network_id(&net.id) {
            return invalid(format!(
                "network ID {:?}: use 1 to 12 characters of [a-z0-9]",
                net.id
            ));
        }
        if !ids.insert(net.id.as_str()) {
            return invalid(format!("network {} is listed twice", net.id));
        }
        if !vnis.insert(net.vni) {
            return invalid(format!("VNI {} is used by two networks", net.vni));
        }
        validate_network(net).map_err(|msg| {
            OverlayError::InvalidPlan(format!("network {} (VNI {}): {msg}", net.id, net.vni))
        })?;
    }
    Ok(())
}

fn validate_network(net: &NetworkPlan) -> std::result::Result<(), String> {
    if net.vni == 0 || net.vni > MAX_VNI {
        return Err(format!("VNI must be 1 to {MAX_VNI}"));
    }
    if net.prefix_len > 30 {
        return Err(format!("prefix length /{} leaves no hosts", net.prefix_len));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&net.mtu) {
        return Err(format!("MTU {} is outside {MIN_MTU}..={MAX_MTU}", net.mtu));
    }
    let inside = |ip: Ipv4Addr| in_subnet(ip, net.subnet, net.prefix_len);
    if !inside(net.gateway) {
        return Err(format!(
            "gateway {} is outside {}/{}",
            net.gateway, net.subnet, net.prefix_len
        ));
    }
    let mut ips = HashSet::from([net.gateway]);
    let mut macs = HashSet::new();
    let mut veths = HashSet::new();
    let mut attachments = HashSet::new();
    for ep in &net.local {
        if ep.task_id.is_empty() {
            return Err("a local endpoint has an empty task ID".into());
        }
        if !names::valid_ifname(&ep.ifname) {
            return Err(format!(
                "task {}: interface name {:?} is not valid",
                ep.task_id, ep.ifname
            ));
        }
        if !veths.insert(names::veth_name(&ep.task_id)) {
            return Err(format!("task {} is attached twice", ep.task_id));
        }
        if !attachments.insert((&ep.netns, &ep.ifname)) {
            return Err(format!(
                "task {}: {} in {} is used twice",
                ep.task_id,
                ep.ifname,
                ep.netns.display()
            ));
        }
        check_endpoint(&mut ips, &mut macs, &inside, ep.ip, ep.mac)?;
    }
    for ep in &net.remote {
        check_endpoint(&mut ips, &mut macs, &inside, ep.ip, ep.mac)?;
    }
    Ok(())
}

fn check_endpoint(
    ips: &mut HashSet<Ipv4Addr>,
    macs: &mut HashSet<[u8; 6]>,
    inside: &impl Fn(Ipv4Addr) -> bool,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> std::result::Result<(), String> {
    if !inside(ip) {
        return Err(format!("endpoint {ip} is outside the subnet"));
    }
    if !ips.insert(ip) {
        return Err(format!("{ip} is used twice (or is the gateway)"));
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(format!("{}: not a unicast MAC", fmt_mac(&mac)));
    }
    if !macs.insert(mac) {
        return Err(format!("MAC {} is used twice", fmt_mac(&mac)));
    }
    Ok(())
}

/// Whether `ip` is inside `subnet/prefix_len`.
pub fn in_subnet(ip: Ipv4Addr, subnet: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(subnet) & mask
}

/// A difference between two sets of entries: what to write (create or overwrite) and what to
/// delete. Deletions go first, so a write never collides with an entry about to go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff<T> {
    /// Entries to create, or to overwrite in place.
    pub set: Vec<T>,
    /// Entries to delete, as the kernel holds them.
    pub remove: Vec<T>,
}

impl<T> Diff<T> {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Neighbour entries (IP → MAC) on the vxlan device: one per remote endpoint, which is what
/// lets the vxlan device answer ARP for it (proxy).
pub fn diff_neighbours(
    desired: &[RemoteEndpoint],
    current: &[(Ipv4Addr, [u8; 6])],
) -> Diff<(Ipv4Addr, [u8; 6])> {
    let want: BTreeMap<Ipv4Addr, [u8; 6]> = desired.iter().map(|ep| (ep.ip, ep.mac)).collect();
    let have: BTreeMap<Ipv4Addr, [u8; 6]> = current.iter().copied().collect();
    Diff {
        set: want
            .iter()
            .filter(|(ip, mac)| have.get(ip) != Some(mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
        remove: have
            .iter()
            .filter(|(ip, _)| !want.contains_key(ip))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
    }
}

/// FDB entries (MAC → remote VTEP) of the vxlan device itself (NTF_SELF): exactly one
/// destination per remote MAC. Any other destination of a MAC, and any MAC no remote endpoint
/// has, goes.
pub fn diff_fdb(
    desired: &[RemoteEndpoint],
    current: &[([u8; 6], Ipv4Addr)],
) -> Diff<([u8; 6], Ipv4Addr)> {
    let want: BTreeMap<[u8; 6], Ipv4Addr> = desired.iter().map(|ep| (ep.mac, ep.vtep)).collect();
    let have: BTreeSet<([u8; 6], Ipv4Addr)> = current.iter().copied().collect();
    Diff {
        set: want
            .iter()
            .filter(|(mac, vtep)| !have.contains(&(**mac, **vtep)))
            .map(|(mac, vtep)| (*mac, *vtep))
            .collect(),
        remove: have
            .iter()
            .filter(|(mac, vtep)| want.get(mac) != Some(vtep))
            .copied()
            .collect(),
    }
}

/// IPv4 addresses of one device: exactly the desired ones.
pub fn diff_addresses(
    desired: &[(Ipv4Addr, u8)],
    current: &[(Ipv4Addr, u8)],
) -> Diff<(Ipv4Addr, u8)> {
    Diff {
        set: desired
            .iter()
            .filter(|a| !current.contains(a))
            .copied()
            .collect(),
        remove: current
            .iter()
            .filter(|a| !desired.contains(a))
            .copied()
            .collect(),
    }
}

/// The network-side veths in a network namespace that no local endpoint wants: every device
/// named `ve-*` that is not in `desired`.
pub fn stale_veths<'a>(desired: &BTreeSet<String>, current: &'a [String]) -> Vec<&'a str> {
    current
        .iter()
        .filter(|name| name.starts_with(names::VETH_PREFIX) && !desired.contains(*name))
        .map(String::as_str)
        .collect()
}

/// What the kernel says about one device, as far as the overlay cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// Its index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is administratively up.
    pub up: bool,
    /// The index of the bridge it is enslaved to, if any.
    pub master: Option<u32>,
    /// Its MAC.
    pub mac: Option<[u8; 6]>,
}

/// What one device should look like; `None` fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkWant {
    /// Its MTU.
    pub mtu: u32,
    /// The bridge it must be enslaved to.
    pub master: Option<u32>,
    /// Its MAC.
    pub mac: Option<[u8; 6]>,
}

/// The changes that bring a device from `have` to `want` (and up), as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFixes {
    /// Set this MTU.
    pub mtu: Option<u32>,
    /// Enslave to this bridge.
    pub master: Option<u32>,
    /// Set this MAC.
    pub mac: Option<[u8; 6]>,
    /// Bring it up.
    pub up: bool,
}

impl LinkFixes {
    /// The fixes that bring `have` to `want`.
    pub fn between(have: &LinkFacts, want: &LinkWant) -> LinkFixes {
        LinkFixes {
            mtu: (have.mtu != want.mtu).then_some(want.mtu),
            master: want.master.filter(|m| have.master != Some(*m)),
            mac: want.mac.filter(|m| have.mac != Some(*m)),
            up: !have.up,
        }
    }

    /// Whether the device is already as wanted.
    pub fn is_empty(&self) -> bool {
        *self == LinkFixes::default()
    }

    /// What is fixed, for the report: "mtu 1450, up".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu {mtu}"));
        }
        if let Some(mac) = &self.mac {
            parts.push(format!("address {}", fmt_mac(mac)));
        }
        if self.master.is_some() {
            parts.push("master".to_string());
        }
        if self.up {
            parts.push("up".to_string());
        }
        parts.join(", ")
    }
}

/// The configuration of a vxlan device that cannot change without recreating it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanFacts {
    /// Its VNI.
    pub vni: Option<u32>,
    /// Its UDP destination port.
    pub port: Option<u16>,
    /// Its local (source) address.
    pub local: Option<Ipv4Addr>,
    /// Whether it learns remote MACs from received frames.
    pub learning: bool,
    /// Whether it answers ARP from its neighbour table.
    pub proxy: bool,
}

impl VxlanFacts {
    /// The configuration a network's vxlan must have.
    pub fn wanted(vni: u32, port: u16, local: Ipv4Addr) -> VxlanFacts {
        VxlanFacts {
            vni: Some(vni),
            port: Some(port),
            local: Some(local),
            learning: false,
            proxy: true,
        }
    }

    /// Why `self` (the kernel's) is not `want`, or None when it is.
    pub fn mismatch(&self, want: &VxlanFacts) -> Option<String> {
        let show = |f: &VxlanFacts| {
            format!(
                "VNI {:?} port {:?} local {:?} learning {} proxy {}",
                f.vni, f.port, f.local, f.learning, f.proxy
            )
        };
        (self != want).then(|| format!("has {}, wants {}", show(self), show(want)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::overlay::LocalEndpoint;

    const MAC_A: [u8; 6] = [2, 0x42, 10, 0, 0, 2];
    const MAC_B: [u8; 6] = [2, 0x42, 10, 0, 0, 3];
    const MAC_C: [u8; 6] = [2, 0x42, 10, 0, 0, 4];

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn remote(last: u8, mac: [u8; 6], host: u8) -> RemoteEndpoint {
        RemoteEndpoint {
            ip: ip(last),
            mac,
            vtep: Ipv4Addr::new(198, 18, 0, host),
        }
    }

    fn network() -> NetworkPlan {
        NetworkPlan {
            id: "net1".into(),
            vni: 4097,
            subnet: ip(0),
            prefix_len: 24,
            gateway: ip(1),
            mtu: 1450,
            local: vec![LocalEndpoint {
                task_id: "task1".into(),
                netns: PathBuf::from("/run/t1"),
                ifname: "eth0".into(),
                ip: ip(2),
                mac: MAC_A,
            }],
            remote: vec![remote(3, MAC_B, 2)],
        }
    }

    fn host(networks: Vec<NetworkPlan>) -> HostOverlay {
        HostOverlay {
            underlay_ip: Ipv4Addr::new(198, 18, 0, 1),
            data_path_port: 4789,
            networks,
        }
    }

    fn rejected(networks: Vec<NetworkPlan>, needle: &str) {
        let err = validate(&host(networks)).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }

    #[test]
    fn a_consistent_plan_passes() {
        validate(&host(vec![network()])).unwrap();
        validate(&host(vec![])).unwrap();
    }

    #[test]
    fn each_inconsistency_is_named() {
        let mut bad_id = network();
        bad_id.id = "Net-1".into();
        rejected(vec![bad_id], "network ID");
        rejected(vec![network(), network()], "listed twice");
        let mut same_vni = network();
        same_vni.id = "net2".into();
        rejected(vec![network(), same_vni], "VNI 4097 is used by two");
        let mut vni = network();
        vni.vni = 1 << 24;
        rejected(vec![vni], "VNI must be");
        let mut mtu = network();
        mtu.mtu = 40;
        rejected(vec![mtu], "MTU 40");
        let mut gateway = network();
        gateway.gateway = Ipv4Addr::new(10, 1, 0, 1);
        rejected(vec![gateway], "gateway 10.1.0.1 is outside");
        let mut outside = network();
        outside.remote[0].ip = Ipv4Addr::new(10, 0, 1, 3);
        rejected(vec![outside], "10.0.1.3 is outside");
        let mut dup_ip = network();
        dup_ip.remote.push(remote(3, MAC_C, 3));
        rejected(vec![dup_ip], "10.0.0.3 is used twice");
        let mut dup_mac = network();
        dup_mac.remote.push(remote(4, MAC_A, 3));
        rejected(vec![dup_mac], "MAC 02:42:0a:00:00:02 is used twice");
        let mut multicast = network();
        multicast.remote[0].mac[0] = 1;
        rejected(vec![multicast], "not a unicast MAC");
        let mut ifname = network();
        ifname.local[0].ifname = "eth0:1".into();
        rejected(vec![ifname], "interface name");
        let mut twice = network();
        let mut again = twice.local[0].clone();
        (again.ip, again.mac, again.ifname) = (ip(9), MAC_C, "eth1".into());
        twice.local.push(again);
        rejected(vec![twice], "task task1 is attached twice");
        let mut port = host(vec![]);
        port.data_path_port = 0;
        assert!(validate(&port).is_err());
    }

    #[test]
    fn subnets_match_by_prefix() {
        assert!(in_subnet(ip(200), ip(0), 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 1, 1), ip(0), 24));
        assert!(in_subnet(
            Ipv4Addr::new(10, 200, 1, 1),
            Ipv4Addr::new(10, 0, 0, 0),
            8
        ));
        assert!(in_subnet(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::UNSPECIFIED,
            0
        ));
        assert!(in_subnet(ip(5), ip(5), 32));
        assert!(!in_subnet(ip(6), ip(5), 32));
    }

    #[test]
    fn neighbours_are_added_fixed_and_removed() {
        let desired = [remote(3, MAC_B, 2), remote(4, MAC_C, 3)];
        let current = [(ip(3), MAC_A), (ip(9), MAC_A), (ip(4), MAC_C)];
        let diff = diff_neighbours(&desired, &current);
        assert_eq!(diff.set, vec![(ip(3), MAC_B)]);
        assert_eq!(diff.remove, vec![(ip(9), MAC_A)]);
        let converged = [(ip(3), MAC_B), (ip(4), MAC_C)];
        assert!(diff_neighbours(&desired, &converged).is_empty());
    }

    #[test]
    fn fdb_keeps_exactly_one_destination_per_remote_mac() {
        let vtep = |h| Ipv4Addr::new(198, 18, 0, h);
        let desired = [remote(3, MAC_B, 2), remote(4, MAC_C, 3)];
        // MAC_B points at two VTEPs, MAC_C is missing, MAC_A belongs to no remote endpoint.
        let current = [(MAC_B, vtep(2)), (MAC_B, vtep(5)), (MAC_A, vtep(2))];
        let diff = diff_fdb(&desired, &current);
        assert_eq!(diff.set, vec![(MAC_C, vtep(3))]);
        assert_eq!(diff.remove, vec![(MAC_A, vtep(2)), (MAC_B, vtep(5))]);
        // A task that moved host: its MAC's destination changes.
        let moved = [(MAC_B, vtep(9)), (MAC_C, vtep(3))];
        let diff = diff_fdb(&desired, &moved);
        assert_eq!(diff.set, vec![(MAC_B, vtep(2))]);
        assert_eq!(diff.remove, vec![(MAC_B, vtep(9))]);
        assert!(diff_fdb(&desired, &[(MAC_C, vtep(3)), (MAC_B, vtep(2))]).is_empty());
        assert!(diff_fdb(&[], &[]).is_empty());
    }

    #[test]
    fn addresses_converge_to_exactly_the_desired_set() {
        let diff = diff_addresses(&[(ip(1), 24)], &[(ip(1), 16), (ip(7), 24)]);
        assert_eq!(diff.set, vec![(ip(1), 24)]);
        assert_eq!(diff.remove, vec![(ip(1), 16), (ip(7), 24)]);
        assert!(diff_addresses(&[(ip(1), 24)], &[(ip(1), 24)]).is_empty());
    }

    #[test]
    fn only_unwanted_veths_are_stale() {
        let desired = BTreeSet::from(["ve-a".to_string()]);
        let current = ["lo", "br0", "vxlan0", "ve-a", "ve-b"].map(String::from);
        assert_eq!(stale_veths(&desired, &current), vec!["ve-b"]);
    }

    #[test]
    fn link_fixes_list_only_what_differs() {
        let have = LinkFacts {
            index: 5,
            mtu: 1500,
            up: false,
            master: None,
            mac: Some(MAC_A),
        };
        let want = LinkWant {
            mtu: 1450,
            master: Some(3),
            mac: Some(MAC_A),
        };
        let fixes = LinkFixes::between(&have, &want);
        assert_eq!(fixes.mtu, Some(1450));
        assert_eq!(fixes.master, Some(3));
        assert_eq!(fixes.mac, None);
        assert!(fixes.up);
        assert_eq!(fixes.describe(), "mtu 1450, master, up");
        let good = LinkFacts {
            mtu: 1450,
            up: true,
            master: Some(3),
            ..have
        };
        assert!(LinkFixes::between(&good, &want).is_empty());
    }

    #[test]
    fn a_vxlan_with_other_settings_is_a_mismatch() {
        let want = VxlanFacts::wanted(4097, 4789, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(want.mismatch(&want), None);
        let learning = VxlanFacts {
            learning: true,
            ..want.clone()
        };
        assert!(learning.mismatch(&want).unwrap().contains("learning true"));
        let port = VxlanFacts {
            port: Some(4790),
            ..want.clone()
        };
        assert!(port.mismatch(&want).is_some());
    }
}
