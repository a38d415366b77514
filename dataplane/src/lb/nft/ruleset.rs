//! The nftables table of one host's published ports, computed from a [`HostLb`]: pure, no
//! kernel. [`plan`] turns the desired state into plain data ([`Ruleset`]: chains, rules,
//! counters, the legs to route through); [`transaction`] turns it, and the ruleset applied
//! before it, into one atomic `nft -j` batch.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use nftables::expr::{
    CTDir, CTFamily, Expression, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload,
    PayloadField, SetItem, Verdict, CT,
};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{
    self, JumpTarget, Match, NATFamily, Operator, Reject, RejectType, Statement, VerdictMap, NAT,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

use crate::lb::{BackendState, HostLb, LbBackend, LbError, LbPort, LbService, Protocol};

/// The table this path owns (family `ip`); nothing else of the host's ruleset is touched.
pub const TABLE: &str = "mesh-lb";
/// The table's family.
pub const FAMILY: NfFamily = NfFamily::IP;
/// The base chain that picks a backend (type nat, hook prerouting, priority dstnat).
pub const PREROUTING: &str = "prerouting";
/// The base chain that rewrites the source of flows sent on to another host (type nat, hook
/// postrouting, priority srcnat).
pub const POSTROUTING: &str = "postrouting";
/// Priority of the prerouting chain: dstnat.
const DSTNAT: i32 = -100;
/// Priority of the postrouting chain: srcnat.
const SRCNAT: i32 = 100;
/// The most elements one pick map holds: weights are reduced by their greatest common divisor,
/// then scaled down (each Active backend keeping at least one element) past this.
pub const MAX_SLOTS: u32 = 256;
/// The nft counter of flows sent on to another host with this host's source address.
const SNAT_COUNTER: &str = "snat";
/// Its name as [`crate::lb::LbCounter`] reports it.
const SNAT_COUNTER_NAME: &str = "forward:snat";
/// Longest piece of an ID kept verbatim in a chain or counter name.
const MAX_IDENT_LEN: usize = 32;

/// What a new flow on a published port met, one named counter per port each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A new flow from a client was balanced (over every Active backend, or the local ones in
    /// host mode).
    New,
    /// A new flow from a cluster peer (another host forwarding it) was balanced over this
    /// host's own backends.
    Peer,
    /// A new flow was sent to a backend on this host.
    Local,
    /// A new flow was sent on to another host.
    Remote,
    /// A new flow found no backend and was refused (TCP reset, ICMP port unreachable).
    Refused,
    /// A new flow from a peer found no backend on this host and was dropped: the peer's view
    /// is ahead of this host's (a task that has just started here, not yet programmed), and
    /// the client's retransmission finds it programmed. A reset would fail the connection.
    Unready,
}

impl Outcome {
    /// Every outcome, in counter order.
    pub const ALL: [Outcome; 6] = [
        Outcome::New,
        Outcome::Peer,
        Outcome::Local,
        Outcome::Remote,
        Outcome::Refused,
        Outcome::Unready,
    ];

    /// Suffix of the nft counter's name.
    fn suffix(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Peer => "peer",
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Refused => "refused",
            Self::Unready => "unready",
        }
    }

    /// Prefix of the [`crate::lb::LbCounter`] name.
    fn label(self) -> &'static str {
        match self {
            Self::New => "flow:new",
            Self::Peer => "flow:peer",
            Self::Local => "forward:local",
            Self::Remote => "forward:remote",
            Self::Refused => "refuse:no-backend",
            Self::Unready => "drop:peer-no-backend",
        }
    }
}

/// A network whose leg the host routes the subnet through: `<subnet>/<prefix_len> via
/// 169.254.0.1 dev mg-<id> onlink`, because a local backend lives there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LegRoute {
    /// The network's ID.
    pub network_id: String,
    /// Its subnet (host bits cleared).
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// A chain of the table: its rules, each a list of statements.
pub type Rules = Vec<Vec<Statement<'static>>>;

