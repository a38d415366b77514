//! The I/O half of reconciliation: dump one network's kernel state, compare it with its plan
//! (through `plan`), and carry out the differences, recording each change.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};

use super::error::{OverlayError, Result};
use super::names::{self as ifnames, veth_name, BRIDGE, LEG_HOST_ADDR, VXLAN};
use super::netlink::{Link, Netlink};
use super::netns::{self, Netns};
use super::plan::{self, LinkFixes, LinkWant, VxlanFacts};
use super::report::{Action, Applied, Skipped};
use super::{HostOverlay, LocalEndpoint, NetworkPlan, DEFAULT_ROUTE_IFNAME};

/// What converging one network needs besides its plan.
pub struct Ctx<'a> {
    /// A connection to the underlay namespace, where vxlan devices are born.
    pub underlay: &'a Netlink,
    /// The whole host's plan (underlay address, data-path port).
    pub host: &'a HostOverlay,
    /// Where the network's namespace is pinned.
    pub netns_path: PathBuf,
    /// A name no device of the underlay has, for a vxlan before it moves.
    pub temp_name: String,
}

/// Converges one network: its namespace, bridge, vxlan, local endpoints and remote entries.
pub async fn network(ctx: &Ctx<'_>, net: &NetworkPlan, applied: &mut Applied) -> Result<()> {
    if !netns::is_pinned(&ctx.netns_path) {
        netns::create_pinned(&ctx.netns_path)?;
        applied.push(&net.id, Action::NetworkCreated);
    }
    let ns = Netns::open_pinned(&ctx.netns_path)?.ok_or_else(|| OverlayError::Namespace {
        operation: "opening",
        path: ctx.netns_path.clone(),
        source: std::io::Error::other("not a pinned namespace after creating it"),
    })?;
    let nl = Netlink::connect(&ns)?;
    let links = nl.links().await?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        let want = LinkWant {
            mtu: lo.facts.mtu,
            ..LinkWant::default()
        };
        fix_link(&nl, lo, &want, &net.id, applied).await?;
    }
    let bridge = ensure_bridge(&nl, ctx.host.underlay_ip, net, &links, applied).await?;
    let vxlan = ensure_vxlan(ctx, &ns, &nl, net, bridge, &links, applied).await?;

    let wanted: BTreeSet<String> = net.local.iter().map(|ep| veth_name(&ep.task_id)).collect();
    let names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    for stale in plan::stale_veths(&wanted, &names) {
        if let Some(link) = links.iter().find(|l| l.name == stale) {
            nl.del_link(link.facts.index, stale).await?;
            applied.push(
                &net.id,
                Action::DeviceRemoved {
                    device: stale.to_string(),
                },
            );
        }
    }
    // One task's trouble (a foreign device under its interface name, ...) must not keep the
    // others, or the remote entries, from converging.
    let mut first_error = None;
    for ep in &net.local {
        if let Err(err) = endpoint(&nl, net, bridge, ep, applied).await {
            first_error.get_or_insert(err);
        }
    }
    remote_entries(&nl, net, vxlan, applied).await?;
    if let Err(err) = leg(ctx, &ns, &nl, net, applied).await {
        first_error.get_or_insert(err);
    }
    first_error.map_or(Ok(()), Err)
}

