//! The allow-list of the data-path port, computed from the cluster's members: pure, no kernel.
//!
//! ```text
//! table inet mesh-underlay {
//!     set members { type ipv4_addr; elements = { 198.18.0.1, 198.18.0.2 } }
//!     counter dropped { }
//!     chain input {
//!         type filter hook input priority filter; policy accept;
//!         udp dport 4789 ip saddr @members accept
//!         udp dport 4789 counter name "dropped" drop
//!     }
//! }
//! ```
//!
//! Family `inet`, so VXLAN over IPv6 (which no member sends) is dropped too.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, NamedExpression, Payload, PayloadField};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{self, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table the allow-list owns; nothing else of the host's ruleset is touched.
pub const TABLE: &str = "mesh-underlay";
/// The table's family, as nft spells it.
pub const FAMILY_NAME: &str = "inet";
/// The table's family.
pub const FAMILY: NfFamily = NfFamily::INet;
/// The named set of members' underlay addresses.
pub const MEMBERS_SET: &str = "members";
/// The named counter of datagrams to the data-path port from anyone else.
pub const DROPPED_COUNTER: &str = "dropped";
/// The base chain (type filter, hook input).
pub const CHAIN: &str = "input";

/// What the table must say: the port, and who may send to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    /// The cluster's data-path (VXLAN) port.
    pub data_path_port: u16,
    /// Underlay addresses allowed to send to it: every member, this host included.
    pub members: BTreeSet<Ipv4Addr>,
}

/// The allow-list for a host at `own` in a cluster whose other members are at `peers`.
pub fn plan(
    data_path_port: u16,
    own: Ipv4Addr,
    peers: impl IntoIterator<Item = Ipv4Addr>,
) -> Guard {
    let mut members: BTreeSet<Ipv4Addr> = peers.into_iter().collect();
    members.insert(own);
    Guard {
        data_path_port,
        members,
    }
}

/// The batch that converges the table to `guard` in one transaction. Objects are `add`ed (a
/// no-op for those that exist), so the counter keeps its value across membership changes and
/// meshd restarts; the rules are flushed and re-added and the set flushed and refilled, so no
/// packet ever meets a half-written list.
pub fn transaction(guard: &Guard) -> Nftables<'static> {
    let mut objects: Vec<NfObject<'static>> = Vec::new();
    let mut add = |object| objects.push(NfObject::CmdObject(NfCmd::Add(object)));
    add(NfListObject::Table(table()));
    add(NfListObject::Set(Box::new(members_set())));
    add(NfListObject::Counter(schema::Counter {
        family: FAMILY,
        table: TABLE.into(),
        name: DROPPED_COUNTER.into(),
        ..schema::Counter::default()
    }));
    add(NfListObject::Chain(chain()));
    objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(
        chain(),
    ))));
    objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(
        Box::new(members_set()),
    ))));
    if !guard.members.is_empty() {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Element(
            schema::Element {
                family: FAMILY,
                table: TABLE.into(),
                name: MEMBERS_SET.into(),
                elem: guard
                    .members
                    .iter()
                    .map(|ip| Expression::String(ip.to_string().into()))
                    .collect::<Vec<_>>()
                    .into(),
            },
        ))));
    }
    for rule in rules(guard.data_path_port) {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(
            schema::Rule {
                family: FAMILY,
                table: TABLE.into(),
                chain: CHAIN.into(),
                expr: rule.into(),
                ..schema::Rule::default()
            },
        ))));
    }
    Nftables {
        objects: objects.into(),
    }
}

/// The batch that deletes the table (and so everything in it); a table already gone is not
/// an error.
pub fn removal() -> Nftables<'static> {
    crate::lb::nft::ruleset::table_removal(table())
}

