//! What the nftables path changes in the host namespace, each step on a scratch thread that
//! entered it (so the caller's threads never leave theirs): the `nft` batch, the routes and
//! neighbour entries through the networks' legs, and `ip_forward`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use nftables::helper::{self, NftablesError, DEFAULT_ARGS, DEFAULT_NFT};
use nftables::schema::Nftables;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::ruleset::{LegRoute, FAMILY, TABLE};
use crate::lb::LbError;
use crate::overlay::names;
use crate::overlay::netns::Netns;

/// The sysctl forwarding depends on.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Runs `nft -j -f -` with `batch` in `ns`: one transaction, all or nothing.
pub fn apply_batch(ns: &Netns, batch: &Nftables<'_>) -> Result<(), LbError> {
    let json = serde_json::to_string(batch)
        .map_err(|err| LbError::Nftables(format!("serializing the batch: {err}")))?;
    in_ns(ns, "running nft", || {
        Ok(helper::apply_ruleset_raw(&json, DEFAULT_NFT, DEFAULT_ARGS).map(drop))
    })?
    .map_err(|err| nft_error("applying the batch", err))
}

/// `nft -j list counters table ip mesh-lb` in `ns`: every named counter's packets, or None
/// when the table is missing.
pub fn list_counters(ns: &Netns) -> Result<Option<Vec<(String, u64)>>, LbError> {
    let family = serde_json::to_value(FAMILY)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "ip".to_string());
    let output = in_ns(ns, "running nft", || {
        Ok(helper::get_current_ruleset_raw(
            DEFAULT_NFT,
            ["list", "counters", "table", family.as_str(), TABLE],
        ))
    })?;
    let output = match output {
        Ok(output) => output,
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => {
            return Ok(None)
        }
        Err(err) => return Err(nft_error("listing the counters", err)),
    };
    Ok(Some(parse_counters(&output)?))
}

/// The counters of an `nft -j list counters` output (read as plain JSON: packet counts
/// overflow the `nftables` crate's u32 fields).
pub fn parse_counters(json: &str) -> Result<Vec<(String, u64)>, LbError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|err| LbError::Nftables(format!("parsing nft's counter list: {err}")))?;
    let objects = value
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(objects
        .iter()
        .filter_map(|object| {
            let counter = object.get("counter")?;
            if counter.get("table")?.as_str()? != TABLE {
                return None;
            }
            Some((
                counter.get("name")?.as_str()?.to_string(),
                counter.get("packets")?.as_u64()?,
            ))
        })
        .collect())
}

/// Whether `nft` runs and the kernel takes a table in `ns` (made and deleted in one batch).
pub fn probe(ns: &Netns) -> Result<(), LbError> {
    const PROBE: &str = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"mesh-lb-probe"}}},{"delete":{"table":{"family":"ip","name":"mesh-lb-probe"}}}]}"#;
    in_ns(ns, "running nft", || {
        Ok(helper::apply_ruleset_raw(PROBE, DEFAULT_NFT, DEFAULT_ARGS).map(drop))
    })?
    .map_err(|err| nft_error("creating a probe table", err))
}

/// Sets `ip_forward` to 1 in `ns` (writing it only when it is not 1 already).
pub fn enable_forwarding(ns: &Netns) -> Result<(), LbError> {
    in_ns(ns, "enabling ip_forward", || {
        if std::fs::read_to_string(IP_FORWARD)?.trim() != "1" {
            std::fs::write(IP_FORWARD, "1")?;
        }
        Ok(())
    })
}

