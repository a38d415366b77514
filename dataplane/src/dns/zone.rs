//! Zones: the records one task may see, as the control plane hands them over ([`Records`]), and
//! pre-encoded for the hot path ([`Zone`]), behind a shared, swappable [`ZoneHandle`].
//!
//! A name's A answer is encoded once per rotation (up to [`MAX_ROTATIONS`] orders of its
//! addresses), each record owned by a compression pointer to offset 12, where every reply
//! carries the question's name. Serving is then a copy.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use super::error::DnsError;
use super::wire::{self, CLASS_IN, MAX_LABEL_LEN, MAX_NAME_LEN, TYPE_A};

/// Orders of a name's addresses encoded ahead, served round-robin so clients that take the
/// first address spread over all of them.
pub const MAX_ROTATIONS: usize = 8;
/// Most addresses one name may have: the answer must fit a 64 KiB TCP message.
pub const MAX_ADDRESSES: usize = 4000;
/// Most SRV records one name may have, for the same reason.
pub const MAX_SRV: usize = 1000;
/// Bytes of one pre-encoded A record: pointer, type, class, TTL, length, address.
const A_RECORD_LEN: usize = 16;
/// A compression pointer to offset 12, where the question's name is in every reply.
const POINTER_TO_QUESTION: [u8; 2] = [0xc0, 0x0c];

/// The records a set of tasks may see: plain data, built by the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Names (lowercase, no trailing dot: "web", "tasks.web") and their addresses.
    pub a: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Names ("_http._tcp.web") and their SRV records.
    pub srv: BTreeMap<String, Vec<Srv>>,
    /// TTL of every answer, in seconds. Short TTLs keep clients' caches fresh.
    pub ttl: u32,
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Share among records of equal priority.
    pub weight: u16,
    /// The service's port.
    pub port: u16,
    /// The host name serving it (its address is added to answers when it is in the zone).
    pub target: String,
}

/// What the zone holds for one name.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Its addresses, in the order given.
    pub addrs: Vec<Ipv4Addr>,
    /// Its SRV records.
    pub srv: Vec<Srv>,
    /// `rotations` A answers of `addrs.len()` records each, back to back.
    encoded: Vec<u8>,
    rotations: usize,
}

impl Entry {
    /// The pre-encoded A records of rotation `turn % rotations`.
    pub fn a_answer(&self, turn: usize) -> &[u8] {
        if self.rotations == 0 {
            return &[];
        }
        let len = self.addrs.len() * A_RECORD_LEN;
        let start = (turn % self.rotations) * len;
        &self.encoded[start..start + len]
    }

    /// How many A records `a_answer` holds.
    pub fn a_count(&self) -> usize {
        self.addrs.len()
    }

    /// How many orders `a_answer` cycles through.
    #[cfg(test)]
    pub fn rotations(&self) -> usize {
        self.rotations
    }

    /// The first address of rotation `turn`, which the slow path starts its answer with.
    pub fn rotation_start(&self, turn: usize) -> usize {
        if self.rotations == 0 {
            return 0;
        }
        (turn % self.rotations) * self.addrs.len() / self.rotations
    }
}

/// A set of records, pre-encoded for serving. Build once per change; share with a handle.
#[derive(Debug, Default)]
pub struct Zone {
    /// Keyed by the lowercase wire-format name, root label included.
    names: HashMap<Box<[u8]>, Entry>,
    ttl: u32,
}

impl Zone {
    /// Checks and encodes `records`. Names are taken case-insensitively, with or without a
    /// trailing dot.
    pub fn new(records: Records) -> Result<Zone, DnsError> {
        let mut names: HashMap<Box<[u8]>, Entry> = HashMap::new();
        let ttl = records.ttl;
        for (name, addrs) in records.a {
            if addrs.len() > MAX_ADDRESSES {
                return Err(too_many(&name, addrs.len(), MAX_ADDRESSES));
            }
            let entry = entry_for(&mut names, &name)?;
            entry.addrs.extend(addrs);
            if entry.addrs.len() > MAX_ADDRESSES {
                return Err(too_many(&name, entry.addrs.len(), MAX_ADDRESSES));
            }
        }
        for (name, srv) in records.srv {
            for record in &srv {
                encode_name(&record.target).map_err(|err| DnsError::InvalidRecord {
                    name: name.clone(),
                    reason: format!("SRV target: {err}"),
                })?;
            }
            let entry = entry_for(&mut names, &name)?;
            entry.srv.extend(srv);
            if entry.srv.len() > MAX_SRV {
                return Err(too_many(&name, entry.srv.len(), MAX_SRV));
            }
        }
        for entry in names.values_mut() {
            entry.rotations = entry.addrs.len().min(MAX_ROTATIONS);
            entry.encoded = encode_rotations(&entry.addrs, entry.rotations, ttl);
        }
        Ok(Zone { names, ttl })
    }

