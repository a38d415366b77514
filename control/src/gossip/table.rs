//! The endpoint table: pure state, no I/O, no membership.
//!
//! Rows are grouped by (network, origin). Each origin numbers its changes with its own hybrid
//! clock, and each change names the version of the origin's previous change on that network
//! (`prev`; 0 for its first change on that network since it started). A node therefore knows, per (network, origin), a *completeness watermark* `W`: it
//! holds every row of that origin on that network that was live at version `W`. The watermark
//! advances when a change arrives whose `prev` is exactly `W` (or one buffered earlier chains
//! on), or when anti-entropy delivers a snapshot ("the complete live set as of version v").
//!
//! The watermark is what keeps deleted rows dead. A live row at version `v <= W` that this node
//! does not hold must have been deleted by `W`, so it is refused, whoever offers it: a host that
//! was partitioned for longer than the tombstone lifetime cannot bring it back. That is also
//! why a tombstone may be forgotten once its version is at or below `W` and its lifetime passed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use super::clock::HybridClock;
pub use super::queries::{RowState, TableRow, TableView};

use super::entry::{Endpoint, EndpointEntry, EntryBody};
use super::message::{Group, NetDigest, OriginDigest, Record};
use crate::store::NodeId;

/// Changes buffered per (network, origin) while waiting for a missing predecessor; past this,
/// anti-entropy fills the gap instead.
const MAX_LINKS: usize = 1024;

/// One row: live or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    version: u64,
    body: Option<EntryBody>,
    /// When it became a tombstone here.
    dead_since: Option<Instant>,
}

/// Everything known about one origin on one network.
#[derive(Debug, Clone, Default)]
struct Slice {
    /// Completeness watermark.
    complete: u64,
    rows: BTreeMap<String, Row>,
    /// prev → version of changes received above the watermark.
    links: BTreeMap<u64, u64>,
}

impl Slice {
    fn highest(&self) -> u64 {
        self.rows
            .values()
            .map(|r| r.version)
            .max()
            .unwrap_or(0)
            .max(self.complete)
    }

    /// Follows buffered links from the watermark.
    fn chain(&mut self) {
        while let Some(next) = self.links.remove(&self.complete) {
            self.complete = next;
        }
        let complete = self.complete;
        self.links.retain(|prev, _| *prev > complete);
    }

    /// Records that change `prev` → `version` was applied. `prev` 0 marks the first change of
    /// the origin's run on this network, which follows any watermark.
    fn link(&mut self, prev: u64, version: u64) {
        if version <= self.complete {
            return;
        }
        if prev == self.complete || prev == 0 {
            self.complete = version;
            self.chain();
        } else if prev > self.complete && self.links.len() < MAX_LINKS {
            self.links.insert(prev, version);
        }
    }
}

/// What applying received records did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Records that were new here, per (origin, network): what to forward.
    pub fresh: Vec<Group>,
    /// Whether any live row appeared, changed or disappeared.
    pub changed: bool,
    /// Records refused because they were older than what is held.
    pub stale: u64,
    /// Our own version seen ahead of our clock (a peer holds our rows from a run whose clock
    /// was later): the caller advances its clock past it and republishes.
    pub own_ahead: Option<u64>,
}

/// The endpoint table of one node.
#[derive(Debug, Clone)]
pub struct Table {
    me: NodeId,
    /// Our own first version of this run: our watermark on a network where we never changed
    /// anything.
    base: u64,
    nets: BTreeMap<String, BTreeMap<NodeId, Slice>>,
}

impl Table {
    /// An empty table for node `me`, whose run starts at version `base`.
    pub fn new(me: NodeId, base: u64) -> Table {
        Table {
            me,
            base,
            nets: BTreeMap::new(),
        }
    }

    fn own(&mut self, network: &str) -> &mut Slice {
        let base = self.base;
        self.nets
            .entry(network.to_string())
            .or_default()
            .entry(self.me)
            .or_insert_with(|| Slice {
                complete: base,
                ..Slice::default()
            })
    }

