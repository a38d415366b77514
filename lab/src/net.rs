//! The lab's wires: a switch namespace holding a bridge, one veth per host from the host's
//! `eth0` to a switch port, and the switch's nftables table that emulates loss and partitions.
//!
//! ```text
//!  host ns mlab.L.m1        switch ns mlab.L.switch            host ns mlab.L.w1
//!  eth0 198.18.0.1 ─veth─ p-m1 ─┐                    ┌─ p-w1 ─veth─ eth0 198.18.0.4
//!                               └──── br0 (nft) ─────┘
//! ```
//!
//! A link with a delay is carried by the link shim instead: `p-HOST` is not on the bridge, the
//! shim copies frames between it and `d-HOST`, whose veth peer `b-HOST` is the bridge port.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::error::Result;
use crate::spec::{switch_netns, switch_port, LinkParams, Role, UNDERLAY_PREFIX};
use crate::sys::{self, run_in, run_in_with_input};
use crate::xdp;

/// The bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// The host-side interface name.
pub const HOST_IF: &str = "eth0";
/// The nftables table in the switch namespace.
const SWITCH_TABLE: &str = "meshlab";

/// The shim-side veth of a delayed link.
pub fn shim_port(host: &str) -> String {
    format!("d-{host}")
}

/// The bridge port of a delayed link (the peer of the shim port).
pub fn shim_bridge_port(host: &str) -> String {
    format!("b-{host}")
}

/// The interface through which a host's frames enter the bridge.
pub fn bridge_port(host: &str, link: &LinkParams) -> String {
    if link.needs_shim() {
        shim_bridge_port(host)
    } else {
        switch_port(host)
    }
}

/// Creates the switch namespace, its bridge and its (empty) nftables table.
pub fn create_switch(lab: &str) -> Result<()> {
    let ns = switch_netns(lab);
    sys::add_netns(&ns)?;
    run_in(&ns, "ip", ["link", "add", BRIDGE, "type", "bridge"])?;
    run_in(&ns, "ip", ["link", "set", BRIDGE, "up"])?;
    apply_switch_rules(lab, &[], &[])
}

/// Connects host namespace `host_ns` to the switch: veth, address, MTU, up.
pub fn connect_host(
    lab: &str,
    host: &str,
    host_ns: &str,
    address: Ipv4Addr,
    link: &LinkParams,
) -> Result<()> {
    let sw = switch_netns(lab);
    let port = switch_port(host);
    let mtu = link.mtu().to_string();
    // A fixed MAC, as a real NIC has: after a power cycle the other hosts' ARP entries still hold.
    let mac = host_mac(address);
    run_in(
        &sw,
        "ip",
        [
            "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", HOST_IF, "address",
            &mac, "mtu", &mtu, "netns", host_ns,
        ],
    )?;
    let cidr = format!("{address}/{UNDERLAY_PREFIX}");
    run_in(host_ns, "ip", ["addr", "add", &cidr, "dev", HOST_IF])?;
    run_in(host_ns, "ip", ["link", "set", HOST_IF, "up"])?;
    if link.needs_shim() {
        add_shim_ports(&sw, host, &mtu)?;
        // The shim copies frames byte for byte: they must be whole, with final checksums.
        disable_offloads(host_ns, HOST_IF)?;
        disable_offloads(&sw, &shim_port(host))?;
        disable_offloads(&sw, &port)?;
    } else {
        run_in(&sw, "ip", ["link", "set", &port, "master", BRIDGE])?;
    }
    run_in(&sw, "ip", ["link", "set", &port, "up"])?;
    Ok(())
}

/// meshd's `lb_mode` that needs the lab's help.
pub const LB_MODE_XDP: &str = "xdp";

/// Readies a connected host's link for meshd's `lb_mode`. Only XDP needs anything: the switch
/// port gets an XDP pass program (a veth delivers what its peer sends with `XDP_TX` only when
/// it runs XDP itself), and a client's `eth0` sends full checksums (tx checksum offload off),
/// since the XDP program that rewrites a client's packet and bounces it sees its bytes, not the
/// skb's partial-checksum state.
pub fn prepare_lb_mode(
    lab: &str,
    host: &str,
    host_ns: &str,
    role: Role,
    lb_mode: Option<&str>,
) -> Result<()> {
    if lb_mode != Some(LB_MODE_XDP) {
        return Ok(());
    }
    xdp::attach_pass(&switch_netns(lab), &switch_port(host))?;
    if role == Role::Client {
        run_in(host_ns, "ethtool", ["-K", HOST_IF, "tx", "off"])?;
    }
    Ok(())
}

fn add_shim_ports(sw: &str, host: &str, mtu: &str) -> Result<()> {
    let shim = shim_port(host);
    let bridge = shim_bridge_port(host);
    run_in(
        sw,
        "ip",
        [
            "link", "add", &shim, "mtu", mtu, "type", "veth", "peer", "name", &bridge, "mtu", mtu,
        ],
    )?;
    run_in(sw, "ip", ["link", "set", &bridge, "master", BRIDGE, "up"])?;
    run_in(sw, "ip", ["link", "set", &shim, "up"])?;
    Ok(())
}