/// The sysctl that makes the network namespace route between its leg and its bridge.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Converges the network's leg: the veth pair `mg-<id>` (underlay namespace) / `gw0` (network
/// namespace, not on the bridge, no address), both up with their fixed MACs and the underlay
/// device's MTU; forwarding on in the network namespace; a permanent neighbour
/// `169.254.0.2 → mg-<id>'s MAC` on `gw0` and the default route `via 169.254.0.2 dev gw0
/// onlink`. Ingress traffic enters the network through it, and the tasks' replies to
/// addresses outside the overlay leave through it.
async fn leg(
    ctx: &Ctx<'_>,
    ns: &Netns,
    nl: &Netlink,
    net: &NetworkPlan,
    applied: &mut Applied,
) -> Result<()> {
    let leg = ifnames::leg(&net.id);
    let mtu = leg_mtu(ctx).await?;
    let host = ctx.underlay.link(&leg.host_if).await?;
    let inner = nl.link(&leg.ns_if).await?;
    let paired = match (&host, &inner) {
        (Some(h), Some(i)) => {
            is_veth(h)
                && is_veth(i)
                && h.peer == Some(i.facts.index)
                && i.peer == Some(h.facts.index)
        }
        _ => false,
    };
    if !paired {
        let mut reason = String::new();
        if let Some(h) = &host {
            if !is_veth(h) {
                return Err(OverlayError::Conflict {
                    what: format!("device {}", leg.host_if),
                    netns: ctx.underlay.netns().to_string(),
                    detail: format!("a {} device, not network {}'s leg", kind_of(h), net.id),
                });
            }
            ctx.underlay.del_link(h.facts.index, &leg.host_if).await?;
            reason = format!("{} was not paired with {}", leg.host_if, leg.ns_if);
        }
        // Deleting the host end took its peer along; anything still called gw0 is stale.
        if let Some(i) = nl.link(&leg.ns_if).await? {
            nl.del_link(i.facts.index, &leg.ns_if).await?;
            reason = format!("{} was not paired with {}", leg.ns_if, leg.host_if);
        }
        let peer = LinkUnspec::new_with_name(&leg.ns_if)
            .mtu(mtu)
            .address(leg.ns_mac.to_vec())
            .setns_by_fd(ns.fd().as_raw_fd())
            .build();
        let message = LinkVeth::new(&leg.host_if, &leg.ns_if)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(mtu)
            .address(leg.host_mac.to_vec())
            .up()
            .build();
        ctx.underlay
            .add_link(
                message,
                format!(
                    "creating leg {} with peer {} in {}",
                    leg.host_if,
                    leg.ns_if,
                    ns.label()
                ),
            )
            .await?;
        applied.push(&net.id, created_or_recreated(&leg.host_if, reason));
    }
    let host = require_link(ctx.underlay, &leg.host_if).await?;
    let want = LinkWant {
        mtu,
        master: None,
        mac: Some(leg.host_mac),
    };
    fix_link(ctx.underlay, &host, &want, &net.id, applied).await?;
    let inner = require_link(nl, &leg.ns_if).await?;
    let want = LinkWant {
        mtu,
        master: None,
        mac: Some(leg.ns_mac),
    };
    fix_link(nl, &inner, &want, &net.id, applied).await?;
    sync_addresses(nl, &inner, &leg.ns_if, &[], &net.id, applied).await?;

    let forwarding = ns
        .run(|| {
            let value = std::fs::read_to_string(IP_FORWARD)?;
            if value.trim() == "1" {
                return Ok(false);
            }
            std::fs::write(IP_FORWARD, "1")?;
            Ok(true)
        })
        .map_err(|source| OverlayError::Io {
            operation: "enabling forwarding in the network namespace through",
            path: IP_FORWARD.into(),
            source,
        })?;
    if forwarding {
        applied.push(
            &net.id,
            Action::SysctlSet {
                key: "net.ipv4.ip_forward".into(),
                value: "1".into(),
            },
        );
    }

    let index = inner.facts.index;
    let neighbours = nl.neighbours(index).await?;
    if neighbours != [(LEG_HOST_ADDR, leg.host_mac)] {
        for (ip, _) in neighbours.iter().filter(|(ip, _)| *ip != LEG_HOST_ADDR) {
            nl.del_neighbour(index, *ip).await?;
        }
        if !neighbours.contains(&(LEG_HOST_ADDR, leg.host_mac)) {
            nl.set_neighbour(index, LEG_HOST_ADDR, leg.host_mac).await?;
            applied.push(
                &net.id,
                Action::NeighbourSet {
                    ip: LEG_HOST_ADDR,
                    mac: leg.host_mac,
                },
            );
        }
    }
    let routes = nl.default_routes().await?;
    if routes != [(Some(LEG_HOST_ADDR), Some(index))] {
        nl.replace_default_route(LEG_HOST_ADDR, index, &leg.ns_if, true)
            .await?;
        applied.push(
            &net.id,
            Action::RouteSet {
                device: leg.ns_if.clone(),
                gateway: LEG_HOST_ADDR,
            },
        );
    }
    Ok(())
}