    /// Replaces our own rows with `entries` (already validated, unique keys): returns one
    /// group of change records per network that changed, with fresh versions from `clock`.
    pub fn publish(
        &mut self,
        entries: &[EndpointEntry],
        clock: &mut HybridClock,
        now: Instant,
    ) -> Vec<Group> {
        let mut wanted: BTreeMap<&str, BTreeMap<&str, EntryBody>> = BTreeMap::new();
        for entry in entries {
            wanted
                .entry(&entry.network_id)
                .or_default()
                .insert(&entry.task_id, entry.body());
        }
        let mut networks: BTreeSet<String> = wanted.keys().map(|n| n.to_string()).collect();
        for (network, origins) in &self.nets {
            if origins
                .get(&self.me)
                .is_some_and(|s| s.rows.values().any(|r| r.body.is_some()))
            {
                networks.insert(network.clone());
            }
        }
        let mut groups = Vec::new();
        for network in networks {
            let want = wanted.remove(network.as_str()).unwrap_or_default();
            let base = self.base;
            let slice = self.own(&network);
            let mut records = Vec::new();
            let mut change = |slice: &mut Slice, task: &str, body: Option<EntryBody>| {
                let version = clock.next(now);
                // The run's first change on this network says so with prev 0.
                let prev = if slice.complete == base {
                    0
                } else {
                    slice.complete
                };
                slice.complete = version;
                let dead_since = body.is_none().then_some(now);
                slice.rows.insert(
                    task.to_string(),
                    Row {
                        version,
                        body: body.clone(),
                        dead_since,
                    },
                );
                records.push(Record {
                    version,
                    prev,
                    task_id: task.to_string(),
                    body,
                });
            };
            let gone: Vec<String> = slice
                .rows
                .iter()
                .filter(|(task, row)| row.body.is_some() && !want.contains_key(task.as_str()))
                .map(|(task, _)| task.clone())
                .collect();
            for task in gone {
                change(slice, &task, None);
            }
            for (task, body) in want {
                let same = slice
                    .rows
                    .get(task)
                    .is_some_and(|row| row.body.as_ref() == Some(&body));
                if !same {
                    change(slice, task, Some(body));
                }
            }
            if !records.is_empty() {
                groups.push(Group {
                    origin: self.me,
                    network,
                    snapshot: None,
                    records,
                });
            }
        }
        groups
    }

    /// Gives every own live row a fresh version (after our clock was found behind a peer's
    /// view of it): returns the change records.
    pub fn republish(&mut self, clock: &mut HybridClock, now: Instant) -> Vec<Group> {
        let entries = self.own_entries();
        let me = self.me;
        for origins in self.nets.values_mut() {
            if let Some(slice) = origins.get_mut(&me) {
                slice.rows.clear();
            }
        }
        self.publish(&entries, clock, now)
    }

    /// Our own live rows.
    pub fn own_entries(&self) -> Vec<EndpointEntry> {
        let mut out = Vec::new();
        for (network, origins) in &self.nets {
            if let Some(slice) = origins.get(&self.me) {
                for (task, row) in &slice.rows {
                    if let Some(body) = &row.body {
                        out.push(EndpointEntry::from_body(network, task, body));
                    }
                }
            }
        }
        out
    }

