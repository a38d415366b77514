//! A thin rtnetlink client bound to one network namespace: the requests the overlay makes, each
//! turning the kernel's refusal into an `OverlayError` that names the device and namespace, and
//! each dump turned into the plain data of `plan`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd};

use futures_util::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};

use super::error::{OverlayError, Result};
use super::names::{fmt_mac, mac_from_bytes};
use super::netns::Netns;
use super::plan::{LinkFacts, VxlanFacts};

/// A device as dumped: its facts, name, kind and, for a vxlan, its configuration.
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// Index, MTU, up, master, MAC.
    pub facts: LinkFacts,
    /// Its name.
    pub name: String,
    /// "bridge", "vxlan", "veth", ... (None for devices without a kind, like `lo`).
    pub kind: Option<String>,
    /// A vxlan's configuration.
    pub vxlan: Option<VxlanFacts>,
    /// A veth's peer index (IFLA_LINK), in the peer's namespace.
    pub peer: Option<u32>,
}

/// An rtnetlink connection to one namespace. Dropping it ends the connection task.
pub struct Netlink {
    handle: Handle,
    netns: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Connects to `ns`: the socket is created by a thread inside `ns` (a netlink socket
    /// belongs to the namespace it was created in), then driven by the current tokio runtime.
    /// Fails outside a tokio runtime.
    pub fn connect(ns: &Netns) -> Result<Netlink> {
        let failed = |source| OverlayError::netlink("opening a netlink socket", ns.label(), source);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(failed(io::Error::other("called outside a tokio runtime")));
        }
        let socket = ns
            .run(|| {
                let socket = Socket::new(NETLINK_ROUTE)?;
                socket.set_non_blocking(true)?;
                Ok(socket)
            })
            .map_err(failed)?;
        // SAFETY: into_raw_fd hands over sole ownership of an open, non-blocking netlink
        // socket, which from_raw_fd takes; a runtime is current (checked above), so registering
        // the socket with its reactor succeeds.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        Ok(Netlink {
            handle,
            netns: ns.label().to_string(),
            task: tokio::spawn(connection),
        })
    }

    /// The namespace label this connection speaks to.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Sends `message` with `flags` and collects the replies; an error reply becomes Err.
    async fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut replies = self
            .handle
            .clone()
            .request(request)
            .map_err(|err| io::Error::other(err.to_string()))?;
        let mut messages = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::Error(err) if err.code.is_some() => return Err(err.to_io()),
                NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                _ => {}
            }
        }
        Ok(messages)
    }

    /// A change acknowledged by the kernel.
    async fn change(&self, message: RouteNetlinkMessage, flags: u16, what: String) -> Result<()> {
        self.request(message, NLM_F_REQUEST | NLM_F_ACK | flags)
            .await
            .map(drop)
            .map_err(|source| OverlayError::netlink(what, &self.netns, source))
    }

    /// A dump of every object of one kind.
    async fn dump(
        &self,
        message: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(message, NLM_F_REQUEST | NLM_F_DUMP)
            .await
            .map_err(|source| OverlayError::netlink(what, &self.netns, source))
    }

    /// Every device of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let replies = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                "listing devices",
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })
            .collect())
    }

    /// The device called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let message = LinkUnspec::new_with_name(name).build();
        match self
            .request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)
            .await
        {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })),
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(OverlayError::netlink(
                format!("looking up device {name}"),
                &self.netns,
                source,
            )),
        }
    }

    /// Creates a device (fails if its name is taken).
    pub async fn add_link(&self, message: LinkMessage, what: String) -> Result<()> {
        self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
        )
        .await
    }

    /// Changes a device (name, MTU, flags, master, namespace).
    pub async fn set_link(&self, message: LinkMessage, what: String) -> Result<()> {
        self.change(RouteNetlinkMessage::SetLink(message), 0, what)
            .await
    }

    /// Deletes a device; one already gone is not an error.
    pub async fn del_link(&self, index: u32, name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).build();
        match self
            .change(
                RouteNetlinkMessage::DelLink(message),
                0,
                format!("deleting device {name}"),
            )
            .await
        {
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// The IPv4 addresses (with prefix lengths) of device `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(message),
                "listing addresses",
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `ip/prefix_len` to device `index` (called `device` in messages).
    pub async fn add_address(
        &self,
        index: u32,
        device: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix_len)
            .build();
        self.change(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("adding address {ip}/{prefix_len} to {device}"),
        )
        .await
    }

    /// Removes `ip/prefix_len` from device `index`.
    pub async fn del_address(
        &self,
        index: u32,
        device: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix_len)
            .build();
        self.change(
            RouteNetlinkMessage::DelAddress(message),
            0,
            format!("removing address {ip}/{prefix_len} from {device}"),
        )
        .await
    }

    /// The permanent IPv4 neighbour entries (IP → MAC) of device `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetNeighbour(message),
                "listing neighbours",
            )
            .await?;
        Ok(neighbour_messages(&replies)
            .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
            .filter_map(|n| Some((neighbour_ip(n)?, neighbour_mac(n)?)))
            .collect())
    }

    /// Sets the permanent neighbour entry `ip → mac` on device `index`.
    pub async fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let message = neighbour_message(index, ip, Some(mac));
        self.change(
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("setting neighbour {ip} lladdr {}", fmt_mac(&mac)),
        )
        .await
    }

    /// Deletes the neighbour entry of `ip` on device `index`; one already gone is fine.
    pub async fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let message = neighbour_message(index, ip, None);
        match self
            .change(
                RouteNetlinkMessage::DelNeighbour(message),
                0,
                format!("deleting neighbour {ip}"),
            )
            .await
        {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The FDB entries of device `index` itself (NTF_SELF: a vxlan's own table, not the
    /// bridge's), as (MAC, destination) pairs; entries without an IPv4 destination are left
    /// out.
    pub async fn fdb(&self, index: u32) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetNeighbour(message),
                "listing FDB entries",
            )
            .await?;
        Ok(neighbour_messages(&replies)
            .filter(|n| n.header.ifindex == index && n.header.flags.contains(NeighbourFlags::Own))
            .filter_map(|n| Some((neighbour_mac(n)?, neighbour_ip(n)?)))
            .collect())
    }

    /// Sets the permanent FDB entry `mac → vtep` on vxlan device `index` (NTF_SELF), replacing
    /// the destination of an existing entry for `mac`.
    pub async fn set_fdb(&self, index: u32, mac: [u8; 6], vtep: Ipv4Addr) -> Result<()> {
        self.change(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, vtep)),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("setting FDB entry {} dst {vtep}", fmt_mac(&mac)),
        )
        .await
    }

    /// Deletes the FDB destination `mac → vtep` of vxlan device `index`; one already gone is
    /// fine.
    pub async fn del_fdb(&self, index: u32, mac: [u8; 6], vtep: Ipv4Addr) -> Result<()> {
        match self
            .change(
                RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, vtep)),
                0,
                format!("deleting FDB entry {} dst {vtep}", fmt_mac(&mac)),
            )
            .await
        {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The gateways and output devices of the main table's IPv4 default routes.
    pub async fn default_routes(&self) -> Result<Vec<(Option<Ipv4Addr>, Option<u32>)>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(message), "listing routes")
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN) =>
                {
                    Some((route_gateway(r), route_oif(r)))
                }
                _ => None,
            })
            .collect())
    }

    /// Sets the main table's default route to `via gateway dev index`, with `onlink` when no
    /// address of the device covers the gateway.
    pub async fn replace_default_route(
        &self,
        gateway: Ipv4Addr,
        index: u32,
        device: &str,
        onlink: bool,
    ) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index);
        if onlink {
            builder = builder.onlink();
        }
        self.change(
            RouteNetlinkMessage::NewRoute(builder.build()),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "setting the default route via {gateway} dev {device}{}",
                if onlink { " onlink" } else { "" }
            ),
        )
        .await
    }

    /// The route to `dst` (`ip route get`): its output device and its MTU metric, if any.
    pub async fn route_to(&self, dst: Ipv4Addr) -> Result<(Option<u32>, Option<u32>)> {
        let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        message.header.table = RouteHeader::RT_TABLE_UNSPEC;
        let replies = self
            .request(RouteNetlinkMessage::GetRoute(message), NLM_F_REQUEST)
            .await
            .map_err(|source| {
                OverlayError::netlink(
                    format!("looking up the route to {dst}"),
                    &self.netns,
                    source,
                )
            })?;
        let route = replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        });
        Ok(route.map_or((None, None), |r| {
            let mtu = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Metrics(metrics) => metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                    _ => None,
                }),
                _ => None,
            });
            (route_oif(r), mtu)
        }))
    }

    /// The index of the device holding IPv4 address `ip`, if one does.
    pub async fn device_with_address(&self, ip: Ipv4Addr) -> Result<Option<u32>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(message),
                "listing addresses",
            )
            .await?;
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.attributes.iter().any(
                    |attr| matches!(attr, AddressAttribute::Local(IpAddr::V4(l)) if *l == ip),
                ) =>
            {
                Some(a.header.index)
            }
            _ => None,
        }))
    }
}

fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        facts: LinkFacts {
            index: message.header.index,
            up: message.header.flags.contains(LinkFlags::Up),
            ..LinkFacts::default()
        },
        ..Link::default()
    };
    for attr in &message.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.facts.mtu = *mtu,
            LinkAttribute::Controller(master) if *master != 0 => link.facts.master = Some(*master),
            LinkAttribute::Address(mac) => link.facts.mac = mac_from_bytes(mac),
            LinkAttribute::Link(peer) => link.peer = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(vxlan_facts(data))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn vxlan_facts(data: &[InfoVxlan]) -> VxlanFacts {
    let mut facts = VxlanFacts::default();
    for item in data {
        match item {
            InfoVxlan::Id(vni) => facts.vni = Some(*vni),
            InfoVxlan::Port(port) => facts.port = Some(*port),
            InfoVxlan::Local(ip) => facts.local = Some(*ip),
            InfoVxlan::Learning(on) => facts.learning = *on,
            InfoVxlan::Proxy(on) => facts.proxy = *on,
            _ => {}
        }
    }
    facts
}

fn neighbour_messages(replies: &[RouteNetlinkMessage]) -> impl Iterator<Item = &NeighbourMessage> {
    replies.iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewNeighbour(n) => Some(n),
        _ => None,
    })
}

/// The IPv4 destination of an entry. In FDB (AF_BRIDGE) messages the parser cannot tell the
/// address family and keeps the raw bytes.
fn neighbour_ip(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neighbour_mac(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => mac_from_bytes(mac),
        _ => None,
    })
}

/// A permanent IPv4 neighbour entry on device `index` (without a MAC: for deletion).
fn neighbour_message(index: u32, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if let Some(mac) = mac {
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    message
}

/// A permanent FDB entry of vxlan device `index` itself: NTF_SELF, or the entry would land
/// in the bridge's FDB and the destination would be ignored.
fn fdb_message(index: u32, mac: [u8; 6], vtep: Ipv4Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            vtep,
        )));
    message
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_gateway(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}