/// Members pass; anyone else's datagram to the port is counted and dropped.
fn rules(port: u16) -> Vec<Vec<Statement<'static>>> {
    let to_port = || {
        Statement::Match(Match {
            left: payload("udp", "dport"),
            right: Expression::Number(u32::from(port)),
            op: Operator::EQ,
        })
    };
    vec![
        vec![
            to_port(),
            Statement::Match(Match {
                left: payload("ip", "saddr"),
                right: Expression::String(format!("@{MEMBERS_SET}").into()),
                op: Operator::EQ,
            }),
            Statement::Accept(None),
        ],
        vec![
            to_port(),
            Statement::Counter(stmt::Counter::Named(DROPPED_COUNTER.into())),
            Statement::Drop(None),
        ],
    ]
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    }
}

fn members_set() -> schema::Set<'static> {
    schema::Set {
        family: FAMILY,
        table: TABLE.into(),
        name: MEMBERS_SET.into(),
        set_type: schema::SetTypeValue::Single(schema::SetType::Ipv4Addr),
        ..schema::Set::default()
    }
}

fn chain() -> schema::Chain<'static> {
    schema::Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..schema::Chain::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    fn commands(guard: &Guard) -> Vec<Value> {
        let json = serde_json::to_value(transaction(guard)).unwrap();
        json["nftables"].as_array().unwrap().clone()
    }

    #[test]
    fn members_are_the_peers_and_this_host_once_each_in_order() {
        let guard = plan(4789, ip(2), [ip(3), ip(1), ip(3), ip(2)]);
        assert_eq!(
            guard.members.into_iter().collect::<Vec<_>>(),
            [ip(1), ip(2), ip(3)]
        );
    }

    #[test]
    fn the_set_is_refilled_with_every_member_in_the_same_transaction_as_the_rules() {
        let cmds = commands(&plan(4789, ip(1), [ip(2), ip(3)]));
        let flush_set = cmds
            .iter()
            .position(|c| c["flush"]["set"]["name"] == MEMBERS_SET)
            .expect("the set is flushed");
        let fill = cmds
            .iter()
            .position(|c| c["add"]["element"]["name"] == MEMBERS_SET)
            .expect("the set is refilled");
        assert!(flush_set < fill);
        assert_eq!(
            cmds[fill]["add"]["element"]["elem"],
            json!(["198.18.0.1", "198.18.0.2", "198.18.0.3"])
        );
        // Objects are added, never deleted: the counter keeps its value.
        assert!(cmds.iter().all(|c| c.get("delete").is_none()));
        assert!(cmds
            .iter()
            .any(|c| c["add"]["counter"]["name"] == DROPPED_COUNTER));
        assert!(cmds.iter().any(|c| c["flush"]["chain"]["name"] == CHAIN));
    }

    #[test]
    fn members_pass_and_everyone_else_is_counted_and_dropped_on_the_cluster_port() {
        let cmds = commands(&plan(4790, ip(1), []));
        let rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| &r["expr"])
            .collect();
        assert_eq!(rules.len(), 2);
        let port = json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4790}});
        assert_eq!(rules[0][0], port);
        assert_eq!(rules[0][1]["match"]["right"], "@members");
        assert_eq!(rules[0][2], json!({"accept": null}));
        assert_eq!(rules[1][0], port);
        assert_eq!(rules[1][1], json!({"counter": DROPPED_COUNTER}));
        assert_eq!(rules[1][2], json!({"drop": null}));
        let chain = cmds
            .iter()
            .find_map(|c| c["add"].get("chain"))
            .expect("the chain is added");
        assert_eq!(chain["hook"], "input");
        assert_eq!(chain["policy"], "accept");
        assert_eq!(chain["family"], FAMILY_NAME);
    }

    #[test]
    fn an_empty_member_list_adds_no_elements() {
        let guard = Guard {
            data_path_port: 4789,
            members: BTreeSet::new(),
        };
        assert!(commands(&guard)
            .iter()
            .all(|c| c["add"].get("element").is_none()));
    }

    #[test]
    fn removal_deletes_the_table_even_when_it_is_missing() {
        let json = serde_json::to_value(removal()).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds[0]["add"]["table"]["name"], TABLE);
        assert_eq!(cmds[1]["delete"]["table"]["name"], TABLE);
    }
}