    /// Applies received groups. Groups of networks for which `on_network` is false are
    /// skipped (the caller counts them); groups about our own rows are never applied, we are
    /// their authority.
    pub fn apply(
        &mut self,
        groups: &[Group],
        on_network: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Applied {
        let mut applied = Applied::default();
        for group in groups {
            if !on_network(&group.network) {
                continue;
            }
            if group.origin == self.me {
                let ahead = group
                    .snapshot
                    .into_iter()
                    .chain(group.records.iter().map(|r| r.version))
                    .max()
                    .unwrap_or(0);
                let own = self.own(&group.network).complete;
                if ahead > own {
                    applied.own_ahead = applied.own_ahead.max(Some(ahead));
                }
                continue;
            }
            let slice = self
                .nets
                .entry(group.network.clone())
                .or_default()
                .entry(group.origin)
                .or_default();
            let mut fresh = Vec::new();
            // A snapshot ahead of our watermark vouches for its rows whatever their version;
            // otherwise rows at or below the watermark that we lack are dead ones.
            let snapshot_at = group.snapshot.filter(|at| *at > slice.complete);
            for record in &group.records {
                let covered = snapshot_at.is_none() && record.version <= slice.complete;
                if group.snapshot.is_none() && record.prev == 0 && !covered {
                    // The first change of the origin's current run: every row older than it
                    // is from a previous run, which the origin no longer has.
                    for row in slice.rows.values_mut() {
                        if row.version < record.version && row.body.is_some() {
                            row.body = None;
                            row.dead_since = Some(now);
                            applied.changed = true;
                        }
                    }
                }
                let newer = !covered
                    && slice
                        .rows
                        .get(&record.task_id)
                        .is_none_or(|row| row.version < record.version);
                if newer {
                    let was_live = slice
                        .rows
                        .get(&record.task_id)
                        .is_some_and(|r| r.body.is_some());
                    applied.changed |= was_live || record.body.is_some();
                    slice.rows.insert(
                        record.task_id.clone(),
                        Row {
                            version: record.version,
                            body: record.body.clone(),
                            dead_since: record.body.is_none().then_some(now),
                        },
                    );
                    fresh.push(record.clone());
                } else {
                    applied.stale += 1;
                }
                if group.snapshot.is_none() {
                    slice.link(record.prev, record.version);
                }
            }
            if let Some(at) = snapshot_at {
                // Rows at or below the snapshot's version that it does not list are dead.
                let listed: BTreeSet<&str> =
                    group.records.iter().map(|r| r.task_id.as_str()).collect();
                for (task, row) in slice.rows.iter_mut() {
                    if row.version <= at && row.body.is_some() && !listed.contains(task.as_str()) {
                        row.body = None;
                        row.version = at;
                        row.dead_since = Some(now);
                        applied.changed = true;
                    }
                }
                slice.complete = slice.complete.max(at);
                slice.chain();
            }
            if !fresh.is_empty() {
                applied.fresh.push(Group {
                    origin: group.origin,
                    network: group.network.clone(),
                    snapshot: None,
                    records: fresh,
                });
            }
        }
        applied
    }

    /// Per network in `networks`, per origin, our watermark and highest version.
    pub fn digest(&self, networks: &BTreeSet<String>) -> Vec<NetDigest> {
        networks
            .iter()
            .map(|network| NetDigest {
                network: network.clone(),
                origins: self
                    .nets
                    .get(network)
                    .map(|origins| {
                        origins
                            .iter()
                            .map(|(origin, slice)| OriginDigest {
                                origin: *origin,
                                complete: slice.complete,
                                highest: slice.highest(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// What a peer on `peer_networks` with `peer_digest` lacks: for each (network, origin)
    /// where our watermark is ahead, a snapshot (every live row, and tombstones above the
    /// peer's watermark); where only our highest version is ahead, the records above its
    /// watermark. About our own rows we also answer origins the peer asks for on networks we
    /// left, with an empty snapshot at our base version, so rows of our previous run die.
    pub fn missing_for(&self, peer_networks: &[String], peer_digest: &[NetDigest]) -> Vec<Group> {
        let mut groups = Vec::new();
        for network in peer_networks {
            let theirs: BTreeMap<NodeId, OriginDigest> = peer_digest
                .iter()
                .filter(|d| &d.network == network)
                .flat_map(|d| d.origins.iter().map(|o| (o.origin, *o)))
                .collect();
            let ours = self.nets.get(network);
            if let Some(ours) = ours {
                for (origin, slice) in ours {
                    let peer = theirs.get(origin).copied().unwrap_or(OriginDigest {
                        origin: *origin,
                        complete: 0,
                        highest: 0,
                    });
                    if slice.complete > peer.complete {
                        let records = slice
                            .rows
                            .iter()
                            .filter(|(_, r)| r.body.is_some() || r.version > peer.complete)
                            .map(|(task, r)| record(task, r))
                            .collect();
                        groups.push(Group {
                            origin: *origin,
                            network: network.clone(),
                            snapshot: Some(slice.complete),
                            records,
                        });
                    } else if slice.highest() > peer.highest {
                        let records: Vec<Record> = slice
                            .rows
                            .iter()
                            .filter(|(_, r)| r.version > peer.complete)
                            .map(|(task, r)| record(task, r))
                            .collect();
                        if !records.is_empty() {
                            groups.push(Group {
                                origin: *origin,
                                network: network.clone(),
                                snapshot: None,
                                records,
                            });
                        }
                    }
                }
            }
            let own_known = ours.is_some_and(|o| o.contains_key(&self.me));
            if let Some(peer) = theirs.get(&self.me) {
                if !own_known && peer.complete < self.base {
                    groups.push(Group {
                        origin: self.me,
                        network: network.clone(),
                        snapshot: Some(self.base),
                        records: Vec::new(),
                    });
                }
            }
        }
        groups
    }

    /// Makes sure we answer for ourselves on `network` (watermark = base if new).
    pub fn touch_own(&mut self, network: &str) {
        self.own(network);
    }

    /// Forgets other origins' rows on networks not in `networks`; our own rows stay.
    pub fn retain_networks(&mut self, networks: &BTreeSet<String>) -> bool {
        let me = self.me;
        let mut changed = false;
        self.nets.retain(|network, origins| {
            if networks.contains(network) {
                return true;
            }
            changed |= origins
                .iter()
                .any(|(o, s)| *o != me && s.rows.values().any(|r| r.body.is_some()));
            origins.retain(|origin, _| *origin == me);
            !origins.is_empty()
        });
        changed
    }

    /// Forgets an origin that left the cluster for good.
    pub fn remove_origin(&mut self, origin: NodeId) -> bool {
        let mut changed = false;
        for origins in self.nets.values_mut() {
            if let Some(slice) = origins.remove(&origin) {
                changed |= slice.rows.values().any(|r| r.body.is_some());
            }
        }
        self.nets.retain(|_, origins| !origins.is_empty());
        changed
    }

    /// Drops tombstones older than `ttl` that the watermark covers.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut dropped = 0;
        for origins in self.nets.values_mut() {
            for slice in origins.values_mut() {
                let complete = slice.complete;
                slice.rows.retain(|_, row| {
                    let expired = row.body.is_none()
                        && row.version <= complete
                        && row
                            .dead_since
                            .is_some_and(|since| now.saturating_duration_since(since) >= ttl);
                    dropped += usize::from(expired);
                    !expired
                });
            }
        }
        dropped
    }

    /// Every live row whose origin `visible` accepts, sorted by network and task.
    pub fn endpoints(&self, visible: impl Fn(NodeId) -> bool) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for (network, origins) in &self.nets {
            for (origin, slice) in origins {
                if !visible(*origin) {
                    continue;
                }
                for (task, row) in &slice.rows {
                    if let Some(body) = &row.body {
                        out.push(Endpoint {
                            entry: EndpointEntry::from_body(network, task, body),
                            origin: *origin,
                            version: row.version,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.entry.network_id, &a.entry.task_id).cmp(&(&b.entry.network_id, &b.entry.task_id))
        });
        out
    }

    /// The origin of the live row (network, task), if there is one.
    pub fn live_origin(&self, network: &str, task: &str) -> Option<NodeId> {
        self.nets.get(network)?.iter().find_map(|(origin, slice)| {
            slice
                .rows
                .get(task)
                .filter(|r| r.body.is_some())
                .map(|_| *origin)
        })
    }

    /// Whether `origin` has any live row.
    pub fn has_live_rows(&self, origin: NodeId) -> bool {
        self.nets.values().any(|origins| {
            origins
                .get(&origin)
                .is_some_and(|s| s.rows.values().any(|r| r.body.is_some()))
        })
    }

    /// The diagnostic view.
    pub fn view(&self, visible: impl Fn(NodeId) -> bool) -> TableView {
        let mut view = TableView::default();
        for (network, origins) in &self.nets {
            for (origin, slice) in origins {
                view.watermarks
                    .push((network.clone(), *origin, slice.complete));
                for (task, row) in &slice.rows {
                    let state = match (&row.body, visible(*origin)) {
                        (None, _) => RowState::Tombstone,
                        (Some(_), true) => RowState::Visible,
                        (Some(_), false) => RowState::Hidden,
                    };
                    view.rows.push(TableRow {
                        network_id: network.clone(),
                        task_id: task.clone(),
                        origin: *origin,
                        version: row.version,
                        entry: row
                            .body
                            .as_ref()
                            .map(|b| EndpointEntry::from_body(network, task, b)),
                        state,
                    });
                }
            }
        }
        view
    }
}

fn record(task: &str, row: &Row) -> Record {
    Record {
        version: row.version,
        prev: 0,
        task_id: task.to_string(),
        body: row.body.clone(),
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