/// The leg's MTU: the underlay device's (ingress packets are underlay-sized), or 1500 when no
/// device of the underlay namespace holds the underlay address.
async fn leg_mtu(ctx: &Ctx<'_>) -> Result<u32> {
    let Some(index) = ctx
        .underlay
        .device_with_address(ctx.host.underlay_ip)
        .await?
    else {
        return Ok(1500);
    };
    Ok(ctx
        .underlay
        .links()
        .await?
        .iter()
        .find(|l| l.facts.index == index)
        .map_or(1500, |l| l.facts.mtu))
}

/// Creates `br0` if it is missing (or is not a bridge), and fixes its MTU, MAC, state and
/// address. Returns its index.
async fn ensure_bridge(
    nl: &Netlink,
    underlay_ip: Ipv4Addr,
    net: &NetworkPlan,
    links: &[Link],
    applied: &mut Applied,
) -> Result<u32> {
    let existing = links.iter().find(|l| l.name == BRIDGE);
    let recreate = match existing {
        Some(l) if l.kind.as_deref() == Some("bridge") => None,
        Some(l) => {
            nl.del_link(l.facts.index, BRIDGE).await?;
            Some(format!("a {} device, not a bridge", kind_of(l)))
        }
        None => Some(String::new()),
    };
    let mac = ifnames::bridge_mac(underlay_ip);
    if let Some(reason) = recreate {
        let message = LinkBridge::new(BRIDGE)
            .mtu(net.mtu)
            .address(mac.to_vec())
            .build();
        nl.add_link(message, format!("creating bridge {BRIDGE}"))
            .await?;
        applied.push(&net.id, created_or_recreated(BRIDGE, reason));
    }
    let bridge = require_link(nl, BRIDGE).await?;
    let want = LinkWant {
        mtu: net.mtu,
        mac: Some(mac),
        ..LinkWant::default()
    };
    fix_link(nl, &bridge, &want, &net.id, applied).await?;
    let addresses = [(net.gateway, net.prefix_len)];
    sync_addresses(nl, &bridge, BRIDGE, &addresses, &net.id, applied).await?;
    Ok(bridge.facts.index)
}

/// Creates `vxlan0` if it is missing or configured otherwise than the plan says (VNI, port,
/// local address, learning, proxy cannot change in place), and fixes its MTU, master and
/// state. Returns its index.
async fn ensure_vxlan(
    ctx: &Ctx<'_>,
    ns: &Netns,
    nl: &Netlink,
    net: &NetworkPlan,
    bridge: u32,
    links: &[Link],
    applied: &mut Applied,
) -> Result<u32> {
    let want = VxlanFacts::wanted(net.vni, ctx.host.data_path_port, ctx.host.underlay_ip);
    let recreate = match links.iter().find(|l| l.name == VXLAN) {
        Some(l) => {
            let mismatch = match &l.vxlan {
                Some(facts) if l.kind.as_deref() == Some("vxlan") => facts.mismatch(&want),
                _ => Some(format!("a {} device, not a vxlan", kind_of(l))),
            };
            if mismatch.is_some() {
                nl.del_link(l.facts.index, VXLAN).await?;
            }
            mismatch
        }
        None => Some(String::new()),
    };
    if let Some(reason) = recreate {
        create_vxlan(ctx, ns, net).await?;
        applied.push(&net.id, created_or_recreated(VXLAN, reason));
    }
    let vxlan = require_link(nl, VXLAN).await?;
    let want = LinkWant {
        mtu: net.mtu,
        master: Some(bridge),
        mac: None,
    };
    fix_link(nl, &vxlan, &want, &net.id, applied).await?;
    Ok(vxlan.facts.index)
}

