//! The nftables fallback of the ingress routing mesh: published ports balanced by DNAT in an
//! nftables table of the host namespace, where the BPF program cannot attach.
//!
//! # Model
//! One table, `ip mesh-lb`, owned whole by this path (nothing else of the host's ruleset is
//! read or changed), rebuilt from the desired [`HostLb`] by a pure function
//! ([`ruleset::plan`]) and written in one `nft -j` transaction: a reader never sees half a
//! table. Applying the same state again sends nothing.
//!
//! ```text
//! chain prerouting (nat, dstnat):  ip daddr <underlay> tcp dport 80 ct state new
//!                                  jump svc-web-tcp-80
//! chain svc-web-tcp-80:            ip saddr { <peers> } goto svc-web-tcp-80-peer
//!                                  counter svc-web-tcp-80-new numgen random mod 3 vmap {
//!                                      0 : goto svc-web-tcp-80-be-t1, 1 : goto ..-be-t1,
//!                                      2 : goto svc-web-tcp-80-be-t2 }
//!                                  counter svc-web-tcp-80-refused reject with tcp reset
//! chain svc-web-tcp-80-peer:       the same pick over this host's backends only
//! chain svc-web-tcp-80-be-t1:      meta l4proto tcp counter ..-local dnat ip to 10.0.0.5:8080
//! chain svc-web-tcp-80-be-t2:      meta l4proto tcp counter ..-remote dnat ip to <t2 host>:80
//! chain postrouting (nat, srcnat): ct status dnat ct original ip daddr <underlay>
//!                                  ip daddr { <peers> } counter snat snat ip to <underlay>
//! ```
//!
//! - **Picking**: each Active backend appears in the pick map in proportion to its weight
//!   (weights reduced by their common divisor, at most about 256 elements), and `numgen
//!   random` picks an element, as kube-proxy's nftables mode does. Only a flow's first packet
//!   meets the nat chains: conntrack keeps the flow on its backend after that, so a
//!   [`BackendState::Draining`](crate::lb::BackendState) backend (left out of the map) keeps
//!   its flows and takes no new ones, and a removed backend's new flows go elsewhere. The pick
//!   is random, not Maglev: with conntrack holding every flow, consistency across hosts buys
//!   nothing here.
//! - **Local backends**: `dnat` to the task's address and target port; the flow is routed
//!   into the network namespace through its leg (`<subnet> via 169.254.0.1 dev mg-<id>
//!   onlink`, and a permanent neighbour 169.254.0.1 → gw0's MAC, both set here) and the task
//!   sees the client's address. Replies take the network namespace's default route back
//!   through the leg, conntrack undoes the DNAT, and they leave by the underlay. This needs
//!   `ip_forward=1` in the host namespace (remote flows need it too): set here and **left set** when the balancer goes
//!   (other things may rely on it; on a real host, say so to the operator).
//! - **Remote backends**: nftables cannot encapsulate, so the flow is forwarded at the
//!   underlay: `dnat` to the backend host's underlay address and the *published* port, and
//!   `snat` to this host's underlay address, so replies come back here. **The backend sees the
//!   ingress host's address, not the client's** (the BPF path keeps it). On the backend's
//!   host, a new flow to a published port *from a cluster peer* (any other host running a
//!   backend of any service) is balanced over that host's own backends only, so a flow
//!   crosses the underlay once. A peer is known only through the backends' VTEPs: a flow from
//!   a host that runs no backend at all is taken for a client's, and may be forwarded once
//!   more (at most two hops, never a loop).
//! - **Host mode** (`local_only`): only this host's backends, from anyone; the port is in the
//!   table only where the caller lists it.
//! - **Gone backends**: after every change, the conntrack entries of unanswered TCP flows and
//!   of UDP flows to a published port whose replies would come from no current backend are
//!   deleted ([`conntrack`]): they would otherwise send a later connection from the same
//!   client port to the gone backend.
//! - **No backend**: new flows are refused (TCP reset, ICMP port unreachable).
//! - **Counters**: named nft counters per published port, read by [`NftBalancer::counters`]
//!   as `<outcome>@<service name>/<proto>/<port>`: `flow:new` (new flows from clients),
//!   `flow:peer` (new flows forwarded by another host), `forward:local`, `forward:remote`,
//!   `refuse:no-backend`; and `forward:snat` (flows sent on with this host's address). They
//!   count flows (first packets: what conntrack takes for new, which includes a late packet
//!   of a flow it already forgot), not packets of established flows, and survive applies; a
//!   new handle (a restart) starts them from zero. The `ct state new` match also makes the
//!   kernel track connections in the namespace: nat chains alone do not, and without
//!   conntrack no nat chain runs.
//! - **Not served here**: service VIPs (traffic between tasks) and published ports reached
//!   from the host itself (no output hook); a host whose forward policy drops (Docker's
//!   iptables) must accept these flows itself.

pub mod conntrack;
pub(crate) mod kernel;
pub mod ruleset;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::lb::{HostLb, LbCounter, LbError, LbPath, Protocol};
use crate::overlay::names;
use crate::overlay::netns::Netns;

pub use ruleset::{plan, ruleset, transaction, LegRoute, Ruleset};

/// The nftables balancer of the host namespace it was made in.
pub struct NftBalancer {
    /// The host namespace (the calling thread's at `new`): every change happens there.
    ns: Netns,
    /// The underlay interface published ports answer on.
    underlay_if: String,
    /// The overlay directory: network `id`'s namespace is pinned at `<dir>/ns-<id>`.
    overlay_dir: PathBuf,
    /// What the kernel holds since the last successful apply (None: unknown, so the next
    /// apply replaces the table whole).
    applied: Option<Ruleset>,
    /// Whether the kernel may hold routes of legs not in `applied` (after a failed apply).
    dirty_legs: Vec<LegRoute>,
    /// The ports published at the last apply, whose flows' entries go once they are not.
    published: BTreeSet<(Protocol, u16)>,
}