/// The content of the table, as plain data. Two equal rulesets give the same kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Every chain by name (the two base chains included), with its rules in order.
    pub chains: BTreeMap<String, Rules>,
    /// Named counters: nft object name → the name [`crate::lb::LbCounter`] reports.
    pub counters: BTreeMap<String, String>,
    /// The legs to route through.
    pub legs: Vec<LegRoute>,
}

/// The ruleset of `desired`, as one batch that replaces the table whole (what a first apply
/// sends): a convenience over [`plan`] and [`transaction`].
pub fn ruleset(desired: &HostLb) -> Result<Nftables<'static>, LbError> {
    Ok(transaction(&plan(desired)?, None))
}

/// The table `desired` needs. Fails on an inconsistent state: a published port twice, a local
/// backend on a network the host does not list.
pub fn plan(desired: &HostLb) -> Result<Ruleset, LbError> {
    validate(desired)?;
    let peers = peers(desired);
    let mut ruleset = Ruleset::default();
    let mut prerouting = Rules::new();
    let mut legs = BTreeSet::new();
    let mut any_remote = false;

    let mut services: Vec<&LbService> = desired.services.iter().collect();
    services.sort_by(|a, b| a.id.cmp(&b.id));
    for service in services {
        let mut backends: Vec<&LbBackend> = service.backends.iter().collect();
        backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let mut ports = service.ports.clone();
        ports.sort();
        for port in &ports {
            let chain = port_chain(service, port);
            let local = |b: &&LbBackend| desired.is_local(b);
            // Host mode answers with this host's tasks only, whatever the caller listed.
            let listed: Vec<&LbBackend> = if port.local_only {
                backends.iter().copied().filter(local).collect()
            } else {
                backends.clone()
            };
            for backend in listed.iter().filter(|b| desired.is_local(b)) {
                let network = desired
                    .networks
                    .iter()
                    .find(|n| n.id == backend.network_id)
                    .expect("validated: local backends' networks are listed");
                legs.insert(LegRoute {
                    network_id: network.id.clone(),
                    subnet: network_address(network.subnet, network.prefix_len),
                    prefix_len: network.prefix_len,
                });
            }
            let active: Vec<&LbBackend> = listed
                .iter()
                .copied()
                .filter(|b| b.state == BackendState::Active && b.weight > 0)
                .collect();
            let active_local: Vec<&LbBackend> = active.iter().copied().filter(local).collect();
            // A peer decided on a backend here with its own view of the table; this host
            // learns first that its task drains. Until that task stops, a flow the peer sent
            // still has somewhere to go.
            let draining_local: Vec<&LbBackend> = listed
                .iter()
                .copied()
                .filter(|b| b.state == BackendState::Draining && b.weight > 0)
                .filter(local)
                .collect();
            let peer_pick = if active_local.is_empty() {
                &draining_local
            } else {
                &active_local
            };

            for outcome in Outcome::ALL {
                ruleset.counters.insert(
                    counter_name(&chain, outcome),
                    format!(
                        "{}@{}/{}/{}",
                        outcome.label(),
                        service.name,
                        protocol_name(port.protocol),
                        port.published
                    ),
                );
            }
            prerouting.push(vec![
                matches(payload("ip", "daddr"), ip(desired.underlay_ip)),
                matches(
                    payload(protocol_name(port.protocol), "dport"),
                    Expression::Number(port.published.into()),
                ),
                // Only new flows reach a nat chain anyway; the ct match is there for its side
                // effect: it makes the kernel track connections in this namespace, which nat
                // chains alone do not (a port whose chain only refuses would otherwise never
                // be seen: no conntrack, no nat hook).
                Statement::Match(Match {
                    left: ct("state", None),
                    right: Expression::String("new".into()),
                    op: Operator::IN,
                }),
                Statement::Jump(target(&chain)),
            ]);

            let mut entry = Rules::new();
            if !port.local_only && !peers.is_empty() {
                let peer_chain = format!("{chain}-peer");
                entry.push(vec![
                    matches(payload("ip", "saddr"), ip_set(&peers)),
                    Statement::Goto(target(&peer_chain)),
                ]);
                ruleset.chains.insert(
                    peer_chain,
                    pick_rules(&chain, port, Outcome::Peer, peer_pick),
                );
            }
            entry.extend(pick_rules(&chain, port, Outcome::New, &active));
            ruleset.chains.insert(chain.clone(), entry);

            for backend in active.iter().chain(peer_pick.iter()) {
                let (addr, dport, outcome) = if desired.is_local(backend) {
                    (backend.ip, port.target, Outcome::Local)
                } else {
                    any_remote = true;
                    (backend.vtep, port.published, Outcome::Remote)
                };
                ruleset.chains.insert(
                    backend_chain(&chain, backend),
                    vec![vec![
                        matches(
                            Expression::Named(NamedExpression::Meta(Meta {
                                key: MetaKey::L4proto,
                            })),
                            Expression::String(protocol_name(port.protocol).into()),
                        ),
                        Statement::Counter(stmt::Counter::Named(
                            counter_name(&chain, outcome).into(),
                        )),
                        Statement::DNAT(Some(NAT {
                            addr: Some(ip(addr)),
                            family: Some(NATFamily::IP),
                            port: Some(Expression::Number(dport.into())),
                            flags: None,
                        })),
                    ]],
                );
            }
        }
    }

    let mut postrouting = Rules::new();
    if any_remote && !peers.is_empty() {
        ruleset
            .counters
            .insert(SNAT_COUNTER.to_string(), SNAT_COUNTER_NAME.to_string());
        postrouting.push(vec![
            // A flag test (`ct status dnat`), not an equality with the whole status word.
            Statement::Match(Match {
                left: ct("status", None),
                right: Expression::String("dnat".into()),
                op: Operator::IN,
            }),
            matches(ct("daddr", Some(CTDir::Original)), ip(desired.underlay_ip)),
            matches(payload("ip", "daddr"), ip_set(&peers)),
            Statement::Counter(stmt::Counter::Named(SNAT_COUNTER.into())),
            Statement::SNAT(Some(NAT {
                addr: Some(ip(desired.underlay_ip)),
                family: Some(NATFamily::IP),
                port: None,
                flags: None,
            })),
        ]);
    }
    ruleset.chains.insert(PREROUTING.to_string(), prerouting);
    ruleset.chains.insert(POSTROUTING.to_string(), postrouting);
    ruleset.legs = legs.into_iter().collect();
    Ok(ruleset)
}