    /// What the zone holds for a wire-format name, matched case-insensitively.
    pub(crate) fn lookup(&self, wire_name: &[u8]) -> Option<&Entry> {
        let mut buf = [0u8; MAX_NAME_LEN];
        self.names.get(wire::lowercase_name(wire_name, &mut buf))
    }

    /// What the zone holds for a dotted name ("tasks.web"), matched case-insensitively.
    pub(crate) fn lookup_str(&self, name: &str) -> Option<&Entry> {
        self.names.get(&*encode_name(name).ok()?)
    }

    /// TTL of every answer.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the zone has no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A shared, swappable zone: every server holding a clone answers from the zone last `set`,
/// from the next query on.
#[derive(Debug, Clone, Default)]
pub struct ZoneHandle {
    current: Arc<RwLock<Arc<Zone>>>,
}

impl ZoneHandle {
    /// A handle serving `zone`.
    pub fn new(zone: Zone) -> Self {
        ZoneHandle {
            current: Arc::new(RwLock::new(Arc::new(zone))),
        }
    }

    /// Serves `zone` from now on, in every server sharing this handle.
    pub fn set(&self, zone: Zone) {
        let zone = Arc::new(zone);
        // A poisoned lock still holds a whole Arc: a writer cannot leave it half written.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = zone;
    }

    /// The zone being served.
    pub fn get(&self) -> Arc<Zone> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&current)
    }
}

/// The entry for `name`, created empty if new.
fn entry_for<'z>(
    names: &'z mut HashMap<Box<[u8]>, Entry>,
    name: &str,
) -> Result<&'z mut Entry, DnsError> {
    let key = encode_name(name)?;
    Ok(names.entry(key).or_insert_with(|| Entry {
        addrs: Vec::new(),
        srv: Vec::new(),
        encoded: Vec::new(),
        rotations: 0,
    }))
}

fn too_many(name: &str, count: usize, max: usize) -> DnsError {
    DnsError::InvalidRecord {
        name: name.into(),
        reason: format!("{count} records, but at most {max} fit in one DNS message: serve fewer"),
    }
}

/// A dotted name in lowercase wire format, root label included.
fn encode_name(name: &str) -> Result<Box<[u8]>, DnsError> {
    let invalid = |reason: &str| DnsError::InvalidRecord {
        name: name.into(),
        reason: reason.into(),
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid("the name is empty; give at least one label"));
    }
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid("a label is longer than 63 bytes; shorten it"));
        }
        if !label.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "only printable ASCII without spaces is served; use IDNA (xn--) for others",
            ));
        }
        wire.push(u8::try_from(label.len()).expect("checked against 63"));
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > MAX_NAME_LEN {
        return Err(invalid(
            "the name is longer than 255 bytes in wire format; shorten it",
        ));
    }
    Ok(wire.into_boxed_slice())
}

/// `rotations` A answers for `addrs`, rotation `k` starting at address `k × n / rotations`.
fn encode_rotations(addrs: &[Ipv4Addr], rotations: usize, ttl: u32) -> Vec<u8> {
    let n = addrs.len();
    let mut encoded = Vec::with_capacity(rotations * n * A_RECORD_LEN);
    for k in 0..rotations {
        let start = k * n / rotations;
        for i in 0..n {
            encode_a(&mut encoded, addrs[(start + i) % n], ttl);
        }
    }
    encoded
}

