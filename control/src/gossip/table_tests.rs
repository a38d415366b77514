//! Unit tests of the endpoint table: diffs, watermarks, snapshots, scoping, expiry and the
//! no-resurrection guarantee.

use super::*;
use crate::gossip::entry::sample;

const T0: u64 = 1_700_000_000_000_000;

fn net(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

struct Origin {
    table: Table,
    clock: HybridClock,
    now: Instant,
}

impl Origin {
    fn new(id: NodeId, at: Instant, unix: u64) -> Origin {
        let mut clock = HybridClock::new(at, unix);
        let base = clock.next(at);
        Origin {
            table: Table::new(id, base),
            clock,
            now: at,
        }
    }

    fn publish(&mut self, entries: &[EndpointEntry]) -> Vec<Group> {
        self.now += Duration::from_millis(1);
        self.table.publish(entries, &mut self.clock, self.now)
    }
}

fn all(_: &str) -> bool {
    true
}

fn live_tasks(table: &Table) -> Vec<String> {
    table
        .endpoints(|_| true)
        .into_iter()
        .map(|e| e.entry.task_id)
        .collect()
}

fn watermark(table: &Table, network: &str, origin: NodeId) -> u64 {
    table
        .view(|_| true)
        .watermarks
        .into_iter()
        .find(|(n, o, _)| n == network && *o == origin)
        .map_or(0, |(_, _, w)| w)
}

/// One anti-entropy exchange between `a` and `b`, both on `networks`, in both directions.
fn sync(a: &mut Table, b: &mut Table, networks: &BTreeSet<String>, now: Instant) {
    let list: Vec<String> = networks.iter().cloned().collect();
    let to_a = b.missing_for(&list, &a.digest(networks));
    a.apply(&to_a, all, now);
    let to_b = a.missing_for(&list, &b.digest(networks));
    b.apply(&to_b, all, now);
}

#[test]
fn clock_never_goes_back() {
    let start = Instant::now();
    let mut clock = HybridClock::new(start, T0);
    let a = clock.next(start);
    let b = clock.next(start);
    assert_eq!(a, T0);
    assert_eq!(b, T0 + 1);
    assert_eq!(clock.next(start + Duration::from_secs(1)), T0 + 1_000_000);
    clock.observe(T0 + 5_000_000);
    assert_eq!(clock.next(start + Duration::from_secs(1)), T0 + 5_000_001);
}

#[test]
fn publish_emits_only_differences_with_chained_versions() {
    let mut o = Origin::new(1, Instant::now(), T0);
    let first = o.publish(&[sample("n", "a", 2), sample("n", "b", 3)]);
    assert_eq!(first.len(), 1);
    let records = &first[0].records;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].prev, 0, "the run's first change");
    assert_eq!(records[1].prev, records[0].version);
    assert!(o
        .publish(&[sample("n", "a", 2), sample("n", "b", 3)])
        .is_empty());
    let mut changed = sample("n", "b", 3);
    changed.health = crate::gossip::Health::Unhealthy;
    let second = o.publish(&[changed, sample("m", "c", 4)]);
    let kinds: Vec<(String, String, bool)> = second
        .iter()
        .flat_map(|g| {
            g.records
                .iter()
                .map(|r| (g.network.clone(), r.task_id.clone(), r.body.is_some()))
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("m".into(), "c".into(), true),
            ("n".into(), "a".into(), false),
            ("n".into(), "b".into(), true),
        ]
    );
    assert_eq!(live_tasks(&o.table), vec!["c", "b"]);
}

#[test]
fn in_order_changes_advance_the_watermark_and_out_of_order_ones_chain_later() {
    let mut o = Origin::new(1, Instant::now(), T0);
    let g1 = o.publish(&[sample("n", "a", 2)]);
    let g2 = o.publish(&[sample("n", "a", 2), sample("n", "b", 3)]);
    let g3 = o.publish(&[sample("n", "b", 3)]);
    let now = o.now;
    let mut r = Table::new(2, T0);
    r.apply(&g3, all, now);
    r.apply(&g2, all, now);
    assert_eq!(live_tasks(&r), vec!["b"]);
    assert_eq!(watermark(&r, "n", 1), 0, "no chain to the base yet");
    // g1 is older than the tombstone of a from g3: refused as a row, but it completes the chain.
    let applied = r.apply(&g1, all, now);
    assert!(applied.fresh.is_empty());
    assert_eq!(applied.stale, 1);
    assert_eq!(watermark(&r, "n", 1), g3[0].records[0].version);
    assert_eq!(live_tasks(&r), vec!["b"]);
}