/// The batch that takes the table from `previous` (what this handle applied last, or None
/// when it does not know: the table is then deleted and rebuilt) to `next`, in one
/// transaction. With a previous ruleset, the table is flushed (rules only), stale chains and
/// counters are deleted, and the rest re-added: counters keep their values.
pub fn transaction(next: &Ruleset, previous: Option<&Ruleset>) -> Nftables<'static> {
    let mut objects: Vec<NfObject<'static>> = Vec::new();
    let add = |objects: &mut Vec<NfObject<'static>>, object| {
        objects.push(NfObject::CmdObject(NfCmd::Add(object)));
    };
    add(&mut objects, NfListObject::Table(table()));
    match previous {
        None => {
            objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
                table(),
            ))));
            add(&mut objects, NfListObject::Table(table()));
        }
        Some(previous) => {
            objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Table(
                table(),
            ))));
            for name in previous.chains.keys() {
                if !next.chains.contains_key(name) {
                    objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Chain(
                        chain(name),
                    ))));
                }
            }
            for name in previous.counters.keys() {
                if !next.counters.contains_key(name) {
                    objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Counter(
                        counter(name),
                    ))));
                }
            }
        }
    }
    for name in next.counters.keys() {
        add(&mut objects, NfListObject::Counter(counter(name)));
    }
    // Base chains first (as nft lists them), then the regular chains in name order.
    for name in [PREROUTING, POSTROUTING] {
        add(&mut objects, NfListObject::Chain(chain(name)));
    }
    for name in next.chains.keys() {
        if name != PREROUTING && name != POSTROUTING {
            add(&mut objects, NfListObject::Chain(chain(name)));
        }
    }
    let base_first = [PREROUTING, POSTROUTING]
        .into_iter()
        .filter_map(|name| next.chains.get_key_value(name));
    let others = next
        .chains
        .iter()
        .filter(|(name, _)| *name != PREROUTING && *name != POSTROUTING);
    for (name, rules) in base_first.chain(others) {
        for rule in rules {
            add(
                &mut objects,
                NfListObject::Rule(schema::Rule {
                    family: FAMILY,
                    table: TABLE.into(),
                    chain: name.clone().into(),
                    expr: rule.clone().into(),
                    handle: None,
                    index: None,
                    comment: None,
                }),
            );
        }
    }
    Nftables {
        objects: objects.into(),
    }
}

