//! Overlay networks: the kernel VXLAN data path of one host, converged to a desired state.
//!
//! # Model
//! Every overlay network a host takes part in gets, as Docker's overlay driver builds it:
//! - a **network namespace**, pinned at `<dir>/ns-<id>`, holding a bridge `br0` (the network's
//!   gateway address on it) and a kernel vxlan device `vxlan0` (the network's VNI, the cluster's
//!   data-path port, the host's underlay address as source, learning off, ARP proxy on). The
//!   vxlan is created in the underlay namespace (the one the `Overlay` was made in) under a
//!   temporary name, then moved into the network namespace and renamed: its UDP socket stays on
//!   the underlay.
//! - per **local endpoint** (a task attached to the network), a veth pair: `ve-<task>` on `br0`,
//!   and the other end inside the task's namespace, named as asked (`eth0`, ...), with the
//!   task's IP, MAC and the network's MTU, and, on `eth0`, a default route via the gateway.
//! - per **remote endpoint** (a task on another host), two static entries on `vxlan0`: an FDB
//!   entry MAC → VTEP (NTF_SELF, the vxlan's own table), and a permanent neighbour entry
//!   IP → MAC, from which the vxlan device answers the task's ARP requests itself (`proxy`).
//!   Nothing is flooded: with no all-zeroes FDB entry, broadcasts and unknown MACs stay local.
//!
//! `Overlay::apply` dumps what the kernel holds, compares it with the desired state (plain
//! data, in `plan`) and changes only what differs: missing objects are created, wrong ones
//! fixed or recreated, unwanted ones (endpoints, entries, whole networks) removed. Applying the
//! same state twice changes nothing the second time; applying after a crash or a hand edit
//! repairs the drift.

mod error;
pub mod names;
mod netlink;
pub mod netns;
pub mod plan;
mod reconcile;
mod report;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use error::{OverlayError, Result};
pub use report::{Action, Applied, Change, Skipped};

use netlink::Netlink;
use netns::Netns;

/// VXLAN's IANA port, the default data-path port.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;
/// Bytes VXLAN adds to every frame on an IPv4 underlay (outer IPv4 20, UDP 8, VXLAN 8,
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Everything one host's overlay must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOverlay {
    /// This host's underlay address: the VTEP others send to, and the vxlan's local address.
    pub underlay_ip: Ipv4Addr,
    /// UDP port of VXLAN for the whole cluster (default 4789, chosen at init).
    pub data_path_port: u16,
    /// Every overlay network this host must have (networks not listed are torn down).
    pub networks: Vec<NetworkPlan>,
}

/// One overlay network on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Short stable ID (1 to 12 characters of `[a-z0-9]`), used in names.
    pub id: String,
    /// The VXLAN network identifier, 1 to 2^24 - 1, unique in the cluster.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: Ipv4Addr,
    /// Its prefix length (at most 30).
    pub prefix_len: u8,
    /// The gateway address, set on the network's bridge.
    pub gateway: Ipv4Addr,
    /// The overlay MTU (the underlay's less `VXLAN_OVERHEAD`, derived by the caller).
    pub mtu: u32,
    /// Tasks of this host attached to the network.
    pub local: Vec<LocalEndpoint>,
    /// Tasks of other hosts attached to the network.
    pub remote: Vec<RemoteEndpoint>,
}

/// A task of this host attached to a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The task's ID (its veth is named after it).
    pub task_id: String,
    /// The task's network namespace, pinned (an nsfs bind mount).
    pub netns: PathBuf,
    /// The interface name inside the task: `eth0` for the first attachment (which alone gets
    /// the default route via the gateway), `eth1`, ...
    pub ifname: String,
    /// The task's address on the network.
    pub ip: Ipv4Addr,
    /// The task interface's MAC.
    pub mac: [u8; 6],
}

/// A task of another host attached to a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The task's address on the network.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The underlay address of its host.
    pub vtep: Ipv4Addr,
}

/// The interface name that gets the default route.
pub const DEFAULT_ROUTE_IFNAME: &str = "eth0";

/// The handle on one meshd's overlay: the directory whose networks it owns, and the underlay
/// namespace its vxlan devices' sockets live in.
pub struct Overlay {
    dir: PathBuf,
    underlay: std::result::Result<Netns, String>,
    temp_prefix: String,
    serial: AtomicU32,
    lock: tokio::sync::Mutex<()>,
}

/// A network's remote entries as the kernel has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The vxlan device's neighbour entries: remote endpoint IP → MAC.
    pub neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    /// Its FDB entries: MAC → the VTEP frames for it are sent to.
    pub fdb: Vec<([u8; 6], Ipv4Addr)>,
}

