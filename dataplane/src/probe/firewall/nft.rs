//! nftables: `nft -j list ruleset` JSON translated to the walk's model.
//!
//! The JSON is read as `serde_json::Value`, not through the `nftables` crate's typed schema:
//! that schema is closed, so one statement it does not know (nft adds some every release, and
//! iptables-nft writes `xt` ones) would fail the whole document, where we want to note that one
//! rule as "could not evaluate" and go on.

use std::collections::HashMap;

use serde_json::Value;

use super::eval::{
    self, Action, ActionSpec, Analysis, Base, Cond, Direction, Fixer, Rule, Ruleset,
};
use super::nft_text::{render, render_match};
use super::{Finding, FirewallError, RequiredPort};

/// A table, as nft names it: family ("ip", "ip6", "inet", ...) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// "ip", "ip6", "inet", "netdev", "bridge" or "arp".
    pub family: String,
    /// The table's name.
    pub name: String,
}

/// Rules and chain policies of `nft -j list ruleset` output that drop required ports.
pub fn blocking_nft_rules(
    ruleset_json: &str,
    ports: &[RequiredPort],
) -> Result<Vec<Finding>, FirewallError> {
    Ok(analyze_nft(ruleset_json, ports, &[])?.findings)
}

/// Findings and notes of `nft -j list ruleset` output, leaving out the tables in `skip`
/// (iptables-nft's, reported from iptables-save instead).
pub fn analyze_nft(
    ruleset_json: &str,
    ports: &[RequiredPort],
    skip: &[TableRef],
) -> Result<Analysis, FirewallError> {
    let doc: Value = serde_json::from_str(ruleset_json).map_err(FirewallError::NftJson)?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(FirewallError::NftShape("expected {\"nftables\": [...]}"))?;
    let mut notes = Vec::new();
    let rules = translate(objects, skip, &mut notes);
    let mut analysis = eval::analyze(&rules, ports);
    notes.append(&mut analysis.notes);
    analysis.notes = notes;
    Ok(analysis)
}

pub(crate) fn text_of<'v>(object: &'v Value, key: &str) -> &'v str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}

fn translate(objects: &[Value], skip: &[TableRef], notes: &mut Vec<String>) -> Ruleset {
    let mut sets: HashMap<String, Value> = HashMap::new();
    let mut rules = Ruleset::default();
    let wanted = |o: &Value, notes: &mut Vec<String>| {
        let family = text_of(o, "family");
        let table = text_of(o, "table");
        let skipped = skip.iter().any(|t| t.family == family && t.name == table);
        if matches!(family, "bridge" | "arp") {
            let note = format!(
                "nft {family} {table}: not evaluated ({family} tables do not filter the \
                 host's own IP traffic)"
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
            return false;
        }
        !skipped
    };
    for object in objects {
        if let Some(set) = object.get("set").or_else(|| object.get("map")) {
            let key = format!(
                "{} {} {}",
                text_of(set, "family"),
                text_of(set, "table"),
                text_of(set, "name")
            );
            sets.insert(
                key,
                set.get("elem").cloned().unwrap_or(Value::Array(vec![])),
            );
        } else if let Some(chain) = object.get("chain") {
            if !wanted(chain, notes) {
                continue;
            }
            let (family, table, name) = (
                text_of(chain, "family"),
                text_of(chain, "table"),
                text_of(chain, "name"),
            );
            let key = format!("{family} {table} {name}");
            rules.chains.entry(key.clone()).or_default();
            let direction = match text_of(chain, "hook") {
                "ingress" | "prerouting" | "input" => Direction::Incoming,
                "forward" => Direction::Forwarded,
                "output" | "postrouting" | "egress" => Direction::Outgoing,
                _ => continue,
            };
            let policy = text_of(chain, "policy");
            rules.bases.push(Base {
                chain: key,
                direction,
                policy_drop: policy == "drop",
                location: format!("nft {family} {table} {name} policy"),
                text: format!(
                    "type {} hook {} priority {}; policy {};",
                    text_of(chain, "type"),
                    text_of(chain, "hook"),
                    chain.get("prio").unwrap_or(&Value::Null),
                    if policy.is_empty() { "accept" } else { policy }
                ),
                ipv6_only: family == "ip6",
                fixer: Fixer::Nft {
                    family: family.to_string(),
                    table: table.to_string(),
                    chain: name.to_string(),
                    handle: None,
                },
            });
        } else if let Some(rule) = object.get("rule") {
            if !wanted(rule, notes) {
                continue;
            }
            let (family, table, chain) = (
                text_of(rule, "family"),
                text_of(rule, "table"),
                text_of(rule, "chain"),
            );
            let handle = rule.get("handle").and_then(Value::as_u64).unwrap_or(0);
            let exprs: &[Value] = rule
                .get("expr")
                .and_then(Value::as_array)
                .map_or(&[], |v| v);
            let conv = Conv {
                sets: &sets,
                family,
                table,
            };
            let (conds, action) = conv.rule(exprs);
            let text: Vec<String> = exprs.iter().map(render).collect();
            rules
                .chains
                .entry(format!("{family} {table} {chain}"))
                .or_default()
                .push(Rule {
                    location: format!("nft {family} {table} {chain} handle {handle}"),
                    text: text.join(" "),
                    conds,
                    action,
                    fixer: Fixer::Nft {
                        family: family.to_string(),
                        table: table.to_string(),
                        chain: chain.to_string(),
                        handle: Some(handle),
                    },
                });
        }
    }
    rules
}

/// Translates one rule's statements, within its table.
struct Conv<'a> {
    sets: &'a HashMap<String, Value>,
    family: &'a str,
    table: &'a str,
}