/// Routes each leg's subnet through it (`<subnet> via 169.254.0.1 dev mg-<id> onlink`, with
/// the permanent neighbour 169.254.0.1 → gw0's MAC), replacing what is there.
pub fn set_legs(ns: &Netns, legs: &[LegRoute]) -> Result<(), LbError> {
    if legs.is_empty() {
        return Ok(());
    }
    netlink(ns, "routing through the legs", |handle| async move {
        for leg in legs {
            let names::Leg {
                host_if, ns_mac, ..
            } = names::leg(&leg.network_id);
            let index = link_index(&handle, &host_if).await?.ok_or_else(|| {
                io::Error::other(format!(
                    "network {}'s leg {host_if} is missing in the host namespace",
                    leg.network_id
                ))
            })?;
            handle
                .neighbours()
                .add(index, IpAddr::V4(names::LEG_NS_ADDR))
                .link_layer_address(&ns_mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    context(
                        err,
                        format!(
                            "setting neighbour {} lladdr {} dev {host_if}",
                            names::LEG_NS_ADDR,
                            names::fmt_mac(&ns_mac)
                        ),
                    )
                })?;
            handle
                .route()
                .add(route(leg, index))
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    context(
                        err,
                        format!(
                            "adding route {}/{} via {} dev {host_if} onlink",
                            leg.subnet,
                            leg.prefix_len,
                            names::LEG_NS_ADDR
                        ),
                    )
                })?;
        }
        Ok(())
    })
}

/// Removes each leg's route and neighbour entry; ones already gone (or whose leg is gone) are
/// fine.
pub fn clear_legs(ns: &Netns, legs: &[LegRoute]) -> Result<(), LbError> {
    if legs.is_empty() {
        return Ok(());
    }
    netlink(
        ns,
        "removing the routes through the legs",
        |handle| async move {
            for leg in legs {
                let host_if = names::leg_host(&leg.network_id);
                let Some(index) = link_index(&handle, &host_if).await? else {
                    continue;
                };
                let gone = |err: &rtnetlink::Error| {
                    matches!(errno(err), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV))
                };
                match handle.route().del(route(leg, index)).execute().await {
                    Err(err) if !gone(&err) => {
                        return Err(context(
                            err,
                            format!("deleting route {}/{}", leg.subnet, leg.prefix_len),
                        ))
                    }
                    _ => {}
                }
                let mut neighbour = NeighbourMessage::default();
                neighbour.header.family = AddressFamily::Inet;
                neighbour.header.ifindex = index;
                neighbour
                    .attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        names::LEG_NS_ADDR,
                    )));
                match handle.neighbours().del(neighbour).execute().await {
                    Err(err) if !gone(&err) => {
                        return Err(context(
                            err,
                            format!("deleting neighbour {} dev {host_if}", names::LEG_NS_ADDR),
                        ))
                    }
                    _ => {}
                }
            }
            Ok(())
        },
    )
}

fn route(leg: &LegRoute, index: u32) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(leg.subnet, leg.prefix_len)
        .gateway(names::LEG_NS_ADDR)
        .output_interface(index)
        .onlink()
        .build()
}

async fn link_index(handle: &Handle, name: &str) -> io::Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(context(err, format!("looking up device {name}"))),
    }
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

fn context(err: rtnetlink::Error, what: String) -> io::Error {
    let kind = errno(&err).map(io::Error::from_raw_os_error);
    match kind {
        Some(os) => io::Error::new(os.kind(), format!("{what}: {os}")),
        None => io::Error::other(format!("{what}: {err}")),
    }
}

/// Runs `f` with an rtnetlink handle whose socket was opened in `ns`, on a scratch thread with
/// its own small runtime (so it works from synchronous code and inside a runtime alike).
fn netlink<F, Fut>(ns: &Netns, operation: &str, f: F) -> Result<(), LbError>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    in_ns(ns, operation, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(connection);
            let result = f(handle).await;
            task.abort();
            result
        })
    })
}

/// Runs `f` on a scratch thread inside `ns`; an error names `operation` and the namespace.
pub(crate) fn in_ns<T: Send>(
    ns: &Netns,
    operation: &str,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, LbError> {
    ns.run(f).map_err(|source| LbError::Io {
        operation: format!("{operation} in {}", ns.label()),
        source,
    })
}

/// An `nft` failure with what it printed.
pub(crate) fn nft_error(what: &str, err: NftablesError) -> LbError {
    match err {
        NftablesError::NftFailed { stderr, .. } => {
            LbError::Nftables(format!("{what}: nft failed: {}", stderr.trim()))
        }
        other => LbError::Nftables(format!("{what}: {other}")),
    }
}
