//! Turns a group of drops found by the walk into a [`Finding`]: what happens, why it matters,
//! and the exact commands that fix it.

use super::eval::{Action, ActionSpec, Base, Direction, Fixer, Group, Ruleset};
use super::{Finding, Protocol, RequiredPort, Severity};

/// The finding for one group of drops of `base`'s walk.
pub(crate) fn finding(rules: &Ruleset, base: &Base, group: &Group) -> Finding {
    let hit = &group.hit;
    let rule = hit
        .rule
        .as_ref()
        .and_then(|(chain, index)| rules.chains.get(chain)?.get(*index));
    let ports = list_ports(&group.ports);
    let direction = match base.direction {
        Direction::Incoming => "incoming",
        Direction::Forwarded => "forwarded",
        Direction::Outgoing => "outgoing",
    };
    let mut what = match rule {
        Some(rule) => {
            let verb = match &rule.action {
                ActionSpec::Fixed(Action::Drop(word)) => format!("{word}s"),
                _ => "drops".to_string(),
            };
            format!("this rule {verb} {direction} {ports}")
        }
        None if hit.escaped.is_empty() => {
            format!("the chain's policy is drop and no earlier rule accepts {direction} {ports}")
        }
        None => format!(
            "the chain's policy is drop and earlier rules accept only some {direction} {ports}"
        ),
    };
    if !hit.partial.is_empty() {
        what.push_str(&format!(
            ", but only packets that also match: {}",
            hit.partial.join("; ")
        ));
    }
    if rule.is_some() && !hit.escaped.is_empty() {
        what.push_str(&format!(
            "; traffic accepted or diverted earlier by {} is not affected",
            hit.escaped.join(", ")
        ));
    }
    if !hit.via.is_empty() {
        what.push_str(&format!("; reached through {}", hit.via.join(" then ")));
    }
    if base.ipv6_only {
        what.push_str(
            "; this is IPv6 only: it matters if cluster hosts reach each other over IPv6",
        );
    }
    if base.direction == Direction::Forwarded {
        what.push_str("; it matters only if cluster traffic is routed through this host");
    }
    let problem = hit.partial.is_empty()
        && hit.escaped.is_empty()
        && !base.ipv6_only
        && base.direction != Direction::Forwarded;
    let (location, text, fixer) = match rule {
        Some(rule) => (rule.location.clone(), rule.text.clone(), &rule.fixer),
        None => (base.location.clone(), base.text.clone(), &base.fixer),
    };
    Finding {
        severity: if problem {
            Severity::Problem
        } else {
            Severity::Warning
        },
        what,
        rule: Some(text),
        location,
        ports: group.ports.clone(),
        fix: fix(fixer, &group.ports, base.direction),
    }
}

fn list_ports(ports: &[RequiredPort]) -> String {
    let names: Vec<String> = ports.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// The ports of one protocol, in the order given.
fn by_protocol(ports: &[RequiredPort]) -> Vec<(Protocol, Vec<u16>)> {
    let mut groups: Vec<(Protocol, Vec<u16>)> = Vec::new();
    for port in ports {
        match groups.iter_mut().find(|(p, _)| *p == port.protocol) {
            Some((_, numbers)) => numbers.push(port.port),
            None => groups.push((port.protocol, vec![port.port])),
        }
    }
    groups
}

/// The commands that accept `ports` ahead of the rule (or at the end of a chain with a drop
/// policy), and that delete the rule.
fn fix(fixer: &Fixer, ports: &[RequiredPort], direction: Direction) -> String {
    let peer = match direction {
        Direction::Outgoing => "daddr",
        _ => "saddr",
    };
    match fixer {
        Fixer::Nft {
            family,
            table,
            chain,
            handle,
        } => {
            let accepts: Vec<String> = by_protocol(ports)
                .into_iter()
                .map(|(protocol, numbers)| {
                    let list: Vec<String> = numbers.iter().map(u16::to_string).collect();
                    let value = match list.as_slice() {
                        [one] => one.clone(),
                        many => format!("{{ {} }}", many.join(", ")),
                    };
                    let verb = match handle {
                        Some(handle) => {
                            format!("insert rule {family} {table} {chain} position {handle}")
                        }
                        None => format!("add rule {family} {table} {chain}"),
                    };
                    format!("nft '{verb} {} dport {value} accept'", protocol.name())
                })
                .collect();
            let mut fix = format!(
                "accept the ports {}: {} (add `ip {peer} <cluster subnet>` before `accept` to \
                 allow only cluster hosts)",
                if handle.is_some() {
                    "before this rule"
                } else {
                    "at the end of the chain"
                },
                accepts.join(" && ")
            );
            if let Some(handle) = handle {
                fix.push_str(&format!(
                    ", or delete the rule: nft delete rule {family} {table} {chain} handle {handle}"
                ));
            }
            fix.push_str("; then make the change permanent in /etc/nftables.conf");
            fix
        }
        Fixer::Iptables {
            tool,
            table,
            chain,
            position,
        } => {
            let flag = if direction == Direction::Outgoing {
                "-d"
            } else {
                "-s"
            };
            let accepts: Vec<String> = by_protocol(ports)
                .into_iter()
                .map(|(protocol, numbers)| {
                    let list: Vec<String> = numbers.iter().map(u16::to_string).collect();
                    let matcher = match list.as_slice() {
                        [one] => format!("--dport {one}"),
                        many => format!("-m multiport --dports {}", many.join(",")),
                    };
                    let verb = match position {
                        Some(position) => format!("-I {chain} {position}"),
                        None => format!("-A {chain}"),
                    };
                    format!(
                        "{tool} -t {table} {verb} -p {} {matcher} -j ACCEPT",
                        protocol.name()
                    )
                })
                .collect();
            let mut fix = format!(
                "accept the ports {}: {} (add `{flag} <cluster subnet>` to allow only cluster \
                 hosts)",
                if position.is_some() {
                    "before this rule"
                } else {
                    "at the end of the chain"
                },
                accepts.join(" && ")
            );
            if let Some(position) = position {
                fix.push_str(&format!(
                    ", or delete the rule: {tool} -t {table} -D {chain} {position}"
                ));
            }
            fix.push_str("; then save the rules where your distribution restores them from");
            fix
        }
    }
}