/// One A record owned by the question's name.
fn encode_a(out: &mut Vec<u8>, addr: Ipv4Addr, ttl: u32) {
    out.extend_from_slice(&POINTER_TO_QUESTION);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&addr.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(a: &[(&str, &[Ipv4Addr])]) -> Records {
        Records {
            a: a.iter()
                .map(|(n, ips)| (n.to_string(), ips.to_vec()))
                .collect(),
            srv: BTreeMap::new(),
            ttl: 5,
        }
    }

    const IP1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const IP3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    #[test]
    fn an_a_record_is_encoded_with_a_pointer_to_the_question() {
        let zone = Zone::new(records(&[("web", &[IP1])])).unwrap();
        let entry = zone.lookup(b"\x03web\x00").unwrap();
        assert_eq!(
            entry.a_answer(0),
            [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]
        );
        assert_eq!(entry.rotations(), 1);
        assert_eq!(entry.a_answer(7), entry.a_answer(0));
    }

    #[test]
    fn names_match_in_any_case_with_or_without_a_trailing_dot() {
        let zone = Zone::new(records(&[("Tasks.Web.", &[IP1])])).unwrap();
        assert!(zone.lookup(b"\x05TASKS\x03web\x00").is_some());
        assert!(zone.lookup(b"\x05tasks\x03web\x00").is_some());
        assert!(zone.lookup_str("tasks.WEB.").is_some());
        assert!(zone.lookup(b"\x03web\x00").is_none());
        assert_eq!(zone.len(), 1);
    }

    #[test]
    fn rotations_start_at_each_address_in_turn() {
        let zone = Zone::new(records(&[("web", &[IP1, IP2, IP3])])).unwrap();
        let entry = zone.lookup(b"\x03web\x00").unwrap();
        assert_eq!(entry.rotations(), 3);
        let first = |turn| entry.a_answer(turn)[12..16].to_vec();
        assert_eq!(first(0), IP1.octets());
        assert_eq!(first(1), IP2.octets());
        assert_eq!(first(2), IP3.octets());
        assert_eq!(first(3), IP1.octets());
        // Every rotation holds every address once.
        let mut seen: Vec<_> = entry.a_answer(1).chunks(16).map(|r| r[12]).collect();
        seen.sort();
        assert_eq!(seen.len(), 3);
        assert_eq!(entry.rotation_start(2), 2);
    }

    #[test]
    fn many_addresses_get_eight_spread_rotations() {
        let addrs: Vec<Ipv4Addr> = (0..80u8).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        let zone = Zone::new(records(&[("big", &addrs)])).unwrap();
        let entry = zone.lookup(b"\x03big\x00").unwrap();
        assert_eq!(entry.rotations(), MAX_ROTATIONS);
        assert_eq!(entry.a_answer(0).len(), 80 * 16);
        assert_eq!(entry.a_answer(1)[15], 10);
        assert_eq!(entry.rotation_start(1), 10);
    }

    #[test]
    fn a_name_without_addresses_exists_with_an_empty_answer() {
        let zone = Zone::new(records(&[("empty", &[])])).unwrap();
        let entry = zone.lookup(b"\x05empty\x00").unwrap();
        assert_eq!(entry.a_answer(3), b"");
        assert_eq!(entry.a_count(), 0);
    }

    #[test]
    fn srv_names_and_targets_are_checked() {
        let mut recs = records(&[]);
        recs.srv.insert(
            "_http._tcp.web".into(),
            vec![Srv {
                priority: 0,
                weight: 0,
                port: 80,
                target: "web".into(),
            }],
        );
        let zone = Zone::new(recs.clone()).unwrap();
        assert_eq!(zone.lookup_str("_http._tcp.web").unwrap().srv.len(), 1);
        recs.srv.get_mut("_http._tcp.web").unwrap()[0].target = "a..b".into();
        assert!(Zone::new(recs).is_err());
    }

    #[test]
    fn invalid_names_are_refused_with_a_reason() {
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(60); 5].join(".");
        for name in [
            "",
            ".",
            "a..b",
            ".a",
            "sp ace",
            "é",
            &long_label,
            &long_name,
        ] {
            let err = Zone::new(records(&[(name, &[IP1])])).unwrap_err();
            assert!(matches!(err, DnsError::InvalidRecord { .. }), "{name:?}");
        }
        let too_many: Vec<Ipv4Addr> = (0..=MAX_ADDRESSES).map(|_| IP1).collect();
        assert!(Zone::new(records(&[("x", &too_many)])).is_err());
    }

    #[test]
    fn a_swap_is_seen_by_every_clone_of_the_handle() {
        let handle = ZoneHandle::new(Zone::new(records(&[("old", &[IP1])])).unwrap());
        let other = handle.clone();
        assert!(other.get().lookup_str("old").is_some());
        handle.set(Zone::new(records(&[("new", &[IP2])])).unwrap());
        assert!(other.get().lookup_str("old").is_none());
        assert!(other.get().lookup_str("new").is_some());
    }
}