/// Layer-4 protocols by the names nft prints.
fn protocol_number(name: &str) -> Option<u8> {
    Some(match name {
        "icmp" => 1,
        "igmp" => 2,
        "tcp" => 6,
        "udp" => 17,
        "dccp" => 33,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "comp" => 108,
        "sctp" => 132,
        "udplite" => 136,
        _ => return None,
    })
}

/// Payload protocols whose `dport` field is a port.
const PORTED: [&str; 6] = ["tcp", "udp", "th", "sctp", "dccp", "udplite"];

impl Conv<'_> {
    fn rule(&self, exprs: &[Value]) -> (Vec<Cond>, ActionSpec) {
        let mut conds = Vec::new();
        let mut action = ActionSpec::Fixed(Action::Continue);
        for expr in exprs {
            let Some((key, value)) = expr.as_object().and_then(|o| o.iter().next()) else {
                conds.push(Cond::Unknown(format!("statement {expr}")));
                continue;
            };
            let verdict = |a: Action| ActionSpec::Fixed(a);
            match key.as_str() {
                "match" => conds.extend(self.matches(value)),
                "accept" | "snat" | "dnat" | "masquerade" | "redirect" => {
                    action = verdict(Action::Accept)
                }
                "drop" => action = verdict(Action::Drop("drop")),
                "reject" => action = verdict(Action::Drop("reject")),
                "return" => action = verdict(Action::Return),
                "continue" => action = verdict(Action::Continue),
                "jump" | "goto" => {
                    let target = format!(
                        "{} {} {}",
                        self.family,
                        self.table,
                        text_of(value, "target")
                    );
                    action = verdict(if key == "jump" {
                        Action::Jump(target)
                    } else {
                        Action::Goto(target)
                    });
                }
                "vmap" => action = self.vmap(value, &mut conds),
                "counter" | "log" | "mangle" | "set" | "notrack" | "last" | "dup" | "secmark"
                | "ct helper" | "ct timeout" | "ct expectation" | "flow" => {}
                "limit" | "quota" | "ct count" => conds.push(Cond::Other(render(expr))),
                "xt" if text_of(value, "name") == "comment" => {}
                "xt" => {
                    let what = format!(
                        "iptables extension {} {}, which nft cannot show (see iptables-save)",
                        text_of(value, "type"),
                        text_of(value, "name")
                    );
                    if text_of(value, "type") == "target" {
                        action = verdict(Action::Unknown(what));
                    } else {
                        conds.push(Cond::Unknown(what));
                    }
                }
                "queue" => {
                    action = verdict(Action::Unknown("queued to a userspace program".into()))
                }
                other => conds.push(Cond::Unknown(format!("statement `{other}`"))),
            }
        }
        (conds, action)
    }

    /// The conditions of a `match` statement.
    fn matches(&self, m: &Value) -> Vec<Cond> {
        let op = text_of(m, "op");
        let (left, right) = (&m["left"], &m["right"]);
        let unknown = |what: &str| vec![Cond::Unknown(format!("{what} in `{}`", render_match(m)))];
        let other = || vec![Cond::Other(render_match(m))];
        let Some((kind, inner)) = left.as_object().and_then(|o| o.iter().next()) else {
            return unknown("a match on an expression it does not understand");
        };
        let v6 = self.family == "ip6";
        match kind.as_str() {
            "payload" => {
                let (proto, field) = (text_of(inner, "protocol"), text_of(inner, "field"));
                let implied = protocol_number(proto).map(|n| Cond::Proto {
                    numbers: vec![n],
                    negated: false,
                });
                if PORTED.contains(&proto) && field == "dport" {
                    return match self.port_cond(op, right) {
                        Some(cond) => implied.into_iter().chain([cond]).collect(),
                        None => unknown("a port value it cannot read"),
                    };
                }
                match (proto, field) {
                    ("ip", _) if v6 => vec![Cond::Never],
                    ("ip6", _) if !v6 => vec![Cond::Never],
                    ("ip", "protocol") | ("ip6", "nexthdr") => self.proto_cond(op, right, m),
                    ("ip" | "ip6" | "th" | "ether" | "vlan", _) => other(),
                    ("arp", _) => vec![Cond::Never],
                    _ => match implied {
                        Some(cond) => vec![cond, Cond::Other(render_match(m))],
                        None => unknown("a raw or unknown payload field"),
                    },
                }
            }
            "meta" => match text_of(inner, "key") {
                "l4proto" => self.proto_cond(op, right, m),
                "nfproto" | "protocol" => {
                    let mine = if v6 { ["ipv6", "ip6"] } else { ["ipv4", "ip"] };
                    let values = flat_values(right);
                    let has = values.iter().any(|v| mine.contains(&v.as_str()));
                    match op {
                        "==" | "in" if has => vec![],
                        "!=" if !has => vec![],
                        "==" | "in" | "!=" => vec![Cond::Never],
                        _ => unknown("an operator it cannot evaluate"),
                    }
                }
                "iifname" | "oifname" | "iif" | "oif" if op == "==" && right == "lo" => {
                    vec![Cond::Never]
                }
                _ => other(),
            },
            "ct" if text_of(inner, "key") == "state" && inner.get("dir").is_none() => {
                let has_new = flat_values(right).iter().any(|v| v == "new");
                match op {
                    "==" | "in" if has_new => vec![],
                    "!=" if !has_new => vec![],
                    "==" | "in" | "!=" => vec![Cond::Never],
                    _ => unknown("an operator it cannot evaluate"),
                }
            }
            "ct" | "fib" | "socket" | "rt" | "exthdr" | "tcp option" | "ipsec" | "osf"
            | "numgen" | "jhash" | "symhash" | "sctp chunk" | "ip option" | "dccp option" => {
                other()
            }
            _ => unknown("a match on an expression it does not understand"),
        }
    }

    fn proto_cond(&self, op: &str, right: &Value, m: &Value) -> Vec<Cond> {
        let mut numbers = Vec::new();
        for value in flat_values_raw(right) {
            let number = match &value {
                Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                Value::String(s) => protocol_number(s),
                _ => None,
            };
            match number {
                Some(n) => numbers.push(n),
                None => {
                    return vec![Cond::Unknown(format!(
                        "protocol {value} in `{}`",
                        render_match(m)
                    ))]
                }
            }
        }
        match op {
            "==" | "in" => vec![Cond::Proto {
                numbers,
                negated: false,
            }],
            "!=" => vec![Cond::Proto {
                numbers,
                negated: true,
            }],
            _ => vec![Cond::Unknown(format!(
                "operator {op} in `{}`",
                render_match(m)
            ))],
        }
    }

    /// A destination-port condition, or None if the value or operator is not understood.
    fn port_cond(&self, op: &str, right: &Value) -> Option<Cond> {
        let single = || right.as_u64().and_then(|n| u16::try_from(n).ok());
        let (ranges, negated) = match op {
            "==" | "in" => (self.port_ranges(right)?, false),
            "!=" => (self.port_ranges(right)?, true),
            "<" => (vec![(0, single()?.checked_sub(1)?)], false),
            "<=" => (vec![(0, single()?)], false),
            ">" => (vec![(single()?.checked_add(1)?, u16::MAX)], false),
            ">=" => (vec![(single()?, u16::MAX)], false),
            _ => return None,
        };
        Some(Cond::DPort { ranges, negated })
    }

    /// Port ranges of a value: a number, a range, an anonymous set or a named set.
    fn port_ranges(&self, value: &Value) -> Option<Vec<(u16, u16)>> {
        let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
        match value {
            Value::Number(_) => port(value).map(|p| vec![(p, p)]),
            Value::String(name) if name.starts_with('@') => {
                let key = format!("{} {} {}", self.family, self.table, &name[1..]);
                self.port_ranges(self.sets.get(&key)?)
            }
            Value::Object(o) if o.contains_key("range") => {
                let bounds = o["range"].as_array()?;
                Some(vec![(port(bounds.first()?)?, port(bounds.get(1)?)?)])
            }
            Value::Object(o) if o.contains_key("set") => self.port_ranges(&o["set"]),
            Value::Object(o) if o.contains_key("elem") => self.port_ranges(o["elem"].get("val")?),
            Value::Array(items) => {
                let mut all = Vec::new();
                for item in items {
                    all.extend(self.port_ranges(item)?);
                }
                Some(all)
            }
            _ => None,
        }
    }

    /// `<proto> dport vmap { port : verdict, ... }`.
    fn vmap(&self, vmap: &Value, conds: &mut Vec<Cond>) -> ActionSpec {
        let unknown = |what: &str| {
            ActionSpec::Fixed(Action::Unknown(format!("a verdict map keyed by {what}")))
        };
        if vmap["key"]
            .get("ct")
            .is_some_and(|ct| text_of(ct, "key") == "state")
        {
            return self.ct_state_vmap(&vmap["data"]);
        }
        let Some(payload) = vmap["key"].get("payload") else {
            return unknown("something other than a port or the conntrack state");
        };
        let proto = text_of(payload, "protocol");
        if !PORTED.contains(&proto) || text_of(payload, "field") != "dport" {
            return unknown("something other than a destination port");
        }
        let Some(items) = vmap["data"].get("set").and_then(Value::as_array) else {
            return unknown("a destination port, in a named map");
        };
        let mut entries = Vec::new();
        for item in items {
            let (Some(key), Some(verdict)) = (item.get(0), item.get(1)) else {
                return unknown("a destination port, with entries it cannot read");
            };
            let (_, action) = self.rule(std::slice::from_ref(verdict));
            let (Some(ranges), ActionSpec::Fixed(action)) = (self.port_ranges(key), action) else {
                return unknown("a destination port, with entries it cannot read");
            };
            entries.extend(ranges.into_iter().map(|r| (r, action.clone())));
        }
        let protocol = protocol_number(proto);
        if let Some(n) = protocol {
            conds.push(Cond::Proto {
                numbers: vec![n],
                negated: false,
            });
        }
        ActionSpec::ByPort { protocol, entries }
    }
}

impl Conv<'_> {
    /// `ct state vmap { established : accept, invalid : drop, ... }`: the verdict of `new`.
    fn ct_state_vmap(&self, data: &Value) -> ActionSpec {
        let Some(items) = data.get("set").and_then(Value::as_array) else {
            let what = "a verdict map keyed by the conntrack state, in a named map";
            return ActionSpec::Fixed(Action::Unknown(what.to_string()));
        };
        for item in items {
            let (Some(key), Some(verdict)) = (item.get(0), item.get(1)) else {
                continue;
            };
            if flat_values(key).iter().any(|v| v == "new") {
                return self.rule(std::slice::from_ref(verdict)).1;
            }
        }
        ActionSpec::Fixed(Action::Continue)
    }
}

/// The scalar values of a match's right side, flattened (sets, arrays).
fn flat_values_raw(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat_values_raw).collect(),
        Value::Object(o) if o.contains_key("set") => flat_values_raw(&o["set"]),
        other => vec![other.clone()],
    }
}

pub(crate) fn flat_values(value: &Value) -> Vec<String> {
    flat_values_raw(value)
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect()
}