impl NftBalancer {
    /// A balancer for the calling thread's network namespace (the host's), answering on
    /// `underlay_if`, whose networks' namespaces are pinned in `overlay_dir`. Checks that `nft`
    /// runs and that the kernel takes a table; changes nothing else until [`apply`].
    ///
    /// [`apply`]: NftBalancer::apply
    pub fn new(underlay_if: &str, overlay_dir: &Path) -> Result<NftBalancer, LbError> {
        let ns = Netns::current("the host namespace").map_err(|err| LbError::Io {
            operation: "opening the host namespace".to_string(),
            source: std::io::Error::other(err.to_string()),
        })?;
        kernel::probe(&ns)?;
        Ok(NftBalancer {
            ns,
            underlay_if: underlay_if.to_string(),
            overlay_dir: overlay_dir.to_path_buf(),
            applied: None,
            dirty_legs: Vec::new(),
            published: BTreeSet::new(),
        })
    }

    /// The path this balancer is: always [`LbPath::Nftables`].
    pub fn path(&self) -> LbPath {
        LbPath::Nftables
    }

    /// Converges the table, the legs' routes and `ip_forward` to `desired`. Idempotent:
    /// applying what was applied last sends nothing to the kernel.
    pub fn apply(&mut self, desired: &HostLb) -> Result<(), LbError> {
        if desired.underlay_if != self.underlay_if {
            return Err(LbError::InvalidState(format!(
                "the desired state answers on {}, this balancer on {}",
                desired.underlay_if, self.underlay_if
            )));
        }
        let next = ruleset::plan(desired)?;
        if self.applied.as_ref() == Some(&next) && self.dirty_legs.is_empty() {
            return Ok(());
        }
        for leg in &next.legs {
            let netns = self.overlay_dir.join(names::netns_file(&leg.network_id));
            if !crate::overlay::netns::is_pinned(&netns) {
                return Err(LbError::InvalidState(format!(
                    "network {} has local backends but no namespace at {}",
                    leg.network_id,
                    netns.display()
                )));
            }
        }
        // Routes first, so the first flow DNATed to a local task finds its way; then the
        // table; then the routes no longer needed.
        // Forwarding carries flows to local tasks (through the legs) and to other hosts (DNAT
        // to a peer): any balanced port needs it.
        if desired.services.iter().any(|s| !s.ports.is_empty()) {
            kernel::enable_forwarding(&self.ns)?;
        }
        if !next.legs.is_empty() {
            kernel::set_legs(&self.ns, &next.legs)?;
        }
        let batch = ruleset::transaction(&next, self.applied.as_ref());
        let previous = self.applied.take();
        let mut stale: Vec<LegRoute> = previous.map(|p| p.legs).unwrap_or_default();
        stale.append(&mut self.dirty_legs);
        stale.retain(|leg| !next.legs.contains(leg));
        stale.sort();
        stale.dedup();
        if let Err(err) = kernel::apply_batch(&self.ns, &batch) {
            // Unknown kernel state: the next apply rebuilds the table and removes these.
            self.dirty_legs = stale;
            self.dirty_legs.extend(next.legs.iter().cloned());
            return Err(err);
        }
        if let Err(err) = kernel::clear_legs(&self.ns, &stale) {
            self.dirty_legs = stale;
            self.applied = Some(next);
            return Err(err);
        }
        self.applied = Some(next);
        // The table sends no new flow to a gone backend now; its entries can go.
        let published: BTreeSet<(Protocol, u16)> =
            conntrack::destinations(desired).into_keys().collect();
        let unpublished = self.published.difference(&published).copied().collect();
        self.published = published;
        conntrack::forget_stale_flows(&self.ns, desired.underlay_ip, desired, &unpublished)
            .map(drop)
    }

    /// Every named counter of the table, summed by the kernel: flows (not packets) per
    /// outcome and published port. Empty before the first apply.
    pub fn counters(&self) -> Result<Vec<LbCounter>, LbError> {
        let Some(applied) = &self.applied else {
            return Ok(Vec::new());
        };
        let Some(listed) = kernel::list_counters(&self.ns)? else {
            return Ok(Vec::new());
        };
        let mut counters: Vec<LbCounter> = listed
            .into_iter()
            .filter_map(|(object, packets)| {
                Some(LbCounter {
                    name: applied.counters.get(&object)?.clone(),
                    packets,
                })
            })
            .collect();
        counters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(counters)
    }

    /// Deletes the table and the legs' routes and neighbour entries (`ip_forward` stays as
    /// it is). The balancer can be applied again afterwards.
    pub fn remove(&mut self) -> Result<(), LbError> {
        let mut legs: Vec<LegRoute> = self.applied.take().map(|p| p.legs).unwrap_or_default();
        legs.append(&mut self.dirty_legs);
        legs.sort();
        legs.dedup();
        let table = kernel::apply_batch(&self.ns, &ruleset::removal());
        let routes = kernel::clear_legs(&self.ns, &legs);
        if routes.is_err() {
            self.dirty_legs = legs;
        }
        table.and(routes)
    }
}

impl Drop for NftBalancer {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            eprintln!("mesh: removing the nftables load balancer: {err}");
        }
    }
}