/// The batch that deletes the table (and so everything in it).
pub fn removal() -> Nftables<'static> {
    table_removal(table())
}

/// The batch that deletes `table`. `add` first, so that a table already gone is not an error.
pub(crate) fn table_removal(table: schema::Table<'static>) -> Nftables<'static> {
    Nftables {
        objects: vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table.clone()))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table))),
        ]
        .into(),
    }
}

/// Checks what the nftables path relies on.
fn validate(desired: &HostLb) -> Result<(), LbError> {
    let mut seen = BTreeMap::new();
    for service in &desired.services {
        for port in &service.ports {
            if let Some(other) = seen.insert((port.protocol, port.published), &service.id) {
                return Err(LbError::InvalidState(format!(
                    "published port {}/{} belongs to services {other} and {}",
                    protocol_name(port.protocol),
                    port.published,
                    service.id
                )));
            }
        }
        if service.ports.is_empty() {
            continue;
        }
        for backend in service.backends.iter().filter(|b| desired.is_local(b)) {
            if !desired.networks.iter().any(|n| n.id == backend.network_id) {
                return Err(LbError::InvalidState(format!(
                    "local backend {} of service {} is on network {}, which this host does \
                     not list (no leg to reach it through)",
                    backend.task_id, service.id, backend.network_id
                )));
            }
        }
    }
    if let Some(network) = desired.networks.iter().find(|n| n.prefix_len > 32) {
        return Err(LbError::InvalidState(format!(
            "network {} has prefix length {}",
            network.id, network.prefix_len
        )));
    }
    Ok(())
}

/// The other hosts that run backends of any service: flows from them to a published port were
/// forwarded by their ingress, and go to this host's own backends only.
fn peers(desired: &HostLb) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = desired
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .map(|b| b.vtep)
        .filter(|vtep| *vtep != desired.underlay_ip && !vtep.is_unspecified())
        .collect();
    set.into_iter().collect()
}

/// The rules that pick a backend among `active` for a new flow (counted as `outcome`), or
/// refuse it when there is none (a peer's flow is dropped instead, see [`Outcome::Unready`]).
fn pick_rules(chain: &str, port: &LbPort, outcome: Outcome, active: &[&LbBackend]) -> Rules {
    let mut rules = Rules::new();
    let slots = slots(active);
    if !slots.is_empty() {
        let len = u32::try_from(slots.len()).expect("at most MAX_SLOTS + backends");
        let items = slots
            .iter()
            .enumerate()
            .map(|(i, backend)| {
                SetItem::Mapping(
                    Expression::Number(u32::try_from(i).expect("fits")),
                    Expression::Verdict(Verdict::Goto(target(&backend_chain(chain, backend)))),
                )
            })
            .collect();
        rules.push(vec![
            Statement::Counter(stmt::Counter::Named(counter_name(chain, outcome).into())),
            Statement::VerdictMap(VerdictMap {
                key: Expression::Named(NamedExpression::Numgen(Numgen {
                    mode: NgMode::Random,
                    ng_mod: len,
                    offset: None,
                })),
                data: Expression::Named(NamedExpression::Set(items)),
            }),
        ]);
    }
    if outcome == Outcome::Peer {
        rules.push(vec![
            Statement::Counter(stmt::Counter::Named(
                counter_name(chain, Outcome::Unready).into(),
            )),
            Statement::Drop(Some(stmt::Drop {})),
        ]);
        return rules;
    }
    let reject = match port.protocol {
        Protocol::Tcp => Reject::new(Some(RejectType::TCPReset), None),
        Protocol::Udp => Reject::new(Some(RejectType::ICMP), Some(RejectCode::PortUnreach)),
    };
    rules.push(vec![
        Statement::Counter(stmt::Counter::Named(
            counter_name(chain, Outcome::Refused).into(),
        )),
        Statement::Reject(Some(reject)),
    ]);
    rules
}