impl Overlay {
    /// A handle owning the networks pinned in `dir` (e.g. `<state_dir>/overlay`, created on
    /// first use). The calling thread's network namespace becomes the underlay: vxlan devices
    /// are created there, so their UDP sockets listen on the underlay address.
    pub fn new(dir: PathBuf) -> Overlay {
        let temp_prefix = names::temp_vxlan_prefix(&dir);
        Overlay {
            underlay: Netns::current("underlay").map_err(|err| err.to_string()),
            dir,
            temp_prefix,
            serial: AtomicU32::new(std::process::id()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory this handle owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where network `id`'s namespace is pinned.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.dir.join(names::netns_file(id))
    }

    /// Converges the kernel to `desired` and returns what it changed. Idempotent. Every
    /// network is converged even when one fails; the first failure is then returned.
    pub async fn apply(&self, desired: &HostOverlay) -> Result<Applied> {
        plan::validate(desired)?;
        let _guard = self.lock.lock().await;
        let mut applied = Applied::default();
        std::fs::create_dir_all(&self.dir).map_err(|source| OverlayError::Io {
            operation: "creating the overlay directory",
            path: self.dir.clone(),
            source,
        })?;
        let underlay = self.underlay_netlink()?;
        reconcile::remove_temp_vxlans(&underlay, &self.temp_prefix, &mut applied).await?;
        let wanted: Vec<&str> = desired.networks.iter().map(|n| n.id.as_str()).collect();
        let mut first_error = None;
        for id in self.pinned_networks()? {
            if !wanted.contains(&id.as_str()) {
                if let Err(err) = self.remove_network(&id, &mut applied).await {
                    first_error.get_or_insert(err);
                }
            }
        }
        for network in &desired.networks {
            let ctx = reconcile::Ctx {
                underlay: &underlay,
                host: desired,
                netns_path: self.netns_path(&network.id),
                temp_name: names::temp_vxlan_name(
                    &self.temp_prefix,
                    self.serial.fetch_add(1, Ordering::Relaxed),
                ),
            };
            if let Err(err) = reconcile::network(&ctx, network, &mut applied).await {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(applied),
        }
    }

    /// What the kernel holds for network `id` now: the vxlan device's neighbour entries
    /// (IP → MAC) and FDB entries (MAC → VTEP), or None when the network is not on this host.
    /// Read-only, for diagnostics: it changes nothing.
    pub async fn observe(&self, id: &str) -> Result<Option<Observed>> {
        let Some(ns) = Netns::open_pinned(&self.netns_path(id))? else {
            return Ok(None);
        };
        let nl = Netlink::connect(&ns)?;
        let Some(vxlan) = nl.link(names::VXLAN).await? else {
            return Ok(Some(Observed::default()));
        };
        Ok(Some(Observed {
            neighbours: nl.neighbours(vxlan.facts.index).await?,
            fdb: nl.fdb(vxlan.facts.index).await?,
        }))
    }

    /// Removes every network this handle's directory holds (namespaces, devices, veths).
    pub async fn clear(&self) -> Result<Applied> {
        let _guard = self.lock.lock().await;
        let mut applied = Applied::default();
        if let Ok(underlay) = self.underlay_netlink() {
            reconcile::remove_temp_vxlans(&underlay, &self.temp_prefix, &mut applied).await?;
        }
        if !self.dir.exists() {
            return Ok(applied);
        }
        for id in self.pinned_networks()? {
            self.remove_network(&id, &mut applied).await?;
        }
        Ok(applied)
    }

    fn underlay_netlink(&self) -> Result<Netlink> {
        let ns = self
            .underlay
            .as_ref()
            .map_err(|err| OverlayError::Namespace {
                operation: "opening the underlay",
                path: "/proc/thread-self/ns/net".into(),
                source: std::io::Error::other(err.clone()),
            })?;
        Netlink::connect(ns)
    }

    /// The IDs of the networks pinned in the directory.
    fn pinned_networks(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| OverlayError::Io {
            operation: "listing the overlay directory",
            path: self.dir.clone(),
            source,
        })?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| names::network_of_netns_file(&name).map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn remove_network(&self, id: &str, applied: &mut Applied) -> Result<()> {
        let path = self.netns_path(id);
        reconcile::remove_network(&path).await?;
        applied.push(id, Action::NetworkRemoved);
        Ok(())
    }
}

/// The MTU of the underlay towards `peer` (the route's MTU, or its device's), or, when no peer
/// is known, of the device holding `local`: what the overlay MTU is derived from (less
/// `VXLAN_OVERHEAD`). Asked in the calling thread's network namespace.
pub fn underlay_mtu(local: Ipv4Addr, peer: Option<Ipv4Addr>) -> Result<u32> {
    let ns = Netns::current("underlay")?;
    on_scratch_runtime("the underlay MTU query", || {
        reconcile::underlay_mtu(&ns, local, peer)
    })
}

/// The name of the device holding `local` in the calling thread's namespace, if one does (the
/// underlay interface diagnostics look at).
pub fn interface_of(local: Ipv4Addr) -> Result<Option<String>> {
    let ns = Netns::current("underlay")?;
    on_scratch_runtime("the interface query", || async {
        let nl = Netlink::connect(&ns)?;
        let Some(index) = nl.device_with_address(local).await? else {
            return Ok(None);
        };
        let links = nl.links().await?;
        Ok(links
            .into_iter()
            .find(|l| l.facts.index == index)
            .map(|l| l.name))
    })
}

/// Runs a netlink query on a scratch thread (same namespace: threads inherit it) with its own
/// small runtime, so it works from synchronous code and from inside a runtime alike.
fn on_scratch_runtime<T, F>(what: &str, query: impl FnOnce() -> F + Send) -> Result<T>
where
    T: Send,
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| OverlayError::Io {
                        operation: "starting a runtime for",
                        path: what.into(),
                        source,
                    })?;
                runtime.block_on(query())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_handle_and_its_futures_cross_threads() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Overlay>();
        let overlay = Overlay::new(PathBuf::from("/nonexistent/overlay"));
        let plan = HostOverlay {
            underlay_ip: Ipv4Addr::LOCALHOST,
            data_path_port: DEFAULT_DATA_PATH_PORT,
            networks: Vec::new(),
        };
        assert_send(&overlay.apply(&plan));
        assert_send(&overlay.clear());
    }
}