fn disable_offloads(ns: &str, dev: &str) -> Result<()> {
    run_in(
        ns,
        "ethtool",
        [
            "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    )
    .map(drop)
}

/// The MAC of a host's eth0: locally administered, the IPv4 address in the low four bytes.
pub fn host_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Removes a host's switch-side ports (the host side goes with its namespace).
pub fn disconnect_host(lab: &str, host: &str) -> Result<()> {
    let sw = switch_netns(lab);
    for dev in [switch_port(host), shim_port(host)] {
        // Deleting one end of a veth deletes both; a missing device is what we want.
        let _ = run_in(&sw, "ip", ["link", "del", &dev]);
    }
    Ok(())
}

/// Sets a connected host's MTU on every interface of its link.
pub fn set_mtu(lab: &str, host: &str, host_ns: &str, link: &LinkParams) -> Result<()> {
    let sw = switch_netns(lab);
    let mtu = link.mtu().to_string();
    run_in(host_ns, "ip", ["link", "set", HOST_IF, "mtu", &mtu])?;
    run_in(&sw, "ip", ["link", "set", &switch_port(host), "mtu", &mtu])?;
    if link.needs_shim() {
        run_in(&sw, "ip", ["link", "set", &shim_port(host), "mtu", &mtu])?;
        run_in(
            &sw,
            "ip",
            ["link", "set", &shim_bridge_port(host), "mtu", &mtu],
        )?;
    }
    Ok(())
}

/// A host's loss rule input: the bridge port its frames arrive on and its loss percentage.
pub struct LossRule {
    /// The bridge port carrying the host's egress.
    pub port: String,
    /// Percent of frames dropped.
    pub loss_pct: f64,
}

/// Replaces the switch's nftables table with one holding exactly these partitions (pairs of
/// underlay addresses cut both ways) and loss rules. One atomic batch: no window in which the
/// old rules are gone and the new ones not yet in force.
pub fn apply_switch_rules(
    lab: &str,
    cuts: &[(Ipv4Addr, Ipv4Addr, String)],
    losses: &[LossRule],
) -> Result<()> {
    let ruleset = switch_ruleset(cuts, losses);
    run_in_with_input(&switch_netns(lab), "nft", &["-f", "-"], &ruleset).map(drop)
}

/// The nft script for `apply_switch_rules`: pure, so its text is unit-tested.
pub fn switch_ruleset(cuts: &[(Ipv4Addr, Ipv4Addr, String)], losses: &[LossRule]) -> String {
    let mut script = String::new();
    // Declaring the table first makes the delete succeed even when it did not exist yet.
    let _ = writeln!(
        script,
        "table bridge {SWITCH_TABLE}\ndelete table bridge {SWITCH_TABLE}"
    );
    let _ = writeln!(script, "table bridge {SWITCH_TABLE} {{\n  chain forward {{");
    let _ = writeln!(
        script,
        "    type filter hook forward priority 0; policy accept;"
    );
    for (a, b, label) in cuts {
        for (from, to) in [(a, b), (b, a)] {
            let _ = writeln!(
                script,
                "    ip saddr {from} ip daddr {to} counter drop comment \"partition {label}\""
            );
        }
    }
    for loss in losses {
        // numgen random mod 10000 gives loss in steps of 0.01 %.
        let threshold = (loss.loss_pct * 100.0).round() as u32;
        let sample = match threshold {
            0 => continue,
            // numgen's values are 0..9999, so "< 10000" is out of its range: drop everything.
            10_000.. => String::new(),
            _ => format!("numgen random mod 10000 < {threshold} "),
        };
        let _ = writeln!(
            script,
            "    iifname \"{}\" {sample}counter drop comment \"loss {}%\"",
            loss.port, loss.loss_pct
        );
    }
    let _ = writeln!(script, "  }}\n}}");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_cuts_both_directions_and_scales_loss() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        let script = switch_ruleset(
            &[(a, b, "m1<->m2".into())],
            &[
                LossRule {
                    port: "p-w1".into(),
                    loss_pct: 2.5,
                },
                LossRule {
                    port: "p-w2".into(),
                    loss_pct: 0.0,
                },
                LossRule {
                    port: "p-c1".into(),
                    loss_pct: 100.0,
                },
            ],
        );
        assert!(script.contains("ip saddr 198.18.0.1 ip daddr 198.18.0.2 counter drop"));
        assert!(script.contains("ip saddr 198.18.0.2 ip daddr 198.18.0.1 counter drop"));
        assert!(script.contains("iifname \"p-w1\" numgen random mod 10000 < 250 counter drop"));
        assert!(!script.contains("p-w2"), "zero loss adds no rule");
        assert!(
            script.contains("iifname \"p-c1\" counter drop"),
            "total loss needs no sampling"
        );
        assert!(script.starts_with("table bridge meshlab\ndelete table bridge meshlab\n"));
    }

    #[test]
    fn delayed_links_enter_the_bridge_through_the_shim() {
        let plain = LinkParams::default();
        let delayed = LinkParams {
            delay_ms: Some(10),
            ..Default::default()
        };
        assert_eq!(bridge_port("w1", &plain), "p-w1");
        assert_eq!(bridge_port("w1", &delayed), "b-w1");
    }

    #[test]
    fn host_macs_are_unicast_local_and_follow_the_address() {
        assert_eq!(host_mac(Ipv4Addr::new(198, 18, 0, 4)), "02:00:c6:12:00:04");
    }
}