/// The pick map's elements: each backend repeated in proportion to its weight (as
/// kube-proxy's nftables mode does with `numgen random mod N`), weights reduced by their
/// greatest common divisor and scaled to at most about [`MAX_SLOTS`] elements.
pub fn slots<'a>(active: &[&'a LbBackend]) -> Vec<&'a LbBackend> {
    let weights: Vec<u32> = active.iter().map(|b| u32::from(b.weight)).collect();
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
    let total: u32 = reduced.iter().sum();
    if total > MAX_SLOTS {
        reduced = reduced
            .iter()
            .map(|w| ((u64::from(*w) * u64::from(MAX_SLOTS) / u64::from(total)) as u32).max(1))
            .collect();
    }
    active
        .iter()
        .zip(reduced)
        .flat_map(|(b, n)| std::iter::repeat_n(*b, n as usize))
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The first address of `ip`'s /`prefix_len` network.
fn network_address(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// `svc-<service>-<proto>-<published>`: the chain a published port's new flows jump to.
fn port_chain(service: &LbService, port: &LbPort) -> String {
    format!(
        "svc-{}-{}-{}",
        ident(&service.id),
        protocol_name(port.protocol),
        port.published
    )
}

/// `<port chain>-be-<task>`: the chain that sends a flow to one backend.
fn backend_chain(port_chain: &str, backend: &LbBackend) -> String {
    format!("{port_chain}-be-{}", ident(&backend.task_id))
}

/// `<port chain>-<outcome>`: a port's named counter.
fn counter_name(port_chain: &str, outcome: Outcome) -> String {
    format!("{port_chain}-{}", outcome.suffix())
}

/// An ID as it appears in chain and counter names, which nft's own syntax must accept (so
/// that `nft list` output reads back): verbatim when it is at most 32 characters of
/// `[A-Za-z0-9_.-]`, else its first 16 such characters, `-h` and 8 hex digits of a hash of
/// the whole ID (so names stay readable and distinct).
pub fn ident(id: &str) -> String {
    let plain = |c: &char| c.is_ascii_alphanumeric() || matches!(*c, '_' | '.' | '-');
    if !id.is_empty() && id.len() <= MAX_IDENT_LEN && id.chars().all(|c| plain(&c)) {
        return id.to_string();
    }
    let kept: String = id.chars().filter(plain).take(16).collect();
    format!("{kept}-h{:08x}", fnv1a(id.as_bytes()) as u32)
}

/// 64-bit FNV-1a: stable across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `tcp` or `udp`, as nft spells them.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain(name: &str) -> schema::Chain<'static> {
    let base = |hook, prio| schema::Chain {
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..plain_chain(name)
    };
    match name {
        PREROUTING => base(NfHook::Prerouting, DSTNAT),
        POSTROUTING => base(NfHook::Postrouting, SRCNAT),
        _ => plain_chain(name),
    }
}

fn plain_chain(name: &str) -> schema::Chain<'static> {
    schema::Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: None,
        hook: None,
        prio: None,
        dev: None,
        policy: None,
    }
}

fn counter(name: &str) -> schema::Counter<'static> {
    schema::Counter {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_string().into(),
        handle: None,
        packets: None,
        bytes: None,
    }
}

fn target(chain: &str) -> JumpTarget<'static> {
    JumpTarget {
        target: chain.to_string().into(),
    }
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn ct(key: &'static str, dir: Option<CTDir>) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: dir.map(|_| CTFamily::IP),
        dir,
    }))
}

fn ip(addr: Ipv4Addr) -> Expression<'static> {
    Expression::String(addr.to_string().into())
}

/// An anonymous set of addresses (`{ a, b }`), or the one address alone.
fn ip_set(addrs: &[Ipv4Addr]) -> Expression<'static> {
    match addrs {
        [one] => ip(*one),
        many => Expression::Named(NamedExpression::Set(
            many.iter().map(|a| SetItem::Element(ip(*a))).collect(),
        )),
    }
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