/// Creates the network's vxlan in the underlay under a temporary name (so its UDP socket is
/// the underlay's), then moves it into the network namespace, renamed `vxlan0` on the way.
async fn create_vxlan(ctx: &Ctx<'_>, ns: &Netns, net: &NetworkPlan) -> Result<()> {
    let (temp, port, local) = (
        &ctx.temp_name,
        ctx.host.data_path_port,
        ctx.host.underlay_ip,
    );
    let message = LinkVxlan::new(temp, net.vni)
        .port(port)
        .local(local)
        .learning(false)
        .proxy(true)
        .l2miss(false)
        .l3miss(false)
        .mtu(net.mtu)
        .build();
    ctx.underlay
        .add_link(
            message,
            format!(
                "creating vxlan {temp} (VNI {}, port {port}, local {local})",
                net.vni
            ),
        )
        .await?;
    let created = require_link(ctx.underlay, temp).await?;
    let moved = LinkUnspec::new_with_index(created.facts.index)
        .setns_by_fd(ns.fd().as_raw_fd())
        .name(VXLAN)
        .build();
    let result = ctx
        .underlay
        .set_link(
            moved,
            format!("moving vxlan {temp} into {} as {VXLAN}", ns.label()),
        )
        .await;
    if result.is_err() {
        // Leave nothing behind in the underlay; the move's error is the one to report.
        let _ = ctx.underlay.del_link(created.facts.index, temp).await;
    }
    result
}

/// Converges one local endpoint: its veth pair (recreated unless both ends are there and
/// paired), the network end on the bridge, the task end's MTU, MAC, address and route.
async fn endpoint(
    nl: &Netlink,
    net: &NetworkPlan,
    bridge: u32,
    ep: &LocalEndpoint,
    applied: &mut Applied,
) -> Result<()> {
    let Some(task_ns) = Netns::open_pinned(&ep.netns)? else {
        applied.skipped.push(Skipped {
            network: net.id.clone(),
            task_id: ep.task_id.clone(),
            reason: format!("task namespace {} is gone", ep.netns.display()),
        });
        return Ok(());
    };
    let tnl = Netlink::connect(&task_ns)?;
    let ve_name = veth_name(&ep.task_id);
    let device = format!("{}/{}", ep.task_id, ep.ifname);
    let ve = nl.link(&ve_name).await?;
    let inner = tnl.link(&ep.ifname).await?;
    let paired = match (&ve, &inner) {
        (Some(v), Some(i)) => {
            is_veth(v)
                && is_veth(i)
                && v.peer == Some(i.facts.index)
                && i.peer == Some(v.facts.index)
        }
        _ => false,
    };
    if !paired {
        let mut reason = String::new();
        if let Some(v) = &ve {
            nl.del_link(v.facts.index, &ve_name).await?;
            reason = format!("{ve_name} was not paired with {device}");
        }
        // Deleting our end took its peer along; whatever still holds the name is foreign.
        if let Some(i) = tnl.link(&ep.ifname).await? {
            if !is_veth(&i) {
                return Err(OverlayError::Conflict {
                    what: format!("device {}", ep.ifname),
                    netns: task_ns.label().to_string(),
                    detail: format!("a {} device, not task {}'s veth", kind_of(&i), ep.task_id),
                });
            }
            tnl.del_link(i.facts.index, &device).await?;
            reason = format!("{device} was a veth paired elsewhere");
        }
        create_veth(nl, &task_ns, net, bridge, ep, &ve_name).await?;
        applied.push(&net.id, created_or_recreated(&ve_name, reason));
    }
    let ve = require_link(nl, &ve_name).await?;
    let want = LinkWant {
        mtu: net.mtu,
        master: Some(bridge),
        mac: None,
    };
    fix_link(nl, &ve, &want, &net.id, applied).await?;

    let inner = require_link(&tnl, &ep.ifname).await?;
    let want = LinkWant {
        mtu: net.mtu,
        master: None,
        mac: Some(ep.mac),
    };
    let inner_named = Link {
        name: device.clone(),
        ..inner
    };
    fix_link(&tnl, &inner_named, &want, &net.id, applied).await?;
    let addresses = [(ep.ip, net.prefix_len)];
    sync_addresses(&tnl, &inner_named, &device, &addresses, &net.id, applied).await?;
    if ep.ifname == DEFAULT_ROUTE_IFNAME {
        let index = inner_named.facts.index;
        let routes = tnl.default_routes().await?;
        if routes != [(Some(net.gateway), Some(index))] {
            tnl.replace_default_route(net.gateway, index, &device, false)
                .await?;
            applied.push(
                &net.id,
                Action::RouteSet {
                    device,
                    gateway: net.gateway,
                },
            );
        }
    }
    Ok(())
}