#[test]
fn rows_below_the_watermark_that_are_missing_stay_dead() {
    let mut o = Origin::new(1, Instant::now(), T0);
    let mut r = Table::new(2, T0);
    r.touch_own("n");
    o.table.touch_own("n");
    let create = o.publish(&[sample("n", "a", 2)]);
    let delete = o.publish(&[]);
    r.apply(&create, all, o.now);
    r.apply(&delete, all, o.now);
    // The tombstone expires.
    let later = o.now + Duration::from_secs(600);
    assert_eq!(r.expire(later, Duration::from_secs(60)), 1);
    assert!(r.view(|_| true).rows.is_empty());
    // The old creation arrives again (a slow forwarder): refused.
    let applied = r.apply(&create, all, later);
    assert!(applied.fresh.is_empty() && !applied.changed);
    assert!(live_tasks(&r).is_empty());
}

#[test]
fn a_host_partitioned_longer_than_the_tombstone_lifetime_does_not_resurrect_rows() {
    let start = Instant::now();
    let networks = net(&["n"]);
    let mut origin = Origin::new(1, start, T0);
    let mut b = Table::new(2, T0);
    let mut stale = Table::new(3, T0);
    for t in [&mut b, &mut stale] {
        t.touch_own("n");
    }
    origin.table.touch_own("n");
    // Everyone learns the row.
    let create = origin.publish(&[sample("n", "a", 2), sample("n", "keep", 3)]);
    b.apply(&create, all, origin.now);
    stale.apply(&create, all, origin.now);
    // `stale` is cut off; the origin deletes "a" and b learns it.
    let delete = origin.publish(&[sample("n", "keep", 3)]);
    b.apply(&delete, all, origin.now);
    assert_eq!(live_tasks(&b), vec!["keep"]);
    // Long after, every tombstone has expired.
    let later = origin.now + Duration::from_secs(3600);
    let ttl = Duration::from_secs(300);
    b.expire(later, ttl);
    origin.table.expire(later, ttl);
    assert!(b.view(|_| true).rows.iter().all(|r| r.task_id != "a"));
    // The stale host comes back and syncs with b, then with the origin, both directions.
    sync(&mut stale, &mut b, &networks, later);
    assert_eq!(
        live_tasks(&b),
        vec!["keep"],
        "b must not take the dead row back"
    );
    assert_eq!(
        live_tasks(&stale),
        vec!["keep"],
        "the stale host learns the deletion"
    );
    let mut stale2 = Table::new(4, T0);
    stale2.touch_own("n");
    stale2.apply(&create, all, later);
    sync(&mut stale2, &mut origin.table, &networks, later);
    assert_eq!(live_tasks(&origin.table), vec!["keep"]);
    assert_eq!(live_tasks(&stale2), vec!["keep"]);
}

#[test]
fn snapshots_carry_live_rows_whatever_their_version() {
    let networks = net(&["n"]);
    let mut o = Origin::new(1, Instant::now(), T0);
    o.table.touch_own("n");
    o.publish(&[sample("n", "a", 2)]);
    o.publish(&[sample("n", "a", 2), sample("n", "b", 3)]);
    let mut fresh = Table::new(2, T0);
    fresh.touch_own("n");
    sync(&mut fresh, &mut o.table, &networks, o.now);
    assert_eq!(live_tasks(&fresh), vec!["a", "b"]);
    assert_eq!(watermark(&fresh, "n", 1), watermark(&o.table, "n", 1));
    // Now in step: nothing more to send either way.
    let list: Vec<String> = networks.iter().cloned().collect();
    assert!(o
        .table
        .missing_for(&list, &fresh.digest(&networks))
        .is_empty());
    assert!(fresh
        .missing_for(&list, &o.table.digest(&networks))
        .is_empty());
}

#[test]
fn a_restarted_origin_retracts_rows_of_its_previous_run() {
    let networks = net(&["n"]);
    let start = Instant::now();
    let mut old = Origin::new(1, start, T0);
    old.table.touch_own("n");
    let create = old.publish(&[sample("n", "a", 2)]);
    let mut r = Table::new(2, T0);
    r.touch_own("n");
    r.apply(&create, all, old.now);
    // Restart one minute later: the new run knows nothing of "a".
    let mut new = Origin::new(1, start, T0 + 60_000_000);
    new.table.touch_own("n");
    sync(&mut r, &mut new.table, &networks, start);
    assert!(live_tasks(&r).is_empty());
    // Also when the new run left the network: it answers for itself anyway.
    let mut r2 = Table::new(3, T0);
    r2.touch_own("n");
    r2.apply(&create, all, old.now);
    let mut gone = Origin::new(1, start, T0 + 60_000_000);
    let list: Vec<String> = networks.iter().cloned().collect();
    let answer = gone.table.missing_for(&list, &r2.digest(&networks));
    r2.apply(&answer, all, start);
    assert!(live_tasks(&r2).is_empty());
    let _ = &mut gone;
}

#[test]
fn our_own_rows_seen_ahead_are_reported_not_applied() {
    let mut me = Origin::new(1, Instant::now(), T0);
    me.table.touch_own("n");
    let group = Group {
        origin: 1,
        network: "n".into(),
        snapshot: Some(T0 + 10_000_000),
        records: vec![],
    };
    let applied = me.table.apply(&[group], all, me.now);
    assert_eq!(applied.own_ahead, Some(T0 + 10_000_000));
    me.publish(&[sample("n", "a", 2)]);
    me.clock.observe(T0 + 10_000_000);
    let again = me.table.republish(&mut me.clock, me.now);
    assert!(again[0].records.iter().all(|r| r.version > T0 + 10_000_000));
    assert_eq!(live_tasks(&me.table), vec!["a"]);
}

#[test]
fn out_of_scope_groups_are_skipped_and_networks_can_be_left() {
    let mut o = Origin::new(1, Instant::now(), T0);
    let groups = o.publish(&[sample("n", "a", 2), sample("m", "b", 3)]);
    let mut r = Table::new(2, T0);
    r.apply(&groups, |n| n == "n", o.now);
    assert_eq!(live_tasks(&r), vec!["a"]);
    assert!(r.retain_networks(&net(&[])));
    assert!(live_tasks(&r).is_empty());
    // Own rows survive leaving a network.
    assert!(!o.table.retain_networks(&net(&[])));
    assert_eq!(live_tasks(&o.table).len(), 2);
}

#[test]
fn visibility_hides_without_forgetting_and_origins_can_be_removed() {
    let mut o = Origin::new(1, Instant::now(), T0);
    let groups = o.publish(&[sample("n", "a", 2)]);
    let mut r = Table::new(2, T0);
    r.apply(&groups, all, o.now);
    assert!(r.endpoints(|origin| origin != 1).is_empty());
    let view = r.view(|origin| origin != 1);
    assert_eq!(view.rows[0].state, RowState::Hidden);
    assert!(r.has_live_rows(1));
    assert!(r.remove_origin(1));
    assert!(!r.has_live_rows(1));
}

#[test]
fn the_first_change_of_a_new_run_retracts_rows_of_the_previous_run() {
    let start = Instant::now();
    let mut old = Origin::new(1, start, T0);
    let mut r = Table::new(2, T0);
    r.apply(
        &old.publish(&[sample("n", "a", 2), sample("n", "b", 3)]),
        all,
        old.now,
    );
    // The restarted origin only knows "c"; its push alone (no anti-entropy) retracts a and b.
    let mut new = Origin::new(1, start, T0 + 60_000_000);
    let push = new.publish(&[sample("n", "c", 4)]);
    assert_eq!(push[0].records[0].prev, 0);
    let applied = r.apply(&push, all, new.now);
    assert!(applied.changed);
    assert_eq!(live_tasks(&r), vec!["c"]);
    assert_eq!(watermark(&r, "n", 1), push[0].records[0].version);
}