/// Creates a task's veth pair from the network namespace: `ve_name` there, on the bridge, and
/// its peer directly inside the task's namespace under its final name, with its MAC and MTU.
async fn create_veth(
    nl: &Netlink,
    task_ns: &Netns,
    net: &NetworkPlan,
    bridge: u32,
    ep: &LocalEndpoint,
    ve_name: &str,
) -> Result<()> {
    let peer = LinkUnspec::new_with_name(&ep.ifname)
        .mtu(net.mtu)
        .address(ep.mac.to_vec())
        .setns_by_fd(task_ns.fd().as_raw_fd())
        .build();
    let message = LinkVeth::new(ve_name, &ep.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(net.mtu)
        .controller(bridge)
        .up()
        .build();
    nl.add_link(
        message,
        format!(
            "creating veth {ve_name} with peer {} in {}",
            ep.ifname,
            task_ns.label()
        ),
    )
    .await
}

/// Converges the vxlan's neighbour entries (IP → MAC, which its ARP proxy answers from) and
/// its own FDB (MAC → VTEP) to the remote endpoints.
async fn remote_entries(
    nl: &Netlink,
    net: &NetworkPlan,
    vxlan: u32,
    applied: &mut Applied,
) -> Result<()> {
    let diff = plan::diff_neighbours(&net.remote, &nl.neighbours(vxlan).await?);
    for (ip, mac) in diff.remove {
        nl.del_neighbour(vxlan, ip).await?;
        applied.push(&net.id, Action::NeighbourRemoved { ip, mac });
    }
    for (ip, mac) in diff.set {
        nl.set_neighbour(vxlan, ip, mac).await?;
        applied.push(&net.id, Action::NeighbourSet { ip, mac });
    }
    let diff = plan::diff_fdb(&net.remote, &nl.fdb(vxlan).await?);
    for (mac, vtep) in diff.remove {
        nl.del_fdb(vxlan, mac, vtep).await?;
        applied.push(&net.id, Action::FdbRemoved { mac, vtep });
    }
    for (mac, vtep) in diff.set {
        nl.set_fdb(vxlan, mac, vtep).await?;
        applied.push(&net.id, Action::FdbSet { mac, vtep });
    }
    Ok(())
}

/// Removes a network: every device of its namespace (a veth takes its peer with it: the task
/// end, or the leg's `mg-<id>` in the underlay), then the pin. Devices go explicitly rather than with the namespace, whose teardown
/// the kernel defers: the VNI and the task interfaces are free when this returns.
pub async fn remove_network(path: &Path) -> Result<()> {
    if let Some(ns) = Netns::open_pinned(path)? {
        let nl = Netlink::connect(&ns)?;
        for link in nl.links().await? {
            if link.name != "lo" {
                nl.del_link(link.facts.index, &link.name).await?;
            }
        }
    }
    netns::remove_pinned(path)
}

/// Deletes vxlan devices a crash left in the underlay under this handle's temporary prefix.
pub async fn remove_temp_vxlans(
    underlay: &Netlink,
    prefix: &str,
    applied: &mut Applied,
) -> Result<()> {
    for link in underlay.links().await? {
        if link.name.starts_with(prefix) && link.kind.as_deref() == Some("vxlan") {
            underlay.del_link(link.facts.index, &link.name).await?;
            applied.push("", Action::DeviceRemoved { device: link.name });
        }
    }
    Ok(())
}

/// The underlay MTU towards `peer`, or of the device holding `local` (see `underlay_mtu`).
pub async fn underlay_mtu(ns: &Netns, local: Ipv4Addr, peer: Option<Ipv4Addr>) -> Result<u32> {
    let nl = Netlink::connect(ns)?;
    let missing = |what: Ipv4Addr, detail: &str| OverlayError::UnderlayMtu {
        what: what.to_string(),
        detail: detail.to_string(),
    };
    let index = match peer {
        Some(peer) => {
            let (oif, mtu) = nl.route_to(peer).await?;
            if let Some(mtu) = mtu {
                return Ok(mtu);
            }
            oif.ok_or_else(|| missing(peer, "no route with an output device"))?
        }
        None => nl
            .device_with_address(local)
            .await?
            .ok_or_else(|| missing(local, "no device holds this address"))?,
    };
    nl.links()
        .await?
        .iter()
        .find(|l| l.facts.index == index)
        .map(|l| l.facts.mtu)
        .ok_or_else(|| missing(peer.unwrap_or(local), "its device vanished"))
}

/// Sets what differs between `link` and `want` (and brings it up), recording the fix.
async fn fix_link(
    nl: &Netlink,
    link: &Link,
    want: &LinkWant,
    network: &str,
    applied: &mut Applied,
) -> Result<()> {
    let fixes = LinkFixes::between(&link.facts, want);
    if fixes.is_empty() {
        return Ok(());
    }
    let index = link.facts.index;
    if fixes.mac.is_some() && link.facts.up {
        // Not every device takes a new MAC while up.
        let down = LinkUnspec::new_with_index(index).down().build();
        nl.set_link(down, format!("setting {} down", link.name))
            .await?;
    }
    let mut message = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = fixes.mtu {
        message = message.mtu(mtu);
    }
    if let Some(master) = fixes.master {
        message = message.controller(master);
    }
    if let Some(mac) = fixes.mac {
        message = message.address(mac.to_vec());
    }
    let what = fixes.describe();
    nl.set_link(message.build(), format!("setting {what} on {}", link.name))
        .await?;
    applied.push(
        network,
        Action::DeviceFixed {
            device: link.name.clone(),
            fixes: what,
        },
    );
    Ok(())
}

/// Makes the IPv4 addresses of `link` exactly `desired`.
async fn sync_addresses(
    nl: &Netlink,
    link: &Link,
    device: &str,
    desired: &[(Ipv4Addr, u8)],
    network: &str,
    applied: &mut Applied,
) -> Result<()> {
    let index = link.facts.index;
    let diff = plan::diff_addresses(desired, &nl.addresses(index).await?);
    for (ip, prefix_len) in diff.remove {
        nl.del_address(index, device, ip, prefix_len).await?;
        let device = device.to_string();
        applied.push(
            network,
            Action::AddressRemoved {
                device,
                ip,
                prefix_len,
            },
        );
    }
    for (ip, prefix_len) in diff.set {
        nl.add_address(index, device, ip, prefix_len).await?;
        let device = device.to_string();
        applied.push(
            network,
            Action::AddressAdded {
                device,
                ip,
                prefix_len,
            },
        );
    }
    Ok(())
}

async fn require_link(nl: &Netlink, name: &str) -> Result<Link> {
    nl.link(name).await?.ok_or_else(|| {
        OverlayError::netlink(
            format!("looking up device {name}"),
            nl.netns(),
            std::io::Error::from_raw_os_error(libc::ENODEV),
        )
    })
}

fn is_veth(link: &Link) -> bool {
    link.kind.as_deref() == Some("veth")
}

fn kind_of(link: &Link) -> &str {
    link.kind.as_deref().unwrap_or("plain")
}

fn created_or_recreated(device: &str, reason: String) -> Action {
    let device = device.to_string();
    if reason.is_empty() {
        Action::DeviceCreated { device }
    } else {
        Action::DeviceRecreated { device, reason }
    }
}
